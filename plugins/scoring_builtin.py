"""``scoring=builtin``: aideploy's own ``score.py`` (package ``aideploy_scoring``).

It serves every model kind in plain, and linear ones under the encrypted schemes, and checks
the deployment's key on every request.
"""

from aideploy import hookimpl
from aideploy.artifacts import ScoringCode
from aideploy.staging import ENTRY_SCRIPT, stage_source

PLUGIN_NAME = "builtin_scoring"


@hookimpl
def aideploy_stage_scoring(ctx):
    source = ctx.output_dir / "deploy" / "source"
    stage_source(source)
    return ScoringCode(source, ENTRY_SCRIPT, builtin=True)
