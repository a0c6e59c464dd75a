/* The fast scheme's kernels in C: the same functions, arguments and results as the numba source
 * in fastkernels.py, compiled ahead of time into one CPython extension module
 * (fastkernels_aot.py builds it with setuptools and the system's C compiler, in seconds).
 *
 * fastkernels.py's docstrings are the specification of every kernel (NTT order, Shoup products,
 * sampling rules); the comments here say only where C differs from numba.  Arguments are numpy
 * arrays checked against each kernel's signature (the KERNEL lines at the end: element type,
 * dimensions, C order or last axis contiguous, writable) before the kernel runs, so a wrong
 * array is refused with a TypeError instead of being read as raw memory.  As with
 * numba (boundscheck=False), the sizes of arrays relative to each other are the caller's to get
 * right.  Kernels run without the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef uint64_t u64;
typedef int64_t i64;
typedef uint32_t u32;
typedef int32_t i32;
typedef Py_ssize_t ssize;

#define M32 0xFFFFFFFFull
#define TILE 16
#define N4K 4096
#define SPARE_WORDS 2
#define COLS 128
#define CLASS_BLOCK 16

static inline u64 umin(u64 a, u64 b) { return a < b ? a : b; }

/* Python's (and numba's numpy error model's) modulo: the result has the sign of the divisor. */
static inline i64 pymod(i64 a, i64 m) {
    i64 r = a % m;
    return r < 0 ? r + m : r;
}

/* ------------------------------------------------------------------------------ primitives */

/* x * w mod q for x, w < q < 2^32 and Shoup's wp (fastkernels._mulmod).  Every operand fits in
 * 32 bits, and saying so with the casts lets the compiler multiply 32 x 32 -> 64 (vpmuludq)
 * rather than 64 x 64 (vpmullq, several times slower): numba's _mulmod32 masks for the same
 * reason. */
static inline u64 mulmod(u64 x, u64 w, u64 wp, u64 q) {
    u64 r = (u64)(u32)x * (u32)w - (((u64)(u32)x * (u32)wp) >> 32) * (u32)q;
    return umin(r, r - q);
}

static void ct_layer(u64 *restrict x, u64 *restrict y, ssize len, u64 w, u64 wp, u64 q) {
    for (ssize i = 0; i < len; i++) {
        u64 u = x[i], v = mulmod(y[i], w, wp, q), s = u + v, d = u + q - v;
        x[i] = umin(s, s - q);
        y[i] = umin(d, d - q);
    }
}

static void ct_layer_v(u64 *restrict x, u64 *restrict y, ssize len, const u64 *w, const u64 *wp, u64 q) {
    for (ssize i = 0; i < len; i++) {
        u64 u = x[i], v = mulmod(y[i], w[i], wp[i], q), s = u + v, d = u + q - v;
        x[i] = umin(s, s - q);
        y[i] = umin(d, d - q);
    }
}

static void gs_layer(u64 *restrict x, u64 *restrict y, ssize len, u64 w, u64 wp, u64 q) {
    for (ssize i = 0; i < len; i++) {
        u64 u = x[i], v = y[i], s = u + v, d = u + q - v;
        x[i] = umin(s, s - q);
        y[i] = mulmod(umin(d, d - q), w, wp, q);
    }
}

static void gs_layer_v(u64 *restrict x, u64 *restrict y, ssize len, const u64 *w, const u64 *wp, u64 q) {
    for (ssize i = 0; i < len; i++) {
        u64 u = x[i], v = y[i], s = u + v, d = u + q - v;
        x[i] = umin(s, s - q);
        y[i] = mulmod(umin(d, d - q), w[i], wp[i], q);
    }
}

/* One layer of half-distance t < 16 on the transposed (16, nb) tile, Cooley-Tukey or (inverse)
 * Gentleman-Sande; tw/twp: (16, nb) rows. */
static void tail_layer(u64 *tile, ssize nb, const u64 *tw, const u64 *twp, int t, u64 q, int inverse) {
    int per = (TILE / 2) / t;
    for (int r0 = 0; r0 < TILE; r0 += 2 * t) {
        int s = per + r0 / (2 * t);
        for (int r = r0; r < r0 + t; r++)
            (inverse ? gs_layer_v : ct_layer_v)(tile + r * nb, tile + (r + t) * nb, nb, tw + s * nb, twp + s * nb, q);
    }
}

/* dst (cols, rows) = src (rows, cols) transposed, in 8x8 blocks. */
static void transpose(const u64 *restrict src, u64 *restrict dst, ssize rows, ssize cols) {
    for (ssize i0 = 0; i0 < rows; i0 += 8)
        for (ssize j0 = 0; j0 < cols; j0 += 8)
            for (ssize j = j0; j < j0 + 8; j++)
                for (ssize i = i0; i < i0 + 8; i++)
                    dst[j * rows + i] = src[i * cols + j];
}

/* ------------------------------------------------------------------------------ vectors
 * GCC's vector extensions, LANES 64-bit lanes: 8 (AVX-512 registers) when the build defines
 * AIDEPLOY_WIDE (fastkernels_aot does on CPUs whose 512-bit instructions keep their clock, as
 * fastkernels._prefer_512_bit_vectors does for numba), else 4 (AVX2 registers; plain scalar code
 * where the CPU has neither).  The products are 32 x 32 -> 64-bit multiplies of the lanes' low
 * halves, written with vpmuludq's intrinsic because GCC turns a masked 64-bit vector product
 * into vpmullq, several times slower; numba's LLVM finds vpmuludq itself (fastkernels._mulmod32). */

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(AIDEPLOY_WIDE) && defined(__AVX512F__)
#define LANES 8
#else
#define LANES 4
#endif

typedef u64 vu __attribute__((vector_size(8 * LANES)));
typedef double vd __attribute__((vector_size(8 * LANES)));
typedef i64 vl __attribute__((vector_size(8 * LANES)));
typedef i32 vi __attribute__((vector_size(4 * LANES)));

