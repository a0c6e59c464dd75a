"""``target=local``: the real Azure ML inference server (``azmlinfsrv``) as a local process.

It serves the same ``score.py`` (and the same staged source directory) an Azure target
uploads, with ``AZUREML_MODEL_DIR`` laid out as Azure lays it out.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

from aideploy import hookimpl, http, service_env
from aideploy.artifacts import Endpoint, Request, Secret
from aideploy.client import plain_body
from aideploy.envcheck import unmet
from aideploy.errors import ConfigError, DeployError, EnvironmentMismatch, PredictError
from aideploy.model_requirements import override
from aideploy.journal import DEPLOYMENTS_DIR, process_started
from aideploy.process import ManagedProcess, free_port, http_ok
from aideploy.resources import path_record
from aideploy.staging import scoring_package_dir, stage_model
from aideploy.stages import Mode
from aideploy.update import smoke_test
from aideploy_scoring import settings
from aideploy_scoring.encrypted import TOKEN_SECRET_ENV
from aideploy_scoring.fastkernels_aot import CACHE_ENV as KERNEL_CACHE_ENV, MODE_ENV as KERNELS_ENV
from aideploy_scoring.keyshare import SHARE_DIR_ENV

SERVER_LOG = "azmlinfsrv.log"
# azmlinfsrv logs this once a worker's init() has returned; a worker accepts no request before.
WORKER_READY = re.compile(rb"Worker with pid (\d+) ready for serving traffic")
# Names the server's end of the pipe that stops it when this process ends (gunicorn_conf.py).
WATCHDOG_ENV = "AIDEPLOY_WATCHDOG_FD"
# Local only (Azure decides where its containers listen), so it comes from the installed
# package whatever code is served.
GUNICORN_CONF = scoring_package_dir() / "gunicorn_conf.py"


def server_command() -> list[str]:
    exe = Path(sys.executable).with_name("azmlinfsrv")
    found = str(exe) if exe.exists() else shutil.which("azmlinfsrv")
    if not found:
        raise DeployError("azmlinfsrv (azureml-inference-server-http) is not installed in this environment",
                          hint="pip install azureml-inference-server-http, or reinstall aideploy")
    return [found]


def deployment_record(ctx, name: str) -> Path:
    return Path(ctx.cfg.home) / DEPLOYMENTS_DIR / f"{name}.json"


def scoring_key(ctx) -> Secret:
    """The key the service requires: the user's, from the environment, or a fresh one."""
    return Secret(os.environ.get(ctx.cfg.scoring_key_env) or secrets.token_urlsafe(32))


# Import names whose package is named otherwise, for the hint when an import fails.
PACKAGE_OF_MODULE = {"sklearn": "scikit-learn", "seal": "seal-python", "cv2": "opencv-python", "yaml": "pyyaml",
                     "encrypted": "encrypted-inference", "azure": "azure-storage-blob", "skops": "skops",
                     "onnxruntime": "onnxruntime", "mlflow": "mlflow-skinny", "PIL": "pillow"}


def missing_module(log_text: str, shown: str) -> DeployError | None:
    """A DeployError naming the module the service could not import, with a hint to paste; or None."""
    missing = re.findall(r"No module named '([\w.]+)'", log_text)
    if not missing:
        return None
    module = missing[-1].split(".")[0]
    package = PACKAGE_OF_MODULE.get(module, module)
    return DeployError(f"the scoring service cannot import {module!r}: its environment lacks the package "
                       f"that provides it{shown}",
                       hint=f"add it to the spec: {override('environment.extra_pip', [package])} "
                       "(or fix the import in your score.py)")


def start_failure(exc: Exception, log_tail: str, log_file: Path) -> DeployError:
    """Why the server did not start: an invalid setting or a missing module by name, else the log's
    last lines."""
    invalid = re.findall(re.escape(settings.INVALID) + r"(.*)", log_tail)
    if invalid:
        return DeployError(settings.INVALID + invalid[-1].strip(),
                           hint="fix or unset that variable in aideploy's environment (the service's settings are "
                           f"declared in aideploy_scoring/settings.py); the server's log is {log_file}")
    shown = f"\n--- last lines of {log_file} ---\n{log_tail.rstrip()}"
    return missing_module(log_tail, shown) or DeployError(
        f"the scoring server did not start: {exc}{shown}",
        hint="a failing init() usually means the model file or an import is broken; see the log lines above")


