"""Plugin loading and the rule that the config picks which plugin serves a stage."""

from __future__ import annotations

import types

import pytest

from aideploy import hookimpl
from aideploy.errors import PluginError
from aideploy.manager import PluginRegistry

BUILT_IN = {"digits", "mnist_idx", "sklearn_train", "sklearn_pickle", "conda", "public", "plain", "local",
            "metrics", "progress"}


def test_built_in_plugins_load_through_the_entry_point_group():
    registry = PluginRegistry.load()
    names = {info.name for info in registry.plugins()}
    assert BUILT_IN <= names
    origins = {info.name: info.origin for info in registry.plugins()}
    assert origins["local"].startswith("aideploy ")


def test_stage_caller_uses_only_the_chosen_plugin():
    registry = PluginRegistry.load()
    caller = registry.stage_caller("aideploy_configure_network", "public", "network.plugin")
    cfg = types.SimpleNamespace(host="127.0.0.9")
    assert caller(cfg=cfg, ctx=None).client_host == "127.0.0.9"


def test_unknown_plugin_lists_the_ones_serving_the_hook():
    registry = PluginRegistry.load()
    with pytest.raises(PluginError) as info:
        registry.stage_caller("aideploy_deploy", "kubernetes", "target.plugin")
    assert "target.plugin='kubernetes'" in str(info.value)
    assert "local (aideploy" in info.value.hint


def test_plugin_that_does_not_serve_the_stage_is_refused():
    registry = PluginRegistry.load()
    with pytest.raises(PluginError) as info:
        registry.stage_caller("aideploy_deploy", "digits", "target.plugin")
    assert "does not implement aideploy_deploy" in str(info.value)


def test_misspelt_hook_is_an_error_naming_the_plugin():
    plugin = types.ModuleType("typo_plugin")

    @hookimpl
    def aideploy_deplyo(cfg):  # noqa: unused
        return None

    plugin.aideploy_deplyo = aideploy_deplyo
    registry = PluginRegistry()
    registry.register(plugin, "typo", "test")
    with pytest.raises(PluginError) as info:
        registry.check_plugin("typo")
    assert "'typo'" in str(info.value) and "aideploy_deplyo" in str(info.value)
    assert "did you mean 'aideploy_deploy'?" in str(info.value)


def test_unmarked_misspelt_hook_is_caught_too():
    plugin = types.ModuleType("typo_plugin")
    plugin.aideploy_befor_stage = lambda stage: None
    registry = PluginRegistry()
    registry.register(plugin, "typo", "test")
    with pytest.raises(PluginError, match="aideploy_before_stage"):
        registry.check_plugin("typo")


def test_taken_name_names_both_owners():
    registry = PluginRegistry.load()
    with pytest.raises(PluginError) as info:
        registry.register(types.ModuleType("other"), "local", "my-pkg 1.0")
    assert "my-pkg 1.0" in str(info.value) and "aideploy" in str(info.value)


def test_wrong_hook_signature_is_refused():
    plugin = types.ModuleType("bad_args")

    @hookimpl
    def aideploy_deploy(cfg, nonsense):
        return None

    plugin.aideploy_deploy = aideploy_deploy
    with pytest.raises(PluginError) as info:
        PluginRegistry().register(plugin, "bad", "test")
    assert "nonsense" in str(info.value)


def test_config_module_that_fails_to_import_is_named():
    with pytest.raises(PluginError) as info:
        PluginRegistry.load(["no_such_module_xyz"])
    assert "no_such_module_xyz" in str(info.value)


def test_every_hook_is_documented():
    from aideploy import hookspecs

    hooks = [name for name in dir(hookspecs) if name.startswith("aideploy_")]
    assert len(hooks) >= 15
    for name in hooks:
        doc = getattr(hookspecs, name).__doc__ or ""
        assert len(doc.strip()) > 40, f"{name} needs a docstring saying when it runs and what it returns"


def test_a_plugin_can_add_a_config_option_and_serve_it(tmp_path):
    from dataclasses import dataclass

    from aideploy.config import plugin_options

    @dataclass
    class TsvData:
        plugin: str = "tsvdata"
        path: str = "data.tsv"
        limit: int | None = None

    plugin = types.ModuleType("tsvdata")
    plugin.aideploy_config_options = hookimpl(lambda: {"data": {"tsv": TsvData}})
    registry = PluginRegistry.load()
    registry.register(plugin, "tsvdata", "test")
    assert plugin_options(registry) == {"data": {"tsv": (TsvData, "tsvdata")}}


def test_an_option_already_taken_names_both_owners():
    from aideploy.config import DigitsData, plugin_options

    for name in ("first", "second"):
        plugin = types.ModuleType(name)
        plugin.aideploy_config_options = hookimpl(lambda: {"data": {"digits": DigitsData}})
        registry = PluginRegistry.load()
        registry.register(plugin, name, f"{name}-pkg 1.0")
        with pytest.raises(PluginError) as info:
            plugin_options(registry)
        assert "data=digits" in str(info.value) and "aideploy (built-in)" in str(info.value)
        assert f"{name}-pkg 1.0" in str(info.value)


def test_two_plugins_claiming_one_option():
    from dataclasses import dataclass

    from aideploy.config import plugin_options

    @dataclass
    class Thing:
        plugin: str = "x"

    registry = PluginRegistry.load()
    for name in ("alpha", "beta"):
        plugin = types.ModuleType(name)
        plugin.aideploy_config_options = hookimpl(lambda: {"target": {"thing": Thing}})
        registry.register(plugin, name, f"{name} 1.0")
    with pytest.raises(PluginError) as info:
        plugin_options(registry)
    assert "target=thing" in str(info.value) and "alpha" in str(info.value) and "beta" in str(info.value)


def test_a_plugin_module_that_fails_to_load_still_leaves_results(tmp_path):
    import json

    from aideploy import api

    with pytest.raises(PluginError):
        api.run([f"home={tmp_path / 'home'}", "plugins=[no_such_module_xyz]"], tmp_path / "out")
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["status"] == "failed" and "no_such_module_xyz" in results["error"]["message"]
