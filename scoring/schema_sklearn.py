"""What a fitted scikit-learn estimator says about its input columns.

A model fitted on a DataFrame records the column names (``feature_names_in_``); the rest is
read from the fitted steps that see each column first: an encoder's ``categories_`` give the
column's type and levels (and whether unknown levels are refused), an imputer or an estimator
that takes NaN makes it nullable, a numeric transformer (a scaler, PCA, ...) makes it a number.
A column nothing says anything about keeps ``inferred=True``: the data sample types it
(:func:`aideploy.schemas.capture`). Also LightGBM's and XGBoost's scikit-learn models, which
record the levels of the pandas ``category`` columns they were fitted on.
"""

from __future__ import annotations

from typing import Any

from aideploy_scoring.schema import NUMBER, STRING, Column, Schema, levels_of

#: Encoders whose ``handle_unknown`` refuses an unknown level with this value.
_STRICT = "error"


def _allows_nan(estimator: Any) -> bool:
    try:
        from sklearn.utils import get_tags

        return bool(get_tags(estimator).input_tags.allow_nan)
    except Exception:  # noqa: BLE001 - an estimator from another library, or an older scikit-learn
        return False


def _column_facts(transformer: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Facts about ``names`` as ``transformer`` (a step, a Pipeline, a ColumnTransformer) sees them."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    facts: dict[str, dict[str, Any]] = {name: {} for name in names}
    if transformer in (None, "passthrough", "drop"):
        return facts
    if isinstance(transformer, ColumnTransformer):
        inputs = list(getattr(transformer, "feature_names_in_", names))
        for name, step, _ in transformer.transformers_:
            indices = transformer._transformer_to_input_indices.get(name, [])
            part = [str(inputs[i]) for i in indices]
            for column, found in _column_facts(step, part).items():
                facts.setdefault(column, {}).update(found)
        return facts
    if isinstance(transformer, Pipeline):
        steps = [step for _, step in transformer.steps if step not in (None, "passthrough")]
        nullable = _takes_nan(transformer)
        for step in steps:  # the first step that types a column decides it; imputers come before encoders
            for column, found in _column_facts(step, names).items():
                for key, value in found.items():
                    facts[column].setdefault(key, value)
            if not hasattr(step, "categories_") and not _imputes(step):
                break
        for column in names:
            facts[column].setdefault("nullable", nullable)
        return facts
    categories = getattr(transformer, "categories_", None)
    if categories is not None and len(categories) == len(names):
        strict = getattr(transformer, "handle_unknown", _STRICT) == _STRICT
        for column, values in zip(names, categories):
            kind, levels, marker = levels_of(values)
            facts[column].update(levels=levels, strict=strict, missing=marker,
                                 nullable=marker == "none" or len(levels) < len(values))
            if kind is not None:
                facts[column]["type"] = kind
        return facts
    if _imputes(transformer):
        for column in names:
            facts[column]["nullable"] = True
        return facts
    if _numeric_only(transformer):
        for column in names:
            facts[column]["type"] = NUMBER
    return facts


def _takes_nan(estimator: Any) -> bool:
    """A missing value gets through: an imputer comes before any step that refuses NaN (a
    scaler passes NaN on, so the step after it decides)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.pipeline import Pipeline

    if isinstance(estimator, Pipeline):
        for _, step in estimator.steps:
            if step in (None, "passthrough"):
                continue
            if _imputes(step):
                return True
            if not _takes_nan(step):
                return False
        return True
    if isinstance(estimator, ColumnTransformer):
        return False  # it depends on the column: see _column_facts
    return _allows_nan(estimator)


def _imputes(step: Any) -> bool:
    return type(step).__name__ in ("SimpleImputer", "KNNImputer", "IterativeImputer", "MissingIndicator")


def _numeric_only(step: Any) -> bool:
    """A fitted transformer that turns numbers into numbers (scalers, decompositions, ...)."""
    module = type(step).__module__
    return module.startswith(("sklearn.preprocessing", "sklearn.decomposition", "sklearn.feature_selection",
                              "sklearn.kernel_approximation", "sklearn.random_projection")) \
        and not hasattr(step, "categories_") and type(step).__name__ != "FunctionTransformer"


def _booster_levels(estimator: Any) -> dict[str, dict[str, Any]]:
    """The ``category`` columns LightGBM and XGBoost were fitted on (with LightGBM's levels): both
    want a ``category`` column back at predict time (an object column is refused)."""
    found: dict[str, list] = {}
    booster = getattr(estimator, "booster_", None)
    if getattr(booster, "pandas_categorical", None):  # LightGBM: levels per category column, in order
        text = booster.model_to_string(num_iteration=0)
        line = next((l for l in text.splitlines() if l.startswith("[categorical_feature: ")), "")
        indices = [int(i) for i in line.strip("[]").split(": ", 1)[-1].split(",") if i.strip().isdigit()]
        names = booster.feature_name()
        found = {names[i]: list(levels) for i, levels in zip(indices, booster.pandas_categorical)}
    facts = {}
    for name, levels in found.items():
        kind, values, _ = levels_of(levels)
        facts[name] = {"type": kind or STRING, "levels": values, "categorical": True, "nullable": True}
    get_booster = getattr(estimator, "get_booster", None)
    booster = get_booster() if get_booster is not None else None
    for name, kind in zip(getattr(booster, "feature_names", None) or [], getattr(booster, "feature_types", None) or []):
        if kind == "c":  # XGBoost matches levels by name; its export of them garbles non-ASCII ones (3.2)
            facts[name] = {"categorical": True, "nullable": True}
    return facts


def input_schema(estimator: Any) -> Schema | None:
    """The estimator's input as far as it records it; None when it says nothing (no feature count)."""
    names = getattr(estimator, "feature_names_in_", None)
    n = getattr(estimator, "n_features_in_", None)
    if names is None:
        return Schema.positional(int(n)) if n is not None else None
    names = [str(c) for c in names]
    facts = _column_facts(estimator, names)
    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    for column, found in _booster_levels(final).items():
        facts.setdefault(column, {}).update(found)
    nullable = _takes_nan(estimator)
    columns = []
    for name in names:
        found = facts.get(name, {})
        default = STRING if found.get("categorical") else NUMBER
        columns.append(Column(name, found.get("type", default), nullable=found.get("nullable", nullable),
                              levels=found.get("levels"), strict=found.get("strict", False),
                              categorical=found.get("categorical", False), missing=found.get("missing", "nan"),
                              inferred="type" not in found))
    return Schema(columns, named=True, source=["model"])
