"""Nothing is orphaned, even by SIGKILL: the run journal, ``mode=list`` and ``mode=gc``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import requests

from conftest import SERVE_KEY, session_processes, wait_for
from aideploy.netns import list_leftovers
from test_reliability import azurite, blobs, run_with_fault  # noqa: F401  (azurite is a fixture)


def journal_files(home: Path) -> list[Path]:
    return sorted((home / "runs").glob("*.json")) if (home / "runs").is_dir() else []


def held(home: Path) -> list[dict]:
    """Every resource every journal under ``home`` holds."""
    return [entry for path in journal_files(home) for entry in json.loads(path.read_text())["resources"].values()]


def assert_nothing_left(home: Path, tmpdir: Path | None, before: set[int], prefixes: list[str]) -> None:
    deadline = time.monotonic() + 15
    while (session_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert session_processes() - before == set(), "a process was left behind"
    assert journal_files(home) == []
    assert not list((home / "deployments").glob("*.json")) if (home / "deployments").exists() else True
    if tmpdir is not None:
        assert list(tmpdir.iterdir()) == [], "a temp dir was left behind"
    assert not [ns for prefix in prefixes for ns in list_leftovers(prefix)], "a namespace was left behind"


def netns_prefixes(home: Path) -> list[str]:
    """The namespace prefixes the journals hold (checked after gc); [] when a run built none."""
    return [e["prefix"] for e in held(home) if e["kind"] == "netns"]


def test_sigkill_during_deploy_is_cleaned_by_the_next_run(cli, tmp_path):
    before = session_processes()
    proc = run_with_fault(cli, tmp_path, fault="sigkill_deploy")
    assert proc.returncode == -signal.SIGKILL
    assert any(e["kind"] == "process" for e in held(cli.home)), "the journal must name the orphaned server"
    prefixes = netns_prefixes(cli.home)
    nxt = cli("dry_run=true", env={"TMPDIR": str(proc.tmpdir)})  # any run cleans up after dead runs on start
    assert nxt.returncode == 0, nxt.stderr
    assert "left by a run that died" in nxt.stderr
    assert_nothing_left(cli.home, proc.tmpdir, before, prefixes)


@pytest.mark.parametrize("network", ["public", "vnet"])
def test_sigkill_during_an_encrypted_predict_then_gc(cli, tmp_path, azurite, network):  # noqa: F811
    overrides = ["encryption=fast", f"network={network}"]
    env = {}
    if network == "public":  # keys in the test's own Azurite: the blob must be deleted by gc
        overrides += ["keystore.connection_string_env=TEST_AZURITE", "keystore.container=killed"]
        env["TEST_AZURITE"] = azurite.connection_string
    before = session_processes()
    proc = run_with_fault(cli, tmp_path, *overrides, fault="sigkill_predict", after=5, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    kinds = {e["kind"] for e in held(cli.home)}
    assert "process" in kinds and ("blob" in kinds if network == "public" else "netns" in kinds), kinds
    if network == "public":
        assert len(blobs(azurite, "killed")) == 1
    prefixes = netns_prefixes(cli.home)
    listed = cli("mode=list")
    assert listed.returncode == 0 and "owner died: resources held" in listed.stderr
    gc = cli("mode=gc", env={"TMPDIR": str(proc.tmpdir), **env})
    assert gc.returncode == 0, gc.stderr
    assert "still held" not in gc.stderr
    assert_nothing_left(cli.home, proc.tmpdir, before, prefixes)
    if network == "public":
        assert blobs(azurite, "killed") == []


def servers(before: set[int]) -> list[int]:
    """azmlinfsrv processes (gunicorn's master and workers) this test started since ``before``."""
    found = []
    for pid in session_processes() - before:
        with contextlib.suppress(psutil.NoSuchProcess):
            if "azmlinfsrv" in " ".join(psutil.Process(pid).cmdline()):
                found.append(pid)
    return found


@pytest.mark.parametrize("network", ["public", "vnet"])
def test_sigkill_while_serving_stops_the_server_and_gc_cleans_the_rest(cli, network):
    before = session_processes()
    proc, out = cli.start("mode=serve", "deployment_name=orphan", f"network={network}", "encryption=fast",
                          env={"AIDEPLOY_SCORING_KEY": SERVE_KEY})
    try:
        wait_for(out / "endpoint.json", proc)
        uri = json.loads((out / "endpoint.json").read_text())["scoring_uri"]
        listed = cli("mode=list")
        assert "orphan" in listed.stderr and "serving" in listed.stderr
        # its own answer only: no run summary about data and a model it never used, no results.json
        assert "--- summary" not in listed.stderr and "data=digits" not in listed.stderr
        assert not (listed.out / "results.json").exists()
        gc = cli("mode=gc")  # a live run's resources are never touched
        assert gc.returncode == 0 and "nothing to release" in gc.stderr
        assert psutil.Process(proc.pid).is_running() and servers(before)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # kill -9 leaves no server answering: it reads end-of-file on its watchdog pipe and stops, workers too
    deadline = time.monotonic() + 20
    while servers(before) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert servers(before) == [], "the server outlived the aideploy that started it"
    if network == "public":
        with pytest.raises(requests.ConnectionError):
            requests.get(uri, timeout=5)
    prefixes = netns_prefixes(cli.home)
    listed = cli("mode=list")
    assert "dead (record left)" in listed.stderr and "owner died" in listed.stderr
    gc = cli("mode=gc")
    assert gc.returncode == 0 and "released azmlinfsrv" in gc.stderr
    assert_nothing_left(cli.home, None, before, prefixes)


def test_only_journals_of_dead_owners_on_this_host_are_collected(tmp_path):
    from aideploy import journal

    home = tmp_path / "home"
    live, dead = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in range(2))
    try:
        mine = journal.Journal(home, "live-run", tmp_path, "run")  # owned by this (live) process
        mine.add({"what": "live sleeper", "kind": "process", "pid": live.pid,
                  "started": journal.process_started(live.pid)})
        base = json.loads(mine.path.read_text())
        # A dead owner whose pid was reused (ours, with another start time), holding a process.
        reused = {**base, "run_id": "reused", "started": 1.0,
                  "resources": {"1": {"what": "dead sleeper", "kind": "process", "pid": dead.pid,
                                      "started": journal.process_started(dead.pid)}}}
        (home / "runs" / "reused.json").write_text(json.dumps(reused))
        # Another machine's run sharing this home: not ours to judge.
        (home / "runs" / "foreign.json").write_text(json.dumps({**reused, "run_id": "foreign", "host": "elsewhere"}))
        collected = journal.collect(home)
        assert collected == {"released": ["dead sleeper (run reused)"], "left": []}
        assert dead.wait(timeout=10) is not None and live.poll() is None
        assert sorted(p.name for p in (home / "runs").iterdir()) == ["foreign.json", "live-run.json"]
    finally:
        for proc in (live, dead):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_ctrl_c_during_a_joblib_sweep_then_gc(cli, tmp_path):
    """loky SIGKILLs its workers on Ctrl-C: their teardown never runs, their journals remain."""
    from conftest import AIDEPLOY

    before = session_processes()
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    argv = [AIDEPLOY, "-m", f"hydra.sweep.dir={tmp_path / 'sweep'}", "encryption=seal", "data.limit=60",
            "target.worker_count=1,2", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    env = cli.env({"AIDEPLOY_HOME": str(cli.home), "TMPDIR": str(tmpdir)})
    sweep = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while sum(e.get("name") == "azmlinfsrv" for e in held(cli.home)) < 2:  # both jobs are serving
            assert sweep.poll() is None, sweep.stdout.read()
            assert time.monotonic() < deadline, "the sweep's jobs did not start"
            time.sleep(0.2)
        time.sleep(2)  # into the keys and predict stages
        os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C at a terminal reaches the whole group
        sweep.communicate(timeout=120)
    finally:
        if sweep.poll() is None:
            os.killpg(sweep.pid, signal.SIGKILL)
            sweep.wait()
    prefixes = netns_prefixes(cli.home)
    print(f"left after Ctrl-C: {len(held(cli.home))} resources")
    gc = cli("mode=gc", env={"TMPDIR": str(tmpdir)})
    assert gc.returncode == 0, gc.stderr
    assert_nothing_left(cli.home, tmpdir, before, prefixes)
