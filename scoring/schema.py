"""What a model takes: named, typed columns (a table) or a positional matrix of numbers.

One :class:`Schema` per model version, written once at the model stage beside the model
(``aideploy-schema.json``) and read by everyone who needs it: the service (checking requests,
``GET /score``, ``/swagger.json``), the client (reading files, building requests) and the
encrypted schemes (what runs in the client). A table's columns are matched by name, so their
order on the wire and in a file never matters.

Wire forms the service takes (:func:`rows_of`), values as JSON strings, numbers, booleans and
``null`` (a missing value):

- ``{"data": [[...], ...]}``: rows by position, in the schema's column order;
- ``{"columns": [...], "data": [[...], ...]}``: pandas' ``split`` form;
- ``{"input_data": {"columns": [...], "index": [...], "data": [[...], ...]}}``: Azure ML's form;
  ``{"input_data": [{"column": value, ...}, ...]}`` (records, as ``/swagger.json`` shows it) and
  ``{"input_data": [[...]]}`` (by position) too;
- ``{"dataframe_split": {"columns": [...], "data": [...]}}`` and
  ``{"dataframe_records": [{"column": value, ...}, ...]}``: MLflow's forms.

:meth:`Schema.table` turns any of them into what the model was fitted on: a DataFrame with the
columns in training order, each of its training type, a missing value as the model's own marker
(NaN, or None where an encoder learnt None as a category). Anything else is an
:class:`InputError` naming the column, the row and what was expected, which the service answers
with HTTP 400.

This module is shipped with the service: numpy and the standard library at import, pandas only
for tables.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

FILE = "aideploy-schema.json"
NUMBER, INTEGER, BOOLEAN, STRING = "number", "integer", "boolean", "string"
TYPES = (NUMBER, INTEGER, BOOLEAN, STRING)
NAN, NONE = "nan", "none"  # how a missing cell reaches the model
CSV_DTYPES = {NUMBER: "float64", INTEGER: "float64", BOOLEAN: "boolean", STRING: str}
"""How a typed column is read from a CSV (pandas ``dtype``): text stays text ("007"), a whole number may be missing."""
WIRE_FORMS = "'data', 'columns' + 'data', 'input_data', 'dataframe_split' or 'dataframe_records'"
MAX_SHOWN = 12


class InputError(ValueError):
    """Rows that do not fit the model's schema; the message names the column, row and type.
    ``row`` is the bad row's number where one row is to blame."""

    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.row = row


@dataclass
class Column:
    """One input column: its name, JSON type and what the model knows of its values.

    ``levels`` are the values a categorical column was fitted with (an encoder's categories);
    with ``strict`` a value outside them is refused (the encoder raises on unknown levels).
    ``categorical``: the model wants a pandas ``category`` column with exactly these levels
    (LightGBM and XGBoost fitted on one). ``nullable``: a missing value is known to be fine;
    false only means nothing says so (the model decides). ``missing``: the marker a missing
    value becomes (``"nan"``, or ``"none"`` where an encoder learnt None as a category).
    ``example``: a value from the data sample, for the description's example row.
    """

    name: str
    type: str = NUMBER
    nullable: bool = False
    levels: list | None = None
    strict: bool = False
    categorical: bool = False
    missing: str = NAN
    example: Any = None
    inferred: bool = False  # the type is a default: nothing in the model or the data said it

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"column {self.name!r}: type {self.type!r} is not one of {', '.join(TYPES)}")


