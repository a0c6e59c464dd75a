"""The fast scheme's kernels compiled ahead of time: scoring workers without numba.

:mod:`.fastkernels` is numba source. Just in time, a worker pays for numba and LLVM (~120 MB
of RSS each, even when every kernel comes from numba's disk cache, and a compile of about a
minute on a machine that never ran them). The same kernels are written in C
(``fastkernels.c``: same names, arguments and results, checked against numba by the tests),
which this module compiles with setuptools and the system's C compiler into one CPython
extension module, in seconds; a worker imports it with numpy alone.

- **Build** (:func:`ensure`, or ``python fastkernels_aot.py [--portable]``: a script that needs
  only this file, ``fastkernels.c``, numpy and setuptools, so an image build runs it from a
  copy): ``-O3`` for this machine's CPU (``-march=native``), or, ``--portable``, one module per
  x86-64 level (:data:`PORTABLE`) for an image built on one machine and run on another. In a
  temp dir renamed into place with ``manifest.json`` written last, so a reader sees a whole
  build or none; one build at a time per cache.
- **Load** (:func:`load`, from :mod:`.fastkernels` at import): ``AIDEPLOY_KERNELS=jit``: never
  (numba). ``aot`` (``score.py`` sets it for the service): this machine's build, else the best
  portable one the CPU runs, else one made now, in ``init()``; numba if that fails. Unset (a
  client, the tests): a build if there is one, never made here. :data:`STATUS` says which path
  was taken and why; a worker logs it.
- Why not ``numba.pycc`` (the previous build): deprecated upstream, and it compiles the numba
  source once per kernel, ~60 s on a quiet 2-core machine and 177 s on a busy one, which the
  first encrypted run paid. The numba source stays as the fallback (a machine without a C
  compiler, a build that fails) and as the reference the C kernels are tested against.

The cache is ``$AIDEPLOY_KERNEL_CACHE`` if set, else ``$XDG_CACHE_HOME/aideploy/kernels``
(``~/.cache/aideploy/kernels``): one build per machine for every interpreter of the same Python
version and numpy major version (aideploy's own and its scoring environments).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

MODE_ENV = "AIDEPLOY_KERNELS"  # "jit": numba; "aot": a build, made now if there is none; unset: a build if there is one
CACHE_ENV = "AIDEPLOY_KERNEL_CACHE"
MANIFEST = "manifest.json"
MODULE = "_aideploy_fastkernels"
SOURCE = "fastkernels.c"
_SOURCES = (SOURCE, "fastkernels_aot.py")  # a change to either is a new build
_HERE = Path(__file__).resolve().parent
log = logging.getLogger("aideploy.scoring")  # the service's logger: a worker says which kernels it runs

#: ``--portable`` builds, best first: (name, the CPU flags it needs, compiler options). x86-64-v4
#: is AVX-512 (F, BW, CD, DQ, VL), v3 AVX2 with FMA and BMI2 (every Azure VM size has one of them).
PORTABLE: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("x86-64-v4-wide", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx512_vbmi2"),
     ("-march=x86-64-v4", "-mtune=generic", "-DAIDEPLOY_WIDE", "-mprefer-vector-width=512")),
    ("x86-64-v4", ("avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"), ("-march=x86-64-v4", "-mtune=generic")),
    ("x86-64-v3", ("avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"), ("-march=x86-64-v3", "-mtune=generic")),
)

#: What the last :func:`load` in this process decided: ``kernels`` ("aot" or "jit"), ``build`` (its
#: directory, or None) and ``why``.
STATUS: dict[str, Any] = {"kernels": "jit", "build": None, "why": "not loaded yet"}


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled ahead of time (the service then compiles them just in time)."""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _wide_vectors(flags: set[str]) -> bool:
    """Whether to compile with 512-bit vectors: AVX-512 on a CPU that keeps its clock with it.
    Ice Lake and later, and AMD's Zen 4 and later, are the ones with VBMI2; Skylake-SP and
    Cascade Lake lower the clock and lack it (numba's choice: fastkernels._WIDE_VECTOR_CPUS)."""
    return {"avx512f", "avx512_vbmi2"} <= flags


