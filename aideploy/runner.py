"""Runs the stages of a mode in order and tears down whatever happens."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

from omegaconf import DictConfig, OmegaConf

from aideploy import http
from aideploy import results as results_mod
from aideploy import client, engines, journal, model_requirements, schemas, validate
from aideploy.artifacts import (Dataset, Endpoint, EnvironmentSpec, KeySession, NetworkInfo, RegisteredModel,
                                Requests, Responses, ScoringCode, Scores, Secret)
from aideploy.context import RunContext
from aideploy.config import not_applied
from aideploy.errors import AideployError, ConfigError, Interrupted, PluginError
from aideploy.manager import PluginRegistry
from aideploy.stages import DRY_RUN, ENCRYPT, KEYS, KEYSTORE, MODEL, PIPELINES, PREDICT, TEARDOWN, Mode, Stage

log = logging.getLogger("aideploy")


# What each stage must return (by the name its result is kept under).
RESULT_TYPES: dict[str, type] = {
    "dataset": Dataset, "model": RegisteredModel, "code": ScoringCode, "environment": EnvironmentSpec,
    "network": NetworkInfo, "endpoint": Endpoint, "keys": KeySession, "requests": Requests,
    "responses": Responses, "scores": Scores, "plan": dict, "deleted": bool,
}


def new_run_id() -> str:
    """Short, sortable and unique enough for concurrent runs on one machine."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Runner:
    """Runs one mode's stages in order; see :func:`run` for the whole life of a run.

    ``observed``: whether the observers (before/after/on-error hooks) see the stages it runs; an
    engine's worker process (:class:`aideploy.engines.ClientSpec`) runs its stages unobserved.
    """

    def __init__(self, ctx: RunContext, observed: bool = True) -> None:
        self.ctx = ctx
        self.observed = observed
        self.stage_seconds: dict[str, float] = {}
        ctx._open_keystore = lambda: self.run_stage(KEYSTORE)
        ctx._send = lambda requests: self.call(PREDICT, requests=requests)

    def _group_cfg(self, stage: Stage) -> DictConfig | None:
        return self.ctx.cfg[stage.group] if stage.group else None

    def _caller(self, stage: Stage):
        if stage.group is None:
            return getattr(self.ctx.plugins.hook, stage.hook)
        group_cfg = self._group_cfg(stage)
        return self.ctx.plugins.stage_caller(stage.hook, group_cfg.plugin, f"{stage.group}.plugin")

    def _kwargs(self, stage: Stage) -> dict[str, Any]:
        available = {"cfg": self._group_cfg(stage), "ctx": self.ctx, "name": self.ctx.cfg.deployment_name,
                     **self.ctx.artifacts}
        argnames = getattr(self.ctx.plugins.hook, stage.hook).spec.argnames
        if "requirements" in argnames:
            wanted = self.ctx.plugins.hook.aideploy_scoring_requirements(ctx=self.ctx)
            wanted = [*reversed(wanted), model_requirements.for_model(self.ctx.artifacts.get("model"))]
            available["requirements"] = list(dict.fromkeys(r for reqs in wanted for r in reqs or ()))
        return {name: available.get(name) for name in argnames}

    def call(self, stage: Stage, kwargs: dict[str, Any] | None = None, **given: Any) -> Any:
        """Call ``stage``'s hook, no observers, with the run's artifacts (``given`` ones instead
        where named); check and return its result."""
        kwargs = kwargs if kwargs is not None else self._kwargs(stage)
        kwargs.update({name: value for name, value in given.items() if name in kwargs})
        result = self._caller(stage)(**kwargs)
        if stage.group is None and stage.result:
            result = _merge_broadcast(stage, result)
        self._check(stage, result)
        return result

    def run_stage(self, stage: Stage) -> Any:
        """Run one stage with its before/after/on-error observers; keep and return its result."""
        hook = self.ctx.plugins.hook
        kwargs = self._kwargs(stage)
        if not self.observed:
            result = self.call(stage, kwargs)
            if stage.result:
                self.ctx.artifacts[stage.result] = result
            return result
        hook.aideploy_before_stage(stage=stage, ctx=self.ctx)
        start = time.perf_counter()
        try:
            result = self.call(stage, kwargs)
        except BaseException as exc:
            self.stage_seconds[stage.name] = time.perf_counter() - start
            hook.aideploy_on_stage_error(stage=stage, ctx=self.ctx, error=exc)
            raise
        self.observe(stage, result, time.perf_counter() - start)
        return result

    def observe(self, stage: Stage, result: Any, seconds: float) -> None:
        """Keep ``stage``'s result and tell the observers it succeeded in ``seconds``."""
        hook = self.ctx.plugins.hook
        self.stage_seconds[stage.name] = seconds
        if stage.result:
            self.ctx.artifacts[stage.result] = result
        hook.aideploy_after_stage(stage=stage, ctx=self.ctx, result=result, seconds=seconds)

    def _check(self, stage: Stage, result: Any) -> None:
        optional = {"keys", "metrics", "deleted", None}
        if result is None and stage.result not in optional:
            plugin = self._group_cfg(stage).plugin
            raise PluginError(f"plugin {plugin!r} returned nothing from {stage.hook}",
                              hint=f"{stage.hook} must return a result; see aideploy.hookspecs")
        expected = RESULT_TYPES.get(stage.result)
        if result is not None and expected is not None and not isinstance(result, expected):
            plugin = self._group_cfg(stage).plugin
            where = "aideploy.artifacts." if expected.__module__ == "aideploy.artifacts" else ""
            raise PluginError(f"plugin {plugin!r} returned {type(result).__name__} from {stage.hook}; "
                              f"expected {expected.__name__}",
                              hint=f"return an {where}{expected.__name__} (see aideploy.hookspecs)")
        if stage.result == "model":
            dataset = self.ctx.artifacts["dataset"]
            schemas.check_columns(dataset, result.schema, _extra_columns(self.ctx.cfg),
                                  f"model {result.name}:{result.version}")
            self.ctx.plugins.hook.aideploy_check_model(ctx=self.ctx, model=result, dataset=dataset)
            result.commit()  # a model refused above is never registered

    def teardown(self, status: str) -> list[tuple[str, BaseException]]:
        """The teardown stage: plugins' teardown hooks, then resources in reverse order."""
        hook = self.ctx.plugins.hook
        hook.aideploy_before_stage(stage=TEARDOWN, ctx=self.ctx)
        start = time.perf_counter()
        failures: list[tuple[str, BaseException]] = []
        try:
            hook.aideploy_teardown(ctx=self.ctx, status=status)
        except Exception as exc:  # resources must still be released
            log.warning("a plugin's teardown failed: %s", exc)
            failures.append(("aideploy_teardown", exc))
        failures += self.ctx.resources.release_all()
        seconds = time.perf_counter() - start
        self.stage_seconds[TEARDOWN.name] = seconds
        hook.aideploy_after_stage(stage=TEARDOWN, ctx=self.ctx, result=None, seconds=seconds)
        return failures


