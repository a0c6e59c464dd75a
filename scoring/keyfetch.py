"""Fetch a client's public encryption keys from Azure Blob Storage (server side).

Runs inside the scoring container's request handler, so it depends only on
``azure-storage-blob``, ``cachetools`` and the standard library (not on the
``aideploy`` client package).

A scoring request names its keys in one of two ways:

* ``key_id`` + ``key_url``: a read-only SAS URL for the single blob ``key_id``
  (current clients);
* ``key_id`` + ``conn_str`` + ``container``: the storage connection string in
  the request body (seed-era clients, as Microsoft's 2020 sample did).

Cache and SAS validation
------------------------
Parsed keys can be large (tens of MB) and expensive to prepare, so they are
cached, LRU, bounded by total bytes.  But a cache hit must never bypass
authorisation: an expired or forged SAS has to be refused with 403 even when
the key it names is cached.  The service cannot check a SAS signature locally
(it never has the account key), so the storage service checks it: with the
caller's credentials, a key that is cached gets one authenticated metadata
request (``get_blob_properties``, an HTTP HEAD), a key that is not gets its
GET.  The store thereby checks signature, expiry, permissions and scope, and
tells us the blob's size and ETag:

* 4xx from that HEAD or GET -> the request fails, cached or not;
* cache entry with the same ETag -> hit, no download;
* otherwise -> download (conditional on that ETag), transform, cache.  A blob
  over ``max_key_bytes`` is refused after its first chunk (at most 4 MB).

The HEAD also notices a deleted (404) or re-uploaded (new ETag) key.

Positive SAS checks are kept for a bounded time
-----------------------------------------------
The HEAD costs a round trip to the store (milliseconds, against a 0.16 ms
encrypted query), so a *positive* verdict is kept, per ``(key_id, SAS URL)``,
for at most ``sas_recheck_seconds`` (default and maximum 30 s: Azure documents
that a change to a stored access policy can take up to 30 s to take effect, so
revocation is no slower than Azure's own).  Within that window a request with
the very same SAS string is answered from the key cache without the HEAD:

* the SAS's own expiry (``se``) is enforced locally on every request, cached
  or not: an expired SAS is refused (403) on its first request after ``se``;
* the verdict is keyed by a SHA-256 of the exact URL, signature included: a
  forged or altered SAS is a different string, misses, and goes to the store;
* a deleted or re-uploaded key blob is noticed at the next HEAD, at most
  ``sas_recheck_seconds`` later;
* a SAS whose ``se`` cannot be read locally (none, e.g. a stored access policy
  holds the expiry, or an unusual format), and the seed's connection strings,
  are never cached: every request checks with the store.

The key cache itself stays bounded in bytes; the verdicts are a few hundred
bytes each, at most ``max_sas_checks`` of them.  The server's clock is
trusted for ``se`` (keep it NTP-synchronised, as Azure's SAS checks assume).

Shared by the workers of a deployment
-------------------------------------
With ``shared_dir``, the store's positive answers and the key bytes it returned
are also written to a directory every worker of the deployment reads
(:mod:`.keyshare`): a key one worker fetched (a client's key registration, or
its first query) is served by the others without a request to the store, under
the same deadline and the same local ``se`` check.

Cache entries are keyed by the blob's location (scheme, host, account path,
container, blob name; never the query string) plus the ``transform`` used,
so the same ``key_id`` in two different accounts cannot alias.

Only the deployment's key store
-------------------------------
``key_url`` and ``conn_str`` come from the client, who for model privacy is an
adversary, so the service must not become its way into the network it runs in
(SSRF). A fetcher reaches only:

* ``store_url``, the deployment's own key store (``AIDEPLOY_KEY_STORE``): exactly
  its scheme, host and port (Azurite on loopback or a private address included);
* hosts matching ``allowed_hosts`` globs (``AIDEPLOY_KEY_HOSTS``), at the port
  the pattern names or else the scheme's default (443, 80), and only if the
  address the connection actually reaches is public: a loopback, private,
  link-local or otherwise non-global peer is refused after the connect, before
  a byte is sent, whatever DNS said a moment earlier.

Redirects are not followed (a store that answers 3xx is a 502). A store that
cannot be reached, refuses the connection, times out or answers with something
that is not a blob is one 502 line, the same for each: no 500, no traceback,
and nothing that tells an open port from a closed one. The seed's
``conn_str`` (an account key in the request body) is taken only for the
store's own account, and only when the caller (the seal scheme) passes it on.

Error messages and exception chains never include the SAS token or an account
key (SDK exceptions are summarised, not chained, because they can embed the
request URL).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import ipaddress
import logging
import os
import re
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs, urlsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceModifiedError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobClient, BlobServiceClient, LinearRetry
from cachetools import LRUCache
from requests import Session
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from aideploy_scoring.keyshare import SharedKeys

log = logging.getLogger("aideploy.scoring")

__all__ = [
    "KeyFetcher",
    "KeyFetchError",
    "KeyRequestError",
    "KeyAccessDeniedError",
    "KeyNotFoundError",
    "KeyTooLargeError",
    "KeyStoreUnavailableError",
    "redact",
]

#: Allowed key ids: also the blob name, so no characters that need URL escaping or make a path.
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
#: Azure container names: 3-63 lowercase letters, digits and single hyphens, alphanumeric ends.
CONTAINER_PATTERN = re.compile(r"(?=.{3,63}$)[a-z0-9](?:[a-z0-9]|-(?!-))*[a-z0-9]")
_MAX_URL_CHARS = 8192
_MAX_CONN_STR_CHARS = 4096
# A '%' not followed by two hex digits. No field of a SAS has one once decoded; Azurite decodes
# the query a second time and answers HTTP 500 to it, which would read as "the store failed".
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
#: Azure documents that a stored access policy change takes up to 30 s to apply: the longest a
#: positive SAS check may be reused.
MAX_SAS_RECHECK_SECONDS = 30.0
_FIRST_GET_BYTES = 4 * 1024 * 1024
# The ``se`` forms read locally (UTC, as Azure writes and our clients mint them); any other
# form is left to the store, on every request.
_SAS_EXPIRY = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,7})?)?Z")

# sig=... in a SAS query (also percent-encoded, when a SAS URL is nested in another URL's
# query); AccountKey=... and SharedAccessSignature=... in a connection string.
_REDACT_PATTERNS = [
    (re.compile(r"(?i)(\bsig(?:=|%3D))[^&\s'\"<>;]+"), r"\1***"),
    (re.compile(r"(?i)(AccountKey=)[^;\s'\"]+"), r"\1***"),
    (re.compile(r"(?i)(SharedAccessSignature=)[^;\s'\"]+"), r"\1***"),
]


def redact(text: object) -> str:
    """Return ``str(text)`` with SAS signatures and account keys masked (for logs)."""
    out = str(text)
    for pattern, repl in _REDACT_PATTERNS:
        out = pattern.sub(repl, out)
    return out


# --------------------------------------------------------------------- errors
class KeyFetchError(ValueError):
    """Keys could not be fetched; ``http_status`` is what the handler should return.

    ``code`` is a short machine-readable reason (e.g. the storage error code).
    """

    http_status: int = 400

    def __init__(self, message: str, *, http_status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        if http_status is not None:
            self.http_status = http_status
        self.code = code


class KeyRequestError(KeyFetchError):
    """400: malformed key_id, key_url, conn_str or container, or unparsable key."""

    http_status = 400


class KeyAccessDeniedError(KeyFetchError):
    """403: expired, forged or insufficient SAS, or bad account credentials."""

    http_status = 403


class KeyNotFoundError(KeyFetchError):
    """404: no key blob (or container) for this key_id."""

    http_status = 404


class KeyTooLargeError(KeyFetchError):
    """413: the key blob exceeds ``max_key_bytes``."""

    http_status = 413


class KeyStoreUnavailableError(KeyFetchError):
    """502: the blob store could not be reached or failed."""

    http_status = 502


# ---------------------------------------------------------------------- cache
@dataclass(frozen=True)
class _Entry:
    etag: str
    value: object
    nbytes: int


@dataclass(frozen=True)
class _Check:
    """A positive SAS check: this exact SAS could read ``location`` at ``etag``."""

    location: str
    etag: str
    recheck_at: float  # time.monotonic() after which the store is asked again
    expires: float  # the SAS's se, epoch seconds

    def live(self) -> bool:
        """Still good: before its recheck deadline and before the SAS's expiry."""
        return time.monotonic() < self.recheck_at and time.time() < self.expires