static inline vu vmul32(vu a, vu b) {
#if LANES == 8
    return (vu)_mm512_mul_epu32((__m512i)a, (__m512i)b);
#elif defined(__AVX2__)
    return (vu)_mm256_mul_epu32((__m256i)a, (__m256i)b);
#else
    return (a & M32) * (b & M32);
#endif
}

static inline vu vmin(vu a, vu b) {
#if LANES == 8
    return (vu)_mm512_min_epu64((__m512i)a, (__m512i)b);
#elif defined(__AVX512VL__)
    return (vu)_mm256_min_epu64((__m256i)a, (__m256i)b);
#else
    vu m = (vu)(a < b);
    return (a & m) | (b & ~m);
#endif
}

static inline vu vload(const u64 *p) { vu v; memcpy(&v, p, sizeof v); return v; }
static inline void vstore(u64 *p, vu v) { memcpy(p, &v, sizeof v); }
static inline vu vbroadcast(u64 x) { return (vu){0} + x; }

static inline vu vmulmod(vu x, vu w, vu wp, vu q) {
    vu r = vmul32(x, w) - vmul32(vmul32(x, wp) >> 32, q);
    return vmin(r, r - q);
}

/* ------------------------------------------------------------ N = 4096: three radix-16 passes
 * Sixteen values go through four layers in registers, for LANES positions at once; the
 * butterflies are written out, as in fastkernels.py. */

#define CT(a, b, k) do { vu t_ = vmulmod(x[b], w[k], wp[k], q), s_ = x[a] + t_, d_ = x[a] - t_; \
    x[a] = vmin(s_, s_ - q); x[b] = vmin(d_, d_ + q); } while (0)
#define GS(a, b, k) do { vu s_ = x[a] + x[b], d_ = x[a] - x[b]; \
    x[a] = vmin(s_, s_ - q); x[b] = vmulmod(vmin(d_, d_ + q), w[k], wp[k], q); } while (0)

/* w[1..15], wp[1..15]: heap-ordered twiddles (index 0 unused). */
static inline __attribute__((always_inline)) void ct16(vu *x, const vu *w, const vu *wp, vu q) {
    CT(0, 8, 1); CT(1, 9, 1); CT(2, 10, 1); CT(3, 11, 1); CT(4, 12, 1); CT(5, 13, 1); CT(6, 14, 1); CT(7, 15, 1);
    CT(0, 4, 2); CT(1, 5, 2); CT(2, 6, 2); CT(3, 7, 2); CT(8, 12, 3); CT(9, 13, 3); CT(10, 14, 3); CT(11, 15, 3);
    CT(0, 2, 4); CT(1, 3, 4); CT(4, 6, 5); CT(5, 7, 5); CT(8, 10, 6); CT(9, 11, 6); CT(12, 14, 7); CT(13, 15, 7);
    CT(0, 1, 8); CT(2, 3, 9); CT(4, 5, 10); CT(6, 7, 11); CT(8, 9, 12); CT(10, 11, 13); CT(12, 13, 14); CT(14, 15, 15);
}

static inline __attribute__((always_inline)) void gs16(vu *x, const vu *w, const vu *wp, vu q) {
    GS(0, 1, 8); GS(2, 3, 9); GS(4, 5, 10); GS(6, 7, 11); GS(8, 9, 12); GS(10, 11, 13); GS(12, 13, 14); GS(14, 15, 15);
    GS(0, 2, 4); GS(1, 3, 4); GS(4, 6, 5); GS(5, 7, 5); GS(8, 10, 6); GS(9, 11, 6); GS(12, 14, 7); GS(13, 15, 7);
    GS(0, 4, 2); GS(1, 5, 2); GS(2, 6, 2); GS(3, 7, 2); GS(8, 12, 3); GS(9, 13, 3); GS(10, 14, 3); GS(11, 15, 3);
    GS(0, 8, 1); GS(1, 9, 1); GS(2, 10, 1); GS(3, 11, 1); GS(4, 12, 1); GS(5, 13, 1); GS(6, 14, 1); GS(7, 15, 1);
}

/* Twiddles w[i + p(i) * g], i = 1..15, p(i) the largest power of two <= i, broadcast into h[1..15]. */
static inline void heap15(const u64 *w, ssize g, vu *h) {
    for (int i = 1; i < 16; i++) {
        int p = i >= 8 ? 8 : i >= 4 ? 4 : i >= 2 ? 2 : 1;
        h[i] = vbroadcast(w[i + p * g]);
    }
}

/* The sixteen vectors at a + o + stride * k, k = 0..15, through ct16 or gs16. */
static inline __attribute__((always_inline)) void radix16(u64 *a, ssize o, ssize stride, const vu *w, const vu *wp,
                                                        vu q, int inverse) {
    vu x[16];
    for (int k = 0; k < 16; k++) x[k] = vload(a + o + stride * k);
    if (inverse)
        gs16(x, w, wp, q);
    else
        ct16(x, w, wp, q);
    for (int k = 0; k < 16; k++) vstore(a + o + stride * k, x[k]);
}

/* Layers t = 2048 .. 256 (inverse: 256 .. 2048): sixteen values 256 apart. */
static void pass1(u64 *a, u64 q_, const u64 *tw, const u64 *twp, int inverse) {
    vu w[16], wp[16], q = vbroadcast(q_);
    heap15(tw, 0, w);
    heap15(twp, 0, wp);
    for (ssize j = 0; j < 256; j += LANES) radix16(a, j, 256, w, wp, q, inverse);
}

/* Layers t = 128 .. 16 (inverse: 16 .. 128): in each run of 256, sixteen values 16 apart. */
static void pass2(u64 *a, u64 q_, const u64 *tw, const u64 *twp, int inverse) {
    vu q = vbroadcast(q_);
    for (ssize g = 0; g < 16; g++) {
        vu w[16], wp[16];
        heap15(tw, 15 + g, w);
        heap15(twp, 15 + g, wp);
        for (ssize j = 0; j < 16; j += LANES) radix16(a, g * 256 + j, 16, w, wp, q, inverse);
    }
}