def _extra_columns(cfg: DictConfig) -> str:
    return str(getattr(cfg.predict.extra_columns, "value", cfg.predict.extra_columns))


def _merge_broadcast(stage: Stage, results: list[dict | None]) -> dict:
    merged: dict[str, Any] = {}
    for part in results:
        for key, value in (part or {}).items():
            if key in merged:
                raise PluginError(f"two plugins report {key!r} from {stage.hook}",
                                  hint="rename the metric in one of them")
            merged[key] = value
    return merged


@contextlib.contextmanager
def _signals_as_interrupts() -> Iterator[None]:
    """SIGTERM becomes :class:`Interrupted` in the main thread, so it tears down like Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, on_term)
    # A command started in the background of a script (`aideploy mode=serve &`) inherits SIGINT
    # ignored; then `kill -INT` would do nothing and a later SIGKILL would orphan the service.
    # Ctrl-C means "tear down and stop" whichever way aideploy was started.
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _shielded() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait while teardown runs: a half-done teardown leaks what it skips."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def later(signum, frame):
        log.warning("teardown in progress; it finishes first")

    previous = {s: signal.signal(s, later) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _serve_until_interrupted(ctx: RunContext) -> None:
    endpoint = ctx.artifacts["endpoint"]
    results_mod.write_endpoint(ctx, endpoint)
    if not endpoint.keep_alive:
        journal.record_deployment(ctx.cfg.home, endpoint.name, endpoint.target, endpoint.scoring_uri)
        log.info("deployed %s; it keeps running after this command (delete with mode=delete "
                 "deployment_name=%s)", endpoint.scoring_uri, endpoint.name)
        return
    log.info("serving at %s (Ctrl-C to stop)", endpoint.scoring_uri)
    while True:
        time.sleep(0.5)
        if endpoint.alive is not None and not endpoint.alive():
            raise AideployError(f"the service {endpoint.name!r} stopped on its own",
                                hint=f"see its log in {ctx.output_dir}")


def _existing_endpoint(ctx: RunContext, given: frozenset[str]) -> None:
    """``mode=predict``: the service at ``scoring_uri``, reached from this process's network,
    and, when no model is given, what the service says about itself. With ``predict.local_model``
    there is no service: the model given scores in the engine's workers."""
    if ctx.cfg.predict.local_model:
        if "model" not in given:
            raise ConfigError("predict.local_model=true scores with the model itself, and none was given",
                              hint="add the model: model=sklearn_pickle model.path=<file> (or model=mlflow, onnx)")
        ctx.artifacts["endpoint"] = None
        ctx.artifacts["network"] = NetworkInfo(kind="none", bind_host="", client_host="")
        return
    if not ctx.cfg.scoring_uri:
        raise ConfigError("mode=predict needs the scoring URI of a running service",
                          hint="add scoring_uri=http://host:port/score (mode=serve prints it and writes endpoint.json)")
    key = os.environ.get(ctx.cfg.scoring_key_env)
    endpoint = Endpoint(ctx.cfg.deployment_name or "existing", "existing", ctx.cfg.scoring_uri,
                        auth_key=Secret(key) if key else None)
    ctx.artifacts["endpoint"] = endpoint
    ctx.artifacts["network"] = NetworkInfo(kind="caller", bind_host="", client_host="")
    if "model" in given and ctx.cfg.encryption.plugin == "plain":  # the model in process says all the client needs
        return
    service = client.describe_service(endpoint, float(ctx.cfg.target.request_timeout))
    if service is None:
        log.info("      the service does not describe itself (a custom score.py?); its answers are written as "
                 "they come")
    ctx.artifacts["service"] = service


