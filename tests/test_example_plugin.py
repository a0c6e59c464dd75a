"""Third-party plugins end to end: the example package pip-installed into this environment,
the ``aideploy-plugins`` listing, and broken plugins refused with an error naming them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import AIDEPLOY, TESTS_DIR, results_of

EXAMPLE = Path(__file__).parents[1] / "examples" / "aideploy-example-plugin"
AIDEPLOY_PLUGINS = str(Path(AIDEPLOY).with_name("aideploy-plugins"))
PIP = [sys.executable, "-m", "pip"]


@pytest.fixture(scope="module")
def example_plugin(tmp_path_factory):
    """``pip install`` the example package (a copy, so its source tree stays clean) into a directory of
    this module's own, and the environment that puts it on ``sys.path``: the shared environment never
    holds it, so a test running beside this one (pytest-xdist) never sees it half installed."""
    root = tmp_path_factory.mktemp("example")
    src, site = root / EXAMPLE.name, root / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    proc = subprocess.run([*PIP, "install", "--no-deps", "--quiet", "--target", str(site), str(src)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return {"PYTHONPATH": os.pathsep.join([str(site), str(TESTS_DIR)])}


def plugins_listing(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([AIDEPLOY_PLUGINS, *args], capture_output=True, text=True, timeout=300, env=env)


def test_an_installed_package_adds_a_data_option(example_plugin, cli, tmp_path):
    from aideploy.datasets import digits_split

    _, X_test, _, y_test = digits_split(0.25, 0)
    np.savetxt(tmp_path / "digits.csv", np.column_stack([X_test[:30], y_test[:30]]), delimiter=",")
    proc = cli("data=loadtxt", f"data.path={tmp_path / 'digits.csv'}", "plugins=[aideploy_example.stage_log]",
               env=example_plugin)
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["status"] == "ok" and results["options"]["data"] == "loadtxt"
    assert results["n_samples"] == 30 and results["agreement"] == 1.0
    assert results["accuracy"] == results["plaintext_accuracy"] >= 0.9
    assert "data=loadtxt" in proc.stderr  # the progress line shows the dataset's name
    # the observer named in config saw every stage, teardown included
    stages = (proc.out / "stages.csv").read_text().splitlines()
    assert stages[0] == "stage,status,seconds"
    assert [line.split(",")[0] for line in stages[1:]] == [
        "data", "model", "scoring", "environment", "network", "deploy", "keys", "encrypt", "predict", "decrypt", "evaluate",
        "teardown"]


def test_the_added_option_is_typed(example_plugin, cli):
    proc = cli("data=loadtxt", "data.pth=x.csv", env=example_plugin)
    assert proc.returncode != 0
    assert "unknown config key 'data.pth'; did you mean data.path?" in proc.stderr


def test_aideploy_plugins_lists_plugins_origins_hooks_and_options(example_plugin):
    env = {**os.environ, **example_plugin}
    proc = plugins_listing("--json", "aideploy_example.stage_log", env=env)
    assert proc.returncode == 0, proc.stderr
    listed = {p["name"]: p for p in json.loads(proc.stdout)["plugins"]}
    assert listed["example_csv"] == {"name": "example_csv", "origin": "aideploy-example-plugin 0.1.0",
                                     "hooks": ["aideploy_config_options", "aideploy_prepare_data"],
                                     "options": ["data=loadtxt"]}
    assert listed["example_stage_log"]["origin"] == "config: plugins"
    assert listed["example_stage_log"]["hooks"] == ["aideploy_after_stage", "aideploy_on_stage_error"]
    assert listed["example_stage_log"]["options"] == []
    assert listed["digits"]["options"] == ["data=digits"] and listed["digits"]["origin"].startswith("aideploy ")
    assert listed["plain"]["options"] == ["encryption=none"]
    assert listed["sklearn_train"]["options"] == ["model=sklearn_digits"]
    assert listed["local"]["options"] == ["target=local"] and "aideploy_deploy" in listed["local"]["hooks"]
    text = plugins_listing(env=env)
    assert text.returncode == 0, text.stderr
    assert "example_csv  [aideploy-example-plugin 0.1.0]" in text.stdout and "options: data=loadtxt" in text.stdout


# ----------------------------------------------------------------------------- broken plugins


def installed_on_path(root: Path, name: str, source: str) -> dict:
    """A distribution ``name`` 1.0 with an ``aideploy`` entry point, laid out as pip installs one;
    returns the environment that puts it on ``sys.path``."""
    module = f"{name}_plugin"
    (root / f"{module}.py").write_text(source)
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[aideploy]\n{name} = {module}\n")
    return {"PYTHONPATH": f"{root}:{TESTS_DIR}"}


BROKEN = {
    "failing": ('raise ImportError("needs libfoo")\n',
                "plugin 'failing' (failing 1.0, failing_plugin) failed to import: ImportError: needs libfoo"),
    "typo": ("def aideploy_prepare_dta(cfg):\n    return None\n",
             "plugin 'typo' (typo 1.0) implements an unknown hook 'aideploy_prepare_dta'; "
             "did you mean 'aideploy_prepare_data'?"),
    "greedy": ("from aideploy.config import DigitsData\n"
               "def aideploy_config_options():\n    return {'data': {'digits': DigitsData}}\n",
               "plugin 'greedy' (greedy 1.0) claims option data=digits, already taken by aideploy (built-in)"),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_installed_plugin_is_refused_naming_it(name, cli, tmp_path):
    source, message = BROKEN[name]
    env = installed_on_path(tmp_path, name, source)
    proc = cli("data.limit=2", env=env)
    assert proc.returncode == 2
    assert f"error: {message}" in proc.stderr and "hint: " in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not proc.out.exists()  # refused before anything ran
    # The commands that say what is installed still work, and mark the plugin broken.
    listing = plugins_listing(env=cli.env(env))
    assert listing.returncode == 0 and "BROKEN" in listing.stdout and message in listing.stdout
    assert "local  [aideploy" in listing.stdout
    helped = subprocess.run([AIDEPLOY, "--help"], capture_output=True, text=True, timeout=120, env=cli.env(env))
    assert helped.returncode == 0 and "config groups" in helped.stdout and message in helped.stdout


def test_a_plugin_module_named_in_config_that_does_not_import(cli):
    proc = cli("plugins=[no_such_plugin_module_xyz]")
    assert proc.returncode == 2
    assert "plugin module 'no_such_plugin_module_xyz' named in config 'plugins' failed to import" in proc.stderr
    assert "hint: " in proc.stderr and "Traceback" not in proc.stderr