/* Layers t = 8 .. 1 (inverse: 1 .. 8) on the (16, 256) tile: values 256 apart, per-column
 * twiddles tw[i, b] (one direction's tail rows). */
static void pass3(u64 *x, u64 q_, const u64 *tw, const u64 *twp, int inverse) {
    vu q = vbroadcast(q_);
    for (ssize b = 0; b < 256; b += LANES) {
        vu w[16], wp[16];
        for (int i = 1; i < 16; i++) {
            w[i] = vload(tw + i * 256 + b);
            wp[i] = vload(twp + i * 256 + b);
        }
        radix16(x, b, 256, w, wp, q, inverse);
    }
}

/* The inverse's last layers with the 1/N scaling folded in: into the last layer's twiddle for
 * the upper half, a product for the lower half. */
static void gs_pass1(u64 *a, u64 q_, const u64 *tw, const u64 *twp, const u64 *n_inv) {
    vu w[16], wp[16], q = vbroadcast(q_), ni = vbroadcast(n_inv[0]), nip = vbroadcast(n_inv[1]);
    heap15(tw, 0, w);
    heap15(twp, 0, wp);
    u64 w1 = mulmod(tw[1], n_inv[0], n_inv[1], q_);
    w[1] = vbroadcast(w1);
    wp[1] = vbroadcast((w1 << 32) / q_);
    for (ssize j = 0; j < 256; j += LANES) {
        vu x[16];
        for (int k = 0; k < 16; k++) x[k] = vload(a + j + 256 * k);
        gs16(x, w, wp, q);
        for (int k = 0; k < 8; k++) vstore(a + j + 256 * k, vmulmod(x[k], ni, nip, q));
        for (int k = 8; k < 16; k++) vstore(a + j + 256 * k, x[k]);
    }
}

/* big: one prime's (4, n) rows; tail: its (4, 16, n/16). */
static void ntt_forward_(u64 *a, u64 *out, ssize n, u64 q, const u64 *big, const u64 *tail) {
    if (n == N4K) {
        pass1(a, q, big, big + n, 0);
        pass2(a, q, big, big + n, 0);
        transpose(a, out, 256, 16);
        pass3(out, q, tail, tail + TILE * 256, 0);
        return;
    }
    ssize t = n, m = 1, nb = n / TILE;
    while (t > TILE) {
        t >>= 1;
        for (ssize i = 0; i < m; i++) {
            ssize j = 2 * i * t;
            ct_layer(a + j, a + j + t, t, big[m + i], big[n + m + i], q);
        }
        m <<= 1;
    }
    transpose(a, out, nb, TILE);
    const u64 *tw = tail, *twp = tail + TILE * nb;
    for (int h = 8; h >= 1; h >>= 1) tail_layer(out, nb, tw, twp, h, q, 0);
}

static void ntt_inverse_(u64 *x, u64 *out, ssize n, u64 q, const u64 *big, const u64 *tail, const u64 *n_inv) {
    if (n == N4K) {
        pass3(x, q, tail + 2 * TILE * 256, tail + 3 * TILE * 256, 1);
        transpose(x, out, 16, 256);
        pass2(out, q, big + 2 * n, big + 3 * n, 1);
        gs_pass1(out, q, big + 2 * n, big + 3 * n, n_inv);
        return;
    }
    ssize nb = n / TILE;
    const u64 *tw = tail + 2 * TILE * nb, *twp = tail + 3 * TILE * nb;
    for (int h = 1; h <= 8; h <<= 1) tail_layer(x, nb, tw, twp, h, q, 1);
    transpose(x, out, TILE, nb);
    ssize t = TILE, m = n / (2 * TILE);
    while (t < n) {
        for (ssize i = 0; i < m; i++) {
            ssize j = 2 * i * t;
            gs_layer(out + j, out + j + t, t, big[2 * n + m + i], big[3 * n + m + i], q);
        }
        t <<= 1;
        m >>= 1;
    }
    for (ssize i = 0; i < n; i++) out[i] = mulmod(out[i], n_inv[0], n_inv[1], q);
}

/* --------------------------------------------------------------------------- sampling */

#define M21 ((1ull << 21) - 1)
#define PAIR_LOW_BITS 0x155555ull
#define LOW22 0x3FFFFFull

static inline i64 popcount(u64 x) { return (i64)__builtin_popcountll(x); }

static inline i64 cbd21(u64 word) { return popcount(word & M21) - popcount((word >> 21) & M21); }

static inline i64 ternary(u64 word) {
    u64 v = word >> 42;
    u64 ok = ~(v & (v >> 1)) & PAIR_LOW_BITS;
    u64 low = ok & (~ok + 1);
    i64 at = popcount((low - 1) & LOW22);
    i64 r = (i64)((v >> at) & 3) - 1;
    return ok != 0 ? r : 2;
}

static inline u64 residue(i64 v, u64 q) { return v < 0 ? (u64)(v + (i64)q) : (u64)v; }

static void sample_noise_(const u64 *words, i64 *u, i64 *e, ssize n) {
    int redo = 0;
    for (ssize i = 0; i < n; i++) {
        u64 w = words[i];
        i64 t = ternary(w);
        redo |= t == 2;
        u[i] = t;
        e[i] = cbd21(w);
    }
    if (!redo) return;
    int k = 0;
    for (ssize i = 0; i < n; i++) {
        if (u[i] != 2) continue;
        u[i] = 0;
        while (k < 32 * SPARE_WORDS) {
            i64 field = (i64)((words[n + k / 32] >> (2 * (k % 32))) & 3);
            k++;
            if (field != 3) {
                u[i] = field - 1;
                break;
            }
        }
    }
}

/* ------------------------------------------------------ public-key encryption of zero */

static void ntt_small(const i64 *v, ssize n, u64 q, const u64 *big, const u64 *tail, u64 *tmp, u64 *out) {
    for (ssize i = 0; i < n; i++) tmp[i] = residue(v[i], q);
    ntt_forward_(tmp, out, n, q, big, tail);
}

