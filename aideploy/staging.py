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


def copy_source(src: Path, dest: Path) -> None:
    """Copy a source directory to ``dest``, replacing what an earlier run left there."""
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".git"))


def stage_source(dest: Path) -> Path:
    """Copy the scoring package to ``dest``; returns the entry script's path inside it."""
    copy_source(scoring_package_dir(), dest / "aideploy_scoring")
    return dest / ENTRY_SCRIPT


def stage_model(model, dest: Path) -> Path:
    """``AZUREML_MODEL_DIR`` as Azure makes it for one model: ``<root>/<name>/<version>/``, holding
    the registered version's files (the model file or directory and its kind record)."""
    folder = dest / model.name / str(model.version)
    copy_source(model.path, folder)
    return folder
