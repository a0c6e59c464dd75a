"""The model kinds the service can serve, and the one small contract they share.

Each kind is a module beside this one, ``model_<kind>.py``, with a ``load(path)`` that returns
a :class:`ModelAdapter`. The kind is read from data, not guessed from code paths: aideploy's
registry writes ``aideploy-model.json`` (``{"kind": ..., "path": ...}``) next to every model
version, and a model directory without it (one registered by other tools) is recognised by
its files: an ``MLmodel`` file is MLflow, ``*.onnx`` is ONNX, ``*.pkl``/``*.joblib`` is
scikit-learn.

The plain protocol every kind answers: rows in any of :mod:`.schema`'s wire forms (positional
``{"data": [[x1, ..., xn], ...]}``, or named columns) -> ``{"predictions": [...]}`` plus
``"probabilities"`` where the model has class probabilities, else ``"scores"`` where it has a
decision function (the probabilities say what the scores would, and each costs a pass of the
model). Each kind says what it takes (:meth:`ModelAdapter.input_schema`); the
version's stored schema (``aideploy-schema.json``, written at the model stage) refines it.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aideploy_scoring.schema import InputError, Schema

META_FILE = "aideploy-model.json"
KINDS = {
    "sklearn": "aideploy_scoring.model_sklearn",
    "onnx": "aideploy_scoring.model_onnx",
    "mlflow": "aideploy_scoring.model_mlflow",
}
"""Model kind -> the module that loads it."""

SKLEARN_SUFFIXES = (".pkl", ".joblib")
CLASSIFICATION = "classification"
REGRESSION = "regression"


class ModelLoadError(RuntimeError):
    """The model files cannot be loaded as the kind they claim (or any kind)."""


class ModelInputError(InputError):
    """A request's samples do not fit the model; the service answers 400 with this message."""


class NotLinear(ValueError):
    """The model is not one affine map, so encrypted schemes cannot serve it; says which part."""


@dataclass
class Prediction:
    """What a model says about a batch of samples, as numpy arrays in sample order."""

    predictions: np.ndarray
    probabilities: np.ndarray | None = None  # (n_samples, n_classes), columns in ``classes`` order
    scores: np.ndarray | None = None  # decision function, (n_samples, n_outputs)

    def to_json(self) -> dict[str, Any]:
        answer: dict[str, Any] = {"predictions": self.predictions.tolist()}
        if self.probabilities is not None:
            answer["probabilities"] = self.probabilities.tolist()
        if self.scores is not None:
            answer["scores"] = self.scores.tolist()
        return answer


class ModelAdapter:
    """One loaded model, whatever its kind. Subclasses set the attributes and ``_predict``, and end
    their ``__init__`` with ``self.use_schema(None)`` (what the model itself records).

    Attributes:
        kind: the key in :data:`KINDS`.
        task: ``"classification"``, ``"regression"``, or None when the model does not say.
        n_features: the number of features a sample must have, or None if the model does not say.
        classes: class labels in the order of ``probabilities`` and ``scores`` columns, or None.
        feature_names: names of the features, where the model records them.
        summary: a short description of the model for logs and errors.
        schema: what the model takes (:class:`~.schema.Schema`): the version's stored one, else
            :meth:`input_schema`; None when nothing says (rows are then passed on as numbers).
    """

    kind = ""
    task: str | None = None
    n_features: int | None = None
    classes: list | None = None
    feature_names: list[str] | None = None
    summary = ""
    schema: Schema | None = None

    def input_schema(self) -> Schema | None:
        """What the model itself records of its input; kinds that know more override this."""
        if self.n_features is None:
            return None
        return Schema.positional(self.n_features, self.feature_names)

    def use_schema(self, schema: Schema | None) -> None:
        """Take ``schema`` (the version's stored one), else what the model itself says."""
        self.schema = schema or self.input_schema()
        if self.schema is not None:
            self.n_features = self.schema.n_features
            self.feature_names = self.schema.names if self.schema.named else self.feature_names

    def check(self, X: Any) -> Any:
        """``X`` (an array, or a DataFrame with named columns) as the model takes it, or
        :class:`ModelInputError` saying what it expects."""
        schema = self.schema
        if _is_frame(X):
            if schema is not None and schema.named:
                return schema.conform(X)
            X = X.to_numpy(dtype=np.float64) if schema is None or list(X.columns) != schema.names else \
                X[schema.names].to_numpy(dtype=np.float64)
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ModelInputError(f"'data' must be a non-empty list of samples, each a list of numbers, "
                                  f"got shape {list(X.shape)}")
        if self.n_features is not None and X.shape[1] != self.n_features:
            raise ModelInputError(f"each sample must have {self.n_features} features for this {self.summary}, "
                                  f"got {X.shape[1]}")
        if schema is not None and schema.named:  # numbers by position, for a model that takes a table
            import pandas as pd

            return schema.conform(pd.DataFrame(X, columns=schema.names))
        return X

    def predict(self, X: Any) -> Prediction:
        """Predict a batch (an array or a DataFrame); :class:`ModelInputError` for samples it refuses."""
        return self._predict(self.check(X))

    def predict_rows(self, columns: list[str] | None, rows: list) -> Prediction:
        """Predict rows as they came over the wire (:func:`.schema.rows_of`): by ``columns`` name, or
        by position when None. Checked against the schema; :class:`InputError` names the bad cell."""
        if self.schema is None:
            if columns is not None:
                raise ModelInputError("this model records no column names: send rows by position ({\"data\": ...})")
            try:
                X = np.asarray(rows, dtype=np.float64)
            except (TypeError, ValueError):
                raise ModelInputError("'data' must be a list of samples, each a list of numbers") from None
            return self.predict(X)
        return self._predict(self.schema.table(columns, rows))

    def _predict(self, X: Any) -> Prediction:
        """Predict what :meth:`check` returned: a conformed DataFrame or a 2-D array."""
        raise NotImplementedError

    def decision_scores(self, X: Any) -> np.ndarray | None:
        """The decision function, (n_samples, n_outputs), where the model has one: what the
        encrypted schemes answer, to compare them with. None otherwise."""
        return None

    def encrypted_parts(self) -> tuple[Any | None, Any | None]:
        """``(client part, served estimator)`` for the encrypted schemes (:func:`.linearize.split`):
        preprocessing the client runs on its rows, and what is computed on ciphertexts; ``(None,
        None)`` for a kind with no estimator to fold."""
        return None, None

    def linear(self) -> tuple[np.ndarray, np.ndarray]:
        """The served part of the model as one affine map ``(W, b)``: W is (n_outputs, n_features), b
        is (n_outputs,), over the client part's outputs where there is one.

        Its outputs are the decision scores (classifiers) or the prediction (regressors).
        Raises :class:`NotLinear` naming what is not affine.
        """
        _, served = self.encrypted_parts()
        if served is None:
            raise NotLinear(f"a {self.kind} model is served in plain only")
        from aideploy_scoring.linearize import fold

        return fold(served)