/* pk, pkp: (2, L, n); big: (L, 4, n); tail: (L, 4, 16, n/16); n_inv: (L, 2); z1, z0: (L, n);
 * work: (5, n) int64.  Leaves u in work[0]. */
static void encrypt_zero_(const u64 *words, const u64 *primes, ssize L, ssize n, const u64 *pk, const u64 *pkp,
                          const u64 *big, const u64 *tail, const u64 *n_inv, u64 *z1, u64 *z0, int want_z0,
                          i64 *work) {
    i64 *u = work, *e = work + n;
    sample_noise_(words, u, e, n);
    const u64 *e0 = words + n + SPARE_WORDS;
    u64 *tmp = (u64 *)(work + 2 * n), *uh = (u64 *)(work + 3 * n), *eh = (u64 *)(work + 4 * n);
    for (ssize j = 0; j < L; j++) {
        u64 q = primes[j];
        const u64 *bj = big + j * 4 * n, *tj = tail + j * 4 * n;
        const u64 *pk1 = pk + (L + j) * n, *pk1p = pkp + (L + j) * n;
        ntt_small(u, n, q, bj, tj, tmp, uh);
        ntt_small(e, n, q, bj, tj, tmp, eh);
        u64 *zj = z1 + j * n;
        for (ssize i = 0; i < n; i++) {
            u64 v = mulmod(uh[i], pk1[i], pk1p[i], q) + eh[i];
            zj[i] = umin(v, v - q);
        }
        if (want_z0) {
            const u64 *pk0 = pk + j * n, *pk0p = pkp + j * n;
            for (ssize i = 0; i < n; i++) uh[i] = mulmod(uh[i], pk0[i], pk0p[i], q);
            ntt_inverse_(uh, tmp, n, q, bj, tj, n_inv + 2 * j);
            u64 *z0j = z0 + j * n;
            for (ssize i = 0; i < n; i++) {
                u64 v = tmp[i] + residue(cbd21(e0[i]), q);
                z0j[i] = umin(v, v - q);
            }
        }
    }
}

/* ------------------------------------------------------------------ weight plaintexts */

static inline u64 shoup_exact(u64 w, u64 q, double ratio) {
    u64 est = (u64)((double)w * ratio);
    i64 r = (i64)((w << 32) - est * q);
    if (r < 0)
        est -= 1;
    else if (r >= (i64)q)
        est += 1;
    return est;
}

/* --------------------------------------------------------------------------- row scoring */

static inline u64 flood_residue(u64 lo, u64 hi, i64 bits, u64 r64, u64 f_mod, u64 q) {
    u64 u;
    if (bits <= 63)
        u = (lo >> (63 - bits)) % q;
    else
        u = (((hi >> (127 - bits)) % q) * r64 + lo % q) % q;
    return (u + q - f_mod) % q;
}

/* Dot products in float64 on vectors (see "vectors" above), several accumulators each.  Every
 * partial sum is an integer below 2^53 (the callers' bound), so the order of the additions
 * changes nothing: numba gets the same freedom from fastmath. */
static inline vd load_d(const double *p) { vd v; memcpy(&v, p, sizeof v); return v; }
static inline vd load_i32(const i32 *p) { vi v; memcpy(&v, p, sizeof v); return __builtin_convertvector(v, vd); }
static inline vd load_i64(const i64 *p) { vl v; memcpy(&v, p, sizeof v); return __builtin_convertvector(v, vd); }

static inline double hsum(vd v) {
    double s = 0.0;
    for (int k = 0; k < LANES; k++) s += v[k];
    return s;
}

/* (sum x*y0, sum x*y1) */
static inline void dot2(const i64 *x, const double *y0, const double *y1, ssize len, double *r0, double *r1) {
    vd a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
    ssize i = 0;
    for (; i + 2 * LANES <= len; i += 2 * LANES) {
        vd xa = load_i64(x + i), xb = load_i64(x + i + LANES);
        a0 += xa * load_d(y0 + i);
        a1 += xa * load_d(y1 + i);
        b0 += xb * load_d(y0 + i + LANES);
        b1 += xb * load_d(y1 + i + LANES);
    }
    double s0 = hsum(a0 + b0), s1 = hsum(a1 + b1);
    for (; i < len; i++) {
        s0 += (double)x[i] * y0[i];
        s1 += (double)x[i] * y1[i];
    }
    *r0 = s0;
    *r1 = s1;
}

/* sum x*y with int32 y */
static inline double dot_i32(const double *x, const i32 *y, ssize len) {
    vd a = {0}, b = {0}, c = {0}, d = {0};
    ssize i = 0;
    for (; i + 4 * LANES <= len; i += 4 * LANES) {
        a += load_d(x + i) * load_i32(y + i);
        b += load_d(x + i + LANES) * load_i32(y + i + LANES);
        c += load_d(x + i + 2 * LANES) * load_i32(y + i + 2 * LANES);
        d += load_d(x + i + 3 * LANES) * load_i32(y + i + 3 * LANES);
    }
    double s = hsum((a + b) + (c + d));
    for (; i < len; i++) s += x[i] * (double)y[i];
    return s;
}

static inline void limbs(const u32 *c, double *lo, double *hi, ssize n) {
    for (ssize i = 0; i < n; i++) {
        lo[n + i] = (double)(c[i] & 0xFFFFu);
        hi[n + i] = (double)(c[i] >> 16);
    }
    for (ssize i = 0; i < n; i++) {
        lo[i] = -(double)(c[i] & 0xFFFFu);
        hi[i] = -(double)(c[i] >> 16);
    }
}

/* ================================================================== argument checks
 * A signature is one token per argument: "<type>:<ndim>[w][s]" for a numpy array (type u32, u64,
 * i32, i64, f64; ndim a digit, or * for any; w: the kernel writes it; s: strided, only the last
 * axis contiguous, else C order), "n" for an integer, "b" for a truth value, "(" ... ")" for a
 * tuple of arrays (each its own argument below).  The checks read numpy's array struct (a few
 * nanoseconds an argument: less than numba's own dispatch). */

#define MAX_ARGS 32
#define MAX_DIMS 4

