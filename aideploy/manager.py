"""Finding, loading and choosing plugins.

Built-in plugins are found exactly as third-party ones are: through the ``aideploy``
entry-point group. Modules named in config (``plugins=[my_pkg.my_plugin]``) are loaded after
them. Each run gets a fresh :class:`PluginRegistry`; nothing is global.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
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
        self.broken: dict[str, PluginError] = {}  # name -> why it was left out (``strict=False`` only)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, extra_modules: Iterable[str] = (), strict: bool = True) -> "PluginRegistry":
        """Load the entry-point plugins, then ``extra_modules``, and check every hook name.

        A plugin that fails to import or implements an unknown hook is an error; with
        ``strict=False`` (``--help``, ``aideploy-plugins``) it is left out and kept in
        :attr:`broken` instead, so those commands can still say what is installed and what is not.
        """
        registry = cls()
        for ep in sorted(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist
            origin = f"{dist.name} {dist.version}" if dist else "unknown distribution"
            try:
                plugin = ep.load()
            except Exception as exc:
                error = PluginError(
                    f"plugin {ep.name!r} ({origin}, {ep.value}) failed to import: {type(exc).__name__}: {exc}",
                    hint=f"fix or uninstall {dist.name if dist else 'the package'}; "
                    "aideploy does not run with a broken plugin",
                )
                registry._fail(ep.name, error, strict, exc)
                continue
            registry._register_checked(plugin, ep.name, origin, strict)
        if extra_modules and os.getcwd() not in sys.path:
            # As `python -m` does: a module in the current directory can be named in `plugins=`.
            sys.path.insert(0, os.getcwd())
        for module_name in extra_modules:
            try:
                plugin = importlib.import_module(module_name)
            except Exception as exc:
                error = PluginError(
                    f"plugin module {module_name!r} named in config 'plugins' failed to import: "
                    f"{type(exc).__name__}: {exc}",
                    hint="check the module path (modules in the current directory are found) and that its "
                    "package is installed in this environment",
                )
                registry._fail(module_name, error, strict, exc)
                continue
            registry._register_checked(plugin, getattr(plugin, "PLUGIN_NAME", module_name), "config: plugins", strict)
        return registry

    def _fail(self, name: str, error: PluginError, strict: bool, cause: BaseException | None = None) -> None:
        if strict:
            raise error from cause
        self.broken[name] = error

    def _register_checked(self, plugin: Any, name: str, origin: str, strict: bool) -> None:
        try:
            self.register(plugin, name, origin)
            self.check_plugin(name)
        except PluginError as exc:
            if name in self._origins:
                self.pm.unregister(name=name)
                del self._origins[name]
            self._fail(name, exc, strict)

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

    def check_plugin(self, name: str) -> None:
        """Fail on ``name``'s hook implementations that match no hook (usually a typo)."""
        plugin = self.pm.get_plugin(name)
        specs = [n for n in dir(hookspecs) if n.startswith(HOOK_PREFIX)]
        for caller in self.pm.get_hookcallers(plugin) or []:
            if caller.has_spec():
                continue
            close = difflib.get_close_matches(caller.name, specs, n=1, cutoff=0.6)
            raise PluginError(
                f"plugin {name!r} ({self._origins.get(name, '?')}) implements an unknown hook {caller.name!r}"
                + (f"; did you mean {close[0]!r}?" if close else ""),
                hint="rename the function to one of the hooks in aideploy.hookspecs (every hook starts with "
                "'aideploy_')")

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
