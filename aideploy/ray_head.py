"""A local Ray head that ends with the aideploy that started it.

    python -m aideploy.ray_head ray start --head --block ...

:mod:`aideploy.ray_cluster` starts this in a session of its own
(:class:`aideploy.process.ManagedProcess`, with a watchdog pipe). It runs the command it is
given (Ray's head: GCS, raylet, agents, and the workers the raylet forks) and, when

- the pipe named by ``$AIDEPLOY_RAY_WATCHDOG_FD`` reaches its end (the aideploy holding its
  other end ended, a SIGKILL included),
- it gets SIGTERM (aideploy's teardown), or
- the command ends on its own,

kills every process of its session. The session, not the process group: Ray's workers lead
process groups of their own, so stopping the group would leave them running. SIGKILL, because
Ray answers SIGTERM by draining for up to 30 s, and nothing is left to drain once aideploy has
its results on disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import psutil

WATCHDOG_ENV = "AIDEPLOY_RAY_WATCHDOG_FD"


def kill_session() -> None:
    """SIGKILL every other process of this process's session, and wait for them."""
    me, session = os.getpid(), os.getsid(0)
    members = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != me and os.getsid(proc.pid) == session:
                members.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    for proc in members:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(members, timeout=10)


def main(argv: list[str]) -> int:
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: done.set())
    signal.signal(signal.SIGINT, lambda signum, frame: done.set())
    fd = os.environ.pop(WATCHDOG_ENV, None)
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    if fd is not None:
        def watch() -> None:
            try:
                while os.read(int(fd), 1):
                    pass
            except OSError:
                pass
            done.set()

        threading.Thread(target=watch, name="aideploy-ray-watchdog", daemon=True).start()
    threading.Thread(target=lambda: (child.wait(), done.set()), name="aideploy-ray-head", daemon=True).start()
    while not done.wait(0.5):
        pass
    kill_session()
    child.wait()
    return 0 if child.returncode in (0, -signal.SIGKILL) else child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
