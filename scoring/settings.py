"""Every setting the scoring service reads, declared once: name, type, default, secret or not.

The service is configured by environment variables only (that is what azmlinfsrv, a container
and a managed deployment all pass on). Each one is declared here and read through
:func:`get`; nothing else in the service calls ``os.environ`` for its own settings.
``init()`` starts with :func:`check`: an ``AIDEPLOY_*`` variable that is not declared here
(a typo, or a setting of another version) or a value that does not parse stops the service
with one line naming it, rather than being ignored and leaving a limit at its default.

Who sets each one (``source``):

* ``config``: the deployment's config determines it, and every target forwards it
  (``aideploy.service_env`` computes them; a test checks each target's plan or deployment);
* ``deployment``: the target makes it when it deploys (the key store it started, the
  directory the workers share, the token secret);
* ``operator``: a tuning knob an operator may set in aideploy's environment (``target=local``
  passes it on) or in the deployment's;
* ``platform``: azmlinfsrv or Azure sets it.

A ``secret`` setting is never forwarded as a plain environment variable to Azure: the Azure
targets leave it out (it comes from a secret store there), ``target=local`` gives it to the
server process only.

This module imports nothing of ``aideploy``'s (the service's image does not have it), and
``aideploy`` imports it to forward the settings, so both sides read one declaration.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import Any, Callable, Mapping

PREFIX = "AIDEPLOY_"
#: How ``init()`` starts the one line it logs for an invalid setting (``target=local`` shows that line).
INVALID = "the scoring service's settings are invalid: "


class SettingsError(ValueError):
    """A setting that is unknown or does not parse; ``str()`` is one line naming it."""


@dataclass(frozen=True)
class Setting:
    """One environment variable the service reads."""

    name: str
    parse: Callable[[str], Any]  # the text to the value; ValueError(why) if it does not fit
    default: Any
    doc: str
    source: str  # config | deployment | operator | platform (see the module docstring)
    secret: bool = False

    def format(self, value: Any) -> str:
        """``value`` as the variable's text, checked by :attr:`parse`."""
        text = ",".join(value) if isinstance(value, (list, tuple)) else str(value)
        self.parse(text)
        return text


def _integer(low: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text.strip())
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}")
        return value

    return parse


