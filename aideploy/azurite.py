"""Run a private Azurite blob service (the local Azure Blob Storage emulator).

Azurite comes from the repository's own ``package.json``/``package-lock.json``
(``npm ci`` in the repo root), never from a global install, so every developer
and CI run uses the same pinned emulator.

Typical use::

    with AzuriteServer() as azurite:
        store = BlobKeyStore.from_connection_string(azurite.connection_string, "keys")

Only the *blob* service is started.  The server listens on ``host`` (127.0.0.1
by default; pass e.g. ``"10.0.1.5"`` together with
``argv_prefix=["ip", "netns", "exec", "ns1"]`` to run it inside a network
namespace) on a free port, keeps its data in a private temporary directory and
runs in its own session so :meth:`AzuriteServer.stop` can take down the whole
process group.

If a storage account is already running (a shared Azurite, or real Azure), there
is nothing to start: use its connection string directly, or use
:func:`blob_storage`, which only starts Azurite when no connection string is
configured.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import ssl
import tempfile
import weakref
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from aideploy.process import ManagedProcess

__all__ = [
    "AzuriteError",
    "AzuriteNotInstalledError",
    "AzuriteServer",
    "DEV_ACCOUNT_NAME",
    "DEV_ACCOUNT_KEY",
    "dev_connection_string",
    "find_node_modules",
    "parse_listening_url",
    "blob_storage",
]

#: Azurite's built-in development account.  Name and key are published by
#: Microsoft (https://learn.microsoft.com/azure/storage/common/storage-use-azurite)
#: and are the same for every Azurite install; they are not a secret.
DEV_ACCOUNT_NAME = "devstoreaccount1"
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="

#: Environment variable pointing at a ``node_modules`` directory holding Azurite.
NODE_MODULES_ENV = "AIDEPLOY_NODE_MODULES"
#: Environment variable naming the ``node`` executable to use.
NODE_ENV = "AIDEPLOY_NODE"
#: Environment variable with a connection string to an already-running account
#: (used by :func:`blob_storage` instead of starting Azurite).
CONNECTION_STRING_ENV = "AIDEPLOY_BLOB_CONNECTION_STRING"

# The repo root is the parent of the ``aideploy`` package directory for the
# editable install this project uses.
_REPO_ROOT = Path(__file__).resolve().parent.parent

# Printed by Azurite's blob main.js once the HTTP server is listening; with
# ``--blobPort 0`` it is the only place the kernel-chosen port is reported.
_LISTENING_RE = re.compile(r"Blob service successfully listens on (https?)://(\S+)")

# Live servers, so an interpreter exit never leaks a node process group.
_LIVE: "weakref.WeakSet[AzuriteServer]" = weakref.WeakSet()


class AzuriteError(RuntimeError):
    """Azurite could not be started (or did not become ready)."""


class AzuriteNotInstalledError(AzuriteError):
    """The project's ``node_modules`` (with Azurite) is missing."""


def dev_connection_string(blob_endpoint: str) -> str:
    """Return a connection string for Azurite's dev account at ``blob_endpoint``.

    ``blob_endpoint`` is the account URL, e.g.
    ``http://127.0.0.1:10000/devstoreaccount1``.
    """
    scheme = blob_endpoint.split("://", 1)[0] if "://" in blob_endpoint else "http"
    return (
        f"DefaultEndpointsProtocol={scheme};"
        f"AccountName={DEV_ACCOUNT_NAME};"
        f"AccountKey={DEV_ACCOUNT_KEY};"
        f"BlobEndpoint={blob_endpoint.rstrip('/')};"
    )


def parse_listening_url(log_text: str) -> str | None:
    """Return the ``http(s)://host:port`` Azurite reports it listens on, or None.

    For callers that launch :meth:`AzuriteServer.command` themselves with
    ``--blobPort 0`` and need the port the kernel picked.
    """
    match = _LISTENING_RE.search(log_text)
    return f"{match.group(1)}://{match.group(2).rstrip('/')}" if match else None


