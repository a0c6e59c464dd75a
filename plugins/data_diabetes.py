"""``data=diabetes``: scikit-learn's diabetes data (442 samples, 10 features), a regression task."""

from aideploy import hookimpl
from aideploy.datasets import diabetes_split, packaged


@hookimpl
def aideploy_prepare_data(cfg):
    return packaged("diabetes", diabetes_split, cfg)
