"""Loading the data sets the built-in plugins offer."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from aideploy.errors import ConfigError

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def digits_split(test_size: float, seed: int):
    """scikit-learn's digits scaled to [0, 1], split with a fixed seed (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    return train_test_split(X / 16.0, y, test_size=test_size, random_state=seed, stratify=y)


def packaged(name: str, split, cfg):
    """A :class:`~aideploy.artifacts.Dataset` from a packaged data set's ``split(test_size, seed)``,
    its test part cut to ``cfg.limit`` samples when set."""
    from aideploy.artifacts import Dataset

    X_train, X_test, y_train, y_test = split(cfg.test_size, cfg.seed)
    if cfg.limit is not None:
        X_test, y_test = X_test[: cfg.limit], y_test[: cfg.limit]
    return Dataset(name, X_test, y_test, X_train, y_train)


def diabetes_split(test_size: float, seed: int):
    """scikit-learn's diabetes regression data (features already centred and scaled), split."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    return train_test_split(X, y, test_size=test_size, random_state=seed)


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzipped or not, as an array of its stored shape."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"IDX file not found: {path}",
                          hint="give data.images=<...idx3-ubyte[.gz]> and data.labels=<...idx1-ubyte[.gz]>")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read IDX file {path}: {exc}", hint="is it a (gzipped) IDX file?") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ConfigError(f"{path} is not an IDX file (bad magic number)",
                          hint="MNIST files start with 0x00000803 (images) or 0x00000801 (labels)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ConfigError(f"{path} is truncated or padded: header says {shape} "
                          f"({expected} bytes) but the file has {len(raw) - header}",
                          hint="download the file again")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as an IDX file, gzipped if the name ends in .gz."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())
