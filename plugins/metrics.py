"""The evaluate stage's built-in metrics, by task, plus latency and bytes for every run.

The metrics are computed from the predictions file itself, read back a chunk at a time beside
the data, so they describe exactly what the user got and memory stays bounded.

- Classifiers: accuracy (when the data has labels), plaintext accuracy (the model in process,
  when there is one), agreement (the share of service predictions equal to the in-process
  ones), and the largest score or probability difference from the in-process model.
- Regressors: RMSE and R² of the service's predictions (and of the in-process model's), and the
  largest absolute difference from the in-process ``predict``.
- Every run: latency per request and per sample (p50/p90/p99 of the steady state; the first
  requests, when there are enough, are listed apart as ``warmup_latency_ms``), and bytes.

Without a model (``mode=predict`` against a scoring URI) only what the labels allow is
computed; without labels, none of the accuracy metrics, and nothing fails.
"""

from __future__ import annotations

import logging
from typing import Any, Iterator

import numpy as np

from aideploy import hookimpl
from aideploy.predictions import same_labels, text_against_numbers
from aideploy.results import percentiles
from aideploy_scoring.models import REGRESSION, infer_task

log = logging.getLogger("aideploy")
WARMUP_REQUESTS = 3
CHUNK_ROWS = 8192


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)), initial=0.0))


def _paired(data: Iterator, frames: Iterator) -> Iterator[tuple[Any, Any]]:
    """Data chunks and predictions frames cut to the same rows (their chunk sizes may differ)."""
    chunk = frame = None
    while True:
        if chunk is None or not len(chunk.X_test):
            chunk = next(data, None)
        if frame is None or not len(frame):
            frame = next(frames, None)
        if chunk is None or frame is None:
            return
        n = min(len(chunk.X_test), len(frame))
        y = chunk.y_test[:n] if chunk.y_test is not None else None
        yield chunk.X_test[:n], y, frame.iloc[:n]
        chunk.X_test = chunk.X_test[n:]
        chunk.y_test = chunk.y_test[n:] if chunk.y_test is not None else None
        frame = frame.iloc[n:]


def _columns(frame, prefix: str) -> np.ndarray | None:
    names = [c for c in frame.columns if str(c).startswith(prefix)]
    return frame[names].to_numpy() if names else None


class _Tally:
    """Running sums for the metrics, one chunk at a time."""

    def __init__(self) -> None:
        self.n = 0
        self.labelled = 0
        self.warned = False  # the labels' type differs from the predictions' (said once)
        self.sums: dict[str, float] = {}
        self.max: dict[str, float] = {}

    def add(self, name: str, value: float) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def high(self, name: str, value: float | None) -> None:
        if value is not None:
            self.max[name] = max(self.max.get(name, 0.0), value)


def _classification(t: _Tally, service: np.ndarray, y, reference, frame, scores) -> None:
    if y is not None:
        if not t.warned and text_against_numbers(service, y):
            t.warned = True
            log.warning("      the labels and the predictions differ in type (e.g. %r and %r); compared as numbers",
                        np.asarray(y).ravel()[0], np.asarray(service).ravel()[0])
        t.add("correct", np.sum(same_labels(service, y)))
        if reference is not None:
            t.add("plain_correct", np.sum(same_labels(np.asarray(reference.predictions), y)))
    if reference is not None:
        t.add("agree", np.sum(same_labels(service, np.asarray(reference.predictions))))
        t.high("max_score_error", _max_diff(_columns(frame, "score_"), scores))
        t.high("max_probability_error", _max_diff(_columns(frame, "proba_"), reference.probabilities))


def _regression(t: _Tally, service: np.ndarray, y, reference) -> None:
    service = np.asarray(service, dtype=np.float64)
    if y is not None:
        y = np.asarray(y, dtype=np.float64).reshape(service.shape)
        t.add("sq", np.sum((service - y) ** 2))
        t.add("y", np.sum(y))
        t.add("yy", np.sum(y ** 2))
        if reference is not None:
            in_process = np.asarray(reference.predictions, dtype=np.float64).reshape(service.shape)
            t.add("plain_sq", np.sum((in_process - y) ** 2))
    if reference is not None:
        t.high("max_abs_diff", _max_diff(service, np.asarray(reference.predictions, dtype=np.float64)
                                         .reshape(service.shape)))


