"""``tracking=mlflow``: every run, and every sweep job, is an MLflow run.

An observer, built only on the hooks any plugin has (``aideploy_run_end``,
``aideploy_sweep_end``): it changes nothing in the run it records.

- name: a sweep job's overrides (``encryption=fast,target.worker_count=2``), a single run's id;
- params: the composed config, flattened (``target.worker_count``), as plain values (``run``, not
  ``Mode.run``); it holds names of environment variables, never their values, and every string
  is redacted as logs are; a sweep's parent run holds the sweep's overrides;
- metrics: every number in results.json (``accuracy``, ``latency_ms.p50``,
  ``stage_seconds.deploy``, ``rmse``, ...);
- tags: the run id, each group's option (``option.encryption``), mode and status;
- artifacts: results.json, plan.json, environment.yml and the server's log, whichever the run
  wrote; predictions.csv (a client's decrypted predictions) only with
  ``tracking.log_predictions=true``; with ``tracking.log_model=true`` the registered model as an
  MLflow model (scikit-learn flavor; an MLflow model as it is), deployable again with ``model=mlflow``.

Sweeps: the first job of a multirun creates one parent run and writes its id to
``<sweep dir>/mlflow_parent.json`` (under a lock on the sweep dir); every job, in whichever
process the launcher runs it, nests under it (the ``mlflow.parentRunId`` tag). At the end of
the sweep the report and its plots go to the parent, which is FAILED if a job failed.

Tracking never fails a run: an unreachable server is a warning and ``results["tracking"]``
says why. The default store is SQLite under ``<home>``: ``mlflow ui --backend-store-uri
sqlite:///<home>/mlflow.db`` shows it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from omegaconf import OmegaConf

from aideploy import hookimpl
from aideploy import results as results_mod
from aideploy.blobkeys import redact
from aideploy.fsutil import locked_dir, locked_file, replace_atomically

PLUGIN_NAME = "mlflow_tracking"
PARENT_FILE = "mlflow_parent.json"
ARTIFACTS = ("results.json", "plan.json", "environment.yml", "azmlinfsrv.log")
# What an encrypted run's client decrypted: its data's business, logged only when asked for.
PREDICTIONS = "predictions.csv"
log = logging.getLogger("aideploy")


def _chosen(cfg) -> bool:
    return OmegaConf.select(cfg, "tracking.plugin") == PLUGIN_NAME


def tracking_uri(cfg) -> str:
    """The store to log to: ``tracking.uri``, SQLite under ``home`` by default, or an Azure ML workspace's."""
    uri = cfg.tracking.uri
    if not uri:
        return f"sqlite:///{Path(cfg.home).expanduser().resolve() / 'mlflow.db'}"
    if uri == "azureml":
        from aideploy.azure_workspace import resolve_workspace

        settings = resolve_workspace(cfg.tracking.workspace, "tracking")
        from azureml.core import Workspace  # the azure extra (azureml-mlflow makes the URI usable)

        workspace = Workspace.get(settings.workspace_name, subscription_id=settings.subscription_id,
                                  resource_group=settings.resource_group)
        return workspace.get_mlflow_tracking_uri()
    return str(uri)


def _client(uri: str):
    # An unreachable server must cost seconds, not MLflow's default minutes of retries.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_location(uri: str) -> str | None:
    """Beside a SQLite store, not MLflow's default ``./mlruns`` in whatever the working dir is."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / f"{db.stem}-artifacts").resolve().as_uri()
    return None  # a server or workspace decides


def _experiment_id(client, name: str, uri: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(uri))
    except Exception:  # created by a concurrent job in between
        return client.get_experiment_by_name(name).experiment_id


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay whole."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def params_of(cfg) -> dict[str, str]:
    """The config's values as a person reads them: ``mode=run`` (not ``Mode.run``), lists as JSON."""
    config = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False, enum_to_str=True)
    return {key: redact(json.dumps(v) if isinstance(v, (list, dict)) else str(v))[:6000]
            for key, v in flatten(config).items()}


def run_name(ctx) -> str:
    """A sweep job is named by the overrides the sweep varies, with this job's values
    (``encryption=fast,target.worker_count=2``); a single run by its run id."""
    from hydra.core.hydra_config import HydraConfig

    sweep_dir = _sweep_dir()
    if sweep_dir is None or not HydraConfig.initialized():
        return ctx.run_id
    mine = [str(o) for o in HydraConfig.get().overrides.task]
    varied = _swept_keys(sweep_dir)
    chosen = [o for o in mine if o.partition("=")[0].lstrip("+~") in varied] or mine
    return redact(",".join(chosen))[:250] or ctx.run_id


def _swept_keys(sweep_dir: Path) -> set[str]:
    """The keys a sweep varies, from the overrides Hydra saved in its ``multirun.yaml``."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        saved = OmegaConf.load(sweep_dir / "multirun.yaml")
        parsed = OverridesParser.create().parse_overrides([str(o) for o in saved.hydra.overrides.task])
    except Exception:  # noqa: BLE001 - no record to read: the job is named by all its overrides
        return set()
    return {o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()}


def metrics_of(results: dict[str, Any]) -> dict[str, float]:
    return {key: float(v) for key, v in flatten(results).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


@contextlib.contextmanager
def _store_lock(uri: str) -> Iterator[None]:
    """One writer at a time on a SQLite store: concurrent sweep jobs would otherwise race to
    create its tables (MLflow migrates a new store on first use) and to write."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with locked_file(db.with_name(db.name + ".lock")):
        yield


