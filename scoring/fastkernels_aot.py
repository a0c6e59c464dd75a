"""The fast scheme's kernels compiled ahead of time: scoring workers without numba.

:mod:`.fastkernels` is numba source. Just-in-time, a worker pays for numba and LLVM
(~120 MB of RSS each, even when every kernel comes from numba's disk cache) to run a few
compiled loops. Here the same source is compiled once per machine and environment into
plain CPython extension modules (``numba.pycc``), which a worker imports with numpy alone.

- **Build** (``python -m aideploy_scoring.fastkernels_aot``, or :func:`ensure`): in a
  subprocess, run the schemes' own ``warm_up()`` with numba just in time, so every kernel the
  server calls is typed exactly as requests type it; join each kernel's signatures (an array
  seen both read-only and writable is compiled read-only, two layouts as ``A``); compile one
  extension module per kernel (numba miscompiles ``inline="always"`` helpers shared between
  exports of one module) with ``target_cpu="host"``; write ``manifest.json``; rename the
  directory into place, so a reader sees a whole build or none.
- **Load** (:func:`load`, from :mod:`.fastkernels` at import): when
  ``AIDEPLOY_KERNELS`` is ``aot`` (``score.py`` sets it for the server) and a build for
  this very source, Python, numpy and CPU exists. Every call is checked against the
  compiled signature first (dtype, dimensions, contiguity), because a ``pycc`` entry point
  converts whatever it is given: a wrong array would be read as raw memory. A kernel the
  build never saw called raises instead of running uncompiled.

The cache is ``$AIDEPLOY_KERNEL_CACHE`` if set, else ``$XDG_CACHE_HOME/aideploy/kernels``
(``~/.cache/aideploy/kernels``), beside numba's own cache of the same kernels.
"""

from __future__ import annotations

import contextlib
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
from typing import Any, Callable, Iterator

import numpy as np

MODE_ENV = "AIDEPLOY_KERNELS"  # "aot": use a build when there is one; anything else: numba just in time
CACHE_ENV = "AIDEPLOY_KERNEL_CACHE"
MANIFEST = "manifest.json"
_SOURCES = ("fastkernels.py", "fastkernels_aot.py")  # a change to either is a new build
_HERE = Path(__file__).resolve().parent
log = logging.getLogger(__name__)


class KernelBuildError(RuntimeError):
    """The kernels could not be compiled ahead of time (the service then compiles them just in time)."""


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def build_key() -> str:
    """What a build depends on: the kernel source, this Python and numpy, the CPU it targets."""
    digest = hashlib.sha256()
    for name in _SOURCES:
        digest.update((_HERE / name).read_bytes())
    for part in (sys.implementation.cache_tag, np.__version__, platform.machine(), _cpu_flags()):
        digest.update(b"\0" + part.encode())
    return f"{sys.implementation.cache_tag}-{digest.hexdigest()[:24]}"


def cache_root() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "aideploy" / "kernels"


def build_dir() -> Path:
    return cache_root() / build_key()


# ------------------------------------------------------------------------------ load

_DTYPES = {"uint32", "uint64", "int32", "int64", "float64", "bool"}


def _checker(spec: Any) -> Callable[[Any], str | None]:
    """A check of one argument against its compiled type: None when it fits, else why not."""
    kind = spec[0]
    if kind == "array":
        dtype, ndim, layout = np.dtype(spec[1]), spec[2], spec[3]
        flag = {"C": "C_CONTIGUOUS", "F": "F_CONTIGUOUS"}.get(layout)

        def check(value: Any) -> str | None:
            if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != ndim:
                what = f"{value.dtype} x {value.ndim}d" if isinstance(value, np.ndarray) else type(value).__name__
                return f"{what}, compiled for {dtype} x {ndim}d"
            if flag and not value.flags[flag]:
                return f"a non-{layout}-contiguous array, compiled for {layout} order"
            return None
        return check
    if kind == "tuple":
        parts = [_checker(s) for s in spec[1]]

        def check(value: Any) -> str | None:
            if not isinstance(value, tuple) or len(value) != len(parts):
                return f"{type(value).__name__}, compiled for a tuple of {len(parts)}"
            return next((why for part, v in zip(parts, value) if (why := part(v))), None)
        return check
    types = {"int": (int, np.integer), "bool": (bool, np.bool_), "float": (float, np.floating)}[kind]
    return lambda value: None if isinstance(value, types) else f"{type(value).__name__}, compiled for {kind}"


def _guarded(name: str, fn: Callable, specs: list) -> Callable:
    checks = [_checker(s) for s in specs]

    def kernel(*args: Any) -> Any:
        if len(args) != len(checks):
            raise TypeError(f"kernel {name} takes {len(checks)} arguments, got {len(args)}")
        for i, (check, value) in enumerate(zip(checks, args)):
            why = check(value)
            if why:
                raise TypeError(f"kernel {name}, argument {i}: {why} (ahead-of-time build)")
        return fn(*args)

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f"{name}, compiled ahead of time; arguments checked against the compiled signature."
    return kernel