def _regression_results(t: _Tally) -> dict[str, Any]:
    metrics: dict[str, Any] = {"max_abs_diff": t.max["max_abs_diff"]} if "max_abs_diff" in t.max else {}
    if t.labelled:
        total = t.sums["yy"] - t.sums["y"] ** 2 / t.labelled
        for prefix, name in (("", "sq"), ("plaintext_", "plain_sq")):
            if name in t.sums:
                metrics[f"{prefix}rmse"] = float(np.sqrt(t.sums[name] / t.labelled))
                metrics[f"{prefix}r2"] = 1.0 - t.sums[name] / total if total > 0 else float("nan")
    return metrics


def _classification_results(t: _Tally) -> dict[str, Any]:
    share = (lambda name, of: t.sums[name] / of if name in t.sums and of else None)
    metrics = {"accuracy": share("correct", t.labelled), "plaintext_accuracy": share("plain_correct", t.labelled),
               "agreement": share("agree", t.n), **t.max}
    return {name: value for name, value in metrics.items() if value is not None}


def _traffic_metrics(traffic, keys) -> dict[str, Any]:
    latencies = traffic.latency_ms
    # The first requests of a fresh service (connections, caches, lazy imports) are reported
    # apart, so that one cold request does not become the steady state's p99.
    warmup = WARMUP_REQUESTS if len(latencies) >= 4 * WARMUP_REQUESTS else 0
    per_sample = [ms / max(1, n) for ms, n in zip(latencies, traffic.samples)]
    return {
        "latency_ms": percentiles(latencies[warmup:]),
        "latency_per_sample_ms": percentiles(per_sample[warmup:]),
        "warmup_latency_ms": [round(v, 3) for v in latencies[:warmup]],
        "requests": len(latencies),
        "bytes": {
            "request": int(np.median(traffic.request_bytes)) if latencies else 0,
            "response": int(np.median(traffic.response_bytes)) if latencies else 0,
            "keys": int(keys.key_bytes) if keys is not None else 0,
        },
        "bytes_per_row": {
            "request": round(sum(traffic.request_bytes) / rows, 1) if (rows := sum(traffic.samples)) else None,
            "response": round(sum(traffic.response_bytes) / rows, 1) if rows else None,
        },
    }


@hookimpl
def aideploy_evaluate(dataset, model, keys, traffic, predictions, service):
    metrics: dict[str, Any] = {"n_samples": int(dataset.n_samples), **_traffic_metrics(traffic, keys)}
    if not predictions.rows:
        metrics["evaluation"] = ("the service's answers hold no 'predictions' (nor a bare list); accuracy "
                                 "could not be computed")
        metrics["answers_sample"] = list(traffic.unread_answers)
        return metrics
    facts = model if model is not None else service
    task = facts.task if facts is not None else None
    tally = _Tally()
    for X, y, frame in _paired(dataset.chunks(CHUNK_ROWS), predictions.chunks(CHUNK_ROWS)):
        names = [c for c in frame.columns if str(c).startswith("prediction")]
        served = frame[names].to_numpy() if len(names) > 1 else frame[names[0]].to_numpy()
        task = task or infer_task(served)
        reference = model.adapter.predict(X) if model is not None else None
        scores = None
        if reference is not None and any(str(c).startswith("score_") for c in frame.columns):
            scores = reference.scores if reference.scores is not None else model.adapter.decision_scores(X)
        tally.n += len(frame)
        tally.labelled += len(frame) if y is not None else 0
        if task == REGRESSION:
            _regression(tally, served, y, reference)
        else:
            _classification(tally, served, y, reference, frame, scores)
    metrics["task"] = task
    if tally.n != dataset.n_samples:
        metrics["evaluation"] = f"{predictions.path} holds {tally.n} predictions for {dataset.n_samples} samples"
    metrics.update(_regression_results(tally) if task == REGRESSION else _classification_results(tally))
    return metrics
