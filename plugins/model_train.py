"""``model=sklearn_digits``: train a LogisticRegression on digits and register a version."""

import tempfile
from pathlib import Path

import joblib

from aideploy import hookimpl
from aideploy.datasets import digits_split
from aideploy.registry import register_model


@hookimpl
def aideploy_prepare_model(cfg, ctx):
    from sklearn.linear_model import LogisticRegression

    X_train, _, y_train, _ = digits_split(cfg.test_size, cfg.seed)
    estimator = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
    estimator.fit(X_train, y_train)
    with tempfile.TemporaryDirectory(prefix="aideploy-model-") as tmp:
        path = Path(tmp) / "model.pkl"
        joblib.dump(estimator, path)
        return register_model(ctx, cfg.name, path, "sklearn", tags={"trained_on": "sklearn digits", "C": cfg.C})
