"""``environment=current``: serve from aideploy's own interpreter, checked against the spec.

The fast edit-run loop: nothing is built, so a change to the scoring code is served at once.
It cannot prove the spec complete (this interpreter has everything aideploy needs); use
``environment=conda`` (the default) before deploying to Azure.
"""

from aideploy import hookimpl, kernels
from aideploy.envspec import write_spec


@hookimpl
def aideploy_build_environment(cfg, ctx, requirements):
    spec = write_spec(cfg, ctx, requirements)
    if not ctx.cfg.dry_run:
        spec.kernels = kernels.for_environment(ctx, None)  # for this interpreter, the one the service runs on
    return spec
