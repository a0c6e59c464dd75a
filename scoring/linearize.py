"""Reduce a scikit-learn model to one affine map ``x -> W x + b``, which is what encryption needs.

The encrypted schemes compute a matrix-vector product under encryption, so they serve exactly
the models that are one: a linear model, or a Pipeline of affine preprocessing steps followed
by one. The steps are folded into the final weights here, once; the service then scores
``W x + b`` and the client gets the same decision scores the Pipeline would compute.

Affine steps: StandardScaler, MinMaxScaler (without ``clip``), MaxAbsScaler, PCA (whitened or
not), TruncatedSVD, FunctionTransformer without a function, ``"passthrough"``/None, and
Pipelines of these. Final models: anything whose decision function or prediction is
``X @ coef_.T + intercept_`` (LogisticRegression, LinearSVC, SGD*, Ridge*, LinearRegression,
Lasso, ElasticNet, LinearSVR, ...). Anything else raises :class:`NotLinear` naming the step.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aideploy_scoring.models import NotLinear

Affine = tuple[np.ndarray, np.ndarray]  # (M, c): x -> x @ M + c, M is (n_in, n_out)


def _linear_estimator_types() -> tuple[type, ...]:
    from sklearn.linear_model import SGDRegressor
    from sklearn.linear_model._base import LinearClassifierMixin, LinearModel

    return LinearClassifierMixin, LinearModel, SGDRegressor


def _name(step: Any) -> str:
    return type(step).__name__


def affine(step: Any, n_in: int) -> Affine:
    """The affine map of one fitted preprocessing step, or :class:`NotLinear`."""
    from sklearn.decomposition import PCA, TruncatedSVD
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, MaxAbsScaler, MinMaxScaler, StandardScaler

    eye = np.eye(n_in)
    zero = np.zeros(n_in)
    if step is None or (isinstance(step, str) and step == "passthrough"):
        return eye, zero
    if isinstance(step, Pipeline):
        return compose(_steps_affine(step.steps, n_in), n_in)
    if isinstance(step, StandardScaler):
        mean = step.mean_ if step.with_mean and step.mean_ is not None else zero
        scale = step.scale_ if step.with_std and step.scale_ is not None else np.ones(n_in)
        return np.diag(1.0 / scale), -mean / scale
    if isinstance(step, MinMaxScaler):
        if step.clip:
            raise NotLinear("MinMaxScaler(clip=True) clips its output, which is not affine")
        return np.diag(step.scale_), np.asarray(step.min_, dtype=np.float64)
    if isinstance(step, MaxAbsScaler):
        return np.diag(1.0 / step.scale_), zero
    if isinstance(step, PCA):
        M = step.components_.T.copy()
        c = -step.mean_ @ M
        if step.whiten:
            std = np.sqrt(step.explained_variance_)
            M, c = M / std, c / std
        return M, c
    if isinstance(step, TruncatedSVD):
        M = step.components_.T.copy()
        return M, np.zeros(M.shape[1])
    if isinstance(step, FunctionTransformer) and step.func is None:
        return eye, zero
    raise NotLinear(f"step {_name(step)} is not an affine transform")


def _steps_affine(steps: list, n_in: int) -> list[Affine]:
    maps = []
    for name, step in steps:
        try:
            M, c = affine(step, n_in)
        except NotLinear as exc:
            raise NotLinear(f"step {name!r}: {exc}") from None
        maps.append((np.asarray(M, dtype=np.float64), np.asarray(c, dtype=np.float64)))
        n_in = maps[-1][0].shape[1]
    return maps


def compose(maps: list[Affine], n_in: int) -> Affine:
    """One affine map equal to applying ``maps`` in order."""
    M, c = np.eye(n_in), np.zeros(n_in)
    for step_M, step_c in maps:
        M, c = M @ step_M, c @ step_M + step_c
    return M, c


def final_weights(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` of a fitted linear estimator: W is (n_outputs, n_features)."""
    if not isinstance(estimator, _linear_estimator_types()) or not hasattr(estimator, "coef_"):
        raise NotLinear(f"{_name(estimator)} is not a linear model (its output is not X @ coef_ + intercept_)")
    coef = np.asarray(estimator.coef_, dtype=np.float64)
    W = coef.reshape(1, -1) if coef.ndim == 1 else coef
    b = np.broadcast_to(np.asarray(getattr(estimator, "intercept_", 0.0), dtype=np.float64).reshape(-1),
                        (W.shape[0],)).copy()
    return W, b


