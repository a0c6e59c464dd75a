"""Client-side store for homomorphic-encryption PUBLIC keys in Azure Blob Storage.

The client uploads its public keys as one blob named after ``key_id`` and hands
the scoring service a read-only, short-lived SAS URL for exactly that blob
(the ``key_url`` of a scoring request).  The service never sees an account key.

Two ways to authenticate:

* a connection string with an ``AccountKey`` (Azurite, or an account where
  shared-key access is allowed): SAS tokens are signed with the account key;
* an account URL plus an Entra ID credential (``DefaultAzureCredential`` by
  default; needs the optional ``azure-identity`` package and the *Storage Blob
  Data Contributor* role): SAS tokens are user-delegation SAS, signed with a
  user delegation key obtained from the service.

Nothing here logs or reprs secrets; use :func:`redact` before logging any string
that might hold a SAS URL or a connection string.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any, Iterator
from urllib.parse import urlsplit

from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import (
    BlobSasPermissions,
    BlobServiceClient,
    ContentSettings,
    ExponentialRetry,
    UserDelegationKey,
    generate_blob_sas,
)

# The service validates and redacts with the same rules; the client shares its definitions.
from aideploy_scoring.keyfetch import CONTAINER_PATTERN, KEY_ID_PATTERN, redact

__all__ = [
    "BlobKeyStore",
    "KeyStoreError",
    "KEY_ID_PATTERN",
    "redact",
    "validate_key_id",
    "validate_container_name",
]

# A user delegation key may be valid for at most 7 days (service limit).
_MAX_DELEGATION = timedelta(days=7)

class KeyStoreError(RuntimeError):
    """The key store could not complete an operation (unreachable, auth, ...)."""


def validate_key_id(key_id: object) -> str:
    """Return ``key_id`` if it is a safe blob name, else raise ``ValueError``.

    Safe means 1-128 characters from ``[A-Za-z0-9_-]``.
    """
    if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
        shown = repr(key_id)[:60]
        raise ValueError(f"invalid key_id {shown}: must be 1-128 characters from A-Z a-z 0-9 _ -")
    return key_id


def validate_container_name(name: object) -> str:
    """Return ``name`` if it is a valid Azure container name, else raise ``ValueError``."""
    if not isinstance(name, str) or not CONTAINER_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid container name {repr(name)[:70]}: 3-63 lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit"
        )
    return name


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class BlobKeyStore:
    """Public-key blobs in one container, handed out as read-only SAS URLs.

    Build it with :meth:`from_connection_string` or :meth:`from_account_url`.

    Args:
        service: A configured ``BlobServiceClient``.
        container: Container holding the key blobs (created on first use if missing).
        account_key: The account key, if SAS tokens are to be signed with it;
            without it a user delegation key is requested (token credential required).
        sas_ttl: Lifetime of issued SAS URLs, in seconds.
        clock_skew: The SAS start time is backdated by this many seconds, so a
            server whose clock is slightly behind still accepts it.
        create_container: Create the container if it does not exist.
    """

    def __init__(
        self,
        service: BlobServiceClient,
        container: str,
        *,
        account_key: str | None = None,
        sas_ttl: float = 900.0,
        clock_skew: float = 300.0,
        create_container: bool = True,
    ) -> None:
        self._service = service
        self.container = validate_container_name(container)
        self._account_key = account_key
        self.sas_ttl = self._check_ttl(sas_ttl)
        if clock_skew < 0:
            raise ValueError("clock_skew must be >= 0")
        self.clock_skew = float(clock_skew)
        self._create_container = create_container
        self._container_ready = False
        self._lock = threading.Lock()
        self._delegation_key: UserDelegationKey | None = None
        self._delegation_expiry: datetime | None = None

    # ------------------------------------------------------------ builders
    @classmethod
    def from_connection_string(
        cls,
        conn_str: str,
        container: str,
        *,
        retries: int = 2,
        timeout: float = 20.0,
        **kwargs: Any,
    ) -> "BlobKeyStore":
        """Build from a storage connection string.

        If the connection string carries an ``AccountKey``, SAS tokens are signed
        with it; otherwise (e.g. a SAS-based connection string) :meth:`put`
        cannot issue SAS URLs and raises :class:`KeyStoreError`.

        Args:
            conn_str: The connection string (kept only inside the SDK client).
            container: Container name.
            retries: Retries per request (small: a refused connection should
                fail in seconds, not minutes).
            timeout: Connect/read timeout per request, in seconds.
            **kwargs: Passed to :class:`BlobKeyStore` (``sas_ttl``, ``clock_skew``,
                ``create_container``).

        Raises:
            ValueError: malformed connection string (message is redacted).
        """
        try:
            service = BlobServiceClient.from_connection_string(conn_str, **cls._client_options(retries, timeout))
        except ValueError as exc:
            raise ValueError(f"malformed storage connection string: {redact(exc)}") from None
        credential = service.credential
        account_key = getattr(credential, "account_key", None)
        return cls(service, container, account_key=account_key, **kwargs)

    @classmethod
    def from_account_url(
        cls,
        account_url: str,
        container: str,
        *,
        credential: Any = None,
        retries: int = 2,
        timeout: float = 20.0,
        **kwargs: Any,
    ) -> "BlobKeyStore":
        """Build from an account URL and an Entra ID token credential.

        ``credential`` defaults to ``azure.identity.DefaultAzureCredential()``
        (``azure-identity`` is optional and only imported here).  SAS URLs are
        user-delegation SAS.

        Args:
            account_url: e.g. ``https://myaccount.blob.core.windows.net``.
            container: Container name.
            credential: A token credential (anything with ``get_token``).
            retries: Retries per request.
            timeout: Connect/read timeout per request, in seconds.
            **kwargs: Passed to :class:`BlobKeyStore`.
        """
        if credential is None:
            try:
                from azure.identity import DefaultAzureCredential  # optional dependency
            except ImportError as exc:
                raise KeyStoreError(
                    "azure-identity is required for account-URL authentication; "
                    "install it (pip install 'aideploy[azure]') or use a connection string"
                ) from exc
            credential = DefaultAzureCredential()
        if not hasattr(credential, "get_token"):
            raise TypeError("credential must be a token credential (with get_token) for user-delegation SAS")
        service = BlobServiceClient(account_url, credential=credential, **cls._client_options(retries, timeout))
        return cls(service, container, account_key=None, **kwargs)

    @staticmethod
    def _client_options(retries: int, timeout: float) -> dict[str, Any]:
        # The SDK default (10 retries, 15 s exponential backoff) turns a
        # stopped Azurite into a multi-minute hang.
        return {
            "retry_policy": ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=max(0, int(retries)), random_jitter_range=1
            ),
            "connection_timeout": timeout,
            "read_timeout": timeout,
        }

    # ------------------------------------------------------------ properties
    @property
    def account_name(self) -> str:
        """Storage account name."""
        return str(self._service.account_name)

    @property
    def account_url(self) -> str:
        """Blob service endpoint (no credentials in it)."""
        parts = urlsplit(self._service.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")

    @property
    def auth_mode(self) -> str:
        """How SAS tokens are signed: ``"account-key"``, ``"user-delegation"`` or ``"none"``."""
        if self._account_key:
            return "account-key"
        return "user-delegation" if hasattr(self._service.credential, "get_token") else "none"

    def __repr__(self) -> str:
        # Deliberately built from non-secret fields only.
        return (
            f"BlobKeyStore(account={self.account_name!r}, endpoint={self.account_url!r}, "
            f"container={self.container!r}, auth={self.auth_mode!r}, sas_ttl={self.sas_ttl:g})"
        )

    # ------------------------------------------------------------ operations
    def ensure_container(self) -> None:
        """Create the container if it is missing (done lazily by :meth:`put`)."""
        if self._container_ready:
            return
        with self._translate("create container"):
            try:
                self._service.create_container(self.container)
            except ResourceExistsError:
                pass
        self._container_ready = True

    def blob_url(self, key_id: str) -> str:
        """URL of the key blob, without any SAS (not usable on its own)."""
        # Strip any query: a SAS-based connection string puts its token there.
        parts = urlsplit(self._service.get_blob_client(self.container, validate_key_id(key_id)).url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}"

    def put(self, key_id: str, data: bytes, *, sas_ttl: float | None = None) -> str:
        """Upload ``data`` as blob ``key_id`` (overwriting) and return a SAS URL.

        The SAS grants *read only*, for this one blob, valid from
        ``now - clock_skew`` until ``now + sas_ttl`` (default :attr:`sas_ttl`),
        https-only when the endpoint is https.

        Raises:
            ValueError: invalid ``key_id``.
            KeyStoreError: account unreachable, authentication failed, ...
        """
        validate_key_id(key_id)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data must be bytes, not {type(data).__name__}")
        if self.auth_mode == "none":  # fail before uploading something we cannot share
            raise KeyStoreError(
                "cannot issue SAS URLs: the store has neither an account key nor an Entra ID credential "
                "(a connection string needs AccountKey=...)"
            )
        if self._create_container:
            self.ensure_container()
        blob = self._service.get_blob_client(self.container, key_id)
        with self._translate(f"upload key {key_id}"):
            blob.upload_blob(
                bytes(data),
                overwrite=True,
                content_settings=ContentSettings(content_type="application/octet-stream"),
            )
        return self.sas_url(key_id, sas_ttl=sas_ttl)

    def sas_url(self, key_id: str, *, sas_ttl: float | None = None) -> str:
        """Return a fresh read-only SAS URL for an existing key blob.

        Lets a client keep its (large) key blob and mint a new short-lived URL
        per session instead of re-uploading.  Does not check that the blob exists.
        """
        validate_key_id(key_id)
        ttl = self.sas_ttl if sas_ttl is None else self._check_ttl(sas_ttl)
        now = _utcnow()
        start = now - timedelta(seconds=self.clock_skew)
        expiry = now + timedelta(seconds=ttl)
        signer: dict[str, Any]
        if self._account_key:
            signer = {"account_key": self._account_key}
        elif hasattr(self._service.credential, "get_token"):
            signer = {"user_delegation_key": self._user_delegation_key(start, expiry)}
        else:
            # e.g. a connection string carrying a SAS instead of an AccountKey:
            # nothing to sign with, and handing out that broader SAS is not an option.
            raise KeyStoreError(
                "cannot issue SAS URLs: the store has neither an account key nor an Entra ID credential "
                "(a connection string needs AccountKey=...)"
            )
        # spr=https only makes sense (and only works) on an https endpoint;
        # Azurite on loopback is plain http.
        protocol = "https" if self.account_url.startswith("https://") else None
        token = generate_blob_sas(
            account_name=self.account_name,
            container_name=self.container,
            blob_name=key_id,
            permission=BlobSasPermissions(read=True),
            start=start,
            expiry=expiry,
            protocol=protocol,
            **signer,
        )
        return f"{self.blob_url(key_id)}?{token}"

    def delete(self, key_id: str) -> None:
        """Delete the key blob; a missing blob (or container) is not an error."""
        validate_key_id(key_id)
        blob = self._service.get_blob_client(self.container, key_id)
        with self._translate(f"delete key {key_id}"):
            try:
                blob.delete_blob(delete_snapshots="include")
            except ResourceNotFoundError:
                pass

    def exists(self, key_id: str) -> bool:
        """True if the key blob exists."""
        validate_key_id(key_id)
        with self._translate(f"check key {key_id}"):
            return bool(self._service.get_blob_client(self.container, key_id).exists())

    def close(self) -> None:
        """Close the underlying HTTP session."""
        self._service.close()

    def __enter__(self) -> "BlobKeyStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ internals
    @staticmethod
    def _check_ttl(ttl: float) -> float:
        ttl = float(ttl)
        if not 0 < ttl <= _MAX_DELEGATION.total_seconds():
            raise ValueError(f"sas_ttl must be in (0, {_MAX_DELEGATION.total_seconds():.0f}] seconds, got {ttl}")
        return ttl

    def _user_delegation_key(self, start: datetime, expiry: datetime) -> UserDelegationKey:
        """A delegation key valid over [start, expiry], reused while it covers the SAS."""
        with self._lock:
            if (
                self._delegation_key is not None
                and self._delegation_expiry is not None
                and self._delegation_expiry >= expiry
            ):
                return self._delegation_key
            # Ask for more than this SAS needs (up to the 7-day cap) so that
            # consecutive puts reuse one key instead of a round trip each.
            key_expiry = min(start + _MAX_DELEGATION, max(expiry, _utcnow() + timedelta(hours=1)))
            with self._translate("get user delegation key"):
                key = self._service.get_user_delegation_key(start, key_expiry)
            self._delegation_key, self._delegation_expiry = key, key_expiry
            return key

    @contextmanager
    def _translate(self, what: str) -> Iterator[None]:
        """Turn SDK errors into KeyStoreError with an actionable, secret-free message."""
        where = f"{self.account_url} (container {self.container!r})"
        try:
            yield
        except (ServiceRequestError, ServiceResponseError) as exc:
            raise KeyStoreError(
                f"{what}: cannot reach blob endpoint {where}: {type(exc).__name__}: {redact(exc)[:300]}. "
                "Check that Azurite / the storage account is running and reachable."
            ) from None
        except ClientAuthenticationError as exc:
            if getattr(exc, "response", None) is None:
                # No HTTP response => the credential itself could not get a token.
                detail = f"could not obtain an Entra ID token ({type(exc).__name__}: {redact(exc)[:300]})"
            else:
                detail = f"the service rejected the credentials (HTTP {exc.status_code}, {_code(exc)})"
            raise KeyStoreError(
                f"{what}: authentication to {where} failed: {detail}. Check the account key / credential "
                "and, for Entra ID, the 'Storage Blob Data Contributor' role."
            ) from None
        except HttpResponseError as exc:
            if exc.status_code == 403:
                raise KeyStoreError(
                    f"{what}: access to {where} denied (HTTP 403, {_code(exc)}). "
                    "Check the account key / credential and its permissions."
                ) from None
            raise KeyStoreError(f"{what}: storage request to {where} failed (HTTP {exc.status_code}, {_code(exc)})") from None


def _code(exc: HttpResponseError) -> str:
    return str(getattr(exc, "error_code", None) or "no error code")
