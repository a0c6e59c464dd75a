"""The ``aideploy-plugins`` command: every registered plugin, where it comes from, the hooks it
implements and the config options (``group=option``) it serves.

An option is served by the plugin its ``plugin`` field names. Built-in options come from
``conf/<group>/*.yaml`` and options added by installed plugins (``aideploy_config_options``)
from the ConfigStore; each option is composed with its schema, so a ``plugin`` field left at
the schema's default is read too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aideploy.api import CONFIG_MODULE
from aideploy.config import SCHEMAS, register_configs
from aideploy.errors import AideployError
from aideploy.manager import PluginRegistry


def option_plugins() -> dict[str, str]:
    """``{"group=option": plugin name}`` for every option of every aideploy group.

    The ConfigStore must already hold the plugins' options (:func:`register_configs`). An option
    that does not compose maps to ``"? (<the error>)"``.
    """
    served: dict[str, str] = {}
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        for group in SCHEMAS:
            for option in loader.get_group_options(group):
                try:
                    cfg = compose(config_name=f"{group}/{option}")  # the option alone: cheaper than the root
                    node = cfg[group] if group in cfg else cfg
                    served[f"{group}={option}"] = str(OmegaConf.select(node, "plugin"))
                except (HydraException, OmegaConfBaseException) as exc:
                    served[f"{group}={option}"] = f"? ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return served


def describe(extra_modules: Sequence[str] = ()) -> dict[str, Any]:
    """The registered plugins (entry points, then ``extra_modules``) and the options of each."""
    registry = PluginRegistry.load(extra_modules, strict=False)
    broken = {name: {"error": error.cause, "hint": error.hint} for name, error in sorted(registry.broken.items())}
    try:
        register_configs(registry=registry)
    except AideployError as exc:  # two plugins claim one option: list what can be listed, and say so
        broken["(config options)"] = {"error": exc.cause, "hint": exc.hint}
    served = option_plugins()
    names = {info.name for info in registry.plugins()}
    return {
        "plugins": [{"name": info.name, "origin": info.origin, "hooks": list(info.hooks),
                     "options": sorted(opt for opt, plugin in served.items() if plugin == info.name)}
                    for info in registry.plugins()],
        # Options whose plugin is not registered: picking one fails, naming the plugins that could serve it.
        "unserved_options": {opt: plugin for opt, plugin in sorted(served.items())
                             if plugin not in names and plugin != "None"},  # None: an option with no plugin
        # Plugins left out because they are broken: aideploy refuses to run until they are fixed.
        "broken": broken,
    }


def render(described: dict[str, Any]) -> str:
    lines = [f"{len(described['plugins'])} plugins registered (entry-point group 'aideploy'):", ""]
    for plugin in described["plugins"]:
        lines.append(f"{plugin['name']}  [{plugin['origin']}]")
        lines.append(f"  hooks:   {', '.join(plugin['hooks']) or '(none)'}")
        lines.append(f"  options: {', '.join(plugin['options']) or '(none: observes, or serves every run)'}")
    if described["broken"]:
        lines += ["", "BROKEN plugins (runs refuse to start until they are fixed or uninstalled):"]
        for name, error in described["broken"].items():
            lines += [f"  {name}: {error['error']}", f"    hint: {error['hint']}"]
    if described["unserved_options"]:
        lines += ["", "options whose plugin is not registered:"]
        lines += [f"  {opt}  (plugin: {plugin})" for opt, plugin in described["unserved_options"].items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``aideploy-plugins`` console script."""
    parser = argparse.ArgumentParser(
        prog="aideploy-plugins",
        description="List aideploy's registered plugins: origin, hooks, and the config options each serves.")
    parser.add_argument("modules", nargs="*",
                        help="extra plugin modules to load, as in the config key plugins=[...]")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    args = parser.parse_args(argv)
    try:
        described = describe(args.modules)
    except AideployError as exc:
        print(exc.report(), file=sys.stderr)
        sys.exit(exc.exit_code)
    print(json.dumps(described, indent=2) if args.json else render(described))


if __name__ == "__main__":
    main()
