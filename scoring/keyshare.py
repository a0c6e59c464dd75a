"""Verified public keys shared by the workers of one deployment, through one directory.

A scoring service runs several worker processes (gunicorn), each with its own
:class:`~aideploy_scoring.keyfetch.KeyFetcher`. Alone, every worker fetches every client's
key from the store, and each worker's first query with a new key waits for that round trip
(~10 ms with Azurite: a GET, the SDK, parsing). With a shared directory
(``AIDEPLOY_KEY_SHARE_DIR``), a worker that fetched or re-checked a key with the store writes:

* ``blobs/<sha256(location, ETag)>``: the key's bytes, as the store returned them;
* ``checks/<sha256(key_id, SAS URL)>``: the store's positive answer to that exact SAS
  (location, ETag, when it must be asked again, the SAS's ``se``).

Another worker then answers its first request with that SAS from the two files: it parses the
key itself, and asks the store nothing. Its guarantees are those of its own remembered checks
(:mod:`.keyfetch`):

* the check's deadline is the one the store's answer set: ``time.monotonic()`` is
  CLOCK_MONOTONIC, one clock for every process of the machine, and reading a check never
  renews it. A deleted or re-uploaded blob, or a revoked SAS, is noticed by every worker
  within ``sas_recheck_seconds`` of the store's last answer;
* the SAS's ``se`` is enforced on every request;
* a forged or altered SAS has another digest, finds no file and goes to the store;
* only a SHA-256 of the SAS URL is written, never the SAS; the keys are public keys.

The directory is the service's own: it must belong to this user and grant nobody else any
access, or sharing stays off (logged). Blobs are bounded by ``max_bytes`` (least recently
read first out); checks are dropped once their deadline has passed, and are capped in count.
A failed read is a miss and a failed write is logged: sharing never fails a request.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("aideploy.scoring")

SHARE_DIR_ENV = "AIDEPLOY_KEY_SHARE_DIR"
_TMP_PREFIX = ".tmp-"
_PRUNE_EVERY = 1.0  # seconds between two sweeps of expired checks by one process
# Another worker may remove or replace any file at any time: such an OSError is not an error.
_quiet = contextlib.suppress(OSError)


def _name(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else part
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.hexdigest()


def private_directory(path: str | os.PathLike) -> Path:
    """``path``, created (mode 0700) if missing; it must be a directory of this user that grants nobody
    else any access (else :class:`ValueError`)."""
    root = Path(path)
    os.makedirs(root, mode=0o700, exist_ok=True)
    info = os.lstat(root)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ValueError(f"{root} must be a directory of this user with no access for anyone else "
                         f"(it is mode {stat.filemode(info.st_mode)}, owner uid {info.st_uid})")
    return root


class SharedKeys:
    """The shared directory of one deployment: key bytes and positive SAS checks.

    Args:
        directory: Created (mode 0700) if missing; if present, it must be a directory of this
            user with no group or other permissions (else :class:`ValueError`).
        max_bytes: Bound on the key bytes kept (least recently read blobs are removed first).
        recheck_seconds: How long a check lives; older check files are removed.
        max_checks: Bound on the number of check files.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int, recheck_seconds: float,
                 max_checks: int = 4096) -> None:
        self.root = Path(directory)
        self.max_bytes, self.recheck_seconds, self.max_checks = int(max_bytes), float(recheck_seconds), int(max_checks)
        self._blobs, self._checks = self.root / "blobs", self.root / "checks"
        private_directory(self.root)
        for sub in (self._blobs, self._checks):
            sub.mkdir(mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._pruned = 0.0
        self._warned = False

    # ------------------------------------------------------------------ reads
    def check(self, key_id: str, url_digest: bytes) -> tuple[str, str, float, float] | None:
        """``(location, etag, recheck_at, expires)`` of the stored check of this SAS, or None."""
        try:
            record = json.loads((self._checks / _name(key_id, url_digest)).read_bytes())
            return (str(record["location"]), str(record["etag"]), float(record["recheck_at"]),
                    float(record["expires"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def blob(self, location: str, etag: str, max_bytes: int) -> bytes | None:
        """The stored bytes of ``location`` at ``etag`` (at most ``max_bytes``), or None."""
        try:
            with open(self._blobs / _name(location, etag), "rb") as f:
                if os.fstat(f.fileno()).st_size > max_bytes:
                    return None
                data = f.read(max_bytes + 1)
                os.utime(f.fileno())  # recently read: the last to be removed
        except OSError:
            return None
        return data if len(data) <= max_bytes else None

    # ----------------------------------------------------------------- writes
    def put_check(self, key_id: str, url_digest: bytes, location: str, etag: str, recheck_at: float,
                  expires: float) -> None:
        """Record the store's positive answer to this SAS (its deadline unchanged)."""
        record = json.dumps({"location": location, "etag": etag, "recheck_at": recheck_at, "expires": expires})
        self._write(self._checks / _name(key_id, url_digest), record.encode())
        now = time.monotonic()
        if now - self._pruned >= _PRUNE_EVERY:
            self._pruned = now
            self._prune(self._checks, self._expired_checks)

    def put_blob(self, location: str, etag: str, data: bytes) -> None:
        """Keep the key bytes of ``location`` at ``etag``, within ``max_bytes`` in all."""
        if len(data) > self.max_bytes:
            return
        path = self._blobs / _name(location, etag)
        try:
            if path.stat().st_size == len(data):
                return  # another worker wrote it
        except OSError:
            pass
        self._write(path, data)
        self._prune(self._blobs, self._over_budget)

    @property
    def bytes_held(self) -> int:
        """The key bytes in the directory now."""
        return sum(size for _, size, _ in self._entries(self._blobs))

    # -------------------------------------------------------------- internals
    def _write(self, path: Path, data: bytes) -> None:
        """Whole or not at all: a reader never sees half a file."""
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TMP_PREFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
            except BaseException:
                with _quiet:
                    os.unlink(tmp)
                raise
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("could not write to the shared key directory %s (%s): workers fetch keys themselves",
                            self.root, exc)

    @staticmethod
    def _entries(folder: Path) -> list[tuple[str, int, float]]:
        """``(path, size, mtime)`` of the files in ``folder``; a write's leftover (a worker killed
        mid-write) older than a minute is removed on the way."""
        entries, stale = [], time.time() - 60.0
        with _quiet, os.scandir(folder) as it:
            for entry in it:
                with _quiet:
                    info = entry.stat(follow_symlinks=False)
                    if entry.name.startswith(_TMP_PREFIX):
                        if info.st_mtime < stale:
                            os.unlink(entry.path)
                        continue
                    entries.append((entry.path, info.st_size, info.st_mtime))
        return entries

    def _expired_checks(self, entries: list[tuple[str, int, float]]) -> list[str]:
        """Checks written longer ago than a check lives, then the oldest beyond ``max_checks``."""
        oldest_live = time.time() - self.recheck_seconds - 1.0
        expired = [path for path, _, mtime in entries if mtime < oldest_live]
        live = sorted((e for e in entries if e[2] >= oldest_live), key=lambda e: e[2])
        return expired + [path for path, _, _ in live[:max(0, len(live) - self.max_checks)]]

    def _over_budget(self, entries: list[tuple[str, int, float]]) -> list[str]:
        total, doomed = sum(size for _, size, _ in entries), []
        for path, size, _ in sorted(entries, key=lambda e: e[2]):
            if total <= self.max_bytes:
                break
            doomed.append(path)
            total -= size
        return doomed

    def _prune(self, folder: Path, select) -> None:
        with self._lock:
            for path in select(self._entries(folder)):
                with _quiet:
                    os.unlink(path)
