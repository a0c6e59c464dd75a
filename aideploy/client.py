"""The client's side of a run: the rows, a chunk at a time, through encrypt, predict and decrypt.

Each chunk of ``predict.chunk_rows`` rows is encrypted (the encryption plugin's hook), sent
(the target's, ``predict.concurrency`` requests in flight on keep-alive connections), decrypted
(the encryption plugin's again) and appended to the predictions file
(:mod:`aideploy.predictions`) before the next is read, so memory holds one chunk whatever the
size of the data. The plugins' hooks see each chunk as a small in-memory
:class:`~aideploy.artifacts.Dataset`. Observers see each of the three stages start with its
first chunk (``before_stage``) and end, all three after the last chunk (``after_stage``, with
its total time), or the one that failed (``on_stage_error``).

A failure keeps every whole chunk already written and says how many rows that is;
``predict.resume=true`` (with ``predict.output`` naming the file) continues after them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import requests

from aideploy import http
from aideploy.artifacts import Endpoint, Request, ServiceInfo, Traffic
from aideploy.errors import AideployError, ConfigError, PredictError
from aideploy.predictions import PredictionsWriter, columns_of
from aideploy.stages import DECRYPT, ENCRYPT, PREDICT

log = logging.getLogger("aideploy")

STREAMED = (ENCRYPT, PREDICT, DECRYPT)
"""The stages run once per chunk of rows, in this order."""


def output_path(ctx) -> Path:
    """Where the predictions go: ``predict.output``, else the run's output dir."""
    cfg = ctx.cfg.predict
    fmt = getattr(cfg.output_format, "value", cfg.output_format)
    if cfg.output:
        return Path(cfg.output).expanduser()
    if cfg.resume:
        raise ConfigError("predict.resume=true needs the file to continue",
                          hint="add predict.output=<the earlier run's predictions.csv>")
    return ctx.output_dir / f"predictions.{fmt}"


def describe_service(endpoint: Endpoint, timeout: float) -> ServiceInfo | None:
    """What the service says about itself (``GET`` on its scoring URI), or None if it does not say.

    aideploy's own score.py answers; a custom scoring script usually does not, and is then
    predicted as it answers.
    """
    with http.session(retries=1) as s:
        try:
            answer = s.get(endpoint.scoring_uri, headers=endpoint.headers(), timeout=timeout)
        except requests.Timeout:
            raise PredictError(f"the service at {endpoint.scoring_uri} did not say what it serves within {timeout:g} s",
                               hint="raise target.request_timeout, or check the service's log") from None
        except requests.RequestException as exc:
            raise PredictError(f"cannot reach the service at {endpoint.scoring_uri}: {type(exc).__name__}",
                               hint="is it running? mode=serve prints its scoring URI") from None
    if answer.status_code == 401:
        raise PredictError(f"the service at {endpoint.scoring_uri} answered HTTP 401: wrong or missing key",
                           hint="put the service's key in the environment variable named by scoring_key_env")
    if answer.status_code == 400:  # aideploy's service cannot serve what this run asks for
        try:
            reason = answer.json().get("error", answer.text)
        except ValueError:
            reason = answer.text[:300]
        raise PredictError(f"the service at {endpoint.scoring_uri} cannot describe itself for this run: {reason}",
                           hint="check the encryption options against the service's model")
    try:
        info = answer.json()
    except ValueError:
        return None
    if not (answer.status_code == 200 and isinstance(info, dict) and info.get("service") == "aideploy"):
        return None
    return ServiceInfo.from_json(info)


def check_against_service(ctx, service: ServiceInfo) -> None:
    """The data and the encryption scheme fit what the service serves, or a ConfigError."""
    dataset = ctx.artifacts["dataset"]
    uri = ctx.cfg.scoring_uri
    if service.n_features is not None and dataset.n_features != service.n_features:
        raise ConfigError(f"{dataset.name} has {dataset.n_features} feature columns but the service at {uri} "
                          f"takes {service.n_features} ({service.model_summary})",
                          hint="choose the feature columns with data.feature_columns=[...] (data.label_column "
                          "for the label), or predict against the service for this data")
    scheme = ctx.cfg.encryption.plugin
    refused = (service.fast or {}).get("error") if scheme == "fast" else None
    if refused:
        raise ConfigError(f"the service at {uri} cannot serve encryption=fast: {refused}",
                          hint="deploy it with a larger encryption.max_error, or predict with encryption=none")
    if scheme not in ("plain", "none") and scheme not in service.schemes:
        raise ConfigError(f"the service at {uri} serves {', '.join(service.schemes)}, not encryption={scheme}",
                          hint=f"use encryption={service.schemes[-1]}, or deploy with encryption={scheme}")


