"""The ``aideploy`` command: a Hydra app, so every Hydra flag and override works."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aideploy import runner
from aideploy.api import group_choices
from aideploy.config import register_configs
from aideploy.errors import AideployError, ConfigError, Interrupted
from aideploy.manager import PluginRegistry
from aideploy.validate import preflight

log = logging.getLogger("aideploy")

CONFIG_PATH = "pkg://aideploy_conf"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        runner.run(cfg, Path(hydra_cfg.runtime.output_dir), group_choices(hydra_cfg))
    except AideployError as exc:
        log.error("%s", exc.report())
        if multirun:  # let the launcher record this job as failed and go on with the others
            raise
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Interrupted):
        log.error("interrupted; everything was torn down")
        if multirun:
            raise
        sys.exit(130)


EXAMPLES = [
    ("an override", "aideploy data.limit=100 target.worker_count=2"),
    ("a sweep", "aideploy -m encryption=none,fast target.worker_count=1,2"),
    ("your model, encrypted", "aideploy model=sklearn_pickle model.path=model.pkl encryption=fast"),
    ("a private network", "aideploy network=vnet encryption=fast"),
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


def _split(argv: list[str]) -> tuple[list[str], list[str], Any]:
    """Hydra's flags and the overrides, wherever the flags stand (``home=x -m a=1,2`` works)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_intermixed_args(argv)
    flags = list(argv)
    for override in args.overrides:
        flags.remove(override)
    return flags, list(args.overrides), args


def main() -> None:
    """Entry point of the ``aideploy`` console script."""
    flags, overrides, args = _split(sys.argv[1:])
    if args.help:
        print(help_text(PluginRegistry.load(strict=False)))
        return
    try:
        if args.multirun and (args.cfg or args.info or args.run):
            raise ConfigError("-m (a sweep) cannot be combined with --cfg, --info or --run",
                              hint="drop -m to see one job's config; a sweep's jobs differ only by its overrides")
        # Installed plugins may add config options, which must exist before Hydra composes.
        register_configs(registry=PluginRegistry.load())
        if not (args.hydra_help or args.info or args.shell_completion or args.experimental_rerun):
            preflight(overrides, multirun=args.multirun)
    except AideployError as exc:
        print(exc.report(), file=sys.stderr)
        sys.exit(exc.exit_code)
    sys.argv = [sys.argv[0], *flags, *overrides]
    _app()


if __name__ == "__main__":
    main()
