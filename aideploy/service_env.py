"""The scoring service's settings as a deployment's config determines them.

The service declares every setting it reads in one place, ``aideploy_scoring/settings.py``
(name, type, default, secret or not); this module computes the values the config gives them,
which every target forwards: ``target=local`` into the server's environment, the Azure targets
into the deployment's environment variables (``ScoringCode.settings``, filled at the scoring
stage). Secrets are never among them: ``target=local`` adds its own (the MLP token secret,
the limits store's credential) to the server process only, and on Azure they come from a
secret store, not from a plain environment variable.
"""

from __future__ import annotations

import os
from typing import Any

from aideploy.azurite import CONNECTION_STRING_ENV, NODE_ENV, NODE_MODULES_ENV
from aideploy.errors import ConfigError
from aideploy.uvenv import ENVS_ENV
from aideploy_scoring import settings

MB = 1024 * 1024
#: The schemes ``init()`` prepares for each encryption plugin (plain requests are always served).
PREPARED_SCHEMES = {"plain": "none", "fast": "none,fast", "seal": "none,seal"}
#: The limits container beside a key container on Azure: the service writes it, clients must not.
LIMITS_CONTAINER_SUFFIX = "-limits"
#: aideploy's own environment variables, read by aideploy and never by the service.
OWN_VARIABLES = ("AIDEPLOY_HOME", ENVS_ENV, NODE_MODULES_ENV, NODE_ENV, CONNECTION_STRING_ENV)


def keystore_url(keystore_cfg: Any) -> str | None:
    """The blob service URL of the key store the config names, when it is known before any stage
    runs (a real account, or an Azurite already running); None for an Azurite aideploy starts."""
    env = keystore_cfg.get("connection_string_env")
    conn = os.environ.get(env) if env else None
    if conn:
        from urllib.parse import urlsplit

        from azure.storage.blob import BlobServiceClient

        try:
            parts = urlsplit(BlobServiceClient.from_connection_string(conn).url)
        except ValueError:
            raise ConfigError(f"${env} is not a storage connection string",
                              hint="export the storage account's connection string") from None
        return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")
    env = keystore_cfg.get("account_url_env")
    url = os.environ.get(env) if env else None
    return url.split("?")[0].rstrip("/") if url else None


def limits_container_url(store_url: str, container: str) -> str:
    """The blob container the service counts its limits in, beside the key container."""
    name = f"{container}{LIMITS_CONTAINER_SUFFIX}"
    if len(name) > 63:
        raise ConfigError(f"keystore.container {container!r} is too long to name its limits container {name!r} "
                          "(63 characters at most)", hint="choose a shorter keystore.container")
    return f"{store_url}/{name}"


def from_config(cfg: Any, key_store: str | None = None, limits_store: str | None = None) -> dict[str, str]:
    """Every setting the config ``cfg`` determines, as environment variables (no secrets).

    ``key_store``: the key store's blob service URL (default: :func:`keystore_url`, for a
    deployment that serves an encrypted scheme); ``limits_store``: where the limits are counted
    (default: a container beside the key container).
    """
    target, encryption = cfg.target, cfg.encryption
    encrypted = encryption.plugin != "plain"
    if key_store is None and encrypted:
        key_store = keystore_url(cfg.keystore)
    if limits_store is None and key_store is not None:
        limits_store = limits_container_url(key_store, cfg.keystore.container)
    values = {
        "WORKER_COUNT": target.get("worker_count"),
        "AIDEPLOY_MAX_REQUEST_BYTES": int(target.max_request_mb * MB) if "max_request_mb" in target else None,
        "AIDEPLOY_PREPARE_SCHEMES": PREPARED_SCHEMES.get(encryption.plugin, "none"),
        "AIDEPLOY_MAX_QUERIES_PER_KEY": encryption.get("max_queries_per_key"),
        "AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY": encryption.get("max_samples_per_query"),
        "AIDEPLOY_MLP_TOKEN_TTL": encryption.get("round_ttl_seconds"),
        "AIDEPLOY_FAST_X_BOUND": encryption.get("x_bound"),
        "AIDEPLOY_FAST_MAX_ERROR": encryption.get("max_error"),
        "AIDEPLOY_MAX_NEW_KEYS_PER_HOUR": encryption.get("max_new_keys_per_hour"),
        "AIDEPLOY_KEY_STORE": key_store if encrypted else None,
        "AIDEPLOY_LIMITS_STORE": limits_store if encrypted else None,
    }
    return settings.environment(values)


def server_environment(scoring_key_env: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """aideploy's environment as ``target=local`` passes it to the server.

    Without aideploy's own variables (its home, its environments, Azurite's location, the scoring
    key: the service sees only the key's hash) and without the settings the target sets itself
    (``config`` and ``deployment`` ones). An operator's settings pass on, and so does any other
    ``AIDEPLOY_*`` variable, which the service's ``init()`` then refuses by name: a misspelt
    setting stops the deployment instead of leaving a limit at its default.
    """
    environ = os.environ if environ is None else environ
    own = {*OWN_VARIABLES, scoring_key_env}
    set_by_target = {name for name, s in settings.SETTINGS.items() if s.source in ("config", "deployment")}
    return {name: value for name, value in environ.items() if name not in own and name not in set_by_target}