def native_options() -> tuple[str, ...]:
    """Compiler options for this machine's CPU."""
    wide = ("-DAIDEPLOY_WIDE", "-mprefer-vector-width=512") if _wide_vectors(_cpu_flags()) else ()
    return ("-march=native", *wide)


def _numpy_major() -> str:
    """The numpy the build's headers come from, by major version (its C API is stable within one)."""
    import numpy

    return numpy.__version__.split(".")[0]


def build_key(target: str = "native") -> str:
    """What a build depends on: the kernel source and build script, the Python version, numpy's
    major version, and the CPU (a native build) or the instruction set (a portable one)."""
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((_HERE / name).read_bytes())
    parts = [sys.implementation.cache_tag, _numpy_major(), platform.machine(), target]
    if target == "native":
        parts.append(" ".join(sorted(_cpu_flags())) or platform.processor())
    for part in parts:
        digest.update(b"\0" + part.encode())
    return f"{sys.implementation.cache_tag}-np{_numpy_major()}-{target}-{digest.hexdigest()[:16]}"


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aideploy" / "kernels"


def build_dir(target: str = "native") -> Path:
    return cache_root() / build_key(target)


# ------------------------------------------------------------------------------ load

def _candidates() -> list[str]:
    """The builds this CPU runs, best first: its own, then the portable ones it has the flags for."""
    flags = _cpu_flags()
    return ["native"] + [name for name, needs, _ in PORTABLE if set(needs) <= flags]


def _import(where: Path) -> ModuleType:
    manifest = json.loads((where / MANIFEST).read_text())
    path = where / manifest["file"]
    loader = importlib.machinery.ExtensionFileLoader(MODULE, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(MODULE, path, loader=loader))
    loader.exec_module(module)
    return module


def _found() -> tuple[ModuleType, Path] | None:
    for target in _candidates():
        where = build_dir(target)
        if not (where / MANIFEST).exists():
            continue
        try:
            return _import(where), where
        except (OSError, ValueError, KeyError, ImportError) as exc:
            log.warning("the fast scheme's kernels in %s do not load (%s: %s)", where, type(exc).__name__, exc)
    return None


def _status(kernels: str, build: Path | None, why: str) -> None:
    STATUS.update(kernels=kernels, build=str(build) if build else None, why=why)
    if os.environ.get(MODE_ENV, "").lower() == "aot":  # the service (score.py sets it), not a client
        log.log(logging.INFO if kernels == "aot" and "compiled now" not in why else logging.WARNING,
                "the fast scheme's kernels: %s%s (%s)", kernels, f" from {build}" if build else "", why)


def load() -> ModuleType | None:
    """This machine's build as a module of the kernels, or None for numba just in time (see the
    module docstring for when). A build that fails or does not load is never half used."""
    mode = os.environ.get(MODE_ENV, "").lower()
    if mode == "jit":
        _status("jit", None, f"{MODE_ENV}=jit")
        return None
    found = _found()
    if found is None and mode == "aot":  # a fresh machine or image: build now (init() waits for it)
        log.info("compiling the fast scheme's kernels for this machine (once, seconds)")
        started = time.monotonic()
        try:
            ensure()
        except KernelBuildError as exc:
            _status("jit", None, f"no build for this machine, and compiling one failed ({exc}): numba compiles "
                    "them just in time")
            return None
        found = _found()
        if found is not None:
            _status("aot", found[1], f"none was there: compiled now in {time.monotonic() - started:.1f} s")
            return found[0]
    if found is None:
        _status("jit", None, f"no build for this interpreter and CPU in {cache_root()}, and {MODE_ENV} "
                "is not aot (the local target makes one with the scoring environment)" if mode != "aot"
                else "the build made now does not load")
        return None
    _status("aot", found[1], "the ahead-of-time build for this interpreter and CPU")
    return found[0]


class Compiled:
    """Stands in for ``numba`` in :mod:`.fastkernels` when a build is loaded: ``@nb.njit(...)``
    gives the built kernel of that name, and any other function one that refuses to run
    (uncompiled, it would be pure Python, orders of magnitude slower)."""

    def __init__(self, kernels: Any) -> None:
        self.kernels = kernels

    def njit(self, *args: Any, **options: Any) -> Any:
        return lambda fn: getattr(self.kernels, fn.__name__, None) or _not_built(fn.__name__)


