"""The evaluate stage's built-in metrics, by task, plus latency and bytes for every run.

- Classifiers: accuracy (when the data has labels), plaintext accuracy (the model in process),
  agreement (the share of service predictions equal to the in-process ones), and the largest
  score or probability difference from the in-process model.
- Regressors: RMSE and R² of the service's predictions (and of the in-process model's), and the
  largest absolute difference from the in-process ``predict``.
- Every run: latency per request and per sample (p50/p90/p99 of the steady state; the first
  requests, when there are enough, are listed apart as ``warmup_latency_ms``), and bytes.

The service's predictions come from its answers (``predictions``), or, for encrypted schemes
that return decision scores, are chosen from those scores as the model's ``predict`` would.
Answers that hold neither are recorded as they came, and the metrics say why they are missing.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aideploy import hookimpl
from aideploy.results import percentiles
from aideploy_scoring.models import CLASSIFICATION, REGRESSION, Prediction, infer_task


def labels_from_scores(classes: list | None, scores: np.ndarray) -> np.ndarray:
    """Labels from decision scores as a linear classifier's own ``predict`` chooses them."""
    if scores.shape[1] == 1:  # binary: the one score is the positive class's margin
        index = (scores[:, 0] > 0).astype(int)
    else:
        index = scores.argmax(axis=1)
    return np.asarray(classes)[index] if classes is not None else index


def service_predictions(task: str, classes: list | None, scores) -> np.ndarray | None:
    if scores.predictions is not None:
        return scores.predictions
    if scores.values is None:
        return None
    if task == CLASSIFICATION:
        return labels_from_scores(classes, scores.values)
    return scores.values[:, 0] if scores.values.shape[1] == 1 else scores.values


def _max_diff(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)), initial=0.0))


def _same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # JSON turns labels into ints or strings; compare them as text when the types differ.
    if a.dtype.kind != b.dtype.kind:
        return a.astype(str) == b.astype(str)
    return a == b


def classification_metrics(reference: Prediction, service: np.ndarray, scores, y: np.ndarray | None) -> dict:
    in_process = np.asarray(reference.predictions)
    metrics: dict[str, Any] = {
        "accuracy": float(np.mean(_same_labels(service, y))) if y is not None else None,
        "plaintext_accuracy": float(np.mean(_same_labels(in_process, y))) if y is not None else None,
        "agreement": float(np.mean(_same_labels(service, in_process))),
    }
    score_error = _max_diff(scores.values, reference.scores)
    if score_error is not None:
        metrics["max_score_error"] = score_error
    probability_error = _max_diff(scores.probabilities, reference.probabilities)
    if probability_error is not None:
        metrics["max_probability_error"] = probability_error
    return metrics


def _rmse_r2(pred: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    residual = np.asarray(pred, dtype=np.float64).reshape(y.shape) - y
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual ** 2)) / total if total > 0 else float("nan")
    return float(np.sqrt(np.mean(residual ** 2))), r2


def regression_metrics(reference: Prediction, service: np.ndarray, y: np.ndarray | None) -> dict:
    in_process = np.asarray(reference.predictions, dtype=np.float64)
    metrics: dict[str, Any] = {"max_abs_diff": _max_diff(service, in_process)}
    if y is not None:
        y = np.asarray(y, dtype=np.float64)
        metrics["rmse"], metrics["r2"] = _rmse_r2(service, y)
        metrics["plaintext_rmse"], metrics["plaintext_r2"] = _rmse_r2(in_process, y)
    return metrics


WARMUP_REQUESTS = 3


@hookimpl
def aideploy_evaluate(dataset, model, keys, requests, responses, scores):
    X, y = dataset.X_test, dataset.y_test
    latencies = [r.latency_ms for r in responses.items]
    # The first requests of a fresh service (connections, caches, lazy imports) are reported
    # apart, so that one cold request does not become the steady state's p99.
    warmup = WARMUP_REQUESTS if len(latencies) >= 4 * WARMUP_REQUESTS else 0
    per_sample = [r.latency_ms / max(1, q.n_samples) for q, r in zip(requests.items, responses.items)]
    metrics: dict[str, Any] = {
        "n_samples": int(len(X)),
        "latency_ms": percentiles(latencies[warmup:]),
        "latency_per_sample_ms": percentiles(per_sample[warmup:]),
        "warmup_latency_ms": [round(v, 3) for v in latencies[:warmup]],
        "requests": len(requests.items),
        "bytes": {
            "request": int(np.median([r.request_bytes for r in responses.items])),
            "response": int(np.median([len(r.body) for r in responses.items])),
            "keys": int(keys.key_bytes) if keys is not None else 0,
        },
    }
    reference = model.adapter.predict(X)
    task = model.task or infer_task(np.asarray(reference.predictions))
    metrics["task"] = task
    service = service_predictions(task, model.classes, scores)
    if service is None:
        metrics["evaluation"] = ("the service's answers hold no 'predictions' (nor a bare list); accuracy "
                                 "could not be computed")
        metrics["answers_sample"] = [str(a)[:200] for a in (scores.answers or [])[:3]]
        return metrics
    if len(service) != len(X):
        metrics["evaluation"] = f"the service answered {len(service)} predictions for {len(X)} samples"
        return metrics
    if task == REGRESSION:
        metrics.update(regression_metrics(reference, service, y))
    else:
        metrics.update(classification_metrics(reference, service, scores, y))
    return metrics
