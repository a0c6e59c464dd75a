"""Rows from the files users have: CSV, Parquet and NumPy, read in chunks, labels optional.

A :class:`RowSource` knows its row count, feature count and names, and whether it holds
labels, from a cheap first look; ``chunks(size, start)`` then reads the rows a chunk at a
time, so a million-row file is never in memory at once. Every problem with a file is a
:class:`~aideploy.errors.ConfigError` whose line names the file (and, for a bad cell, its row
and column) and whose hint says what to change.

Rows are numbered from 0, as in predictions.csv's ``row`` column; for a CSV the message also
gives the file's line number, as an editor shows it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from aideploy.errors import ConfigError
from aideploy_scoring.schema import CSV_DTYPES, InputError, Schema

Chunk = tuple[Any, "np.ndarray | None"]
# pandas' default missing-value spellings, for saying "a missing value?" where none is allowed
NA_SPELLINGS = frozenset({"", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
                          "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"})


def existing_file(path: str | Path, option: str, what: str) -> Path:
    """``path`` as a Path, or a ConfigError naming the option that gave it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option}={str(path)!r}: no such file", hint=f"give the path of {what}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path} is empty", hint=f"give a file with rows in it ({what})")
    return path


class RowSource:
    """Rows of one file: ``n_rows`` rows of ``n_features`` feature columns, with labels when ``has_labels``.

    ``chunks(size, start, schema)`` reads them as the model takes them (:mod:`aideploy_scoring.schema`):
    for a model that takes named columns, a DataFrame of those columns, each read in its type
    (a string column stays text, "007" included; empty cells and the usual NA spellings are
    missing); otherwise, or with no schema, a float64 array by position.
    """

    path: Path
    n_rows: int
    names: list[str]
    feature_names: list[str] | None
    has_labels: bool
    label_index: int | None
    columns: list[int]

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def sample(self, rows: int) -> Any:
        """The first ``rows`` rows' feature columns as pandas types them (to type a schema's columns), or None."""
        return None

    def chunks(self, size: int, start: int = 0, schema: Schema | None = None) -> Iterator[Chunk]:
        """(X, y or None) from row ``start`` on, ``size`` rows at a time; see the class docstring."""
        raise NotImplementedError

    def _labels(self, block) -> "np.ndarray | None":
        return block.iloc[:, self.label_index].to_numpy() if self.has_labels else None

    def _table(self, block, schema: Schema, first_row: int, header_lines: int | None) -> Any:
        """The feature columns of ``block`` (named as the file names them) checked against ``schema``."""
        frame = block.iloc[:, self.columns]
        frame.columns = [self.names[i] for i in self.columns]
        try:
            return schema.conform(frame, extra="drop", first_row=first_row)
        except InputError as exc:
            raise _bad_cell(self.path, exc, header_lines) from None


def _bad_cell(path: Path, exc: InputError, header_lines: int | None) -> ConfigError:
    """A schema's refusal of a file's cell, placed in the file (line and row)."""
    if exc.row is None:
        return ConfigError(f"{path}: {exc}", hint="check that the file is data for this model")
    detail = re.sub(r"^row \d+, ", "", str(exc))
    return ConfigError(f"{_where(path, exc.row, header_lines)}, {detail}",
                       hint="fix the file, or check that it is data for this model (GET the scoring URI to see "
                       "the columns and types it takes)")


def _pick_columns(names: list[str], label: str | None, features: Sequence[str] | None,
                  path: Path) -> tuple[int | None, list[int]]:
    """Indices of the label column and the feature columns, by name or 0-based position."""

    def index(column: str, role: str) -> int:
        if column in names:
            return names.index(column)
        if str(column).lstrip("-").isdigit() and -len(names) <= int(column) < len(names):
            return int(column) % len(names)
        shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ConfigError(f"{path} has no column {column!r} ({role})",
                          hint=f"its columns are: {shown} (or give a 0-based position)")

    label_index = index(str(label), "data.label_column") if label is not None else None
    if features:
        chosen = [index(str(c), "data.feature_columns") for c in features]
    else:
        chosen = [i for i in range(len(names)) if i != label_index]
    if label_index is not None and label_index in chosen:
        raise ConfigError(f"{path}: column {names[label_index]!r} is both the label and a feature",
                          hint="leave it out of data.feature_columns")
    if not chosen:
        raise ConfigError(f"{path} has no feature columns", hint="a file needs at least one feature column")
    return label_index, chosen


def _where(path: Path, row: int, header_lines: int | None) -> str:
    line = f"line {row + 1 + header_lines} (row {row})" if header_lines is not None else f"row {row}"
    return f"{path}: {line}"


