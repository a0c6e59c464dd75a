"""``environment=current``: serve from aideploy's own interpreter, checked against the spec.

The fast edit-run loop: nothing is built, so a change to the scoring code is served at once.
It cannot prove the spec complete (this interpreter has everything aideploy needs); use
``environment=conda`` (the default) before deploying to Azure.
"""

from aideploy import hookimpl
from aideploy.envspec import write_spec


@hookimpl
def aideploy_build_environment(cfg, ctx, requirements):
    return write_spec(cfg, ctx, requirements)
