"""The client's side of a run: what the service serves, the run's keys registered with it, the
rows' requests sized, and the progress of an engine's work.

The rows themselves go through encrypt, predict and decrypt a chunk at a time in the engine
that ``predict.engine`` names (:mod:`aideploy.engines`): each chunk of ``predict.chunk_rows``
rows is encrypted (the encryption plugin's hook), sent (the target's, ``predict.concurrency``
requests in flight on keep-alive connections), decrypted (the encryption plugin's again) and
appended to the predictions file (:mod:`aideploy.predictions`) before the next is read, so
memory holds one chunk whatever the size of the data.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from aideploy import http, schemas
from aideploy.artifacts import Endpoint, Request, ServiceInfo
from aideploy.errors import ConfigError, PredictError
from aideploy_scoring.schema import Schema

log = logging.getLogger("aideploy")

REQUEST_BYTES = 256 * 1024  # plain requests are sized to about this much JSON (64 KB-1 MB keeps HTTP efficient)
MAX_AUTO_BATCH = 10_000  # rows per request at most when sized automatically
SIZING_ROWS = 64  # rows encoded to measure a row's size


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
    schema = service.schema
    if schema is None and service.n_features is not None:  # a service from before schemas
        schema = Schema.positional(service.n_features, service.feature_names)
    extra = getattr(ctx.cfg.predict.extra_columns, "value", ctx.cfg.predict.extra_columns)
    schemas.check_columns(dataset, schema, extra, f"the service at {uri} ({service.model_summary})")
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


class Progress:
    """Rows answered, rows/s and ETA: a tqdm bar on a terminal, else a log line every ``every``
    seconds (from a timer, so a slow request does not silence it). Answers are counted as they
    arrive (:attr:`RunContext.on_answer`, from the sending threads), each chunk's count made
    exact once it is written (a multi-round scheme answers a row more than once)."""

    def __init__(self, total: int, done: int, every: float) -> None:
        self.total, self.done, self.every = total, done, every
        self.start = time.monotonic()
        self.first = self.limit = done
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, unit="rows", unit_scale=True, dynamic_ncols=True,
                            desc="      predict", leave=False, file=sys.stderr)
        else:
            threading.Thread(target=self._report, name="aideploy-progress", daemon=True).start()

    def chunk(self, rows: int) -> None:
        """The next chunk of ``rows`` rows is being sent."""
        with self.lock:
            self.limit = min(self.total, self.done + rows)

    def answered(self, rows: int) -> None:
        with self.lock:
            step = max(0, min(rows, self.limit - self.done))
            self.done += step
        if self.bar is not None and step:
            self.bar.update(step)

    def written(self, rows: int) -> None:
        """All rows up to ``rows`` are in the predictions file."""
        with self.lock:
            step, self.done = rows - self.done, rows
        if self.bar is not None and step:
            self.bar.update(step)

    def _report(self) -> None:
        while not self.stopped.wait(self.every):
            with self.lock:
                done = self.done
            if done >= self.total:
                continue
            rate = (done - self.first) / max(time.monotonic() - self.start, 1e-9)
            eta = f"ETA {(self.total - done) / rate:.0f} s" if rate > 0 else "waiting for the first answers"
            log.info("      predict: %d/%d rows, %.0f rows/s, %s", done, self.total, rate, eta)

    def close(self) -> None:
        self.stopped.set()
        if self.bar is not None:
            self.bar.close()


def check_width(scores, classes: list | None, index: int) -> None:
    """Answers shaped for another model (more or fewer classes) are refused, not written."""
    for name in ("values", "probabilities"):
        values = getattr(scores, name)
        if values is None or classes is None:
            continue
        if values.shape[1] not in (len(classes), 1 if len(classes) == 2 and name == "values" else -1):
            raise PredictError(f"chunk {index}: the service answered {values.shape[1]} {name} per row, but the "
                               f"model has {len(classes)} classes",
                               hint="is scoring_uri the service of this model? (GET it to see what it serves)")


def plain_body(X: Any) -> bytes:
    """A plain request's JSON body: a table's named columns in pandas' split form (NaN as null),
    numbers by position as ``{"data": [[...]]}``."""
    if hasattr(X, "columns"):
        return X.to_json(orient="split", index=False, force_ascii=False, double_precision=15).encode()
    return json.dumps({"data": np.asarray(X).tolist()}).encode()


def configured_batch(cfg) -> int | None:
    """Rows per request as the config says: ``predict.batch_size``, else (deprecated)
    ``encryption.batch_size``; None for the default (:func:`rows_per_request` sizes it)."""
    given = (cfg.get("predict") or {}).get("batch_size") or cfg.encryption.get("batch_size")
    return int(given) if given else None


def rows_per_request(ctx, dataset) -> int:
    """Rows per request: :func:`configured_batch`, else for plain requests as many rows as make
    ~:data:`REQUEST_BYTES` of JSON (from the first rows), and one row per query for the encrypted
    schemes."""
    if not ctx.cfg.predict.batch_size and ctx.cfg.encryption.get("batch_size"):
        log.warning("      encryption.batch_size is deprecated: it is now predict.batch_size=%d (rows per request for "
                    "every scheme)", ctx.cfg.encryption.batch_size)
    given = configured_batch(ctx.cfg)
    if given:
        return given
    if ctx.cfg.encryption.plugin != "plain":
        return 1
    sample = dataset.sample(SIZING_ROWS)
    if sample is None or not len(sample):
        return 1
    if dataset.schema is not None and dataset.schema.named and hasattr(sample, "columns"):
        sample = sample[[c for c in sample.columns if c in set(dataset.schema.names)]]
    per_row = len(plain_body(sample)) / len(sample)
    return int(max(1, min(MAX_AUTO_BATCH, REQUEST_BYTES // max(per_row, 1.0))))
