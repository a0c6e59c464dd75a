"""``aideploy --help``: aideploy's own, not Hydra's (which is ``--hydra-help``)."""

from __future__ import annotations

from aideploy.errors import AideployError
from aideploy.manager import PluginRegistry

EXAMPLES = [
    ("an override", "aideploy data.limit=100 target.worker_count=2"),
    ("a sweep", "aideploy -m encryption=none,fast target.worker_count=1,2"),
    ("your model, encrypted", "aideploy model=sklearn_pickle model.path=model.pkl encryption=fast"),
    ("a private network", "aideploy network=vnet encryption=fast"),
    ("predict your rows", "aideploy mode=predict scoring_uri=http://host:port/score data=csv data.path=rows.csv"),
    ("a folder, on Ray", "aideploy mode=predict predict.engine=ray scoring_uri=... data=csv data.path=rows/"),
    ("a plan for Azure", "aideploy target=aci network=vnet network.location=japaneast dry_run=true"),
]


def default_options() -> dict[str, str]:
    """The option each group gets when none is picked, from the root config's defaults list."""
    from importlib.resources import files

    import yaml

    root = yaml.safe_load(files("aideploy_conf").joinpath("config.yaml").read_text())
    return {k: v for item in root.get("defaults", []) if isinstance(item, dict) for k, v in item.items()
            if "/" not in k and not k.startswith("override")}


def help_text(registry: PluginRegistry) -> str:
    """``aideploy --help``: what it does, the modes, every group's options, examples, where the docs are."""
    from aideploy.config import SCHEMAS, plugin_options
    from aideploy.stages import Mode

    broken = {name: error.cause for name, error in registry.broken.items()}
    try:
        added = plugin_options(registry)
    except AideployError as exc:
        added, broken["(config options)"] = {}, exc.cause
    defaults = default_options()
    lines = [
        "aideploy deploys a trained model as a scoring web service (the Azure ML inference server,",
        "locally or on Azure) and makes predictions against it, optionally with the client's input",
        "encrypted (Microsoft SEAL) so the service never sees it. Every choice is a config group",
        "picked on the command line; every stage is a plugin.",
        "",
        "usage: aideploy [-m] [group=option ...] [key=value ...]",
        "",
        "modes (mode=): " + ", ".join(m.value for m in Mode) + f" (default {Mode.run.value})",
        "",
        "config groups (group=option; * marks the default):",
    ]
    for group, options in SCHEMAS.items():
        names = [*options, *added.get(group, {})]
        shown = [f"{n}*" if defaults.get(group) == n else n for n in names]
        lines.append(f"  {group:<12} {' | '.join(shown)}")
    lines += ["", "examples:"]
    lines += [f"  {command:<78} # {what}" for what, command in EXAMPLES]
    lines += [
        "",
        "more: `aideploy --cfg job` prints the composed config; `aideploy-plugins` lists the plugins and",
        "the options each serves; `aideploy --hydra-help` shows Hydra's own flags.",
        "docs: README.md (quick start, groups, model kinds, sweeps), docs/plugins.md (writing a plugin).",
    ]
    if broken:
        lines += ["", "BROKEN plugins (runs refuse to start until they are fixed or uninstalled):"]
        lines += [f"  {name}: {cause}" for name, cause in broken.items()]
    return "\n".join(lines)
