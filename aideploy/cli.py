"""The ``aideploy`` command: a Hydra app, so every Hydra flag and override works."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from aideploy import runner
from aideploy.api import group_choices
from aideploy.config import register_configs
from aideploy.errors import AideployError, Interrupted
from aideploy.manager import PluginRegistry

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


def main() -> None:
    """Entry point of the ``aideploy`` console script."""
    try:
        # Installed plugins may add config options, which must exist before Hydra composes.
        register_configs(registry=PluginRegistry.load())
    except AideployError as exc:
        print(exc.report(), file=sys.stderr)
        sys.exit(exc.exit_code)
    _app()


if __name__ == "__main__":
    main()
