"""The deployment's limits, counted in one store that every worker and instance shares.

For model privacy the client is the adversary: it may use many key ids, start many keys and
send each request to whichever worker (or replica) suits it. A limit kept in one worker's
memory holds only for the requests that worker happens to see, so every count lives in one
store of the deployment:

* **query budgets** (:class:`QueryBudget`): samples per client key through round 1 of the MLP
  protocol (``max_queries_per_key``, a 429 beyond), keyed by the key's cryptographic id (a
  digest of the public key material), never by the blob name a request gives; and samples
  per query (``max_samples_per_query``, a 400 beyond, counted in the request itself);
* **spent round tokens** (``first_use``/``forget_use``): an MLP round token is answered once
  by the whole deployment, whichever worker sees it and whatever that worker has evicted;
* **new keys** (:class:`KeyAdmission`): keys the deployment has not seen before, at most
  ``max_new_keys_per_hour`` in any sliding hour (a 429 beyond). A budget per key bounds what
  one key learns; this bounds how fast a client can make keys to get more budget.

Stores (:func:`open_store`, from ``AIDEPLOY_LIMITS_STORE``):

* :class:`SqliteStore`: a file on a disk every worker sees (``target=local`` puts it in the
  deployment's private directory and removes it with the deployment). Each operation is one
  SQLite transaction (WAL): ~0.1 ms;
* :class:`BlobStore`: a blob container of the deployment's storage account (Azure, one store for
  every replica), every update a conditional write (``If-Match`` on the blob's ETag, or
  ``If-None-Match: *`` for a new blob) retried on conflict: one or two round trips to the store;
* :class:`MemoryStore`: one process only (tests, tools, and a service started without a
  store, which says so in a warning).

A store that cannot be reached refuses the request (503, :class:`LimitsUnavailable`): a limit
that cannot be counted is not skipped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import threading
import time
from typing import Callable, Protocol

from aideploy_scoring import settings
from aideploy_scoring.service import RequestError

log = logging.getLogger("aideploy.scoring")

HOUR = 3600.0
_PRUNE_EVERY = 60.0  # seconds between two sweeps of expired tokens by one process


class LimitExceeded(Exception):
    """A limit refused the request: a 429 (not a ValueError, so that a key fetch's parse step
    does not turn it into a 400 for bad key material)."""

    status = 429


class LimitsUnavailable(Exception):
    """The limits store could not be read or written: a 503."""

    status = 503


class Store(Protocol):
    """What a limits store does; each method is atomic across every process using the store."""

    def add(self, key: str, n: int, limit: int) -> tuple[bool, int]:
        """Add ``n`` to ``key``'s count if the sum stays within ``limit``: ``(added, count before)``."""

    def subtract(self, key: str, n: int) -> None:
        """Take ``n`` off ``key``'s count (not below 0)."""

    def first_use(self, token: bytes, expiry: float) -> bool:
        """Record ``token`` as used until ``expiry`` (epoch seconds); False if it already was."""

    def forget_use(self, token: bytes, expiry: float) -> None:
        """Undo :meth:`first_use` (a refused request spends nothing)."""

    def admit(self, key: str, per_hour: int, now: float) -> bool:
        """True if ``key`` is known, or is new and fewer than ``per_hour`` keys were new in the hour
        before ``now`` (then it is known from now on); False otherwise."""


# ------------------------------------------------------------------------------ policies


class QueryBudget:
    """Round-1 samples per client key, refused (429) beyond ``limit``, over everything that shares
    ``store``; and samples per query, refused (400) beyond ``per_query``. 0: unlimited.

    ``key_id`` is the key's cryptographic id (``FastPublicKey.key_id``): the same public key under
    any blob name is one budget.
    """

    def __init__(self, limit: int, per_query: int = 0, store: Store | None = None) -> None:
        self.limit, self.per_query = int(limit), int(per_query)
        self.store = store if store is not None else MemoryStore()

    def spend(self, key_id: str, n: int) -> None:
        if 0 < self.per_query < n:
            raise RequestError(f"a query of {n} samples is refused: this service takes at most {self.per_query} "
                               "per query (max_samples_per_query); send predict.batch_size="
                               f"{self.per_query} or fewer")
        if self.limit <= 0:
            return
        added, used = self.store.add(key_id, n, self.limit)
        if not added:
            raise RequestError(f"key {key_id} has used {used} of its {self.limit} queries on this service "
                               f"(max_queries_per_key); a query of {n} more is refused", 429)

    def refund(self, key_id: str, n: int) -> None:
        if self.limit > 0:
            self.store.subtract(key_id, n)


