"""``environment=conda``: the spec as a conda yml, and, for the local target, an isolated
environment built from that spec alone with uv and cached per spec (``aideploy.uvenv``).

That is Azure's image build rehearsed: the local service runs in it, so a package the
scoring code needs but the spec misses fails here, naming the module. ``encryption=fast``'s
kernels are compiled for it here too (``aideploy.kernels``), once per machine.
"""

from pathlib import Path

from aideploy import hookimpl
from aideploy import kernels, uvenv
from aideploy.envspec import write_spec
from aideploy.targets import capabilities

BUILD_LOG = "uv-build.log"


def _journal_add(ctx):
    """Journal a build's temp dir, so a run killed mid-build leaves nothing for long."""
    journal = ctx.resources.journal
    if journal is None:
        return None

    def add(path: Path):
        key = journal.add({"what": f"environment being built at {path}", "kind": "path", "path": str(path)})
        return lambda: journal.remove(key)

    return add


@hookimpl
def aideploy_build_environment(cfg, ctx, requirements):
    spec = write_spec(cfg, ctx, requirements)
    runs_here = capabilities(ctx).runs_here
    if ctx.cfg.dry_run or not runs_here:
        # an Azure target's kernels are made where it runs (its image, or init()): a plan says where, and
        # builds nothing; a local plan builds nothing either
        spec.kernels = None if runs_here else kernels.for_environment(ctx, None)
        return spec  # an Azure target builds its own image from the same spec
    root = uvenv.envs_dir(cfg.envs_dir, ctx.cfg.home)
    existed = (root / uvenv.spec_hash(spec.python, spec.pip) / uvenv.STAMP).exists()
    env = uvenv.ensure(spec.python, spec.pip, root, ctx.output_dir / BUILD_LOG, _journal_add(ctx))
    spec.python_exe = uvenv.python_of(env)
    spec.built = "reused" if existed else "built"
    spec.kernels = kernels.for_environment(ctx, spec.python_exe)  # with the environment: no deploy waits for them
    return spec
