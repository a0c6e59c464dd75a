"""``data=parquet``: samples from a Parquet file, one per row, a record batch at a time; labels optional.

A directory or a glob is many Parquet files of one table (:mod:`aideploy.filesets`).
"""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datafiles import ParquetRows
from aideploy.filesets import PARQUET_SUFFIXES, open_rows


@hookimpl
def aideploy_prepare_data(cfg):
    columns = list(cfg.feature_columns) if cfg.feature_columns else None
    rows = open_rows(cfg, lambda path: ParquetRows(path, cfg.label_column, columns), PARQUET_SUFFIXES)
    return Dataset(rows.path.name, rows=rows, feature_names=rows.feature_names)
