"""``data=npy``: samples as a NumPy array (``.npy``, memory-mapped, or an array in a ``.npz``); labels optional."""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datafiles import NpyRows, limited


@hookimpl
def aideploy_prepare_data(cfg):
    rows = limited(NpyRows(cfg.path, cfg.labels, cfg.features_key, cfg.labels_key), cfg.limit)
    return Dataset(rows.path.name, rows=rows)
