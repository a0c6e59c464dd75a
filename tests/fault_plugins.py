"""A plugin for tests: injects one fault into a run, chosen by ``$PYTEST_AIDEPLOY_FAULT``.

- ``kill_keystore``: SIGKILL the run's own Azurite right after the keys stage, so the
  service's key fetch fails (502) and teardown's blob delete fails;
- ``kill_service``: SIGKILL the azmlinfsrv process group once the server's access log shows
  ``$PYTEST_AIDEPLOY_FAULT_AFTER`` answered scoring requests (0: before the first one);
- ``sigint_predict``: Ctrl-C (SIGINT to this process) once that many requests were answered;
- ``sigint_deploy``: Ctrl-C while the deploy stage waits for the server's workers to boot;
- ``sigkill_deploy``, ``sigkill_predict``: as the two above, but SIGKILL: no teardown runs,
  and only the run journal tells ``mode=gc`` what was left.

The faults come from a watcher thread, so they land while the main thread is inside the
stage, as a real crash or a user's Ctrl-C would.
"""

import os
import signal
import threading
import time

import psutil

from aideploy import hookimpl

PLUGIN_NAME = "fault"
SERVER_LOG = "azmlinfsrv.log"
ANSWERED = '"POST /score'  # gunicorn's access log: one line per answered request


def _fault() -> str:
    return os.environ.get("PYTEST_AIDEPLOY_FAULT", "")


def _when_log_shows(path, needle: str, count: int, action, timeout: float = 120.0) -> None:
    def watch():
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                seen = path.read_text(errors="replace").count(needle)
            except FileNotFoundError:
                seen = 0
            if seen >= count:
                action()
                return
            time.sleep(0.005)

    threading.Thread(target=watch, name="fault-injector", daemon=True).start()


def _posts_seen(ctx) -> int:
    log = ctx.output_dir / SERVER_LOG
    try:
        return log.read_text(errors="replace").count(ANSWERED)
    except FileNotFoundError:
        return 0


@hookimpl
def aideploy_before_stage(stage, ctx):
    fault = _fault()
    log = ctx.output_dir / SERVER_LOG
    own = signal.SIGKILL if fault.startswith("sigkill") else signal.SIGINT
    if stage.name == "deploy" and fault in ("sigint_deploy", "sigkill_deploy"):
        _when_log_shows(log, "Booting worker", 1, lambda: os.kill(os.getpid(), own))
    if stage.name == "predict" and fault in ("kill_service", "sigint_predict", "sigkill_predict"):
        after = int(os.environ.get("PYTEST_AIDEPLOY_FAULT_AFTER", "0"))
        if fault == "kill_service":
            pid = ctx.artifacts["endpoint"].details["pid"]
            action = lambda: os.killpg(pid, signal.SIGKILL)  # noqa: E731
        else:
            action = lambda: os.kill(os.getpid(), own)  # noqa: E731
        if after == 0:
            action()
            time.sleep(0.2)  # let the kill land before the first request
        else:
            _when_log_shows(log, ANSWERED, _posts_seen(ctx) + after, action)


@hookimpl
def aideploy_after_stage(stage, ctx):
    if stage.name == "keys" and _fault() == "kill_keystore":
        for child in psutil.Process().children(recursive=True):
            try:
                if any("azurite" in part for part in child.cmdline()):
                    os.killpg(child.pid, signal.SIGKILL)  # Azurite runs in its own session
            except (psutil.NoSuchProcess, ProcessLookupError):
                continue
