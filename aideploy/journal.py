"""The run journal: what each run holds, on disk, so that nothing outlives a killed run.

Every resource a run acquires with a description of how to release it without the run
(a process and its start time, a network namespace prefix, a temp dir, a blob, an Azure
deployment) is written to ``<home>/runs/<run_id>.json`` as it is acquired, and removed
from it once released. The file is replaced atomically on every change, and removed when
the run ends with nothing left.

A journal whose owner is gone (its pid has exited, or was reused: the start time differs)
holds what a SIGKILL left behind. :func:`collect` releases it: ``aideploy mode=gc`` does, and
every run does at start for dead owners on this machine. A live owner's journal is never
touched. :func:`listing` is ``aideploy mode=list``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import psutil

from aideploy.fsutil import replace_atomically

log = logging.getLogger("aideploy")

RUNS_DIR = "runs"
DEPLOYMENTS_DIR = "deployments"


def process_started(pid: int) -> float | None:
    """The start time of ``pid`` (what tells it from a later process with the same pid), or None."""
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def same_process(pid: int | None, started: float | None) -> bool:
    """Whether ``pid`` still runs the process that started at ``started``."""
    if not pid or started is None:
        return False
    now = process_started(pid)
    return now is not None and abs(now - started) < 0.5


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    replace_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


class Journal:
    """One run's journal file. Not thread-safe: resources are acquired from the main thread."""

    def __init__(self, home: str | Path, run_id: str, output_dir: Path, mode: str) -> None:
        self.path = Path(home) / RUNS_DIR / f"{run_id}.json"
        pid = os.getpid()
        self._data: dict[str, Any] = {
            "run_id": run_id, "host": socket.gethostname(), "pid": pid, "started": process_started(pid),
            "mode": mode, "output_dir": str(output_dir), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "resources": {},
        }
        self._next = 1

    def add(self, entry: dict[str, Any]) -> str:
        """Record ``entry`` (``{"kind": ..., ...}``, see :func:`release_entry`); returns its id."""
        key = str(self._next)
        self._next += 1
        self._data["resources"][key] = entry
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path, self._data)
        return key

    def remove(self, key: str) -> None:
        """Forget a released resource."""
        if self._data["resources"].pop(key, None) is not None and self.path.exists():
            _write_atomically(self.path, self._data)

    def close(self) -> None:
        """End of the run: the file goes when nothing is left; what is left stays for ``mode=gc``."""
        if not self._data["resources"]:
            self.path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- releasing without the owner


def _kill_group(entry: dict[str, Any]) -> None:
    """SIGTERM, then SIGKILL, the process group a journaled process led, if it is still that group."""
    pgid, started = entry["pid"], entry.get("started")
    members = []
    for proc in psutil.process_iter(["pid", "create_time"]):
        try:
            # A group outlives its leader (gunicorn's workers); a reused pgid would need a new
            # process started after ours.
            if os.getpgid(proc.pid) == pgid and started is not None and proc.info["create_time"] >= started - 0.5:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            continue
    if not members:
        return
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for proc in members:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                proc.send_signal(sig)
        _, members = psutil.wait_procs(members, timeout=wait)
        if not members:
            return
    raise RuntimeError(f"processes {[p.pid for p in members]} of group {pgid} did not stop")


def _delete_namespaces(entry: dict[str, Any]) -> None:
    from aideploy import netns

    for name in netns.list_leftovers(entry["prefix"]):
        if not netns.delete_namespace(name):
            raise RuntimeError(f"could not delete network namespace {name}")


def _delete_blob(entry: dict[str, Any]) -> str | None:
    from aideploy.blobkeys import BlobKeyStore

    conn = os.environ.get(entry.get("connection_string_env") or "")
    if not conn:
        return (f"blob {entry['key_id']} in container {entry['container']} ({entry.get('store', '?')}): set "
                f"${entry.get('connection_string_env') or 'the connection string'} and run mode=gc again")
    store = BlobKeyStore.from_connection_string(conn, entry["container"])
    try:
        store.delete(entry["key_id"])
    finally:
        store.close()
    return None


def release_entry(entry: dict[str, Any]) -> str | None:
    """Release one journaled resource; returns a note when it must be left (and why), else None."""
    kind = entry.get("kind")
    if kind == "process":
        _kill_group(entry)
    elif kind == "netns":
        _delete_namespaces(entry)
    elif kind == "path":
        path = Path(entry["path"])
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    elif kind == "blob":
        return _delete_blob(entry)
    elif kind == "azure":  # never deleted behind the user's back: the entry says how
        command = entry.get("delete") or f"aideploy target={entry['target']} mode=delete deployment_name={entry['name']}"
        return f"{entry.get('what') or entry['target'] + ' deployment ' + repr(entry['name'])} in Azure: delete it with `{command}`"
    else:
        return f"unknown resource kind {kind!r}: {entry}"
    return None


# ----------------------------------------------------------------------------- every run's journal


