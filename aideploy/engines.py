"""The prediction loop as a plugin: an engine drives every row through the client's hooks.

``predict.engine`` names the engine, a plugin serving :func:`~aideploy.hookspecs.aideploy_predict_engine`,
chosen as a target or a scheme is: an unknown name is an error listing the engines installed.
Built in:

- ``stream`` (the default, ``aideploy_plugins.engine_stream``): this process reads the rows a
  chunk at a time and writes one predictions file;
- ``ray`` (``aideploy_plugins.engine_ray``): the files of a folder or glob scored in parallel by
  Ray workers, each a client of its own, one predictions file per input file, resumable per file.

Whatever the engine, a chunk of rows is scored the one way :class:`Scoring` knows: the
encryption plugin's ``aideploy_encrypt``, the target's ``aideploy_predict`` and the encryption
plugin's ``aideploy_decrypt``; a scheme that needs more requests for an answer (the fast MLP's
rounds) sends them through the target's hook too (:meth:`aideploy.context.RunContext.send`).
With ``predict.local_model=true`` (``mode=predict`` with a model, no service) the model scores
the chunk in the engine's own process instead, as the service would.

An engine that scores in other processes hands each a :class:`ClientSpec` (picklable), whose
:meth:`~ClientSpec.open` makes the same :class:`Scoring` there: the run's plugins and config, the
service's endpoint, and keys of the worker's own (an encrypted scheme's secret key never leaves
the process that made it).

Observers see the encrypt, predict and decrypt stages around the engine: each begins with the
first chunk the run's own process scores (or when the engine starts its workers) and ends, all
three, once the engine has returned, with the run's traffic and predictions.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from aideploy import client
from aideploy.artifacts import Dataset, Endpoint, RegisteredModel, Requests, Responses, Scores, Traffic
from aideploy.errors import ConfigError, PluginError, PredictError
from aideploy.predictions import Predictions, PredictionsWriter, columns_of
from aideploy.stages import DECRYPT, ENCRYPT, KEYS, PREDICT, Mode, Stage

log = logging.getLogger("aideploy")

HOOK = "aideploy_predict_engine"
STREAMED = (ENCRYPT, PREDICT, DECRYPT)
"""The stages an engine runs, per chunk, in this order."""


@dataclass
class Scored:
    """What an engine returns: the run's requests (sizes and latencies) and its predictions file(s)."""

    traffic: Traffic
    predictions: Predictions


