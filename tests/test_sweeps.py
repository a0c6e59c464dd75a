"""Multirun sweeps: the sweep report (sweep.md, sweep.csv, plots), failed jobs in it, and the
same sweep through the joblib and ray launchers."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import AIDEPLOY, Cli

# 3x2: every encryption scheme, one and two server workers; one sample keeps seal quick. A fast-only
# setting beside the other schemes applies where it exists, and the report says where it did not.
SWEEP = ("encryption=none,fast,seal", "target.worker_count=1,2", "data.limit=1", "encryption.max_error=0.001")
JOBS = [f"encryption={e} target.worker_count={w} data.limit=1 encryption.max_error=0.001"
        for e in ("none", "fast", "seal") for w in (1, 2)]
# What does not depend on timing: latencies differ between runs, and so do seal's ciphertext sizes.
SAME = ("job", "encryption", "target.worker_count", "data.limit", "status", "error", "n_samples", "accuracy",
        "agreement")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def multirun(cli: Cli, sweep_dir: Path, *overrides: str, timeout: float = 900) -> subprocess.CompletedProcess:
    # home through the environment, so that rows of sweeps with different homes compare equal
    argv = [AIDEPLOY, "-m", f"hydra.sweep.dir={sweep_dir}", *overrides]
    return subprocess.run(argv, capture_output=True, text=True, env=cli.env({"AIDEPLOY_HOME": str(cli.home)}),
                          timeout=timeout)


def rows(sweep_dir: Path) -> list[dict[str, str]]:
    with open(sweep_dir / "sweep.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def comparable(sweep_dir: Path) -> list[tuple[str, ...]]:
    return [tuple(row[k] for k in SAME) for row in rows(sweep_dir)]


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory) -> Path:
    """The 3x2 sweep through Hydra's basic launcher, run once for the whole module."""
    tmp = tmp_path_factory.mktemp("basic")
    proc = multirun(Cli(tmp, tmp / "home"), tmp / "multirun", *SWEEP)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp / "stdout.txt").write_text(proc.stdout)
    return tmp / "multirun"


