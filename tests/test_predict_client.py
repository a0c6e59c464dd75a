"""mode=predict as a client tool: the user's rows in, predictions.csv out, no model needed.

One real service (aideploy's score.py in azmlinfsrv, encryption=fast: plain and fast) answers unlabeled CSV, labelled Parquet, .npy and encrypted (fast) runs; the rows'
predictions are checked against the same model trained in this process. Then a service
stopped midway, and a file resumed against a new one.
"""

from __future__ import annotations

import http.server
import signal
import subprocess
import threading
import time

import numpy as np
import pandas as pd
import psutil
import pytest
from conftest import SERVE_KEY, results_of, served

from aideploy.azurite import dev_connection_string
from aideploy.datafiles import CsvRows, NpyRows, ParquetRows
from aideploy.datasets import digits_split
from aideploy.errors import ConfigError
from aideploy.predictions import PredictionsWriter

KEY = {"AIDEPLOY_SCORING_KEY": SERVE_KEY}
# encryption=fast: the deployment has a key store, so it takes fast requests beside plain ones
SERVE = ("environment=current", "target.worker_count=2", "deployment_name=predict-client", "encryption=fast")


@pytest.fixture(scope="module")
def digits():
    """The served model (model=sklearn_digits trains exactly this) and the test rows."""
    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, y_test = digits_split(0.25, 0)
    model = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(X_train, y_train)
    return model, X_test, y_test


def _csv(path, X, y=None, names=True):
    frame = pd.DataFrame(X, columns=[f"pixel{i}" for i in range(X.shape[1])])
    if y is not None:
        frame["digit"] = y
    frame.to_csv(path, index=False, header=names)
    return path


def _predictions(out):
    return pd.read_csv(out / "predictions.csv")


def test_unlabeled_csv_labelled_parquet_npy_and_fast_against_one_service(cli, tmp_path, digits):
    model, X, y = digits
    with served(cli, *SERVE) as uri:
        # An unlabeled CSV, no model config: one prediction per row, in order, as the model's.
        rows = _csv(tmp_path / "rows.csv", X)
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={rows}",
                   "encryption.batch_size=25", env=KEY)
        assert proc.returncode == 0, proc.stderr
        table = _predictions(proc.out)
        assert list(table["row"]) == list(range(len(X)))
        assert (table["prediction"].to_numpy() == model.predict(X)).all()
        proba = table[[f"proba_{c}" for c in model.classes_]].to_numpy()
        assert np.abs(proba - model.predict_proba(X)).max() < 1e-9
        results = results_of(proc.out)
        assert results["status"] == "ok" and "accuracy" not in results and "model" not in results["options"]
        assert results["predictions"] == {"path": str(proc.out / "predictions.csv"), "rows": len(X)}
        assert "model        skipped" in proc.stderr

        # A labelled Parquet: accuracy as mode=run computes it; Parquet out on request.
        pd.DataFrame({**{f"p{i}": X[:, i] for i in range(64)}, "label": y}).to_parquet(tmp_path / "rows.parquet")
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=parquet", f"data.path={tmp_path / 'rows.parquet'}",
                   "data.label_column=label", "encryption.batch_size=50", "predict.output_format=parquet", env=KEY)
        assert proc.returncode == 0, proc.stderr
        results = results_of(proc.out)
        assert results["accuracy"] == pytest.approx(float(np.mean(model.predict(X) == y)))
        parquet = pd.read_parquet(proc.out / "predictions.parquet")
        assert (parquet["prediction"].to_numpy() == model.predict(X)).all()

        # .npy, with the model given: agreement is computed against it in process.
        np.save(tmp_path / "rows.npy", X[:100])
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=npy", f"data.path={tmp_path / 'rows.npy'}",
                   "model=sklearn_digits", env=KEY)
        assert proc.returncode == 0, proc.stderr
        assert results_of(proc.out)["agreement"] == 1.0
        assert (_predictions(proc.out)["prediction"].to_numpy() == model.predict(X[:100])).all()

        # Encrypted (fast), unlabeled, no model: the parameters come from the service; the
        # decrypted scores agree with the model's decision function.
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={rows}", "encryption=fast",
                   "encryption.batch_size=200", env=KEY)
        assert proc.returncode == 0, proc.stderr
        table = _predictions(proc.out)
        scores = table[[f"score_{c}" for c in model.classes_]].to_numpy()
        assert np.abs(scores - model.decision_function(X)).max() < 1e-3
        assert (table["prediction"].to_numpy() == model.predict(X)).all()

        # Keys in another store than the service's (the only one it fetches from): refused before
        # any key is made or uploaded, naming the service's store.
        other = dev_connection_string("http://127.0.0.1:9/devstoreaccount1")
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={rows}", "encryption=fast",
                   "keystore.connection_string_env=OTHER_STORE", env={**KEY, "OTHER_STORE": other})
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "reads public keys only from its key store http://127.0.0.1:" in proc.stderr and "hint: " in proc.stderr

        # Bad input: one line naming the file and a hint, no traceback.
        narrow = _csv(tmp_path / "narrow.csv", X[:5, :60])
        proc = cli("mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={narrow}", env=KEY)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert "narrow.csv has 60 feature columns but the service" in proc.stderr and "takes 64" in proc.stderr
        assert "hint: " in proc.stderr