def find_node_modules(node_modules: str | os.PathLike[str] | None = None) -> Path:
    """Locate the ``node_modules`` directory that contains Azurite.

    Search order: the ``node_modules`` argument, ``$AIDEPLOY_NODE_MODULES``, the
    repository root (next to ``package.json``), then the current directory and
    its parents.

    Raises:
        AzuriteNotInstalledError: nothing found; the message says to run
            ``npm ci`` in the repository.
    """
    candidates: list[Path] = []
    if node_modules is not None:
        candidates.append(Path(node_modules))
    elif os.environ.get(NODE_MODULES_ENV):
        # An explicit override is authoritative: silently falling back to some
        # other install would hide a misconfiguration.
        candidates.append(Path(os.environ[NODE_MODULES_ENV]))
    else:
        candidates.append(_REPO_ROOT / "node_modules")
        cwd = Path.cwd().resolve()
        candidates.extend(p / "node_modules" for p in (cwd, *cwd.parents))
    seen: list[Path] = []
    for cand in candidates:
        if cand in seen:
            continue
        seen.append(cand)
        if (cand / "azurite" / "package.json").is_file():
            return cand.resolve()
    if node_modules is None and not os.environ.get(NODE_MODULES_ENV) and _install_on_first_use():
        return (_REPO_ROOT / "node_modules").resolve()
    tried = ", ".join(str(p) for p in seen[:4]) + (" ..." if len(seen) > 4 else "")
    raise AzuriteNotInstalledError(
        f"Azurite is not installed (looked for azurite/package.json in: {tried}). "
        f"Run `npm ci` in the aideploy repository ({_REPO_ROOT}) to install it from "
        f"package-lock.json, or set {NODE_MODULES_ENV} to a node_modules directory "
        "that contains azurite."
    )


def _install_on_first_use() -> bool:
    """``npm ci`` in the repository, once, the first time a run needs Azurite (``make run`` installs
    only what the default, plain run needs). False where there is no lock file or no npm, or the
    install failed (the caller then says how to install it)."""
    import logging
    import subprocess

    from aideploy.fsutil import locked_file

    lock = _REPO_ROOT / "package-lock.json"
    npm = shutil.which("npm")
    if not lock.is_file() or npm is None:
        return False
    with locked_file(_REPO_ROOT / ".npm-install.lock"):  # concurrent runs install once
        if (_REPO_ROOT / "node_modules" / "azurite" / "package.json").is_file():
            return True
        logging.getLogger("aideploy").info("      installing Azurite from %s (npm ci, once)", lock)
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=_REPO_ROOT,
                              capture_output=True, text=True)
    if done.returncode != 0:
        logging.getLogger("aideploy").warning("npm ci failed: %s", (done.stderr or done.stdout).strip()[-500:])
        return False
    return (_REPO_ROOT / "node_modules" / "azurite" / "package.json").is_file()


def _blob_entry(node_modules: Path) -> Path:
    """Return the JS entry point of Azurite's ``azurite-blob`` command."""
    pkg_json = node_modules / "azurite" / "package.json"
    try:
        bins = json.loads(pkg_json.read_text(encoding="utf-8")).get("bin", {})
        rel = bins["azurite-blob"] if isinstance(bins, dict) else None
    except (OSError, ValueError, KeyError) as exc:
        raise AzuriteNotInstalledError(
            f"{pkg_json} is unreadable or has no 'azurite-blob' bin entry ({exc}); "
            f"re-run `npm ci` in {_REPO_ROOT}"
        ) from exc
    entry = (node_modules / "azurite" / rel).resolve()
    if not entry.is_file():
        raise AzuriteNotInstalledError(f"Azurite blob entry {entry} is missing; re-run `npm ci` in {_REPO_ROOT}")
    return entry


def _find_node(node: str | None) -> str:
    exe = node or os.environ.get(NODE_ENV) or "node"
    path = shutil.which(exe)
    if path is None:
        raise AzuriteNotInstalledError(
            f"Node.js executable {exe!r} not found on PATH; install Node.js (>= 20) or set {NODE_ENV}"
        )
    return path


def _url_host(host: str) -> str:
    """Host as it must appear in a URL (IPv6 literals get brackets)."""
    try:
        if isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address):
            return f"[{host}]"
    except ValueError:
        pass
    return host


