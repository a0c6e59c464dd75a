"""``encryption=none``: features in clear, ``{"data": [[...]]}`` -> ``{"scores": [[...]]}``."""

import json

import numpy as np

from aideploy import hookimpl
from aideploy.artifacts import Request, Requests, Scores
from aideploy.errors import PredictError


@hookimpl
def aideploy_setup_keys():
    return None  # nothing to hide, nothing to publish


@hookimpl
def aideploy_encrypt(cfg, dataset):
    X = dataset.X_test
    step = max(1, int(cfg.batch_size))
    return Requests([Request(json.dumps({"data": X[i:i + step].tolist()}).encode(), len(X[i:i + step]))
                     for i in range(0, len(X), step)])


@hookimpl
def aideploy_decrypt(requests, responses):
    rows = []
    for request, response in zip(requests.items, responses.items):
        try:
            scores = json.loads(response.body)["scores"]
        except (ValueError, KeyError, TypeError) as exc:
            raise PredictError(f"the service's answer has no 'scores': {response.body[:200]!r}",
                               hint="is the service running aideploy's score.py?") from exc
        if len(scores) != request.n_samples:
            raise PredictError(f"asked for {request.n_samples} scores, got {len(scores)}")
        rows.extend(scores)
    return Scores(np.asarray(rows, dtype=np.float64))
