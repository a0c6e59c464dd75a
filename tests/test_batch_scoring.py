"""Batch scoring: ``predict.engine`` chooses the prediction loop; ``ray`` scores a folder of files in parallel.

A folder of CSV files (and a Parquet file in a subfolder) is scored on a local Ray started for
the run, against a real served model (plain, and encrypted with each worker's own keys) and with
the model in the Ray workers (``predict.local_model=true``, no service): every file's predictions
equal the model's own. A run killed with SIGKILL leaves no Ray process behind and resumes
without touching the files it had finished. The choice of engine, and what no engine can do,
fail before anything runs, in one line.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import SERVE_KEY, results_of, served, session_processes

from aideploy.datasets import digits_split
from aideploy.errors import ConfigError
from aideploy.filesets import FileSet, expand
from aideploy.datafiles import CsvRows

KEY = {"AIDEPLOY_SCORING_KEY": SERVE_KEY}
SERVE = ("environment=current", "target.worker_count=2", "deployment_name=batch", "encryption=fast")
COLUMNS = [f"pixel{i}" for i in range(64)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The served model (model=sklearn_digits trains exactly this), pickled for model=sklearn_pickle,
    and the test rows."""
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, _ = digits_split(0.25, 0)
    model = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(X_train, y_train)
    path = tmp_path_factory.mktemp("model") / "digits.pkl"
    joblib.dump(model, path)
    return model, path, X_test


def _files(folder: Path, X: np.ndarray, counts: list[int], seed: int = 0) -> dict[Path, np.ndarray]:
    """CSV files of rows drawn from ``X``, ``counts[i]`` rows in file i; the last one a Parquet file
    in a subfolder."""
    rng = np.random.default_rng(seed)
    written = {}
    for i, n in enumerate(counts):
        rows = X[rng.integers(0, len(X), n)]
        frame = pd.DataFrame(rows, columns=COLUMNS)
        if i == len(counts) - 1 and len(counts) > 2:
            path = folder / "more" / f"part{i}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_parquet(path)
        else:
            path = folder / f"part{i}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            frame.to_csv(path, index=False)
        written[path] = rows
    return written


def _predictions_of(out: Path, root: Path, path: Path) -> pd.DataFrame:
    return pd.read_csv(out / path.relative_to(root).with_suffix(".csv"))


def _ray_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith("aideploy-ray-")}


def _ray_processes() -> list[str]:
    found = []
    for pid in session_processes():
        try:
            command = " ".join(psutil.Process(pid).cmdline())
        except psutil.NoSuchProcess:
            continue
        if "ray" in command:
            found.append(command[:120])
    return found


