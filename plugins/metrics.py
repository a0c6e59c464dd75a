"""The evaluate stage's built-in metrics: accuracy, agreement, score error, latency, bytes."""

import numpy as np

from aideploy import hookimpl
from aideploy.results import percentiles


def predicted_labels(estimator, scores: np.ndarray) -> np.ndarray:
    """Labels from decision scores as the estimator's own ``predict`` would choose them."""
    classes = getattr(estimator, "classes_", None)
    if scores.shape[1] == 1:  # binary: the one score is the positive class's margin
        index = (scores[:, 0] > 0).astype(int)
    else:
        index = scores.argmax(axis=1)
    return classes[index] if classes is not None else index


@hookimpl
def aideploy_evaluate(dataset, model, keys, requests, responses, scores):
    X, y = dataset.X_test, dataset.y_test
    estimator = model.estimator
    reference = np.asarray(estimator.decision_function(X), dtype=np.float64).reshape(len(X), -1)
    service = predicted_labels(estimator, scores.values)
    in_process = estimator.predict(X)
    return {
        "n_samples": int(len(X)),
        "accuracy": float(np.mean(service == y)),
        "plaintext_accuracy": float(np.mean(in_process == y)),
        "agreement": float(np.mean(service == in_process)),
        "max_score_error": float(np.max(np.abs(scores.values - reference))),
        "latency_ms": percentiles([r.latency_ms for r in responses.items]),
        "requests": len(requests.items),
        "bytes": {
            "request": int(np.median([r.request_bytes for r in responses.items])),
            "response": int(np.median([len(r.body) for r in responses.items])),
            "keys": int(keys.key_bytes) if keys is not None else 0,
        },
    }
