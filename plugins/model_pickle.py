"""``model=sklearn_pickle``: a user's trained linear model file, registered as a version."""

from pathlib import Path

import joblib

from aideploy import hookimpl
from aideploy.artifacts import RegisteredModel
from aideploy.errors import ConfigError
from aideploy.registry import MODEL_FILE, LocalRegistry


@hookimpl
def aideploy_prepare_model(cfg, ctx):
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise ConfigError(f"model file not found: {path} (model.path)",
                          hint="give the path of a .pkl/.joblib file, e.g. model.path=sklearn_mnist_model.pkl")
    try:
        estimator = joblib.load(path)
    except Exception as exc:
        raise ConfigError(f"cannot load model file {path}: {type(exc).__name__}: {exc}",
                          hint="it must be a pickle or joblib dump of a fitted scikit-learn linear model") from exc
    if not hasattr(estimator, "coef_"):
        raise ConfigError(f"{path} holds a {type(estimator).__name__}, which is not a fitted linear model",
                          hint="aideploy serves linear models (coef_, intercept_), e.g. LogisticRegression")
    version = LocalRegistry(Path(ctx.cfg.home) / "models").register(cfg.name, path, tags={"source": str(path)})
    coef = estimator.coef_
    n_classes = len(getattr(estimator, "classes_", [])) or (coef.shape[0] if coef.ndim == 2 else 1)
    return RegisteredModel(cfg.name, version.version, version.path, MODEL_FILE, estimator,
                           n_features=int(coef.shape[-1]), n_classes=int(n_classes))