class Scoring:
    """One client's way to score rows: the run's hooks (or its model) on a chunk at a time.

    ``runner`` is this process's :class:`aideploy.runner.Runner`; ``observed``: whether this is the
    run's own process, whose observers see the stages begin (an engine's workers are not).
    """

    def __init__(self, runner: Any, observed: bool = True) -> None:
        self.runner, self.ctx = runner, runner.ctx
        self.observed = observed
        self.traffic = Traffic()
        self.seconds = {stage.name: 0.0 for stage in STREAMED}
        self.started: set[str] = set()
        self.current: Stage = ENCRYPT
        self.first_stage = self.ctx.progress[0]
        facts = self.ctx.artifacts.get("model") or self.ctx.artifacts.get("service")
        self.task, self.classes = (facts.task, facts.classes) if facts is not None else (None, None)
        self.local = self.ctx.cfg.predict.local_model
        self.batch = self.ctx.batch_size
        self.chunks = 0

    def size_requests(self, dataset: Dataset) -> int:
        """Rows per request for ``dataset`` (:func:`aideploy.client.rows_per_request`), kept on ``ctx``."""
        self.batch = self.ctx.batch_size = client.rows_per_request(self.ctx, dataset)
        return self.batch

    @property
    def chunk_rows(self) -> int:
        """Rows read per chunk: ``predict.chunk_rows``, at least one request per connection, whole requests."""
        cfg = self.ctx.cfg.predict
        size = max(int(cfg.chunk_rows), self.batch * int(cfg.concurrency))
        return -(-size // self.batch) * self.batch

    def begin(self, stage: Stage) -> None:
        """Tell the observers ``stage`` begins (once per run, in the run's own process only)."""
        if stage.name in self.started or not self.observed:
            return
        self.started.add(stage.name)
        self.ctx.progress = (self.first_stage + STREAMED.index(stage), self.ctx.progress[1])
        self.ctx.plugins.hook.aideploy_before_stage(stage=stage, ctx=self.ctx)

    def score(self, chunk: Dataset, results: dict[str, Any]) -> Scores:
        """``chunk``'s Scores; ``results`` keeps each stage's result as it comes (for salvage)."""
        if self.local:
            return self._in_process(chunk)
        results["dataset"] = chunk
        for self.current in STREAMED:
            self.begin(self.current)
            start = time.perf_counter()
            results[self.current.result] = self.runner.call(self.current, **results)
            self.seconds[self.current.name] += time.perf_counter() - start
        self.traffic.add(results["requests"], results["responses"])
        self.chunks += 1
        scores = results["scores"]
        client.check_width(scores, self.classes, self.chunks)
        return scores

    def _in_process(self, chunk: Dataset) -> Scores:
        self.current = PREDICT
        for stage in STREAMED:
            self.begin(stage)
        start = time.perf_counter()
        answer = self.ctx.artifacts["model"].adapter.predict(chunk.X_test)
        self.seconds[PREDICT.name] += time.perf_counter() - start
        return Scores(values=answer.scores, predictions=answer.predictions, probabilities=answer.probabilities)

    def rows_into(self, dataset: Dataset, writer: PredictionsWriter, progress: Any = None) -> None:
        """Score ``dataset`` from ``writer``'s next row on into ``writer``, a chunk at a time.

        A chunk's predictions are written before the next is read, so memory holds one chunk. If
        the target's predict fails midway through a chunk, the answers it got are decrypted and
        written first (no answered row is lost), then the error goes on.
        """
        for chunk in dataset.chunks(self.chunk_rows, writer.rows):
            results: dict[str, Any] = {}
            if progress is not None:
                progress.chunk(len(chunk.X_test))
            try:
                scores = self.score(chunk, results)
            except PredictError as exc:
                if self.current is PREDICT:
                    self._salvage(results.get("requests"), exc.answered, writer)
                raise
            columns = columns_of(scores, self.task, self.classes)
            if columns is None:
                kept = self.traffic.unread_answers
                kept += [str(answer)[:200] for answer in (scores.answers or [])][:3 - len(kept)]
            else:
                writer.write(columns)
            if progress is not None:
                progress.written(writer.rows)

    def _salvage(self, requests: Requests | None, answered: list, writer: PredictionsWriter) -> None:
        if not answered or requests is None:
            return
        try:
            scores = self.runner.call(DECRYPT, requests=Requests(requests.items[:len(answered)]),
                                      responses=Responses(answered))
            columns = columns_of(scores, self.task, self.classes)
        except Exception as exc:  # noqa: BLE001 - the run's own failure is the one to report
            log.warning("      the %d answers before the failure could not be read back: %s", len(answered), exc)
            return
        if columns is not None:
            writer.write(columns)

    def spec(self) -> "ClientSpec":
        """What a client in another process needs to score as this one does (see :class:`ClientSpec`)."""
        ctx, artifacts = self.ctx, self.ctx.artifacts
        endpoint, network = artifacts.get("endpoint"), artifacts.get("network")
        if network is not None and network.run_client is not None:
            raise ConfigError(f"predict.engine={ctx.cfg.predict.engine} cannot reach a service in network="
                              f"{network.kind}: its workers run outside the private network",
                              hint="use network=public, or predict.engine=stream (it sends from inside the network)")
        if endpoint is not None:  # what tells whether the service is up is this process's
            endpoint = Endpoint(endpoint.name, endpoint.target, endpoint.scoring_uri, endpoint.auth_key,
                                details=dict(endpoint.details))
        model = artifacts.get("model")
        return ClientSpec(
            cfg=OmegaConf.to_container(ctx.cfg, resolve=True), choices=dict(ctx.choices), run_id=ctx.run_id,
            output_dir=ctx.output_dir, batch_size=self.batch, endpoint=endpoint, network=network,
            service=artifacts.get("service"), code=artifacts.get("code"),
            model=(model.name, model.version, str(model.path), model.payload, model.kind) if model else None,
            task=self.task, classes=self.classes)


@dataclass
class ClientSpec:
    """A run's client, as a worker process opens it again: picklable (no model object, no keys)."""

    cfg: dict[str, Any]
    choices: dict[str, str]
    run_id: str
    output_dir: Path
    batch_size: int
    endpoint: Endpoint | None
    network: Any
    service: Any
    code: Any
    model: tuple | None  # (name, version, path, payload, kind) of the registered version
    task: str | None = None
    classes: list | None = None
    opened: Any = field(default=None, repr=False)

    def open(self) -> Scoring:
        """In this process: the run's plugins, config and service, the model loaded from the registry
        (``predict.local_model``, or for a scheme that derives its parameters from it), and keys of
        this process's own, made and published (and registered with the service) here."""
        from aideploy.context import RunContext
        from aideploy.manager import PluginRegistry
        from aideploy.runner import Runner

        cfg = OmegaConf.create(self.cfg)
        plugins = PluginRegistry.load(list(cfg.plugins))
        ctx = RunContext(cfg=cfg, plugins=plugins, run_id=self.run_id, output_dir=self.output_dir,
                         choices=dict(self.choices))
        runner = Runner(ctx, observed=False)
        ctx.batch_size = self.batch_size
        ctx.artifacts.update(endpoint=self.endpoint, network=self.network, service=self.service, code=self.code,
                             model=self._model())
        self.opened = ctx
        if not cfg.predict.local_model:
            ctx.artifacts["keys"] = runner.call(KEYS)
            client.register_keys(ctx)
        scoring = Scoring(runner, observed=False)
        scoring.task, scoring.classes = self.task, self.classes
        return scoring

    def _model(self) -> RegisteredModel | None:
        if self.model is None:
            return None
        from aideploy_scoring.models import load_dir

        name, version, path, payload, kind = self.model
        return RegisteredModel(name, version, Path(path), payload, kind, adapter=load_dir(path))

    def close(self) -> None:
        """Release what :meth:`open` acquired in this process (connections, key blobs)."""
        if self.opened is not None:
            self.opened.resources.release_all()
            self.opened = None


def check(ctx: Any) -> None:
    """What no engine can do with this config, found before any stage (the engine must exist too)."""
    cfg = ctx.cfg.predict
    ctx.plugins.stage_caller(HOOK, cfg.engine, "predict.engine")
    if not cfg.local_model:
        return
    if ctx.mode is not Mode.predict:
        raise ConfigError(f"predict.local_model=true scores without a service, and mode={ctx.mode.value} deploys one",
                          hint="use it with mode=predict model=... (no scoring_uri needed)")
    if ctx.cfg.encryption.plugin != "plain":
        raise ConfigError(f"predict.local_model=true scores the rows in clear in this machine's workers; "
                          f"encryption={ctx.choices.get('encryption', ctx.cfg.encryption.plugin)} has nothing to hide "
                          "them from", hint="drop encryption=..., or predict against a service")


def run(runner: Any) -> None:
    """Run the chosen engine in place of the encrypt, predict and decrypt stages, with their observers."""
    ctx = runner.ctx
    scoring = Scoring(runner)
    caller = ctx.plugins.stage_caller(HOOK, ctx.cfg.predict.engine, "predict.engine")
    try:
        scored = caller(cfg=ctx.cfg.predict, ctx=ctx, scoring=scoring)
        if not isinstance(scored, Scored):
            raise PluginError(f"engine {ctx.cfg.predict.engine!r} returned {type(scored).__name__} from {HOOK}; "
                              "expected Scored", hint="return an aideploy.engines.Scored (see aideploy.hookspecs)")
    except BaseException as exc:
        ctx.on_answer = None
        runner.stage_seconds.update(scoring.seconds)
        ctx.plugins.hook.aideploy_on_stage_error(stage=scoring.current, ctx=ctx, error=exc)
        raise
    ctx.on_answer = None
    ctx.artifacts["traffic"], ctx.artifacts["predictions"] = scored.traffic, scored.predictions
    runner.stage_seconds.update(scoring.seconds)
    results = (scored.traffic, scored.traffic, scored.predictions)
    for offset, (stage, result) in enumerate(zip(STREAMED, results)):
        scoring.begin(stage)  # no rows were left to send (a file resumed to its end): it begins here
        ctx.progress = (scoring.first_stage + offset, ctx.progress[1])
        runner.observe(stage, result, scoring.seconds[stage.name])
