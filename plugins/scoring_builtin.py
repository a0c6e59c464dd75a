"""``scoring=builtin``: aideploy's own ``score.py`` (package ``aideploy_scoring``).

It serves every model kind in plain, and linear ones under the encrypted schemes, and checks
the deployment's key on every request. Beside it go the model's swagger files
(:mod:`aideploy.swagger`), which azmlinfsrv serves as ``/swagger.json``.
"""

from aideploy import hookimpl, service_env, swagger
from aideploy.artifacts import ScoringCode
from aideploy.staging import ENTRY_SCRIPT, stage_source

PLUGIN_NAME = "builtin_scoring"
# What score.py itself imports; the model kind and the scheme add theirs.
RUNTIME = ["numpy>=1.24", "threadpoolctl>=3", "azureml-inference-server-http>=1.3"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME if ctx.cfg.scoring.plugin == PLUGIN_NAME else None


@hookimpl
def aideploy_stage_scoring(ctx, model):
    source = ctx.output_dir / "deploy" / "source"
    stage_source(source)
    if model is not None:
        swagger.write(source, model)  # the app root's swagger files: azmlinfsrv serves them as /swagger.json
    return ScoringCode(source, ENTRY_SCRIPT, builtin=True, settings=service_env.from_config(ctx.cfg))