def _not_built(name: str) -> Callable:
    def kernel(*args: Any) -> Any:
        raise TypeError(f"kernel {name} is not in the ahead-of-time build (the schemes' warm-up never "
                        f"calls it); set {MODE_ENV}=jit to compile it with numba")
    kernel.__name__ = name
    return kernel


def load() -> dict[str, Callable] | None:
    """This machine's build, kernel name to checked entry point; None for numba just in time.

    None unless ``AIDEPLOY_KERNELS=aot``; then the build for this source, Python, numpy and
    CPU, made now if there is none (:func:`ensure`). A build that fails or does not load is
    never half used: None.
    """
    if os.environ.get(MODE_ENV, "").lower() != "aot":
        return None
    where = build_dir()
    if not (where / MANIFEST).exists():  # a fresh machine or image: build now (init() waits for it)
        log.info("compiling the fast scheme's kernels ahead of time for this machine (once, about a minute)")
        try:
            ensure(cwd=_HERE.parent)
        except KernelBuildError as exc:
            log.warning("the fast scheme's kernels could not be compiled ahead of time (%s); numba compiles "
                        "them just in time instead", exc)
            return None
    try:
        manifest = json.loads((where / MANIFEST).read_text())
        kernels: dict[str, Callable] = {}
        for name, entry in manifest["kernels"].items():
            path = where / entry["file"]
            loader = importlib.machinery.ExtensionFileLoader(entry["module"], str(path))
            module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(entry["module"], path,
                                                                                            loader=loader))
            loader.exec_module(module)
            kernels[name] = _guarded(name, getattr(module, name), entry["args"])
    except (OSError, ValueError, KeyError, ImportError, AttributeError) as exc:
        log.warning("the fast scheme's kernels in %s do not load (%s: %s); numba compiles them just in time "
                    "instead", where, type(exc).__name__, exc)
        return None
    return kernels


class Compiled:
    """Stands in for ``numba`` in :mod:`.fastkernels` when a build is loaded: ``@nb.njit(...)``
    gives the built kernel of that name, and any other function one that refuses to run
    (uncompiled, it would be pure Python, orders of magnitude slower)."""

    def __init__(self, kernels: dict[str, Callable]) -> None:
        self.kernels = kernels

    def njit(self, *args: Any, **options: Any) -> Callable[[Callable], Callable]:
        return lambda fn: self.kernels.get(fn.__name__) or _not_built(fn.__name__)


# ----------------------------------------------------------------------------- build

def _spec(t: Any) -> Any:
    """A numba type as JSON for the call checks."""
    from numba import types

    if isinstance(t, types.Array):
        return ["array", str(t.dtype), t.ndim, t.layout]
    if isinstance(t, types.BaseTuple):
        return ["tuple", [_spec(x) for x in t.types]]
    if isinstance(t, types.Boolean):
        return ["bool"]
    if isinstance(t, types.Integer):
        return ["int"]
    if isinstance(t, types.Float):
        return ["float"]
    raise KernelBuildError(f"no ahead-of-time argument for numba type {t}")


def _join(a: Any, b: Any) -> Any:
    """One type that both calls fit: read-only if either was, layout ``A`` if they differ,
    ``int64`` for integers of two types."""
    from numba import types

    if isinstance(a, types.Array) and isinstance(b, types.Array) and (a.dtype, a.ndim) == (b.dtype, b.ndim):
        return a.copy(layout=a.layout if a.layout == b.layout else "A", readonly=not (a.mutable and b.mutable))
    if isinstance(a, types.BaseTuple) and isinstance(b, types.BaseTuple) and len(a) == len(b):
        return types.Tuple([_join(x, y) for x, y in zip(a.types, b.types)])
    if a == b:
        return a
    if isinstance(a, types.Integer) and isinstance(b, types.Integer):
        return types.int64  # a Python int here, a numpy uint64 there: the kernels take small values
    raise KernelBuildError(f"calls of one kernel disagree: {a} and {b}")


def _warm_up_workload() -> None:
    """The schemes' own warm-ups (what init() runs) on small stand-in models: every kernel the
    server calls, with every argument type a request gives it."""
    from aideploy_scoring.encrypted import FastMLPScheme, FastScheme
    from aideploy_scoring.keyfetch import KeyFetcher
    from aideploy_scoring.service import LinearModel

    rng = np.random.default_rng(0)
    FastScheme(LinearModel(rng.normal(size=(10, 64)), rng.normal(size=10)), KeyFetcher()).warm_up()
    layers = [(rng.normal(size=(16, 64)) * 0.1, np.zeros(16)), (rng.normal(size=(10, 16)) * 0.1, np.zeros(10))]
    FastMLPScheme(layers, "relu", KeyFetcher(), secret=os.urandom(32), max_queries_per_key=0).warm_up()


