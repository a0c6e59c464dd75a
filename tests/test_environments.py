"""environment=conda builds the service's environment from the spec alone (uv), and caches it."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from conftest import results_of, session_processes
from aideploy import uvenv
from aideploy.envspec import pypi_requirement, translate
from aideploy.errors import ConfigError

BASE = ["numpy>=1.24", "joblib>=1.3", "azureml-inference-server-http>=1.3"]


def pip(*packages: str) -> str:
    return "environment.pip=[" + ",".join(f'"{p}"' for p in (*BASE, *packages)) + "]"


def one_error(proc, code: int, needle: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr.split("--- last lines of")[0]  # the server's own log may have one
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    hints = [line for line in proc.stderr.splitlines() if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1 and needle in errors[0], proc.stderr


def test_a_spec_without_scikit_learn_gets_it_from_the_model(cli):
    proc = cli(pip(), "data.limit=2")  # the model is a pickled LogisticRegression
    assert proc.returncode == 0, proc.stderr
    import sklearn

    assert f"scikit-learn=={sklearn.__version__}" in (proc.out / "environment.yml").read_text()


def test_a_module_the_spec_lacks_fails_at_deploy_naming_it(cli, tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "score.py").write_text("import aideploy_absent_module  # noqa: F401\n\n"
                                     "def init():\n    pass\n\n\ndef run(raw):\n    return []\n")
    before = session_processes()
    proc = cli("scoring=custom", f"scoring.source_dir={source}", "data.limit=2")
    one_error(proc, 1, "the scoring service cannot import 'aideploy_absent_module'")
    assert """'environment.extra_pip=["aideploy_absent_module"]'""" in proc.stderr.split("hint: ")[1]
    assert "No module named 'aideploy_absent_module'" in proc.stderr  # the server's log tail
    assert session_processes() - before == set()
    assert results_of(proc.out)["status"] == "failed"


def test_the_same_spec_is_reused_and_current_serves_from_this_interpreter(cli):
    first = cli("data.limit=5")
    assert first.returncode == 0, first.stderr
    again = cli("data.limit=5")
    assert again.returncode == 0, again.stderr
    assert "(reused)" in again.stderr and results_of(again.out)["stage_seconds"]["environment"] < 1.0
    current = cli("environment=current", "data.limit=5")
    assert current.returncode == 0 and "serves_from=this interpreter" in current.stderr
    assert results_of(current.out)["agreement"] == 1.0


def test_two_concurrent_runs_of_a_new_spec_build_it_once(cli, tmp_path):
    envs = tmp_path / "envs"
    argv = [cli.argv(pip("scikit-learn>=1.3", "six"), "data.limit=3")[0] for _ in range(2)]
    procs = [subprocess.Popen(a, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=cli.env({"AIDEPLOY_ENVS": str(envs)})) for a in argv]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outputs]
    assert sum("environment: building" in err for _, err in outputs) == 1
    built = [p for p in envs.iterdir() if not p.name.startswith(".")]
    assert len(built) == 1 and (built[0] / uvenv.STAMP).exists()
    assert not [p for p in envs.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("override,code,needle", [
    ("environment.python=3.7", 2, "environment.python=3.7 is not available on this machine"),
    (pip("scikit-learn", "no-such-package-aideploy-xyz"), 2, "'no-such-package-aideploy-xyz', which the package"),
])
def test_build_failures_are_one_line_and_a_hint(cli, tmp_path, override, code, needle):
    proc = cli(override, "data.limit=2", env={"AIDEPLOY_ENVS": str(tmp_path / "envs")})
    one_error(proc, code, needle)
    assert "deploy" not in results_of(proc.out)["stage_seconds"]


def test_a_build_without_network_says_so(cli, tmp_path):
    proc = cli(pip("scikit-learn", "django==4.2.1"), "data.limit=2",
               env={"AIDEPLOY_ENVS": str(tmp_path / "envs"), "UV_OFFLINE": "1",
                    "UV_CACHE_DIR": str(tmp_path / "empty-cache")})
    one_error(proc, 1, "the package index is unreachable")


def test_conda_packages_are_translated_or_refused():
    assert pypi_requirement("numpy=1.26") == "numpy==1.26.*"
    assert pypi_requirement("conda-forge::scikit-learn>=1.3") == "scikit-learn>=1.3"
    assert pypi_requirement("py-xgboost") == "xgboost" and pypi_requirement("python=3.11") is None
    with pytest.raises(ConfigError, match="cudatoolkit=11.8, mkl"):
        translate(["numpy", "cudatoolkit=11.8", "mkl"])


def test_gc_removes_environments_unused_for_days(tmp_path):
    for name, age_days in (("old", 40), ("fresh", 1)):
        env = tmp_path / name
        env.mkdir()
        (env / uvenv.STAMP).write_text("{}")
        (env / uvenv.USED).touch()
        then = time.time() - age_days * 86400
        os.utime(env / uvenv.USED, (then, then))
    assert uvenv.remove_unused(tmp_path, 30) == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["fresh"]
