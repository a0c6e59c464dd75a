"""Shared fixtures: an isolated aideploy home, a CLI runner, and a process-leak guard."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

TESTS_DIR = Path(__file__).parent
AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
# Programs a run may start; none may outlive the test that started it.
OWNED_PROGRAMS = ("azmlinfsrv", "azurite", "aideploy_scoring")


def owned_processes() -> set[int]:
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if any(p in cmdline for p in OWNED_PROGRAMS) and proc.info["pid"] != os.getpid():
            found.add(proc.info["pid"])
    return found


@pytest.fixture(autouse=True)
def no_leaked_processes():
    """Every test must stop whatever server or emulator it (or aideploy) started."""
    before = owned_processes()
    yield
    leaked = set()
    for _ in range(50):  # a stopped group may take a moment to be reaped
        leaked = {pid for pid in owned_processes() - before if psutil.pid_exists(pid)
                  and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE}
        if not leaked:
            break
        psutil.wait_procs([psutil.Process(p) for p in leaked if psutil.pid_exists(p)], timeout=0.2)
    assert not leaked, f"processes left running: {[(p, psutil.Process(p).cmdline()) for p in leaked]}"


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
        env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), **(extra or {})}
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