@contextlib.contextmanager
def _kernel_flags(dispatcher: Any) -> Iterator[None]:
    """Compile with the kernel's own ``@njit`` options (``error_model="numpy"``, ``fastmath``, ...)
    and the CPU features the JIT uses: ``numba.pycc`` would use numba's defaults (Python's error
    model alone costs the batch kernels ~40%, a zero check before every division) and LLVM's
    default tuning for the CPU."""
    from numba.core import compiler, config
    from numba.core.codegen import AOTCPUCodegen
    from numba.pycc import compiler as pycc_compiler

    def flags() -> Any:
        made = compiler.Flags()
        dispatcher.targetdescr.options.parse_as_flags(made, dispatcher.targetoptions)
        return made

    saved, pycc_compiler.Flags = pycc_compiler.Flags, flags
    features = AOTCPUCodegen._customize_tm_features
    if config.CPU_FEATURES is not None:  # what fastkernels chose for the JIT (512-bit vectors on some CPUs)
        AOTCPUCodegen._customize_tm_features = lambda self: config.CPU_FEATURES
    try:
        yield
    finally:
        pycc_compiler.Flags = saved
        AOTCPUCodegen._customize_tm_features = features


def _build(final: Path) -> None:
    """Compile every kernel the warm-up calls into ``final`` (see the module docstring)."""
    import warnings

    os.environ[MODE_ENV] = "jit"
    from numba.core import types
    from numba.core.registry import CPUDispatcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numba.pycc's pending deprecation: it works, and is the AOT numba has
        from numba.pycc import CC

        from aideploy_scoring import fastkernels

        _warm_up_workload()
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        scratch = tempfile.mkdtemp(prefix=".pycc-", dir=final.parent)
        tempfile.tempdir = scratch  # numba.pycc's build dirs, which it leaves behind on a failure
        try:
            kernels = {}
            for name in fastkernels.__all__:
                dispatcher = getattr(fastkernels, name)
                if not isinstance(dispatcher, CPUDispatcher) or not dispatcher.signatures:
                    continue
                # a fresh compile also records literal specialisations (Literal[bool](False)): unliteral
                signatures = [tuple(types.unliteral(t) for t in sig) for sig in dispatcher.signatures]
                args = signatures[0]
                for other in signatures[1:]:
                    args = tuple(_join(a, b) for a, b in zip(args, other))
                result = dispatcher.nopython_signatures[0].return_type
                module = f"_aideploy_fk_{name}"
                cc = CC(module)
                cc.output_dir = str(staging)
                cc.target_cpu = "host"  # the build is per CPU (build_key), as numba's JIT cache is
                cc.export(name, result(*args))(dispatcher.py_func)
                with _kernel_flags(dispatcher):
                    cc.compile()
                built = next(staging.glob(f"{module}.*"))
                kernels[name] = {"module": module, "file": built.name, "args": [_spec(a) for a in args]}
            (staging / MANIFEST).write_text(json.dumps({"kernels": kernels, "built": time.time()}, indent=1))
            try:
                staging.rename(final)
            except OSError:  # another build finished first: keep that one
                if not (final / MANIFEST).exists():
                    raise
            _prune(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
            tempfile.tempdir = None


def _prune(keep: Path, days: float = 7.0) -> None:
    """Remove this Python's builds of other kernel sources not used for ``days`` (each ~5 MB)."""
    cutoff = time.time() - days * 86400
    for other in keep.parent.glob(f"{sys.implementation.cache_tag}-*"):
        manifest = other / MANIFEST
        if other != keep and manifest.exists() and manifest.stat().st_atime < cutoff:
            shutil.rmtree(other, ignore_errors=True)


def ensure(python: str | os.PathLike = sys.executable, cwd: str | os.PathLike | None = None,
           env: dict[str, str] | None = None, timeout: float = 900.0) -> tuple[Path, bool]:
    """The build for ``python`` (an interpreter that can import ``aideploy_scoring`` from
    ``cwd``): (its directory, whether it was built now). Raises :class:`KernelBuildError`."""
    argv = [str(python), "-m", "aideploy_scoring.fastkernels_aot"]
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KernelBuildError(f"{type(exc).__name__}: {exc}") from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise KernelBuildError(lines[-1] if lines else f"exit status {done.returncode}")
    where, built = done.stdout.strip().splitlines()[-1].split("\t")
    return Path(where), built == "built"


def main() -> int:
    """Build unless this machine has the build; print ``<dir>\\t(built|cached)``. One build at a time."""
    import fcntl

    final = build_dir()
    if (final / MANIFEST).exists():
        print(f"{final}\tcached")
        return 0
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second build waits, then finds the first's
        if not (final / MANIFEST).exists():
            _build(final)
            print(f"{final}\tbuilt")
            return 0
    print(f"{final}\tcached")
    return 0


if __name__ == "__main__":
    sys.exit(main())
