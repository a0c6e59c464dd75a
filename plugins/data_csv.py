"""``data=csv``: samples from a CSV file, one per row, read in chunks; labels optional.

The columns are chosen by name (with ``header: true``) or 0-based position:
``data.label_column`` (null: no labels) and ``data.feature_columns`` (null: every other
column). A path ending in ``.parquet`` is read as Parquet (:mod:`.data_parquet`). A directory
or a glob is many files of one table (:mod:`aideploy.filesets`), each read by its suffix.
"""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datafiles import CsvRows, ParquetRows
from aideploy.filesets import PARQUET_SUFFIXES, open_rows


@hookimpl
def aideploy_prepare_data(cfg):
    columns = list(cfg.feature_columns) if cfg.feature_columns else None

    def open_file(path):
        if str(path).lower().endswith(PARQUET_SUFFIXES):
            return ParquetRows(path, cfg.label_column, columns)
        return CsvRows(path, cfg.label_column, columns, header=cfg.header, delimiter=cfg.delimiter)

    rows = open_rows(cfg, open_file)
    return Dataset(rows.path.name, rows=rows, feature_names=rows.feature_names)