@dataclass
class Schema:
    """The model's input: ``columns`` in training order.

    ``named``: the model takes a table whose columns are matched by name (a DataFrame); else it
    takes a positional matrix of numbers (an array), and the names, where there are any, are
    only labels. ``ranges``: the fast scheme's per-feature input ranges
    (:class:`~.inputranges.InputRanges` as JSON), chosen at the model stage for a model the
    encrypted schemes serve, None otherwise; the service reads them here.
    """

    columns: list[Column]
    named: bool = True
    source: list[str] = field(default_factory=list)  # where the facts came from (model, data sample)
    ranges: dict[str, Any] | None = None

    # ---------------------------------------------------------------- construction and storage

    @classmethod
    def positional(cls, n_features: int, names: Sequence[str] | None = None, source: str = "model") -> "Schema":
        """``n_features`` numbers by position (an array model)."""
        names = list(names) if names is not None else [f"x{i}" for i in range(n_features)]
        return cls([Column(str(name)) for name in names], named=False, source=[source])

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def n_features(self) -> int:
        return len(self.columns)

    @property
    def numeric(self) -> bool:
        """Every column is a number (or integer, or boolean): the encrypted schemes can take it as is."""
        return all(c.type != STRING and not c.categorical for c in self.columns)

    def column(self, name: str) -> Column:
        return self.columns[self.names.index(name)]

    def to_json(self) -> dict[str, Any]:
        data = {"named": self.named, "source": self.source, "columns": [asdict(c) for c in self.columns]}
        return {**data, "ranges": self.ranges} if self.ranges is not None else data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Schema":
        try:
            ranges = data.get("ranges")
            if ranges is not None and not isinstance(ranges, dict):
                raise ValueError("'ranges' must be an object")
            return cls([Column(**c) for c in data["columns"]], bool(data.get("named", True)),
                       list(data.get("source") or []), ranges)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a valid schema: {exc}") from None

    def save(self, folder: Path) -> Path:
        path = Path(folder) / FILE
        path.write_text(json.dumps(self.to_json(), indent=1, default=_json_default, ensure_ascii=False))
        return path

    @classmethod
    def load(cls, folder: Path) -> "Schema | None":
        """The schema stored in ``folder``, or None when there is none (a model registered elsewhere)."""
        path = Path(folder) / FILE
        if not path.is_file():
            return None
        return cls.from_json(json.loads(path.read_text()))

    # ---------------------------------------------------------------- description

    def example_row(self) -> list[Any]:
        """One row of plausible values, in column order: a level, else the sample's value, else 0."""
        row = []
        for c in self.columns:
            if c.example is not None:
                row.append(c.example)
            elif c.levels:
                row.append(next((v for v in c.levels if v is not None), None))
            else:
                row.append({NUMBER: 0.0, INTEGER: 0, BOOLEAN: False, STRING: ""}[c.type])
        return row

    def describe(self) -> dict[str, Any]:
        """``GET /score``'s ``input``: the schema (:meth:`from_json` reads it back), the wire forms
        and an example request."""
        example = {"columns": self.names, "data": [self.example_row()]} if self.named else \
            {"data": [self.example_row()]}
        described = json.loads(json.dumps(self.to_json(), default=_json_default))
        described.pop("ranges", None)  # the fast scheme's description gives the ones it serves with
        return {**described, "example": example, "forms": WIRE_FORMS}

    # ---------------------------------------------------------------- checking rows

    def table(self, columns: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> Any:
        """Rows from the wire as the model takes them: a DataFrame (named) or a float64 array.

        ``columns`` None means by position, in schema order. Raises :class:`InputError`.
        """
        if not isinstance(rows, list) or not rows:
            raise InputError("'data' must be a non-empty list of rows")
        if columns is not None:
            columns = self._check_names(columns)
        if not self.named:
            return self._matrix(columns, rows)
        import pandas as pd

        width = len(columns) if columns is not None else self.n_features
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) != width:
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                raise InputError(f"row {index} holds {got}; each row needs {width} values"
                                 + (f" ({', '.join(self._shown(columns or self.names))})" if width else ""))
        frame = pd.DataFrame(rows, columns=columns if columns is not None else self.names)
        return self._conform(frame, first_row=0)

    def conform(self, frame: Any, extra: str = "error", first_row: int = 0) -> Any:
        """A DataFrame the client read (or anyone built) as the model takes it: columns by name in
        training order, training types, missing values as the model's marker. ``extra``:
        ``"error"`` or ``"drop"`` for columns the model does not know; ``first_row`` numbers the
        rows in messages. Raises :class:`InputError`."""
        if extra == "drop":
            frame = frame[[c for c in frame.columns if c in set(self.names)]]
        self._check_names([str(c) for c in frame.columns])
        return self._conform(frame, first_row)

    def unreadable_cell(self, text: Any, first_row: int = 0) -> "InputError | None":
        """The first cell of ``text`` (a file's rows read as text, columns by name) that cannot be read as its
        column's type, as an :class:`InputError` naming its row and column; None when every cell reads. What
        names the bad cell when a typed read of a CSV fails (the client's reader and the batch scorer)."""
        import pandas as pd

        for name in text.columns:
            kind = self.column(name).type if name in self.names else STRING
            if kind == STRING:
                continue
            cells = text[name]
            if kind == BOOLEAN:
                bad = ~cells.str.lower().isin(["true", "false", "1", "0", "1.0", "0.0"]) & cells.notna()
            else:
                bad = pd.to_numeric(cells, errors="coerce").isna() & cells.notna()
            if bad.any():
                position = int(np.flatnonzero(bad.to_numpy())[0])
                return InputError(f"row {first_row + position}, column {name!r}: expected a {kind}, got "
                                  f"{cells.iloc[position][:40]!r}", first_row + position)
        return None

    def _shown(self, names: Sequence[str]) -> list[str]:
        names = [repr(str(n)) for n in names]
        return names[:MAX_SHOWN] + (["..."] if len(names) > MAX_SHOWN else [])

    def _check_names(self, columns: Sequence[Any]) -> list[str]:
        if not isinstance(columns, (list, tuple)) or not all(isinstance(c, str) for c in columns):
            raise InputError("'columns' must be a list of column names (strings)")
        seen: set[str] = set()
        for name in columns:
            if name in seen:
                raise InputError(f"column {name!r} is given twice")
            seen.add(name)
        known = set(self.names)
        unknown = [c for c in columns if c not in known]
        missing = [c for c in self.names if c not in seen]
        if unknown or missing:
            parts = []
            if missing:
                parts.append(f"missing column{'s' if len(missing) > 1 else ''} {', '.join(self._shown(missing))}")
            if unknown:
                parts.append(f"unknown column{'s' if len(unknown) > 1 else ''} {', '.join(self._shown(unknown))}")
            raise InputError(f"{'; '.join(parts)}: this model takes {', '.join(self._shown(self.names))}")
        return list(columns)

    def _matrix(self, columns: Sequence[str] | None, rows: list) -> np.ndarray:
        try:
            X = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError):
            X = None
        if X is None or X.ndim != 2:
            _first_bad_cell(rows, self.n_features)
            raise InputError("'data' must be a list of rows, each a list of numbers")
        if X.shape[1] != self.n_features:
            raise InputError(f"each row must have {self.n_features} features for this model, got {X.shape[1]}")
        if columns is not None:
            X = X[:, [columns.index(name) for name in self.names]]
        if np.isinf(X).any():
            row, col = (int(i) for i in np.argwhere(np.isinf(X))[0])
            raise InputError(f"row {row}, column {self.names[col]!r}: infinity is not a value the model takes")
        return X

    def _conform(self, frame: Any, first_row: int) -> Any:
        import pandas as pd

        out = {}
        for column in self.columns:
            out[column.name] = _convert(column, frame[column.name], first_row)
        return pd.DataFrame(out, index=frame.index, copy=False)