@pytest.mark.parametrize("content,expected", [
    (None, "no such file"),
    ("", "is empty"),
    ("a,b\n", "has a header but no rows"),
    ("a,b\n1,2\n3,x\n", "line 3 (row 1), column 'b' holds 'x', not a number"),
    ("a,b\n1,2\n3,\n", "line 3 (row 1), column 'b' is empty"),
    ("a,b\n1,2\n3,n/a\n", "line 3 (row 1), column 'b' holds 'n/a', not a number (a missing value?)"),
])
def test_bad_csv_is_one_line_naming_the_file(tmp_path, content, expected):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as info:
        source = CsvRows(path)
        list(source.chunks(10))
    assert str(path.name) in str(info.value) and expected in str(info.value)
    assert "\n" not in str(info.value) and info.value.hint


def test_columns_by_name_or_position_labels_optional(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,f1,f2,label\n7,0.5,1.5,a\n8,2.5,3.5,b\n")
    source = CsvRows(path, label_column="label", feature_columns=["f1", "2"])
    (X, y), = source.chunks(10)
    assert X.tolist() == [[0.5, 1.5], [2.5, 3.5]] and y.tolist() == ["a", "b"] and source.feature_names == ["f1", "f2"]
    with pytest.raises(ConfigError, match="has no column 'lbl'"):
        CsvRows(path, label_column="lbl")
    assert CsvRows(path).has_labels is False
    (X, y), = CsvRows(path, feature_columns=["f1"]).chunks(10, start=1)
    assert X.tolist() == [[2.5]] and y is None


def test_parquet_and_npy_sources(tmp_path):
    pd.DataFrame({"x": [1.0, 2.0, 3.0], "name": ["a", "b", "c"]}).to_parquet(tmp_path / "t.parquet")
    with pytest.raises(ConfigError, match="row 0, column 'name' holds 'a', not a number"):  # numbers by position
        list(ParquetRows(tmp_path / "t.parquet").chunks(2))
    source = ParquetRows(tmp_path / "t.parquet", label_column="name")
    chunks = list(source.chunks(2, start=1))
    assert np.concatenate([X for X, _ in chunks]).ravel().tolist() == [2.0, 3.0]
    assert np.concatenate([y for _, y in chunks]).tolist() == ["b", "c"]
    np.savez(tmp_path / "t.npz", X=np.arange(6.0).reshape(3, 2), y=np.array([0, 1, 0]))
    (X, y), = NpyRows(tmp_path / "t.npz").chunks(5)
    assert X.shape == (3, 2) and y.tolist() == [0, 1, 0]
    with pytest.raises(ConfigError, match="has no array 'features'"):
        NpyRows(tmp_path / "t.npz", features_key="features")


def test_a_csv_cut_mid_line_resumes_after_its_last_whole_row(tmp_path):
    path = tmp_path / "predictions.csv"
    writer = PredictionsWriter(path, "csv")
    writer.write({"prediction": np.array([3, 4])})
    writer.close()
    with open(path, "a") as fh:
        fh.write("2,9")  # a kill mid-line
    resumed = PredictionsWriter(path, "csv", resume=True)
    assert resumed.rows == 2
    resumed.write({"prediction": np.array([5])})
    assert pd.read_csv(path).to_dict("list") == {"row": [0, 1, 2], "prediction": [3, 4, 5]}


def test_a_parquet_file_closed_by_an_error_resumes_and_a_killed_one_is_one_line(tmp_path):
    path = tmp_path / "predictions.parquet"
    writer = PredictionsWriter(path, "parquet")
    writer.write({"prediction": np.array([3, 4])})
    writer.close()  # what an error or Ctrl-C does: the footer is written
    resumed = PredictionsWriter(path, "parquet", resume=True)
    assert resumed.rows == 2
    resumed.write({"prediction": np.array([5])})
    resumed.close()
    assert pd.read_parquet(path).to_dict("list") == {"row": [0, 1, 2], "prediction": [3, 4, 5]}
    path.write_bytes(path.read_bytes()[:-20])  # a kill: no footer
    with pytest.raises(ConfigError) as info:
        PredictionsWriter(path, "parquet", resume=True)
    assert "cannot be resumed" in str(info.value) and "predict to CSV" in info.value.hint


def test_a_service_stopped_midway_keeps_the_rows_and_resume_finishes_the_file(cli, tmp_path, digits):
    model, X, _ = digits
    big = np.tile(X, (12, 1))  # 5,400 rows
    rows = _csv(tmp_path / "rows.csv", big)
    output = tmp_path / "kept.csv"
    predict = ("mode=predict", "data=csv", f"data.path={rows}", "predict.chunk_rows=200",
               "predict.concurrency=1", f"predict.output={output}")
    server, out = cli.start("mode=serve", *SERVE, env=KEY)
    try:
        from conftest import wait_for

        wait_for(out / "endpoint.json", server)
        uri = pd.read_json(out / "endpoint.json", typ="series")["scoring_uri"]
        client = subprocess.Popen(cli.argv(*predict, f"scoring_uri={uri}")[0], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=cli.env(KEY))
        deadline = time.monotonic() + 120
        while not output.exists() or output.stat().st_size < 100_000:  # some chunks are in
            assert client.poll() is None and time.monotonic() < deadline, client.communicate()
            time.sleep(0.05)
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    _, err = client.communicate(timeout=120)
    assert client.returncode == 1 and "Traceback" not in err
    kept = pd.read_csv(output)
    assert 0 < len(kept) < len(big) and f"{len(kept)} are in {output}" in err
    assert "predict.resume=true" in err

    with served(cli, *SERVE) as uri:
        proc = cli(*predict, f"scoring_uri={uri}", "predict.resume=true", env=KEY)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(output)
    assert list(table["row"]) == list(range(len(big)))
    assert (table["prediction"].to_numpy() == model.predict(big)).all()


def _peak_rss(argv, env) -> int:
    """The largest RSS of a command's process while it runs (sampled every 20 ms)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    watched = psutil.Process(proc.pid)
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    _, err = proc.communicate(timeout=600)
    stop.set()
    sampler.join()
    assert proc.returncode == 0, err
    return peak


def test_memory_stays_flat_from_10_000_to_100_000_rows(cli, tmp_path, digits):
    _, X, _ = digits
    rng = np.random.default_rng(0)
    many = X[rng.integers(0, len(X), 100_000)]
    np.save(tmp_path / "small.npy", many[:10_000])
    np.save(tmp_path / "large.npy", many)  # 51 MB of features, were they all read at once
    with served(cli, *SERVE) as uri:
        peaks = {}
        for name in ("small", "large"):
            argv = cli.argv("mode=predict", f"scoring_uri={uri}", "data=npy", f"data.path={tmp_path / name}.npy",
                            "encryption.batch_size=500")[0]
            peaks[name] = _peak_rss(argv, cli.env(KEY))
    growth = peaks["large"] - peaks["small"]
    assert growth < 25 * 2**20, f"peak RSS grew {growth / 2**20:.1f} MB from 10,000 to 100,000 rows"


def test_answers_shaped_for_another_model_are_refused():
    from aideploy.artifacts import Scores
    from aideploy.client import check_width
    from aideploy.errors import PredictError

    check_width(Scores(values=np.zeros((4, 10))), list(range(10)), 1)
    check_width(Scores(values=np.zeros((4, 1))), [0, 1], 1)  # a binary margin
    with pytest.raises(PredictError, match="answered 3 probabilities per row, but the model has 10 classes"):
        check_width(Scores(probabilities=np.zeros((4, 3))), list(range(10)), 2)


@pytest.mark.parametrize("override", ["predict.concurrency=0", "predict.chunk_rows=0", "predict.output_format=xlsx"])
def test_predict_settings_are_checked_before_any_stage(override):
    from aideploy.config import register_configs
    from aideploy.manager import PluginRegistry
    from aideploy.validate import preflight

    register_configs(registry=PluginRegistry.load())
    with pytest.raises(ConfigError) as info:
        preflight([override])
    assert override.split("=")[0] in str(info.value) and info.value.hint


class _Answers405(http.server.BaseHTTPRequestHandler):
    """azmlinfsrv's answer to a POST anywhere but /score: 405."""

    def do_POST(self):  # noqa: N802 - http.server's name
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200 if self.path == "/score" else 405)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_a_uri_without_score_and_an_unreachable_one_are_one_line_each(caplog):
    """A 405 from a URI that does not end in /score says so; an unreachable service is one line of
    aideploy's, with no urllib3 "Retrying (...)" warning before it."""
    import logging
    import socket

    from aideploy.artifacts import Endpoint, Request
    from aideploy.errors import PredictError
    from aideploy.http import post_all

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers405)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with pytest.raises(PredictError) as info:
            post_all(Endpoint("t", "local", f"{base}/"), [Request(b"{}", 1)], timeout=10)
        assert "HTTP 405" in str(info.value) and info.value.hint.startswith("the URI should end in /score")
        assert len(post_all(Endpoint("t", "local", f"{base}/score"), [Request(b"{}", 1)], timeout=10).items) == 1
    finally:
        server.shutdown()
        server.server_close()

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    caplog.set_level(logging.WARNING)  # the root's level: urllib3's own logger keeps aideploy's setting
    with pytest.raises(PredictError) as info:
        post_all(Endpoint("t", "local", f"http://127.0.0.1:{closed}/score"), [Request(b"{}", 1)], timeout=10)
    assert "connection refused, after retries" in str(info.value) and "\n" not in str(info.value)
    assert not [r for r in caplog.records if r.name.startswith("urllib3")], caplog.text


def test_the_deprecated_encryption_batch_size_still_sizes_requests_and_says_so(cli):
    proc = cli("encryption.batch_size=50", "data.limit=100")
    assert proc.returncode == 0, proc.stderr
    assert "encryption.batch_size is deprecated: it is now predict.batch_size=50" in proc.stderr
    assert results_of(proc.out)["requests"] == 2


def test_progress_is_a_line_every_progress_seconds_while_a_request_is_slow(caplog):
    """Off a terminal, a timer logs the rows answered so far, also while no answer comes."""
    import logging

    from aideploy.client import Progress

    caplog.set_level(logging.INFO, logger="aideploy")
    progress = Progress(total=100, done=0, every=0.05)
    try:
        progress.chunk(50)
        progress.answered(10)  # then nothing more: a slow request
        deadline = time.monotonic() + 10
        while len([r for r in caplog.records if "predict: 10/100 rows" in r.getMessage()]) < 3:
            assert time.monotonic() < deadline, caplog.text
            time.sleep(0.02)
    finally:
        progress.close()
    assert "rows/s, ETA" in caplog.text