def journals(home: str | Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every readable journal under ``home``, oldest first."""
    folder = Path(home) / RUNS_DIR
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue  # being replaced this instant, or not ours
    return found


def owner_alive(data: dict[str, Any]) -> bool:
    """Whether the run that wrote a journal still runs (a journal from another host counts as alive)."""
    if data.get("host") != socket.gethostname():
        return True  # a home shared between machines: not ours to judge
    return same_process(data.get("pid"), data.get("started"))


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[bool]:
    """A non-blocking lock on a journal file: False when another collector has it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        yield False
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        os.close(fd)


def collect(home: str | Path, skip_run: str | None = None) -> dict[str, Any]:
    """Release what dead runs left; ``{"released": [...], "left": [...]}`` (descriptions)."""
    released: list[str] = []
    left: list[str] = []
    for path, data in journals(home):
        if data.get("run_id") == skip_run or owner_alive(data):
            continue
        with _exclusive(path) as mine:
            if not mine:
                continue
            remaining = {}
            for key, entry in sorted(data.get("resources", {}).items(), key=lambda kv: -int(kv[0])):
                what = f"{entry.get('what', entry.get('kind'))} (run {data.get('run_id')})"
                try:
                    note = release_entry(entry)
                except Exception as exc:  # keep it for the next try; release the rest
                    note = f"{what}: {type(exc).__name__}: {exc}"
                if note:
                    remaining[key] = entry
                    left.append(note)
                else:
                    released.append(what)
            if remaining:
                _write_atomically(path, {**data, "resources": remaining})
            else:
                path.unlink(missing_ok=True)
    _forget_stale_deployments(home)
    return {"released": released, "left": left}


def _forget_stale_deployments(home: str | Path) -> None:
    """Local deployment records whose serving run is gone (a SIGKILL skips their removal)."""
    folder = Path(home) / DEPLOYMENTS_DIR
    for record in folder.glob("*.json") if folder.is_dir() else []:
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        if info.get("target", "local") == "local" and not same_process(info.get("owner_pid"),
                                                                        info.get("owner_started")):
            record.unlink(missing_ok=True)


def record_deployment(home: str | Path, name: str, target: str, scoring_uri: str) -> None:
    """Remember a deployment that outlives its run (Azure, ``mode=serve``), for ``mode=list``."""
    folder = Path(home) / DEPLOYMENTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomically(folder / f"{name}.json", {"name": name, "target": target, "scoring_uri": scoring_uri,
                                                "created": time.time()})


def forget_deployment(home: str | Path, name: str) -> None:
    (Path(home) / DEPLOYMENTS_DIR / f"{name}.json").unlink(missing_ok=True)


def listing(home: str | Path) -> dict[str, Any]:
    """``mode=list``: live deployments, the Azure ones this home created, and orphaned resources."""
    deployments = []
    folder = Path(home) / DEPLOYMENTS_DIR
    for record in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            info = json.loads(record.read_text())
        except (OSError, ValueError):
            continue
        local = info.get("target", "local") == "local"
        alive = same_process(info.get("owner_pid"), info.get("owner_started")) if local else None
        started = info.get("created")
        deployments.append({"name": info.get("name"), "target": info.get("target", "local"),
                            "scoring_uri": info.get("scoring_uri"), "pid": info.get("pid"),
                            "age_s": round(time.time() - started) if isinstance(started, (int, float)) else None,
                            "state": "serving" if alive else ("in Azure" if not local else "dead (record left)")})
    runs = []
    for _, data in journals(home):
        alive = owner_alive(data)
        runs.append({"run_id": data.get("run_id"), "pid": data.get("pid"), "mode": data.get("mode"),
                     "state": "running" if alive else "owner died: resources held",
                     "resources": [e.get("what", e.get("kind")) for e in data.get("resources", {}).values()]})
    return {"deployments": deployments, "runs": runs}


def housekeeping(ctx: Any, mode: Any, run_id: str) -> None:
    """Release what dead runs left (every run, cheaply); ``mode=list``/``gc`` report it."""
    from aideploy.stages import Mode

    home = ctx.cfg.home
    if mode is Mode.list:
        found = listing(home)
        ctx.artifacts["metrics"] = found
        for d in found["deployments"]:
            log.info("deployment  %-28s %-17s %-20s %s", d["name"], d["target"], d["state"], d["scoring_uri"] or "")
        for r in found["runs"]:
            log.info("run         %-28s %-17s %s: %s", r["run_id"], r["mode"], r["state"],
                     ", ".join(r["resources"]) or "nothing held")
        if not found["deployments"] and not found["runs"]:
            log.info("nothing deployed or held under %s", home)
        if any(r["state"] != "running" for r in found["runs"]):
            log.info("`aideploy mode=gc` releases what dead runs hold")
        return
    collected = collect(home, skip_run=run_id)
    for what in collected["released"]:
        log.info("released %s, left by a run that died", what)
    for note in collected["left"]:
        log.warning("still held by a dead run: %s", note)
    if mode is Mode.gc:
        env_cfg = ctx.cfg.environment
        if "keep_unused_days" in env_cfg:  # environment=conda keeps built environments
            from aideploy import uvenv

            root = uvenv.envs_dir(env_cfg.envs_dir, home)
            collected["environments_removed"] = uvenv.remove_unused(root, env_cfg.keep_unused_days)
            for name in collected["environments_removed"]:
                log.info("removed environment %s, unused for %g days", name, env_cfg.keep_unused_days)
        ctx.artifacts["metrics"] = collected
        if not any(collected.values()):
            log.info("nothing to release: no dead run holds anything under %s", home)
