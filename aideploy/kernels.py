"""``encryption=fast``'s compiled kernels for a run: ready before anything waits for them.

The fast scheme's hot path (:mod:`aideploy_scoring.fastkernels`) runs in C kernels compiled ahead
of time (:mod:`aideploy_scoring.fastkernels_aot`: seconds, once per machine), else in numba's
just-in-time ones (about a minute to compile on a machine that never ran them). A run makes sure
the build is there where it is needed:

- aideploy's own process (the model stage's checks, the client's keys, encryption and
  decryption): at the first fast-scheme hook that calls a kernel (:func:`in_process`);
- the scoring environment, as the environment stage builds it (:func:`for_environment`):
  ``target=local``'s workers then import it with numpy alone, and no deploy compiles;
- an Azure target's service where the target declares it (``TargetCapabilities.kernels``):
  in the image build (``managed_endpoint``) or in the first worker's ``init()`` (``aci``).

:func:`for_environment` returns what the environment stage logs and results.json's ``kernels``
says: the path taken (``aot`` or ``jit``) and why.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from aideploy.targets import capabilities
from aideploy_scoring.fastkernels_aot import MODE_ENV, KernelBuildError, ensure

SCHEME = "fast"  # the encryption plugin whose service runs the kernels
log = logging.getLogger("aideploy")

#: Where an Azure service's kernels are compiled, by ``TargetCapabilities.kernels``.
REMOTE = {
    "image": "compiled in the image build (the environment's Dockerfile runs fastkernels_aot.py --portable): "
             "no worker compiles",
    "init": "compiled by the first worker's init() in each new container (seconds; numba if the image has no C "
            "compiler): the target's image request has no build step",
}


def _jit_requested() -> bool:
    return os.environ.get(MODE_ENV, "").lower() == "jit"


def in_process() -> None:
    """aideploy's own kernels from the build from now on, made now if this machine has none."""
    from aideploy_scoring import fastkernels

    if fastkernels.use_build() or _jit_requested():
        return
    started = time.monotonic()
    try:
        _, made = ensure(sys.executable)
    except KernelBuildError as exc:
        log.warning("      the fast scheme's kernels could not be compiled (%s): numba compiles them in "
                        "this process instead", exc)
        return
    fastkernels.use_build()
    if made:
        log.info("      compiled the fast scheme's kernels for this machine in %.1f s (once)",
                     time.monotonic() - started)


def for_environment(ctx: Any, python: Path | None) -> dict[str, Any] | None:
    """The kernels' build for the scoring environment's interpreter (``python``; None: aideploy's
    own), made unless the machine has it; None when the run's scheme has no kernels."""
    if ctx.cfg.encryption.plugin != SCHEME:
        return None
    where = capabilities(ctx).kernels
    if where != "environment":
        return {"path": "aot", "where": where, "why": REMOTE.get(where, where)}
    if _jit_requested():
        return {"path": "jit", "why": f"{MODE_ENV}=jit: each worker compiles them with numba in init()"}
    started = time.monotonic()
    try:
        build, made = ensure(python or sys.executable)
    except KernelBuildError as exc:
        log.warning("      the fast scheme's kernels could not be compiled for the scoring environment (%s): "
                        "each worker compiles them with numba in init()", exc)
        return {"path": "jit", "why": f"compiling them failed ({exc}): each worker compiles them with numba in "
                "init()"}
    return {"path": "aot", "build": str(build), "made": "built" if made else "reused",
            "seconds": round(time.monotonic() - started, 2),
            "why": "compiled from fastkernels.c with this machine's C compiler with the scoring environment "
                   "(once per machine): the workers import them without numba"}


def summary(status: dict[str, Any] | None) -> str | None:
    """The stage log's few words for a :func:`for_environment` status."""
    if status is None:
        return None
    if status["path"] == "jit":
        return "jit (numba in init())"
    if "made" in status:
        return f"aot ({status['made']}, {status['seconds']:g} s)"
    return f"aot ({status['where']})"
