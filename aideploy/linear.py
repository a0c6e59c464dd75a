"""The client's side of "encryption needs a linear model": fold it, or refuse it at the model stage."""

from __future__ import annotations

from typing import Any

import numpy as np

from aideploy.errors import ConfigError
from aideploy_scoring.models import NotLinear
from aideploy_scoring.service import LinearModel

FOLDABLE = "StandardScaler, MinMaxScaler, MaxAbsScaler, PCA or TruncatedSVD"


def mlp_layers(model, scheme: str) -> tuple[list, str] | None:
    """``(layers, activation)`` of an MLP that ``encryption=<scheme>`` serves with its interactive
    rounds (scoring/fastmlp.py), None for any other model; a ConfigError, at the model stage,
    for an MLP it cannot serve.

    Hidden activations other than relu/identity are refused for good (they do not commute with
    the positive scaling that hides the hidden values, scoring/fastmlp.py).
    """
    from aideploy_scoring.linearize import MLP_ACTIVATIONS, fold_mlp, is_mlp

    estimator = getattr(model.adapter, "estimator", None)
    if scheme != "fast" or estimator is None or not is_mlp(estimator):
        return None  # other schemes: linear_model's "needs a linear model" says it
    try:
        return fold_mlp(estimator)
    except NotLinear as exc:
        raise ConfigError(f"encryption={scheme} cannot serve {model.name}:{model.version}: {exc}",
                          hint=f"retrain the MLP with activation in {MLP_ACTIVATIONS}, or serve it with "
                          "encryption=none") from None


def linear_model(model, scheme: str) -> LinearModel:
    """``model`` as one affine map for ``encryption=<scheme>``, or a ConfigError naming what is not."""
    try:
        return LinearModel.of(model.adapter)
    except NotLinear as exc:
        raise ConfigError(
            f"encryption={scheme} needs a linear model; {model.name}:{model.version} "
            f"({model.adapter.summary}) is not one: {exc}",
            hint=f"serve it with encryption=none, or encrypt a linear model (optionally a Pipeline of {FOLDABLE} "
            "steps ending in one, which aideploy folds)") from None


def numeric(dataset: Any) -> np.ndarray:
    """A chunk's rows as the numbers an encrypted scheme takes: a table's columns in the model's
    order (the schema's), an array as it is."""
    X = dataset.X_test
    if hasattr(X, "columns"):
        names = dataset.schema.names if dataset.schema is not None else list(X.columns)
        return X[names].to_numpy(dtype=np.float64)
    return np.asarray(X, dtype=np.float64)
