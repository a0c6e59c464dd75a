"""``data=digits``: scikit-learn's 8x8 digits, scaled to [0, 1], test split."""

from aideploy import hookimpl
from aideploy.datasets import digits_split, packaged


@hookimpl
def aideploy_prepare_data(cfg):
    return packaged("digits", digits_split, cfg)
