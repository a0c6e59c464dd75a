"""``data=digits``: scikit-learn's 8x8 digits, scaled to [0, 1], test split."""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datasets import digits_split


@hookimpl
def aideploy_prepare_data(cfg):
    X_train, X_test, y_train, y_test = digits_split(cfg.test_size, cfg.seed)
    if cfg.limit is not None:
        X_test, y_test = X_test[: cfg.limit], y_test[: cfg.limit]
    return Dataset("digits", X_test, y_test, X_train, y_train)
