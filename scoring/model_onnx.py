"""Model kind ``onnx``: an ``.onnx`` file served with onnxruntime.

The input name, element type and feature count come from the model itself: one input of
``[rows, features]`` is numbers by position; one ``[rows, 1]`` input per column (as skl2onnx
converts a pipeline over a mixed table) is a table, each column of its input's type. Classifiers as
skl2onnx writes them answer with a label output and a probabilities output, either a tensor
or (with ZipMap) one ``{class: probability}`` map per sample; both become ``probabilities``
columns in class order. A model with one output is a regressor (or any other single-output
model): its output is the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aideploy_scoring.models import (CLASSIFICATION, REGRESSION, ModelAdapter, ModelInputError, ModelLoadError,
                                     Prediction)
from aideploy_scoring.schema import BOOLEAN, INTEGER, NUMBER, STRING, Column, Schema

# ONNX tensor element types a JSON request can be turned into.
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
           "tensor(int32)": np.int32, "tensor(float16)": np.float16, "tensor(string)": object,
           "tensor(bool)": np.bool_}
# ... and as a table column's JSON type
_TYPES = {"tensor(float)": NUMBER, "tensor(double)": NUMBER, "tensor(float16)": NUMBER, "tensor(int64)": INTEGER,
          "tensor(int32)": INTEGER, "tensor(string)": STRING, "tensor(bool)": BOOLEAN}


def _class_labels(graph: Any) -> list | None:
    """Class labels as skl2onnx records them on the classifier or ZipMap node."""
    for node in graph.node:
        for attr in node.attribute:
            if attr.name.startswith("classlabels"):
                if attr.ints:
                    return [int(v) for v in attr.ints]
                if attr.strings:
                    return [v.decode() for v in attr.strings]
    return None


class OnnxModel(ModelAdapter):
    kind = "onnx"

    def __init__(self, path: Path) -> None:
        import onnx
        import onnxruntime as ort

        try:
            proto = onnx.load(str(path))
            self.session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnx's and onnxruntime's own errors say what is broken
            raise ModelLoadError(f"cannot load {path.name} as ONNX: {type(exc).__name__}: {exc}") from None
        self.inputs = self.session.get_inputs()
        for spec in self.inputs:
            if spec.type not in _DTYPES:
                raise ModelLoadError(f"{path.name}'s input {spec.name!r} is {spec.type}; "
                                     f"supported: {', '.join(_DTYPES)}")
        if len(self.inputs) > 1 and not all(len(i.shape) == 2 and i.shape[1] == 1 for i in self.inputs):
            raise ModelLoadError(f"{path.name} has {len(self.inputs)} inputs ({', '.join(i.name for i in self.inputs)}) "
                                 "that are not one column each; aideploy sends one feature matrix, or one input per "
                                 "column of a table")
        self.input = self.inputs[0]
        self.dtype = _DTYPES[self.input.type]
        shape = self.input.shape
        if len(self.inputs) > 1:  # a table: one [rows, 1] input per column, as skl2onnx writes mixed types
            self.n_features = len(self.inputs)
        else:
            self.n_features = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) else None
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.classes = _class_labels(proto.graph)
        label_like = self.session.get_outputs()[0].type in ("tensor(int64)", "tensor(string)", "tensor(int32)")
        self.task = CLASSIFICATION if (len(self.outputs) >= 2 and label_like) or self.classes else REGRESSION
        producer = f"{proto.producer_name} {proto.producer_version}".strip()
        self.summary = f"ONNX model ({producer or 'unknown producer'}, input {self.input.name} {self.input.type})"
        self.use_schema(None)

    def _probabilities(self, value: Any) -> np.ndarray:
        if isinstance(value, list):  # ZipMap: one {class: probability} per sample
            classes = self.classes or sorted(value[0])
            return np.array([[row[c] for c in classes] for row in value], dtype=np.float64)
        return np.asarray(value, dtype=np.float64)

    def input_schema(self) -> Schema | None:
        """One input per column (a table, each column of its input's type), else numbers by position."""
        if len(self.inputs) == 1:
            return super().input_schema()
        return Schema([Column(spec.name, _TYPES[spec.type]) for spec in self.inputs], named=True,
                      source=["ONNX inputs"])

    def _feeds(self, X: Any) -> dict[str, np.ndarray]:
        if len(self.inputs) == 1:
            return {self.input.name: np.asarray(X).astype(self.dtype)}
        return {spec.name: X[spec.name].to_numpy().astype(_DTYPES[spec.type]).reshape(-1, 1) for spec in self.inputs}

    def _predict(self, X: Any) -> Prediction:
        try:
            out = self.session.run(None, self._feeds(X))
        except Exception as exc:  # onnxruntime's input checks (shape, type)
            raise ModelInputError(f"the ONNX model refused the samples: {exc}") from None
        if self.task == CLASSIFICATION:
            probabilities = self._probabilities(out[1]) if len(out) > 1 else None
            return Prediction(np.asarray(out[0]).reshape(len(X)), probabilities)
        predictions = np.asarray(out[0])
        if predictions.ndim == 2 and predictions.shape[1] == 1:
            predictions = predictions[:, 0]
        return Prediction(predictions)


def load(path: Path) -> OnnxModel:
    if path.suffix != ".onnx":
        raise ModelLoadError(f"{path.name} is not an .onnx file")
    return OnnxModel(path)
