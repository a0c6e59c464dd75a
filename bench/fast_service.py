#!/usr/bin/env python
"""The service's own work per ``encryption=fast`` request, in process: ``ScoringService.handle_http``
for one query of one sample, the client's key already loaded (the key cache's hit), no HTTP.

The model is the default run's (digits, LogisticRegression), registered as the model stage does
it (its schema, and so its input ranges, captured from the run's data); the client takes the
parameters (and the input ranges, where the service publishes them) from the service's
description, as ``mode=predict`` does. It prints the parameters, the median of 1,000 calls five
times over, and the decrypted score's error.

    .venv/bin/python bench/fast_service.py
    PYTHONPATH=<an older tree> .venv/bin/python bench/fast_service.py     # the same on older code

Runs on the numba kernels (``AIDEPLOY_KERNELS=jit`` is set unless given).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import time

import numpy as np


def main() -> None:
    os.environ.setdefault("AIDEPLOY_KERNELS", "jit")
    from sklearn.linear_model import LogisticRegression

    from aideploy.artifacts import Dataset
    from aideploy.datasets import digits_split
    from aideploy.schemas import capture
    from aideploy_scoring.fastlinear import FastClient, FastParams
    from aideploy_scoring.model_sklearn import SklearnModel
    from aideploy_scoring.service import ScoringService

    X_train, X_test, y_train, y_test = digits_split(0.25, 0)
    model = LogisticRegression(max_iter=2000).fit(X_train, y_train)
    adapter = SklearnModel(model)
    adapter.use_schema(capture(adapter, Dataset("digits", X_test, y_test, X_train, y_train)))
    service = ScoringService(adapter)
    service._register_encrypted_schemes()
    scheme = service.scheme("fast")
    fast = service.describe()["fast"]
    params = FastParams.from_json(json.dumps(fast["params"]).encode())
    client = FastClient(64, 10, params)
    loaded = scheme._load(client.public_bundle())
    scheme._keys = lambda payload: loaded  # the key cache's hit, without a key store
    X = X_test[:1]
    if "input_ranges" in fast:
        from aideploy_scoring.inputranges import InputRanges

        X = InputRanges.from_json(fast["input_ranges"]).normalize(X)
    query = client.encrypt(X)
    headers = {"Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast", "X-Aideploy-Key-Id": "k",
               "X-Aideploy-Key-Url": "u"}
    for _ in range(200):  # warm: kernels loaded, caches filled
        service.handle_http("POST", headers, io.BytesIO(query), len(query))
    medians = []
    for _ in range(5):
        times = []
        for _ in range(1000):
            start = time.perf_counter()
            status, answer = service.handle_http("POST", headers, io.BytesIO(query), len(query))
            times.append(time.perf_counter() - start)
        medians.append(1e3 * statistics.median(times))
    assert status == 200, answer
    error = float(np.abs(client.decrypt(answer, 1) - model.decision_function(X_test[:1])).max())
    print(f"params {params}")
    print(f"handle_http median ms, 5 x 1000 calls: {' '.join(f'{m:.4f}' for m in medians)} (min {min(medians):.4f}); "
          f"score error {error:.1e}; max_samples_per_query {fast['max_samples_per_query']}")


if __name__ == "__main__":
    main()