typedef struct {
    void *p;
    int ndim;
    ssize shape[MAX_DIMS];
    ssize stride[MAX_DIMS]; /* in elements */
    i64 i;
} Arg;

static const char *type_name(char kind, ssize size) {
    if (kind == 'u') return size == 8 ? "uint64" : size == 4 ? "uint32" : size == 2 ? "uint16" : "uint8";
    if (kind == 'i') return size == 8 ? "int64" : size == 4 ? "int32" : size == 2 ? "int16" : "int8";
    if (kind == 'f') return size == 8 ? "float64" : size == 4 ? "float32" : "float16";
    if (kind == 'b') return "bool";
    if (kind == 'c') return size == 16 ? "complex128" : "complex64";
    return "an array of another type";
}

static int refuse(const char *kernel, int index, const char *why) {
    PyErr_Format(PyExc_TypeError, "kernel %s, argument %d: %s (ahead-of-time build)", kernel, index, why);
    return -1;
}

static int take_array(const char *kernel, int index, PyObject *obj, const char **spec, Arg *arg) {
    const char *s = *spec;
    char kind = s[0];
    ssize size = atoi(s + 1) / 8;
    s += 4; /* kind, two digits, ':' */
    int ndim = *s == '*' ? -1 : *s - '0';
    s++;
    int writable = 0, strided = 0;
    for (; *s == 'w' || *s == 's'; s++) {
        if (*s == 'w') writable = 1;
        if (*s == 's') strided = 1;
    }
    *spec = s;
    char want[48], why[160];
#define WANT() (ndim < 0 ? snprintf(want, sizeof want, "%s", type_name(kind, size)) \
                         : snprintf(want, sizeof want, "%s x %dd", type_name(kind, size), ndim))
    if (!PyArray_Check(obj)) {
        WANT();
        snprintf(why, sizeof why, "%.40s, compiled for %s", Py_TYPE(obj)->tp_name, want);
        return refuse(kernel, index, why);
    }
    PyArrayObject *array = (PyArrayObject *)obj;
    char got = PyArray_DESCR(array)->kind;
    ssize got_size = PyArray_ITEMSIZE(array);
    int got_ndim = PyArray_NDIM(array);
    if (got != kind || got_size != size || (ndim >= 0 && got_ndim != ndim) || got_ndim < 1 || got_ndim > MAX_DIMS ||
        !PyArray_ISNOTSWAPPED(array)) {
        WANT();
        snprintf(why, sizeof why, "%s%s x %dd, compiled for %s", PyArray_ISNOTSWAPPED(array) ? "" : "byte-swapped ",
                 type_name(got, got_size), got_ndim, want);
        return refuse(kernel, index, why);
    }
    if (writable && !PyArray_ISWRITEABLE(array))
        return refuse(kernel, index, "a read-only array, which the kernel writes");
    npy_intp *shape = PyArray_DIMS(array), *strides = PyArray_STRIDES(array);
    if (strided ? strides[got_ndim - 1] != size && shape[got_ndim - 1] > 1 : !PyArray_IS_C_CONTIGUOUS(array)) {
        snprintf(why, sizeof why, "a non-C-contiguous array, compiled for %s",
                 strided ? "a contiguous last axis" : "C order");
        return refuse(kernel, index, why);
    }
    arg->p = PyArray_DATA(array);
    arg->ndim = got_ndim;
    for (int d = 0; d < got_ndim; d++) {
        if (strides[d] % size) return refuse(kernel, index, "an array with unaligned strides");
        arg->shape[d] = shape[d];
        arg->stride[d] = strides[d] / size;
    }
    return 0;
#undef WANT
}

/* Fill args from the call's objects; -1 with a TypeError when they do not fit. */
static int parse(const char *kernel, const char *spec, PyObject *const *objs, ssize nobjs, Arg *args) {
    int expected = 0, depth = 0;
    for (const char *s = spec; *s; s++) {
        if (*s == '(') { if (!depth++) expected++; }
        else if (*s == ')') depth--;
        else if (!depth && (s == spec || s[-1] == ' ') && *s != ' ') expected++;
    }
    if (nobjs != expected) {
        PyErr_Format(PyExc_TypeError, "kernel %s takes %d arguments, got %zd", kernel, expected, nobjs);
        return -1;
    }
    const char *s = spec;
    int a = 0;
    char why[160];
    for (int index = 0; index < nobjs; index++) {
        while (*s == ' ') s++;
        PyObject *obj = objs[index];
        if (*s == 'n') {
            s++;
            PyObject *number = PyNumber_Index(obj);
            if (number == NULL) {
                PyErr_Clear();
                snprintf(why, sizeof why, "%.40s, compiled for int", Py_TYPE(obj)->tp_name);
                return refuse(kernel, index, why);
            }
            args[a++].i = PyLong_AsLongLong(number);
            Py_DECREF(number);
            if (PyErr_Occurred()) return -1;
        } else if (*s == 'b') {
            s++;
            int truth = PyObject_IsTrue(obj);
            if (truth < 0) return -1;
            args[a++].i = truth;
        } else if (*s == '(') {
            s++;
            if (!PyTuple_Check(obj)) {
                snprintf(why, sizeof why, "%.40s, compiled for a tuple", Py_TYPE(obj)->tp_name);
                return refuse(kernel, index, why);
            }
            ssize k = 0;
            while (*s != ')') {
                if (*s == ',') s++;
                if (k >= PyTuple_GET_SIZE(obj)) return refuse(kernel, index, "a tuple too short");
                if (take_array(kernel, index, PyTuple_GET_ITEM(obj, k++), &s, &args[a++]) < 0) return -1;
            }
            s++;
            if (k != PyTuple_GET_SIZE(obj)) return refuse(kernel, index, "a tuple too long");
        } else if (take_array(kernel, index, obj, &s, &args[a++]) < 0) {
            return -1;
        }
    }
    return 0;
}

