"""``data=loadtxt``: test samples from a numeric text table (np.loadtxt), the label in one column.

aideploy has its own ``data=csv`` (chunked, labels optional); this example shows how a
third-party package adds an option to a config group.

Installed through the ``aideploy`` entry-point group as plugin ``example_csv``. It adds the
option to the ``data`` group (:func:`aideploy_config_options`) and serves that group's stage
(:func:`aideploy_prepare_data`) whenever ``data.plugin`` names it, which the option's schema
does by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.config import DataConfig
from aideploy.errors import ConfigError

PLUGIN_NAME = "example_csv"  # the entry-point name; used in the schema's default below


@dataclass
class CsvData(DataConfig):
    """Schema of ``data=loadtxt``: a typo'd key or a wrong type fails before any stage runs."""

    plugin: str = PLUGIN_NAME
    path: str = MISSING  # the CSV file (relative to the working directory)
    label_column: int = -1  # which column holds the integer label; the others are features
    delimiter: str = ","
    skip_rows: int = 0  # header lines to skip


@hookimpl
def aideploy_config_options():
    return {"data": {"loadtxt": CsvData}}


@hookimpl
def aideploy_prepare_data(cfg):
    path = Path(cfg.path)
    if not path.is_file():
        raise ConfigError(f"data.path={cfg.path!r}: no such CSV file",
                          hint="give the path of a CSV file with one sample per row, e.g. data.path=digits.csv")
    try:
        table = np.loadtxt(path, delimiter=cfg.delimiter, skiprows=cfg.skip_rows, ndmin=2, dtype=np.float64)
    except ValueError as exc:
        raise ConfigError(f"data.path={cfg.path!r}: not a numeric CSV table: {exc}",
                          hint="every row needs the same number of numeric columns; "
                          "set data.skip_rows=1 to skip a header line") from None
    labels = table[:, cfg.label_column].astype(np.int64)
    features = np.delete(table, cfg.label_column, axis=1)
    if cfg.limit is not None:
        features, labels = features[: cfg.limit], labels[: cfg.limit]
    return Dataset("loadtxt", features, labels)