# ---------------------------------------------------------------------------- wire forms


def rows_of(payload: dict) -> tuple[list[str] | None, Any]:
    """``(columns or None, rows)`` from any of the wire forms (see the module docstring)."""
    forms = [name for name in ("input_data", "dataframe_split", "dataframe_records", "data") if name in payload]
    if not forms:
        raise InputError(f"no rows in the request: send {WIRE_FORMS}")
    if len(forms) > 1:
        raise InputError(f"the request holds {' and '.join(repr(f) for f in forms)}: send one of them")
    form = forms[0]
    value = payload[form]
    if form == "data":
        columns = payload.get("columns")
        return (_names(columns, "columns") if columns is not None else None), value
    if form == "dataframe_records":
        return _records(value)
    if form == "input_data" and isinstance(value, list):  # records (as swagger.json shows), or rows by position
        return _records(value) if value and isinstance(value[0], dict) else (None, value)
    if not isinstance(value, dict):
        raise InputError(f"{form!r} must be an object with 'columns' and 'data'")
    if "data" not in value:
        raise InputError(f"{form!r} has no 'data' (the rows)")
    columns = value.get("columns")
    return (_names(columns, f"{form}.columns") if columns is not None else None), value["data"]


def _names(columns: Any, where: str) -> list[str]:
    if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
        raise InputError(f"{where!r} must be a list of column names (strings)")
    return columns


def _records(records: Any) -> tuple[list[str], list[list[Any]]]:
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise InputError("records must be a non-empty list of {column: value} objects")
    columns = list(records[0])
    rows = []
    for index, record in enumerate(records):
        if len(record) != len(columns) or any(name not in record for name in columns):
            other = sorted(set(record) ^ set(columns))
            raise InputError(f"record {index} has other columns than record 0 ({', '.join(map(repr, other[:5]))})")
        rows.append([record[name] for name in columns])
    return columns, rows


# ---------------------------------------------------------------------------- cell types