def _measure(value: object, raw_len: int) -> int:
    """Bytes a cached value occupies: ``nbytes``, else ``len()``, else the blob size."""
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int) and nbytes >= 0:
        return nbytes
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return raw_len


class KeyFetcher:
    """Fetch (and cache) public keys named by a scoring request.

    Thread-safe; create one per process (per ``transform``, ideally) and share it.

    Args:
        max_cache_bytes: Bound on the total size of cached values.  A value
            larger than this is returned but not cached.  ``0`` disables caching.
        max_key_bytes: Largest key blob accepted (checked before downloading).
        timeout: Connect and per-read socket timeout, in seconds.
        retries: Retries per storage request on transient errors (kept small:
            this runs inside a request handler).
        store_url: The deployment's key store (a blob service URL, e.g.
            ``https://<account>.blob.core.windows.net`` or Azurite's
            ``http://127.0.0.1:10000/devstoreaccount1``): reached at exactly its
            host and port, whatever its address; the only account a ``conn_str``
            may name. None: no store (only ``allowed_hosts``).
        allowed_hosts: More hosts, as glob patterns (``fnmatch``) of ``host`` or
            ``host:port`` (no port: the scheme's default), e.g.
            ``["*.blob.core.windows.net"]``; reached only at public addresses.
            With neither, nothing is fetched: ``key_url``/``conn_str`` come from
            the request, and the service must not go where a caller points it.
        sas_recheck_seconds: How long a positive check of one SAS URL is reused
            (0 to 30; 0 checks with the store on every request).  See the
            module docstring.
        max_sas_checks: Bound on the number of positive checks kept (LRU).
        shared_dir: A directory shared with the deployment's other workers (see the module
            docstring and :mod:`.keyshare`), bounded by ``max_cache_bytes``; None: not shared.
            A directory that cannot be used is logged, and the fetcher works alone.
    """

    def __init__(
        self,
        max_cache_bytes: int = 256 * 1024 * 1024,
        max_key_bytes: int = 64 * 1024 * 1024,
        timeout: float = 10.0,
        *,
        retries: int = 1,
        store_url: str | None = None,
        allowed_hosts: Iterable[str] = (),
        sas_recheck_seconds: float = MAX_SAS_RECHECK_SECONDS,
        max_sas_checks: int = 4096,
        shared_dir: str | os.PathLike | None = None,
    ) -> None:
        if max_cache_bytes < 0 or max_key_bytes <= 0 or timeout <= 0 or retries < 0:
            raise ValueError("max_cache_bytes >= 0, max_key_bytes > 0, timeout > 0 and retries >= 0 required")
        if not 0 <= sas_recheck_seconds <= MAX_SAS_RECHECK_SECONDS or max_sas_checks < 1:
            raise ValueError(f"sas_recheck_seconds must be in [0, {MAX_SAS_RECHECK_SECONDS:g}] (Azure's own bound "
                             "for revoking a SAS) and max_sas_checks >= 1")
        self.max_cache_bytes = int(max_cache_bytes)
        self.max_key_bytes = int(max_key_bytes)
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.store = _Store.parse(store_url) if store_url else None
        self.allowed_hosts = tuple(p.lower() for p in allowed_hosts)
        self._cache: LRUCache[tuple[str, object], _Entry] | None = (
            LRUCache(maxsize=self.max_cache_bytes, getsizeof=lambda e: e.nbytes) if self.max_cache_bytes else None
        )
        self.sas_recheck_seconds = float(sas_recheck_seconds)
        self._checks: LRUCache[tuple[str, bytes], _Check] | None = (
            LRUCache(maxsize=int(max_sas_checks)) if self.sas_recheck_seconds and self._cache is not None else None
        )
        self._lock = threading.Lock()
        self._local = threading.local()
        self._hits = 0
        self._misses = 0
        self._store_checks = 0
        self._shared_hits = 0
        self._shared: SharedKeys | None = None
        if shared_dir is not None and self._checks is not None:
            try:
                self._shared = SharedKeys(shared_dir, self.max_cache_bytes, self.sas_recheck_seconds, max_sas_checks)
            except (OSError, ValueError) as exc:
                log.warning("keys are not shared between workers: %s", exc)

    # ----------------------------------------------------------------- public
    def fetch(
        self,
        key_id: str,
        key_url: str | None = None,
        conn_str: str | None = None,
        container: str | None = None,
        transform: Callable[[bytes], Any] | None = None,
    ) -> Any:
        """Return the key material for ``key_id`` (``transform(bytes)`` if given).

        Pass either ``key_url`` (a SAS URL whose blob name equals ``key_id``) or
        ``conn_str`` + ``container``.  The caller's credentials are verified
        with the storage service, cached or not: on every call, or for a SAS
        URL whose expiry is known, at most every ``sas_recheck_seconds`` per
        ``(key_id, key_url)``, its expiry checked locally on every call.

        ``transform`` parses/prepares the raw bytes; its result is what gets
        cached, sized by its ``nbytes`` attribute or ``len()``.  A ``ValueError``
        from it becomes a 400 (invalid key material); other exceptions propagate.
        The cache key includes ``transform`` (by identity), so pass the same
        function object each time, not a fresh lambda per request.  Cached
        values are shared between callers: do not mutate them.  Two concurrent
        misses for one key may both download it (harmless, no single-flight).

        Raises:
            KeyRequestError: 400, malformed input.
            KeyAccessDeniedError: 403, expired/forged SAS or bad credentials.
            KeyNotFoundError: 404, no such key blob.
            KeyTooLargeError: 413, blob larger than ``max_key_bytes``.
            KeyStoreUnavailableError: 502, store unreachable or failing.
        """
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
            raise KeyRequestError(
                "invalid key_id: must be 1-128 characters from A-Z a-z 0-9 _ -", code="InvalidKeyId"
            )
        check_key = None
        if self._checks is not None and isinstance(key_url, str) and conn_str is None and container is None:
            check_key = (key_id, hashlib.sha256(key_url.encode("utf-8", "surrogatepass")).digest())
            cached = self._checked(check_key, transform)
            if cached is None and self._shared is not None:
                cached = self._from_shared(key_id, check_key, transform)
            if cached is not None:
                return cached.value
        blob, location, expires = self._blob_client(key_id, key_url, conn_str, container)
        cache_key = (location, transform)
        uncached = not self._holds(cache_key)
        if uncached:
            # Nothing cached for this blob: one GET, which checks the credentials as the HEAD does.
            data, etag = self._download(key_id, location, blob, None)
        # One retry covers a key re-uploaded between our HEAD and the download.
        for attempt in range(0 if uncached else 2):
            with self._lock:
                self._store_checks += 1
            props = self._call(key_id, location, blob.get_blob_properties)
            size, etag = int(props.size), str(props.etag)
            if size > self.max_key_bytes:
                raise KeyTooLargeError(
                    f"key {key_id} is {size} bytes, over the {self.max_key_bytes}-byte limit", code="KeyTooLarge"
                )
            cached = self._cache_get(cache_key, etag)
            if cached is not None:
                self._remember_check(check_key, location, etag, expires)
                return cached.value
            try:
                data, etag = self._download(key_id, location, blob, etag)
            except _Modified:
                if attempt == 0:
                    continue
                raise KeyStoreUnavailableError(
                    f"key {key_id} kept changing while it was downloaded; retry", code="KeyChanged"
                ) from None
            break
        if len(data) > self.max_key_bytes:  # belt and braces: size is ETag-pinned
            raise KeyTooLargeError(f"key {key_id} exceeds {self.max_key_bytes} bytes", code="KeyTooLarge")
        value = self._parse_and_cache(key_id, cache_key, etag, data, transform).value
        if self._shared is not None and check_key is not None and expires is not None:
            self._shared.put_blob(location, etag, data)
        self._remember_check(check_key, location, etag, expires)
        return value

    def clear(self) -> None:
        """Drop every cached key and every remembered SAS check."""
        with self._lock:
            if self._cache is not None:
                self._cache.clear()
            if self._checks is not None:
                self._checks.clear()

    @property
    def stats(self) -> dict[str, int]:
        """Cache counters: ``hits``, ``misses``, ``items``, ``bytes``, ``max_bytes``; ``store_checks``
        (HEADs made to the store), ``sas_checks`` (positive SAS checks remembered) and
        ``shared_hits`` (requests answered from another worker's check)."""
        with self._lock:
            return {
                "hits": self._hits,
                "misses": self._misses,
                "items": len(self._cache) if self._cache is not None else 0,
                "bytes": int(self._cache.currsize) if self._cache is not None else 0,
                "max_bytes": self.max_cache_bytes,
                "store_checks": self._store_checks,
                "sas_checks": len(self._checks) if self._checks is not None else 0,
                "shared_hits": self._shared_hits,
            }

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"KeyFetcher(items={s['items']}, bytes={s['bytes']}/{s['max_bytes']}, "
            f"max_key_bytes={self.max_key_bytes}, timeout={self.timeout:g})"
        )

    # -------------------------------------------------------------- internals
    def _checked(self, check_key: tuple[str, bytes], transform: object) -> _Entry | None:
        """The cached key a still-valid positive check of this exact SAS vouches for, else None."""
        with self._lock:
            check = self._checks.get(check_key)
            if check is None:
                return None
            if not check.live():
                del self._checks[check_key]  # the caller goes to the store (or refuses an expired SAS)
                return None
            entry = self._cache.get((check.location, transform))
            if entry is None or entry.etag != check.etag:  # evicted, or replaced by a newer upload
                return None
            self._hits += 1
            return entry

    def _from_shared(self, key_id: str, check_key: tuple[str, bytes], transform: object) -> _Entry | None:
        """The key another worker's still-valid check of this exact SAS vouches for, else None.

        The check keeps the deadline the store's answer set; the key is parsed here if this
        worker does not hold it at that ETag."""
        found = self._shared.check(*check_key)
        check = _Check(*found) if found is not None else None
        if check is None or not check.live():
            return None
        cache_key = (check.location, transform)
        with self._lock:
            entry = self._cache.get(cache_key)
        if entry is None or entry.etag != check.etag:
            data = self._shared.blob(check.location, check.etag, self.max_key_bytes)
            if data is None:
                return None
            entry = self._parse_and_cache(key_id, cache_key, check.etag, data, transform)
        with self._lock:
            self._checks[check_key] = check
            self._hits += 1
            self._shared_hits += 1
        return entry

    def _parse_and_cache(self, key_id: str, cache_key: tuple[str, object], etag: str, data: bytes,
                         transform: Callable[[bytes], Any] | None) -> _Entry:
        """``transform(data)`` (a ValueError is a 400), cached under ``cache_key`` at ``etag``."""
        value: Any = data
        if transform is not None:
            try:
                value = transform(data)
            except ValueError as exc:
                raise KeyRequestError(
                    f"key {key_id} could not be parsed: {redact(exc)[:200]}", code="InvalidKeyMaterial"
                ) from exc
        entry = _Entry(etag, value, _measure(value, len(data)))
        self._cache_put(cache_key, entry)
        return entry

    def _remember_check(self, check_key: tuple[str, bytes] | None, location: str, etag: str,
                        expires: float | None) -> None:
        if check_key is None or expires is None:
            return
        recheck_at = time.monotonic() + self.sas_recheck_seconds
        with self._lock:
            self._checks[check_key] = _Check(location, etag, recheck_at, expires)
        if self._shared is not None:
            self._shared.put_check(*check_key, location, etag, recheck_at, expires)

    def _holds(self, cache_key: tuple[str, object]) -> bool:
        with self._lock:
            return self._cache is not None and cache_key in self._cache

    def _download(self, key_id: str, location: str, blob: BlobClient, etag: str | None) -> tuple[bytes, str]:
        """The blob's bytes and ETag (``etag``: only that version), refusing one over ``max_key_bytes``
        after its first chunk (``max_single_get_size``)."""
        with self._lock:
            self._store_checks += 1
            if etag is None:
                self._misses += 1
        pinned = {"etag": etag, "match_condition": MatchConditions.IfNotModified} if etag else {}

        def get() -> tuple[bytes, str]:
            downloader = blob.download_blob(max_concurrency=1, **pinned)
            if downloader.size > self.max_key_bytes:
                raise KeyTooLargeError(f"key {key_id} is {downloader.size} bytes, over the "
                                       f"{self.max_key_bytes}-byte limit", code="KeyTooLarge")
            return downloader.readall(), str(downloader.properties.etag)

        return self._call(key_id, location, get)

    def _cache_get(self, cache_key: tuple[str, object], etag: str) -> _Entry | None:
        with self._lock:
            entry = self._cache.get(cache_key) if self._cache is not None else None
            if entry is not None and entry.etag == etag:
                self._hits += 1
                return entry
            self._misses += 1
            return None

    def _cache_put(self, cache_key: tuple[str, object], entry: _Entry) -> None:
        with self._lock:
            if self._cache is None:
                return
            self._cache.pop(cache_key, None)  # a stale ETag's entry must not linger
            if entry.nbytes <= self._cache.maxsize:
                self._cache[cache_key] = entry  # LRUCache evicts least-recent to fit

    def _client_options(self) -> dict[str, Any]:
        # One transport (hence one pooled requests.Session) per thread: the
        # per-request HEAD stays cheap, and requests sessions are not thread-safe.
        transport = getattr(self._local, "transport", None)
        if transport is None:
            transport = RequestsTransport(session=_guarded_session(self.store), session_owner=True,
                                          connection_timeout=self.timeout, read_timeout=self.timeout)
            self._local.transport = transport
        return {
            "transport": transport,
            "retry_policy": LinearRetry(backoff=0.2, retry_total=self.retries, random_jitter_range=0),
            "permit_redirects": False,  # a store's 3xx is an answer, never a second destination
            # An uncached key is fetched with one GET (no HEAD first): its first chunk bounds what an
            # oversized blob costs before it is refused.
            "max_single_get_size": min(self.max_key_bytes + 1, _FIRST_GET_BYTES),
            "max_chunk_get_size": _FIRST_GET_BYTES,
        }

    def _check_host(self, scheme: str, host: str | None, port: int | None) -> None:
        if scheme not in ("http", "https") or not host:
            raise KeyRequestError("storage endpoint must be an http(s) URL with a host", code="InvalidUrl")
        host, port = host.lower(), port or _DEFAULT_PORTS[scheme]
        if self.store is not None and (scheme, host, port) == self.store.endpoint:
            return
        name = f"{host}:{port}"
        if any(fnmatch.fnmatchcase(name, pat if ":" in pat else f"{pat}:{_DEFAULT_PORTS[scheme]}")
               for pat in self.allowed_hosts):
            return
        where = f"this service's key store is {self.store}" if self.store else "this service has no key store"
        raise KeyRequestError(f"storage host {name} is not allowed: {where}", code="HostNotAllowed")

    def _blob_client(
        self, key_id: str, key_url: str | None, conn_str: str | None, container: str | None
    ) -> tuple[BlobClient, str, float | None]:
        """The blob to read, its location (the cache key) and, for a SAS URL, its expiry if known."""
        if key_url is not None and (conn_str is not None or container is not None):
            raise KeyRequestError("give either key_url or conn_str + container, not both", code="AmbiguousKeySource")
        expires = None
        if key_url is not None:
            blob, expires = self._from_sas_url(key_id, key_url)
        elif conn_str is not None or container is not None:
            blob = self._from_conn_str(key_id, conn_str, container)
        else:
            raise KeyRequestError("key_url (or conn_str + container) is required", code="MissingKeySource")
        parts = urlsplit(blob.url)
        location = f"{parts.scheme.lower()}://{parts.netloc.lower()}{parts.path}"
        return blob, location, expires

    def _from_sas_url(self, key_id: str, key_url: str) -> tuple[BlobClient, float | None]:
        if not isinstance(key_url, str) or len(key_url) > _MAX_URL_CHARS:
            raise KeyRequestError("key_url must be a URL string of reasonable length", code="InvalidUrl")
        try:
            parts = urlsplit(key_url)
            port = parts.port
        except ValueError:
            raise KeyRequestError("key_url is not a valid URL", code="InvalidUrl") from None
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise KeyRequestError("key_url must not contain user info or a fragment", code="InvalidUrl")
        self._check_host(parts.scheme.lower(), parts.hostname, port)
        _check_sas_query(parts.query)
        query = parse_qs(parts.query)
        if "sig" not in query:
            # An unsigned URL would be an anonymous read: not what the protocol promises.
            raise KeyRequestError("key_url is not a SAS URL (no signature)", code="MissingSas")
        expires = _sas_expiry(query)
        if expires is not None and time.time() >= expires:
            raise KeyAccessDeniedError(f"access to key {key_id} denied: the SAS expired at {query['se'][0]}",
                                       code="SasExpired")
        try:
            blob = BlobClient.from_blob_url(key_url, **self._client_options())
        except (ValueError, TypeError):
            # The SDK's message quotes the URL, SAS included: do not pass it on.
            raise KeyRequestError("key_url is not a valid blob URL", code="InvalidUrl") from None
        if blob.blob_name != key_id:
            raise KeyRequestError("key_url does not name the blob key_id", code="KeyIdMismatch")
        if blob.snapshot is not None:
            raise KeyRequestError("key_url must not name a snapshot", code="InvalidUrl")
        return blob, expires

    def _from_conn_str(self, key_id: str, conn_str: str | None, container: str | None) -> BlobClient:
        if not isinstance(conn_str, str) or not conn_str or len(conn_str) > _MAX_CONN_STR_CHARS:
            raise KeyRequestError("conn_str must be a storage connection string", code="InvalidConnectionString")
        if not isinstance(container, str) or not CONTAINER_PATTERN.fullmatch(container):
            raise KeyRequestError("container is missing or not a valid container name", code="InvalidContainer")
        try:
            service = BlobServiceClient.from_connection_string(conn_str, **self._client_options())
        except (ValueError, TypeError):
            raise KeyRequestError("conn_str is not a valid storage connection string", code="InvalidConnectionString") from None
        # Require AccountKey= or SharedAccessSignature= (the SDK keeps the latter
        # in the URL and leaves credential None): anything else would be an
        # anonymous read, which the protocol does not allow.
        _check_sas_query(urlsplit(service.url).query)
        if service.credential is None and "sig" not in parse_qs(urlsplit(service.url).query):
            raise KeyRequestError("conn_str carries no credentials", code="InvalidConnectionString")
        # An account key in a request body is tolerated for the seed's clients, and only for the
        # account the service already reads keys from: never a way to name another store.
        if self.store is None or _Store.parse(service.url) != self.store:
            raise KeyRequestError(f"conn_str names another storage account than this service's key store "
                                  f"({self.store or 'none'})", code="HostNotAllowed")
        return service.get_blob_client(container, key_id)

    @staticmethod
    def _call(key_id: str, location: str, fn: Callable[[], Any]) -> Any:
        """Run a storage call, mapping SDK errors to KeyFetchError (no secrets, no chaining)."""
        host = urlsplit(location).netloc
        try:
            return fn()
        except KeyFetchError:
            raise
        except ResourceModifiedError:
            raise _Modified() from None
        except ClientAuthenticationError as exc:
            raise KeyAccessDeniedError(
                f"access to key {key_id} denied: SAS expired, forged or insufficient, or bad credentials "
                f"({_code(exc)})",
                code=_code(exc),
            ) from None
        except HttpResponseError as exc:
            status, code = exc.status_code or 0, _code(exc)
            if status in (401, 403):
                raise KeyAccessDeniedError(
                    f"access to key {key_id} denied: SAS expired, forged or insufficient, or bad credentials ({code})",
                    code=code,
                ) from None
            if status == 404:
                raise KeyNotFoundError(f"unknown key_id {key_id} ({code})", code=code) from None
            if 300 <= status < 400:
                raise KeyStoreUnavailableError(f"key store at {host} answered with a redirect (HTTP {status}), "
                                               "which the service does not follow", code="Redirect") from None
            if 400 <= status < 500:
                raise KeyRequestError(f"storage rejected the key request for {key_id}: HTTP {status} ({code})", code=code) from None
            raise KeyStoreUnavailableError(
                f"key store at {host} failed for key {key_id}: HTTP {status} ({code})", code=code
            ) from None
        except _PrivateAddress:
            raise KeyRequestError(f"storage host {host} is at a private address, which is refused unless it is "
                                  "this service's key store", code="HostNotAllowed") from None
        except (ServiceRequestError, ServiceResponseError):
            # One message whatever failed (refused, reset, timed out): it must not tell an open port
            # from a closed one.
            raise KeyStoreUnavailableError(f"key store at {host} is unreachable", code="StoreUnreachable") from None
        except Exception as exc:  # noqa: BLE001 - the SDK on an answer that is not a store's: a 502, never a 500
            log.warning("key store at %s gave an unusable answer for key %s: %s", host, key_id, type(exc).__name__)
            raise KeyStoreUnavailableError(f"key store at {host} is unreachable", code="StoreUnreachable") from None