def _not_built(name: str) -> Any:
    def kernel(*args: Any) -> Any:
        raise TypeError(f"kernel {name} is not in the ahead-of-time build (only the kernels the schemes "
                        f"call are); set {MODE_ENV}=jit to compile it with numba")
    kernel.__name__ = name
    return kernel


# ----------------------------------------------------------------------------- build

def _compile(final: Path, options: tuple[str, ...]) -> None:
    """Compile ``fastkernels.c`` into ``final`` (a new directory, renamed into place whole)."""
    import numpy
    from setuptools import Distribution, Extension

    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        extension = Extension(MODULE, sources=[str(_HERE / SOURCE)], include_dirs=[numpy.get_include()],
                              extra_compile_args=["-O3", *options])
        dist = Distribution({"name": MODULE, "ext_modules": [extension], "script_name": "fastkernels_aot.py"})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(staging)
        command.build_temp = str(staging / "tmp")
        try:
            dist.run_command("build_ext")
        except (Exception, SystemExit) as exc:  # setuptools reports a compiler failure as SystemExit
            raise KernelBuildError(f"{type(exc).__name__}: {exc}") from None
        built = Path(command.get_ext_fullpath(MODULE))
        shutil.rmtree(staging / "tmp", ignore_errors=True)
        (staging / MANIFEST).write_text(json.dumps({
            "file": built.name, "source": SOURCE, "options": ["-O3", *options],
            "compiler": " ".join(command.compiler.compiler_so), "numpy": numpy.__version__,
            "python": sys.version.split()[0], "built": time.time()}, indent=1))
        try:
            staging.rename(final)
        except OSError:  # another build finished first: keep that one
            if not (final / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _prune(keep: list[Path], days: float = 7.0) -> None:
    """Remove this Python's builds of other kernel sources not used for ``days`` (each ~100 KB)."""
    cutoff = time.time() - days * 86400
    for other in cache_root().glob(f"{sys.implementation.cache_tag}-*"):
        manifest = other / MANIFEST
        if other not in keep and manifest.exists() and manifest.stat().st_atime < cutoff:
            shutil.rmtree(other, ignore_errors=True)


def build(portable: bool = False) -> tuple[list[Path], bool]:
    """The builds for this interpreter (this CPU's, or with ``portable`` every :data:`PORTABLE`
    one), made unless the cache has them: (their directories, whether any was made now).
    One build at a time per cache; a second waits, then finds the first's."""
    import fcntl

    targets = [(name, options) for name, _, options in PORTABLE] if portable else [("native", native_options())]
    made, dirs = False, [build_dir(name) for name, _ in targets]
    cache_root().mkdir(parents=True, exist_ok=True)
    with open(cache_root() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for (_, options), final in zip(targets, dirs):
            if not (final / MANIFEST).exists():
                _compile(final, options)
                made = True
    _prune(dirs)
    return dirs, made


def ensure(python: str | os.PathLike = sys.executable, env: dict[str, str] | None = None,
           timeout: float = 300.0, portable: bool = False) -> tuple[Path, bool]:
    """The build for ``python`` (any interpreter with numpy and setuptools: it runs this file as a
    script), made unless the cache has it: (its directory, whether it was made now). Raises
    :class:`KernelBuildError` with the compiler's last line when it fails."""
    argv = [str(python), str(_HERE / "fastkernels_aot.py"), *(["--portable"] if portable else [])]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{type(exc).__name__}: {exc}") from None
    if done.returncode != 0:
        lines = [line for line in (done.stderr or done.stdout).strip().splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()]
        raise KernelBuildError((errors or lines or [f"exit status {done.returncode}"])[-1].strip())
    where, made = done.stdout.strip().splitlines()[-1].split("\t")
    return Path(where), made == "built"


def main(argv: list[str]) -> int:
    """Build unless the cache has it; print ``<first dir>\\t(built|cached)``; exit 1 with the error."""
    try:
        dirs, made = build(portable="--portable" in argv)
    except KernelBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{dirs[0]}\t{'built' if made else 'cached'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
