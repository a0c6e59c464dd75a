"""``environment=conda``: write the scoring environment as a conda yml (like myenv.yml)."""

import yaml

from aideploy import hookimpl
from aideploy.artifacts import EnvironmentSpec

SPEC_FILE = "environment.yml"


def _unique(items):
    return list(dict.fromkeys(items))


@hookimpl
def aideploy_build_environment(cfg, ctx, requirements):
    pip = _unique([*cfg.pip, *requirements])
    azure_pip = _unique(cfg.azure_pip)
    spec = {
        "name": cfg.name,
        "channels": list(cfg.channels),
        "dependencies": [f"python={cfg.python}", "pip", {"pip": pip + azure_pip}],
    }
    path = ctx.output_dir / SPEC_FILE
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return EnvironmentSpec(cfg.name, path, str(cfg.python), pip, azure_pip)