_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class _Store:
    """A blob service's identity: scheme, host, port (the default made explicit) and, for an
    emulator's path-style URL (``http://host:port/<account>``), the account."""

    scheme: str
    host: str
    port: int
    account_path: str

    @classmethod
    def parse(cls, url: str) -> "_Store":
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"a key store must be an http(s) URL, not {url!r}")
        host = parts.hostname.lower()
        path = parts.path.strip("/").split("/")[0] if _is_address(host) else ""
        return cls(scheme, host, parts.port or _DEFAULT_PORTS[scheme], path)

    @property
    def endpoint(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    def __str__(self) -> str:
        return f"{self.host}:{self.port}" + (f"/{self.account_path}" if self.account_path else "")


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host == "localhost"


class _PrivateAddress(Exception):
    """A connection to an allowed host reached a non-public address (not an OSError: urllib3,
    requests and the SDK let it through untouched, to be refused with a 400, not retried)."""


def _is_public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])
    return (getattr(ip, "ipv4_mapped", None) or ip).is_global


class _PublicPeers:
    """urllib3 connection mix-in: a host that is not the key store (``_trusted``) must be public.

    Before connecting, every address its name resolves to must be global (not loopback, private,
    link-local, shared or reserved): refused at once, so a closed port there looks like an open
    one. After connecting, the socket's own peer is checked again, so DNS cannot change the
    answer between the check and the connect."""

    _trusted: tuple[str, int] | None = None

    def _new_conn(self):
        if (self.host.lower(), self.port) == self._trusted:
            return super()._new_conn()
        try:
            resolved = {info[4][0] for info in socket.getaddrinfo(self._dns_host, self.port, type=socket.SOCK_STREAM)}
        except OSError:
            resolved = set()  # the connect below fails the same way
        if not all(_is_public(address) for address in resolved):
            raise _PrivateAddress(self.host)
        sock = super()._new_conn()
        if not _is_public(sock.getpeername()[0]):
            sock.close()
            raise _PrivateAddress(self.host)
        return sock