def _number(low: float, high: float | None = None, *, open_low: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text.strip())
        if value != value or (value <= low if open_low else value < low) or (high is not None and value > high):
            raise ValueError(f"must be in {'(' if open_low else '['}{low:g}, {high if high is not None else 'inf'}]")
        return value

    return parse


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _names(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _hex_secret(text: str) -> bytes:
    try:
        value = bytes.fromhex(text.strip())
    except ValueError:
        raise ValueError("must be hex digits") from None
    if len(value) < 16:
        raise ValueError("must hold at least 16 bytes (32 hex digits)")
    return value


def _sha256_hex(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError("must be a SHA-256 as 64 hex digits")
    return value


def _url(text: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError("must be an http(s) URL with a host and no query")
    return text.strip().rstrip("/")


#: ``AIDEPLOY_LIMITS_STORE`` for an SQLite file in the server's private directory (``AIDEPLOY_KEY_SHARE_DIR``).
SERVER_STORE = "server"


def _limits_store(text: str) -> str:
    """An absolute path (SQLite, on a disk every worker sees), ``server``, or a blob container URL."""
    text = text.strip()
    if text == SERVER_STORE:
        return text
    if text.startswith(("http://", "https://")):
        url = _url(text)
        if "/" not in url.split("://", 1)[1]:
            raise ValueError("a blob URL must name the container")
        return url
    if not os.path.isabs(text):
        raise ValueError(f"must be an absolute path (SQLite), {SERVER_STORE!r}, or an http(s) URL of a blob container")
    return text


def _key_vault_url(text: str) -> str:
    url = _url(text)
    if not url.startswith("https://") or url.count("/") != 2:
        raise ValueError("must be a vault's https URL with no path (https://<vault>.vault.azure.net)")
    return url


def _vault_secrets(text: str) -> dict[str, str]:
    """``SETTING=secret-name,...``: which secret setting each Key Vault secret holds."""
    import re

    names: dict[str, str] = {}
    for pair in _names(text):
        setting, _, secret = pair.partition("=")
        if SETTINGS.get(setting) is None or not SETTINGS[setting].secret:
            secrets = sorted(name for name, s in SETTINGS.items() if s.secret)
            raise ValueError(f"{setting!r} is not a secret setting (those are {', '.join(secrets)})")
        if not re.fullmatch(r"[0-9a-zA-Z-]{1,127}", secret):
            raise ValueError(f"{secret!r} is not a Key Vault secret name (1-127 letters, digits and dashes)")
        names[setting] = secret
    return names


_ALL = [
    # platform
    Setting("AZUREML_MODEL_DIR", _text, None, "the registered model's directory", "platform"),
    # config
    Setting("WORKER_COUNT", _integer(1), 1, "inference server workers (azmlinfsrv reads it too)", "config"),
    Setting("AIDEPLOY_MAX_REQUEST_BYTES", _integer(1), 64 * 1024 * 1024,
            "largest request body (413 beyond); target.max_request_mb", "config"),
    Setting("AIDEPLOY_PREPARE_SCHEMES", _names, None,
            "schemes init() builds and runs once, comma-separated; unset: every scheme it has a runtime for",
            "config"),
    Setting("AIDEPLOY_MAX_QUERIES_PER_KEY", _integer(0), 0,
            "MLP samples one client key may send through round 1, over the whole deployment (429 after); 0: "
            "unlimited; encryption.max_queries_per_key", "config"),
    Setting("AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY", _integer(0), 1,
            "samples one MLP query may hold (400 beyond); 1: every sample its own secrets; 0: as many as the "
            "flooding covers; encryption.max_samples_per_query", "config"),
    Setting("AIDEPLOY_FAST_X_BOUND", _number(0.0, open_low=True), None,
            "the fast scheme's one input range [-x_bound, x_bound] for every feature; unset: each feature's own "
            "range, recorded with the model version; encryption.x_bound", "config"),
    Setting("AIDEPLOY_FAST_MAX_ERROR", _number(0.0, open_low=True), 1e-3,
            "the fast scheme's guaranteed error on each logit, for which its parameters are chosen; "
            "encryption.max_error", "config"),
    Setting("AIDEPLOY_MLP_TOKEN_TTL", _number(0.0, 3600.0, open_low=True), 300.0,
            "seconds an MLP round token stays valid; encryption.round_ttl_seconds", "config"),
    Setting("AIDEPLOY_MAX_NEW_KEYS_PER_HOUR", _integer(0), 100,
            "client keys the deployment takes on in any hour (429 beyond); 0: unlimited; "
            "encryption.max_new_keys_per_hour", "config"),
    Setting("AIDEPLOY_KEY_STORE", _url, None,
            "the deployment's key store (blob service URL): the only store keys are fetched from, and the only "
            "account a seed-era conn_str may name; unset: keys are fetched from no store", "config"),
    Setting("AIDEPLOY_LIMITS_STORE", _limits_store, None,
            "where query budgets, spent round tokens and new keys are counted for every worker and instance: an "
            "SQLite file, 'server' (an SQLite file in AIDEPLOY_KEY_SHARE_DIR: this server's workers; target=aci's "
            "one container), or a blob container URL; unset: in this worker only (a warning)", "config"),
    # deployment
    Setting("AIDEPLOY_LIMITS_STORE_CREDENTIAL", _text, None,
            "the blob limits store's account key or SAS token", "deployment", secret=True),
    Setting("AIDEPLOY_KEY_VAULT_URL", _key_vault_url, None,
            "the Key Vault the secret settings named in AIDEPLOY_KEY_VAULT_SECRETS are read from, through the "
            "deployment's managed identity (target=managed_endpoint)", "deployment"),
    Setting("AIDEPLOY_KEY_VAULT_SECRETS", _vault_secrets, None,
            "SETTING=secret-name pairs, comma-separated: the secret settings read from AIDEPLOY_KEY_VAULT_URL "
            "instead of the environment", "deployment"),

    Setting("AIDEPLOY_AUTH_KEY_SHA256", _sha256_hex, None,
            "SHA-256 of the key requests must carry (Authorization: Bearer); unset: no check (Azure endpoints "
            "check keys themselves)", "deployment"),
    Setting("AIDEPLOY_KEY_SHARE_DIR", _text, None,
            "the private directory the workers share verified keys through (score.py defaults it per server)",
            "deployment"),
    Setting("AIDEPLOY_BIND_HOST", _text, None,
            "address gunicorn listens on (gunicorn_conf.py; target=local)", "deployment"),
    Setting("AIDEPLOY_WATCHDOG_FD", _integer(0), None,
            "a pipe whose other end aideploy holds: the server stops when it closes (gunicorn_conf.py)",
            "deployment"),
    # operator
    Setting("AIDEPLOY_MLP_TOKEN_SECRET", _hex_secret, None,
            "seals the MLP round tokens; the same in every worker and instance (hex, 32 digits or more); "
            "target=local makes one when unset, target=managed_endpoint keeps it in Key Vault; unset in the "
            "service: one the server generates and shares with its workers through AIDEPLOY_KEY_SHARE_DIR "
            "(target=aci's one container)",
            "operator", secret=True),
    Setting("AIDEPLOY_KEY_HOSTS", _names, None,
            "more key store hosts to fetch from, comma-separated globs (host or host:port); they must resolve to "
            "public addresses", "operator"),
    Setting("AIDEPLOY_KEY_CACHE_BYTES", _integer(0), 256 * 1024 * 1024, "bytes of parsed keys kept per worker",
            "operator"),
    Setting("AIDEPLOY_MAX_KEY_BYTES", _integer(1), 64 * 1024 * 1024, "largest key blob fetched", "operator"),
    Setting("AIDEPLOY_SAS_RECHECK_SECONDS", _number(0.0, 30.0), 30.0,
            "how long a positive check of one SAS with the store is reused (0-30)", "operator"),
    Setting("AIDEPLOY_BLAS_THREADS", _integer(1), None, "BLAS threads per worker; unset: cores / workers",
            "operator"),
    Setting("AIDEPLOY_KERNELS", _text, "aot",
            "the fast scheme's kernels: aot (the C build, made in init() if missing) or jit (numba); "
            "fastkernels_aot.MODE_ENV",
            "operator"),
    Setting("AIDEPLOY_KERNEL_CACHE", _text, None,
            "where the ahead-of-time kernel builds are kept; fastkernels_aot.CACHE_ENV", "operator"),
]

SETTINGS: dict[str, Setting] = {s.name: s for s in _ALL}
"""Every setting, by name."""


def _parsed(setting: Setting, text: str) -> Any:
    try:
        return setting.parse(text)
    except (ValueError, TypeError) as exc:
        raise SettingsError(f"{setting.name}={text if not setting.secret else '***'!s} is not valid: {exc} "
                            f"({setting.doc})") from None


def get(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of setting ``name``: parsed from the environment, else its default."""
    setting = SETTINGS[name]
    text = (os.environ if environ is None else environ).get(name)
    if text is None or (text == "" and setting.default is None):
        return setting.default
    return _parsed(setting, text)


def check(environ: Mapping[str, str] | None = None) -> None:
    """Every ``AIDEPLOY_*`` variable is declared and every declared one that is set parses,
    else :class:`SettingsError` naming the first that is not."""
    environ = os.environ if environ is None else environ
    for name in sorted(environ):
        if name.startswith(PREFIX) and name not in SETTINGS:
            near = difflib.get_close_matches(name, SETTINGS, n=1)
            raise SettingsError(f"unknown setting {name}" + (f" (did you mean {near[0]}?)" if near else "")
                                + "; the service's settings are declared in aideploy_scoring/settings.py")
    for name in SETTINGS:
        get(name, environ)


def environment(values: Mapping[str, Any]) -> dict[str, str]:
    """``{name: value}`` as environment variables, each checked against its declaration."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        setting = SETTINGS.get(name)
        if setting is None:
            raise SettingsError(f"unknown setting {name}")
        try:
            out[name] = setting.format(value)
        except (ValueError, TypeError) as exc:
            raise SettingsError(f"{name}={value!r} is not valid: {exc}") from None
    return out
