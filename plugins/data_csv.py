"""``data=csv``: samples from a CSV file, one per row, read in chunks; labels optional.

The columns are chosen by name (with ``header: true``) or 0-based position:
``data.label_column`` (null: no labels) and ``data.feature_columns`` (null: every other
column). A path ending in ``.parquet`` is read as Parquet (:mod:`.data_parquet`).
"""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datafiles import CsvRows, ParquetRows, limited


@hookimpl
def aideploy_prepare_data(cfg):
    columns = list(cfg.feature_columns) if cfg.feature_columns else None
    if str(cfg.path).endswith((".parquet", ".pq")):
        rows = ParquetRows(cfg.path, cfg.label_column, columns)
    else:
        rows = CsvRows(cfg.path, cfg.label_column, columns, header=cfg.header, delimiter=cfg.delimiter)
    rows = limited(rows, cfg.limit)
    return Dataset(rows.path.name, rows=rows, feature_names=rows.feature_names)