def _guarded_session(store: _Store | None) -> Session:
    """A requests session whose connections only reach public peers, and the store."""
    trusted = (store.host, store.port) if store else None
    pools = {}
    for scheme, pool in (("http", HTTPConnectionPool), ("https", HTTPSConnectionPool)):
        connection = type(f"_Guarded{pool.ConnectionCls.__name__}", (_PublicPeers, pool.ConnectionCls),
                          {"_trusted": trusted})
        pools[scheme] = type(f"_Guarded{pool.__name__}", (pool,), {"ConnectionCls": connection})

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def send(self, request: Any, **kwargs: Any) -> Any:
            # Never through a proxy from the environment: the peer checked must be the store itself.
            return super().send(request, **{**kwargs, "proxies": {}})

    session = Session()
    adapter = Adapter(max_retries=Retry(total=False, redirect=False, raise_on_status=False))  # as azure-core's
    for prefix in ("http://", "https://"):
        session.mount(prefix, adapter)
    return session


def _check_sas_query(query: str) -> None:
    for values in parse_qs(query, keep_blank_values=True).values():
        if any(_BAD_ESCAPE.search(value) for value in values):
            raise KeyRequestError("the SAS has malformed percent-encoding", code="InvalidSas")


def _sas_expiry(query: dict[str, list[str]]) -> float | None:
    """The SAS's ``se`` as epoch seconds, or None when it is absent or not in a form read here."""
    values = query.get("se")
    if not values or len(values) != 1 or not _SAS_EXPIRY.fullmatch(values[0]):
        return None
    try:
        return dt.datetime.fromisoformat(values[0]).timestamp()  # 'Z': an aware UTC datetime
    except ValueError:
        return None


class _Modified(Exception):
    """Internal: the blob's ETag changed between HEAD and download."""


def _code(exc: HttpResponseError) -> str:
    code = getattr(exc, "error_code", None)
    return str(getattr(code, "value", code) or f"HTTP {exc.status_code}")
