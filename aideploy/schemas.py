"""A model version's schema, captured at the model stage: what the model records of its input,
each column it says nothing about typed by the run's data sample.

The schema is written beside the model in the registry (``aideploy-schema.json``) and deployed
with it, so the service, the client and the encrypted schemes read one and the same.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from aideploy_scoring.schema import BOOLEAN, INTEGER, NUMBER, STRING, Schema, fits

log = logging.getLogger(__name__)

SAMPLE_ROWS = 1000


def sample_type(values: Any) -> str | None:
    """The JSON type of a pandas column as read from a file, or None for an empty one."""
    import pandas as pd

    kind = pd.api.types.infer_dtype(values, skipna=True)
    return {"integer": INTEGER, "floating": NUMBER, "mixed-integer-float": NUMBER, "decimal": NUMBER,
            "boolean": BOOLEAN, "empty": None}.get(kind, STRING)


def plain(value: Any) -> Any:
    """A sample value as JSON has it (numpy scalars to Python's, NaN to None)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def capture(adapter: Any, dataset: Any = None) -> Schema | None:
    """The schema of ``adapter``'s model: its own (:meth:`~aideploy_scoring.models.ModelAdapter.input_schema`),
    with the columns it leaves untyped typed by ``dataset``'s first rows, missing values and an
    example value per column taken from them too, and, for a model the encrypted schemes serve,
    its input ranges (:func:`input_ranges`). None when the model says nothing of its input."""
    schema = adapter.input_schema()
    if schema is None or dataset is None:
        return schema
    sample = dataset.sample(SAMPLE_ROWS)  # a file's first rows, read once for both
    _typed(schema, dataset, sample)
    schema.ranges = input_ranges(adapter, schema, dataset, sample)
    return schema


def _typed(schema: Schema, dataset: Any, sample: Any) -> None:
    """Type ``schema``'s untyped columns from ``dataset``'s first rows, ``sample`` (see :func:`capture`)."""
    if sample is None or len(sample) == 0:
        return
    if not hasattr(sample, "columns"):  # an array: numbers by position
        if not schema.named and np.shape(sample)[1:] == (schema.n_features,):
            for column, value in zip(schema.columns, np.asarray(sample)[0]):
                column.example = plain(value)
            schema.source.append(f"data sample ({dataset.name})")
        return
    found = False
    for column in schema.columns:
        if column.name not in sample.columns:
            continue
        found = True
        values = sample[column.name]
        kind = sample_type(values)
        if column.inferred and kind is not None:
            column.type, column.inferred = kind, False
        if values.isna().any():
            column.nullable = True
        present = values.dropna()
        if len(present) and fits(plain(present.iloc[0]), column.type):
            column.example = plain(present.iloc[0])
    if found:
        schema.source.append(f"data sample ({dataset.name})")


def input_ranges(adapter: Any, schema: Schema, dataset: Any, sample: Any) -> dict[str, Any] | None:
    """The fast scheme's per-feature input ranges for a model the encrypted schemes serve
    (:func:`aideploy_scoring.inputranges.choose`), as the schema records them; None for another model.

    The data they are chosen from, as the scheme takes it (through the client part where there
    is one): a packaged data set's training split, its test rows held in memory, and a file's
    first :data:`SAMPLE_ROWS` rows (``sample``, read once by :func:`capture`), so no file is read in full before anything is deployed (the
    rows after them are checked as they are encrypted). Data that does not fit the model is left
    out: the check of its columns, right after, says why.
    """
    from aideploy.artifacts import Dataset
    from aideploy.linear import ClientPart
    from aideploy_scoring import inputranges
    from aideploy_scoring.models import NotLinear
    from aideploy_scoring.schema import InputError

    try:
        client, served = adapter.encrypted_parts()
    except NotLinear:
        return None
    n_features = inputranges.served_inputs(served) if served is not None else None
    if n_features is None:
        return None
    part, arrays = ClientPart(client), []
    for X in (dataset.X_train, dataset.X_test if dataset.X_test is not None else sample):
        if X is None or len(X) == 0:
            continue
        try:
            if hasattr(X, "columns") and schema.named:
                X = schema.conform(X, extra="drop")
            arrays.append(part.features(Dataset(dataset.name, X, schema=schema)))
        except (InputError, KeyError, TypeError, ValueError):
            continue
        except Exception as exc:  # noqa: BLE001 - the model's own code failing here (a module this process
            # lacks) is the deploy's to report, with the service's environment: the ranges do without these rows
            log.debug("input ranges: %s's rows left out: %s: %s", dataset.name, type(exc).__name__, exc)
            continue
    columns = schema.names if schema.named else dataset.feature_names or schema.names  # a file's names, by position
    names = inputranges.input_names(client, columns, n_features)
    return inputranges.choose(served, n_features, arrays, names, dataset.name).to_json()


def _names_of(dataset: Any) -> list[str] | None:
    if dataset.feature_names is not None:
        return list(dataset.feature_names)
    X = dataset.X_test
    return [str(c) for c in X.columns] if X is not None and hasattr(X, "columns") else None


def check_columns(dataset: Any, schema: Schema | None, extra: str, what: str) -> None:
    """The data's columns against what ``what`` (the model, or a service) takes, before anything
    is deployed or sent; on success the data is read in the schema's types from then on.

    A table's columns are matched by name: one the model needs and the data lacks (a renamed
    one, say) is an error naming it; one the model does not know is an error unless ``extra`` is
    ``"drop"``. Without names on either side, columns go by position and their count must match.
    """
    from difflib import get_close_matches

    from aideploy.errors import ConfigError

    if schema is None:
        return
    names = _names_of(dataset)
    if schema.named and names is not None:
        missing = [c for c in schema.names if c not in names]
        unknown = [c for c in names if c not in set(schema.names)]
        if missing:
            close = {c: get_close_matches(c, unknown, n=1, cutoff=0.6) for c in missing}
            shown = ", ".join(f"{c!r}" + (f" (is {close[c][0]!r} it?)" if close[c] else "") for c in missing[:8])
            raise ConfigError(f"{dataset.name} has no column {shown}, which {what} takes",
                              hint="rename the file's columns to the names the model was fitted with "
                              f"({', '.join(schema.names[:12])}{', ...' if len(schema.names) > 12 else ''})")
        if unknown and extra != "drop":
            raise ConfigError(f"{dataset.name} has column{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(map(repr, unknown[:8]))} that {what} does not take",
                              hint="predict.extra_columns=drop sends the rows without them (or pick the feature "
                              "columns with data.feature_columns=[...], the label with data.label_column=...)")
    elif dataset.n_features != schema.n_features:
        raise ConfigError(f"{dataset.name} has {dataset.n_features} feature columns but {what} takes "
                          f"{schema.n_features}",
                          hint="give data with the columns the model was fitted on (data.feature_columns=[...] picks "
                          "a file's, data.label_column its label), or a model fitted on this data")
    dataset.schema = schema
