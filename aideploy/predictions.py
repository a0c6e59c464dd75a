"""predictions.csv (or .parquet): one row per input row, written as the answers arrive.

Columns: ``row`` (the input row's 0-based position), ``prediction``, then ``score_<class>``
(decision scores; decrypted ones for the encrypted schemes) and ``proba_<class>``
(probabilities) when the service returns them. Only whole chunks are written, in input
order, so the file always ends at a row boundary after an error; a file cut by a kill mid-line
loses that line on resume.

``predict.resume=true`` continues a file: the rows already in it are skipped and the rest are
appended. A CSV resumes after any stop, a kill included. A Parquet file is closed (its footer
written) after an error or Ctrl-C and resumes from there; a killed one cannot be read back.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from aideploy.errors import ConfigError
from aideploy_scoring.models import REGRESSION, output_columns

FORMATS = ("csv", "parquet")
# Answer fields of the plain protocol (aideploy_scoring.models), and what they become in Scores.
FIELDS = {"predictions": "predictions", "probabilities": "probabilities", "scores": "values"}


def read_answer(body: bytes) -> dict | None:
    """The protocol's fields in one plain answer, or None when it is in another format.

    A bare list is the predictions; a script that returned ``json.dumps(...)`` is read too
    (azmlinfsrv quotes its string again).
    """
    try:
        payload = json.loads(body)
        if isinstance(payload, str):
            payload = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(payload, list):
        return {"predictions": payload}
    if isinstance(payload, dict) and ("predictions" in payload or "scores" in payload):
        return {name: payload[name] for name in FIELDS if isinstance(payload.get(name), list)}
    return None


def as_numbers(labels: np.ndarray) -> np.ndarray | None:
    """``labels`` as float64 when every one of them is a number or reads as one ("1", "1.0"), else None."""
    labels = np.asarray(labels)
    if labels.dtype.kind in "biuf":
        return labels.astype(np.float64)
    try:
        return np.asarray([float(v) for v in labels.ravel()], dtype=np.float64).reshape(labels.shape)
    except (TypeError, ValueError):
        return None


def same_labels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise label equality by value: JSON and CSV turn labels into ints, floats or strings, so
    ``1.0`` equals ``1`` and ``"1"`` equals ``1`` when both sides read as numbers; other labels are
    compared as text."""
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype.kind == b.dtype.kind and a.dtype.kind not in "fO":
        return a == b
    x, y = as_numbers(a), as_numbers(b)
    if x is not None and y is not None:
        return x == y
    return a.astype(str) == b.astype(str)


def text_against_numbers(a: np.ndarray, b: np.ndarray) -> bool:
    """One side's labels are text that reads as numbers and the other's are numbers (compared as numbers)."""
    a, b = np.asarray(a), np.asarray(b)
    return (a.dtype.kind in "OUS") != (b.dtype.kind in "OUS") and as_numbers(a) is not None \
        and as_numbers(b) is not None


def labels_from_scores(classes: list | None, scores: np.ndarray) -> np.ndarray:
    """Labels from decision scores as a linear classifier's own ``predict`` chooses them."""
    if scores.shape[1] == 1:  # binary: the one score is the positive class's margin
        index = (scores[:, 0] > 0).astype(int)
    else:
        index = scores.argmax(axis=1)
    return np.asarray(classes)[index] if classes is not None else index


def service_predictions(task: str | None, classes: list | None, scores) -> np.ndarray | None:
    """The service's predictions: as it gave them, or chosen from its (decrypted) scores."""
    if scores.predictions is not None:
        return scores.predictions
    if scores.values is None:
        return None
    if task == REGRESSION:
        return scores.values[:, 0] if scores.values.shape[1] == 1 else scores.values
    return labels_from_scores(classes, scores.values)


def columns_of(scores, task: str | None, classes: list | None) -> dict[str, np.ndarray] | None:
    """The predictions file's columns (but ``row``) for one chunk's :class:`Scores`, or None
    when the answers hold no predictions aideploy can read."""
    predictions = service_predictions(task, classes, scores)
    if predictions is None:
        return None
    # an encrypted regressor's decrypted values are its predictions, not scores beside them
    values = None if task == REGRESSION and scores.predictions is None else scores.values
    return output_columns(predictions, classes, values, scores.probabilities)


