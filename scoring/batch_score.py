"""Entry script of an Azure ML batch deployment (``target=batch_endpoint``): ``init()`` and ``run(mini_batch)``.

The batch runtime calls ``init()`` once per worker process (it loads the model from
``AZUREML_MODEL_DIR``, any kind, with the version's schema: the same adapters the online
``score.py`` serves) and ``run()`` with a mini-batch of input file paths
(``target.mini_batch_size`` of them). Each file, CSV or Parquet, is read a chunk at a time in the
model's schema types (a table's columns by name, in any order, the ones the model does not take
left out; numbers by position otherwise) and predicted; ``run()`` returns one row per input row:
``file``, ``row`` (its 0-based position in the file), then the columns of the client's
predictions file (``prediction``, ``score_<class>``, ``proba_<class>``). With
``output_action=append_row`` the runtime appends them to ``target.output_file_name``.

A file that does not fit the model raises an error naming the file, its row and column; the
runtime counts it against ``target.error_threshold`` and retries it as ``target.retry`` says.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Iterator

# The package beside this file is shipped with it; make it importable wherever it runs.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aideploy_scoring import settings  # noqa: E402
from aideploy_scoring.models import ModelAdapter, load_dir, output_columns  # noqa: E402
from aideploy_scoring.schema import CSV_DTYPES, InputError  # noqa: E402

CHUNK_ROWS = 50_000  # rows read and predicted at a time: memory stays bounded whatever a file's size
PARQUET = (".parquet", ".pq")

model: ModelAdapter | None = None


def init() -> None:
    """Load the model once per worker process."""
    global model
    model_dir = settings.get("AZUREML_MODEL_DIR")
    if not model_dir:
        raise RuntimeError("AZUREML_MODEL_DIR is not set: the batch runtime sets it to the deployment's model")
    model = load_dir(model_dir)


def run(mini_batch: list[str]) -> Any:
    """Predict every row of every file of ``mini_batch``; one output row per input row (see the module docstring)."""
    import pandas as pd

    parts = [part for path in mini_batch for part in score_file(Path(path), model)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"file": [], "row": []})


def score_file(path: Path, adapter: ModelAdapter, chunk_rows: int = CHUNK_ROWS) -> Iterator[Any]:
    """``path``'s predictions, a chunk of rows at a time, as DataFrames of ``file``, ``row`` and the columns."""
    import numpy as np
    import pandas as pd

    for first, X in _chunks(path, adapter, chunk_rows):
        try:
            answer = adapter.predict(X)
        except InputError as exc:
            raise InputError(f"{path.name}: {exc}") from None
        columns = output_columns(answer.predictions, adapter.classes, answer.scores, answer.probabilities)
        rows = len(answer.predictions)
        yield pd.DataFrame({"file": [path.name] * rows, "row": np.arange(first, first + rows), **columns})


def _chunks(path: Path, adapter: ModelAdapter, chunk_rows: int) -> Iterator[tuple[int, Any]]:
    """``(first row, rows)`` of ``path`` as the model takes them: a conformed DataFrame for a table, else numbers."""
    import numpy as np

    schema = adapter.schema
    named = schema is not None and schema.named
    first = 0
    for block in _blocks(path, schema if named else None, chunk_rows):
        if named:
            try:
                X = schema.conform(block, extra="drop", first_row=first)
            except InputError as exc:
                raise InputError(f"{path.name}: {exc}") from None
        else:
            try:
                X = block.to_numpy(dtype=np.float64)
            except (TypeError, ValueError):
                raise InputError(f"{path.name}: from row {first}: this model takes numbers by position, and the "
                                 "file holds other values") from None
        yield first, X
        first += len(block)


def _blocks(path: Path, schema: Any, chunk_rows: int) -> Iterator[Any]:
    """The file's rows a chunk at a time, a table's columns in their schema types."""
    import pandas as pd

    if path.suffix.lower() in PARQUET:
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
            yield batch.to_pandas()
        return
    header = _has_header(path)
    options: dict[str, Any] = {"header": 0 if header else None, "low_memory": False, "encoding": "utf-8"}
    typed = {c.name: CSV_DTYPES[c.type] for c in schema.columns} if schema is not None else None
    first = 0
    try:
        for block in pd.read_csv(path, chunksize=chunk_rows, dtype=typed, **options):
            yield block
            first += len(block)
    except (ValueError, TypeError):  # a cell pandas cannot read as its column's type: name it
        if schema is None:
            raise
        skipped = range(1 if header else 0, first + (1 if header else 0))
        text = pd.read_csv(path, nrows=chunk_rows, skiprows=skipped, dtype=str, **options)
        found = schema.unreadable_cell(text[[c for c in text.columns if c in set(schema.names)]], first)
        if found is None:
            raise
        raise InputError(f"{path.name}: {found}", found.row) from None


def _has_header(path: Path) -> bool:
    """A first line of only numbers is data (as ``numpy.savetxt`` writes a file); anything else names the columns."""
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        cells = next(csv.reader(fh), [])
    try:
        [float(cell) for cell in cells]
    except ValueError:
        return True
    return False
