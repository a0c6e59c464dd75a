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

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from aideploy.errors import ConfigError

Chunk = tuple[np.ndarray, "np.ndarray | None"]


def existing_file(path: str | Path, option: str, what: str) -> Path:
    """``path`` as a Path, or a ConfigError naming the option that gave it."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"{option}={str(path)!r}: no such file", hint=f"give the path of {what}")
    if path.stat().st_size == 0:
        raise ConfigError(f"{path} is empty", hint=f"give a file with rows in it ({what})")
    return path


class RowSource:
    """Rows of one file: ``n_rows`` x ``n_features`` features, with labels when ``has_labels``."""

    path: Path
    n_rows: int
    feature_names: list[str] | None
    has_labels: bool

    @property
    def n_features(self) -> int:
        raise NotImplementedError

    def chunks(self, size: int, start: int = 0) -> Iterator[Chunk]:
        """(X float64 (rows, n_features), y or None) from row ``start`` on, ``size`` rows at a time."""
        raise NotImplementedError


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


def _numeric(block, columns: list[int], names: list[str], path: Path, first_row: int,
             header_lines: int | None = None) -> np.ndarray:
    """The chosen columns of a pandas frame as float64, or an error naming the first bad cell."""
    import pandas as pd

    part = block.iloc[:, columns]
    try:
        return part.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        pass
    for position, column in enumerate(columns):
        values = part.iloc[:, position]
        bad = pd.to_numeric(values, errors="coerce").isna() & values.notna()
        if bad.any():
            row = first_row + int(np.flatnonzero(bad.to_numpy())[0])
            cell = values[bad].iloc[0]
            raise ConfigError(f"{_where(path, row, header_lines)}, column {names[column]!r} holds {str(cell)[:40]!r}, "
                              "not a number",
                              hint="every feature cell must be a number; pick the feature columns with "
                              "data.feature_columns=[...] or fix the file")
    raise ConfigError(f"{path}: the feature columns are not all numbers", hint="fix the file")


def _no_missing(X: np.ndarray, names: list[str], columns: list[int], path: Path, first_row: int,
                header_lines: int | None = None) -> None:
    missing = np.isnan(X)
    if missing.any():
        row, position = (int(i) for i in np.argwhere(missing)[0])
        raise ConfigError(f"{_where(path, first_row + row, header_lines)}, column {names[columns[position]]!r} "
                          "is empty",
                          hint="fill in every feature cell (the service needs a number for each)")


class CsvRows(RowSource):
    """A CSV file read with pandas' C parser, ``chunk`` rows at a time."""

    def __init__(self, path: str | Path, label_column: str | None = None,
                 feature_columns: Sequence[str] | None = None, header: bool = True, delimiter: str = ",") -> None:
        import pandas as pd

        self.path = existing_file(path, "data.path", "a CSV file with one sample per row")
        self.header, self.delimiter = header, delimiter
        try:
            head = pd.read_csv(self.path, sep=delimiter, header=0 if header else None, nrows=1)
        except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{self.path} is not a CSV table: {str(exc).splitlines()[0]}",
                              hint="give a comma-separated file (data.delimiter for another separator)") from None
        self.names = [str(c) for c in head.columns]
        self.label_index, self.columns = _pick_columns(self.names, label_column, feature_columns, self.path)
        self.has_labels = self.label_index is not None
        self.feature_names = [self.names[i] for i in self.columns] if header else None
        self.n_rows = self._count_rows()
        if self.n_rows == 0:
            raise ConfigError(f"{self.path} has a header but no rows", hint="give a file with rows in it")

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def _count_rows(self) -> int:
        lines, last = 0, b"\n"
        with open(self.path, "rb") as fh:
            while block := fh.read(1 << 20):
                lines += block.count(b"\n")
                last = block[-1:]
        lines += last != b"\n"  # a last line without its newline
        return lines - (1 if self.header else 0)

    def chunks(self, size: int, start: int = 0) -> Iterator[Chunk]:
        import pandas as pd

        # file lines to skip: the header, then the rows before ``start``
        skip = range(start + 1) if self.header else range(start)
        reader = pd.read_csv(self.path, sep=self.delimiter, header=None, skiprows=skip, chunksize=size,
                             low_memory=False)
        row = start
        try:
            for block in reader:
                if block.shape[1] != len(self.names):
                    raise ConfigError(f"{self.path}: the rows from row {row} have {block.shape[1]} columns, the "
                                      f"header {len(self.names)}", hint="every row needs the same number of columns")
                X = _numeric(block, self.columns, self.names, self.path, row, int(self.header))
                _no_missing(X, self.names, self.columns, self.path, row, int(self.header))
                y = block.iloc[:, self.label_index].to_numpy() if self.has_labels else None
                yield X, y
                row += len(block)
        except pd.errors.ParserError as exc:
            raise ConfigError(f"{self.path}: {str(exc).splitlines()[0]}",
                              hint="every row needs the same number of columns") from None


class ParquetRows(RowSource):
    """A Parquet file read a record batch at a time with pyarrow."""

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
        for i in self.columns:
            kind = self.file.schema_arrow.field(i).type
            if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                    or pa.types.is_decimal(kind)):
                raise ConfigError(f"{self.path}: column {self.names[i]!r} holds {kind}, not numbers",
                                  hint="pick the feature columns with data.feature_columns=[...]")
        self.has_labels = self.label_index is not None
        self.feature_names = [self.names[i] for i in self.columns]
        self.n_rows = int(self.file.metadata.num_rows)
        if self.n_rows == 0:
            raise ConfigError(f"{self.path} has no rows", hint="give a file with rows in it")

    @property
    def n_features(self) -> int:
        return len(self.columns)

    def chunks(self, size: int, start: int = 0) -> Iterator[Chunk]:
        wanted = [self.names[i] for i in self.columns] + ([self.names[self.label_index]] if self.has_labels else [])
        row = 0
        for batch in self.file.iter_batches(batch_size=size, columns=list(dict.fromkeys(wanted))):
            frame = batch.to_pandas()
            if row + len(frame) <= start:
                row += len(frame)
                continue
            frame = frame.iloc[max(0, start - row):]
            first = max(row, start)
            names = list(frame.columns)
            columns = [names.index(self.names[i]) for i in self.columns]
            X = frame.iloc[:, columns].to_numpy(dtype=np.float64)
            _no_missing(X, names, columns, self.path, first)
            y = frame[self.names[self.label_index]].to_numpy() if self.has_labels else None
            yield X, y
            row += len(batch)


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
        self.feature_names = None
        self.n_rows = len(X)

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1]) if self.X.ndim == 2 else 1

    def chunks(self, size: int, start: int = 0) -> Iterator[Chunk]:
        for first in range(start, self.n_rows, size):
            X = np.asarray(self.X[first:first + size], dtype=np.float64).reshape(-1, self.n_features)
            _no_missing(X, [str(i) for i in range(X.shape[1])], list(range(X.shape[1])), self.path, first)
            yield X, (self.y[first:first + size] if self.y is not None else None)


def limited(source: RowSource, limit: int | None) -> RowSource:
    """``source`` cut to its first ``limit`` rows (``data.limit``)."""
    if limit is not None and limit < source.n_rows:
        source.n_rows = limit
        chunks = source.chunks

        def first_rows(size: int, start: int = 0) -> Iterator[Chunk]:
            left = limit - start
            for X, y in chunks(size, start):
                if left <= 0:
                    return
                yield X[:left], (y[:left] if y is not None else None)
                left -= len(X)

        source.chunks = first_rows
    return source