def groups_given(overrides: Iterable[str]) -> frozenset[str]:
    """The config groups an override list chooses an option of (``model=onnx``, ``+data=csv``)."""
    given = set()
    for override in overrides:
        name = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and "." not in name and "/" not in name:
            given.add(name)
    return frozenset(given)


def run(cfg: DictConfig, output_dir: Path, choices: dict[str, str], run_id: str | None = None,
        given: frozenset[str] = frozenset(), sweep_job: bool = False) -> dict[str, Any]:
    """Run ``cfg.mode`` to the end, tear down, write results.json and return the results.

    ``given`` names the config groups the command line chose (:func:`groups_given`):
    ``mode=predict`` loads a model only when ``model`` is one of them. ``sweep_job``: a job of a
    multirun, where a setting the job's options do not use is recorded (``not_applied``), not an
    error.

    Raises what stopped the run (an :class:`AideployError`, an unexpected exception or an
    interrupt) after teardown and results; results.json says ``status`` in every case.
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    mode = Mode(cfg.mode)
    run_id = run_id or new_run_id()
    try:
        plugins = PluginRegistry.load(OmegaConf.to_container(cfg.plugins))
    except PluginError as exc:  # nothing ran and nothing needs tearing down, but say so
        ctx = RunContext(cfg=cfg, plugins=None, run_id=run_id, output_dir=output_dir, choices=choices)
        results_mod.write(ctx, results_mod.build(ctx, "failed", exc, {}, []))
        raise
    ctx = RunContext(cfg=cfg, plugins=plugins, run_id=run_id, output_dir=output_dir, choices=choices)
    if mode not in (Mode.list, Mode.gc):
        ctx.resources.journal = journal.Journal(cfg.home, run_id, output_dir, mode.value)
    runner = Runner(ctx)
    status, error = "ok", None
    pipeline = DRY_RUN if cfg.dry_run else PIPELINES[mode]
    http.cancel_requests(False)
    try:
        with _signals_as_interrupts():
            validate.check(cfg, choices)
            ctx.not_applied = not_applied(cfg.encryption) if "encryption" in cfg else []
            if ctx.not_applied and not sweep_job:
                raise ConfigError(f"{ctx.not_applied[0]} does not apply to encryption={choices.get('encryption')}",
                                  hint="drop it, or choose the scheme it belongs to (a sweep may give it beside "
                                  "other schemes: -m encryption=none,fast ...)")
            if ctx.not_applied:
                log.info("      not applied to this job's options: %s", " ".join(ctx.not_applied))
            for stage in pipeline:  # an unknown or unfit plugin fails now, not halfway through the run
                runner._caller(stage)
            if ENCRYPT in pipeline:
                engines.check(ctx)
            journal.housekeeping(ctx, mode, run_id)
            if mode is Mode.predict and not cfg.dry_run:
                _existing_endpoint(ctx, given)
            if mode is Mode.delete and not cfg.deployment_name and not cfg.dry_run:
                raise ConfigError("mode=delete needs the name of the deployment to delete",
                                  hint="add deployment_name=<name> (mode=serve prints it)")
            if mode is Mode.update and not cfg.deployment_name:
                raise ConfigError("mode=update needs the name of the deployment to update",
                                  hint="add deployment_name=<name> (mode=list shows the deployments)")
            for index, stage in enumerate(pipeline, start=1):
                ctx.progress = (index, len(pipeline))
                if stage is MODEL and mode is Mode.predict and "model" not in given:
                    ctx.artifacts["model"] = None  # the service says what the client needs
                    ctx.choices.pop("model", None)
                    log.info("[%d/%d] %-12s skipped: no model given (model=... compares the service with one)",
                             index, len(pipeline), stage.name)
                elif stage is ENCRYPT:
                    engines.run(runner)
                elif stage not in engines.STREAMED:
                    if stage is KEYS and ctx.artifacts.get("service") is not None:
                        client.check_against_service(ctx, ctx.artifacts["service"])
                    runner.run_stage(stage)
                    if stage is KEYS:
                        client.register_keys(ctx)
            if cfg.dry_run:
                results_mod.write_plan(ctx, ctx.artifacts["plan"])
            elif mode is Mode.delete and ctx.artifacts.get("deleted"):
                journal.forget_deployment(cfg.home, cfg.deployment_name)
            elif mode in (Mode.serve, Mode.update):
                try:
                    _serve_until_interrupted(ctx)
                except (KeyboardInterrupt, Interrupted):
                    log.info("stopping the service")
    except (KeyboardInterrupt, Interrupted) as exc:
        status, error = "interrupted", exc
        http.cancel_requests()  # a client thread (network=vnet) is not interrupted by the signal
        raise
    except BaseException as exc:
        status, error = "failed", exc
        raise
    finally:
        with _shielded():
            ctx.progress = (len(pipeline) + 1, len(pipeline))
            failures = runner.teardown(status)
            if ctx.resources.journal is not None:
                ctx.resources.journal.close()
            results = results_mod.build(ctx, status, error, runner.stage_seconds, failures)
            if mode not in (Mode.list, Mode.gc):  # housekeeping prints its own answer; it is not a run
                results_mod.write(ctx, results)
                plugins.hook.aideploy_run_end(ctx=ctx, results=results)
    return results
