"""Compiled kernels of the fast scheme: NTTs, noise sampling and the fused row scorer.

numpy alone spends most of a single query in a dozen passes over 2 x 4096-word arrays
(and the NTTs of a public-key encryption of zero are out of its reach), so the hot
path is compiled with numba (LLVM; vectorised for the CPU it runs on, no GIL held just in
time). Scoring workers run the same kernels written in C (``fastkernels.c``) and compiled ahead
of time (:mod:`.fastkernels_aot`); so does any process that finds that build on its machine.
Every kernel works on 32-bit residues modulo primes ``q < 2^32`` and multiplies them
with Shoup's method: for a fixed factor ``w`` and ``w' = floor(w * 2^32 / q)``,
``x * w - floor(x * w' / 2^32) * q`` lies in ``[0, 2q)`` for every ``x < 2^32``,
so one conditional subtraction reduces it (all products fit in uint64).

NTT-domain order.  The negacyclic NTT here is SEAL's (same primes, same minimal
2N-th root, Cooley-Tukey with bit-reversed twiddles), but its output is written in
*tiled* order: SEAL's vector viewed as an ``(N/16, 16)`` matrix and transposed.  That
saves the transpose back after the last four butterfly layers, which are done on
the transposed tile so that every layer runs over contiguous memory.  For N = 4096
the twelve layers run as three radix-16 passes (four layers in registers per pass,
~9 us per transform on the benchmark machine); other N take a generic radix-2 path.  Arrays in the
NTT domain are in tiled order everywhere on the server and on the wire;
:func:`to_seal_order` / :func:`from_seal_order` convert on the client.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from . import fastkernels_aot

__all__ = ["NttTables", "to_seal_order", "from_seal_order", "ntt_forward", "ntt_inverse",
           "expand_uniform", "residues_below", "sample_noise", "encrypt_zero", "row_outputs", "column_outputs",
           "flood_residues", "flood_constants", "scaled_weights", "row_plaintexts", "bias_phases", "workspace",
           "aligned", "shoup", "pk0_reversed"]

_BUILT = fastkernels_aot.load()  # the ahead-of-time build (scoring workers; any process that has one), else None
#: Whether the kernels run without the GIL, so that threads calling them run at once: numba's
#: do (``nogil``), and so do the C ones.
RELEASES_GIL = True
#: The kernels: numba's, or the build's once :func:`use_build` ran (also at import, when there is one).
KERNELS = ("ntt_forward", "ntt_inverse", "expand_uniform", "residues_below", "sample_noise", "encrypt_zero",
           "scaled_weights", "row_plaintexts", "bias_phases", "flood_residues", "row_outputs", "column_outputs")
if _BUILT is not None:
    nb = fastkernels_aot.Compiled(_BUILT)  # no numba, no LLVM in this process
else:
    import numba as nb
    from numba.core import caching as _caching

    class _ContentCacheLocator(_caching._SourceFileBackedLocatorMixin, _caching._CacheLocator):
        """Numba's on-disk cache for this module, found by the module's *content*.

        Numba files its cache under the source file's directory (or a directory derived from its
        path), but this module runs from a fresh staged copy of the scoring package in every
        deployment, so each service would compile from scratch (seconds per worker).  Keyed by
        a hash of this file instead, every copy shares one cache: ``$NUMBA_CACHE_DIR`` if set,
        else ``$XDG_CACHE_HOME/aideploy/numba`` (``~/.cache/aideploy/numba``).  Numba still checks
        the source stamp and the CPU; an unwritable location falls back to numba's own locators.
        """

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            with open(py_file, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()[:24]
            root = os.environ.get("NUMBA_CACHE_DIR") or os.path.join(
                os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "aideploy", "numba")
            self._cache_path = os.path.join(root, f"fastkernels-{digest}")

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if py_func.__module__ != __name__ or not os.path.isfile(py_file):
                return None
            locator = cls(py_func, py_file)
            try:
                locator.ensure_cache_path()
            except OSError:
                return None
            return locator

    _caching.CacheImpl._locator_classes.insert(0, _ContentCacheLocator)  # numba >= 0.68 (pyproject pins it)

# CPUs whose 512-bit vector instructions run without lowering the clock (Skylake-SP's do not).
_WIDE_VECTOR_CPUS = ("icelake-server", "sapphirerapids", "emeraldrapids", "graniterapids", "znver4", "znver5")


def _prefer_512_bit_vectors() -> None:
    """Let LLVM vectorise with 512-bit registers on the CPUs in :data:`_WIDE_VECTOR_CPUS`.

    LLVM's tuning for every AVX-512 Intel CPU says ``prefer-256-bit`` (for Skylake-SP's
    frequency drop), so numba emits ymm code there; the NTTs and pointwise products here run
    ~1.3x faster with zmm on Sapphire/Emerald Rapids.  Numba takes the features once, when it
    makes its target machine, for the whole process: this sets ``numba.config.CPU_FEATURES``
    (host features, minus that tuning) unless the user set ``NUMBA_CPU_FEATURES``, and does
    nothing if numba compiled something before this module was imported.  Numba's cache keys
    on the features, so the cached kernels follow.
    """
    from llvmlite import binding as ll
    from numba.core import config

    if config.CPU_FEATURES is not None or config.CPU_NAME is not None:
        return
    try:
        features = ll.get_host_cpu_features()
        name = ll.get_host_cpu_name()
    except RuntimeError:
        return
    if name in _WIDE_VECTOR_CPUS and features.get("avx512f"):
        config.CPU_FEATURES = features.flatten() + ",-prefer-256-bit"


if _BUILT is None:
    _prefer_512_bit_vectors()  # the ahead-of-time build takes the same features (fastkernels_aot)

_TILE = 16  # the last log2(_TILE) layers run on the transposed (16, N/16) tile
_U32 = np.uint32
_U64 = np.uint64
_JIT = dict(nogil=True, cache=True, error_model="numpy", boundscheck=False)


def to_seal_order(x: np.ndarray) -> np.ndarray:
    """Tiled NTT order (last axis) -> SEAL's NTT order."""
    n = x.shape[-1]
    return np.ascontiguousarray(x.reshape(*x.shape[:-1], _TILE, n // _TILE).swapaxes(-1, -2)).reshape(x.shape)


def from_seal_order(x: np.ndarray) -> np.ndarray:
    """SEAL's NTT order (last axis) -> tiled NTT order."""
    n = x.shape[-1]
    return np.ascontiguousarray(x.reshape(*x.shape[:-1], n // _TILE, _TILE).swapaxes(-1, -2)).reshape(x.shape)


def shoup(w: np.ndarray, q: int) -> np.ndarray:
    """Shoup companions ``floor(w * 2^32 / q)`` of residues ``w < q < 2^32`` (uint64)."""
    return (np.asarray(w, dtype=np.uint64) << _U64(32)) // _U64(q)


def _bitrev(i: int, bits: int) -> int:
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


def _powers(x: int, n: int, q: int) -> np.ndarray:
    """``x^0 .. x^(n-1) mod q`` as uint64."""
    out = [1] * n
    for i in range(1, n):
        out[i] = out[i - 1] * x % q
    return np.array(out, dtype=np.uint64)


class NttTables:
    """Twiddle tables for the negacyclic NTT modulo ``primes``, matching SEAL's transform.

    ``roots[j]`` is the 2N-th primitive root SEAL uses for ``primes[j]`` (read from
    SEAL's transform of ``X``, so the two agree by construction; the tests check it).
    """

    def __init__(self, n: int, primes: tuple[int, ...], roots: tuple[int, ...]):
        if n % (2 * _TILE) or n < 2 * _TILE:
            raise ValueError(f"N={n} is not a supported power of two")
        bits = n.bit_length() - 1
        rev = np.array([_bitrev(i, bits) for i in range(n)])
        self.n = n
        self.primes = np.array(primes, dtype=np.uint64)
        k = len(primes)
        nb_ = n // _TILE
        # big[j] rows: forward twiddles, their Shoup companions, inverse twiddles, companions
        self.big = _aligned((k, 4, n), np.uint64)
        # tail[j, r, i, b]: twiddle of heap index i = p + s (p = 8/t) for block b, where s is
        # the butterfly group of tail layer t = 8, 4, 2, 1 within the block (row 0 unused)
        self.tail = _aligned((k, 4, _TILE, nb_), np.uint64)
        self.tail[:] = 0
        self.n_inv = np.empty((k, 2), dtype=np.uint64)
        for j, (q, psi) in enumerate(zip(primes, roots)):
            if pow(psi, n, q) != q - 1:
                raise ValueError(f"{psi} is not a primitive 2N-th root of unity mod {q}")
            fwd = _powers(psi, n, q)[rev]
            bwd = _powers(pow(psi, -1, q), n, q)[rev]
            for r, tab in enumerate((fwd, shoup(fwd, q), bwd, shoup(bwd, q))):
                self.big[j, r] = tab
            for layer, t in enumerate((8, 4, 2, 1)):
                m = n // (2 * t)  # twiddle index base of this layer
                per = (_TILE // 2) // t  # distinct twiddles per 16-element block
                idx = m + np.arange(nb_)[None, :] * per + np.arange(per)[:, None]
                for r in range(4):
                    self.tail[j, r, per:2 * per] = self.big[j, r][idx]
            ninv = pow(n, -1, q)
            self.n_inv[j] = (ninv, (ninv << 32) // q)


# ------------------------------------------------------------------------ primitives


@nb.njit(inline="always")
def _mulmod(x, w, wp, q):
    """x * w mod q for x, w < q < 2^32 given Shoup's wp (all uint64 values)."""
    r = x * w - ((x * wp) >> _U64(32)) * q
    return min(r, r - q)  # r in [0, 2q): unsigned wrap makes min() the conditional subtract


@nb.njit(inline="always")
def _ct_layer(x, y, w, wp, q):
    """Cooley-Tukey butterflies over contiguous runs, one twiddle."""
    for i in range(x.shape[0]):
        u = x[i]
        v = _mulmod(y[i], w, wp, q)
        s = u + v
        x[i] = min(s, s - q)
        d = u + q - v
        y[i] = min(d, d - q)


@nb.njit(inline="always")
def _ct_layer_v(x, y, w, wp, q):
    """Cooley-Tukey butterflies, one twiddle per butterfly."""
    for i in range(x.shape[0]):
        u = x[i]
        v = _mulmod(y[i], w[i], wp[i], q)
        s = u + v
        x[i] = min(s, s - q)
        d = u + q - v
        y[i] = min(d, d - q)


@nb.njit(inline="always")
def _gs_layer(x, y, w, wp, q):
    """Gentleman-Sande butterflies over contiguous runs, one twiddle."""
    for i in range(x.shape[0]):
        u = x[i]
        v = y[i]
        s = u + v
        x[i] = min(s, s - q)
        d = u + q - v
        y[i] = _mulmod(min(d, d - q), w, wp, q)


@nb.njit(inline="always")
def _gs_layer_v(x, y, w, wp, q):
    """Gentleman-Sande butterflies, one twiddle per butterfly."""
    for i in range(x.shape[0]):
        u = x[i]
        v = y[i]
        s = u + v
        x[i] = min(s, s - q)
        d = u + q - v
        y[i] = _mulmod(min(d, d - q), w[i], wp[i], q)


@nb.njit(nogil=True, cache=True)
def _ct_tail_layer(tile, w, wp, t, q):
    """One Cooley-Tukey layer of half-distance t < 16 on the transposed tile (generic N)."""
    per = (_TILE // 2) // t
    for r0 in range(0, _TILE, 2 * t):
        s = per + r0 // (2 * t)
        for r in range(r0, r0 + t):
            _ct_layer_v(tile[r], tile[r + t], w[s], wp[s], q)


@nb.njit(nogil=True, cache=True)
def _gs_tail_layer(tile, w, wp, t, q):
    """One Gentleman-Sande layer of half-distance t < 16 on the transposed tile (generic N)."""
    per = (_TILE // 2) // t
    for r0 in range(0, _TILE, 2 * t):
        s = per + r0 // (2 * t)
        for r in range(r0, r0 + t):
            _gs_layer_v(tile[r], tile[r + t], w[s], wp[s], q)


# N = 4096 kernels.  Sixteen values per loop iteration go through four layers in registers
# (radix 16), so the twelve layers take three passes over the data.  Every index is a
# compile-time-constant stride plus the loop counter: LLVM then proves the sixteen streams
# disjoint and vectorises (with the strides as runtime values it gives up).  The masks in
# _mulmod32 let it use vpmuludq (32x32->64) instead of a full 64-bit multiply.

_N4K = 4096
_M32 = np.uint64(0xFFFFFFFF)


@nb.njit(inline="always")
def _mulmod32(x, w, wp, q):
    """:func:`_mulmod` with every operand masked to 32 bits, so that LLVM multiplies with
    vpmuludq (32x32 -> 64) rather than a full 64-bit multiply."""
    x = x & _M32
    r = x * (w & _M32) - (((x * (wp & _M32)) >> _U64(32)) * (q & _M32))
    return min(r, r - q)


@nb.njit(inline="always")
def _ct(u, v, w, wp, q):
    t = _mulmod32(v, w, wp, q)
    s = u + t
    d = u - t
    return min(s, s - q), min(d, d + q)


@nb.njit(inline="always")
def _gs(u, v, w, wp, q):
    s = u + v
    d = u - v
    return min(s, s - q), _mulmod32(min(d, d + q), w, wp, q)


@nb.njit(inline="always")
def _ct16(x, w, wp, q):
    """Four Cooley-Tukey layers on 16 values (half-distances 8, 4, 2, 1; heap-ordered twiddles)."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = x
    w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = w
    wp1, wp2, wp3, wp4, wp5, wp6, wp7, wp8, wp9, wp10, wp11, wp12, wp13, wp14, wp15 = wp
    x0, x8 = _ct(x0, x8, w1, wp1, q)
    x1, x9 = _ct(x1, x9, w1, wp1, q)
    x2, x10 = _ct(x2, x10, w1, wp1, q)
    x3, x11 = _ct(x3, x11, w1, wp1, q)
    x4, x12 = _ct(x4, x12, w1, wp1, q)
    x5, x13 = _ct(x5, x13, w1, wp1, q)
    x6, x14 = _ct(x6, x14, w1, wp1, q)
    x7, x15 = _ct(x7, x15, w1, wp1, q)
    x0, x4 = _ct(x0, x4, w2, wp2, q)
    x1, x5 = _ct(x1, x5, w2, wp2, q)
    x2, x6 = _ct(x2, x6, w2, wp2, q)
    x3, x7 = _ct(x3, x7, w2, wp2, q)
    x8, x12 = _ct(x8, x12, w3, wp3, q)
    x9, x13 = _ct(x9, x13, w3, wp3, q)
    x10, x14 = _ct(x10, x14, w3, wp3, q)
    x11, x15 = _ct(x11, x15, w3, wp3, q)
    x0, x2 = _ct(x0, x2, w4, wp4, q)
    x1, x3 = _ct(x1, x3, w4, wp4, q)
    x4, x6 = _ct(x4, x6, w5, wp5, q)
    x5, x7 = _ct(x5, x7, w5, wp5, q)
    x8, x10 = _ct(x8, x10, w6, wp6, q)
    x9, x11 = _ct(x9, x11, w6, wp6, q)
    x12, x14 = _ct(x12, x14, w7, wp7, q)
    x13, x15 = _ct(x13, x15, w7, wp7, q)
    x0, x1 = _ct(x0, x1, w8, wp8, q)
    x2, x3 = _ct(x2, x3, w9, wp9, q)
    x4, x5 = _ct(x4, x5, w10, wp10, q)
    x6, x7 = _ct(x6, x7, w11, wp11, q)
    x8, x9 = _ct(x8, x9, w12, wp12, q)
    x10, x11 = _ct(x10, x11, w13, wp13, q)
    x12, x13 = _ct(x12, x13, w14, wp14, q)
    x14, x15 = _ct(x14, x15, w15, wp15, q)
    return (x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)


@nb.njit(inline="always")
def _gs16(x, w, wp, q):
    """Four Gentleman-Sande layers on 16 values (half-distances 1, 2, 4, 8), inverse of :func:`_ct16`."""
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = x
    w1, w2, w3, w4, w5, w6, w7, w8, w9, w10, w11, w12, w13, w14, w15 = w
    wp1, wp2, wp3, wp4, wp5, wp6, wp7, wp8, wp9, wp10, wp11, wp12, wp13, wp14, wp15 = wp
    x0, x1 = _gs(x0, x1, w8, wp8, q)
    x2, x3 = _gs(x2, x3, w9, wp9, q)
    x4, x5 = _gs(x4, x5, w10, wp10, q)
    x6, x7 = _gs(x6, x7, w11, wp11, q)
    x8, x9 = _gs(x8, x9, w12, wp12, q)
    x10, x11 = _gs(x10, x11, w13, wp13, q)
    x12, x13 = _gs(x12, x13, w14, wp14, q)
    x14, x15 = _gs(x14, x15, w15, wp15, q)
    x0, x2 = _gs(x0, x2, w4, wp4, q)
    x1, x3 = _gs(x1, x3, w4, wp4, q)
    x4, x6 = _gs(x4, x6, w5, wp5, q)
    x5, x7 = _gs(x5, x7, w5, wp5, q)
    x8, x10 = _gs(x8, x10, w6, wp6, q)
    x9, x11 = _gs(x9, x11, w6, wp6, q)
    x12, x14 = _gs(x12, x14, w7, wp7, q)
    x13, x15 = _gs(x13, x15, w7, wp7, q)
    x0, x4 = _gs(x0, x4, w2, wp2, q)
    x1, x5 = _gs(x1, x5, w2, wp2, q)
    x2, x6 = _gs(x2, x6, w2, wp2, q)
    x3, x7 = _gs(x3, x7, w2, wp2, q)
    x8, x12 = _gs(x8, x12, w3, wp3, q)
    x9, x13 = _gs(x9, x13, w3, wp3, q)
    x10, x14 = _gs(x10, x14, w3, wp3, q)
    x11, x15 = _gs(x11, x15, w3, wp3, q)
    x0, x8 = _gs(x0, x8, w1, wp1, q)
    x1, x9 = _gs(x1, x9, w1, wp1, q)
    x2, x10 = _gs(x2, x10, w1, wp1, q)
    x3, x11 = _gs(x3, x11, w1, wp1, q)
    x4, x12 = _gs(x4, x12, w1, wp1, q)
    x5, x13 = _gs(x5, x13, w1, wp1, q)
    x6, x14 = _gs(x6, x14, w1, wp1, q)
    x7, x15 = _gs(x7, x15, w1, wp1, q)
    return (x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15)


@nb.njit(inline="always")
def _load16(a, o, s):
    return (a[o], a[o + 1 * s], a[o + 2 * s], a[o + 3 * s], a[o + 4 * s], a[o + 5 * s], a[o + 6 * s], a[o + 7 * s], a[o + 8 * s], a[o + 9 * s], a[o + 10 * s], a[o + 11 * s], a[o + 12 * s], a[o + 13 * s], a[o + 14 * s], a[o + 15 * s])


@nb.njit(inline="always")
def _store16(a, o, s, x):
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9, x10, x11, x12, x13, x14, x15 = x
    a[o] = x0
    a[o + 1 * s] = x1
    a[o + 2 * s] = x2
    a[o + 3 * s] = x3
    a[o + 4 * s] = x4
    a[o + 5 * s] = x5
    a[o + 6 * s] = x6
    a[o + 7 * s] = x7
    a[o + 8 * s] = x8
    a[o + 9 * s] = x9
    a[o + 10 * s] = x10
    a[o + 11 * s] = x11
    a[o + 12 * s] = x12
    a[o + 13 * s] = x13
    a[o + 14 * s] = x14
    a[o + 15 * s] = x15


@nb.njit(inline="always")
def _heap15(w, g):
    """Twiddles ``w[i + p(i) * g]``, i = 1..15, p(i) the largest power of two <= i."""
    return (w[1 + 1 * g], w[2 + 2 * g], w[3 + 2 * g], w[4 + 4 * g], w[5 + 4 * g], w[6 + 4 * g], w[7 + 4 * g], w[8 + 8 * g], w[9 + 8 * g], w[10 + 8 * g], w[11 + 8 * g], w[12 + 8 * g], w[13 + 8 * g], w[14 + 8 * g], w[15 + 8 * g])


@nb.njit(inline="always")
def _col15(tw, r, b):
    """Per-column tail twiddles ``tw[r, i, b]``, i = 1..15."""
    return (tw[r, 1, b], tw[r, 2, b], tw[r, 3, b], tw[r, 4, b], tw[r, 5, b], tw[r, 6, b], tw[r, 7, b], tw[r, 8, b], tw[r, 9, b], tw[r, 10, b], tw[r, 11, b], tw[r, 12, b], tw[r, 13, b], tw[r, 14, b], tw[r, 15, b])


@nb.njit(inline="always")
def _transpose(src, dst, rows, cols):
    """dst (cols, rows) = src (rows, cols) transposed, in 8x8 blocks; both flat arrays."""
    for i0 in range(0, rows, 8):
        for j0 in range(0, cols, 8):
            for j in range(j0, j0 + 8):
                for i in range(i0, i0 + 8):
                    dst[j * rows + i] = src[i * cols + j]


@nb.njit(nogil=True, cache=True)
def _to_tile(a, out):
    """out (16, 256) = a (256, 16) transposed."""
    _transpose(a, out, 256, 16)


@nb.njit(nogil=True, cache=True)
def _from_tile(x, out):
    """Inverse of :func:`_to_tile`."""
    _transpose(x, out, 16, 256)


@nb.njit(nogil=True, cache=True)
def _ct_pass1(a, q, w, wp):
    """Layers t = 2048 .. 256: sixteen values 256 apart, twiddles w[1..15]."""
    w = _heap15(w, 0)
    wp = _heap15(wp, 0)
    for j in range(256):
        _store16(a, j, 256, _ct16(_load16(a, j, 256), w, wp, q))


@nb.njit(nogil=True, cache=True)
def _ct_pass2(a, q, w, wp):
    """Layers t = 128 .. 16: in each run of 256, sixteen values 16 apart."""
    for g in range(16):
        wg = _heap15(w, 15 + g)
        wpg = _heap15(wp, 15 + g)
        o = g * 256
        for j in range(16):
            _store16(a, o + j, 16, _ct16(_load16(a, o + j, 16), wg, wpg, q))


@nb.njit(nogil=True, cache=True)
def _ct_pass3(x, q, tail):
    """Layers t = 8 .. 1 on the (16, 256) tile: values 256 apart, per-column twiddles."""
    for b in range(256):
        _store16(x, b, 256, _ct16(_load16(x, b, 256), _col15(tail, 0, b), _col15(tail, 1, b), q))


@nb.njit(nogil=True, cache=True)
def _gs_pass3(x, q, tail):
    for b in range(256):
        _store16(x, b, 256, _gs16(_load16(x, b, 256), _col15(tail, 2, b), _col15(tail, 3, b), q))


@nb.njit(nogil=True, cache=True)
def _gs_pass2(a, q, w, wp):
    for g in range(16):
        wg = _heap15(w, 15 + g)
        wpg = _heap15(wp, 15 + g)
        o = g * 256
        for j in range(16):
            _store16(a, o + j, 16, _gs16(_load16(a, o + j, 16), wg, wpg, q))


@nb.njit(nogil=True, cache=True)
def _gs_pass1(a, q, w, wp, n_inv):
    """Layers t = 256 .. 2048, with the 1/N scaling folded into the last layer."""
    ni = n_inv[0]
    nip = n_inv[1]
    w1 = _mulmod32(w[1], ni, nip, q)
    w = (w1,) + _heap15(w, 0)[1:]
    wp = ((w1 << _U64(32)) // q,) + _heap15(wp, 0)[1:]
    for j in range(256):
        y = _gs16(_load16(a, j, 256), w, wp, q)
        _store16(a, j, 256, (_mulmod32(y[0], ni, nip, q), _mulmod32(y[1], ni, nip, q),
                             _mulmod32(y[2], ni, nip, q), _mulmod32(y[3], ni, nip, q),
                             _mulmod32(y[4], ni, nip, q), _mulmod32(y[5], ni, nip, q),
                             _mulmod32(y[6], ni, nip, q), _mulmod32(y[7], ni, nip, q),
                             y[8], y[9], y[10], y[11], y[12], y[13], y[14], y[15]))


@nb.njit(**_JIT)
def ntt_forward(a, out, q, big, tail):
    """Negacyclic NTT of ``a`` (natural order, residues < q; overwritten) into ``out`` (tiled order).

    ``big``/``tail`` are one prime's rows of :class:`NttTables` (``tables.big[j]``,
    ``tables.tail[j]``).
    """
    n = a.shape[0]
    if n == _N4K:
        q = _U64(q) & _M32
        _ct_pass1(a, q, big[0], big[1])
        _ct_pass2(a, q, big[0], big[1])
        _to_tile(a, out)
        _ct_pass3(out, q, tail)
        return
    q = _U64(q)
    t = n
    m = 1
    while t > _TILE:
        t >>= 1
        for i in range(m):
            j = 2 * i * t
            _ct_layer(a[j:j + t], a[j + t:j + 2 * t], big[0, m + i], big[1, m + i], q)
        m <<= 1
    nb_ = n // _TILE
    _transpose(a, out, nb_, _TILE)
    tile = out.reshape(_TILE, nb_)
    _ct_tail_layer(tile, tail[0], tail[1], 8, q)
    _ct_tail_layer(tile, tail[0], tail[1], 4, q)
    _ct_tail_layer(tile, tail[0], tail[1], 2, q)
    _ct_tail_layer(tile, tail[0], tail[1], 1, q)


@nb.njit(**_JIT)
def ntt_inverse(x, out, q, big, tail, n_inv):
    """Inverse of :func:`ntt_forward`: ``x`` (tiled order; overwritten) into ``out`` (natural)."""
    n = x.shape[0]
    if n == _N4K:
        q = _U64(q) & _M32
        _gs_pass3(x, q, tail)
        _from_tile(x, out)
        _gs_pass2(out, q, big[2], big[3])
        _gs_pass1(out, q, big[2], big[3], n_inv)
        return
    q = _U64(q)
    nb_ = n // _TILE
    tile = x.reshape(_TILE, nb_)
    _gs_tail_layer(tile, tail[2], tail[3], 1, q)
    _gs_tail_layer(tile, tail[2], tail[3], 2, q)
    _gs_tail_layer(tile, tail[2], tail[3], 4, q)
    _gs_tail_layer(tile, tail[2], tail[3], 8, q)
    _transpose(x, out, _TILE, nb_)
    t = _TILE
    m = n // (2 * t)
    while t < n:
        for i in range(m):
            j = 2 * i * t
            _gs_layer(out[j:j + t], out[j + t:j + 2 * t], big[2, m + i], big[3, m + i], q)
        t <<= 1
        m >>= 1
    w = n_inv[0]
    wp = n_inv[1]
    for i in range(n):
        out[i] = _mulmod(out[i], w, wp, q)


# ---------------------------------------------------------------- uniform sampling


@nb.njit(**_JIT)
def expand_uniform(stream, primes, masks, out):
    """One ciphertext's uniform polynomial ``out`` (L primes, N) from its keystream ``stream``.

    ``stream`` holds 32-bit words, at least ``L*N``.  Coefficient ``c`` takes, for prime ``j``,
    the word ``stream[j*N + c] & masks[j]`` if it is below ``primes[j]``.  The rejected ones, in
    order of ``(j, c)``, take the next spare words ``stream[L*N:]`` (masked alike) that are
    below their prime: rejection sampling, so every residue is exactly uniform.  Returns
    False if the spare words ran out (the caller retries with a longer stream).  Rejections
    are rare (``q_j > 2^32 - 2^21`` by default), so this is one contiguous pass per prime and
    a scan for the few rejected residues when there are any.
    """
    n_primes, n = out.shape
    bad = False
    for j in range(n_primes):
        q = _U32(primes[j])
        m = _U32(masks[j])
        src = stream[j * n:(j + 1) * n]
        dst = out[j]
        for c in range(n):
            w = src[c] & m
            bad |= w >= q
            dst[c] = w
    if not bad:
        return True
    s = n_primes * n
    for j in range(n_primes):
        for c in range(n):
            if out[j, c] >= primes[j]:
                while True:
                    if s >= stream.shape[0]:
                        return False
                    w = stream[s] & masks[j]
                    s += 1
                    if w < primes[j]:
                        out[j, c] = w
                        break
    return True


@nb.njit(**_JIT)
def residues_below(polys, primes):
    """True if every residue of ``polys`` (..., L primes, N) is below its prime."""
    flat = polys.reshape(-1, polys.shape[-2], polys.shape[-1])
    for k in range(flat.shape[0]):
        for j in range(flat.shape[1]):
            top = flat[k, j].max()
            if top >= primes[j]:
                return False
    return True


# ------------------------------------------------------------------- noise sampling

_M21 = _U64((1 << 21) - 1)


@nb.njit(inline="always")
def _popcount(x):
    x = x - ((x >> _U64(1)) & _U64(0x5555555555555555))
    x = (x & _U64(0x3333333333333333)) + ((x >> _U64(2)) & _U64(0x3333333333333333))
    x = (x + (x >> _U64(4))) & _U64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * _U64(0x0101010101010101)) >> _U64(56))


@nb.njit(inline="always")
def _cbd21(word):
    """Centered binomial sample in [-21, 21] (sigma ~3.24, SEAL's 3.2) from bits 0..41 of ``word``."""
    return _popcount(word & _M21) - _popcount((word >> _U64(21)) & _M21)


_PAIR_LOW_BITS = _U64(0x155555)  # bit 2i of each of the eleven 2-bit fields of a 22-bit value
_LOW22 = _U64(0x3FFFFF)
#: 64-bit words after a polynomial's N noise words, for the rare ``u`` coefficient whose own
#: eleven 2-bit fields are all 3 (see :func:`sample_noise`)
SPARE_WORDS = 2


@nb.njit(inline="always")
def _ternary(word):
    """``u`` uniform in {-1, 0, 1} from bits 42..63 of ``word``: the first of their eleven 2-bit
    fields that is not 3 (uniform on {0, 1, 2}), minus 1; 2 when all eleven are 3 (probability
    2^-22), which :func:`sample_noise` replaces from spare words."""
    v = word >> _U64(42)
    ok = ~(v & (v >> _U64(1))) & _PAIR_LOW_BITS
    low = ok & (~ok + _U64(1))
    at = _popcount((low - _U64(1)) & _LOW22)  # 2i for the first good field i; 22 (harmless) when none
    r = np.int64((v >> _U64(at)) & _U64(3)) - 1
    return r if ok != _U64(0) else np.int64(2)


@nb.njit(inline="always")
def _residue(v, q):
    """Residue of a small signed integer ``v`` (|v| < q) modulo q, as uint64."""
    return _U64(v + np.int64(q)) if v < 0 else _U64(v)


@nb.njit(**_JIT)
def sample_noise(words, u, e):
    """Fill ``u`` (uniform ternary, as SEAL samples its ``u``) and ``e`` (centered binomial, eta 21)
    from uniform 64-bit ``words``: N of them (one per coefficient), then :data:`SPARE_WORDS`.

    A coefficient whose word gives no ternary value takes the next 2-bit field of the spare
    words that is not 3, so ``u`` is exactly uniform unless all 64 spare fields are used up
    (probability below 2^-128; that coefficient is then 0).
    """
    n = u.shape[0]
    redo = False
    for i in range(n):
        w = words[i]
        t = _ternary(w)
        redo |= t == 2
        u[i] = t
        e[i] = _cbd21(w)
    if redo:
        k = 0
        for i in range(n):
            if u[i] == 2:
                u[i] = 0
                while k < 32 * SPARE_WORDS:
                    field = np.int64((words[n + k // 32] >> _U64(2 * (k % 32))) & _U64(3))
                    k += 1
                    if field != 3:
                        u[i] = field - 1
                        break


# ------------------------------------------------------- public-key encryption of zero


@nb.njit(inline="always")
def _ntt_small(v, q, big, tail, tmp, out):
    """NTT (tiled) of a polynomial with small signed coefficients ``v`` modulo ``q``."""
    for i in range(v.shape[0]):
        tmp[i] = _residue(v[i], q)
    ntt_forward(tmp, out, q, big, tail)


@nb.njit(**_JIT)
def encrypt_zero(words, primes, pk, pkp, big, tail, n_inv, z1, z0, want_z0, work):
    """A fresh public-key encryption of zero ``(pk0*u + e0, pk1*u + e1)`` modulo each prime.

    ``words``: uniform 64-bit words, ``N + SPARE_WORDS`` of them (u and e1, see
    :func:`sample_noise`), and N more if ``want_z0`` (e0);
    ``pk``/``pkp``: the public key's two polynomials (tiled NTT order) per prime and their
    Shoup companions, shape (2 polys, L primes, N).  Writes ``z1`` (tiled NTT order, every
    prime) and, if ``want_z0``, ``z0`` in the coefficient domain.  ``work`` is a (5, N) int64
    scratch array (see :func:`workspace`); the function returns ``u`` (a view of it), which
    callers that need only a few coefficients of ``z0`` use instead.
    """
    n = z1.shape[1]
    u = work[0]
    e = work[1]
    sample_noise(words[:n + SPARE_WORDS], u, e)
    e0 = words[n + SPARE_WORDS:]
    scratch = work[2:].view(np.uint64)
    tmp = scratch[0]
    uh = scratch[1]
    eh = scratch[2]
    for j in range(primes.shape[0]):
        q = primes[j]
        _ntt_small(u, q, big[j], tail[j], tmp, uh)
        _ntt_small(e, q, big[j], tail[j], tmp, eh)
        for i in range(n):
            v = _mulmod(uh[i], pk[1, j, i], pkp[1, j, i], q) + eh[i]
            z1[j, i] = min(v, v - q)
        if want_z0:
            for i in range(n):
                uh[i] = _mulmod(uh[i], pk[0, j, i], pkp[0, j, i], q)
            ntt_inverse(uh, tmp, q, big[j], tail[j], n_inv[j])
            for i in range(n):
                v = tmp[i] + _residue(_cbd21(e0[i]), q)
                z0[j, i] = min(v, v - q)
    return u


# ------------------------------------------------------------------ weight plaintexts


@nb.njit(**_JIT)
def scaled_weights(W, row_map, row_scale, col_map, col_scale, out):
    """``out[k, i] = rint(W[row_map[k], col_map[i]] * col_scale[i] * row_scale[k])`` (int64).

    A model's quantised weights with rows and columns permuted and scaled: :mod:`fastmlp`
    folds each query's secrets into a layer this way (the caller keeps every value below 2^53).
    An empty ``col_map`` means the columns as they are, unscaled (a network's first layer).
    """
    for k in range(out.shape[0]):
        src = W[row_map[k]]
        s = row_scale[k]
        dst = out[k]
        if col_map.shape[0] == 0:
            for i in range(out.shape[1]):
                dst[i] = np.int64(np.rint(src[i] * s))
        else:
            for i in range(out.shape[1]):
                dst[i] = np.int64(np.rint(src[col_map[i]] * col_scale[i] * s))


@nb.njit(inline="always")
def _shoup_exact(w, q, ratio):
    """``floor(w * 2^32 / q)`` for ``w < q < 2^32`` without a division: a float64 estimate
    (``ratio = 2^32 / q``; off by at most one) corrected with one exact remainder."""
    est = _U64(np.float64(w) * ratio)
    r = np.int64((w << _U64(32)) - est * q)  # exact: the true remainder lies in [-q, 2q)
    if r < 0:
        est -= _U64(1)
    elif r >= np.int64(q):
        est += _U64(1)
    return est


@nb.njit(**_JIT)
def row_plaintexts(wh, per, primes, big, tail, w_ntt, w_ntt_p, rw, tmp):
    """The row layout's weight plaintexts of ``wh`` (C, nf) int64, classes in groups of ``per``.

    Group ``g`` holds classes ``g*per ..`` at offsets ``cl*nf`` in reversed order (see
    :mod:`fastlinear`): ``w_ntt[g, j]`` its NTT modulo ``primes[j]`` (tiled order) and
    ``w_ntt_p`` the Shoup companions (skipped if it has no groups: see :func:`row_outputs`),
    both (groups, L, N) uint64; ``rw[g]`` the polynomial's first ``len(g) * nf``
    coefficients reversed (the rows in natural order, last class first), for the logit
    coefficients of ``c0 * W_g``.  ``tmp``: (N,) uint64 scratch.
    """
    n_classes, nf = wh.shape
    n = tmp.shape[0]
    companions = w_ntt_p.shape[0] > 0
    for g in range(w_ntt.shape[0]):
        first = g * per
        size = min(per, n_classes - first)
        for cl in range(size):
            row = wh[first + cl]
            dst = rw[g, (size - 1 - cl) * nf:(size - cl) * nf]
            for i in range(nf):
                dst[i] = row[i]
        for j in range(primes.shape[0]):
            q = primes[j]
            qi = np.int64(q)
            for cl in range(size):
                src = wh[first + cl, ::-1]
                dst = tmp[cl * nf:(cl + 1) * nf]
                for m in range(nf):
                    v = src[m]
                    dst[m] = _U64(v + (qi & (v >> 63)))  # residue: + q where negative
            for i in range(size * nf, n):
                tmp[i] = 0
            out = w_ntt[g, j]
            ntt_forward(tmp, out, q, big[j], tail[j])
            if companions:
                ratio = 4294967296.0 / np.float64(q)
                outp = w_ntt_p[g, j]
                for i in range(n):
                    outp[i] = _shoup_exact(out[i], q, ratio)


@nb.njit(**_JIT)
def bias_phases(bh, delta, primes, out):
    """``out[c, j] = delta[j] * bh[c] mod primes[j]`` (int64 residues): the phase ``Delta * bh`` of
    an intercept ``bh`` (``|bh| < 2^63``), ``delta[j] = Delta mod primes[j]`` (uint64)."""
    for c in range(bh.shape[0]):
        v = bh[c]
        for j in range(primes.shape[0]):
            p = np.int64(primes[j])
            r = v % p  # numpy's error model: the sign of p, so r in [0, p)
            out[c, j] = np.int64((_U64(r) * _U64(delta[j])) % _U64(p))


# ---------------------------------------------------------------------- row scoring


@nb.njit(nogil=True, cache=True, fastmath=True)
def _dot2(x, y0, y1):
    """``(sum x*y0, sum x*y1)`` in float64, summed in any order: callers keep every partial
    sum an integer below 2^53, so reassociation (which lets LLVM vectorise) changes nothing."""
    a0 = 0.0
    a1 = 0.0
    for i in range(x.shape[0]):
        a0 += x[i] * y0[i]
        a1 += x[i] * y1[i]
    return a0, a1


@nb.njit(nogil=True, cache=True, fastmath=True)
def _dot_i32(x, y):
    """``sum x*y`` in float64 with int32 ``y`` (|x| <= 1 here, so partial sums stay below 2^44)."""
    a = 0.0
    for i in range(x.shape[0]):
        a += x[i] * np.float64(y[i])
    return a


@nb.njit(inline="always")
def _limbs(c, lo, hi):
    """lo, hi (2N) = the negacyclic extension of c's 16-bit limbs, ``[-limb(c), limb(c)]``, so
    that coefficient k of ``c * W`` is one contiguous dot product with W reversed.  Two loops
    with two store streams each: LLVM vectorises those, not one loop with four."""
    n = c.shape[0]
    top_lo = lo[n:]
    top_hi = hi[n:]
    for i in range(n):
        top_lo[i] = np.float64(c[i] & np.uint32(0xFFFF))
        top_hi[i] = np.float64(c[i] >> np.uint32(16))
    for i in range(n):
        lo[i] = -np.float64(c[i] & np.uint32(0xFFFF))
        hi[i] = -np.float64(c[i] >> np.uint32(16))


@nb.njit(inline="always")
def _flood_residue(lo, hi, bits, r64, f_mod, q):
    """``(U - 2^bits) mod q`` for the uniform ``(bits + 1)``-bit integer ``U`` whose low 64 bits
    are ``lo`` and higher bits the top ones of ``hi`` (``bits <= 95``): a flooding value uniform in
    ``[-2^bits, 2^bits)``, the same integer modulo every prime.  ``r64 = 2^64 mod q``,
    ``f_mod = 2^bits mod q`` (uint64; see :func:`flood_constants`)."""
    if bits <= 63:
        u = (lo >> _U64(63 - bits)) % q
    else:
        u = (((hi >> _U64(127 - bits)) % q) * r64 + lo % q) % q
    return (u + q - f_mod) % q


@nb.njit(**_JIT)
def flood_residues(words, bits, flood, primes, out):
    """``out[j, k]``: flooding value ``k`` (from ``words[k, 0:2]``, see :func:`_flood_residue`)
    modulo ``primes[j]``; ``flood`` from :func:`flood_constants`; out (L, K) int64."""
    for j in range(primes.shape[0]):
        q = _U64(primes[j])
        for k in range(words.shape[0]):
            out[j, k] = np.int64(_flood_residue(words[k, 0], words[k, 1], bits, flood[j, 0], flood[j, 1], q))


def flood_constants(bits: int, primes: np.ndarray) -> np.ndarray:
    """:func:`_flood_residue`'s ``(2^64 mod q, 2^bits mod q)`` per prime, shape (L, 2) uint64."""
    if not 1 <= bits <= 95:
        raise ValueError(f"flooding of {bits} bits is outside 1..95")
    return np.array([[(1 << 64) % int(q), (1 << bits) % int(q)] for q in primes], dtype=np.uint64)


@nb.njit(**_JIT)
def row_outputs(c0, a, words, primes, w_ntt, w_ntt_p, rw, rw_len, pos, group, bias, pk, pkp, pk0_rev,
                big, tail, n_inv, flood_bits, flood, c1_out, logits_out, work):
    """Score ``ns`` row-layout ciphertexts: the whole request path after parsing.

    Per sample s and class group g the output ciphertext is ``ct_s * W_g + Enc_pk(0)``:
    ``c1_out[s, g]`` (tiled NTT order, every coefficient) and, in ``logits_out[s, :, c]``,
    the coefficient of ``c0`` that holds class c's logit (the others are never computed),
    plus the bias and a fresh flooding value in ``[-2^flood_bits, 2^flood_bits)`` (:func:`_flood_residue`).

    With L primes: c0 (ns, L, N) u32 coefficients; a (ns, L, N) u32 tiled NTT; words
    (ns, n_groups*(N+SPARE_WORDS) + 3C) uniform u64; w_ntt/w_ntt_p (n_groups, L, N) u64 tiled;
    rw (n_groups, Lmax) int64 reversed group weight polynomials, the first rw_len[g] used;
    pos/group (C,) logit coefficient and group of each class; bias (C, L) int64 residues;
    pk/pkp (2, L, N) u64; pk0_rev (L, 2N) int32 (see :func:`pk0_reversed`); flood (L, 2) u64
    (:func:`flood_constants`); work: scratch from :func:`workspace`.  An empty ``w_ntt_p``
    (no groups) means weights made for this request only: the products then use Shoup
    companions of each sample's ``a`` instead (LN per sample, not LN per group).
    """
    ns = c0.shape[0]
    n_primes = c0.shape[1]
    n = c0.shape[2]
    n_groups = w_ntt.shape[0]
    n_classes = pos.shape[0]
    ints, floats = work
    z1 = ints[5:5 + n_primes].view(np.uint64)
    a_p = ints[5 + n_primes:5 + 2 * n_primes].view(np.uint64)
    of_a = w_ntt_p.shape[0] == 0
    uf = floats[2 * n_primes, :n]
    lo16 = floats[0:n_primes]  # c0's 16-bit limbs, extended negacyclically (see _limbs)
    hi16 = floats[n_primes:2 * n_primes]
    per_group = n + SPARE_WORDS
    tail_words = n_groups * per_group
    for s in range(ns):
        for j in range(n_primes):
            _limbs(c0[s, j], lo16[j], hi16[j])
            if of_a:
                q = primes[j]
                ratio = 4294967296.0 / np.float64(q)
                for i in range(n):
                    a_p[j, i] = _shoup_exact(_U64(a[s, j, i]), q, ratio)
        for g in range(n_groups):
            zw = words[s, g * per_group:(g + 1) * per_group]
            u = encrypt_zero(zw, primes, pk, pkp, big, tail, n_inv, z1, z1, False, ints[:5])
            for i in range(n):
                uf[i] = u[i]
            for j in range(n_primes):
                q = primes[j]
                wj = w_ntt[g, j]
                aj = a[s, j]
                zj = z1[j]
                out = c1_out[s, g, j]
                if of_a:
                    apj = a_p[j]
                    for i in range(n):
                        v = _mulmod(wj[i], _U64(aj[i]), apj[i], q) + zj[i]
                        out[i] = _U32(min(v, v - q))
                else:
                    wpj = w_ntt_p[g, j]
                    for i in range(n):
                        v = _mulmod(_U64(aj[i]), wj[i], wpj[i], q) + zj[i]
                        out[i] = _U32(min(v, v - q))
            for c in range(n_classes):
                if group[c] != g:
                    continue
                k = pos[c]
                e0 = _cbd21(words[s, tail_words + 3 * c])
                f_lo = words[s, tail_words + 3 * c + 1]
                f_hi = words[s, tail_words + 3 * c + 2]
                L = rw_len[g]
                w = rw[g, :L]
                base = n + k - L + 1  # coefficient k of c0*W_g = sum_m w[m] * ext[base + m]
                for j in range(n_primes):
                    q = np.int64(primes[j])
                    z0 = np.int64(_dot_i32(uf, pk0_rev[j, n - 1 - k:2 * n - 1 - k]))  # coefficient k of pk0*u
                    lo, hi = _dot2(w, lo16[j, base:base + L], hi16[j, base:base + L])  # each |.| < 2^53
                    f = np.int64(_flood_residue(f_lo, f_hi, flood_bits, flood[j, 0], flood[j, 1], primes[j]))
                    v = ((np.int64(hi) % q) << 16) + np.int64(lo) + z0 + e0 + bias[c, j] + f
                    logits_out[s, j, c] = _U32(v % q)


_COLS = 128  # coefficients per accumulator tile of column_outputs
_CLASS_BLOCK = 16  # classes per accumulator block: (16, 128) int64 stays in L1 beside the hi/lo sums


@nb.njit(**_JIT)
def column_outputs(ct, w, fold, primes, z, out, width):
    """``out[c, j] = (sum_i w[c, i] * ct[i, j] + z[c, j]) mod primes[j]``, exactly, for the
    first ``width`` coefficients (a multiple of ``_COLS``; the rest of ``out`` is not written).

    The batch layout's scalar linear combinations: ``ct`` (nf, L, N) uint32 residues, ``w``
    (C, nf) int32 signed weights, ``z`` (C, L, N) residues to add (an encryption of zero),
    ``out`` (C, L, N) uint32; N a multiple of ``_COLS``.  Residues are centred to ``x - 2^31``
    (once per feature and tile, for a block of classes) so that every product is a signed
    32 x 32 -> 64-bit multiply (``vpmuldq``) and bounded by ``max|w| * 2^31``; ``2^31 * sum_i
    w[c, i]`` is added back at the end.  Each partial sum runs over at most ``fold`` features,
    chosen by the caller so that it cannot overflow (``fold * max|w| * 2^31 < 2^63``), and is
    then split into its high and low 32 bits, which are summed apart and reduced once per
    coefficient.
    """
    nf = ct.shape[0]
    n = ct.shape[2]
    n_classes = w.shape[0]
    acc = np.empty((_CLASS_BLOCK, _COLS), dtype=np.int64)
    hi = np.empty((n_classes, _COLS), dtype=np.int64)
    lo = np.empty((n_classes, _COLS), dtype=np.int64)
    xc = np.empty(_COLS, dtype=np.int32)
    offset = np.empty(n_classes, dtype=np.int64)
    m32 = np.int64(0xFFFFFFFF)
    flip = _U32(0x80000000)
    for j in range(primes.shape[0]):
        q = np.int64(primes[j])
        r32 = _U64((1 << 32) % q)
        for c in range(n_classes):  # 2^31 * sum_i w[c, i] mod q
            total = np.int64(0)
            for i in range(nf):
                total += np.int64(w[c, i])
            offset[c] = np.int64((_U64(total % q) * _U64((1 << 31) % q)) % _U64(q))
        for col in range(0, min(width, n), _COLS):
            hi[:] = 0
            lo[:] = 0
            for c0 in range(0, n_classes, _CLASS_BLOCK):
                c1 = min(n_classes, c0 + _CLASS_BLOCK)
                for i0 in range(0, nf, fold):
                    acc[:] = 0
                    for i in range(i0, min(nf, i0 + fold)):
                        x = ct[i, j, col:col + _COLS]
                        for k in range(_COLS):
                            xc[k] = np.int32(x[k] ^ flip)
                        for c in range(c0, c1):
                            wc = np.int64(w[c, i])
                            a = acc[c - c0]
                            for k in range(_COLS):
                                a[k] += wc * np.int64(xc[k])
                    for c in range(c0, c1):
                        a = acc[c - c0]
                        for k in range(_COLS):
                            v = a[k]
                            hi[c, k] += v >> 32
                            lo[c, k] += v & m32
            for c in range(n_classes):
                zc = z[c, j, col:col + _COLS]
                oc = out[c, j, col:col + _COLS]
                for k in range(_COLS):
                    h = (_U64(hi[c, k] % q) * r32) % _U64(q)  # hi*2^32 = hi*r32 (mod q), < 2^64
                    oc[k] = _U32((np.int64(h) + lo[c, k] + offset[c] + np.int64(zc[k])) % q)  # lo < 2^46


def workspace(n: int, n_primes: int) -> tuple[np.ndarray, np.ndarray]:
    """Scratch memory for :func:`row_outputs` (and, its first five rows, :func:`encrypt_zero`).

    Reused across calls by one thread: fresh arrays of this size come from mmap and
    page-fault on every request (~10 us), more than the arithmetic that fills them.
    """
    return _aligned((5 + 2 * n_primes, n), np.int64), _aligned((2 * n_primes + 1, 2 * n), np.float64)


def aligned(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` starting on a 64-byte boundary (for arrays the kernels stream through)."""
    out = _aligned(x.shape, x.dtype)
    out[...] = x
    return out


def _aligned(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """An empty array starting on a 64-byte boundary (numpy guarantees 16): the kernels' wide
    loads and stores are measurably slower when they straddle cache lines."""
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.empty(nbytes + 64, dtype=np.uint8)
    start = -raw.ctypes.data % 64
    return raw[start:start + nbytes].view(dtype).reshape(shape)


def pk0_reversed(pk0: np.ndarray, primes: tuple[int, ...]) -> np.ndarray:
    """Table for single coefficients of ``pk0 * u`` (negacyclic), from ``pk0`` in the coefficient domain.

    Coefficient k of ``pk0 * u`` is ``sum_i u_i * R[N - 1 - k + i]`` (mod q) with
    ``R[x] = D[2N - 1 - x]``, ``D[d + N] = pk0[d]`` for ``d >= 0`` and ``-pk0[d + N]`` for
    ``d < 0``.  Shape (primes, 2N), int32: residues centered in (-q/2, q/2] fit, and half the
    bytes of float64 make the dot products (memory-bound) twice as fast.
    """
    q = np.array(primes, dtype=np.int64).reshape(-1, 1)
    p = pk0.astype(np.int64)
    p = np.where(p > q // 2, p - q, p).astype(np.int32)
    d = np.concatenate([-p, p], axis=-1)  # D[0..2N): d = -N..N-1
    return np.ascontiguousarray(d[..., ::-1])


def use_build() -> bool:
    """Run this process's kernels from the ahead-of-time build from now on, if this machine has
    one (:func:`fastkernels_aot.load`; never with ``AIDEPLOY_KERNELS=jit``); True if they do.

    For a process that imported this module before the build existed: aideploy itself, which
    makes the build when a run first needs the kernels. The other modules call the kernels as
    ``fastkernels.<name>``, so they follow.
    """
    global _BUILT
    if _BUILT is None:
        built = fastkernels_aot.load()
        if built is None:
            return False
        _BUILT = built
        globals().update({name: getattr(built, name) for name in KERNELS})
    return True
