"""Per-feature input ranges of the fast scheme: where each input feature's values must lie, how
they are chosen, and how the client and the service use them.

The fast scheme computes on fixed-point integers (:mod:`.fastlinear`): an input ``z`` becomes
``round(z * s_x)`` with ``|z| <= 1``, and the error and no-wrap guarantees are proved for that
bound. With one bound for every feature, a model on raw features pays for its widest column: on
breast_cancer's, areas reach 4254 where smoothness stays below 0.25, so one bound of 4254 wastes
14 bits of the smoothness feature's precision, and its weight (large, for a feature in small
units) turns them into logit error. Instead each input feature ``i`` has its own range
``[low_i, high_i]``, centre ``c_i`` and half-width ``h_i``:

* the client maps ``x_i`` to ``z_i = (x_i - c_i) / h_i`` in ``[-1, 1]`` (:meth:`InputRanges.normalize`),
  one more affine step like the preprocessing it already runs (``aideploy.linear.ClientPart``),
  and refuses a value outside its range, naming the feature;
* the service folds the same map into its weights (:meth:`InputRanges.fold`):
  ``W' = W diag(h)``, ``b' = b + W c``, so ``W' z + b' = W x + b`` exactly (but for float64
  rounding, ~1e-16 of the logit). Everything :mod:`.fastlinear` and :mod:`.fastmlp` guarantee
  (error bound, flooding to 2^-40, caps) is then about ``(W', b')`` on ``|z| <= 1``, unchanged;
* the parameters carry a digest of the ranges (``FastParams.input_ranges``), so a key or a query
  made for other ranges is refused like one for other parameters, never answered wrongly.

Which ranges (:func:`choose`), once per model version, at aideploy's model stage:

1. **Observed**: the union of what the model records of its training data (the first affine
   step of the served part: a StandardScaler's or PCA's mean +- :data:`STD_SPAN` standard
   deviations, a MinMaxScaler's data_min_/data_max_, a MaxAbsScaler's +-max_abs_) and the run's
   data as the scheme takes it (through the client part): a packaged data set's training split,
   the test rows in memory, a file's first rows (``aideploy.schemas.SAMPLE_ROWS``, no full scan).
2. **Margin** (:data:`MARGIN`): the observed half-width doubled around its centre, so a value may
   lie beyond the observed extremes by half the observed width. With ``n`` observed values a
   new one exceeds their maximum with probability ``1/(n+1)``; doubling costs one bit of the
   input's precision (the fixed-point scales have tens to spare at ``max_error = 1e-3``).
3. **Constant features** (a border pixel, a category the data lacks) get the median half-width
   of the others: a width of zero would refuse every other value. The rule never looks at the
   weights: the ranges are published (``GET /score``), and may not say more about the model than
   its preprocessing's statistics.
4. Outward rounding to three significant digits of the width, for ranges a person can read.

Nothing observed (no data, a model without scaler statistics): ``[-1, 1]`` for every feature,
the scheme's historical default. ``encryption.x_bound=B`` replaces the ranges by ``[-B, B]`` for
every feature (:meth:`InputRanges.uniform`). The ranges are stored in the version's
``aideploy-schema.json`` (``Schema.ranges``): the service and every client read those, the one
source of truth; a version without them (registered by other tools) gets :func:`choose` from the
model alone, which both sides compute identically.

This module is shipped with the service: numpy and the standard library at import,
scikit-learn only to read a model's statistics.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["InputRanges", "OutOfRange", "observed", "choose", "for_model", "MARGIN", "STD_SPAN"]

#: The chosen half-width over the observed one (step 2 above).
MARGIN = 2.0
#: Standard deviations either side of a scaler's mean taken as observed: beyond them lie at most
#: 1/16 of any distribution's values (Chebyshev), 6e-5 of a normal one's.
STD_SPAN = 4.0
_DEFAULT_BOUND = 1.0
_SIGNIFICANT = 3


class OutOfRange(ValueError):
    """A value outside its feature's range; ``row`` and ``feature`` locate the first one."""

    def __init__(self, message: str, row: int, feature: int) -> None:
        super().__init__(message)
        self.row, self.feature = row, feature