# pandas.api.types.infer_dtype's verdicts (missing cells skipped) that each column type takes
_NUMERIC_KINDS = {"integer", "floating", "mixed-integer-float", "decimal", "empty"}
_KINDS = {NUMBER: _NUMERIC_KINDS, INTEGER: _NUMERIC_KINDS, BOOLEAN: {"boolean", "empty"},
          STRING: {"string", "empty"}}


def fits(value: Any, kind: str) -> bool:
    """``value`` (a JSON value, or a missing one) is of column type ``kind``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    if kind == STRING:
        return isinstance(value, str)
    if kind == BOOLEAN:
        return isinstance(value, (bool, np.bool_))
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return kind == NUMBER or float(value).is_integer()


def _what(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value[:40]!r}"
    if isinstance(value, (bool, np.bool_)):
        return f"the boolean {str(bool(value)).lower()}"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return f"the number {value!r}"
    return f"a {type(value).__name__}"


_EXPECTED = {NUMBER: "a number", INTEGER: "a whole number", BOOLEAN: "true or false", STRING: "a string"}


def _convert(column: Column, values: Any, first_row: int) -> Any:
    """One column's cells as the model takes them, or an InputError naming the first bad cell."""
    import pandas as pd

    kind = pd.api.types.infer_dtype(values, skipna=True)
    missing = values.isna()
    typed = kind in _KINDS[column.type]
    if typed and column.type == INTEGER and kind not in ("integer", "empty"):
        typed = _integral(values[~missing])  # 3.0 is a whole number; 3.5 is not
    if not typed:
        for position, value in enumerate(values):
            if not fits(value, column.type):
                raise InputError(f"row {first_row + position}, column {column.name!r}: expected "
                                 f"{_EXPECTED[column.type]}, got {_what(value)}", first_row + position)
    if column.type in (NUMBER, INTEGER):
        converted = values.astype(np.float64)
        if np.isinf(converted.to_numpy()).any():
            position = int(np.flatnonzero(np.isinf(converted.to_numpy()))[0])
            raise InputError(f"row {first_row + position}, column {column.name!r}: infinity is not a value "
                             "the model takes", first_row + position)
        if column.type == INTEGER and not missing.any():
            converted = converted.astype(np.int64)
        return converted
    if column.levels is not None and column.strict:
        known = values.isin([v for v in column.levels if v is not None])
        bad = ~known & ~missing
        if bad.any():
            position = int(np.flatnonzero(bad.to_numpy())[0])
            shown = ", ".join(repr(v) for v in column.levels[:MAX_SHOWN]) + (", ..." if len(column.levels) > MAX_SHOWN
                                                                             else "")
            raise InputError(f"row {first_row + position}, column {column.name!r}: {values.iloc[position]!r} is "
                             f"not a level the model knows ({shown})", first_row + position)
    if column.type == BOOLEAN and not missing.any():
        return values.astype(bool)
    values = values.astype(object)
    if missing.any():
        values = values.where(~missing, None if column.missing == NONE else np.nan)
    if column.categorical:
        levels = [v for v in column.levels if v is not None] if column.levels is not None else None
        return pd.Categorical(values, categories=levels)
    return values


def _integral(values: Any) -> bool:
    try:
        as_float = values.astype(np.float64).to_numpy()
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.floor(as_float) == as_float))


def _first_bad_cell(rows: list, width: int) -> None:
    """Raise an InputError naming the first row or cell of ``rows`` that is not a number."""
    for index, row in enumerate(rows):
        if not isinstance(row, list):
            raise InputError(f"row {index} is a {type(row).__name__}, not a list of numbers")
        for position, value in enumerate(row):
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"row {index}, value {position}: expected a number, got {_what(value)}")
        if len(row) != width:
            raise InputError(f"row {index} holds {len(row)} values; each row needs {width}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON")


def levels_of(values: Iterable[Any]) -> tuple[str | None, list, str]:
    """``(type, levels, missing marker)`` of an encoder's categories: their JSON type (None when
    they mix types), the levels without the missing marker, and which marker the encoder learnt."""
    levels, marker = [], NAN
    for value in values:
        if value is None:
            marker = NONE
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        levels.append(value.item() if isinstance(value, np.generic) else value)
    kinds = {_kind_of(v) for v in levels}
    kind = kinds.pop() if len(kinds) == 1 else (NUMBER if kinds <= {NUMBER, INTEGER} and kinds else None)
    return kind, levels, marker


def _kind_of(value: Any) -> str:
    if isinstance(value, str):
        return STRING
    if isinstance(value, bool):
        return BOOLEAN
    if isinstance(value, int):
        return INTEGER
    return NUMBER
