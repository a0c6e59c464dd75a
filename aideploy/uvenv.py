"""Isolated scoring environments built from the spec alone, with uv, and cached.

Like Azure's image build, only the spec goes in: a package the scoring code imports but the
spec misses fails here, not after a 10-20 minute build in Azure. An environment lives under
``<envs dir>/<hash of the resolved spec>``; a second run with the same spec reuses it.

Concurrent runs (a joblib or ray sweep) build one spec once: the builder holds a lock file
for that hash, builds in a temp dir (journaled, so a killed build is collected) and renames
it into place, so nobody sees half an environment. Environments are relocatable (uv's
``--relocatable``), which is what makes the rename safe. Each use touches a stamp file;
:func:`remove_unused` deletes environments unused for some days (``aideploy mode=gc``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from aideploy.errors import ConfigError, StageError
from aideploy.fsutil import locked_file

log = logging.getLogger("aideploy")

#: Where isolated scoring environments are built, unless ``environment.envs_dir`` says.
ENVS_ENV = "AIDEPLOY_ENVS"
STAMP = ".aideploy-env.json"  # written last: an environment without it is not finished
USED = ".aideploy-used"  # touched on every use


def uv_command() -> str:
    """The uv binary installed with aideploy (the ``uv`` package on PyPI), else one on PATH."""
    beside = Path(sys.executable).with_name("uv")
    found = str(beside) if beside.exists() else shutil.which("uv")
    if not found:
        raise ConfigError("uv is not installed in this environment",
                          hint="pip install uv (aideploy depends on it), or use environment=current")
    return found


def spec_hash(python: str, packages: list[str]) -> str:
    canonical = json.dumps({"python": str(python), "packages": sorted(packages)}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def envs_dir(cfg_dir: str | None, home: str | Path) -> Path:
    """``environment.envs_dir``, else ``$AIDEPLOY_ENVS``, else ``<home>/envs``."""
    return Path(cfg_dir or os.environ.get(ENVS_ENV) or Path(home) / "envs").expanduser()


def _explain(output: str, python: str) -> StageError | ConfigError:
    """One line and a hint for a failed uv call, from what uv printed."""
    text = " ".join(output.split())
    if re.search(r"No interpreter found|No download found|not find a Python|Querying Python at \S+ failed", text,
                 re.IGNORECASE):
        return ConfigError(f"environment.python={python} is not available on this machine (uv found no such "
                           "interpreter, and aideploy does not download one)",
                           hint=f"use the Python aideploy runs on (environment.python="
                           f"{sys.version_info.major}.{sys.version_info.minor}), or install Python {python}")
    if re.search(r"network was disabled|dns error|error resolving DNS|failed to fetch|error sending request|"
                 r"Could not connect|Connection refused", text, re.IGNORECASE):
        return StageError("cannot download the scoring environment's packages: the package index is unreachable",
                          hint="check the network or proxy (uv honours UV_INDEX_URL and HTTPS_PROXY), or use "
                          "environment=current to serve from this interpreter")
    missing = re.search(r"Because (\S+) was not found in the package registry", text)
    if missing:
        return ConfigError(f"the scoring environment needs {missing.group(1)!r}, which the package index does not have",
                           hint="check its spelling in environment.pip (or what a plugin requires)")
    unsatisfiable = re.search(r"No solution found when resolving dependencies:?(.{0,300})", text)
    if unsatisfiable:
        return ConfigError(f"the scoring environment's packages conflict: {unsatisfiable.group(1).strip()}",
                           hint="relax the versions in environment.pip")
    return StageError(f"uv could not build the scoring environment: {text[-400:]}",
                      hint="see the build log in the run's output dir (uv-build.log)")


def _run(argv: list[str], log_file: Path, python: str) -> None:
    with open(log_file, "a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        done = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              # no Python downloads: a missing version is the user's to install
                              env={**os.environ, "UV_NO_PROGRESS": "1", "UV_PYTHON_DOWNLOADS": "never"})
    if done.returncode != 0:
        raise _explain(log_file.read_text(errors="replace"), python)


def ensure(python: str, packages: list[str], root: Path, log_file: Path, journal_add=None) -> Path:
    """The environment for ``python`` + ``packages`` under ``root``, built if it is not there yet.

    ``journal_add(path)`` is called with the temp dir before a build starts and returns a
    callable that forgets it once it is renamed into place (or removed).
    """
    root.mkdir(parents=True, exist_ok=True)
    digest = spec_hash(python, packages)
    final = root / digest
    if not (final / STAMP).exists():
        with locked_file(root / f".{digest}.lock"):
            if not (final / STAMP).exists():  # another run may have built it while we waited
                _build(python, packages, final, log_file, journal_add)
    (final / USED).touch()
    return final


def _build(python: str, packages: list[str], final: Path, log_file: Path, journal_add) -> None:
    uv = uv_command()
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    forget = journal_add(tmp) if journal_add else (lambda: None)
    start = time.perf_counter()
    log.info("      environment: building %s with uv (%d packages, Python %s); once per spec", final.name,
             len(packages), python)
    try:
        _run([uv, "venv", "--relocatable", "--quiet", "--python", str(python), str(tmp)], log_file, python)
        log.info("      environment: resolving and installing %s (uv's output: %s)", ", ".join(packages), log_file)
        # Bytecode now, once, rather than in every new service's first start.
        _run([uv, "pip", "install", "--compile-bytecode", "--python", str(tmp / "bin" / "python"), *packages],
             log_file, python)
        (tmp / STAMP).write_text(json.dumps({"python": str(python), "packages": packages,
                                             "built": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2))
        shutil.rmtree(final, ignore_errors=True)  # an unfinished one (no stamp) from a killed build
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        forget()
    log.info("      environment: built %s in %.1f s", final.name, time.perf_counter() - start)


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


def remove_unused(root: Path, days: float) -> list[str]:
    """Delete environments under ``root`` unused for ``days``; returns their names."""
    removed = []
    cutoff = time.time() - days * 86400
    for env in sorted(root.iterdir()) if root.is_dir() else []:
        if not env.is_dir() or env.name.startswith("."):
            continue
        used = env / USED
        last = used.stat().st_mtime if used.exists() else env.stat().st_mtime
        if last >= cutoff:
            continue
        with locked_file(root / f".{env.name}.lock"):
            shutil.rmtree(env, ignore_errors=True)
        (root / f".{env.name}.lock").unlink(missing_ok=True)
        removed.append(env.name)
    return removed