def _sweep_dir() -> Path | None:
    """The multirun dir when this run is a sweep job (Hydra sets its config in every job's process)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()
    return Path(str(hydra.sweep.dir)).resolve() if hydra.mode == RunMode.MULTIRUN else None


def parent_run(client, experiment_id: str, sweep_dir: Path, uri: str) -> str:
    """The sweep's parent run: created by its first job, found through a file by the others."""
    record = sweep_dir / PARENT_FILE
    with locked_dir(sweep_dir):
        if record.exists():
            return json.loads(record.read_text())["run_id"]
        run = client.create_run(experiment_id, run_name=f"sweep {sweep_dir.parent.name}/{sweep_dir.name}",
                                tags={"aideploy.sweep_dir": str(sweep_dir), "aideploy.kind": "sweep"})
        replace_atomically(record, lambda tmp: tmp.write_text(json.dumps(
            {"run_id": run.info.run_id, "uri": uri, "experiment_id": experiment_id})))
        return run.info.run_id


def _log_model(client, run_id: str, model) -> None:
    if model is None:
        return
    if model.kind == "mlflow":
        client.log_artifacts(run_id, str(model.file), artifact_path="model")
        return
    estimator = getattr(model.adapter, "estimator", None)
    if estimator is None:
        log.warning("tracking.log_model: a %s model is not logged as an MLflow model (only scikit-learn and MLflow)",
                    model.kind)
        return
    import mlflow.sklearn

    with tempfile.TemporaryDirectory(prefix="aideploy-mlflow-model-") as tmp:
        mlflow.sklearn.save_model(estimator, str(Path(tmp) / "model"), serialization_format="cloudpickle")
        client.log_artifacts(run_id, str(Path(tmp) / "model"), artifact_path="model")


def log_run(ctx, results: dict[str, Any]) -> dict[str, Any]:
    """Record one run; returns where (uri, experiment, run id and parent)."""
    uri = tracking_uri(ctx.cfg)
    with _store_lock(uri):
        return _log_run(ctx, results, uri)


def _log_run(ctx, results: dict[str, Any], uri: str) -> dict[str, Any]:
    from mlflow.entities import Metric, Param, RunTag

    cfg = ctx.cfg
    client = _client(uri)
    experiment_id = _experiment_id(client, cfg.tracking.experiment, uri)
    tags = {"aideploy.run_id": ctx.run_id, "aideploy.mode": results.get("mode", ""),
            "aideploy.status": results.get("status", ""),
            **{f"option.{group}": option for group, option in ctx.choices.items()}}
    error = results.get("error")
    if error:
        tags["aideploy.error"] = redact(f"{error.get('type')}: {error.get('message')}")[:5000]
    sweep_dir = _sweep_dir()
    parent = parent_run(client, experiment_id, sweep_dir, uri) if sweep_dir is not None else None
    if parent:
        tags["mlflow.parentRunId"] = parent
    run = client.create_run(experiment_id, run_name=run_name(ctx), tags=tags)
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, str(v)) for k, v in params_of(cfg).items()]
    metrics = [Metric(k, v, now, 0) for k, v in metrics_of(results).items()]
    for start in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limit is 100 params
        client.log_batch(run_id, metrics=metrics[start:start + 100], params=params[start:start + 100],
                         tags=[RunTag(k, v) for k, v in tags.items()] if start == 0 else [])
    for name in ARTIFACTS + ((PREDICTIONS,) if cfg.tracking.log_predictions else ()):
        path = ctx.output_dir / name
        if path.is_file():
            client.log_artifact(run_id, str(path))
    if cfg.tracking.log_model:
        _log_model(client, run_id, ctx.artifacts.get("model"))
    client.set_terminated(run_id, status="FINISHED" if results.get("status") == "ok" else "FAILED")
    return {"uri": redact(uri), "experiment": cfg.tracking.experiment, "run_id": run_id, "parent_run_id": parent}


@hookimpl
def aideploy_run_end(ctx, results):
    if not _chosen(ctx.cfg):
        return
    if ctx.cfg.dry_run:
        where = ("the MLflow tracking URI of the Azure ML workspace (Workspace.get_mlflow_tracking_uri())"
                 if ctx.cfg.tracking.uri == "azureml" else tracking_uri(ctx.cfg))
        results["tracking"] = {"would_log_to": where, "experiment": ctx.cfg.tracking.experiment}
        log.info("tracking: a real run would be logged to %s, experiment %r", where, ctx.cfg.tracking.experiment)
    else:
        try:
            results["tracking"] = log_run(ctx, results)
            log.info("tracking: MLflow run %s in %s", results["tracking"]["run_id"], results["tracking"]["uri"])
        except Exception as exc:  # tracking must never fail the run it records
            message = redact(f"{type(exc).__name__}: {exc}").splitlines()[0][:500]
            results["tracking"] = {"error": message}
            log.warning("tracking: the run was not logged to MLflow: %s", message)
    results_mod.write(ctx, results)


@hookimpl
def aideploy_sweep_end(sweep_dir, report, config):
    record = Path(sweep_dir) / PARENT_FILE
    if config is None or not _chosen(config) or not record.exists():
        return
    try:
        parent = json.loads(record.read_text())
        with _store_lock(parent["uri"]):
            client = _client(parent["uri"])
            for path in report.files:
                client.log_artifact(parent["run_id"], str(path))
            failed = any(row.status != "ok" for row in report.rows)
            client.log_metric(parent["run_id"], "jobs", float(len(report.rows)))
            for override in OmegaConf.select(config, "hydra.overrides.task") or []:  # the sweep itself
                key, _, value = str(override).partition("=")
                if not key.startswith(("home", "hydra.")):
                    client.log_param(parent["run_id"], key.lstrip("+~"), redact(value)[:6000])
            client.set_terminated(parent["run_id"], status="FAILED" if failed else "FINISHED")
    except Exception as exc:
        log.warning("tracking: the sweep's parent run was not completed: %s", redact(exc))
