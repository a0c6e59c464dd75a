"""tracking=mlflow: runs and sweeps in an MLflow store, read back with MLflow's own API."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import AIDEPLOY, Cli, results_of


def store_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def runs(uri: str, experiment: str = "aideploy"):
    import mlflow

    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=[experiment], output_format="list")


def artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    from mlflow.tracking import MlflowClient

    return {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(run_id, path)}


def test_a_run_is_logged_with_params_metrics_tags_artifacts_and_its_model(cli, tmp_path):
    uri = store_uri(tmp_path)
    marker = "scoring-key-value-4f1c9e"
    proc = cli("tracking=mlflow", f"tracking.uri={uri}", "tracking.log_model=true", "data.limit=40",
               env={"AIDEPLOY_SCORING_KEY": marker})
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    [run] = runs(uri)
    # the config names the variable; its value is in no param
    assert run.data.params["scoring_key_env"] == "AIDEPLOY_SCORING_KEY"
    assert not [k for k, v in run.data.params.items() if marker in v]
    assert results["tracking"]["run_id"] == run.info.run_id and run.info.status == "FINISHED"
    assert run.data.params["target.worker_count"] == "1" and run.data.params["model.name"] == "sklearn_digits"
    assert run.data.params["mode"] == "run" and run.data.params["predict.output_format"] == "csv"  # not Mode.run
    assert run.info.run_name == results["run_id"]
    assert run.data.metrics["accuracy"] == pytest.approx(results["accuracy"])
    assert run.data.metrics["latency_ms.p50"] == pytest.approx(results["latency_ms"]["p50"])
    assert "stage_seconds.deploy" in run.data.metrics and "bytes.request" in run.data.metrics
    assert run.data.tags["aideploy.run_id"] == results["run_id"] and run.data.tags["option.encryption"] == "none"
    assert run.data.tags["aideploy.status"] == "ok"
    assert {"results.json", "environment.yml", "azmlinfsrv.log", "model"} <= artifacts(uri, run.info.run_id)
    assert "predictions.csv" not in artifacts(uri, run.info.run_id)  # the client's predictions: only when asked
    # the logged model deploys back with model=mlflow (and this run uploads its predictions)
    from mlflow.tracking import MlflowClient

    local = MlflowClient(tracking_uri=uri).download_artifacts(run.info.run_id, "model", str(tmp_path / "dl"))
    again = cli("model=mlflow", f"model.path={local}", "data.limit=20", "tracking=mlflow", f"tracking.uri={uri}",
                "tracking.log_predictions=true")
    assert again.returncode == 0, again.stderr
    assert results_of(again.out)["agreement"] == 1.0
    assert "predictions.csv" in artifacts(uri, results_of(again.out)["tracking"]["run_id"])


def test_an_unreachable_tracking_server_is_a_warning_not_a_failure(cli):
    proc = cli("tracking=mlflow", "tracking.uri=http://127.0.0.1:9", "data.limit=5")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["status"] == "ok" and "error" in results["tracking"]
    assert "tracking: the run was not logged to MLflow" in proc.stderr


def test_plan_mode_says_where_it_would_log(cli):
    proc = cli("tracking=mlflow", "tracking.uri=azureml", "dry_run=true")
    assert proc.returncode == 0, proc.stderr
    assert "Workspace.get_mlflow_tracking_uri()" in results_of(proc.out)["tracking"]["would_log_to"]


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_sweep_is_one_parent_with_a_child_per_job(tmp_path, launcher):
    uri = store_uri(tmp_path)
    cli = Cli(tmp_path, tmp_path / "home")
    argv = [AIDEPLOY, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "tracking=mlflow", f"tracking.uri={uri}",
            "data.limit=5", "target.worker_count=1,2", "predict.batch_size=1,5"]
    if launcher == "joblib":
        argv += ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env({"AIDEPLOY_HOME": str(cli.home)}),
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = runs(uri)
    parents = [r for r in found if r.data.tags.get("aideploy.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == 4 and len(found) == 5
    assert {(c.data.params["target.worker_count"], c.data.params["predict.batch_size"]) for c in children} == {
        ("1", "1"), ("1", "5"), ("2", "1"), ("2", "5")}
    # children named by their overrides; the parent holds the sweep's own
    assert {c.info.run_name for c in children} == {f"target.worker_count={w},predict.batch_size={b}"
                                                     for w in (1, 2) for b in (1, 5)}
    assert parents[0].info.run_name == f"sweep {tmp_path.name}/sweep"  # sweep <parent dir>/<sweep dir>
    assert parents[0].data.params["target.worker_count"] == "1,2" and parents[0].data.params["data.limit"] == "5"
    assert all("accuracy" in c.data.metrics and "latency_ms.p50" in c.data.metrics for c in children)
    assert {"sweep.md", "sweep.csv"} <= artifacts(uri, parents[0].info.run_id)


def test_a_failed_sweep_job_is_a_failed_child(tmp_path):
    uri = store_uri(tmp_path)
    cli = Cli(tmp_path, tmp_path / "home")
    import joblib
    from sklearn.linear_model import LogisticRegression

    from aideploy.datasets import digits_split

    X_train, _, y_train, _ = digits_split(0.25, 0)
    joblib.dump(LogisticRegression(max_iter=2000).fit(X_train, y_train), tmp_path / "good.pkl")
    argv = [AIDEPLOY, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "tracking=mlflow", f"tracking.uri={uri}",
            "data.limit=3", "model=sklearn_pickle", f"model.path={tmp_path / 'good.pkl'},{tmp_path / 'nope.pkl'}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env({"AIDEPLOY_HOME": str(cli.home)}),
                          timeout=900)
    assert proc.returncode != 0
    found = runs(uri)
    children = {Path(r.data.params["model.path"]).name: r for r in found if "mlflow.parentRunId" in r.data.tags}
    assert children["good.pkl"].info.status == "FINISHED"
    assert children["nope.pkl"].info.status == "FAILED"
    assert "model file not found" in children["nope.pkl"].data.tags["aideploy.error"]
    [parent] = [r for r in found if r.data.tags.get("aideploy.kind") == "sweep"]
    assert parent.info.status == "FAILED"
