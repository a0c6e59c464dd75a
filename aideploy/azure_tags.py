"""What an Azure deployment says about itself: tags, description and properties, from the run.

Nothing here is invented or copied from the seeds: the tags name the registered model (name,
version, kind, task, feature count), its accuracy (or R²) on the run's labelled test data when
the run has it in memory, and the aideploy version; the description says the same in words.
No local path, host name or git state goes to Azure unless the user puts it in ``target.tags``
or ``target.properties`` (which are added as given, and win over the generated tags).
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

import numpy as np


def aideploy_version() -> str:
    try:
        return metadata.version("aideploy")
    except metadata.PackageNotFoundError:  # a source checkout that was never installed
        return "unknown"


def model_metric(model: Any, dataset: Any) -> tuple[str, float] | None:
    """``("test_accuracy" | "test_r2", value)`` of ``model`` on ``dataset``'s labelled rows in memory, else None.

    A file read a chunk at a time (``X_test`` None) is not read here: its metric is the run's
    evaluation, after the deploy.
    """
    if dataset is None or getattr(dataset, "X_test", None) is None or getattr(dataset, "y_test", None) is None:
        return None
    predicted = np.asarray(model.adapter.predict(dataset.X_test).predictions)
    truth = np.asarray(dataset.y_test)
    if model.task == "regression":
        spread = float(np.sum((truth - truth.mean()) ** 2))
        if spread == 0:
            return None
        return "test_r2", round(1.0 - float(np.sum((truth - predicted) ** 2)) / spread, 6)
    return "test_accuracy", round(float(np.mean(predicted == truth)), 6)


def generated_tags(model: Any, metric: tuple[str, float] | None) -> dict[str, str]:
    """The tags aideploy puts on what it creates in Azure (values are strings, as Azure's tags are)."""
    tags = {"aideploy_model": f"{model.name}:{model.version}", "model_kind": str(model.kind),
            "aideploy_version": aideploy_version()}
    if model.task:
        tags["model_task"] = str(model.task)
    if model.n_features:
        tags["model_features"] = str(model.n_features)
    if metric:
        tags[metric[0]] = f"{metric[1]:g}"
    return tags


def describe(cfg: Any, model: Any, dataset: Any) -> tuple[dict[str, str], str]:
    """``(tags, description)``: the generated tags, then ``target.tags`` (the user's, winning on a
    clash); ``target.description``, or one sentence from the model and the run."""
    metric = model_metric(model, dataset)
    tags = {**generated_tags(model, metric), **{str(k): str(v) for k, v in dict(cfg.tags).items()}}
    if cfg.description:
        return tags, str(cfg.description)
    what = f"{model.name} version {model.version} ({model.kind}" + (f", {model.task})" if model.task else ")")
    score = f"; {metric[0].replace('_', ' ')} {metric[1]:g} on the run's test data" if metric else ""
    return tags, f"{what} served by aideploy {aideploy_version()}{score}"


def properties(cfg: Any) -> dict[str, str]:
    """``target.properties`` as given: nothing else (azureml-core's own git properties are left out)."""
    return {str(k): str(v) for k, v in dict(cfg.get("properties") or {}).items()}