class AzuriteServer:
    """A private Azurite blob service process.

    Args:
        host: Address to listen on (``--blobHost``).  ``127.0.0.1`` by default;
            inside a network namespace pass that namespace's address.
        port: TCP port; ``0`` (default) lets the kernel choose a free port, which
            is race-free, and the real port is read from Azurite's startup line.
        node_modules: Directory containing ``azurite``; see :func:`find_node_modules`.
        node: ``node`` executable (default ``$AIDEPLOY_NODE`` or ``node`` on PATH).
        data_dir: Workspace (``--location``).  Default: a fresh temp directory,
            deleted by :meth:`stop`.  A directory you pass is *not* deleted.
        argv_prefix: Prepended to the command, e.g. ``["ip", "netns", "exec", "ns1"]``.
        startup_timeout: Seconds to wait for the service to answer.
        probe: After Azurite reports it is listening, also check that it answers
            HTTP from this process.  Turn off when this process cannot reach
            ``host`` (e.g. a namespace without a route from here).
        loose: Pass ``--loose`` (ignore headers Azurite does not implement;
            the Python SDK sends some).
        silent: Pass ``--silent`` (no access log).  On by default because the
            access log would record request URLs, i.e. SAS tokens.
        extra_args: Further Azurite arguments.
        env: Environment for the child (default: inherit).
    """

    account_name = DEV_ACCOUNT_NAME
    account_key = DEV_ACCOUNT_KEY

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        node_modules: str | os.PathLike[str] | None = None,
        node: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        argv_prefix: Sequence[str] = (),
        startup_timeout: float = 30.0,
        probe: bool = True,
        loose: bool = True,
        silent: bool = True,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be 0..65535, got {port}")
        self.host = host
        self._requested_port = int(port)
        self._node_modules_arg = node_modules
        self._node_arg = node
        self._user_data_dir = Path(data_dir) if data_dir is not None else None
        self.argv_prefix = list(argv_prefix)
        self.startup_timeout = float(startup_timeout)
        self.probe = probe
        self.loose = loose
        self.silent = silent
        self.extra_args = list(extra_args)
        self.env = dict(env) if env is not None else None

        self._process: ManagedProcess | None = None
        self._port: int | None = None
        self._scheme = "http"
        self._tmp_root: Path | None = None  # owned temp dir (data + log), deleted on stop
        self._data_dir: Path | None = None
        self._log_path: Path | None = None

    # ------------------------------------------------------------------ command
    def command(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        argv_prefix: Sequence[str] | None = None,
    ) -> list[str]:
        """Build the argv that runs this Azurite blob service.

        Useful for launching it yourself (e.g. via another namespace helper).
        ``port`` defaults to the configured port (``0`` = kernel-chosen, then
        read the port from the ``successfully listens on`` line of stdout);
        ``data_dir`` defaults to the running server's data dir, if any;
        ``argv_prefix`` defaults to the one given to the constructor.

        Raises:
            AzuriteNotInstalledError: node or Azurite is missing.
        """
        entry = _blob_entry(find_node_modules(self._node_modules_arg))
        location = data_dir if data_dir is not None else (self._data_dir or self._user_data_dir)
        if location is None:
            raise ValueError("data_dir is required when the server has not been started")
        prefix = self.argv_prefix if argv_prefix is None else list(argv_prefix)
        argv = [
            *prefix,
            _find_node(self._node_arg),
            str(entry),
            "--blobHost", self.host,
            "--blobPort", str(self._requested_port if port is None else int(port)),
            "--location", str(location),
            # The Python SDK may be newer than the emulator's API version.
            "--skipApiVersionCheck",
            # Telemetry would try to reach the internet and is none of our business.
            "--disableTelemetry",
        ]
        if self.loose:
            argv.append("--loose")
        if self.silent:
            argv.append("--silent")
        argv.extend(self.extra_args)
        return argv

    # ------------------------------------------------------------ properties
    @property
    def running(self) -> bool:
        """True while the Azurite process is alive."""
        return self._process is not None and self._process.alive()

    @property
    def pid(self) -> int | None:
        """PID of the Azurite process (also its process-group id), or None."""
        return self._process.pid if self._process is not None else None

    @property
    def port(self) -> int:
        """The port Azurite listens on (known once started)."""
        if self._port is None:
            raise AzuriteError("Azurite has not been started")
        return self._port

    @property
    def data_dir(self) -> Path | None:
        """Azurite's workspace directory (``--location``), or None before start."""
        return self._data_dir

    @property
    def log_path(self) -> Path | None:
        """File receiving Azurite's stdout/stderr (None before start)."""
        return self._log_path

    @property
    def connect_host(self) -> str:
        """Address clients use to reach the listener (wildcards map to loopback)."""
        if self.host in ("0.0.0.0", ""):
            return "127.0.0.1"
        if self.host == "::":
            return "::1"
        return self.host

    @property
    def blob_endpoint(self) -> str:
        """Account URL, e.g. ``http://127.0.0.1:41234/devstoreaccount1``."""
        return f"{self._scheme}://{_url_host(self.connect_host)}:{self.port}/{self.account_name}"

    @property
    def connection_string(self) -> str:
        """Connection string for the dev account on this server."""
        return dev_connection_string(self.blob_endpoint)

    def __repr__(self) -> str:
        state = f"port={self._port} pid={self.pid}" if self.running else "stopped"
        return f"AzuriteServer(host={self.host!r}, {state})"

    # ------------------------------------------------------------- lifecycle
    def start(self) -> "AzuriteServer":
        """Start Azurite and wait until it answers; returns ``self``.

        Raises:
            AzuriteNotInstalledError: node_modules/azurite or node is missing.
            AzuriteError: the process exited or did not become ready in time
                (the message includes the tail of its log).
        """
        if self.running:
            return self
        # Resolve the command before creating anything, so a missing install
        # leaves nothing behind.
        find_node_modules(self._node_modules_arg)
        self._tmp_root = Path(tempfile.mkdtemp(prefix="aideploy-azurite-"))
        self._log_path = self._tmp_root / "azurite.log"
        if self._user_data_dir is not None:
            self._user_data_dir.mkdir(parents=True, exist_ok=True)
            self._data_dir = self._user_data_dir
        else:
            self._data_dir = self._tmp_root / "data"
            self._data_dir.mkdir()
        try:
            argv = self.command(data_dir=self._data_dir)
            self._process = ManagedProcess("Azurite", argv, self._log_path, env=self.env, cwd=self._data_dir)
            self._process.start()
            _LIVE.add(self)
            self._process.wait_until(self._ready, timeout=self.startup_timeout, interval=0.05)
        except RuntimeError as exc:
            log_tail = self._process.tail() if self._process is not None else ""
            self.stop()
            raise AzuriteError(f"{exc}. Log tail:\n{log_tail or '<empty log>'}") from None
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def work_dir(self) -> Path | None:
        """The temp dir this server made (its log, and its data unless ``data_dir`` was given)."""
        return self._tmp_root

    def record(self) -> dict:
        """How to stop the server without this object (for the run journal)."""
        if self._process is None:
            raise RuntimeError("Azurite is not running")
        return self._process.record()

    def _ready(self) -> bool:
        """Azurite has reported its port and (unless ``probe`` is off) answers HTTP."""
        if self._port is None:
            url = parse_listening_url(self._log_path.read_text(encoding="utf-8", errors="replace"))
            if not url:
                return False
            self._scheme = url.split("://", 1)[0]
            self._port = int(url.rsplit(":", 1)[1])
        return not self.probe or self._answers()

    def _answers(self) -> bool:
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            # Liveness probe of our own child, typically with a self-signed
            # --cert: certificate checks belong to the real clients, not here.
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(self.connect_host, self.port, timeout=1.0, context=ctx)
        else:
            conn = http.client.HTTPConnection(self.connect_host, self.port, timeout=1.0)
        try:
            # Any HTTP status (Azurite answers 4xx to an unsigned request) proves
            # the request pipeline is up, not just the socket.
            conn.request("GET", f"/{self.account_name}?comp=list")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stop(self, grace: float = 5.0) -> None:
        """Stop Azurite and delete its temp data.  Safe to call repeatedly.

        Stops the whole process group (SIGTERM, SIGKILL after ``grace`` seconds),
        then removes the temporary directory (a caller-supplied ``data_dir`` stays).
        """
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stop(grace)
            finally:
                _LIVE.discard(self)
        self._port = None
        tmp, self._tmp_root = self._tmp_root, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        self._data_dir = None
        self._log_path = None

    def __enter__(self) -> "AzuriteServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort; stop() is the real API
        with contextlib.suppress(Exception):
            if self._process is not None:
                self.stop(grace=1.0)


@atexit.register
def _stop_all() -> None:
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop(grace=2.0)


@contextlib.contextmanager
def blob_storage(connection_string: str | None = None, **azurite_kwargs: object) -> Iterator[str]:
    """Yield a blob-storage connection string, starting Azurite only if needed.

    If ``connection_string`` (or ``$AIDEPLOY_BLOB_CONNECTION_STRING``) is set,
    it is yielded unchanged and nothing is started: that is how to point at an
    already-running Azurite or a real Azure account.  Otherwise a private
    :class:`AzuriteServer` (constructed with ``azurite_kwargs``) runs for the
    duration of the ``with`` block.
    """
    conn = connection_string or os.environ.get(CONNECTION_STRING_ENV)
    if conn:
        yield conn
        return
    with AzuriteServer(**azurite_kwargs) as server:  # type: ignore[arg-type]
        yield server.connection_string
