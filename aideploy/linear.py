"""The client's side of "encryption needs a linear model": fold it, or refuse it at the model stage."""

from __future__ import annotations

from aideploy.errors import ConfigError
from aideploy_scoring.models import NotLinear
from aideploy_scoring.service import LinearModel

FOLDABLE = "StandardScaler, MinMaxScaler, MaxAbsScaler, PCA or TruncatedSVD"


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
