"""Shared fixtures: an isolated aideploy home, a CLI runner, and a process-leak guard."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil
import pytest

TESTS_DIR = Path(__file__).parent
AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
# Every process this test session starts, directly or not, inherits this marker, so the leak
# guard sees our processes and never another session's. Not an AIDEPLOY_* name: those are the
# service's settings, and target=local passes on only the declared ones.
SESSION_MARK = "PYTEST_AIDEPLOY_SESSION"
os.environ[SESSION_MARK] = uuid.uuid4().hex
# Scoring environments that environment=conda builds are shared by the whole session (each
# test has its own home); a test about building them sets its own AIDEPLOY_ENVS.
_SESSION_ENVS = None if os.environ.get("AIDEPLOY_ENVS") else tempfile.mkdtemp(prefix="aideploy-test-envs-")
os.environ.setdefault("AIDEPLOY_ENVS", _SESSION_ENVS or "")


def pytest_sessionfinish(session, exitstatus):
    if _SESSION_ENVS:
        shutil.rmtree(_SESSION_ENVS, ignore_errors=True)


def session_processes() -> set[int]:
    """Live processes (zombies excluded) started under this test session, except pytest itself."""
    found = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            if (proc.pid != os.getpid() and proc.status() != psutil.STATUS_ZOMBIE
                    and proc.environ().get(SESSION_MARK) == os.environ[SESSION_MARK]):
                found.add(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every test must stop whatever server, emulator or namespace process it started."""
    before = session_processes()
    yield
    deadline = time.monotonic() + 10  # a stopped group may take a moment to be reaped
    while (leaked := session_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    described = []
    for pid in leaked:
        try:
            described.append((pid, " ".join(psutil.Process(pid).cmdline())))
        except psutil.NoSuchProcess:
            continue
    assert not described, f"processes left running: {described}"


def _default_key_dirs() -> set[str]:
    return {name for name in os.listdir(tempfile.gettempdir()) if re.fullmatch(r"aideploy-keys-\d+", name)}


@pytest.fixture(autouse=True)
def no_default_key_directory():
    """No service the tests start shares keys through score.py's default directory (the one an
    Azure container uses): ``target=local`` gives every deployment its own, and removes it."""
    before = _default_key_dirs()
    yield
    assert not _default_key_dirs() - before, "a service used score.py's default key directory"


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "home"


class Cli:
    """Runs the real ``aideploy`` console script in a subprocess, one output dir per call."""

    def __init__(self, tmp_path: Path, home: Path) -> None:
        self.tmp_path = tmp_path
        self.home = home
        self.calls = 0

    def env(self, extra: dict | None = None) -> dict:
        # The tests' helper plugins first, then whatever PYTHONPATH the session itself was given.
        path = os.pathsep.join(filter(None, [str(TESTS_DIR), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, **(extra or {})}
        env.pop("HYDRA_FULL_ERROR", None)
        return env

    def argv(self, *overrides: str) -> tuple[list[str], Path]:
        self.calls += 1
        out = self.tmp_path / f"run{self.calls}"
        return [AIDEPLOY, f"home={self.home}", f"hydra.run.dir={out}", *overrides], out

    def __call__(self, *overrides: str, env: dict | None = None, timeout: float = 600):
        argv, out = self.argv(*overrides)
        proc = subprocess.run(argv, capture_output=True, text=True, env=self.env(env), timeout=timeout)
        proc.out = out
        return proc

    def start(self, *overrides: str, env: dict | None = None) -> tuple[subprocess.Popen, Path]:
        argv, out = self.argv(*overrides)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=self.env(env))
        return proc, out


@pytest.fixture
def cli(tmp_path, home) -> Cli:
    return Cli(tmp_path, home)


def results_of(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until ``path`` exists, failing early (with its output) if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.2)


SERVE_KEY = "test-scoring-key-0123456789"


def own_store(store) -> tuple[list[str], dict]:
    """Overrides and environment that make ``store`` (an AzuriteServer the test owns) the
    deployment's key store: the only one its service fetches keys from."""
    return (["keystore.connection_string_env=TEST_AZURITE"], {"TEST_AZURITE": store.connection_string})


@contextlib.contextmanager
def served(cli: Cli, *overrides: str, env: dict | None = None, store=None):
    """``aideploy mode=serve ...`` for the duration of the block; yields the scoring URI.

    The service requires ``Authorization: Bearer SERVE_KEY``. Ctrl-C (SIGINT) stops it, as a
    user would, and the block fails if that did not end the run cleanly. ``env``: more
    variables for aideploy (the service inherits the declared settings among them). ``store``:
    an AzuriteServer the test owns, as the deployment's key store (:func:`own_store`).
    """
    more, store_env = own_store(store) if store is not None else ([], {})
    proc, out = cli.start("mode=serve", *overrides, *more,
                          env={"AIDEPLOY_SCORING_KEY": SERVE_KEY, **store_env, **(env or {})})
    try:
        wait_for(out / "endpoint.json", proc)
        yield json.loads((out / "endpoint.json").read_text())["scoring_uri"]
    finally:
        proc.send_signal(signal.SIGINT)
        output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0, output


def fast_params(uri: str):
    """The fast scheme's parameters a served deployment publishes (``GET /score``): the only
    ones it serves."""
    import requests

    from aideploy_scoring.fastlinear import FastParams

    info = requests.get(uri, headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=60).json()
    return FastParams.from_json(json.dumps(info["fast"]["params"]).encode())