def _not_a_number(text: str) -> str:
    if text.strip() == "":
        return "is empty"
    if text.strip() in NA_SPELLINGS:
        return f"holds {text[:40]!r}, not a number (a missing value?)"
    return f"holds {text[:40]!r}, not a number"


def nullable_mask(schema: Schema | None, n_features: int) -> np.ndarray:
    """Which of ``n_features`` positional columns may be missing (NaN), as the schema says."""
    if schema is None or schema.n_features != n_features:
        return np.zeros(n_features, dtype=bool)
    return np.array([c.nullable for c in schema.columns], dtype=bool)


def _numeric(block, columns: list[int], names: list[str], path: Path, first_row: int,
             header_lines: int | None = None, nullable: np.ndarray | None = None) -> np.ndarray:
    """The chosen columns of a pandas frame as float64 (NaN only where ``nullable``), or an error
    naming the first bad cell."""
    import pandas as pd

    part = block.iloc[:, columns]
    nullable = np.zeros(len(columns), dtype=bool) if nullable is None else nullable
    try:
        X = part.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        X = None
    if X is not None and not (np.isnan(X) & ~nullable).any():
        return X
    for position, column in enumerate(columns):
        values = part.iloc[:, position]
        bad = pd.to_numeric(values, errors="coerce").isna()
        if nullable[position]:
            bad &= values.notna()
        if bad.any():
            row = first_row + int(np.flatnonzero(bad.to_numpy())[0])
            cell = values[bad].iloc[0]
            text = "" if cell is None or (isinstance(cell, float) and np.isnan(cell)) else str(cell)
            raise ConfigError(f"{_where(path, row, header_lines)}, column {names[column]!r} {_not_a_number(text)}",
                              hint="this model takes numbers by position and no missing values: fill in every "
                              "feature cell, or pick the feature columns with data.feature_columns=[...]")
    raise ConfigError(f"{path}: the feature columns are not all numbers", hint="fix the file")


def _all_numbers(cells: Sequence[Any]) -> bool:
    for cell in cells:
        try:
            float(str(cell))
        except ValueError:
            return False
    return True


