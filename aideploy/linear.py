"""The client's side of "encryption needs a linear model": fold it, refuse it at the model stage,
or run its preprocessing in the client (:class:`ClientPart`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from aideploy.errors import ConfigError
from aideploy_scoring.models import NotLinear
from aideploy_scoring.service import LinearModel, ScoringService

FOLDABLE = "StandardScaler, MinMaxScaler, MaxAbsScaler, PCA or TruncatedSVD"


def mlp_layers(model, scheme: str) -> tuple[list, str] | None:
    """``(layers, activation)`` of an MLP that ``encryption=<scheme>`` serves with its interactive
    rounds (scoring/fastmlp.py), None for any other model; a ConfigError, at the model stage,
    for an MLP it cannot serve.

    Hidden activations other than relu/identity are refused for good (they do not commute with
    the positive scaling that hides the hidden values, scoring/fastmlp.py).
    """
    from aideploy_scoring.linearize import MLP_ACTIVATIONS

    if scheme != "fast":
        return None  # other schemes: linear_model's "needs a linear model" says it
    try:
        return ScoringService.mlp_layers(model.adapter)
    except NotLinear as exc:
        raise ConfigError(f"encryption={scheme} cannot serve {model.name}:{model.version}: {exc}",
                          hint=f"retrain the MLP with activation in {MLP_ACTIVATIONS}, or serve it with "
                          "encryption=none") from None


def linear_model(model, scheme: str) -> LinearModel:
    """``model`` as one affine map for ``encryption=<scheme>``, or a ConfigError naming what is not."""
    try:
        return LinearModel.of(model.adapter)
    except NotLinear as exc:
        served = "linear models, Pipelines of " + FOLDABLE + " steps ending in one (folded)" + \
            (", ReLU MLPs" if scheme == "fast" else "")
        raise ConfigError(
            f"encryption={scheme} cannot serve {model.name}:{model.version} ({model.adapter.summary}): {exc}",
            hint=f"encryption={scheme} serves {served}, each also after preprocessing the client runs "
            "(a ColumnTransformer, encoders, imputers); serve this model with encryption=none") from None


# Types a service's preprocessing may hold beyond what skops trusts by default (scikit-learn's
# estimators, numpy arrays, builtins): skops refuses anything else, so loading it runs no code.
SKOPS_TRUSTED = ["numpy.dtype"]


class ClientPart:
    """The preprocessing a client runs on its rows before they are encrypted: a model's first
    steps that the encrypted schemes do not compute (:func:`aideploy_scoring.linearize.split`),
    from the model in process or from the service's description; or none."""

    def __init__(self, transformer: Any = None) -> None:
        self.transformer = transformer

    @classmethod
    def of(cls, ctx, model: Any = None) -> "ClientPart":
        """The part of ``model`` (a RegisteredModel; default: the run's), else of the service's description."""
        model = model if model is not None else ctx.artifacts.get("model")
        service = ctx.artifacts.get("service")
        if model is not None:
            try:
                return cls(model.adapter.encrypted_parts()[0])
            except NotLinear:
                return cls()
        described = getattr(service, "preprocess", None)
        return cls.from_description(described) if described else cls()

    @classmethod
    def from_description(cls, described: dict[str, Any]) -> "ClientPart":
        """The ``preprocess`` a service describes: a skops file of scikit-learn transformers, loaded
        with skops' trusted types only."""
        import base64

        import skops.io

        try:
            data = base64.b64decode(described["data"])
            untrusted = [t for t in skops.io.get_untrusted_types(data=data) if t not in SKOPS_TRUSTED]
            if untrusted or described.get("format") != "skops":
                raise ValueError(f"it holds types aideploy does not load: {', '.join(untrusted[:5])}")
            return cls(skops.io.loads(data, trusted=SKOPS_TRUSTED))
        except Exception as exc:  # noqa: BLE001 - whatever a service sends, it is refused in one line
            from aideploy.errors import PredictError

            raise PredictError(f"the service's preprocessing cannot be loaded: {exc}",
                               hint="predict with the model in process (model=...), or against a service running "
                               "aideploy's score.py") from None

    def features(self, dataset: Any) -> np.ndarray:
        """A chunk's rows as the numbers the encrypted scheme takes: through the client part where
        there is one, else a table's columns in the model's order (by position for a model that
        takes numbers by position), an array as it is."""
        X, schema = dataset.X_test, dataset.schema
        if self.transformer is not None:
            if not hasattr(X, "columns"):
                import pandas as pd

                X = schema.conform(pd.DataFrame(X, columns=schema.names))
            out = self.transformer.transform(X)
            return np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float64)
        if hasattr(X, "columns"):
            names = schema.names if schema is not None and schema.named else list(X.columns)
            return X[names].to_numpy(dtype=np.float64)
        return np.asarray(X, dtype=np.float64)


def features(ctx, dataset: Any) -> np.ndarray:
    """A chunk's rows as the run's encrypted scheme takes them (:class:`ClientPart`, made once per run)."""
    part = ctx.artifacts.get("client_part")
    if part is None:
        part = ctx.artifacts["client_part"] = ClientPart.of(ctx)
    return part.features(dataset)


def client_runtime(ctx) -> list[str]:
    """What the service needs to describe a model's client part to clients: skops."""
    model = ctx.artifacts.get("model")
    try:
        return ["skops>=0.10"] if model is not None and model.adapter.encrypted_parts()[0] is not None else []
    except NotLinear:
        return []