@dataclass
class Predictions:
    """The predictions file of a run: where it is and how many rows it holds so far."""

    path: Path
    format: str
    rows: int = 0
    columns: list[str] = field(default_factory=list)

    def chunks(self, size: int) -> Iterator[Any]:
        """The file's rows as pandas frames of at most ``size`` rows, in order."""
        if self.format == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(self.path).iter_batches(batch_size=size):
                yield batch.to_pandas()
        else:
            import pandas as pd

            yield from pd.read_csv(self.path, chunksize=size)

    def summary(self) -> dict[str, Any]:
        return {"predictions": str(self.path), "rows": self.rows}


@dataclass
class PredictionFiles(Predictions):
    """Predictions in one file per input file (``predict.engine=ray``): ``path`` is their folder,
    ``parts`` the files in input order, read back as one."""

    parts: list[Predictions] = field(default_factory=list)

    def chunks(self, size: int) -> Iterator[Any]:
        for part in self.parts:
            yield from part.chunks(size)

    def summary(self) -> dict[str, Any]:
        return {"predictions": str(self.path), "files": len(self.parts), "rows": self.rows}


def _csv_rows(path: Path) -> tuple[list[str], int] | None:
    """The header and the count of whole rows of a CSV; a last line cut short is dropped. None for a
    file cut before the end of its header line (a kill as it began): it holds no row."""
    with open(path, "rb+") as fh:
        header = fh.readline()
        if not header.endswith(b"\n"):
            return None
        rows, end = 0, fh.tell()
        for line in fh:
            if not line.endswith(b"\n"):
                break
            rows += 1
            end += len(line)
        if end != fh.seek(0, os.SEEK_END):
            fh.truncate(end)  # a line cut by a kill mid-write is written again
    return header.decode().strip().split(","), rows


class PredictionsWriter:
    """Appends chunks of predictions to ``path`` in input order; see the module docstring."""

    def __init__(self, path: Path, fmt: str, resume: bool = False) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"predict.output_format={fmt!r} is not one of {', '.join(FORMATS)}",
                              hint="use predict.output_format=csv or parquet")
        self.info = Predictions(Path(path), fmt)
        self._writer = None
        self._partial = self.info.path.with_name(self.info.path.name + ".partial")
        self.resumed = 0
        if resume and self.info.path.exists():
            self._resume()
        elif self.info.path.exists():
            self.info.path.unlink()

    @property
    def rows(self) -> int:
        return self.info.rows

    def _resume(self) -> None:
        path = self.info.path
        if self.info.format == "csv":
            found = _csv_rows(path)
            if found is None:
                path.unlink()
                return
            self.info.columns, self.info.rows = found
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                old = pq.ParquetFile(path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise ConfigError(f"{path} cannot be resumed: {exc}",
                                  hint="a killed Parquet file has no footer; start over without predict.resume, "
                                  "or predict to CSV (it resumes after a kill)") from None
            self._writer = pq.ParquetWriter(self._partial, old.schema_arrow)
            for batch in old.iter_batches():
                self._writer.write_batch(batch)
            self.info.columns, self.info.rows = list(old.schema_arrow.names), int(old.metadata.num_rows)
        self.resumed = self.info.rows

    def write(self, columns: dict[str, np.ndarray]) -> None:
        """Append the next rows (their ``row`` numbers follow the rows already written)."""
        import pandas as pd

        n = len(next(iter(columns.values())))
        frame = pd.DataFrame({"row": np.arange(self.info.rows, self.info.rows + n), **columns})
        names = [str(c) for c in frame.columns]
        if self.info.columns and names != self.info.columns:
            raise ConfigError(f"{self.info.path} has columns {self.info.columns}, these answers {names}",
                              hint="resume a file only against the same service and scheme, or start over")
        if self.info.format == "csv":
            header = not self.info.path.exists()
            frame.to_csv(self.info.path, mode="a", header=header, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._partial, table.schema)
            self._writer.write_table(table)
        self.info.columns = names
        self.info.rows += n

    def close(self) -> Predictions:
        """Finish the file (a Parquet footer; the rows so far are kept whatever stopped the run)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
            os.replace(self._partial, self.info.path)
        return self.info