@dataclass(frozen=True)
class InputRanges:
    """``[low_i, high_i]`` for each input feature of the fast scheme, with the features' names
    (for messages) and where the ranges came from (``source``)."""

    low: tuple[float, ...]
    high: tuple[float, ...]
    names: tuple[str, ...] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, dtype=np.float64), np.asarray(self.high, dtype=np.float64)
        if low.ndim != 1 or low.shape != high.shape or low.size == 0:
            raise ValueError("input ranges need one low and one high per feature")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and np.all(high > low)):
            raise ValueError("every input range must be finite with high > low")
        if self.names is not None and len(self.names) != low.size:
            raise ValueError(f"{len(self.names)} names for {low.size} input ranges")

    @classmethod
    def uniform(cls, n_features: int, bound: float, names: Sequence[str] | None = None,
                source: str = "encryption.x_bound") -> "InputRanges":
        """``[-bound, bound]`` for every feature."""
        return cls((-float(bound),) * n_features, (float(bound),) * n_features,
                   tuple(names) if names is not None else None, source)

    @property
    def n_features(self) -> int:
        return len(self.low)

    @property
    def center(self) -> np.ndarray:
        return (np.asarray(self.low) + np.asarray(self.high)) / 2.0

    @property
    def half(self) -> np.ndarray:
        return (np.asarray(self.high) - np.asarray(self.low)) / 2.0

    def name(self, feature: int) -> str:
        return self.names[feature] if self.names is not None else f"feature {feature}"

    def digest(self) -> str:
        """What the parameters carry (``FastParams.input_ranges``): SHA-256 of the bounds' float64
        bytes, so JSON round trips (exact for floats) keep it."""
        data = np.asarray(self.low, dtype="<f8").tobytes() + np.asarray(self.high, dtype="<f8").tobytes()
        return hashlib.sha256(b"aideploy-input-ranges-v1" + data).hexdigest()[:32]

    # ------------------------------------------------------------------ the two sides

    def fold(self, W: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The service's side: ``(W diag(h), b + W c)`` for weights ``W`` (n_out, n_features)."""
        W = np.asarray(W, dtype=np.float64)
        if W.shape[-1] != self.n_features:
            raise ValueError(f"the model takes {W.shape[-1]} features, the input ranges are for {self.n_features}")
        return W * self.half, np.asarray(b, dtype=np.float64) + W @ self.center

    def outside(self, X: np.ndarray, first_row: int = 0) -> OutOfRange | None:
        """The first value of ``X`` (n_samples, n_features) outside its range, as an error
        naming its row (counted from ``first_row``), feature and range; None if all fit."""
        X = np.asarray(X, dtype=np.float64)
        low, high = np.asarray(self.low), np.asarray(self.high)
        bad = (X < low) | (X > high)
        if not bad.any():
            return None
        row, feature = (int(i) for i in np.argwhere(bad)[0])
        return OutOfRange(f"row {first_row + row}, column {self.name(feature)!r} is {X[row, feature]:.6g}, outside "
                          f"its range [{low[feature]:.6g}, {high[feature]:.6g}]", first_row + row, feature)

    def normalize(self, X: np.ndarray, first_row: int = 0) -> np.ndarray:
        """The client's side: ``(X - c) / h``, in ``[-1, 1]``; :class:`OutOfRange` for a value outside
        its range, its row counted from ``first_row`` (NaN and infinity are left to the scheme's
        own check)."""
        X = np.asarray(X, dtype=np.float64)
        error = self.outside(X, first_row)
        if error is not None:
            raise error
        # a value at its bound may round to just beyond +-1; the true value is within
        return np.clip((X - self.center) / self.half, -1.0, 1.0)

    # ------------------------------------------------------------------ storage

    def to_json(self) -> dict[str, Any]:
        return {"low": list(self.low), "high": list(self.high),
                "names": list(self.names) if self.names is not None else None, "source": self.source}

    @classmethod
    def from_json(cls, data: Any) -> "InputRanges":
        try:
            names = data.get("names")
            return cls(tuple(float(v) for v in data["low"]), tuple(float(v) for v in data["high"]),
                       tuple(str(n) for n in names) if names is not None else None, str(data.get("source") or ""))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not valid input ranges: {exc}") from None


# ---------------------------------------------------------------------- choosing them


def _statistics(step: Any, n_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` of the training data as one fitted preprocessing step records it, or None."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, StandardScaler

    if isinstance(step, StandardScaler) and getattr(step, "var_", None) is not None:
        mean = step.mean_ if step.mean_ is not None else np.zeros(n_features)
        spread = STD_SPAN * np.sqrt(step.var_)
        return mean - spread, mean + spread
    if isinstance(step, MinMaxScaler):
        return np.asarray(step.data_min_, dtype=np.float64), np.asarray(step.data_max_, dtype=np.float64)
    if isinstance(step, MaxAbsScaler):
        return -np.asarray(step.max_abs_, dtype=np.float64), np.asarray(step.max_abs_, dtype=np.float64)
    if isinstance(step, PCA):  # its estimate of the data's covariance, as get_covariance() gives it
        spread = STD_SPAN * np.sqrt(np.maximum(np.diag(step.get_covariance()), 0.0))
        return step.mean_ - spread, step.mean_ + spread
    return None


def model_statistics(served: Any, n_features: int) -> tuple[np.ndarray, np.ndarray] | None:
    """What the served part's first affine step records of its inputs' range (identity steps
    are looked through), or None."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    step = served
    while isinstance(step, Pipeline):
        for _, inner in step.steps:
            identity = inner is None or (isinstance(inner, str) and inner == "passthrough") or \
                (isinstance(inner, FunctionTransformer) and inner.func is None)
            if not identity:
                step = inner
                break
        else:
            return None
    try:
        found = _statistics(step, n_features)
    except (AttributeError, TypeError, ValueError):  # a step fitted by another version, without the field
        return None
    if found is None or np.shape(found[0]) != (n_features,):
        return None
    return found


def _outward(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[low, high]`` widened to the next multiples of a step of three significant digits of the width."""
    out_low, out_high = low.copy(), high.copy()
    for i, (lo, hi) in enumerate(zip(low, high)):
        digits = _SIGNIFICANT - 1 - math.floor(math.log10(hi - lo))
        step = 10.0 ** -digits
        out_low[i] = round(math.floor(lo / step) * step, digits)
        out_high[i] = round(math.ceil(hi / step) * step, digits)
    return np.minimum(out_low, low), np.maximum(out_high, high)  # round() may land a hair inside


def observed(served: Any, n_features: int, data: Sequence[np.ndarray] = ()) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(low, high, sources)``: each feature's observed extremes (step 1 of the module docstring;
    ``low > high`` where nothing was observed) and what they came from."""
    low, high = np.full(n_features, np.inf), np.full(n_features, -np.inf)
    sources = []
    statistics = model_statistics(served, n_features)
    if statistics is not None:
        low, high = np.minimum(low, statistics[0]), np.maximum(high, statistics[1])
        sources.append("the model's statistics")
    for X in data:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != n_features or X.shape[0] == 0:
            continue
        with warnings.catch_warnings():  # "All-NaN slice": a feature with no value stays unobserved
            warnings.simplefilter("ignore", RuntimeWarning)
            seen_low, seen_high = np.nanmin(X, axis=0), np.nanmax(X, axis=0)  # no copy of a large X
        for j in np.flatnonzero(~(np.isfinite(seen_low) & np.isfinite(seen_high))):  # infinities, or no value
            column = X[:, j][np.isfinite(X[:, j])]
            seen_low[j], seen_high[j] = (column.min(), column.max()) if column.size else (np.nan, np.nan)
        low, high = np.fmin(low, seen_low), np.fmax(high, seen_high)
        if "the data" not in sources:
            sources.append("the data")
    return low, high, sources


def choose(served: Any, n_features: int, data: Sequence[np.ndarray] = (), names: Sequence[str] | None = None,
           source: str = "") -> InputRanges:
    """The ranges of the module docstring for a served model (scikit-learn: a linear model, a
    Pipeline of affine steps ending in one, an MLP) taking ``n_features`` inputs, from its
    statistics and ``data`` (arrays of (rows, n_features), as the scheme takes them; ``source``
    names it in :attr:`InputRanges.source`)."""
    low, high, sources = observed(served, n_features, data)
    seen = low <= high
    if not seen.any():
        return InputRanges.uniform(n_features, _DEFAULT_BOUND, names, f"default [-{_DEFAULT_BOUND:g}, "
                                   f"{_DEFAULT_BOUND:g}]: nothing observed")
    low, high = np.where(seen, low, 0.0), np.where(seen, high, 0.0)  # an unobserved feature: centred on 0
    center, half = (low + high) / 2.0, (high - low) / 2.0
    varying = half > 0
    typical = float(np.median(half[varying])) if varying.any() else _DEFAULT_BOUND
    half = MARGIN * np.where(varying, half, typical)
    low, high = _outward(center - half, center + half)
    sources = [f"the data ({source})" if s == "the data" and source else s for s in sources]
    return InputRanges(tuple(map(float, low)), tuple(map(float, high)), tuple(names) if names is not None else None,
                       " and ".join(sources))


def served_inputs(served: Any) -> int | None:
    """How many inputs the encrypted schemes take for a served part: its folded map's, or None
    when it is not served encrypted."""
    from aideploy_scoring.linearize import fold, fold_mlp, is_mlp
    from aideploy_scoring.models import NotLinear

    try:
        return int(fold_mlp(served)[0][0][0].shape[1] if is_mlp(served) else fold(served)[0].shape[1])
    except NotLinear:
        return None


def input_names(client: Any, columns: Sequence[str] | None, n_features: int) -> list[str] | None:
    """The names of the scheme's inputs: the client part's outputs where there is one, else the
    model's ``columns``; None when nothing names them."""
    if client is not None:
        try:
            columns = [str(n) for n in client.get_feature_names_out()]
        except (AttributeError, TypeError, ValueError):
            return None
    return list(columns) if columns is not None and len(columns) == n_features else None


def for_model(adapter: Any, n_features: int, x_bound: float | None = None) -> InputRanges:
    """The ranges a model version is served with: ``[-x_bound, x_bound]`` for every feature when
    ``encryption.x_bound`` is set, else the ones recorded with the version, else :func:`choose`
    from the model alone. The service and the client in process both call this."""
    client, served = adapter.encrypted_parts()
    schema = adapter.schema
    recorded = InputRanges.from_json(schema.ranges) if schema is not None and schema.ranges else None
    if recorded is not None and recorded.n_features != n_features:
        raise ValueError(f"the model version records input ranges for {recorded.n_features} features, its model "
                         f"takes {n_features}")
    names = recorded.names if recorded is not None else \
        input_names(client, schema.names if schema is not None else adapter.feature_names, n_features)
    if x_bound is not None:
        return InputRanges.uniform(n_features, x_bound, names)
    return recorded if recorded is not None else choose(served, n_features, names=names)