def _class_names(classes: list | None, width: int) -> list[str]:
    if classes is not None and len(classes) == width:
        return [str(c) for c in classes]
    if classes is not None and width == 1 and len(classes) == 2:  # binary margin: the positive class
        return [str(classes[1])]
    return [str(i) for i in range(width)]


def output_columns(predictions: Any, classes: list | None, scores: np.ndarray | None = None,
                   probabilities: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """A predictions file's columns (but ``row``): ``prediction`` (``prediction_<i>`` for a multi-output
    regressor), then ``score_<class>`` and ``proba_<class>`` where given. The client's predictions file
    and the batch scorer's output share them."""
    predictions = np.asarray(predictions)
    if predictions.ndim != 1:
        columns = {f"prediction_{i}": predictions[:, i] for i in range(predictions.shape[1])}
    else:
        columns = {"prediction": predictions}
    for prefix, values in (("score", scores), ("proba", probabilities)):
        if values is not None:
            for name, column in zip(_class_names(classes, values.shape[1]), values.T):
                columns[f"{prefix}_{name}"] = column
    return columns


def _is_frame(X: Any) -> bool:
    return hasattr(X, "columns") and hasattr(X, "iloc")


def infer_task(predictions: np.ndarray) -> str:
    """Classification when predictions are labels (ints, strings, bools), regression otherwise."""
    if predictions.dtype.kind in "iub" or predictions.dtype.kind in "OUS":
        return CLASSIFICATION
    return REGRESSION


def guess_kind(path: Path) -> str | None:
    """The kind a single file or directory looks like, from its name and files alone."""
    if path.is_dir():
        return "mlflow" if (path / "MLmodel").is_file() else None
    if path.suffix == ".onnx":
        return "onnx"
    return "sklearn" if path.suffix in SKLEARN_SUFFIXES else None


def detect(model_dir: str | os.PathLike) -> tuple[str, Path]:
    """``(kind, path)`` of the one model under ``model_dir`` (Azure may put it at any depth)."""
    root = Path(model_dir)
    metas = sorted(root.rglob(META_FILE))
    if len(metas) == 1:
        try:
            meta = json.loads(metas[0].read_text())
            kind, rel = meta["kind"], meta["path"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(f"{metas[0]} is not a valid model record: {exc}") from None
        if kind not in KINDS:
            raise ModelLoadError(f"{metas[0]} names an unknown model kind {kind!r}; known: {', '.join(KINDS)}")
        return kind, metas[0].parent / rel
    mlmodels = sorted(root.rglob("MLmodel"))
    if mlmodels:
        return _one("mlflow", [p.parent for p in mlmodels], root)
    onnx = sorted(p for p in root.rglob("*.onnx") if p.is_file())
    if onnx:
        return _one("onnx", onnx, root)
    pickles = sorted(p for p in root.rglob("*") if p.suffix in SKLEARN_SUFFIXES and p.is_file())
    if pickles:
        return _one("sklearn", pickles, root)
    raise ModelLoadError(f"no model under {root}: expected an MLmodel directory, an .onnx file or a "
                         f"{'/'.join(SKLEARN_SUFFIXES)} file")


def _one(kind: str, found: list[Path], root: Path) -> tuple[str, Path]:
    if len(found) != 1:
        raise ModelLoadError(f"expected one {kind} model under {root}, found {len(found)}: "
                             f"{[str(p.relative_to(root)) for p in found]}")
    return kind, found[0]


def load(path: str | os.PathLike, kind: str) -> ModelAdapter:
    """Load the model at ``path`` (a file or a directory) as ``kind``, with the schema the model
    itself records (:meth:`ModelAdapter.use_schema` replaces it with a version's stored one)."""
    if kind not in KINDS:
        raise ModelLoadError(f"unknown model kind {kind!r}; known: {', '.join(KINDS)}")
    return importlib.import_module(KINDS[kind]).load(Path(path))


def load_dir(model_dir: str | os.PathLike) -> ModelAdapter:
    """The model under ``model_dir`` (``AZUREML_MODEL_DIR``), loaded as its recorded kind, with the
    version's schema where it has one."""
    kind, path = detect(model_dir)
    adapter = load(path, kind)
    try:
        adapter.use_schema(Schema.load(path.parent))
    except ValueError as exc:
        raise ModelLoadError(f"{path.parent}: {exc}") from None
    return adapter