#define U64(k) ((u64 *)args[k].p)
#define U32(k) ((u32 *)args[k].p)
#define I64(k) ((i64 *)args[k].p)
#define I32(k) ((i32 *)args[k].p)
#define F64(k) ((double *)args[k].p)
#define DIM(k, d) (args[k].shape[d])
#define INT(k) (args[k].i)

/* Every kernel: parse and check, run the body (the last argument) without the GIL (the caller's
 * references keep the arrays alive), return `result`. */
#define KERNEL(name, spec, result, ...)                                                          \
    static const char name##_spec[] = spec;                                                      \
    static PyObject *k_##name(PyObject *self, PyObject *const *objs, Py_ssize_t nobjs) {         \
        Arg args[MAX_ARGS];                                                                      \
        if (parse(#name, name##_spec, objs, nobjs, args) < 0) return NULL;                       \
        long ok = 1;                                                                             \
        Py_BEGIN_ALLOW_THREADS __VA_ARGS__ Py_END_ALLOW_THREADS                                  \
        if (ok < 0) return PyErr_NoMemory();                                                     \
        return result;                                                                           \
    }

KERNEL(ntt_forward, "u64:1w u64:1w n u64:2 u64:3", Py_NewRef(Py_None),
       { ntt_forward_(U64(0), U64(1), DIM(0, 0), (u64)INT(2), U64(3), U64(4)); })

KERNEL(ntt_inverse, "u64:1w u64:1w n u64:2 u64:3 u64:1", Py_NewRef(Py_None),
       { ntt_inverse_(U64(0), U64(1), DIM(0, 0), (u64)INT(2), U64(3), U64(4), U64(5)); })

KERNEL(expand_uniform, "u32:1 u32:1 u32:1 u32:2w", PyBool_FromLong(ok),
       {
    const u32 *stream = U32(0), *primes = U32(1), *masks = U32(2);
    u32 *out = U32(3);
    ssize L = DIM(3, 0), n = DIM(3, 1), len = DIM(0, 0);
    int bad = 0;
    for (ssize j = 0; j < L; j++) {
        u32 q = primes[j], m = masks[j];
        const u32 *src = stream + j * n;
        u32 *dst = out + j * n;
        for (ssize c = 0; c < n; c++) {
            u32 w = src[c] & m;
            bad |= w >= q;
            dst[c] = w;
        }
    }
    if (bad) {
        ssize s = L * n;
        for (ssize j = 0; j < L && ok; j++)
            for (ssize c = 0; c < n && ok; c++) {
                if (out[j * n + c] < primes[j]) continue;
                for (;;) {
                    if (s >= len) { ok = 0; break; }
                    u32 w = stream[s++] & masks[j];
                    if (w < primes[j]) { out[j * n + c] = w; break; }
                }
            }
    }
})

KERNEL(residues_below, "u32:* u32:1", PyBool_FromLong(ok),
       {
    const u32 *polys = U32(0), *primes = U32(1);
    int nd = args[0].ndim;
    ssize n = args[0].shape[nd - 1], L = nd >= 2 ? args[0].shape[nd - 2] : 1, rows = 1;
    for (int d = 0; d < nd - 1; d++) rows *= args[0].shape[d];
    for (ssize r = 0; r < rows && ok; r++) {
        const u32 *row = polys + r * n;
        u32 top = 0;
        for (ssize i = 0; i < n; i++) top = row[i] > top ? row[i] : top;
        if (top >= primes[r % L]) ok = 0;
    }
})

KERNEL(sample_noise, "u64:1 i64:1w i64:1w", Py_NewRef(Py_None),
       { sample_noise_(U64(0), I64(1), I64(2), DIM(1, 0)); })

KERNEL(encrypt_zero, "u64:1 u64:1 u64:3 u64:3 u64:3 u64:4 u64:2 u64:2w u64:2w b i64:2w", PySequence_GetItem(objs[10], 0),
       {
    encrypt_zero_(U64(0), U64(1), DIM(1, 0), DIM(7, 1), U64(2), U64(3), U64(4), U64(5), U64(6), U64(7), U64(8),
                  (int)INT(9), I64(10));
})

KERNEL(scaled_weights, "f64:2 i64:1 f64:1 i64:1 f64:1 i64:2w", Py_NewRef(Py_None),
       {
    const double *W = F64(0), *row_scale = F64(2), *col_scale = F64(4);
    const i64 *row_map = I64(1), *col_map = I64(3);
    i64 *out = I64(5);
    ssize rows = DIM(5, 0), cols = DIM(5, 1), width = DIM(0, 1);
    int mapped = DIM(3, 0) != 0;
    for (ssize k = 0; k < rows; k++) {
        const double *src = W + row_map[k] * width;
        double s = row_scale[k];
        i64 *dst = out + k * cols;
        if (mapped)
            for (ssize i = 0; i < cols; i++) dst[i] = (i64)rint(src[col_map[i]] * col_scale[i] * s);
        else
            for (ssize i = 0; i < cols; i++) dst[i] = (i64)rint(src[i] * s);
    }
})

KERNEL(row_plaintexts, "i64:2 n u64:1 u64:3 u64:4 u64:3w u64:3w i64:2w u64:1w", Py_NewRef(Py_None),
       {
    const i64 *wh = I64(0);
    ssize per = (ssize)INT(1);
    const u64 *primes = U64(2), *big = U64(3), *tail = U64(4);
    u64 *w_ntt = U64(5), *w_ntt_p = U64(6), *tmp = U64(8);
    i64 *rw = I64(7);
    ssize n_classes = DIM(0, 0), nf = DIM(0, 1), n = DIM(8, 0), groups = DIM(5, 0), L = DIM(2, 0), rws = DIM(7, 1);
    int companions = DIM(6, 0) > 0;
    for (ssize g = 0; g < groups; g++) {
        ssize first = g * per, size = per < n_classes - first ? per : n_classes - first;
        for (ssize cl = 0; cl < size; cl++)
            memcpy(rw + g * rws + (size - 1 - cl) * nf, wh + (first + cl) * nf, nf * sizeof(i64));
        for (ssize j = 0; j < L; j++) {
            u64 q = primes[j];
            i64 qi = (i64)q;
            for (ssize cl = 0; cl < size; cl++) {
                const i64 *row = wh + (first + cl) * nf;
                u64 *dst = tmp + cl * nf;
                for (ssize m = 0; m < nf; m++) {
                    i64 v = row[nf - 1 - m];
                    dst[m] = (u64)(v + (qi & (v >> 63)));
                }
            }
            for (ssize i = size * nf; i < n; i++) tmp[i] = 0;
            u64 *out = w_ntt + (g * L + j) * n;
            ntt_forward_(tmp, out, n, q, big + j * 4 * n, tail + j * 4 * n);
            if (companions) {
                double ratio = 4294967296.0 / (double)q;
                u64 *outp = w_ntt_p + (g * L + j) * n;
                for (ssize i = 0; i < n; i++) outp[i] = shoup_exact(out[i], q, ratio);
            }
        }
    }
})

KERNEL(bias_phases, "i64:1 u64:1 u64:1 i64:2w", Py_NewRef(Py_None),
       {
    const i64 *bh = I64(0);
    const u64 *delta = U64(1), *primes = U64(2);
    i64 *out = I64(3);
    ssize C = DIM(0, 0), L = DIM(2, 0);
    for (ssize c = 0; c < C; c++)
        for (ssize j = 0; j < L; j++) {
            i64 p = (i64)primes[j];
            out[c * L + j] = (i64)(((u64)pymod(bh[c], p) * delta[j]) % (u64)p);
        }
})

KERNEL(flood_residues, "u64:2 n u64:2 u64:1 i64:2w", Py_NewRef(Py_None),
       {
    const u64 *words = U64(0), *flood = U64(2), *primes = U64(3);
    i64 bits = INT(1), *out = I64(4);
    ssize K = DIM(0, 0), L = DIM(3, 0);
    for (ssize j = 0; j < L; j++)
        for (ssize k = 0; k < K; k++)
            out[j * K + k] = (i64)flood_residue(words[2 * k], words[2 * k + 1], bits, flood[2 * j], flood[2 * j + 1],
                                                primes[j]);
})

KERNEL(row_outputs, "u32:3 u32:3 u64:2 u64:1 u64:3 u64:3 i64:2 i64:1 i64:1 i64:1 i64:2 u64:3 u64:3 i32:2 "
                    "u64:3 u64:4 u64:2 n u64:2 u32:4w u32:3w (i64:2w,f64:2w)", Py_NewRef(Py_None),
       {
    const u32 *c0 = U32(0), *a = U32(1);
    const u64 *words = U64(2), *primes = U64(3), *w_ntt = U64(4), *w_ntt_p = U64(5);
    const i64 *rw = I64(6), *rw_len = I64(7), *pos = I64(8), *group = I64(9), *bias = I64(10);
    const u64 *pk = U64(11), *pkp = U64(12);
    const i32 *pk0_rev = I32(13);
    const u64 *big = U64(14), *tail = U64(15), *n_inv = U64(16), *flood = U64(18);
    i64 flood_bits = INT(17);
    u32 *c1_out = U32(19), *logits_out = U32(20);
    i64 *ints = I64(21);
    double *floats = F64(22);
    ssize ns = DIM(0, 0), L = DIM(0, 1), n = DIM(0, 2), G = DIM(4, 0), C = DIM(8, 0), wrow = DIM(2, 1),
          rws = DIM(6, 1);
    u64 *z1 = (u64 *)(ints + 5 * n), *a_p = (u64 *)(ints + (5 + L) * n);
    int of_a = DIM(5, 0) == 0;
    double *uf = floats + 2 * L * 2 * n, *lo16 = floats, *hi16 = floats + L * 2 * n;
    ssize per_group = n + SPARE_WORDS, tail_words = G * per_group;
    for (ssize s = 0; s < ns; s++) {
        const u64 *ws = words + s * wrow;
        for (ssize j = 0; j < L; j++) {
            const u32 *asj = a + (s * L + j) * n;
            limbs(c0 + (s * L + j) * n, lo16 + j * 2 * n, hi16 + j * 2 * n, n);
            if (of_a) {
                u64 q = primes[j];
                double ratio = 4294967296.0 / (double)q;
                for (ssize i = 0; i < n; i++) a_p[j * n + i] = shoup_exact((u64)asj[i], q, ratio);
            }
        }
        for (ssize g = 0; g < G; g++) {
            encrypt_zero_(ws + g * per_group, primes, L, n, pk, pkp, big, tail, n_inv, z1, z1, 0, ints);
            const i64 *u = ints;
            for (ssize i = 0; i < n; i++) uf[i] = (double)u[i];
            for (ssize j = 0; j < L; j++) {
                u64 q = primes[j];
                const u64 *wj = w_ntt + (g * L + j) * n, *zj = z1 + j * n;
                const u32 *aj = a + (s * L + j) * n;
                u32 *out = c1_out + ((s * G + g) * L + j) * n;
                if (of_a) {
                    const u64 *apj = a_p + j * n;
                    for (ssize i = 0; i < n; i++) {
                        u64 v = mulmod(wj[i], (u64)aj[i], apj[i], q) + zj[i];
                        out[i] = (u32)umin(v, v - q);
                    }
                } else {
                    const u64 *wpj = w_ntt_p + (g * L + j) * n;
                    for (ssize i = 0; i < n; i++) {
                        u64 v = mulmod((u64)aj[i], wj[i], wpj[i], q) + zj[i];
                        out[i] = (u32)umin(v, v - q);
                    }
                }
            }
            for (ssize c = 0; c < C; c++) {
                if (group[c] != g) continue;
                ssize k = pos[c], Lg = rw_len[g], base = n + k - Lg + 1;
                i64 e0 = cbd21(ws[tail_words + 3 * c]);
                u64 f_lo = ws[tail_words + 3 * c + 1], f_hi = ws[tail_words + 3 * c + 2];
                const i64 *w = rw + g * rws;
                for (ssize j = 0; j < L; j++) {
                    i64 q = (i64)primes[j];
                    i64 z0 = (i64)dot_i32(uf, pk0_rev + j * 2 * n + (n - 1 - k), n);
                    double lo, hi;
                    dot2(w, lo16 + j * 2 * n + base, hi16 + j * 2 * n + base, Lg, &lo, &hi);
                    i64 f = (i64)flood_residue(f_lo, f_hi, flood_bits, flood[2 * j], flood[2 * j + 1], primes[j]);
                    i64 v = (pymod((i64)hi, q) << 16) + (i64)lo + z0 + e0 + bias[c * L + j] + f;
                    logits_out[(s * L + j) * C + c] = (u32)pymod(v, q);
                }
            }
        }
    }
})

/* z and out may be strided (the callers pass slices of larger arrays); their last axis is not. */
KERNEL(column_outputs, "u32:3 i32:2 n u64:1 u64:3s u32:3s n", Py_NewRef(Py_None),
       {
    const u32 *ct = U32(0);
    const i32 *w = I32(1);
    ssize fold = (ssize)INT(2), width = (ssize)INT(6);
    const u64 *primes = U64(3), *z = U64(4);
    u32 *out = U32(5);
    ssize nf = DIM(0, 0), L = DIM(0, 1), n = DIM(0, 2), C = DIM(1, 0);
    ssize zs0 = args[4].stride[0], zs1 = args[4].stride[1], os0 = args[5].stride[0], os1 = args[5].stride[1];
    i64 acc[CLASS_BLOCK][COLS] __attribute__((aligned(64)));
    i32 xc[COLS] __attribute__((aligned(64)));
    i64 *hi = malloc(sizeof(i64) * (C ? C : 1) * COLS), *lo = malloc(sizeof(i64) * (C ? C : 1) * COLS),
        *offset = malloc(sizeof(i64) * (C ? C : 1));
    if (hi == NULL || lo == NULL || offset == NULL) {
        ok = -1;
    } else {
        ssize top = width < n ? width : n;
        for (ssize j = 0; j < L; j++) {
            i64 q = (i64)primes[j];
            u64 r32 = (u64)((1ll << 32) % q);
            for (ssize c = 0; c < C; c++) {
                i64 total = 0;
                for (ssize i = 0; i < nf; i++) total += w[c * nf + i];
                offset[c] = (i64)(((u64)pymod(total, q) * (u64)((1ll << 31) % q)) % (u64)q);
            }
            for (ssize col = 0; col < top; col += COLS) {
                memset(hi, 0, sizeof(i64) * C * COLS);
                memset(lo, 0, sizeof(i64) * C * COLS);
                for (ssize cb = 0; cb < C; cb += CLASS_BLOCK) {
                    ssize ce = cb + CLASS_BLOCK < C ? cb + CLASS_BLOCK : C;
                    for (ssize i0 = 0; i0 < nf; i0 += fold) {
                        memset(acc, 0, sizeof acc);
                        ssize ie = i0 + fold < nf ? i0 + fold : nf;
                        for (ssize i = i0; i < ie; i++) {
                            const u32 *x = ct + (i * L + j) * n + col;
                            for (int k = 0; k < COLS; k++) xc[k] = (i32)(x[k] ^ 0x80000000u);
                            for (ssize c = cb; c < ce; c++) {
                                i64 wc = w[c * nf + i], *ac = acc[c - cb];
                                for (int k = 0; k < COLS; k++) ac[k] += wc * (i64)xc[k];
                            }
                        }
                        for (ssize c = cb; c < ce; c++) {
                            const i64 *ac = acc[c - cb];
                            i64 *hc = hi + c * COLS, *lc = lo + c * COLS;
                            for (int k = 0; k < COLS; k++) {
                                hc[k] += ac[k] >> 32;
                                lc[k] += ac[k] & (i64)M32;
                            }
                        }
                    }
                }
                for (ssize c = 0; c < C; c++) {
                    const u64 *zc = z + c * zs0 + j * zs1 + col;
                    u32 *oc = out + c * os0 + j * os1 + col;
                    const i64 *hc = hi + c * COLS, *lc = lo + c * COLS;
                    for (int k = 0; k < COLS; k++) {
                        u64 h = ((u64)pymod(hc[k], q) * r32) % (u64)q;
                        oc[k] = (u32)(((i64)h + lc[k] + offset[c] + (i64)zc[k]) % q);
                    }
                }
            }
        }
    }
    free(hi);
    free(lo);
    free(offset);
})

#define ENTRY(name, doc) {#name, (PyCFunction)(void (*)(void))k_##name, METH_FASTCALL, doc}

static PyMethodDef methods[] = {
    ENTRY(ntt_forward, "fastkernels.ntt_forward, compiled ahead of time."),
    ENTRY(ntt_inverse, "fastkernels.ntt_inverse, compiled ahead of time."),
    ENTRY(expand_uniform, "fastkernels.expand_uniform, compiled ahead of time."),
    ENTRY(residues_below, "fastkernels.residues_below, compiled ahead of time."),
    ENTRY(sample_noise, "fastkernels.sample_noise, compiled ahead of time."),
    ENTRY(encrypt_zero, "fastkernels.encrypt_zero, compiled ahead of time."),
    ENTRY(scaled_weights, "fastkernels.scaled_weights, compiled ahead of time."),
    ENTRY(row_plaintexts, "fastkernels.row_plaintexts, compiled ahead of time."),
    ENTRY(bias_phases, "fastkernels.bias_phases, compiled ahead of time."),
    ENTRY(flood_residues, "fastkernels.flood_residues, compiled ahead of time."),
    ENTRY(row_outputs, "fastkernels.row_outputs, compiled ahead of time."),
    ENTRY(column_outputs, "fastkernels.column_outputs, compiled ahead of time."),
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_aideploy_fastkernels",
    "The fast scheme's kernels in C (aideploy_scoring/fastkernels.c), built by fastkernels_aot.", -1, methods,
};

PyMODINIT_FUNC PyInit__aideploy_fastkernels(void) {
    import_array();
    return PyModule_Create(&module);
}
