"""The fast scheme's kernels compiled ahead of time (``scoring/fastkernels.c``, ``scoring/fastkernels_aot.py``).

The build is the real one (setuptools and the system's C compiler) into a cache of this module's
own. Every C kernel is compared with numba's on the same inputs, each in a fresh interpreter
(one with ``AIDEPLOY_KERNELS=jit``, one loading the build, without numba), and the fallbacks are
exercised for real: no build, a broken one, a compiler that fails.
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

# Runs every kernel on fixed inputs (row and column layouts, N = 4096 and the generic N = 8192
# path, the rare branches: a rejected uniform word, spare words running out, a ternary draw that
# needs the spare words, strided outputs) and prints a digest of every output and result, then
# which kernels it ran and whether numba was imported.
KERNELS_PROCESS = r"""
import hashlib, json, sys
from pathlib import Path
import numpy as np
from aideploy_scoring import fastkernels as fk, fastkernels_aot
from aideploy_scoring import fastlinear as fl

out = {}
def put(name, *values):
    h = hashlib.sha256()
    for v in values:
        h.update(np.ascontiguousarray(v).tobytes() if isinstance(v, np.ndarray) else repr(v).encode())
    out[name] = h.hexdigest()

rng = np.random.default_rng(7)
for n, bits in ((4096, (32, 32, 32)), (8192, (30, 30, 30))):
    ring = fl._ring(n, bits)
    t = ring.tables
    for j, q in enumerate(ring.primes):
        a = rng.integers(0, q, size=n, dtype=np.uint64)
        f, i = np.empty_like(a), np.empty_like(a)
        fk.ntt_forward(a.copy(), f, q, t.big[j], t.tail[j])
        fk.ntt_inverse(a.copy(), i, q, t.big[j], t.tail[j], t.n_inv[j])
        put(f"ntt {n} {j}", f, i)