def fold(estimator: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(W, b)`` with ``W x + b`` equal to the model's decision scores (or regression output)."""
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline):
        return final_weights(estimator)
    *pre, (last_name, last) = estimator.steps
    try:
        W, b = final_weights(last)
    except NotLinear as exc:
        raise NotLinear(f"final step {last_name!r}: {exc}") from None
    n_in = getattr(estimator, "n_features_in_", None)
    if n_in is None:
        raise NotLinear("the Pipeline does not record its input feature count (n_features_in_)")
    M, c = compose(_steps_affine(pre, int(n_in)), int(n_in))
    if M.shape[1] != W.shape[1]:
        raise NotLinear(f"the preprocessing gives {M.shape[1]} features but {last_name!r} takes {W.shape[1]}")
    return W @ M.T, W @ c + b


MLP_ACTIVATIONS = ("relu", "identity")


def is_mlp(estimator: Any) -> bool:
    """Whether ``estimator`` (or a Pipeline's last step) is a scikit-learn MLP."""
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from sklearn.pipeline import Pipeline

    last = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    return isinstance(last, (MLPClassifier, MLPRegressor))


def fold_mlp(estimator: Any) -> tuple[list[tuple[np.ndarray, np.ndarray]], str]:
    """``([(W, b), ...], activation)`` of a fitted MLP (or a Pipeline of affine steps ending in one),
    with the preprocessing folded into the first layer: the last layer's outputs are the logits
    (before softmax / logistic) or the regression output. Raises :class:`NotLinear` for other
    models and for hidden activations other than relu / identity (tanh and logistic do not
    commute with the positive scaling the encrypted protocol hides the hidden values with)."""
    from sklearn.pipeline import Pipeline

    if not is_mlp(estimator):
        raise NotLinear(f"{_name(estimator)} is not an MLPClassifier/MLPRegressor")
    mlp = estimator.steps[-1][1] if isinstance(estimator, Pipeline) else estimator
    if not hasattr(mlp, "coefs_"):
        raise NotLinear("the MLP is not fitted")
    if mlp.activation not in MLP_ACTIVATIONS:
        raise NotLinear(f"MLP activation {mlp.activation!r} is not supported under encryption "
                        f"(only {' or '.join(MLP_ACTIVATIONS)})")
    layers = [(np.asarray(W, dtype=np.float64).T.copy(), np.asarray(b, dtype=np.float64).copy())
              for W, b in zip(mlp.coefs_, mlp.intercepts_)]
    if isinstance(estimator, Pipeline):
        *pre, (last_name, _) = estimator.steps
        n_in = getattr(estimator, "n_features_in_", None)
        if n_in is None:
            raise NotLinear("the Pipeline does not record its input feature count (n_features_in_)")
        M, c = compose(_steps_affine(pre, int(n_in)), int(n_in))
        W0, b0 = layers[0]
        if M.shape[1] != W0.shape[1]:
            raise NotLinear(f"the preprocessing gives {M.shape[1]} features but {last_name!r} takes {W0.shape[1]}")
        layers[0] = (W0 @ M.T, W0 @ c + b0)
    return layers, str(mlp.activation)


def mlp_logits(layers: list[tuple[np.ndarray, np.ndarray]], activation: str, X: np.ndarray) -> np.ndarray:
    """The last layer's outputs (before softmax / logistic) of folded MLP ``layers``: what the
    encrypted rounds answer."""
    h = np.asarray(X, dtype=np.float64)
    for index, (W, b) in enumerate(layers):
        h = h @ W.T + b
        if index < len(layers) - 1 and activation == "relu":
            h = np.maximum(h, 0.0)
    return h


def split(estimator: Any) -> tuple[Any | None, Any]:
    """``(client part, served part)`` of a model for the encrypted schemes.

    A Pipeline whose last steps fold into one affine map or a ReLU MLP, after first steps that do
    not (a ColumnTransformer, encoders, imputers), is split there: the client runs the first
    steps on its own rows (as Concrete-ML runs a model's preprocessing in the client), and only
    the folded part is computed on ciphertexts. ``(None, estimator)`` when the whole model folds,
    or when no tail of it does (the encrypted schemes then refuse it, naming the step).
    """
    from sklearn.pipeline import Pipeline

    if not isinstance(estimator, Pipeline) or len(estimator.steps) < 2:
        return None, estimator
    for start in range(len(estimator.steps)):
        tail = estimator.steps[start:]
        served = estimator if start == 0 else Pipeline(tail) if len(tail) > 1 else tail[0][1]
        try:
            fold_mlp(served) if is_mlp(served) else fold(served)
        except NotLinear:
            continue
        return (Pipeline(estimator.steps[:start]) if start else None), served
    return None, estimator