def register_keys(ctx) -> None:
    """Send the run's public keys to aideploy's service once, before any query.

    The service fetches and parses them then (one request to the key store, shared by every
    worker), so no query waits for the store, and a key the service cannot read (a SAS it
    refuses, a store it cannot reach) fails here, before any row is encrypted. Only for keys
    that ask for it (``KeySession.register``) and a service known to take it: aideploy's own
    ``score.py`` deployed by this run, or one that describes itself with protocol 2 or later.
    """
    keys, endpoint = ctx.artifacts.get("keys"), ctx.artifacts.get("endpoint")
    if keys is None or not keys.register or endpoint is None:
        return
    service, code = ctx.artifacts.get("service"), ctx.artifacts.get("code")
    if not ((service is not None and service.protocol >= 2) or (code is not None and code.builtin)):
        return
    body = json.dumps({"scheme": keys.scheme, "register_key": True, **keys.public}).encode()
    item = Request(body, 0, {"Content-Type": "application/json"})
    http_client = ctx.http_client(endpoint, float(ctx.cfg.target.request_timeout))
    start = time.perf_counter()
    try:
        ctx.artifacts["network"].call(http_client.send, item, "the key registration")
    except PredictError as exc:
        raise PredictError(f"the service cannot use this run's public keys: {exc.cause}",
                           hint="the service must reach the key store (keystore=...) and accept its SAS; "
                           f"{exc.hint}") from None
    log.info("      keys %s registered with the service in %.0f ms", keys.key_id, 1000 * (time.perf_counter() - start))


class _Progress:
    """Rows done, rows/s and ETA: a tqdm bar on a terminal, else a log line every few seconds."""

    def __init__(self, total: int, done: int, every: float) -> None:
        self.total, self.done, self.every = total, done, every
        self.start = self.last = time.monotonic()
        self.first = done
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="rows", unit_scale=True, dynamic_ncols=True,
                            desc="      predict", leave=False, file=sys.stderr)

    def update(self, rows: int) -> None:
        self.done += rows
        if self.bar is not None:
            self.bar.update(rows)
            return
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            rate = (self.done - self.first) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            log.info("      predict: %d/%d rows, %.0f rows/s, ETA %.0f s", self.done, self.total, rate, eta)
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_width(scores, classes: list | None, index: int) -> None:
    """Answers shaped for another model (more or fewer classes) are refused, not written."""
    for name in ("values", "probabilities"):
        values = getattr(scores, name)
        if values is None or classes is None:
            continue
        if values.shape[1] not in (len(classes), 1 if len(classes) == 2 and name == "values" else -1):
            raise PredictError(f"chunk {index}: the service answered {values.shape[1]} {name} per row, but the "
                               f"model has {len(classes)} classes",
                               hint="is scoring_uri the service of this model? (GET it to see what it serves)")


def stream(runner) -> None:
    """Run :data:`STREAMED` over the rows, chunk by chunk, into the predictions file."""
    ctx = runner.ctx
    cfg = ctx.cfg.predict
    dataset = ctx.artifacts["dataset"]
    facts = ctx.artifacts.get("model") or ctx.artifacts.get("service")
    task, classes = (facts.task, facts.classes) if facts is not None else (None, None)
    writer = PredictionsWriter(output_path(ctx), getattr(cfg.output_format, "value", cfg.output_format),
                               cfg.resume)
    if writer.resumed:
        log.info("      resuming %s after its %d rows", writer.info.path, writer.resumed)
    ctx.artifacts["predictions"] = writer.info
    traffic = ctx.artifacts["traffic"] = Traffic()
    seconds = {stage.name: 0.0 for stage in STREAMED}
    batch = max(1, int(ctx.cfg.encryption.get("batch_size", 1) or 1))
    size = max(int(cfg.chunk_rows), batch * int(cfg.concurrency))
    size = -(-size // batch) * batch  # whole requests per chunk
    progress = _Progress(dataset.n_samples, writer.rows, float(cfg.progress_seconds))
    current = ENCRYPT
    started: set[str] = set()
    first, total = ctx.progress
    try:
        for index, chunk in enumerate(dataset.chunks(size, writer.rows), start=1):
            results: dict[str, Any] = {"dataset": chunk}
            for current in STREAMED:
                if current.name not in started:  # observers: the stage starts with its first chunk
                    started.add(current.name)
                    ctx.progress = (first + STREAMED.index(current), total)
                    ctx.plugins.hook.aideploy_before_stage(stage=current, ctx=ctx)
                start = time.perf_counter()
                results[current.result] = runner.call(current, **results)
                seconds[current.name] += time.perf_counter() - start
            traffic.add(results["requests"], results["responses"])
            scores = results["scores"]
            _check_width(scores, classes, index)
            columns = columns_of(scores, task, classes)
            if columns is None:
                kept = traffic.unread_answers
                kept += [str(answer)[:200] for answer in (scores.answers or [])][:3 - len(kept)]
            else:
                writer.write(columns)
            progress.update(len(chunk.X_test))
    except BaseException as exc:
        progress.close()
        info = writer.close()
        runner.stage_seconds.update(seconds)
        if isinstance(exc, AideployError) and info.rows:
            exc.cause += f" ({info.rows - writer.resumed} rows were predicted; {info.rows} are in {info.path})"
            exc.hint += f"; predict.resume=true predict.output={info.path} continues after them"
        ctx.plugins.hook.aideploy_on_stage_error(stage=current, ctx=ctx, error=exc)
        raise
    progress.close()
    info = writer.close()
    if not info.rows and info.path.exists():
        info.path.unlink()
    runner.stage_seconds.update(seconds)
    for offset, (stage, result) in enumerate(zip(STREAMED, (traffic, traffic, info))):
        ctx.progress = (first + offset, total)
        if stage.name not in started:  # no rows left to send (a file resumed to its end)
            ctx.plugins.hook.aideploy_before_stage(stage=stage, ctx=ctx)
        runner.observe(stage, result, seconds[stage.name])
