"""One declaration of the scoring service's settings (aideploy_scoring/settings.py): read through
it, checked by ``init()``, and forwarded by every target with the values the config gives them.

The Azure targets are checked on their plans (the SDKs' own serialised deployments, as in
tests/test_azure_targets.py); ``target=local`` on a live deployment's server process, in
tests/test_fastmlp_e2e.py (:func:`assert_settings_arrive` is shared).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_azure_targets import action, no_azure_env, no_network, run_plan  # noqa: F401  (fixtures)

from aideploy_scoring import settings

SCORING = Path(settings.__file__).parent
# What these overrides must make each target set in the service's environment.
OVERRIDES = ("encryption=fast", "encryption.max_queries_per_key=7", "encryption.max_samples_per_query=3",
             "encryption.round_ttl_seconds=42", "encryption.max_new_keys_per_hour=9", "encryption.x_bound=2",
             "encryption.max_error=0.002", "keystore=azure_blob", "keystore.container=plankeys")
ACCOUNT = "https://acct.blob.core.windows.net"
EXPECTED = {"AIDEPLOY_PREPARE_SCHEMES": "none,fast", "AIDEPLOY_MAX_QUERIES_PER_KEY": "7",
            "AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY": "3", "AIDEPLOY_MLP_TOKEN_TTL": "42.0",
            "AIDEPLOY_FAST_X_BOUND": "2.0", "AIDEPLOY_FAST_MAX_ERROR": "0.002",
            "AIDEPLOY_MAX_NEW_KEYS_PER_HOUR": "9", "AIDEPLOY_KEY_STORE": ACCOUNT,
            "AIDEPLOY_LIMITS_STORE": f"{ACCOUNT}/plankeys-limits"}


def assert_settings_arrive(variables: dict[str, str], expected: dict[str, str], not_in_config: set[str],
                           secrets: bool = False) -> None:
    """Every ``config`` setting of the declaration has its expected value in ``variables``, except
    those this target's config does not have (``not_in_config``); no secret is among them unless
    ``secrets`` (a local server process, which gets them from aideploy directly)."""
    configured = {name for name, s in settings.SETTINGS.items() if s.source == "config"}
    assert configured - not_in_config == set(expected), "a config setting this test does not know of"
    assert {name: variables.get(name) for name in expected} == expected
    if not secrets:
        assert not [name for name, s in settings.SETTINGS.items() if s.secret and name in variables]


# ------------------------------------------------------------------ one declaration


def test_every_setting_the_service_names_is_declared_and_read_through_the_declaration():
    named, readers = set(), []
    for path in SCORING.glob("*.py"):
        text = path.read_text()
        named |= set(re.findall(r'"((?:AIDEPLOY_[A-Z0-9_]+)|WORKER_COUNT|AZUREML_MODEL_DIR)"', text))
        if re.search(r"os\.environ(?!\.setdefault)|os\.getenv", text):
            readers.append(path.name)
    assert named - set(settings.SETTINGS) == set()
    # settings.py reads them; gunicorn_conf.py runs in gunicorn's master before the package can be
    # imported; the kernels' modules read their own cache and mode variables (declared too).
    assert sorted(readers) == ["fastkernels.py", "fastkernels_aot.py", "gunicorn_conf.py", "settings.py"]
    from aideploy_scoring import fastkernels_aot

    assert {fastkernels_aot.MODE_ENV, fastkernels_aot.CACHE_ENV} <= set(settings.SETTINGS)


def test_values_are_parsed_and_refused_by_name():
    env = {"AIDEPLOY_MAX_QUERIES_PER_KEY": "12", "AIDEPLOY_KEY_HOSTS": "a.example, b.example:8443",
           "AIDEPLOY_MLP_TOKEN_SECRET": "ab" * 16}
    assert settings.get("AIDEPLOY_MAX_QUERIES_PER_KEY", env) == 12
    assert settings.get("AIDEPLOY_KEY_HOSTS", env) == ["a.example", "b.example:8443"]
    assert settings.get("AIDEPLOY_MLP_TOKEN_SECRET", env) == b"\xab" * 16
    assert settings.get("AIDEPLOY_MAX_NEW_KEYS_PER_HOUR", env) == 100
    settings.check(env)
    for bad, words in [({"AIDEPLOY_MAX_QUERY_PER_KEY": "3"}, "did you mean AIDEPLOY_MAX_QUERIES_PER_KEY?"),
                       ({"AIDEPLOY_MAX_QUERIES_PER_KEY": "-1"}, "must be at least 0"),
                       ({"AIDEPLOY_MLP_TOKEN_TTL": "soon"}, "AIDEPLOY_MLP_TOKEN_TTL=soon is not valid"),
                       ({"AIDEPLOY_KEY_STORE": "ftp://x"}, "http(s) URL"),
                       ({"AIDEPLOY_LIMITS_STORE": "limits.sqlite"}, "absolute path"),
                       ({"AIDEPLOY_MLP_TOKEN_SECRET": "cafe" * 3}, "AIDEPLOY_MLP_TOKEN_SECRET=*** is not valid")]:
        with pytest.raises(settings.SettingsError) as refused:
            settings.check(bad)
        assert words in str(refused.value) and "\n" not in str(refused.value)
        assert "cafe" not in str(refused.value)  # a secret's value is never shown


# Runs score.py's init() as a worker does, in a fresh interpreter.
INIT = "import sys; sys.path.insert(0, sys.argv[1]); import score; score.init()"


@pytest.mark.parametrize("variable, value, words", [
    ("AIDEPLOY_SAS_RECHEK_SECONDS", "5", "unknown setting AIDEPLOY_SAS_RECHEK_SECONDS (did you mean "
                                         "AIDEPLOY_SAS_RECHECK_SECONDS?)"),
    ("AIDEPLOY_MAX_QUERIES_PER_KEY", "ten", "AIDEPLOY_MAX_QUERIES_PER_KEY=ten is not valid"),
])
def test_init_stops_on_an_unknown_or_malformed_setting_with_one_line(tmp_path, variable, value, words):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(settings.PREFIX)},  # aideploy's own
           "AZUREML_MODEL_DIR": str(tmp_path), variable: value}
    proc = subprocess.run([sys.executable, "-c", INIT, str(SCORING)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 3  # gunicorn's "worker failed to boot": the server stops
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(settings.INVALID) and words in lines[0], proc.stderr


def test_a_misspelt_setting_in_aideploys_environment_stops_a_local_deployment_with_one_line(cli):
    proc = cli("data.limit=5", "environment=current", env={"AIDEPLOY_SAS_RECHEK_SECONDS": "5"})
    assert proc.returncode == 1
    assert ("error: the scoring service's settings are invalid: unknown setting AIDEPLOY_SAS_RECHEK_SECONDS "
            "(did you mean AIDEPLOY_SAS_RECHECK_SECONDS?)") in proc.stderr
    assert "hint: " in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------ every target forwards them


@pytest.fixture
def account(monkeypatch):
    """The key store a plan names: a storage account given by its URL (no credential needed to plan)."""
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_URL", ACCOUNT)


def test_the_aci_plan_carries_every_setting_the_config_sets(tmp_path, account, no_azure_env, no_network):  # noqa: F811
    _, plan, _ = run_plan(tmp_path, "target=aci", *OVERRIDES)
    [create] = [a for a in plan["actions"] if a["action"] == "Model.deploy"]
    variables = create["request"]["body"]["environmentImageRequest"]["environment"]["environmentVariables"]
    # One container, no managed identity: the limits are counted in its own directory, with no account key.
    assert_settings_arrive(variables, {**EXPECTED, "AIDEPLOY_LIMITS_STORE": "server"},
                           not_in_config={"WORKER_COUNT", "AIDEPLOY_MAX_REQUEST_BYTES"})
    assert "AIDEPLOY_MLP_TOKEN_SECRET" not in json.dumps(plan) and "AIDEPLOY_KEY_VAULT_URL" not in variables


def test_the_managed_endpoint_plan_carries_every_setting_the_config_sets(tmp_path, account, no_azure_env,  # noqa: F811
                                                                         no_network):  # noqa: F811
    _, plan, _ = run_plan(tmp_path, "target=managed_endpoint", "target.worker_count=3", *OVERRIDES)
    variables = action(plan, "online_deployments.begin_create_or_update")["environment_variables"]
    assert_settings_arrive(variables, {**EXPECTED, "WORKER_COUNT": "3"}, not_in_config={"AIDEPLOY_MAX_REQUEST_BYTES"})
    [create] = [a for a in plan["actions"] if a["action"] == "online_deployments.begin_create_or_update"]
    assert create["request"]["body"]["properties"]["environmentVariables"] == variables  # what is sent
    assert "AIDEPLOY_MLP_TOKEN_SECRET" not in json.dumps(plan)
    # The blob limits store's credential: in Key Vault, named, never a value.
    assert re.fullmatch(r"AIDEPLOY_LIMITS_STORE_CREDENTIAL=aideploy-[\w-]+-limits-credential",
                        variables["AIDEPLOY_KEY_VAULT_SECRETS"])


def test_the_readme_names_every_setting():
    readme = (SCORING.parent / "README.md").read_text()
    assert [name for name in settings.SETTINGS if f"`{name}`" not in readme] == []
