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
from aideploy.helptext import help_text
from aideploy.manager import PluginRegistry
from aideploy.validate import preflight

log = logging.getLogger("aideploy")

CONFIG_PATH = "pkg://aideploy_conf"


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="config")
def _app(cfg: DictConfig) -> None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        runner.run(cfg, Path(hydra_cfg.runtime.output_dir), group_choices(hydra_cfg),
                   given=runner.groups_given(hydra_cfg.overrides.task), sweep_job=multirun)
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
