"""Using aideploy from Python: compose a config as the command line would, and run it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from hydra import compose as hydra_compose
from hydra import initialize_config_module
from omegaconf import DictConfig, open_dict

from aideploy import runner
from aideploy.config import register_configs
from aideploy.manager import PluginRegistry

CONFIG_MODULE = "aideploy_conf"


def group_choices(hydra_cfg: Any) -> dict[str, str]:
    """The chosen option of each aideploy config group (Hydra's own groups left out)."""
    from aideploy.config import SCHEMAS

    chosen = {k: v for k, v in hydra_cfg.runtime.choices.items()
              if not k.startswith(("hydra/", "schema/")) and k != "aideploy_schema" and v is not None}
    order = list(SCHEMAS)  # the order a run uses the groups in
    return dict(sorted(chosen.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))


def compose(overrides: Iterable[str] = ()) -> tuple[DictConfig, dict[str, str]]:
    """The validated config for ``overrides`` (as on the command line) and the group choices."""
    register_configs(registry=PluginRegistry.load())
    return compose_registered(overrides)


def compose_registered(overrides: Iterable[str] = ()) -> tuple[DictConfig, dict[str, str]]:
    """:func:`compose`, with the plugins' options already in the ConfigStore."""
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=True)
    choices = group_choices(cfg.hydra)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def run(overrides: Iterable[str] = (), output_dir: str | Path = ".") -> dict[str, Any]:
    """Compose ``overrides`` and run; returns the results (also written to results.json)."""
    overrides = list(overrides)
    cfg, choices = compose(overrides)
    return runner.run(cfg, Path(output_dir), choices, given=runner.groups_given(overrides))