def test_ray_scores_each_file_of_a_folder_as_the_served_model_does(cli, tmp_path, digits):
    model, _, X = digits
    folder = tmp_path / "rows"
    files = _files(folder, X, [1200, 900, 1500, 400])
    before = _ray_dirs()
    with served(cli, *SERVE) as uri:
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={folder}", "predict.engine=ray",
                   "predict.ray.workers=2", env=KEY)
        assert proc.returncode == 0, proc.stderr
        out = proc.out / "predictions"
        for path, rows in files.items():
            table = _predictions_of(out, folder, path)
            assert list(table["row"]) == list(range(len(rows)))
            assert (table["prediction"].to_numpy() == model.predict(rows)).all(), path
            proba = table[[f"proba_{c}" for c in model.classes_]].to_numpy()
            assert np.abs(proba - model.predict_proba(rows)).max() < 1e-9
        results = results_of(proc.out)
        assert results["status"] == "ok" and results["n_samples"] == sum(len(r) for r in files.values())
        assert results["predictions"] == {"path": str(out), "rows": results["n_samples"]}
        assert "4 files on 2 Ray workers" in proc.stderr

        # Encrypted, a glob of the CSV files: each worker makes, publishes and registers keys of its own.
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={folder}/*.csv", "predict.engine=ray",
                   "encryption=fast", "predict.batch_size=100", "predict.ray.workers=2", env=KEY)
        assert proc.returncode == 0, proc.stderr
        csvs = {p: rows for p, rows in files.items() if p.suffix == ".csv"}
        for path, rows in csvs.items():
            table = _predictions_of(proc.out / "predictions", folder, path)
            scores = table[[f"score_{c}" for c in model.classes_]].to_numpy()
            assert np.abs(scores - model.decision_function(rows)).max() < 1e-3
            assert (table["prediction"].to_numpy() == model.predict(rows)).all(), path
        assert sorted(p.name for p in (proc.out / "predictions").iterdir()) == sorted(p.name for p in csvs)
    assert not _ray_processes()
    assert _ray_dirs() == before  # every temp dir Ray used is gone


def test_a_killed_run_resumes_without_redoing_finished_files(cli, tmp_path, digits):
    """The model in the Ray workers (no service); SIGKILL mid-run, then predict.resume=true."""
    model, model_path, X = digits
    folder, output = tmp_path / "rows", tmp_path / "predictions"
    files = _files(folder, X, [3000] * 8, seed=1)
    before = _ray_dirs()
    args = ("mode=predict", "predict.engine=ray", "predict.local_model=true", "model=sklearn_pickle",
            f"model.path={model_path}", "data=csv", f"data.path={folder}", f"predict.output={output}",
            "predict.ray.workers=1", "predict.chunk_rows=500")
    proc, _ = cli.start(*args)
    deadline = time.monotonic() + 180
    while not (list(output.rglob("*.csv")) and list(output.rglob("*.part"))):  # one file done, one begun
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no file was finished in time"
        time.sleep(0.05)
    # the run's own Ray asks every connection for the run's token (Ray 2.60 still listens on all
    # interfaces with some of its servers: the README says so)
    token_mode = set()
    for pid in session_processes():
        try:
            process = psutil.Process(pid)
            if pid != proc.pid and "ray" in " ".join(process.cmdline()):  # aideploy itself sets it in-process
                token_mode.add(process.environ().get("RAY_AUTH_MODE"))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    assert token_mode == {"token"}, token_mode
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 20  # the local Ray ends with the aideploy that started it, by itself
    while _ray_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _ray_processes()
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in output.rglob("*.csv")}
    assert 0 < len(finished) < len(files)

    resumed = cli(*args, "predict.resume=true")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(finished)} of {len(files)} files finished earlier" in resumed.stderr, resumed.stderr
    for path, stamp in finished.items():
        assert (path.stat().st_mtime_ns, path.stat().st_ino) == stamp, f"{path.name} was written again"
    for path, rows in files.items():
        table = _predictions_of(output, folder, path)
        assert list(table["row"]) == list(range(len(rows)))
        assert (table["prediction"].to_numpy() == model.predict(rows)).all(), path
    assert not list(output.rglob("*.part"))
    results = results_of(resumed.out)
    assert results["status"] == "ok" and results["agreement"] == 1.0
    assert results["predictions"]["rows"] == 8 * 3000
    assert _ray_dirs() == before  # the killed run's too: the next run's housekeeping removed it


def test_a_file_the_model_cannot_take_stops_the_run_naming_it_and_what_is_kept(cli, tmp_path, digits):
    model, model_path, X = digits
    folder, output = tmp_path / "rows", tmp_path / "predictions"
    files = _files(folder, X, [200, 200], seed=2)
    bad = folder / "zz_bad.csv"  # read last, in path order
    frame = pd.DataFrame(X[:5], columns=COLUMNS).astype(object)
    frame.loc[3, "pixel7"] = "lots"
    frame.to_csv(bad, index=False)
    proc = cli("mode=predict", "predict.engine=ray", "predict.local_model=true", "model=sklearn_pickle",
               f"model.path={model_path}", "data=csv", f"data.path={folder}", f"predict.output={output}",
               "predict.ray.workers=1")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    assert "'lots'" in error and "(file zz_bad.csv; 2 of 3 files finished" in error, proc.stderr
    assert f"predict.resume=true predict.output={output}" in proc.stderr
    for path, rows in files.items():  # the finished files are kept, whole
        assert (_predictions_of(output, folder, path)["prediction"].to_numpy() == model.predict(rows)).all()
    assert not _ray_processes()


def test_the_stream_engine_reads_a_folder_as_one_table_with_the_model_in_process(cli, tmp_path, digits):
    model, model_path, X = digits
    folder = tmp_path / "rows"
    files = _files(folder, X, [300, 200, 250])
    proc = cli("mode=predict", "predict.local_model=true", "model=sklearn_pickle", f"model.path={model_path}",
               "data=csv", f"data.path={folder}")
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(proc.out / "predictions.csv")
    rows = np.vstack([files[p] for p in sorted(files)])  # name order: part0.csv, part1.csv, more/part2.parquet
    assert list(table["row"]) == list(range(len(rows)))
    assert (table["prediction"].to_numpy() == model.predict(rows)).all()
    assert results_of(proc.out)["agreement"] == 1.0


@pytest.mark.parametrize("overrides,expected", [
    (("predict.engine=batch",), "predict.engine='batch': no plugin of that name is registered"),
    (("predict.local_model=true", "data=csv", "data.path={rows}"),
     "predict.local_model=true scores with the model itself, and none was given"),
    (("predict.engine=ray", "predict.local_model=true", "model=sklearn_pickle", "model.path={model}"),
     "predict.engine=ray scores files, and data 'digits' is held in memory"),
    (("mode=run", "predict.local_model=true"), "predict.local_model=true scores without a service, and mode=run"),
    (("predict.local_model=true", "model=sklearn_pickle", "model.path={model}", "encryption=fast"),
     "predict.local_model=true scores the rows in clear"),
])
def test_what_no_engine_can_do_is_one_line_before_anything_runs(cli, tmp_path, digits, overrides, expected):
    _, model_path, X = digits
    rows = tmp_path / "rows.csv"
    pd.DataFrame(X[:10], columns=COLUMNS).to_csv(rows, index=False)
    given = [o.format(rows=rows, model=model_path) for o in overrides]
    mode = [] if any(o.startswith("mode=") for o in given) else ["mode=predict"]
    proc = cli(*mode, *given)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr and "hint: " in proc.stderr and "Traceback" not in proc.stderr
    if "engine=batch" in given[0]:
        assert "ray (aideploy" in proc.stderr and "stream (aideploy" in proc.stderr


def test_a_folder_or_glob_is_one_table_of_many_files(tmp_path):
    for name, start in (("a.csv", 0), ("b.csv", 10), ("c.csv", 20)):
        pd.DataFrame({"x": np.arange(start, start + 5), "y": np.arange(5) * 0.5}).to_csv(tmp_path / name, index=False)
    root, paths = expand(str(tmp_path))
    rows = FileSet(root, paths, CsvRows)
    assert rows.n_rows == 15 and [rows.relative(f).name for f in rows.files] == ["a.csv", "b.csv", "c.csv"]
    firsts = [X[:, 0].tolist() for X, _ in rows.chunks(4, start=3)]
    assert firsts == [[3.0, 4.0], [10.0, 11.0, 12.0, 13.0], [14.0], [20.0, 21.0, 22.0, 23.0], [24.0]]
    cut = FileSet(*expand(f"{tmp_path}/*.csv"), CsvRows).limit(7)
    assert cut.n_rows == 7 and len(cut.files) == 2
    assert [X[:, 0].tolist() for X, _ in cut.chunks(10)] == [[0.0, 1.0, 2.0, 3.0, 4.0], [10.0, 11.0]]

    pd.DataFrame({"x": [1], "z": [2]}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(ConfigError, match="d.csv has other columns than .*a.csv"):
        FileSet(*expand(str(tmp_path)), CsvRows)
    with pytest.raises(ConfigError, match="no CSV or Parquet files there"):
        expand(str(tmp_path / "*.tsv"))
