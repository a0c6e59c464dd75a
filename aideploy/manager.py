"""Finding, loading and choosing plugins.

Built-in plugins are found exactly as third-party ones are: through the ``aideploy``
entry-point group. Modules named in config (``plugins=[my_pkg.my_plugin]``) are loaded after
them. Each run gets a fresh :class:`PluginRegistry`; nothing is global.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any, Iterable

import pluggy

from aideploy import hookspecs
from aideploy.errors import PluginError
from aideploy.markers import PROJECT_NAME

ENTRY_POINT_GROUP = "aideploy"
HOOK_PREFIX = "aideploy_"


class _PluginManager(pluggy.PluginManager):
    """Treats every ``aideploy_*`` callable as a hook implementation, marked or not.

    As in pytest, this lets :meth:`check_pending` turn a misspelt hook name into an error
    instead of a function that silently never runs.
    """

    def parse_hookimpl_opts(self, plugin: Any, name: str):
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith(HOOK_PREFIX) and callable(getattr(plugin, name, None)):
            return {}
        return opts


@dataclass(frozen=True)
class PluginInfo:
    name: str
    origin: str  # "aideploy 0.1.0 (built-in)", "my-pkg 1.2", "config: plugins"
    hooks: tuple[str, ...]


class PluginRegistry:
    """The plugins of one run and the rule for which of them serves a stage."""

    def __init__(self) -> None:
        self.pm = _PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self._origins: dict[str, str] = {}

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, extra_modules: Iterable[str] = ()) -> "PluginRegistry":
        """Load the entry-point plugins, then ``extra_modules``, and check every hook name."""
        registry = cls()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            origin = f"{dist.name} {dist.version}" if dist else "unknown distribution"
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(
                    f"plugin {ep.name!r} ({origin}, {ep.value}) failed to import: {type(exc).__name__}: {exc}",
                    hint=f"fix or uninstall {dist.name if dist else 'the package'}; "
                    "aideploy does not run with a broken plugin",
                ) from exc
            registry.register(plugin, ep.name, origin)
        for module_name in extra_modules:
            try:
                plugin = importlib.import_module(module_name)
            except Exception as exc:
                raise PluginError(
                    f"plugin module {module_name!r} named in config 'plugins' failed to import: "
                    f"{type(exc).__name__}: {exc}",
                    hint="check the module path and that its package is installed in this environment",
                ) from exc
            registry.register(plugin, getattr(plugin, "PLUGIN_NAME", module_name), "config: plugins")
        registry.check()
        return registry

    def register(self, plugin: Any, name: str, origin: str) -> None:
        """Register ``plugin`` under ``name``; a taken name is an error naming both owners."""
        if name in self._origins:
            raise PluginError(
                f"plugin name {name!r} from {origin} is already taken by {self._origins[name]}",
                hint="rename one of the plugins (its entry-point name or PLUGIN_NAME)",
            )
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"plugin {name!r} ({origin}) breaks a hook contract: {exc}",
                              hint="compare its hook signatures with aideploy.hookspecs") from exc
        self._origins[name] = origin

    def check(self) -> None:
        """Fail on hook implementations that match no hook (usually a typo)."""
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            name = self.pm.get_name(exc.plugin) if exc.plugin is not None else "?"
            raise PluginError(
                f"plugin {name!r} ({self._origins.get(name, '?')}) implements an unknown hook: {exc}",
                hint="check the spelling against aideploy.hookspecs (every hook starts with 'aideploy_')",
            ) from exc

    # ------------------------------------------------------------------ querying

    @property
    def hook(self):
        """Call a hook on every plugin: ``registry.hook.aideploy_before_stage(...)``."""
        return self.pm.hook

    def plugins(self) -> list[PluginInfo]:
        """Every registered plugin, with where it came from and the hooks it implements."""
        infos = []
        for name, origin in sorted(self._origins.items()):
            plugin = self.pm.get_plugin(name)
            hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(plugin) or []))
            infos.append(PluginInfo(name, origin, hooks))
        return infos

    def serving(self, hook: str) -> list[str]:
        """Names of the plugins that implement ``hook``."""
        return sorted(impl.plugin_name for impl in getattr(self.pm.hook, hook).get_hookimpls())

    def stage_caller(self, hook: str, plugin_name: str, config_key: str):
        """The hook caller restricted to ``plugin_name``, or a clear error listing the alternatives.

        ``config_key`` (e.g. ``target.plugin``) is named in the error so the user knows what to fix.
        """
        if plugin_name not in self._origins:
            raise PluginError(
                f"{config_key}={plugin_name!r}: no plugin of that name is registered",
                hint=f"plugins serving {hook}: {self._describe(self.serving(hook))}; "
                f"install the package that provides {plugin_name!r} or fix the name",
            )
        if plugin_name not in self.serving(hook):
            raise PluginError(
                f"{config_key}={plugin_name!r}: plugin {plugin_name!r} ({self._origins[plugin_name]}) "
                f"does not implement {hook}",
                hint=f"plugins serving {hook}: {self._describe(self.serving(hook))}",
            )
        chosen = self.pm.get_plugin(plugin_name)
        others = [p for p in self.pm.get_plugins() if p is not chosen]
        return self.pm.subset_hook_caller(hook, remove_plugins=others)

    def _describe(self, names: list[str]) -> str:
        return ", ".join(f"{n} ({self._origins[n]})" for n in names) or "none"