def test_a_3x2_sweep_writes_the_report_with_its_plots(basic_sweep):
    table = rows(basic_sweep)
    assert [r["job"] for r in table] == [str(i) for i in range(6)]
    # one column per override key
    assert [f"encryption={r['encryption']} target.worker_count={r['target.worker_count']} "
            f"data.limit={r['data.limit']} encryption.max_error={r['encryption.max_error']}" for r in table] == JOBS
    assert [r["not_applied"] for r in table] == ["encryption.max_error=0.001"] * 2 + [""] * 2 + \
        ["encryption.max_error=0.001"] * 2
    assert not (basic_sweep / ".sweep.lock").exists() and not list(basic_sweep.glob(".*.tmp"))
    assert all(r["status"] == "ok" and r["error"] == "" for r in table), table
    for r in table:
        assert r["n_samples"] == "1" and float(r["agreement"]) == 1.0
        assert 0 < float(r["latency_p50_ms"]) <= float(r["latency_p99_ms"])
        assert int(r["request_bytes"]) > 0 and int(r["response_bytes"]) > 0
        assert (int(r["key_bytes"]) > 0) == (r["encryption"] != "none")
        assert float(r["per_sample_p50_ms"]) == pytest.approx(float(r["latency_p50_ms"]), rel=1e-6)  # 1 sample
        # what the setting costs the client: its stages, end to end per row, and bytes per row
        encrypted = r["encryption"] != "none"
        assert (r["keys_s"] != "" and float(r["keys_s"]) > 0) == encrypted
        assert float(r["encrypt_s"]) >= 0 and float(r["decrypt_s"]) >= 0
        streamed = float(r["encrypt_s"]) + float(r["predict_s"]) + float(r["decrypt_s"])
        assert float(r["s_per_1000_rows"]) == pytest.approx(1000 * streamed, rel=1e-2, abs=1e-3)  # 1 row
        assert float(r["rows_per_s"]) == pytest.approx(1 / streamed, rel=1e-2)
        assert float(r["request_bytes_per_row"]) == float(r["request_bytes"])  # one row, one request
    for plot in ("sweep_latency.png", "sweep_bytes.png", "sweep_cost.png"):
        data = (basic_sweep / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
    md = (basic_sweep / "sweep.md").read_text()
    assert "- jobs: 6 (6 ok)" in md and "every job: `data.limit=1 encryption.max_error=0.001`" in md
    assert "| 4 | encryption=seal target.worker_count=1 | ok |" in md
    assert "![sweep_latency](sweep_latency.png)" in md and "![sweep_cost](sweep_cost.png)" in md
    printed = (basic_sweep.parent / "stdout.txt").read_text()
    assert "sweep report (6 jobs)" in printed and "| 5 | encryption=seal target.worker_count=2 | ok |" in printed
    for job in range(6):
        assert json.loads((basic_sweep / str(job) / "job_status.json").read_text())["status"] == "completed"


def test_the_report_can_be_rebuilt_by_hand(basic_sweep, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(basic_sweep, copy)
    for name in ("sweep.md", "sweep.csv", "sweep_latency.png", "sweep_bytes.png", "sweep_cost.png"):
        (copy / name).unlink()
    proc = subprocess.run([sys.executable, "-m", "aideploy.sweep", str(copy), "--no-plots"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert rows(copy) == rows(basic_sweep)
    assert "sweep report (6 jobs)" in proc.stdout and not (copy / "sweep_latency.png").exists()


def test_a_failed_job_is_a_row_with_its_error(cli, tmp_path):
    import joblib
    from sklearn.linear_model import LogisticRegression

    from aideploy.datasets import digits_split

    X_train, _, y_train, _ = digits_split(0.25, 0)
    joblib.dump(LogisticRegression(max_iter=2000).fit(X_train, y_train), tmp_path / "good.pkl")
    sweep = tmp_path / "multirun"
    # One arm has a missing model file (fails in the model stage); the other names a plugin
    # module that does not exist (fails before any stage). results.json says so in both.
    proc = multirun(cli, sweep, "model=sklearn_pickle", f"model.path={tmp_path / 'good.pkl'},{tmp_path / 'nope.pkl'}",
                    "plugins=[],[no_such_plugin_xyz]", "data.limit=2")
    assert proc.returncode != 0  # Hydra reports the first failed job once all jobs ran
    table = rows(sweep)
    # jobs in sweep order: (good, []), (good, [no_such...]), (nope, []), (nope, [no_such...])
    assert [r["status"] for r in table] == ["ok", "failed", "failed", "failed"]
    assert table[0]["agreement"] == "1.0"
    assert table[2]["model.path"].endswith("nope.pkl") and table[2]["error"].startswith("ConfigError: model file not found")
    for r in (table[1], table[3]):
        assert r["error"].startswith("PluginError: ") and "no_such_plugin_xyz" in r["error"]
        assert json.loads((sweep / r["dir"] / "results.json").read_text())["status"] == "failed"
    # on_multirun_end never ran, yet the report is complete, plotted and printed
    assert (sweep / "sweep_latency.png").exists() and (sweep / "sweep_bytes.png").exists()
    assert "- jobs: 4 (3 failed, 1 ok)" in (sweep / "sweep.md").read_text()
    assert "sweep report (4 jobs)" in proc.stdout and "no_such_plugin_xyz" in proc.stdout


def test_rows_of_unfinished_and_unreadable_jobs(tmp_path):
    from aideploy import sweep

    def job(num: int, overrides: list[str], results: dict | None = None, status: dict | None = None) -> None:
        d = tmp_path / str(num)
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
        if results is not None:
            (d / "results.json").write_text(json.dumps(results))
        if status is not None:
            (d / "job_status.json").write_text(json.dumps(status))

    job(0, ["a=1", "b=x"], {"status": "ok", "error": None, "accuracy": 0.5, "latency_ms": {"p50": 1, "p90": 2, "p99": 3},
                            "bytes": {"request": 10, "response": 20, "keys": 0}}, {"job": 0, "status": "completed"})
    job(1, ["a=2", "b=x"])  # still running: no results, no record
    job(2, ["a=3", "b=x"], None, {"job": 2, "status": "completed"})
    job(10, ["a=4", "b=x"], {"status": "interrupted", "error": {"type": "Interrupted", "message": "signal 15"}})
    report = sweep.build(tmp_path, plots=False)
    assert [r.job for r in report.rows] == [0, 1, 2, 10]  # numeric order, not "10" before "2"
    assert [r.status for r in report.rows] == ["ok", "unfinished", "no results", "interrupted"]
    assert report.common == ["b=x"]
    assert report.rows[3].error == "Interrupted: signal 15"
    assert "| 1 | a=2 | unfinished |" in (tmp_path / "sweep.md").read_text()


def test_plots_of_a_sweep_without_measurements(tmp_path):
    from aideploy import sweep

    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text("- a=1\n")
    report = sweep.build(tmp_path)  # e.g. interrupted before predict: nothing to plot on a log axis
    assert [f.name for f in report.files] == ["sweep.md", "sweep.csv", "sweep_latency.png", "sweep_bytes.png",
                                              "sweep_cost.png"]
    assert (tmp_path / "sweep_bytes.png").read_bytes().startswith(PNG_MAGIC)


def test_by_hand_on_a_dir_without_jobs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "aideploy.sweep", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "holds no aideploy jobs" in proc.stderr


def test_joblib_launcher_gives_the_same_rows(basic_sweep, cli, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    sweep = tmp_path / "multirun"
    proc = multirun(cli, sweep, *SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert comparable(sweep) == comparable(basic_sweep)
    # concurrent jobs: each its own run id, hence its own deployment name and key blob
    results = [json.loads((sweep / str(i) / "results.json").read_text()) for i in range(6)]
    assert len({r["run_id"] for r in results}) == 6
    assert len({r["endpoint"]["name"] for r in results}) == 6
    assert (sweep / "sweep_latency.png").exists()


def test_ray_launcher_gives_the_same_rows(basic_sweep, cli, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    sweep = tmp_path / "multirun"
    # A local Ray cluster for this sweep alone: 2 CPUs, no dashboard, its session files in a
    # short temp dir (Ray's socket paths must stay under 108 bytes) removed afterwards.
    ray_tmp = tempfile.mkdtemp(prefix="aidray-", dir="/tmp")
    try:
        proc = multirun(cli, sweep, *SWEEP, "hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                        "+hydra.launcher.ray.init.include_dashboard=false",
                        f"+hydra.launcher.ray.init._temp_dir={ray_tmp}")
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert comparable(sweep) == comparable(basic_sweep)
    assert (sweep / "sweep_latency.png").exists()


def test_a_setting_the_options_do_not_use_stops_a_single_run(cli):
    """What a sweep records as not applied is, in a single run, an error before any stage."""
    proc = cli("encryption=none", "encryption.max_error=0.01")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "encryption.max_error=0.01 does not apply to encryption=none" in proc.stderr and "hint: " in proc.stderr
    assert "[1/" not in proc.stderr  # no stage ran
