"""``model=mlflow``: an MLflow model directory (``MLmodel``), served as a pyfunc.

Azure ML deploys MLflow models without a scoring script; aideploy serves them through its
own ``score.py`` so the local rehearsal, the plain protocol and the checks are the same for
every kind. The model's signature checks requests. A linear scikit-learn flavor can also be
served encrypted.
"""

from aideploy import hookimpl
from aideploy.registry import model_path, register_model

PLUGIN_NAME = "mlflow_model"
# skops: MLflow 3 saves scikit-learn models in its format by default.
RUNTIME = ["mlflow-skinny>=2.12", "pandas>=2", "skops>=0.10"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME if ctx.cfg.model.plugin == PLUGIN_NAME else None


@hookimpl
def aideploy_prepare_model(cfg, ctx):
    path = model_path(cfg, "an MLflow model directory (the one holding MLmodel)", directory=True)
    return register_model(ctx, cfg.name, path, "mlflow", tags={"source": str(path)})