coef, intercept = (np.random.default_rng(5).normal(size=(10, 64)) * 0.3, np.random.default_rng(6).normal(size=10))
params = fl.choose_params(coef, intercept)
ctx = fl._context(params)
t, n, L = ctx.tables, ctx.n, len(ctx.primes)
words = rng.integers(0, 2**63, size=2 * n + 2, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
words[5] |= np.uint64(0x3FFFFF) << np.uint64(42)  # no ternary value in its own bits: the spare words give one
u, e = np.empty(n, np.int64), np.empty(n, np.int64)
fk.sample_noise(words, u, e)
put("sample_noise", u, e)
stream = rng.integers(0, 2**32, size=ctx.stream_words, dtype=np.uint32)
stream[3] = np.uint32(0xFFFFFFFF)  # rejected: above the first prime
polys = np.empty((L, n), np.uint32)
put("expand_uniform", fk.expand_uniform(stream, ctx.primes_u32, ctx.prime_masks, polys), polys)
put("expand_uniform short", fk.expand_uniform(stream[:L * n], ctx.primes_u32, ctx.prime_masks, polys.copy()))
put("residues_below", fk.residues_below(polys[None], ctx.primes_u32), fk.residues_below(stream[:L * n].reshape(1, L, n), ctx.primes_u32))

work = Path(sys.argv[1])
server = fl.FastServer(coef, intercept, params)
public = server.load_public((work / "bundle").read_bytes())  # the test's key: the same in every process
z = np.empty((2, L, n), np.uint64)
scratch = fk.workspace(n, L)[0][:5]
for want in (True, False):
    u_back = fk.encrypt_zero(words, ctx.primes_u64, public._pk, public._pkp, t.big, t.tail, t.n_inv, z[1], z[0], want,
                             scratch)
    put(f"encrypt_zero {want}", z[1], z[0] if want else 0, u_back)

wh = rng.integers(-2**20, 2**20, size=(10, 64))
for per, companions in ((4, True), (10, False)):
    groups = -(-10 // per)
    w_ntt = np.empty((groups, L, n), np.uint64)
    w_ntt_p = np.empty((groups if companions else 0, L, n), np.uint64)
    rw = np.zeros((groups, per * 64), np.int64)  # a short last group leaves the rest as it was
    fk.row_plaintexts(wh, per, ctx.primes_u64, t.big, t.tail, w_ntt, w_ntt_p, rw, np.empty(n, np.uint64))
    put(f"row_plaintexts {per}", w_ntt, w_ntt_p, rw)
bias = np.empty((10, L), np.int64)
fk.bias_phases(rng.integers(-2**40, 2**40, size=10), ctx.delta_mod, ctx.primes_u64, bias)
put("bias_phases", bias)
flood = np.empty((L, 12), np.int64)
for bits in (40, 63, 80, 95):
    fk.flood_residues(rng.integers(0, 2**63, size=(12, 2), dtype=np.uint64), bits, fk.flood_constants(bits, ctx.primes_u64), ctx.primes_u64, flood)
    put(f"flood_residues {bits}", flood)
W = rng.normal(size=(12, 9))
scaled = np.empty((5, 9), np.int64)
fk.scaled_weights(W, rng.permutation(12)[:5], rng.random(5) * 1e4, rng.permutation(9), rng.random(9) + 0.5, scaled)
put("scaled_weights mapped", scaled)
fk.scaled_weights(W, rng.permutation(12)[:5], rng.random(5) * 1e4, np.empty(0, np.int64), np.empty(0), scaled)
put("scaled_weights", scaled)

# the request kernels, through the server with its randomness fixed
class Fixed:
    def __init__(self): self.rng = np.random.default_rng(11)
    def words(self, count): return self.rng.integers(0, 2**63, size=count, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
fl._noise = Fixed()
batch_server = fl.FastServer(coef, intercept, fl.choose_params(coef, intercept, max_error=1e-2))
batch_public = batch_server.load_public((work / "batch-bundle").read_bytes())
for name in ("row", "column", "blocks"):  # blocks: more than N samples, the column kernel writes strided slices
    s, p = (batch_server, batch_public) if name == "blocks" else (server, public)
    answer = s.predict((work / f"{name}.query").read_bytes(), p)
    (work / f"{name}.{sys.argv[2]}").write_bytes(answer)
    put(f"predict {name}", answer)
out["status"] = fastkernels_aot.STATUS
out["numba"] = "numba" in sys.modules or "llvmlite" in sys.modules
print(json.dumps(out))
"""

KERNELS_MODEL = (np.random.default_rng(5).normal(size=(10, 64)) * 0.3, np.random.default_rng(6).normal(size=10))

# Calls that do not fit a compiled signature, under the build.
REFUSALS_PROCESS = r"""
import json
import numpy as np
from aideploy_scoring import fastkernels as fk
from aideploy_scoring.fastlinear import _context, choose_params

coef, intercept = np.ones((3, 20)), np.zeros(3)
ctx = _context(choose_params(coef, intercept))
t, q = ctx.tables, ctx.primes[0]
x, res = np.zeros(ctx.n, np.uint64), np.empty(ctx.n, np.uint64)
refused = {}
for what, args in {
        "dtype": (x.astype(np.float64), res, q, t.big[0], t.tail[0], t.n_inv[0]),
        "layout": (np.zeros(2 * ctx.n, np.uint64)[::2], res, q, t.big[0], t.tail[0], t.n_inv[0]),
        "read-only": (x, np.frombuffer(res.tobytes(), np.uint64), q, t.big[0], t.tail[0], t.n_inv[0]),
        "not an array": (x.tolist(), res, q, t.big[0], t.tail[0], t.n_inv[0]),
        "not an int": (x, res, "q", t.big[0], t.tail[0], t.n_inv[0]),
        "count": (x, res)}.items():
    try:
        fk.ntt_inverse(*args)
        refused[what] = None
    except TypeError as exc:
        refused[what] = str(exc)
print(json.dumps(refused))
"""


def run_python(code: str, env: dict[str, str], *args) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A kernel cache holding this machine's build, made now (seconds)."""
    root = tmp_path_factory.mktemp("kernels")
    where, made = fastkernels_aot.ensure(env={**os.environ, fastkernels_aot.CACHE_ENV: str(root)})
    assert made and where.parent == root
    return root


def test_every_c_kernel_computes_what_numba_computes_without_numba(cache, tmp_path):
    from aideploy_scoring import fastlinear as fl

    clients = {}  # the keys and queries: made here, the same for both processes
    for name, max_error, samples, layout in (("row", 1e-3, 5, "row"), ("column", 1e-3, 5, "column"),
                                             ("blocks", 1e-2, 4096 + 5, "column")):
        params = fl.choose_params(*KERNELS_MODEL, max_error=max_error)
        client = clients.setdefault(max_error, fl.FastClient(64, 10, params))
        X = np.random.default_rng(3).uniform(-1, 1, size=(samples, 64))
        (tmp_path / f"{name}.query").write_bytes(client.encrypt(X, layout=layout))
    (tmp_path / "bundle").write_bytes(clients[1e-3].public_bundle())
    (tmp_path / "batch-bundle").write_bytes(clients[1e-2].public_bundle())
    env = {fastkernels_aot.CACHE_ENV: str(cache)}
    jit = run_python(KERNELS_PROCESS, {**env, fastkernels_aot.MODE_ENV: "jit"}, tmp_path, "jit")
    aot = run_python(KERNELS_PROCESS, {**env, fastkernels_aot.MODE_ENV: "aot"}, tmp_path, "aot")
    assert jit["status"]["kernels"] == "jit" and jit["numba"]
    assert aot["status"]["kernels"] == "aot" and aot["status"]["build"].startswith(str(cache))
    assert not aot["numba"], "the ahead-of-time kernels must not import numba or llvmlite"
    differ = [name for name in jit if name not in ("status", "numba") and jit[name] != aot[name]]
    assert differ == []
    for name, max_error, samples in (("row", 1e-3, 5), ("column", 1e-3, 5), ("blocks", 1e-2, 4096 + 5)):
        X = np.random.default_rng(3).uniform(-1, 1, size=(samples, 64))
        scores = clients[max_error].decrypt((tmp_path / f"{name}.aot").read_bytes(), samples)
        assert np.abs(scores - (X @ KERNELS_MODEL[0].T + KERNELS_MODEL[1])).max() <= max_error, name


def test_a_call_that_does_not_fit_the_compiled_signature_is_refused(cache):
    refused = run_python(REFUSALS_PROCESS, {fastkernels_aot.CACHE_ENV: str(cache), fastkernels_aot.MODE_ENV: "aot"})
    assert "argument 0: float64 x 1d, compiled for uint64 x 1d" in refused["dtype"]
    assert "argument 0: a non-C-contiguous array, compiled for C order" in refused["layout"]
    assert "argument 1: a read-only array, which the kernel writes" in refused["read-only"]
    assert "argument 0: list, compiled for uint64 x 1d" in refused["not an array"]
    assert "argument 2: str, compiled for int" in refused["not an int"]
    assert "takes 6 arguments, got 2" in refused["count"]


def test_a_kernel_missing_from_the_build_refuses_to_run():
    """Under a build, a kernel it lacks is not run as (slow) Python: it raises, naming the way out."""
    def ntt_forward(*args):
        raise AssertionError("the pure-Python function ran")

    missing = fastkernels_aot.Compiled(object()).njit(nogil=True, cache=True)(ntt_forward)
    with pytest.raises(TypeError, match="ntt_forward is not in the ahead-of-time build.*AIDEPLOY_KERNELS=jit"):
        missing(np.zeros(16, np.uint64), np.zeros(16, np.uint64), 17, None, None)


def test_no_build_is_used_unless_there_is_one_and_a_broken_one_is_never_used(tmp_path, monkeypatch, cache):
    monkeypatch.delenv(fastkernels_aot.MODE_ENV, raising=False)
    monkeypatch.setenv(fastkernels_aot.CACHE_ENV, str(cache))
    assert fastkernels_aot.load() is not None  # there is one: a client uses it too
    monkeypatch.setenv(fastkernels_aot.MODE_ENV, "jit")
    assert fastkernels_aot.load() is None and fastkernels_aot.STATUS["why"] == "AIDEPLOY_KERNELS=jit"
    monkeypatch.delenv(fastkernels_aot.MODE_ENV)
    monkeypatch.setenv(fastkernels_aot.CACHE_ENV, str(tmp_path))
    assert fastkernels_aot.load() is None  # none, and none is made unless AIDEPLOY_KERNELS=aot
    assert "no build for this interpreter and CPU" in fastkernels_aot.STATUS["why"]
    assert list(tmp_path.iterdir()) == []
    where = fastkernels_aot.build_dir()
    where.mkdir(parents=True)
    (where / fastkernels_aot.MANIFEST).write_text(json.dumps({"file": "missing.so"}))
    assert fastkernels_aot.load() is None
    (where / fastkernels_aot.MANIFEST).write_text("{not json")
    assert fastkernels_aot.load() is None


def test_a_service_without_a_build_makes_one_and_one_that_cannot_runs_numba(tmp_path):
    """``AIDEPLOY_KERNELS=aot`` (as score.py serves) on a machine without a build: init() compiles one;
    with a compiler that fails, the kernels are numba's, and say why."""
    script = ("import json, sys; from aideploy_scoring import fastkernels as fk, fastkernels_aot as a; "
              "from aideploy_scoring.fastlinear import FastClient, FastServer, choose_params; import numpy as np; "
              "c, b = np.ones((2, 8)), np.zeros(2); s = FastServer(c, b, choose_params(c, b)); "
              "cl = FastClient(8, 2, s.params); x = np.full((1, 8), 0.5); "
              "answer = s.predict(cl.encrypt(x), s.load_public(cl.public_bundle())); "
              "err = float(np.abs(cl.decrypt(answer, 1) - 4).max()); "
              "print(json.dumps({'status': a.STATUS, 'numba': 'numba' in sys.modules, 'err': err}))")
    made = run_python(script, {fastkernels_aot.MODE_ENV: "aot", fastkernels_aot.CACHE_ENV: str(tmp_path / "made")})
    assert made["status"]["kernels"] == "aot" and "compiled now" in made["status"]["why"] and not made["numba"]
    failed = run_python(script, {fastkernels_aot.MODE_ENV: "aot", fastkernels_aot.CACHE_ENV: str(tmp_path / "failed"),
                                 "CC": "/bin/false"})
    assert failed["status"]["kernels"] == "jit" and "compiling one failed" in failed["status"]["why"]
    assert failed["numba"] and failed["err"] <= 1e-3 and made["err"] <= 1e-3


def test_a_failed_build_names_the_compilers_complaint(tmp_path):
    with pytest.raises(fastkernels_aot.KernelBuildError) as failed:
        fastkernels_aot.ensure(env={**os.environ, fastkernels_aot.CACHE_ENV: str(tmp_path), "CFLAGS": "-Werror=bogus"})
    assert "error" in str(failed.value).lower()
    assert not any(p.name.startswith("cpython") for p in tmp_path.iterdir())  # nothing half-built is left


def test_the_build_key_follows_the_source_python_numpy_and_cpu(monkeypatch):
    key = fastkernels_aot.build_key()
    assert key.startswith(f"{sys.implementation.cache_tag}-np{np.__version__.split('.')[0]}-native-")
    assert key == fastkernels_aot.build_key() and fastkernels_aot.build_key("x86-64-v3") != key
    monkeypatch.setattr(fastkernels_aot, "_cpu_flags", lambda: {"sse2"})
    assert fastkernels_aot.build_key() != key  # another CPU
    assert fastkernels_aot.build_key("x86-64-v3") == fastkernels_aot.build_key("x86-64-v3")
    portable = fastkernels_aot.build_key("x86-64-v3")
    monkeypatch.setattr(fastkernels_aot, "_numpy_major", lambda: "3")
    assert fastkernels_aot.build_key("x86-64-v3") != portable  # another numpy C API


def test_portable_builds_are_picked_by_the_cpus_flags(tmp_path, monkeypatch):
    """An image's builds (one per x86-64 level) load on a CPU that has the level's flags, best first."""
    monkeypatch.setenv(fastkernels_aot.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(fastkernels_aot, "_cpu_flags", lambda: {"avx2", "fma", "bmi1", "bmi2", "f16c", "movbe"})
    assert fastkernels_aot._candidates() == ["native", "x86-64-v3"]
    monkeypatch.setattr(fastkernels_aot, "_cpu_flags", lambda: {"sse2"})
    assert fastkernels_aot._candidates() == ["native"]


def test_a_process_switches_to_a_build_made_after_its_import(cache, tmp_path):
    """aideploy imports the kernels before a run has made the build (numba's, then); once it is
    made, ``use_build`` switches the process to it."""
    script = ("import json, os; from aideploy_scoring import fastkernels as fk, fastkernels_aot as a; "
              "before = type(fk.ntt_forward).__name__; "
              f"os.environ[a.CACHE_ENV] = {str(cache)!r}; "
              "switched = fk.use_build(); "
              "print(json.dumps({'before': before, 'switched': switched, 'after': type(fk.ntt_forward).__name__}))")
    out = run_python(script, {fastkernels_aot.CACHE_ENV: str(tmp_path), fastkernels_aot.MODE_ENV: ""})
    assert out == {"before": "CPUDispatcher", "switched": True, "after": "builtin_function_or_method"}
