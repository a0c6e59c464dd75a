"""Model kind ``mlflow``: an MLflow model directory (an ``MLmodel`` file), loaded as a pyfunc.

The model's signature, where it has one, checks every request (MLflow's own schema
enforcement) and gives the feature count and names. A model with a scikit-learn flavor also
answers ``probabilities``/``scores`` and, when it is linear, can be served encrypted: those
come from the estimator inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aideploy_scoring.models import ModelAdapter, ModelInputError, ModelLoadError, NotLinear, Prediction, infer_task
from aideploy_scoring.schema import BOOLEAN, INTEGER, NUMBER, STRING, Column, Schema

# MLflow's column types (mlflow.types.DataType) as JSON types
_SIGNATURE_TYPES = {"double": NUMBER, "float": NUMBER, "long": INTEGER, "integer": INTEGER, "boolean": BOOLEAN,
                    "string": STRING}


def _schema_error(exc: Exception) -> str:
    # MLflow repeats the whole input in its message; keep only the verdict.
    message = str(exc)
    return message.rsplit("Error: ", 1)[-1] if "Error: " in message else message.splitlines()[0]


class MlflowModel(ModelAdapter):
    kind = "mlflow"

    def __init__(self, path: Path) -> None:
        import mlflow.pyfunc

        try:
            self.pyfunc = mlflow.pyfunc.load_model(str(path))
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path.name} as an MLflow model: {type(exc).__name__}: "
                                 f"{_schema_error(exc)}") from None
        meta = self.pyfunc.metadata
        self.flavors = sorted(meta.flavors)
        self.raw = self._sklearn_estimator()
        schema = meta.get_input_schema()
        if schema is not None:
            if schema.is_tensor_spec():
                shape = schema.inputs[0].shape
                self.n_features = shape[-1] if len(schema.inputs) == 1 and len(shape) == 2 and shape[-1] > 0 else None
            elif schema.has_input_names():
                self.feature_names = list(schema.input_names())
                self.n_features = len(self.feature_names)
        if self.raw is not None:
            from aideploy_scoring.model_sklearn import SklearnModel

            inner = SklearnModel(self.raw)
            self.task, self.classes = inner.task, inner.classes
            self.n_features = self.n_features or inner.n_features
        else:
            output = meta.get_output_schema()
            if output is not None and output.is_tensor_spec():
                self.task = infer_task(np.empty(0, dtype=output.inputs[0].type))
        self.summary = f"MLflow model (flavors: {', '.join(self.flavors)})"
        self.use_schema(None)

    def _sklearn_estimator(self) -> Any:
        if "sklearn" not in self.flavors:
            return None
        try:
            return self.pyfunc.get_raw_model()
        except Exception:  # an older MLflow without get_raw_model: serve through the pyfunc only
            return None

    def input_schema(self) -> Schema | None:
        """The signature's columns with their types (a column that is not ``required`` may be
        missing); a tensor signature is numbers by position. Without a signature, what the
        scikit-learn flavor records, if it has one."""
        signature = self.pyfunc.metadata.get_input_schema()
        if signature is None or signature.is_tensor_spec() or not signature.has_input_names():
            if self.raw is not None:
                from aideploy_scoring.schema_sklearn import input_schema

                found = input_schema(self.raw)
                if found is not None:
                    return found
            return super().input_schema()
        columns = []
        for spec in signature.inputs:
            kind = _SIGNATURE_TYPES.get(str(getattr(spec.type, "name", spec.type)), STRING)
            columns.append(Column(spec.name, kind, nullable=not getattr(spec, "required", True)))
        return Schema(columns, named=True, source=["MLflow signature"])

    def _input(self, X: Any) -> Any:
        if hasattr(X, "columns"):  # a table, checked against the schema
            return X
        schema = self.pyfunc.metadata.get_input_schema()
        if schema is not None and schema.is_tensor_spec():
            return X.astype(schema.inputs[0].type, copy=False)
        return X

    def _predict(self, X: Any) -> Prediction:
        try:
            predictions = self.pyfunc.predict(self._input(X))
        except Exception as exc:  # MlflowException from schema enforcement, or the model's own refusal
            raise ModelInputError(f"the MLflow model refused the samples: {_schema_error(exc)}") from None
        predictions = np.asarray(predictions)
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        probabilities = scores = None
        if self.raw is not None:
            data = self._input(X)
            if hasattr(self.raw, "predict_proba"):
                probabilities = np.asarray(self.raw.predict_proba(data), dtype=np.float64)
            if probabilities is None and hasattr(self.raw, "decision_function"):
                scores = np.asarray(self.raw.decision_function(data), dtype=np.float64).reshape(len(X), -1)
        return Prediction(predictions, probabilities, scores)

    def decision_scores(self, X: Any) -> np.ndarray | None:
        if self.raw is None or not hasattr(self.raw, "decision_function"):
            return None
        data = self._input(self.check(X))
        return np.asarray(self.raw.decision_function(data), dtype=np.float64).reshape(len(X), -1)

    def encrypted_parts(self) -> tuple[Any | None, Any]:
        if self.raw is None:
            raise NotLinear(f"this MLflow model has no sklearn flavor (flavors: {', '.join(self.flavors)})")
        from aideploy_scoring.linearize import split

        return split(self.raw)


def load(path: Path) -> MlflowModel:
    if not (path / "MLmodel").is_file():
        raise ModelLoadError(f"{path} is not an MLflow model directory (it has no MLmodel file)")
    return MlflowModel(path)
