"""The Ray cluster a run's engine uses: a local one started for the run, or the user's.

``predict.ray.address`` unset: a Ray head on this machine, for this run only
(:func:`start_local`): listening on loopback, every port a free one (so it never meets another
Ray on the machine), token authentication with a token made for the run, its files in a temp
dir of the run, and ``predict.ray.num_cpus`` CPUs. It is stopped at teardown (every process of
it: :mod:`aideploy.ray_head`), and also when aideploy ends by SIGKILL (a watchdog pipe); the run
journal holds it and its temp dir until then.

``predict.ray.address`` set: that cluster, connected to with the caller's environment (its
token in ``RAY_AUTH_TOKEN`` where the cluster asks for one), and disconnected from at teardown.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from aideploy.errors import ConfigError, PredictError
from aideploy.process import ManagedProcess, free_port
from aideploy.ray_head import WATCHDOG_ENV
from aideploy.resources import path_record

RAY_LOG = "ray.log"
SOCKET_PATH_MAX = 107
"""A Unix socket's path is at most 107 bytes (108 with its NUL) on Linux."""
SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store")
"""What Ray puts below its temp dir for its longest socket path."""
OBJECT_STORE_BYTES = 100_000_000  # the workers pass file names and small results: Ray's minimum is 75 MB
READY = b"Ray runtime started"


def require_ray() -> Any:
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError("predict.engine=ray needs Ray, which is not installed in this environment",
                          hint="pip install 'aideploy[ray]'") from None
    return ray


def temp_root() -> Path:
    """A fresh directory for the local Ray's files, short enough for its socket paths."""
    parent = tempfile.gettempdir()
    if len(parent) + len("/aideploy-ray-xxxxxxxx") + SOCKET_SUFFIX > SOCKET_PATH_MAX:
        parent = "/tmp"  # $TMPDIR is too deep for a socket path
    return Path(tempfile.mkdtemp(prefix="aideploy-ray-", dir=parent))


def _head_argv(root: Path, num_cpus: int) -> tuple[list[str], int]:
    ray_exe = Path(sys.executable).with_name("ray")
    found = str(ray_exe) if ray_exe.exists() else shutil.which("ray")
    if not found:
        raise ConfigError("the `ray` command is not installed beside this Python", hint="pip install 'aideploy[ray]'")
    port = free_port()
    # Every port Ray would otherwise take from its fixed defaults (8265, 10001, 52365, ...), so that two
    # runs on one machine, or another Ray, never meet.
    ports = {flag: free_port() for flag in ("--dashboard-port", "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                            "--runtime-env-agent-port", "--metrics-export-port",
                                            "--ray-client-server-port", "--node-manager-port",
                                            "--object-manager-port")}
    argv = [sys.executable, "-m", "aideploy.ray_head", found, "start", "--head", "--block", "--port", str(port),
            "--node-ip-address", "127.0.0.1", "--num-cpus", str(num_cpus), "--temp-dir", str(root),
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--include-dashboard", "false",
            "--include-log-monitor", "false", "--disable-usage-stats",
            *[part for flag, value in ports.items() for part in (flag, str(value))]]
    return argv, port


def _reload_auth() -> None:
    """Make Ray read its authentication settings from the environment again: it reads them once, when
    it is first imported, and a process may have imported it before this run made its token."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token authentication
        return
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _use_token(ctx: Any, values: dict[str, str]) -> None:
    """Put the run's Ray token in this process's environment until teardown (Ray's driver reads it there)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    _reload_auth()

    def restore() -> None:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _reload_auth()

    ctx.resources.add("the Ray token in this process's environment", restore)


def _init(ray: Any, address: str) -> None:
    """``ray.init`` without Ray taking over this process's logging or its SIGTERM (aideploy tears down on it)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    try:
        ray.init(address=address, log_to_driver=False, configure_logging=False, logging_level="ERROR")
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def start_local(ctx: Any, cfg: Any) -> str:
    """Start a Ray head for this run (see the module docstring), connect to it, and return its address."""
    ray = require_ray()
    root = temp_root()
    ctx.resources.add(f"Ray's temp dir {root}", lambda: shutil.rmtree(root, ignore_errors=True), path_record(root))
    num_cpus = int(cfg.num_cpus or os.cpu_count() or 1)
    argv, port = _head_argv(root, num_cpus)
    token = secrets.token_hex(32)
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    head = ManagedProcess("ray", argv, ctx.output_dir / RAY_LOG, env={**os.environ, **auth}, watchdog=WATCHDOG_ENV)
    log_start = head.log_file.stat().st_size if head.log_file.exists() else 0
    head.start()
    ctx.resources.add(f"local Ray (pid {head.pid})", head.stop, head.record())
    _use_token(ctx, auth)

    def ready() -> bool:
        with open(head.log_file, "rb") as log:
            log.seek(log_start)
            return READY in log.read()

    try:
        head.wait_until(ready, timeout=float(cfg.startup_timeout), interval=0.2)
    except RuntimeError as exc:
        raise PredictError(f"the local Ray did not start: {exc}\n--- last lines of {head.log_file} ---\n"
                           f"{head.tail(20).rstrip()}",
                           hint="raise predict.ray.startup_timeout on a busy machine, or see the log") from None
    address = f"127.0.0.1:{port}"
    _init(ray, address)
    ctx.resources.add("the connection to the local Ray", ray.shutdown)
    ctx.log.info("      local Ray at %s: %d CPUs, its files in %s", address, num_cpus, root)
    return address


def connect(ctx: Any, cfg: Any) -> str:
    """Connect to ``predict.ray.address`` (its CPUs are the cluster's) and return the address."""
    ray = require_ray()
    deadline = time.monotonic() + float(cfg.startup_timeout)
    while True:
        try:
            _init(ray, cfg.address)
            break
        except (ConnectionError, RuntimeError) as exc:
            if time.monotonic() > deadline:
                raise PredictError(f"cannot connect to the Ray cluster at predict.ray.address={cfg.address}: "
                                   f"{str(exc).splitlines()[0]}",
                                   hint="is it running (ray status)? A cluster with token authentication needs its "
                                   "token in $RAY_AUTH_TOKEN") from None
            time.sleep(1.0)
    ctx.resources.add(f"the connection to the Ray cluster at {cfg.address}", ray.shutdown)
    return cfg.address
