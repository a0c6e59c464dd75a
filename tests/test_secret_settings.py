"""The service's secret settings (aideploy_scoring/secret_settings.py): from Key Vault through the
deployment's managed identity when a vault is given, else from the environment; and, for a deployment
of one server (target=aci), a token secret and limits shared by its workers alone.

Key Vault is tested up to the network boundary: init() runs the real ``ManagedIdentityCredential`` and
``SecretClient`` against a vault that cannot be reached from here (no Azure), and must stop with one
line naming the vault and the secret.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest
from test_service_settings import INIT, SCORING

from aideploy_scoring import secret_settings, settings
from aideploy_scoring.encrypted import TOKEN_SECRET_ENV, token_secret_from_environment

VAULT = "https://aideploy-kv-test.vault.azure.net"


@pytest.fixture
def clean_env(monkeypatch):
    """No AIDEPLOY_* setting from aideploy's own environment, and no secret read by an earlier test."""
    for name in list(os.environ):
        if name.startswith(settings.PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.setattr(secret_settings, "_loaded", {})


def test_init_with_a_vault_it_cannot_reach_stops_with_one_line_naming_the_vault_and_secret(tmp_path):
    pytest.importorskip("azure.keyvault.secrets", reason="the Azure extra is not installed")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(settings.PREFIX)},
           "AZUREML_MODEL_DIR": str(tmp_path), "AIDEPLOY_KEY_VAULT_URL": VAULT,
           "AIDEPLOY_KEY_VAULT_SECRETS": "AIDEPLOY_MLP_TOKEN_SECRET=aideploy-ep-mlp-token-secret",
           # What Azure ML gives a deployment's container for its managed identity; nothing listens here.
           "MSI_ENDPOINT": "http://127.0.0.1:9/msi/token", "MSI_SECRET": "not-a-secret"}
    proc = subprocess.run([sys.executable, "-c", INIT, str(SCORING)], env=env, capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr  # gunicorn's "worker failed to boot": the server stops
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(secret_settings.UNAVAILABLE)
    assert f"Key Vault {VAULT} (secret aideploy-ep-mlp-token-secret)" in lines[0]
    assert "AIDEPLOY_MLP_TOKEN_SECRET" in lines[0] and "ServiceRequestError" in lines[0]


def test_a_vault_secret_is_read_with_the_real_client_and_its_failure_is_one_line(clean_env, monkeypatch):
    pytest.importorskip("azure.keyvault.secrets", reason="the Azure extra is not installed")
    monkeypatch.setenv("AIDEPLOY_KEY_VAULT_URL", VAULT)
    monkeypatch.setenv("AIDEPLOY_KEY_VAULT_SECRETS", "AIDEPLOY_LIMITS_STORE_CREDENTIAL=aideploy-ep-limits")
    monkeypatch.setenv("AIDEPLOY_LIMITS_STORE_CREDENTIAL", "from-the-environment")  # the vault wins
    monkeypatch.setenv("MSI_ENDPOINT", "http://127.0.0.1:9/msi/token")
    monkeypatch.setenv("MSI_SECRET", "not-a-secret")
    with pytest.raises(secret_settings.SecretUnavailable) as info:
        secret_settings.secret("AIDEPLOY_LIMITS_STORE_CREDENTIAL")
    assert f"Key Vault {VAULT} (secret aideploy-ep-limits)" in str(info.value) and "\n" not in str(info.value)
    # A setting the vault does not hold still comes from the environment.
    monkeypatch.setenv(TOKEN_SECRET_ENV, "ab" * 16)
    assert secret_settings.secret(TOKEN_SECRET_ENV) == b"\xab" * 16


def test_without_a_vault_secrets_come_from_the_environment(clean_env, monkeypatch):
    monkeypatch.setenv("AIDEPLOY_KEY_VAULT_SECRETS", "AIDEPLOY_MLP_TOKEN_SECRET=aideploy-ep-mlp-token-secret")
    monkeypatch.setenv(TOKEN_SECRET_ENV, "cd" * 16)  # no AIDEPLOY_KEY_VAULT_URL: the names alone are not a vault
    assert token_secret_from_environment() == b"\xcd" * 16
    secret_settings.load()  # nothing to read from a vault


@pytest.mark.parametrize("pairs, words", [
    ("AIDEPLOY_MAX_QUERIES_PER_KEY=x", "is not a secret setting"),
    ("AIDEPLOY_MLP_TOKEN_SECRET=bad_name!", "is not a Key Vault secret name"),
])
def test_vault_secret_names_are_checked_by_the_declaration(pairs, words):
    with pytest.raises(settings.SettingsError, match=words):
        settings.check({"AIDEPLOY_KEY_VAULT_SECRETS": pairs})
    with pytest.raises(settings.SettingsError, match="vault's https URL"):
        settings.check({"AIDEPLOY_KEY_VAULT_URL": "https://kv.vault.azure.net/secrets"})


# ------------------------------------------------------------------ one server's own (target=aci)


SHARE = ("import sys; sys.path.insert(0, sys.argv[1]); from aideploy_scoring.secret_settings import server_secret; "
         "print(server_secret(sys.argv[2]).hex())")


def test_the_servers_workers_share_one_generated_token_secret(tmp_path):
    directory = tmp_path / "share"
    workers = [subprocess.Popen([sys.executable, "-c", SHARE, str(SCORING.parent), str(directory)],
                                stdout=subprocess.PIPE, text=True) for _ in range(4)]
    found = {worker.communicate(timeout=60)[0].strip() for worker in workers}
    assert len(found) == 1 and len(bytes.fromhex(found.pop())) == 32  # four workers started together: one secret
    info = os.stat(directory / secret_settings.SERVER_SECRET_FILE)
    assert stat.S_IMODE(info.st_mode) == 0o600 and stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [secret_settings.SERVER_SECRET_FILE]
    os.chmod(directory / secret_settings.SERVER_SECRET_FILE, 0o644)  # readable by others: refused
    with pytest.raises(ValueError, match="nobody else may read"):
        secret_settings.server_secret(directory)


def test_token_secret_without_a_setting_is_the_servers_not_the_workers(clean_env, monkeypatch, tmp_path):
    monkeypatch.setenv("AIDEPLOY_KEY_SHARE_DIR", str(tmp_path / "share"))
    first = token_secret_from_environment()
    assert token_secret_from_environment() == first  # another worker of the same server
    monkeypatch.setenv("AIDEPLOY_KEY_SHARE_DIR", str(tmp_path / "another-server"))
    assert token_secret_from_environment() != first


def test_with_neither_a_setting_nor_a_share_dir_each_worker_has_its_own_secret_and_says_so(clean_env, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="aideploy.scoring")
    first, second = token_secret_from_environment(), token_secret_from_environment()
    assert first != second and len(first) == 32  # two workers: rounds only succeed on the worker that began them
    assert f"{TOKEN_SECRET_ENV} is not set: this worker seals MLP round tokens with its own random secret" in caplog.text


def test_the_server_limits_store_is_shared_by_its_workers(clean_env, monkeypatch, tmp_path):
    from aideploy_scoring.limits import LimitsUnavailable, SqliteStore, open_store

    monkeypatch.setenv("AIDEPLOY_LIMITS_STORE", settings.SERVER_STORE)
    settings.check()
    with pytest.raises(LimitsUnavailable, match="AIDEPLOY_KEY_SHARE_DIR"):
        open_store()
    monkeypatch.setenv("AIDEPLOY_KEY_SHARE_DIR", str(tmp_path / "share"))
    one, other = open_store(), open_store()  # two workers
    assert isinstance(one, SqliteStore) and one.path == str(tmp_path / "share" / "limits.sqlite")
    assert one.add("key", 3, 4) == (True, 0)
    assert other.add("key", 3, 4) == (False, 3)  # the other worker sees the first one's count
