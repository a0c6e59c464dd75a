"""``data=mnist_idx``: MNIST IDX files (seed 000's t10k files), pixels divided by 255; labels optional."""

from aideploy import hookimpl
from aideploy.artifacts import Dataset
from aideploy.datasets import read_idx
from aideploy.errors import ConfigError


@hookimpl
def aideploy_prepare_data(cfg):
    images = read_idx(cfg.images)
    labels = read_idx(cfg.labels) if cfg.labels else None
    if images.ndim < 2 or (labels is not None and (labels.ndim != 1 or len(images) != len(labels))):
        raise ConfigError(f"{cfg.images} holds {images.shape} but {cfg.labels} holds {labels.shape}",
                          hint="images and labels must be the same set (e.g. both t10k), or data.labels=null")
    X = images.reshape(len(images), -1).astype("float64") / 255.0
    y = labels.astype("int64") if labels is not None else None
    if cfg.limit is not None:
        X, y = X[: cfg.limit], (y[: cfg.limit] if y is not None else None)
    return Dataset("mnist_idx", X, y)
