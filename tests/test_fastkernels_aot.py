"""The fast scheme's kernels compiled ahead of time (``scoring/fastkernels_aot.py``).

The build is the real one (``numba.pycc``, once per machine: it shares the cache the served
workers use). The kernels are compared with numba's just-in-time ones on the same inputs, in a
fresh interpreter that loads the build, and every call is checked against its compiled type.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from aideploy_scoring import fastkernels_aot
from aideploy_scoring import fastkernels as fk

# Runs with AIDEPLOY_KERNELS=aot: an inverse NTT of the input, one encrypted query end to end in
# each layout, and the refusals of calls that do not fit the compiled types.
AOT_PROCESS = r"""
import json, sys
import numpy as np
from aideploy_scoring import fastkernels as fk
from aideploy_scoring.fastlinear import FastClient, FastServer, _context, choose_params

rng = np.random.default_rng(1)
coef, intercept = rng.normal(size=(3, 20)), rng.normal(size=3)
ctx = _context(choose_params(coef, intercept))
q, tables = ctx.primes[0], ctx.tables
out = {}
x = np.array(json.loads(sys.stdin.read()), dtype=np.uint64)
res = np.empty_like(x)
fk.ntt_inverse(x.copy(), res, q, tables.big[0], tables.tail[0], tables.n_inv[0])  # it overwrites its input
out["intt"] = res.tolist()

server = FastServer(coef, intercept, choose_params(coef, intercept))
client = FastClient(20, 3, server.params)
public = server.load_public(client.public_bundle())
X = rng.uniform(-1, 1, size=(5, 20))
for layout in ("row", "column"):
    got = client.decrypt(server.predict(client.encrypt(X, layout=layout), public), 5)
    out[layout] = float(np.abs(got - (X @ coef.T + intercept)).max())

refused = {}
for what, args in {
        "dtype": (x.astype(np.float64), res, q, tables.big[0], tables.tail[0], tables.n_inv[0]),
        "layout": (np.zeros(2 * len(x), np.uint64)[::2], res, q, tables.big[0], tables.tail[0], tables.n_inv[0]),
        "count": (x, res)}.items():
    try:
        fk.ntt_inverse(*args)
        refused[what] = None
    except TypeError as exc:
        refused[what] = str(exc)
out["refused"] = refused
out["numba"] = "numba" in sys.modules or "llvmlite" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def build():
    where, _ = fastkernels_aot.ensure()
    return where


def _context():
    """The context AOT_PROCESS uses: the same model, so the same parameters and NTT tables."""
    from aideploy_scoring.fastlinear import _context as context, choose_params

    rng = np.random.default_rng(1)
    coef, intercept = rng.normal(size=(3, 20)), rng.normal(size=3)
    return context(choose_params(coef, intercept))


def test_the_build_computes_what_numba_computes_without_numba(build):
    manifest = json.loads((build / fastkernels_aot.MANIFEST).read_text())
    assert {"row_outputs", "column_outputs", "encrypt_zero", "row_plaintexts", "ntt_inverse"} <= set(manifest["kernels"])
    ctx = _context()
    q, tables = ctx.primes[0], ctx.tables
    a = np.random.default_rng(2).integers(0, q, size=ctx.n, dtype=np.uint64)
    proc = subprocess.run([sys.executable, "-c", AOT_PROCESS], input=json.dumps(a.tolist()),
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, fastkernels_aot.MODE_ENV: "aot"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["numba"], "the ahead-of-time kernels must not import numba or llvmlite"
    jit = np.empty_like(a)
    fk.ntt_inverse(a.copy(), jit, q, tables.big[0], tables.tail[0], tables.n_inv[0])  # numba, in this process
    assert out["intt"] == jit.tolist()
    assert out["row"] <= 1e-3 and out["column"] <= 1e-3
    refused = out["refused"]
    assert "argument 0: float64 x 1d, compiled for uint64 x 1d" in refused["dtype"]
    assert "argument 0: a non-C-contiguous array" in refused["layout"]
    assert "takes 6 arguments, got 2" in refused["count"]


def test_a_kernel_missing_from_the_build_refuses_to_run():
    """Under a build, a kernel it lacks is not run as (slow) Python: it raises, naming the way out."""
    missing = fastkernels_aot.Compiled({}).njit(nogil=True, cache=True)(fk.ntt_forward.py_func)
    with pytest.raises(TypeError, match="ntt_forward is not in the ahead-of-time build.*AIDEPLOY_KERNELS=jit"):
        missing(np.zeros(16, np.uint64), np.zeros(16, np.uint64), 17, None, None)


def test_no_build_is_used_unless_asked_and_a_broken_one_is_never_used(tmp_path, monkeypatch):
    monkeypatch.setenv(fastkernels_aot.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(fastkernels_aot.MODE_ENV, raising=False)
    assert fastkernels_aot.load() is None  # just in time unless AIDEPLOY_KERNELS=aot
    monkeypatch.setenv(fastkernels_aot.MODE_ENV, "aot")
    where = fastkernels_aot.build_dir()
    where.mkdir(parents=True)
    (where / fastkernels_aot.MANIFEST).write_text(json.dumps(
        {"kernels": {"ntt_forward": {"module": "_aideploy_fk_ntt_forward", "file": "missing.so", "args": []}}}))
    assert fastkernels_aot.load() is None
    (where / fastkernels_aot.MANIFEST).write_text("{not json")
    assert fastkernels_aot.load() is None


def test_the_build_key_follows_the_source_python_numpy_and_cpu(monkeypatch):
    key = fastkernels_aot.build_key()
    assert key.startswith(sys.implementation.cache_tag) and key == fastkernels_aot.build_key()
    monkeypatch.setattr(fastkernels_aot.np, "__version__", "0.0.1")
    assert fastkernels_aot.build_key() != key
