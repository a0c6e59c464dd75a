"""``model=sklearn_digits``: train a LogisticRegression on digits and register a version."""

import tempfile
from pathlib import Path

import joblib

from aideploy import hookimpl
from aideploy.artifacts import RegisteredModel
from aideploy.datasets import digits_split
from aideploy.registry import MODEL_FILE, LocalRegistry


@hookimpl
def aideploy_prepare_model(cfg, ctx):
    from sklearn.linear_model import LogisticRegression

    X_train, _, y_train, _ = digits_split(cfg.test_size, cfg.seed)
    estimator = LogisticRegression(C=cfg.C, max_iter=cfg.max_iter, random_state=cfg.seed)
    estimator.fit(X_train, y_train)
    with tempfile.TemporaryDirectory(prefix="aideploy-model-") as tmp:
        path = Path(tmp) / MODEL_FILE
        joblib.dump(estimator, path)
        version = LocalRegistry(Path(ctx.cfg.home) / "models").register(
            cfg.name, path, tags={"trained_on": "sklearn digits", "C": cfg.C})
    return RegisteredModel(cfg.name, version.version, version.path, MODEL_FILE, estimator,
                           n_features=estimator.n_features_in_, n_classes=len(estimator.classes_))