class CsvRows(RowSource):
    """A CSV file (UTF-8, quoted fields) read with pandas' C parser, ``chunk`` rows at a time.

    ``header``: the first line names the columns (True), is data (False), or None: it names
    them unless it is all numbers, which is data (as ``numpy.savetxt`` writes a file).
    """

    def __init__(self, path: str | Path, label_column: str | None = None,
                 feature_columns: Sequence[str] | None = None, header: bool | None = None,
                 delimiter: str = ",") -> None:
        import pandas as pd

        self.path = existing_file(path, "data.path", "a CSV file with one sample per row")
        self.delimiter = delimiter
        try:
            first = pd.read_csv(self.path, sep=delimiter, header=None, nrows=1, dtype=str,
                                keep_default_na=False, encoding="utf-8")
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path} is not a CSV table: {str(exc).splitlines()[0]}",
                              hint="give a comma-separated UTF-8 file (data.delimiter for another separator)") from None
        cells = list(first.iloc[0])
        numbers = _all_numbers(cells)
        if header is None:
            header = not numbers
        elif header and numbers:
            raise ConfigError(f"{self.path}: its first line is all numbers ({', '.join(cells[:4])}"
                              f"{', ...' if len(cells) > 4 else ''}), so it is data, not a header",
                              hint="set data.header=false for a file without a header line (or data.header=null "
                              "to detect it)")
        self.header = header
        self.names = [str(c) for c in cells] if header else [str(i) for i in range(len(cells))]
        if header and len(set(self.names)) != len(self.names):
            twice = next(n for n in self.names if self.names.count(n) > 1)
            raise ConfigError(f"{self.path}: column {twice!r} appears twice in the header",
                              hint="give every column its own name")
        self.label_index, self.columns = _pick_columns(self.names, label_column, feature_columns, self.path)
        self.has_labels = self.label_index is not None
        self.feature_names = [self.names[i] for i in self.columns] if header else None
        self.n_rows = self._count_rows()
        if self.n_rows == 0:
            raise ConfigError(f"{self.path} has a header but no rows", hint="give a file with rows in it")

    def _count_rows(self) -> int:
        lines, last = 0, b"\n"
        with open(self.path, "rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        lines += last != b"\n"  # a last line without its newline
        return lines - (1 if self.header else 0)

    def _reader(self, size: int, start: int, **options: Any):
        import pandas as pd

        # file lines to skip: the header, then the rows before ``start``
        skip = range(start + 1) if self.header else range(start)
        return pd.read_csv(self.path, sep=self.delimiter, header=None, names=self.names, skiprows=skip,
                           chunksize=size, low_memory=False, encoding="utf-8", **options)

    def sample(self, rows: int) -> Any:
        block = next(iter(self._reader(rows, 0)), None)
        if block is None:
            return None
        frame = block.iloc[:, self.columns]
        frame.columns = [self.names[i] for i in self.columns]
        return frame

    def chunks(self, size: int, start: int = 0, schema: Schema | None = None) -> Iterator[Chunk]:
        import pandas as pd

        header_lines = int(self.header)
        named = schema is not None and schema.named
        nullable = nullable_mask(schema, self.n_features)
        options: dict[str, Any] = {}
        if named:
            options["dtype"] = {name: CSV_DTYPES[schema.column(name).type] for name in self.feature_names or ()
                                if name in schema.names}
        elif not nullable.any():  # NA spellings stay text, so an error can say which it was
            options.update(keep_default_na=False, na_values=[""])
        row = start
        try:
            for block in self._reader(size, start, **options):
                X = (self._table(block, schema, row, header_lines) if named else
                     _numeric(block, self.columns, self.names, self.path, row, header_lines, nullable))
                yield X, self._labels(block)
                row += len(block)
        except pd.errors.ParserError as exc:
            raise ConfigError(f"{self.path}: {str(exc).splitlines()[0]}",
                              hint="every row needs the same number of columns") from None
        except (ValueError, TypeError) as exc:  # a cell pandas cannot read as its column's type
            if isinstance(exc, ConfigError):
                raise
            self._diagnose(row, size, schema, header_lines, exc)

    def _diagnose(self, row: int, size: int, schema: Schema, header_lines: int, exc: Exception) -> None:
        """Find the cell that stopped a typed read: the chunk read again as text, each typed column's
        cells checked as that type (empty cells and NA spellings are missing)."""
        block = next(iter(self._reader(size, row, dtype=str)))
        text = block.iloc[:, self.columns]
        text.columns = [self.names[i] for i in self.columns]
        found = schema.unreadable_cell(text, row)
        if found is not None:
            raise _bad_cell(self.path, found, header_lines)
        raise ConfigError(f"{self.path}: from row {row}: {exc}", hint="fix the file")


class ParquetRows(RowSource):
    """A Parquet file read a record batch at a time with pyarrow, in the file's own types."""

    def __init__(self, path: str | Path, label_column: str | None = None,
                 feature_columns: Sequence[str] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = existing_file(path, "data.path", "a Parquet file with one sample per row")
        try:
            self.file = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as exc:
            raise ConfigError(f"{self.path} is not a Parquet file: {exc}",
                              hint="give a .parquet file, or data=csv for a CSV file") from None
        self.names = list(self.file.schema_arrow.names)
        self.label_index, self.columns = _pick_columns(self.names, label_column, feature_columns, self.path)
        self.has_labels = self.label_index is not None
        self.feature_names = [self.names[i] for i in self.columns]
        self.n_rows = int(self.file.metadata.num_rows)
        if self.n_rows == 0:
            raise ConfigError(f"{self.path} has no rows", hint="give a file with rows in it")

    def __getstate__(self) -> dict[str, Any]:
        # An open ParquetFile does not pickle: an engine's worker in another process opens the file itself.
        return {k: v for k, v in self.__dict__.items() if k != "file"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import pyarrow.parquet as pq

        self.__dict__.update(state)
        self.file = pq.ParquetFile(self.path)

    def _batches(self, size: int, start: int) -> Iterator[tuple[int, Any]]:
        wanted = [self.names[i] for i in self.columns] + ([self.names[self.label_index]] if self.has_labels else [])
        row = 0
        for batch in self.file.iter_batches(batch_size=size, columns=list(dict.fromkeys(wanted))):
            frame = batch.to_pandas()
            if row + len(frame) > start:
                frame = frame.iloc[max(0, start - row):]
                yield max(row, start), frame[[self.names[i] for i in self.columns]
                                             + ([self.names[self.label_index]] if self.has_labels else [])]
            row += len(batch)

    def sample(self, rows: int) -> Any:
        first = next(self._batches(rows, 0), None)
        return first[1].iloc[:, :len(self.columns)] if first is not None else None

    def chunks(self, size: int, start: int = 0, schema: Schema | None = None) -> Iterator[Chunk]:
        named = schema is not None and schema.named
        label = [len(self.columns)] if self.has_labels else []
        positions = list(range(len(self.columns)))
        for first, frame in self._batches(size, start):
            y = frame.iloc[:, label[0]].to_numpy() if label else None
            if named:
                part = frame.iloc[:, positions]
                try:
                    X = schema.conform(part, extra="drop", first_row=first)
                except InputError as exc:
                    raise ConfigError(f"{self.path}: {exc}", hint="fix the file, or check that it is data for "
                                      "this model (GET the scoring URI to see the columns it takes)") from None
            else:
                X = _numeric(frame, positions, list(frame.columns), self.path, first,
                             nullable=nullable_mask(schema, self.n_features))
            yield X, y


class _NpyFile:
    """A C-ordered ``.npy`` read by rows with plain file reads: pages of a memory map would
    count in the process's RSS as they are touched, and stay there."""

    def __init__(self, path: Path, mapped: np.memmap) -> None:
        self.path, self.shape, self.dtype, self.offset = path, mapped.shape, mapped.dtype, mapped.offset
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        first, stop, _ = rows.indices(self.shape[0])
        width = int(np.prod(self.shape[1:], dtype=np.int64))
        count = max(0, stop - first) * width
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + first * width * self.dtype.itemsize)
            return np.fromfile(fh, dtype=self.dtype, count=count).reshape(-1, *self.shape[1:])


class NpyRows(RowSource):
    """A ``.npy`` array (read by rows) or arrays in a ``.npz``; labels from another array or file."""

    def __init__(self, path: str | Path, labels: str | None = None, features_key: str = "X",
                 labels_key: str = "y") -> None:
        self.path = existing_file(path, "data.path", "a .npy or .npz file holding a (samples, features) array")
        try:
            loaded = np.load(self.path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ConfigError(f"{self.path} is not a NumPy file: {exc}",
                              hint="give a .npy (np.save) or .npz (np.savez) file") from None
        y = None
        if isinstance(loaded, np.lib.npyio.NpzFile):
            if features_key not in loaded.files:
                raise ConfigError(f"{self.path} has no array {features_key!r} (it has {', '.join(loaded.files)})",
                                  hint="name the features' array with data.features_key=<name>")
            X = loaded[features_key]
            if labels_key in loaded.files and labels is None:
                y = loaded[labels_key]
        elif loaded.ndim in (1, 2) and loaded.flags.c_contiguous:
            X = _NpyFile(self.path, loaded)
            del loaded
        else:
            X = loaded
        if labels is not None:
            y = np.load(existing_file(labels, "data.labels", "a .npy file of labels"), allow_pickle=False)
        if X.ndim != 2 and X.ndim != 1 or len(X) == 0:
            raise ConfigError(f"{self.path} holds an array of shape {X.shape}, not (samples, features)",
                              hint="save a 2-D array with one sample per row")
        if X.dtype.kind not in "biuf":
            raise ConfigError(f"{self.path} holds {X.dtype} values, not numbers", hint="save a numeric array")
        if y is not None and len(y) != len(X):
            raise ConfigError(f"{self.path} has {len(X)} samples but {len(y)} labels",
                              hint="the labels must be the same samples, in order")
        self.X, self.y = X, (np.asarray(y) if y is not None else None)
        self.has_labels = self.y is not None
        self.label_index = None
        self.feature_names = None
        self.n_rows = len(X)
        self.names = [str(i) for i in range(int(X.shape[1]) if X.ndim == 2 else 1)]
        self.columns = list(range(len(self.names)))

    def chunks(self, size: int, start: int = 0, schema: Schema | None = None) -> Iterator[Chunk]:
        """Numbers by position, whatever the schema (an array has no column names); NaN only
        where the schema says a column may be missing."""
        nullable = nullable_mask(schema, self.n_features)
        for first in range(start, self.n_rows, size):
            X = np.asarray(self.X[first:first + size], dtype=np.float64).reshape(-1, self.n_features)
            missing = np.isnan(X) & ~nullable
            if missing.any():
                row, column = (int(i) for i in np.argwhere(missing)[0])
                raise ConfigError(f"{self.path}: row {first + row}, column {column} is NaN, a missing value this "
                                  "model takes none of", hint="fill in every feature value")
            yield X, (self.y[first:first + size] if self.y is not None else None)


def limited(source: RowSource, limit: int | None) -> RowSource:
    """``source`` cut to its first ``limit`` rows (``data.limit``)."""
    if limit is not None and limit < source.n_rows:
        source.n_rows = limit
        chunks = source.chunks

        def first_rows(size: int, start: int = 0, schema: Schema | None = None) -> Iterator[Chunk]:
            left = limit - start
            for X, y in chunks(size, start, schema):
                if left <= 0:
                    return
                yield X[:left], (y[:left] if y is not None else None)
                left -= len(X)

        source.chunks = first_rows
    return source
