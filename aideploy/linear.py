"""The client's side of "encryption needs a linear model": fold it, or refuse it at the model stage."""

from __future__ import annotations

from aideploy.errors import ConfigError
from aideploy_scoring.models import NotLinear
from aideploy_scoring.service import LinearModel

FOLDABLE = "StandardScaler, MinMaxScaler, MaxAbsScaler, PCA or TruncatedSVD"


def check_mlp(model, scheme: str) -> None:
    """Refuse, at the model stage, an MLP that ``encryption=<scheme>`` cannot serve.

    Hidden activations other than relu/identity are refused for good (they do not commute with
    the positive scaling that hides the hidden values, scoring/fastmlp.py). ReLU MLPs run in
    scoring/fastmlp.py but the service and the client plugin do not drive its rounds yet.
    """
    from aideploy_scoring.linearize import MLP_ACTIVATIONS, fold_mlp, is_mlp

    estimator = getattr(model.adapter, "estimator", None)
    if scheme != "fast" or estimator is None or not is_mlp(estimator):
        return  # other schemes: linear_model's "needs a linear model" says it
    try:
        fold_mlp(estimator)
    except NotLinear as exc:
        raise ConfigError(f"encryption={scheme} cannot serve {model.name}:{model.version}: {exc}",
                          hint=f"retrain the MLP with activation in {MLP_ACTIVATIONS}, or serve it with "
                          "encryption=none") from None
    raise ConfigError(f"encryption=fast: {model.name}:{model.version} is a {estimator.__class__.__name__} "
                      "with a supported activation, but the service does not run the MLP rounds yet",
                      hint="serve it with encryption=none for now; the protocol is in scoring/fastmlp.py")


def linear_model(model, scheme: str) -> LinearModel:
    """``model`` as one affine map for ``encryption=<scheme>``, or a ConfigError naming what is not."""
    check_mlp(model, scheme)
    try:
        return LinearModel.of(model.adapter)
    except NotLinear as exc:
        raise ConfigError(
            f"encryption={scheme} needs a linear model; {model.name}:{model.version} "
            f"({model.adapter.summary}) is not one: {exc}",
            hint=f"serve it with encryption=none, or encrypt a linear model (optionally a Pipeline of {FOLDABLE} "
            "steps ending in one, which aideploy folds)") from None
