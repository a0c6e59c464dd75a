"""A folder or a glob of CSV and Parquet files, read as one table and scored file by file.

``data.path`` may name one file, a directory (its ``.csv``, ``.parquet`` and ``.pq`` files, its
subfolders' included, in path order) or a glob (``rows/*.csv``, ``rows/**/*.parquet``). Many files become one
:class:`FileSet`: a :class:`~aideploy.datafiles.RowSource` whose rows are the files' rows in
order, so every engine reads it as it reads one file, and whose :attr:`FileSet.files` are the
files themselves, for an engine that scores them apart (``predict.engine=ray``: one
predictions file per input file).

Every file must hold the same columns (by name, in any order); the first one that does not is
an error naming it.
"""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any, Callable, Iterator

from aideploy.datafiles import Chunk, RowSource, limited
from aideploy.errors import ConfigError
from aideploy_scoring.schema import Schema

TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
PARQUET_SUFFIXES = (".parquet", ".pq")
_GLOB_CHARS = frozenset("*?[")


def is_many(path: str) -> bool:
    """Whether ``path`` names many files (a directory or a glob) rather than one."""
    return bool(_GLOB_CHARS & set(str(path))) or Path(path).expanduser().is_dir()


def expand(path: str, suffixes: tuple[str, ...] = TABLE_SUFFIXES) -> tuple[Path, list[Path]]:
    """``(root, files)`` for a directory or a glob: the files with one of ``suffixes``, in name order,
    and the directory their names are relative to (the directory, or the glob's part before its
    first wildcard)."""
    given = str(Path(path).expanduser())
    if Path(given).is_dir():
        root = Path(given)
        found = [p for p in root.rglob("*") if p.is_file()]
    else:
        parts = Path(given).parts
        fixed = next((i for i, part in enumerate(parts) if _GLOB_CHARS & set(part)), len(parts))
        root = Path(*parts[:fixed]) if fixed else Path(".")
        found = [Path(p) for p in glob.glob(given, recursive=True) if Path(p).is_file()]
    files = sorted(p for p in found if p.suffix.lower() in suffixes)
    if not files:
        kinds = "CSV or Parquet" if ".csv" in suffixes else "Parquet"
        raise ConfigError(f"data.path={path!r}: no {kinds} files there",
                          hint=f"give a folder holding {kinds} files, or a glob such as 'rows/*{suffixes[0]}'")
    return root, files


def open_rows(cfg: Any, open_file: Callable[[Path], RowSource],
              suffixes: tuple[str, ...] = TABLE_SUFFIXES) -> RowSource:
    """The rows ``data.path`` names (one file, or many as a :class:`FileSet`), cut to ``data.limit``;
    ``open_file`` reads one file."""
    if is_many(cfg.path):
        return FileSet(*expand(cfg.path, suffixes), open_file).limit(cfg.limit)
    return limited(open_file(Path(cfg.path)), cfg.limit)


class FileSet(RowSource):
    """Many files of one table, as one source (see the module docstring).

    ``open_file(path)`` reads one file (a :class:`~aideploy.datafiles.CsvRows` or
    :class:`~aideploy.datafiles.ParquetRows` with the run's column choices).
    """

    def __init__(self, root: Path, paths: list[Path], open_file: Callable[[Path], RowSource]) -> None:
        self.root = root
        self.path = root
        self.files: list[RowSource] = []
        for path in paths:
            source = open_file(path)
            if self.files:
                self._check_same(source)
            self.files.append(source)
        first = self.files[0]
        self.names, self.feature_names = first.names, first.feature_names
        self.has_labels, self.label_index, self.columns = first.has_labels, first.label_index, first.columns
        self.n_rows = sum(f.n_rows for f in self.files)

    def _check_same(self, source: RowSource) -> None:
        first = self.files[0]
        if source.feature_names is None or first.feature_names is None:
            same = source.n_features == first.n_features
        else:
            same = sorted(source.feature_names) == sorted(first.feature_names)
        if not same or source.has_labels != first.has_labels:
            raise ConfigError(f"{source.path} has other columns than {first.path} "
                              f"({', '.join((source.feature_names or [])[:8]) or f'{source.n_features} columns'})",
                              hint="every file of data.path must hold the same table: move the others out, or "
                              "narrow the glob")

    def relative(self, source: RowSource) -> Path:
        """``source``'s path below the set's root (what its predictions file is named after)."""
        try:
            return Path(source.path).relative_to(self.root)
        except ValueError:
            return Path(Path(source.path).name)

    def limit(self, rows: int | None) -> "FileSet":
        """The set cut to its first ``rows`` rows (``data.limit``): whole files, then part of one."""
        if rows is None or rows >= self.n_rows:
            return self
        kept, left = [], rows
        for source in self.files:
            if left <= 0:
                break
            kept.append(limited(source, left))
            left -= source.n_rows
        self.files = kept
        self.n_rows = rows
        return self

    def sample(self, rows: int) -> Any:
        return self.files[0].sample(rows)

    def chunks(self, size: int, start: int = 0, schema: Schema | None = None) -> Iterator[Chunk]:
        """The files' rows in order from ``start`` on; a chunk never spans two files."""
        for source in self.files:
            if start >= source.n_rows:
                start -= source.n_rows
                continue
            yield from source.chunks(size, start, schema)
            start = 0
