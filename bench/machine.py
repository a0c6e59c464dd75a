"""What a benchmark ran on: the CPU (model and vector flags: machines differ between sessions), the
cores, the load, Python and the commit. Every bench/ script puts this in its report."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512ifma", "avx512vbmi")


def _cpuinfo() -> tuple[str, list[str]]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first processor's
    except OSError:
        pass
    model = info.get("model name", "unknown")
    if "cpu family" in info:  # a hypervisor may hide the model's name ("AMD EPYC"): family 26 is Zen 5
        model += f" (family {info['cpu family']}, model {info.get('model', '?')})"
    flags = info.get("flags", "").split()
    return model, [flag for flag in VECTOR_FLAGS if flag in flags]


def _commit() -> str:
    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", "aideploy", "plugins",
                                "scoring"], capture_output=True, text=True, check=True).stdout.strip()
        return commit + (" (modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    model, vector = _cpuinfo()
    return {"cpu": model, "vector_flags": vector, "nproc": len(os.sched_getaffinity(0)),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
            "commit": _commit(), "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)}