class KeyAdmission:
    """New client keys, at most ``per_hour`` in any sliding hour over everything that shares
    ``store`` (0: unlimited); a key seen before is always admitted."""

    def __init__(self, per_hour: int, store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self.per_hour = int(per_hour)
        self.store = store if store is not None else MemoryStore()
        self._clock = clock

    def admit(self, key_id: str) -> None:
        """Raise :class:`LimitExceeded` if ``key_id`` is new and the hour's new keys are used up."""
        if self.per_hour > 0 and not self.store.admit(key_id, self.per_hour, self._clock()):
            raise LimitExceeded(f"key {key_id} is refused: this service takes on at most {self.per_hour} new keys "
                                "an hour (max_new_keys_per_hour); use a key it already knows, or try later")


# ------------------------------------------------------------------------------ stores


class MemoryStore:
    """A store in this process only."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._tokens: dict[bytes, float] = {}
        self._keys: dict[str, float] = {}
        self._lock = threading.Lock()
        self._pruned = 0.0

    def add(self, key: str, n: int, limit: int) -> tuple[bool, int]:
        with self._lock:
            used = self._counts.get(key, 0)
            if used + n > limit:
                return False, used
            self._counts[key] = used + n
            return True, used

    def subtract(self, key: str, n: int) -> None:
        with self._lock:
            self._counts[key] = max(0, self._counts.get(key, 0) - n)

    def first_use(self, token: bytes, expiry: float) -> bool:
        now = time.time()
        with self._lock:
            if now - self._pruned > _PRUNE_EVERY:
                self._pruned = now
                self._tokens = {t: e for t, e in self._tokens.items() if e >= now}
            if token in self._tokens:
                return False
            self._tokens[token] = expiry
            return True

    def forget_use(self, token: bytes, expiry: float) -> None:
        with self._lock:
            self._tokens.pop(token, None)

    def admit(self, key: str, per_hour: int, now: float) -> bool:
        with self._lock:
            if key in self._keys:
                return True
            if sum(1 for t in self._keys.values() if t > now - HOUR) >= per_hour:
                return False
            self._keys[key] = now
            return True


class SqliteStore:
    """A store in one SQLite file (WAL), shared by the processes of one machine."""

    _SCHEMA = """
        CREATE TABLE IF NOT EXISTS budgets (key TEXT PRIMARY KEY, used INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS tokens (token BLOB PRIMARY KEY, expiry REAL NOT NULL);
        CREATE INDEX IF NOT EXISTS tokens_expiry ON tokens (expiry);
        CREATE TABLE IF NOT EXISTS keys (key TEXT PRIMARY KEY, admitted REAL NOT NULL);
        CREATE INDEX IF NOT EXISTS keys_admitted ON keys (admitted);
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        self._local = threading.local()
        self._pruned = 0.0
        self._db().executescript(self._SCHEMA)

    def _db(self) -> sqlite3.Connection:
        # One connection per thread (sqlite3 connections are not shared between threads);
        # autocommit, with explicit BEGIN IMMEDIATE where a read decides a write.
        db = getattr(self._local, "db", None)
        if db is None:
            try:
                db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, consistent always
            except sqlite3.Error as exc:
                raise LimitsUnavailable(f"the limits store {self.path} cannot be opened: {exc}") from None
            self._local.db = db
        return db

    def _run(self, fn: Callable[[sqlite3.Connection], object]) -> object:
        db = self._db()
        try:
            return fn(db)
        except sqlite3.Error as exc:
            if db.in_transaction:
                db.rollback()
            raise LimitsUnavailable(f"the limits store {self.path} failed: {exc}") from None

    def add(self, key: str, n: int, limit: int) -> tuple[bool, int]:
        def add(db: sqlite3.Connection) -> tuple[bool, int]:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT used FROM budgets WHERE key = ?", (key,)).fetchone()
            used = row[0] if row else 0
            if used + n > limit:
                db.rollback()
                return False, used
            db.execute("INSERT INTO budgets (key, used) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET used = ?",
                       (key, used + n, used + n))
            db.commit()
            return True, used

        return self._run(add)

    def subtract(self, key: str, n: int) -> None:
        self._run(lambda db: db.execute("UPDATE budgets SET used = MAX(0, used - ?) WHERE key = ?", (n, key)))

    def first_use(self, token: bytes, expiry: float) -> bool:
        now = time.time()

        def use(db: sqlite3.Connection) -> bool:
            if now - self._pruned > _PRUNE_EVERY:
                self._pruned = now
                db.execute("DELETE FROM tokens WHERE expiry < ?", (now,))
            return db.execute("INSERT OR IGNORE INTO tokens (token, expiry) VALUES (?, ?)",
                              (token, expiry)).rowcount == 1

        return self._run(use)

    def forget_use(self, token: bytes, expiry: float) -> None:
        self._run(lambda db: db.execute("DELETE FROM tokens WHERE token = ?", (token,)))

    def admit(self, key: str, per_hour: int, now: float) -> bool:
        def admit(db: sqlite3.Connection) -> bool:
            db.execute("BEGIN IMMEDIATE")
            if db.execute("SELECT 1 FROM keys WHERE key = ?", (key,)).fetchone():
                db.rollback()
                return True
            recent = db.execute("SELECT COUNT(*) FROM keys WHERE admitted > ?", (now - HOUR,)).fetchone()[0]
            if recent >= per_hour:
                db.rollback()
                return False
            db.execute("INSERT INTO keys (key, admitted) VALUES (?, ?)", (key, now))
            db.commit()
            return True

        return self._run(admit)


class BlobStore:
    """A store in one blob container: one blob per count, conditional writes on ETags.

    ``budgets/<key>`` holds a count; ``tokens/<hour of expiry>/<token>`` marks a spent token
    (created with ``If-None-Match: *``: exactly one writer wins), and hours past are deleted in
    whole; ``keys/<key>`` marks a known key and ``new-keys`` lists the admission times of the last
    hour. The container is the service's own: clients, who hold write access to the key
    container, must have none to this one.
    """

    MAX_ATTEMPTS = 32  # conditional writes lost to other writers before the store is called unavailable

    def __init__(self, container) -> None:  # an azure.storage.blob.ContainerClient
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError

        self._container = container
        self._if_match = MatchConditions.IfNotModified
        self._lost = (ResourceExistsError, ResourceModifiedError)
        self._missing = ResourceNotFoundError
        self._exists = ResourceExistsError
        self._pruned = 0.0
        self._call(self._create_container)

    @classmethod
    def from_url(cls, url: str, credential: str | None) -> "BlobStore":
        """The container at ``url`` (``https://<account>.blob.core.windows.net/<container>``, or an
        emulator's ``http://host:port/<account>/<container>``) with an account key or SAS token."""
        from azure.core.credentials import AzureSasCredential
        from azure.storage.blob import ContainerClient, LinearRetry

        if not credential:
            raise LimitsUnavailable(f"the limits store {url} needs a credential: set {CREDENTIAL} (its account key "
                                    "or a SAS token for the container)")
        cred = AzureSasCredential(credential.lstrip("?")) if "sig=" in credential else credential
        # Short timeouts and two quick retries: this runs inside a request (the SDK's default backoff
        # would hold a worker for half a minute on a store that is down).
        container = ContainerClient.from_container_url(
            url, credential=cred, connection_timeout=5, read_timeout=10,
            retry_policy=LinearRetry(backoff=0.2, retry_total=2, random_jitter_range=0))
        return cls(container)

    def _create_container(self) -> None:
        try:
            self._container.create_container()
        except self._exists:
            pass

    def _call(self, fn: Callable[[], object]) -> object:
        from azure.core.exceptions import AzureError

        try:
            return fn()
        except AzureError as exc:
            raise LimitsUnavailable(f"the limits store {self._container.url} failed: {type(exc).__name__} "
                                    f"({getattr(exc, 'status_code', None) or 'no answer'})") from None

    def _read(self, name: str) -> tuple[bytes | None, str | None]:
        try:
            downloader = self._container.get_blob_client(name).download_blob()
            return downloader.readall(), downloader.properties.etag
        except self._missing:
            return None, None

    def _write(self, name: str, data: bytes, etag: str | None) -> bool:
        """Write ``data`` if ``name`` is still at ``etag`` (None: does not exist); False if another won."""
        blob = self._container.get_blob_client(name)
        try:
            if etag is None:
                blob.upload_blob(data, overwrite=False)
            else:
                blob.upload_blob(data, overwrite=True, etag=etag, match_condition=self._if_match)
            return True
        except self._lost:
            return False

    def _update(self, name: str, change: Callable[[bytes | None], bytes | None]) -> None:
        """Read-modify-write ``name`` until no other writer came in between; ``change`` returns
        the new content, or None for no write."""
        for attempt in range(self.MAX_ATTEMPTS):
            data, etag = self._call(lambda: self._read(name))
            new = change(data)
            if new is None or self._call(lambda: self._write(name, new, etag)):
                return
            time.sleep(random.uniform(0, 0.002 * (attempt + 1)))
        raise LimitsUnavailable(f"the limits store {self._container.url} is too contended: {name} kept changing")

    def add(self, key: str, n: int, limit: int) -> tuple[bool, int]:
        outcome: list = []

        def change(data: bytes | None) -> bytes | None:
            used = int(data or b"0")
            outcome[:] = [used + n <= limit, used]
            return str(used + n).encode() if outcome[0] else None

        self._update(f"budgets/{key}", change)
        return outcome[0], outcome[1]

    def subtract(self, key: str, n: int) -> None:
        self._update(f"budgets/{key}", lambda data: None if data is None else str(max(0, int(data) - n)).encode())

    @staticmethod
    def _token_blob(token: bytes, expiry: float) -> str:
        return f"tokens/{int(expiry // HOUR)}/{token.hex()}"

    def first_use(self, token: bytes, expiry: float) -> bool:
        self._prune_tokens()
        return self._call(lambda: self._write(self._token_blob(token, expiry), b"", None))

    def forget_use(self, token: bytes, expiry: float) -> None:
        def delete() -> None:
            try:
                self._container.delete_blob(self._token_blob(token, expiry))
            except self._missing:
                pass

        self._call(delete)

    def _prune_tokens(self) -> None:
        """Delete the spent tokens of hours that have passed (they are refused as expired anyway)."""
        now = time.time()
        if now - self._pruned < _PRUNE_EVERY:
            return
        self._pruned = now
        current = int(now // HOUR)

        def prune() -> None:
            for prefix in self._container.walk_blobs(name_starts_with="tokens/", delimiter="/"):
                hour = prefix.name.rstrip("/").rsplit("/", 1)[-1]
                if hour.isdigit() and int(hour) < current:
                    for blob in self._container.list_blobs(name_starts_with=prefix.name):
                        try:
                            self._container.delete_blob(blob.name)
                        except self._missing:
                            pass

        self._call(prune)

    def admit(self, key: str, per_hour: int, now: float) -> bool:
        marker = self._container.get_blob_client(f"keys/{key}")
        if self._call(marker.exists):
            return True
        admitted: list[bool] = []

        def change(data: bytes | None) -> bytes | None:
            recent = [t for t in (json.loads(data) if data else []) if t > now - HOUR]
            admitted[:] = [len(recent) < per_hour]
            return json.dumps(recent + [now]).encode() if admitted[0] else None

        self._update("new-keys", change)
        if admitted[0]:
            self._call(lambda: self._write(f"keys/{key}", b"", None))  # two workers admitting one key: counted twice
        return admitted[0]


# ------------------------------------------------------------------------------ from settings

STORE = "AIDEPLOY_LIMITS_STORE"
CREDENTIAL = "AIDEPLOY_LIMITS_STORE_CREDENTIAL"


def open_store(location: str | None = None, credential: str | None = None) -> Store:
    """The store at ``location`` (default ``AIDEPLOY_LIMITS_STORE``): an SQLite file (``server``: in the
    server's private directory), a blob container URL (with ``credential``, default the secret setting
    ``AIDEPLOY_LIMITS_STORE_CREDENTIAL``: Key Vault or the environment), or, unset, this process's memory
    (with a warning when there are more workers)."""
    location = location if location is not None else settings.get(STORE)
    if location is None:
        if settings.get("WORKER_COUNT") > 1:
            log.warning("%s is not set: query budgets, spent round tokens and new keys are counted per worker, "
                        "so each of the %d workers grants them anew", STORE, settings.get("WORKER_COUNT"))
        return MemoryStore()
    if location.startswith(("http://", "https://")):
        if credential is None:
            from aideploy_scoring.secret_settings import secret

            credential = secret(CREDENTIAL)
        return BlobStore.from_url(location, credential)
    if location == settings.SERVER_STORE:
        return SqliteStore(server_store_path())
    return SqliteStore(location)


def server_store_path() -> str:
    """The SQLite file of ``AIDEPLOY_LIMITS_STORE=server``: in the private directory this server's workers
    share (``AIDEPLOY_KEY_SHARE_DIR``), so it counts for one server, which is the whole deployment on
    ``target=aci`` (one container). A restarted container starts counting anew."""
    from aideploy_scoring.keyshare import SHARE_DIR_ENV, private_directory

    directory = settings.get(SHARE_DIR_ENV)
    if not directory:
        raise LimitsUnavailable(f"{STORE}={settings.SERVER_STORE} needs {SHARE_DIR_ENV}, the server's private "
                                "directory (score.py sets it)")
    try:
        return str(private_directory(directory) / "limits.sqlite")
    except (OSError, ValueError) as exc:
        raise LimitsUnavailable(f"the limits store in {directory} cannot be opened: {exc}") from None
