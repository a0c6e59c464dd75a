"""Model kind ``sklearn``: any fitted scikit-learn estimator or Pipeline in a .pkl/.joblib file,
and models with scikit-learn's API from other libraries (XGBoost's and LightGBM's ``XGBClassifier``,
``LGBMRegressor``, ...)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aideploy_scoring.models import (CLASSIFICATION, REGRESSION, SKLEARN_SUFFIXES, ModelAdapter, ModelInputError,
                                     ModelLoadError, Prediction)
from aideploy_scoring.schema import Schema


def task_of(estimator: Any) -> str | None:
    """What scikit-learn says the estimator does (Pipelines answer for their final step)."""
    from sklearn.base import is_classifier, is_regressor

    if is_classifier(estimator):
        return CLASSIFICATION
    if is_regressor(estimator):
        return REGRESSION
    return None


class SklearnModel(ModelAdapter):
    """A fitted estimator: ``predict``, plus ``predict_proba`` where it has it, else its
    ``decision_function`` where it has one."""

    kind = "sklearn"
    pickled_with: str | None = None  # the scikit-learn that wrote the pickle, when it is not the one loading it

    def __init__(self, estimator: Any) -> None:
        if not callable(getattr(estimator, "predict", None)):
            raise ModelLoadError(f"the file holds a {type(estimator).__name__}, which has no predict(): "
                                 "expected a fitted scikit-learn estimator or Pipeline")
        self.estimator = estimator
        self.task = task_of(estimator)
        n = getattr(estimator, "n_features_in_", None)
        self.n_features = int(n) if n is not None else None
        classes = getattr(estimator, "classes_", None)
        self.classes = list(classes) if classes is not None else None
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = [str(c) for c in names] if names is not None else None
        self.summary = self._describe_estimator(estimator)
        steps = getattr(estimator, "steps", None)
        self._split = type(estimator).__name__ == "Pipeline" and steps is not None and len(steps) > 1
        self._parts: tuple[Any | None, Any] | None = None
        self.use_schema(None)

    @staticmethod
    def _describe_estimator(estimator: Any) -> str:
        steps = getattr(estimator, "steps", None)
        if steps:
            return "Pipeline(" + ", ".join(type(step).__name__ for _, step in steps) + ")"
        return type(estimator).__name__

    def input_schema(self) -> Schema | None:
        """Column names from ``feature_names_in_``; types, levels and missing values from the
        fitted steps that see each column first (:mod:`.schema_sklearn`)."""
        from aideploy_scoring.schema_sklearn import input_schema

        return input_schema(self.estimator)

    def _predict(self, X: Any) -> Prediction:
        est = self.estimator
        try:
            if self._split:  # a Pipeline's preprocessing runs once for the three answers, as Pipeline.predict runs it
                X, est = est[:-1].transform(X), est[-1]
            predictions = np.asarray(est.predict(X))
            probabilities = np.asarray(est.predict_proba(X)) if hasattr(est, "predict_proba") else None
            scores = (np.asarray(est.decision_function(X), dtype=np.float64).reshape(len(X), -1)
                      if probabilities is None and hasattr(est, "decision_function") else None)
        except ValueError as exc:  # scikit-learn's own input validation
            raise ModelInputError(f"the model refused the samples: {exc}") from None
        return Prediction(predictions, probabilities, scores)

    def decision_scores(self, X: Any) -> np.ndarray | None:
        """The decision function; for an MLP (which has none) its logits, as the encrypted rounds compute them."""
        if hasattr(self.estimator, "decision_function"):
            return np.asarray(self.estimator.decision_function(self.check(X)), dtype=np.float64).reshape(len(X), -1)
        from aideploy_scoring.linearize import NotLinear, fold_mlp, is_mlp, mlp_logits

        client, served = self.encrypted_parts()
        if not is_mlp(served):
            return None
        try:
            layers, activation = fold_mlp(served)
        except NotLinear:
            return None
        data = self.check(X)
        if client is not None:
            data = client.transform(data)
            data = data.toarray() if hasattr(data, "toarray") else data
        return mlp_logits(layers, activation, data)

    def encrypted_parts(self) -> tuple[Any | None, Any]:
        if self._parts is None:
            from aideploy_scoring.linearize import split

            self._parts = split(self.estimator)
        return self._parts


def load(path: Path) -> SklearnModel:
    if path.suffix not in SKLEARN_SUFFIXES:
        raise ModelLoadError(f"{path.name} is not a {'/'.join(SKLEARN_SUFFIXES)} file")
    import warnings

    import joblib

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            estimator = joblib.load(path)
    except Exception as exc:  # a truncated file, another format, a missing class: all say the same
        raise ModelLoadError(f"cannot unpickle {path.name}: {type(exc).__name__}: {exc}") from None
    model = SklearnModel(estimator)
    for warning in caught:  # scikit-learn says which version wrote the pickle when it is not this one
        written = getattr(warning.message, "original_sklearn_version", None)
        if written:
            model.pickled_with = str(written)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return model
