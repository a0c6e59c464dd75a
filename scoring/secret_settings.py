"""Where the service's secret settings come from: Azure Key Vault, the environment, or the server itself.

A secret setting (``secret=True`` in :mod:`.settings`: the MLP token secret, the blob limits
store's credential) is read through :func:`secret`, the one place that decides its source:

* **Key Vault** when ``AIDEPLOY_KEY_VAULT_URL`` is set and ``AIDEPLOY_KEY_VAULT_SECRETS`` names a
  vault secret for it (``target=managed_endpoint``): read once per worker with the deployment's
  managed identity (azure-identity's ``ManagedIdentityCredential``, which finds the identity Azure ML
  gives the container) and azure-keyvault-secrets' ``SecretClient``. The value never passes through
  an environment variable, so it is in no deployment definition, plan or log;
* **the environment** otherwise (``target=local`` hands the server process its own).

``init()`` calls :func:`load` first: a vault that cannot be reached, a secret that is missing or
that the identity may not read, stops the worker with one line naming the vault and the secret
(:class:`SecretUnavailable`), before anything else is built.

:func:`server_secret` is the third source, for the token secret of a deployment of one server
(``target=aci``'s one container): generated at the first worker's start and shared by the others
through a private file.
"""

from __future__ import annotations

import os
import stat
from typing import Any

from aideploy_scoring import settings
from aideploy_scoring.keyshare import private_directory

VAULT_URL = "AIDEPLOY_KEY_VAULT_URL"
VAULT_SECRETS = "AIDEPLOY_KEY_VAULT_SECRETS"
#: How ``init()`` starts the one line it logs when a secret cannot be read.
UNAVAILABLE = "the scoring service cannot read its secrets: "
# A vault that does not answer: a few quick tries, not azure-core's default half minute per read
# (init() runs under the deployment's start-up probes).
_RETRIES = {"retry_total": 3, "retry_backoff_factor": 0.5, "connection_timeout": 10, "read_timeout": 20}

_loaded: dict[str, Any] = {}


class SecretUnavailable(RuntimeError):
    """A secret setting that its source cannot give; ``str()`` is one line naming the vault and secret."""


def vault_names() -> dict[str, str]:
    """``{setting: vault secret name}`` for the secret settings read from Key Vault (empty without a vault)."""
    if settings.get(VAULT_URL) is None:
        return {}
    return settings.get(VAULT_SECRETS) or {}


def secret(name: str) -> Any:
    """The value of secret setting ``name``, parsed by its declaration: from Key Vault when
    ``AIDEPLOY_KEY_VAULT_URL`` is set and ``AIDEPLOY_KEY_VAULT_SECRETS`` names a vault secret for it,
    else from its environment variable (None when that is unset)."""
    if not settings.SETTINGS[name].secret:
        raise KeyError(f"{name} is not a secret setting")
    if name in _loaded:
        return _loaded[name]
    vault_secret = vault_names().get(name)
    if vault_secret is None:
        return settings.get(name)
    vault = settings.get(VAULT_URL)
    text = _read_vault(vault, vault_secret, name)
    try:
        value = settings.get(name, {name: text})
    except settings.SettingsError as exc:
        raise SecretUnavailable(f"{name} from Key Vault {vault} (secret {vault_secret}) is not valid: "
                                f"{str(exc).split(' is not valid: ', 1)[-1]}") from None
    _loaded[name] = value
    return value


def load() -> None:
    """Read every secret setting Key Vault holds now (``init()``), or :class:`SecretUnavailable`."""
    for name in vault_names():
        secret(name)


def _read_vault(vault: str, secret_name: str, setting: str) -> str:
    try:
        from azure.core.exceptions import AzureError
        from azure.identity import ManagedIdentityCredential
        from azure.keyvault.secrets import SecretClient
    except ImportError as exc:
        raise SecretUnavailable(f"{setting} is kept in Key Vault {vault} (secret {secret_name}), and this "
                                f"environment lacks the client ({exc}): it needs azure-identity and "
                                "azure-keyvault-secrets") from None
    try:
        with ManagedIdentityCredential() as credential, SecretClient(vault, credential, **_RETRIES) as client:
            value = client.get_secret(secret_name).value
    except (AzureError, ValueError) as exc:
        status = getattr(exc, "status_code", None)
        why = {403: "the deployment's identity may not read it (its role assignment: Key Vault Secrets User; a new "
                    "one can take minutes to apply)",
               404: "no such secret in the vault"}.get(status, "")
        detail = " ".join(str(getattr(exc, "message", None) or exc).split())[:300]
        raise SecretUnavailable(f"{setting} could not be read from Key Vault {vault} (secret {secret_name}): "
                                f"{type(exc).__name__}{f' {status}' if status else ''}: {why or detail}") from None
    if not value:
        raise SecretUnavailable(f"{setting} from Key Vault {vault} (secret {secret_name}) is empty")
    return value


# ------------------------------------------------------------------ generated by the server

SERVER_SECRET_FILE = "mlp-token-secret"


def server_secret(directory: str | os.PathLike, nbytes: int = 32) -> bytes:
    """The secret this server's workers share: made by the first worker to ask, read by the others.

    It lives in ``directory`` (:func:`.keyshare.private_directory`) as a file of mode 0600. The first worker
    writes a fresh random secret to a file of its own and links it into place, so a worker reads
    either no file or a whole one, and of two workers starting together one secret wins for both.
    """
    root = private_directory(directory)
    path = root / SERVER_SECRET_FILE
    if not path.exists():
        mine = root / f".{SERVER_SECRET_FILE}-{os.getpid()}"
        fd = os.open(mine, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, os.urandom(nbytes))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(mine, path)
        except FileExistsError:
            pass  # another worker's won
        finally:
            mine.unlink()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise ValueError(f"{path} must be a file of this user that nobody else may read")
        value = os.read(fd, nbytes + 1)
    finally:
        os.close(fd)
    if len(value) != nbytes:
        raise ValueError(f"{path} holds {len(value)} bytes, not {nbytes}")
    return value
