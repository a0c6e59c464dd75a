"""Child processes that a run owns: started in their own session, stopped as a group."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections import deque
from pathlib import Path
from typing import Callable, Mapping, Sequence

log = logging.getLogger("aideploy")


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the caller retries if it is taken in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with open(path, errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines))
    except FileNotFoundError:
        return ""


class ManagedProcess:
    """A child process in its own session, logging to a file, stopped with its whole group.

    The session matters: servers such as gunicorn fork workers, and a terminal's Ctrl-C must
    reach aideploy (which tears down in order), not the server directly.

    ``watchdog`` names an environment variable through which the child gets the read end of a
    pipe whose only write end this process holds: when this process ends, however it ends
    (SIGKILL included), the child reads end-of-file there and can stop itself (the scoring
    server does: ``gunicorn_conf.py``). Unlike ``PR_SET_PDEATHSIG``, it does not depend on which
    thread started the child.
    """

    def __init__(self, name: str, argv: Sequence[str], log_file: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None, watchdog: str | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_file = log_file
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.watchdog = watchdog
        self._watch_fd: int | None = None
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> "ManagedProcess":
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        env, keep = self.env, ()
        if self.watchdog:
            read_end, self._watch_fd = os.pipe()  # both close-on-exec; only the read end is passed on
            env, keep = {**(env if env is not None else os.environ), self.watchdog: str(read_end)}, (read_end,)
        try:
            with open(self.log_file, "ab") as out:
                self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env, cwd=self.cwd, start_new_session=True,
                                             pass_fds=keep)
        finally:
            for fd in keep:
                os.close(fd)
            if self.proc is None and self._watch_fd is not None:  # it did not start: nothing to watch
                os.close(self._watch_fd)
                self._watch_fd = None
        log.debug("started %s (pid %d): %s", self.name, self.proc.pid, " ".join(self.argv))
        return self

    def record(self) -> dict:
        """How to stop this process group without this object (for the run journal)."""
        import psutil

        try:
            started = psutil.Process(self.pid).create_time()
        except psutil.NoSuchProcess:  # already gone: nothing to stop later either
            started = None
        return {"kind": "process", "name": self.name, "pid": self.pid, "started": started}

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int = 40) -> str:
        return tail(self.log_file, lines)

    def wait_until(self, ready: Callable[[], bool], timeout: float, interval: float = 0.1) -> None:
        """Poll ``ready()`` until true; raise RuntimeError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode} before it was ready")
            try:
                if ready():
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} was not ready after {timeout:g} s")
            time.sleep(interval)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds. Idempotent."""
        if self.proc is None:
            return
        pgid = self.proc.pid  # a session leader's pgid is its pid
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            if _group_gone(pgid, self.proc, wait):
                break
        if self.proc.poll() is None:
            self.proc.wait(timeout=5)
        if self._watch_fd is not None:
            os.close(self._watch_fd)
            self._watch_fd = None
        log.debug("stopped %s (pid %d)", self.name, self.proc.pid)


def _group_gone(pgid: int, proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader so it does not linger as a zombie
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True if a GET on ``url`` answers 200."""
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False