def first_row(ctx, model) -> bytes:
    """One row to send first: the data's first, else the schema's example."""
    dataset = ctx.artifacts.get("dataset")
    chunk = next(dataset.chunks(1), None) if dataset is not None else None
    if chunk is not None:
        return plain_body(chunk.X_test)
    schema = model.schema
    rows = [schema.example_row()] if schema is not None else [[0.0] * int(model.n_features or 1)]
    return json.dumps({"columns": schema.names, "data": rows} if schema is not None and schema.named
                      else {"data": rows}).encode()


def smoke_request(ctx, endpoint: Endpoint, network, model, server: ManagedProcess, log_start: int,
                  timeout: float) -> None:
    """The deploy's last step: one row, answered 200, so a missing module or a model that fails in
    the service (a 500) stops the deploy naming the cause, never the client's first request."""
    body = first_row(ctx, model)
    what = "its first request (one row of the data)"
    try:
        response = network.call(http.post_all, endpoint, [Request(body, 1)], timeout)
    except PredictError as exc:
        tail = server.tail(ctx.cfg.target.log_tail_lines)
        shown = f"\n--- last lines of {server.log_file} ---\n{tail.rstrip()}"
        with open(server.log_file, "rb") as log:
            log.seek(log_start)
            since = log.read().decode("utf-8", "replace")
        raise missing_module(since, shown) or DeployError(
            f"the service failed {what}: {exc.cause}{shown}",
            hint="the model does not run in the scoring environment as it does here; see the log lines above "
            f"(add a missing package with {override('environment.extra_pip', ['<package>'])})") from None
    ctx.log.info("      first request answered in %.0f ms", response.items[0].latency_ms)


def workers_ready(log_file: Path, offset: int = 0) -> int:
    """How many distinct workers have finished ``init()``, from the server's log past ``offset``."""
    try:
        with open(log_file, "rb") as log:
            log.seek(offset)
            return len(set(WORKER_READY.findall(log.read())))
    except OSError:
        return 0


def serve_command(environment) -> list[str]:
    """azmlinfsrv of the isolated environment, or of this interpreter (environment=current)."""
    if environment.python_exe is not None:
        return [str(environment.python_exe.parent / "azmlinfsrv")]
    return server_command()


