"""``data=parquet``: samples from a Parquet file, one per row, a record batch at a time; labels optional."""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datafiles import ParquetRows, limited


@hookimpl
def aideploy_prepare_data(cfg):
    columns = list(cfg.feature_columns) if cfg.feature_columns else None
    rows = limited(ParquetRows(cfg.path, cfg.label_column, columns), cfg.limit)
    return Dataset(rows.path.name, rows=rows, feature_names=rows.feature_names)
