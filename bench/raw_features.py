#!/usr/bin/env python
"""A model on raw features under ``encryption=fast``: what one input bound costs, and what
per-feature input ranges (scoring/inputranges.py) give.

The issue's model, ``Pipeline(StandardScaler(), PCA(20), LogisticRegression())`` fitted on 75% of
breast_cancer's raw features (areas up to ~4254 beside smoothness below 0.25), and the other 25%
as a labelled CSV. It prints:

1. in process, the service's parameters for one bound for every feature (the widest value,
   ``encryption.x_bound`` as it was the only choice) and for each feature's range, at
   ``max_error=1e-3``: the refusal, or the error bound, flood margin and samples per query;
2. the real run with the defaults, ``aideploy data=csv ... model=sklearn_pickle ...
   encryption=fast`` (local target, the scoring environment built or reused), and its summary:
   agreement, max score error, latency, bytes.

    .venv/bin/python bench/raw_features.py          # ~20 s with the scoring environment and kernels built

Its temp dir (model, CSV, aideploy home) is deleted when it ends.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib

AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))


def main() -> None:
    from sklearn.datasets import load_breast_cancer
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from aideploy_scoring.encrypted import fast_linear_server
    from aideploy_scoring.fastlinear import FastSchemeError
    from aideploy_scoring.inputranges import InputRanges, choose
    from aideploy_scoring.linearize import fold
    from aideploy_scoring.service import LinearModel

    data = load_breast_cancer(as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(data.data, data.target, test_size=0.25, random_state=0)
    model = make_pipeline(StandardScaler(), PCA(20), LogisticRegression()).fit(X_train.to_numpy(), y_train)
    linear = LinearModel(*fold(model))
    widest = float(X_test.to_numpy().max())
    print(f"features 30, values up to {widest:g} (test split), smallest column max "
          f"{float(X_test.max().min()):g}")
    for name, ranges in (("one bound", InputRanges.uniform(30, widest)),
                         ("per-feature ranges", choose(model, 30, [X_test.to_numpy()], list(X_test.columns)))):
        try:
            server = fast_linear_server(linear, ranges, 1e-3)
        except FastSchemeError as exc:
            print(f"{name:20s} refused: {exc}")
            continue
        p = server.params
        print(f"{name:20s} error_bound {server.error_bound:.2e}  flood_margin_bits {server.flood_margin_bits:.1f}  "
              f"max_samples_per_query {server.max_samples}  primes {p.coeff_modulus_bits}  t 2^{p.plain_modulus_bits}  "
              f"s_x 2^{p.x_scale_bits}  s_w 2^{p.w_scale_bits}")

    tmp = Path(tempfile.mkdtemp(prefix="aideploy-rawbench-"))
    try:
        joblib.dump(model, tmp / "model.pkl")
        X_test.assign(target=y_test).to_csv(tmp / "test.csv", index=False)
        argv = [AIDEPLOY, f"home={tmp / 'home'}", f"hydra.run.dir={tmp / 'run'}", "data=csv",
                f"data.path={tmp / 'test.csv'}", "data.label_column=target", "model=sklearn_pickle",
                f"model.path={tmp / 'model.pkl'}", "encryption=fast"]
        print("$ aideploy " + " ".join(a.replace(str(tmp), "$TMP") for a in argv[1:]))
        start = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode:
            raise SystemExit(proc.stderr)
        results = json.loads((tmp / "run" / "results.json").read_text())
        keys = ("n_samples", "accuracy", "plaintext_accuracy", "agreement", "max_score_error", "latency_ms", "bytes")
        print(json.dumps({k: results.get(k) for k in keys}))
        stages = results["stage_seconds"]
        print(f"run {seconds:.1f} s (environment {stages.get('environment', 0):.1f} s, deploy "
              f"{stages.get('deploy', 0):.1f} s, encrypt+predict+decrypt "
              f"{sum(stages.get(s, 0) for s in ('encrypt', 'predict', 'decrypt')):.2f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
