"""Laying out what a scoring service is deployed from, the same way for every target.

The local target serves these directories with ``azmlinfsrv``; the Azure targets upload the
same source directory, so what runs locally is exactly what Azure runs.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import aideploy_scoring

ENTRY_SCRIPT = "aideploy_scoring/score.py"
"""The entry script, relative to the staged source directory."""


def scoring_package_dir() -> Path:
    """Where the installed scoring package (``aideploy_scoring``) lives."""
    return Path(aideploy_scoring.__file__).parent


def stage_source(dest: Path) -> Path:
    """Copy the scoring package to ``dest``; returns the entry script's path inside it."""
    shutil.copytree(scoring_package_dir(), dest / "aideploy_scoring",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest / ENTRY_SCRIPT


def stage_model(model, dest: Path) -> Path:
    """``AZUREML_MODEL_DIR`` as Azure makes it for one model: ``<root>/<name>/<version>/``, holding
    the registered version's files (the model file or directory and its kind record)."""
    folder = dest / model.name / str(model.version)
    shutil.copytree(model.path, folder)
    return folder