@hookimpl
def aideploy_deploy(cfg, ctx, model, environment, network, code):
    if environment.python_exe is None and ctx.cfg.environment.get("check_local"):
        missing = unmet(environment.python, environment.pip)
        if missing:
            raise EnvironmentMismatch(
                "this interpreter does not satisfy the scoring environment: " + "; ".join(missing),
                hint=f"install what is missing (pip install ...), or relax the spec ({environment.conda_file}), "
                "or skip the check with environment.check_local=false, or build an isolated environment from "
                "the spec with environment=conda")
    name = ctx.cfg.deployment_name or f"aideploy-{ctx.run_id}"
    workdir = ctx.output_dir / "deploy"
    model_dir = stage_model(model, workdir / "azureml-models")
    port = cfg.port or free_port()
    # Only aideploy's score.py checks the key: azmlinfsrv itself has none (Azure's endpoints do).
    key = scoring_key(ctx) if cfg.auth and code.builtin else None
    if cfg.auth and not code.builtin:
        ctx.log.warning("scoring=custom: the local service does not check keys (azmlinfsrv has no auth); "
                        "it listens on %s only", network.bind_host)
    # None of aideploy's own variables (the scoring key: the service sees only its hash); the
    # service's settings (aideploy_scoring/settings.py) as the config and this deployment set them.
    env = service_env.server_environment(ctx.cfg.scoring_key_env)
    if environment.python_exe is not None:  # nothing of aideploy's own environment leaks in
        for variable in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
            env.pop(variable, None)
    # The deployment's own private directory, shared by its workers: the keys they verified
    # (keyshare) and the limits they count (limits.sqlite).
    state = Path(tempfile.mkdtemp(prefix="aideploy-service-"))
    ctx.resources.add(f"the deployment's directory {state}", lambda: shutil.rmtree(state, ignore_errors=True),
                      path_record(state))
    # An encrypted deployment fetches keys from its own key store only: the run's (started now, if
    # aideploy starts it), which the keys stage and mode=predict clients then use too. A plain one
    # has none, and takes plain requests only.
    encrypted = ctx.cfg.encryption.plugin != "plain"
    key_store = ctx.open_keystore().account_url if encrypted else None
    env.update(code.settings)  # what the config determines, then what only this deployment knows
    env.update(service_env.from_config(ctx.cfg, key_store=key_store, limits_store=str(state / "limits.sqlite")))
    env.update({
        # gunicorn's default control socket is shared per user; our config file makes it listen on
        # bind_host only (azmlinfsrv would bind 0.0.0.0: every interface of the machine)
        "GUNICORN_CMD_ARGS": f"--no-control-socket --config {shlex.quote(str(GUNICORN_CONF))}",
        "AIDEPLOY_BIND_HOST": network.bind_host,
        "PYTHONUNBUFFERED": "1",
        SHARE_DIR_ENV: str(state / "keys"),
        # azmlinfsrv reads the swagger files from the app root: the source directory, as on Azure
        "AML_APP_ROOT": str(code.source_dir),
    })
    if key:  # the service gets only a hash of the key
        env["AIDEPLOY_AUTH_KEY_SHA256"] = hashlib.sha256(key.reveal().encode()).hexdigest()
    # Seals the fast MLP rounds' tokens: one secret for every worker of this deployment, made
    # here (or the operator's, if set) and given to the service only (never logged; the run's
    # files do not hold it).
    if not env.get(TOKEN_SECRET_ENV):
        env[TOKEN_SECRET_ENV] = secrets.token_hex(32)
    if ctx.cfg.encryption.plugin == "fast":  # the environment's build (aideploy.kernels), or numba if it failed
        kernels = environment.kernels or {}
        env[KERNELS_ENV] = kernels.get("path", "aot")  # no word from the environment: a worker builds in init()
        if kernels.get("build"):
            env[KERNEL_CACHE_ENV] = str(Path(kernels["build"]).parent)
    argv = [*network.argv_prefix, *serve_command(environment), "--entry_script", str(code.entry), "--model_dir", str(model_dir),
            "--port", str(port), "--worker_count", str(cfg.worker_count)]
    # The server stops when this process ends, even by SIGKILL (gunicorn_conf.py watches the pipe).
    server = ManagedProcess("azmlinfsrv", argv, ctx.output_dir / SERVER_LOG, env=env, cwd=code.source_dir,
                            watchdog=WATCHDOG_ENV)
    log_start = server.log_file.stat().st_size if server.log_file.exists() else 0  # the log is appended to
    server.start()
    ctx.resources.add(f"azmlinfsrv (pid {server.pid})", server.stop, server.record())
    base = f"http://{network.client_host}:{port}"
    # Ready when every worker has run init() (azmlinfsrv's GET / answers once the first has).
    ready = lambda: workers_ready(server.log_file, log_start) >= cfg.worker_count and http_ok(base + "/")  # noqa: E731
    try:
        network.call(server.wait_until, ready, timeout=cfg.startup_timeout)
    except RuntimeError as exc:
        log_tail = server.tail(cfg.log_tail_lines)
        server.stop()
        raise start_failure(exc, log_tail, server.log_file) from None
    endpoint = Endpoint(name, "local", f"{base}/score", auth_key=key, keep_alive=True, alive=server.alive,
                        details={"pid": server.pid, "workers": cfg.worker_count, "auth": bool(key)})
    if code.builtin:  # a custom score.py's request format is its own
        try:
            smoke_request(ctx, endpoint, network, model, server, log_start, cfg.request_timeout)
        except BaseException:
            server.stop()
            raise
    if ctx.mode is Mode.serve:
        publish(ctx, name, server.pid, endpoint)
    return endpoint


def publish(ctx, name: str, pid: int, endpoint: Endpoint) -> None:
    """Write the deployment record (``mode=list``, ``mode=delete`` and ``mode=update`` find it) for
    the run's lifetime, and show a generated key once."""
    record = deployment_record(ctx, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"name": name, "target": "local", "pid": pid, "owner_pid": os.getpid(),
                                  "owner_started": process_started(os.getpid()), "created": time.time(),
                                  "scoring_uri": endpoint.scoring_uri, "output_dir": str(ctx.output_dir)}))
    ctx.resources.add(f"deployment record {record.name}", lambda: record.unlink(missing_ok=True),
                      path_record(record))
    key = endpoint.auth_key
    if key and not os.environ.get(ctx.cfg.scoring_key_env):
        # Shown once, on the terminal only: the log handlers never see it.
        print(f"scoring key (shown once; send 'Authorization: Bearer <key>'): {key.reveal()}",
              file=sys.__stdout__, flush=True)


@hookimpl
def aideploy_plan(cfg, ctx, model, environment, code):
    actions = [
        {"action": "stage source directory", "settings": {"entry_script": code.entry_script,
                                                          "source_dir": str(code.source_dir)}},
        {"action": "start azmlinfsrv", "settings": {
            "model": f"{model.name}:{model.version}", "port": cfg.port or "free port",
            "worker_count": cfg.worker_count, "auth": cfg.auth, "network": ctx.choices.get("network"),
            "environment": str(environment.conda_file)}},
    ]
    if ctx.mode is not Mode.update:
        return {"target": "local", "actions": actions}
    name = ctx.cfg.deployment_name or "<deployment_name>"
    record = str(deployment_record(ctx, name))
    samples = ctx.cfg["update"].smoke_samples
    return {"target": "local", "mode": "update", "actions": [
        {"action": "read deployment record", "settings": {"path": record, "exists": read_record(ctx, name) is not None}},
        *actions,
        {"action": "smoke test", "settings": {"samples": samples, "request": "POST {new scoring_uri}, one test-set row "
                                              "per request, plain {\"data\": [[...]]}",
                                              "passes": "every prediction equals the model's in process"}},
        {"action": "stop the old deployment", "settings": {"how": "SIGTERM to its serving aideploy (it tears down); "
                                                           "its azmlinfsrv group if that is gone"}},
        {"action": "write deployment record", "settings": {"path": record, "scoring_uri": "the new server's"}},
    ], "rollback": [
        {"action": "stop the new azmlinfsrv", "settings": {"old deployment": "keeps serving, its record unchanged"}},
    ]}


@hookimpl
def aideploy_predict(cfg, ctx, endpoint, network, requests):
    return network.call(ctx.http_client(endpoint, cfg.request_timeout).post, requests.items)


def read_record(ctx, name: str) -> dict | None:
    """The deployment record of ``name``, or None (a warning lists the known names)."""
    record = deployment_record(ctx, name)
    if not record.exists():
        return None
    return json.loads(record.read_text())


def known_deployments(ctx) -> str:
    folder = Path(ctx.cfg.home) / DEPLOYMENTS_DIR
    return ", ".join(sorted(p.stem for p in folder.glob("*.json"))) if folder.exists() else ""


def stop_deployment(ctx, name: str, info: dict) -> None:
    """Stop a served deployment and remove its record.

    Ask the serving aideploy to stop: it owns the server and tears down in order. If it is gone,
    stop the server directly. A pid must still run the right program: pids get reused.
    """
    import psutil

    for pid, program in ((info["owner_pid"], "aideploy"), (info["pid"], "azmlinfsrv")):
        try:
            proc = psutil.Process(pid)
            if program in " ".join(proc.cmdline()):
                proc.terminate() if program == "aideploy" else os.killpg(pid, 15)
                psutil.wait_procs([proc], timeout=30)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    deployment_record(ctx, name).unlink(missing_ok=True)


@hookimpl
def aideploy_delete(ctx, name):
    info = read_record(ctx, name)
    if info is None:
        ctx.log.warning("no local deployment named %r (known: %s)", name, known_deployments(ctx) or "none")
        return False
    stop_deployment(ctx, name, info)
    return True


@hookimpl
def aideploy_update(cfg, ctx, name, model, environment, network, code, dataset):
    """Replace a served deployment: start the new server beside the old one, smoke-test it, then stop
    the old one and point the record at the new one. A failed smoke test stops the new server only."""
    old = read_record(ctx, name)
    if old is None:
        known = known_deployments(ctx)
        raise ConfigError(f"there is no local deployment named {name!r} to update (known: {known or 'none'})",
                          hint="start one with mode=serve deployment_name=<name>; mode=list shows the deployments")
    endpoint = aideploy_deploy(cfg=cfg, ctx=ctx, model=model, environment=environment, network=network, code=code)
    samples = ctx.cfg["update"].smoke_samples
    ctx.log.info("      smoke test: %d samples to the new server at %s", min(samples, dataset.n_samples),
                 endpoint.scoring_uri)
    smoke = network.call(smoke_test, endpoint.scoring_uri, endpoint.headers(), model, dataset, samples,
                         cfg.request_timeout)
    endpoint.details["smoke_test"] = smoke.summary()
    if not smoke.ok:
        raise DeployError(f"the new version of {name!r} ({model.name}:{model.version}) failed its smoke test: "
                          f"{smoke.reason}; it was stopped, and the old one still serves {old['scoring_uri']}",
                          hint="compare the new model with the test set (mode=run with the same model), or see "
                          f"the new server's log in {ctx.output_dir / SERVER_LOG}")
    ctx.log.info("      smoke test passed (%d/%d agree); stopping the old server (pid %s)", smoke.agreed,
                 smoke.samples, old["pid"])
    stop_deployment(ctx, name, old)
    publish(ctx, name, endpoint.details["pid"], endpoint)
    endpoint.details["replaced"] = old["scoring_uri"]
    return endpoint


@hookimpl
def aideploy_target_capabilities(cfg):
    from aideploy.targets import TargetCapabilities

    return TargetCapabilities(runs_here=True, schemes=("plain", "fast", "seal"), mlp_token_secret="generated",
                              kernels="environment")
