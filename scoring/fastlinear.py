"""``encryption=fast``: linear scoring under Microsoft SEAL with coefficient encoding.

This module is the whole cryptographic core of the fast scheme: the client half
(:class:`FastClient`: key generation, query encryption, response decryption) and
the server half (:class:`FastServer`: model precomputation, homomorphic scoring).
It imports numpy, the standard library, the SEAL binding, ``cryptography`` (AES) and
numba (through :mod:`fastkernels`, the compiled hot path), because it is deployed as-is
inside the scoring container.

Technique (Cheetah, Huang et al., USENIX Security 2022)
-------------------------------------------------------
BFV over ``R_q = Z_q[X]/(X^N + 1)``.  A feature vector ``x`` (length ``n``) is put
into the *coefficients* of one polynomial, ``m(X) = sum_i xh_i X^i``, where
``xh = round(x * s_x)`` is a fixed-point integer.  For a group of ``G`` classes
the server builds one weight polynomial with class ``c`` at offset ``c*n`` in
reversed ("X^-i") order, ``W(X) = sum_c sum_i wh_{c,i} X^{c*n + n-1-i}``.  Then
coefficient ``k_c = c*n + n-1`` of ``m*W`` is exactly ``<xh, wh_c>`` (no
negacyclic wrap reaches it), so a matrix-vector product is one ciphertext x
plaintext multiply: no rotations, no Galois keys, no relinearisation keys.

Binding: ``seal-python`` (4.4.0), not ``tenseal.sealapi``
-------------------------------------------------------
Both wheels were inspected.  ``tenseal.sealapi`` (SEAL with zstd) *can* write
seeded, zstd-compressed ciphertexts, but it only serialises to and from file
*paths* (no bytes API), exposes no BGV and no bulk coefficient access, and a
load+save round trip through a memfd costs ~300 us per ciphertext on this
machine.  ``seal-python`` has a fast bytes API (``to_string``/``load_bytes``,
~10 us), ``encrypt_zero`` with a public key, NTT transforms of plaintexts and
ciphertexts, and parms_id checks, but is built *without* zlib/zstd and drops the
seed of ``encrypt_symmetric``.  We use ``seal-python`` for everything SEAL is
good at -- parameter validation against the 128-bit HE standard, key
generation, noise sampling and secret-key encryption (client), NTT transforms on
the client, and loading/validating the public key -- and do the seeding, the
packing and the server's arithmetic ourselves: the request path (NTTs in SEAL's
domain, public-key encryptions of zero, the fused row scorer, the batch
combinations) is compiled with numba in :mod:`fastkernels`:

* seeding: the client's uniform polynomial ``a`` is *defined* by AES-128-CTR
  keystreams (one per ciphertext) under a key derived from the seed (SHA-256),
  turned into residues by rejection sampling (:meth:`_Context.expand_a`) and
  interpreted in the NTT domain.  SEAL encrypts ``m`` with its own randomness as ``(c0*, c1*)``; the
  client re-keys it to ``c0 = c0* + INTT((NTT(c1*) - a) * s)``, so that
  ``(c0, a)`` is a fresh symmetric encryption of ``m`` with SEAL's noise and
  only ``c0`` plus a 32-byte seed is sent (half a ciphertext);
* compression: both data primes are < 2^32 so every residue is stored in
  exactly 4 bytes (entropy ~31.99 bits; a general compressor cannot do better on
  uniform residues), with no decompression step and no decompression bombs.

Parameters (defaults, :class:`FastParams`)
-----------------------------------------
* ``N = 4096``; coefficient moduli: three ~32-bit NTT primes from
  ``CoeffModulus.Create(4096, [32, 32, 32])``.  Key level ``Q = q1*q2*p``,
  ``log2 Q ~ 96 <= 109`` (HE Security Standard, 128-bit classical, ternary
  secret, sigma = 3.2); SEAL's own ``sec_level_type.tc128`` check is enforced.
  The data level is ``q = q1*q2`` (~2^64): queries and responses live there;
  ``p`` is SEAL's special prime, used only inside public-key encryption.
  Primes below 2^32 make every modular product exact in uint64 numpy.
* Plain modulus ``t = 2^46``; ``Delta = q/t ~ 2^18``.
* Scales: ``s_x = 2^18 / x_bound`` (inputs ``|x_i| <= x_bound``, default 1.0),
  ``s_w = 2^20``; ``S = s_x*s_w``.  Largest representable logit:
  ``t/(2S) = 128 * x_bound``.

Correctness ("approximate BFV" decoding)
---------------------------------------
SEAL's BFV encryption gives phase ``c0 + c1*s = round(q*m/t) + e`` with
``|e| <= 19`` (clipped normal, 6 sigma).  After the plaintext product and the
additions, the phase at a logit position is ``(q/t)*yh + E`` (mod q), where
``yh = <xh, wh> + bh`` is the exact fixed-point logit (``bh = round(b*S)``) and
``E`` is the total noise.  The client reads ``y = centered(phase) * t/(q*S)``,
i.e. it does *not* round to an integer mod t: the low-order bits of the product
and the noise are simply below the precision we care about.  Therefore

    |y - y_true| <= x_bound*||dw_c||_1/s_w + ||w_c||_1/(2 s_x) + ||dw_c||_1/(2S)
                    + 1/(2S) + E * t/(q*S),

with ``dw = wh - s_w*w`` (|dw| <= 1/2) and ``E <= 20*||W_g||_1`` (client noise
times the group's weight polynomial) ``+ 40N + 21`` (the server's public-key
encryption of zero, :func:`_pk_noise_bound`) ``+ F`` (flooding) ``+ 1``.  No wrap-around
requires ``(q/t)*max|yh| + E < q/2``.  The server evaluates this bound for its
actual model when it is constructed and raises :class:`FastSchemeError` if the
bound exceeds ``max_error`` (default 1e-3) or a logit could wrap.  With the
defaults and ``x in [-1, 1]``, ``n = 784``, a LogisticRegression-shaped model
gets a guaranteed bound of ~5-8e-4 (the flood takes most of the slack).  Inputs outside ``[-x_bound, x_bound]`` are refused by
the client; a model outside the supported range is refused by the server.

Model privacy (what the response reveals)
-----------------------------------------
The raw product ``m*W`` carries partial sums of W in every coefficient.  The
response contains, per output ciphertext, the *full* ``c1'`` but only the logit
coefficients of ``c0'``: coefficients that are not sent cannot be decrypted at
all, which is stronger than additively masking them with uniform values mod t
(the phase at an unsent position is undetermined).  ``c1'`` itself is
``a*W + z1`` where ``(z0, z1)`` is a fresh public-key encryption of zero: under
RLWE ``z1`` is pseudorandom, so ``c1'`` is independent of W (without it the
client, who knows ``a``, could compute ``W = c1'/a``).  What the client can
compute is the phase at the logit positions: ``(q/t)*yh + (e+eps)*W + e_pk + f``.
The term ``(e+eps)*W`` depends on W *and* is a known linear function of W for
the client (it knows its own noise ``e``); it is hidden by flooding ``f``, a
fresh uniform value in ``[-F, F)`` per released coefficient (drawn from
``os.urandom``), with ``F = 2^k`` the largest power of two that keeps the error
bound above.  The statistical distance between the released value for two
models is at most ``B_W/F`` per coefficient, ``B_W`` the worst-case bound on
``(e+eps)*W``; the server reports ``flood_margin_bits = log2(F/B_W)``, typically
~11-13 bits worst case (~18 bits for Gaussian-typical noise).  That is a
*heuristic*, not a 2^-40 statistical guarantee: a 2^-40 flood would need
~30 more bits of q, which does not fit the 40 KB query / 70 KB response budget
at N = 4096.  Put differently: a semi-honest client learns the logits, plus a
linear combination of W buried under noise 2^11-2^18 times its size.  Not
hidden: ``n_features``, ``n_classes``, the parameters, and everything the logits
themselves reveal (a linear model is extractable from ``n+1`` logit queries
through the legitimate API).  A malicious client (hand-crafted noise) is out of
scope.  The server never learns anything about ``x`` (RLWE, SEAL parameters).

Re-randomisation.  Each output ciphertext gets its own fresh public-key encryption
of zero ``(pk0*u + e0, pk1*u + e1) mod q``, made on the request path (reusing one would
reveal ``a*(W_1 - W_2)``).  ``(pk0, pk1)`` are the residues mod ``q1, q2`` of the client's
SEAL public key (an RLWE sample ``(-(a's + e), a')`` modulo ``q``), ``u`` is ternary
(centered binomial, eta 1) and ``e0, e1`` are centered binomial with eta 21 (sigma 3.24,
SEAL's 3.2), all drawn from AES-128-CTR keyed from ``os.urandom``; under RLWE
(N = 4096, log q = 64, well inside the 128-bit table) ``pk1*u + e1`` is pseudorandom even to
the client, who knows ``s``.  Its phase ``e*u + e0 + e1*s`` is at most ``40N + 21 < 2^18``.
The server needs ``NTT(u)`` and ``NTT(e1)`` for both primes -- four NTTs -- plus, for the
row layout, only the logit coefficients of ``pk0*u`` (dot products), never a full
``z0``.  SEAL's own ``encrypt_zero`` (key level, then a division by the special prime)
took ~1 ms here; the compiled version takes ~0.045 ms, so no pool or background refill is
needed: the figures in ``bench/RESULTS.md`` are whole-request costs.

Layouts
-------
* ``row`` (single query, small batches): one ciphertext per sample, classes in
  ``ceil(C/G)`` groups of ``G = min(C, N//n)`` (784x10 -> 2 groups of 5).
  Server work per sample (one compiled call, :func:`fastkernels.row_outputs`): seed
  expansion, per group a fresh encryption of zero, ``a (.) W_g + z1`` pointwise mod q
  in the NTT domain (Shoup products against the precomputed weights), and the ``G``
  needed coefficients of ``c0*W_g`` and of ``z0`` as exact float64 dot products
  (16-bit limbs).
* ``column`` (batches): one ciphertext per feature, up to N samples in the
  coefficients; class c is ``sum_i wh_{c,i} * ct_i`` plus a fresh encryption of
  zero -- a scalar linear combination, computed exactly with 64-bit integer
  products by :func:`fastkernels.column_outputs` (it outran float64 BLAS, which
  needs two limbs per weight to stay exact, by ~1.5x; large requests split their
  classes over up to four threads).  Every coefficient of an output ciphertext is a
  logit, and of ``c0'`` only the samples' coefficients are computed.  The cost is per
  block of N samples whatever their number: mostly ``nf * C * 2N`` products for ``c1'``
  (``sum_i wh_{c,i} * a_i``, the uniform halves), which no choice of samples shrinks.  The client picks the layout
  that moves fewer ciphertexts, query and response together, unless told otherwise.  Expanding the seeds costs about
  a third of a seeded 784-feature batch; ``encrypt(..., seeded=False)`` ships the
  uniform polynomials instead (2x upload, 12.5 KB/sample) and skips it.

Wire formats (little-endian, versioned; every field is validated)
-----------------------------------------------------------------
* bundle:   ``b"AIFB" ver u8, 3 reserved, u32 len, params JSON, pk u32[2][3][N]``
* query:    ``b"AIFQ" ver u8, layout u8, flags u16, params fp[8], key id[16],
  n_features u32, n_samples u32, n_cts u32, seed[32], c0 u32[n_cts][2][N]``
  (flag 1 = unseeded: ``a u32[n_cts][2][N]`` follows and the seed is zero)
* response: ``b"AIFR" ver u8, layout u8, u16 0, key id[16], n_features u32,
  n_classes u32, n_samples u32, n_cts u32, c1' u32[n_cts][2][N], c0' logits u32``
  (row: ``[n_samples][2][C]``, column: ``[C][2][n_samples]``).

NTT-domain polynomials (``a``, ``c1'``) are in the tiled order of :mod:`fastkernels`
(SEAL's order as an (N/16, 16) matrix, transposed); the public key in the bundle and
coefficient-domain polynomials (``c0``, ``c0'``) are in SEAL's / natural order.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import hashlib
import json
import math
import os
import struct
import threading
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Iterable

import numpy as np
import seal
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import fastkernels as fk

__all__ = ["FastSchemeError", "FastParams", "FastClient", "FastServer", "FastPublicKey"]

# 2: the uniform polynomials are expanded with AES-128-CTR, not SHAKE-128.
# 3: NTT-domain polynomials travel in tiled order (fastkernels.to_seal_order).
# 4: each ciphertext's ``a`` has its own AES stream, rejected residues take spare words.
WIRE_VERSION = 4
_BUNDLE_MAGIC = b"AIFB"
_QUERY_MAGIC = b"AIFQ"
_RESPONSE_MAGIC = b"AIFR"
_LAYOUT_ROW = 1
_LAYOUT_COLUMN = 2
_LAYOUT_NAMES = {"row": _LAYOUT_ROW, "column": _LAYOUT_COLUMN}
# Query flag: the uniform polynomials are sent in full instead of as a seed (batch option
# that trades 2x upload for no seed expansion on the server).
_FLAG_UNSEEDED = 1
_SEED_BYTES = 32
_KEY_ID_BYTES = 16
_FP_BYTES = 8
_DOMAIN_A = b"aideploy-fastlinear-a-v4"
_DOMAIN_KEY = b"aideploy-fastlinear-key-v1"
# query header: magic, ver, layout, flags, params fp, key id, n_features, n_samples, n_cts, seed
_QUERY_HEADER = struct.Struct(f"<4sBBH{_FP_BYTES}s{_KEY_ID_BYTES}sIII{_SEED_BYTES}s")
# response header: magic, ver, layout, reserved, key id, n_features, n_classes, n_samples, n_cts
_RESPONSE_HEADER = struct.Struct(f"<4sBBH{_KEY_ID_BYTES}sIIII")
_BUNDLE_HEADER = struct.Struct("<4sB3sI")
# Requests larger than this many ciphertexts are refused before any allocation.
_MAX_CTS = 1 << 16
# 64-bit noise words per AES call (cryptography's one-shot AEAD takes under 2^31 bytes).
_NOISE_CALL_WORDS = 1 << 27
# SEAL's clipped-normal noise: sigma 3.2, clipped at 6 sigma -> |e| <= 19; plus the
# encoding rounding |eps| <= 1/2 -> 20 is a safe per-coefficient bound.
_FRESH_NOISE_BOUND = 20


def _pk_noise_bound(n: int) -> int:
    """Bound on the phase of the server's encryption of zero, ``e*u + e0 + e1*s``: the key's
    error |e| <= 19 (SEAL) times ternary u, |e1|, |e0| <= 21 (centered binomial), s ternary."""
    return 19 * n + 21 * n + 21


class FastSchemeError(ValueError):
    """Every user-facing failure of the fast scheme (bad input, bad bytes, bad model)."""


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class FastParams:
    """Parameters of the fast scheme; the client chooses them, the server must match.

    ``coeff_modulus_bits`` are the bit sizes of the three SEAL primes: the first two
    form the data modulus ``q`` (each must be <= 32 bits so numpy arithmetic is exact),
    the last is SEAL's special prime.  ``plain_modulus_bits`` sets ``t = 2^bits``.
    Inputs are scaled by ``s_x = 2^x_scale_bits / x_bound`` and weights by
    ``s_w = 2^w_scale_bits``.  ``max_error`` is the absolute error per logit the
    server must be able to guarantee for its model, or it refuses to serve.
    """

    poly_modulus_degree: int = 4096
    coeff_modulus_bits: tuple[int, ...] = (32, 32, 32)
    plain_modulus_bits: int = 46
    x_scale_bits: int = 18
    w_scale_bits: int = 20
    x_bound: float = 1.0
    max_error: float = 1e-3

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise FastSchemeError(f"invalid FastParams: {msg}")

        n = self.poly_modulus_degree
        need(isinstance(n, int) and not isinstance(n, bool), "poly_modulus_degree must be an int")
        need(n in (4096, 8192, 16384), "poly_modulus_degree must be 4096, 8192 or 16384")
        bits = self.coeff_modulus_bits
        need(isinstance(bits, tuple) and len(bits) == 3, "coeff_modulus_bits must be a tuple of 3 ints")
        need(all(isinstance(b, int) and not isinstance(b, bool) and 20 <= b <= 32 for b in bits),
             "each coeff modulus must have 20..32 bits (two data primes + SEAL's special prime)")
        for name in ("plain_modulus_bits", "x_scale_bits", "w_scale_bits"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an int")
        need(8 <= self.plain_modulus_bits <= bits[0] + bits[1] - 10,
             "plain_modulus_bits must be in [8, data modulus bits - 10]")
        need(1 <= self.x_scale_bits <= 30 and 1 <= self.w_scale_bits <= 30, "scale bits must be in [1, 30]")
        need(self.x_scale_bits + 2 < self.plain_modulus_bits, "x_scale_bits too large for plain_modulus_bits")
        for name in ("x_bound", "max_error"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 f"{name} must be a positive finite number")

    @property
    def x_scale(self) -> float:
        """Fixed-point scale of the inputs, ``2^x_scale_bits / x_bound``."""
        return float(2**self.x_scale_bits) / float(self.x_bound)

    @property
    def w_scale(self) -> float:
        """Fixed-point scale of the weights, ``2^w_scale_bits``."""
        return float(2**self.w_scale_bits)

    def to_json(self) -> bytes:
        """Canonical JSON (sorted keys), used on the wire and for fingerprints."""
        d = asdict(self)
        d["coeff_modulus_bits"] = list(self.coeff_modulus_bits)
        d["x_bound"] = float(self.x_bound)
        d["max_error"] = float(self.max_error)
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> "FastParams":
        """Parse :meth:`to_json` output; unknown or missing fields are errors."""
        try:
            d = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise FastSchemeError(f"parameters are not valid JSON: {exc}") from None
        if not isinstance(d, dict) or set(d) != {f.name for f in fields(cls)}:
            raise FastSchemeError("parameters JSON has missing or unknown fields")
        if not isinstance(d["coeff_modulus_bits"], list):
            raise FastSchemeError("invalid FastParams: coeff_modulus_bits must be a list")
        d["coeff_modulus_bits"] = tuple(d["coeff_modulus_bits"])
        return cls(**d)

    def fingerprint(self) -> bytes:
        """8-byte hash of the canonical parameters, carried in every query."""
        return _fingerprint(self)

    def describe(self) -> dict[str, Any]:
        """Human-readable summary: the fields plus derived quantities (primes, sizes, bounds)."""
        ctx = _context(self)
        n = self.poly_modulus_degree
        s = self.x_scale * self.w_scale
        return {
            **json.loads(self.to_json()),
            "scheme": "BFV, coefficient encoding (Cheetah-style), SEAL via seal-python",
            "security": f"128-bit classical (HE standard): N={n}, log2 Q={ctx.log2_key_modulus:.1f}",
            "data_primes": list(ctx.primes),
            "special_prime": ctx.special_prime,
            "log2_q": round(math.log2(ctx.q), 3),
            "plain_modulus": ctx.t,
            "x_scale": self.x_scale,
            "w_scale": self.w_scale,
            "logit_bound": ctx.t / (2.0 * s),
            "max_features": n,
            "query_bytes_single": _QUERY_HEADER.size + 2 * n * 4,
            "ciphertext_bytes_per_output": 2 * n * 4,
            "bundle_bytes_approx": _BUNDLE_HEADER.size + len(self.to_json()) + 2 * 3 * n * 4,
        }


# ------------------------------------------------------------------ SEAL context


class _Context:
    """SEAL context for one parameter set plus raw (de)serialisation helpers.

    SEAL's serialisation (compression none) is: a 16-byte header
    ``<u16 magic 0xA15E, u8 16, u8 major, u8 minor, u8 compr, u16 0, u64 size>``
    followed by the object's members.  For a ciphertext: parms_id (4 x u64),
    is_ntt_form (u8), size, N, L (u64 each), scale (f64), correction factor (u64),
    then a DynArray (its own header, u64 count, count x u64 data).  We write and read
    these directly so that numpy can touch the coefficients.
    """

    def __init__(self, params: FastParams):
        n = params.poly_modulus_degree
        parms = seal.EncryptionParameters(seal.scheme_type.bfv)
        parms.set_poly_modulus_degree(n)
        try:
            moduli = seal.CoeffModulus.Create(n, list(params.coeff_modulus_bits))
        except Exception as exc:  # SEAL raises when no suitable prime exists
            raise FastSchemeError(f"SEAL cannot create the coefficient moduli: {exc}") from None
        parms.set_coeff_modulus(moduli)
        self.t = 1 << params.plain_modulus_bits
        parms.set_plain_modulus(self.t)
        self.ctx = seal.SEALContext(parms, True, seal.sec_level_type.tc128)
        if not self.ctx.parameters_set():
            raise FastSchemeError(
                "SEAL rejects the parameters for 128-bit security: " + self.ctx.parameter_error_message())
        key_data = self.ctx.key_context_data()
        first = self.ctx.first_context_data()
        if len(first.parms().coeff_modulus()) != 2 or len(key_data.parms().coeff_modulus()) != 3:
            raise FastSchemeError("internal: expected a 2-prime data level below a 3-prime key level")
        self.params = params
        self.n = n
        self.primes = tuple(int(m.value()) for m in first.parms().coeff_modulus())
        self.special_prime = int(key_data.parms().coeff_modulus()[2].value())
        self.key_primes = self.primes + (self.special_prime,)
        self.q = self.primes[0] * self.primes[1]
        self.log2_key_modulus = math.log2(self.q * self.special_prime)
        self.q_col = np.array(self.primes, dtype=np.uint64).reshape(2, 1)  # broadcast over (2, N)
        self.q_i64 = np.array(self.primes, dtype=np.int64)
        self.q1_inv_mod_q2 = pow(self.primes[0], -1, self.primes[1])
        self.data_parms_id = list(first.parms_id())
        self.key_parms_id = list(key_data.parms_id())
        self.evaluator = seal.Evaluator(self.ctx)
        # Header version bytes of the SEAL build, read from a real serialisation.
        probe = seal.Plaintext("1").to_bytes()
        self.seal_version = (probe[3], probe[4])
        self.primes_u64 = np.array(self.primes, dtype=np.uint64)
        self.primes_u32 = self.primes_u64.astype(np.uint32)
        # expand_a: candidates are masked to each prime's bit length; a ciphertext's stream
        # has 2N words and twice the expected spare words (+64), extended if they run out.
        self.prime_masks = np.array([(1 << q.bit_length()) - 1 for q in self.primes], dtype=np.uint32)
        reject = [1.0 - q / (int(m) + 1) for q, m in zip(self.primes, self.prime_masks)]
        self.stream_words = 2 * n + 2 * math.ceil(n * sum(r / (1.0 - r) for r in reject)) + 64
        self._tables: fk.NttTables | None = None

    @property
    def tables(self) -> fk.NttTables:
        """Our NTT's twiddles, rooted where SEAL's are: SEAL's transform of ``X`` is the root."""
        if self._tables is None:
            x = np.zeros((1, 2, self.n), dtype=np.uint64)
            x[0, :, 1] = 1
            roots = tuple(int(r) for r in self.ntt(x)[0, :, 0])
            self._tables = fk.NttTables(self.n, self.primes, roots)
        return self._tables

    # -- raw SEAL byte layouts
    def _header(self, total: int) -> bytes:
        return struct.pack("<HBBBBHQ", 0xA15E, 16, self.seal_version[0], self.seal_version[1], 0, 0, total)

    def _dynarray(self, data: bytes) -> bytes:
        return self._header(16 + 8 + len(data)) + struct.pack("<Q", len(data) // 8) + data

    def ct_bytes(self, polys: np.ndarray, parms_id: list[int], ntt: bool) -> bytes:
        """SEAL serialisation of a size-``polys.shape[0]`` ciphertext with raw data ``polys``."""
        size, nmod, n = polys.shape
        members = (struct.pack("<4Q", *parms_id) + struct.pack("<B", 1 if ntt else 0)
                   + struct.pack("<QQQdQ", size, n, nmod, 1.0, 1)
                   + self._dynarray(np.ascontiguousarray(polys, dtype="<u8").tobytes()))
        return self._header(16 + len(members)) + members

    def ct_load(self, polys: np.ndarray, ntt: bool) -> "seal.Ciphertext":
        """A SEAL ciphertext at the data level holding ``polys`` (shape (2, 2, N))."""
        ct = seal.Ciphertext()
        ct.load_bytes(self.ctx, self.ct_bytes(polys, self.data_parms_id, ntt))
        return ct

    @staticmethod
    def ct_array(ct: "seal.Ciphertext") -> np.ndarray:
        """Raw data of a SEAL ciphertext (or public key) as a (size, L, N) uint64 array."""
        raw = ct.to_string()
        size, nmod, n = ct.size(), ct.coeff_modulus_size(), ct.poly_modulus_degree()
        count = size * nmod * n
        return np.frombuffer(raw, dtype="<u8", count=count, offset=len(raw) - 8 * count).reshape(size, nmod, n)

    def plain_load(self, coeffs: np.ndarray) -> "seal.Plaintext":
        """A SEAL (coefficient-form) plaintext with the given coefficients in [0, t)."""
        data = np.ascontiguousarray(coeffs, dtype="<u8").tobytes()
        members = (b"\0" * 32 + struct.pack("<Qd", len(coeffs), 1.0) + self._dynarray(data))
        pt = seal.Plaintext()
        pt.load_bytes(self.ctx, self._header(16 + len(members)) + members)
        return pt

    # -- transforms through SEAL (not on the server's request path)
    def _transform(self, polys: np.ndarray, forward: bool) -> np.ndarray:
        """(I)NTT of k polynomials mod (q1, q2), shape (k, 2, N); two per SEAL call."""
        k = polys.shape[0]
        out = np.empty_like(polys, dtype=np.uint64)
        for start in range(0, k, 2):
            chunk = polys[start:start + 2]
            # SEAL refuses "transparent" ciphertexts (second polynomial zero): use a
            # filler there and fix up the (trivial) transform of a zero polynomial.
            pair = np.ones((2, 2, self.n), dtype=np.uint64)
            pair[: chunk.shape[0]] = chunk
            zero1 = chunk.shape[0] == 2 and not chunk[1].any()
            if zero1:
                pair[1] = 1
            ct = self.ct_load(pair, ntt=not forward)
            if forward:
                self.evaluator.transform_to_ntt_inplace(ct)
            else:
                self.evaluator.transform_from_ntt_inplace(ct)
            out[start:start + 2] = self.ct_array(ct)[: chunk.shape[0]]
            if zero1:
                out[start + 1] = 0
        return out

    def ntt(self, polys: np.ndarray) -> np.ndarray:
        return self._transform(polys, forward=True)

    def intt(self, polys: np.ndarray) -> np.ndarray:
        return self._transform(polys, forward=False)

    # -- the client's public uniform polynomials
    def expand_a(self, seed: bytes, n_cts: int) -> np.ndarray:
        """Uniform ``a`` for ``n_cts`` ciphertexts, NTT domain (tiled order), shape (n_cts, 2, N), uint32.

        Key ``K = SHA-256(domain || seed)[:16]``.  Ciphertext ``i`` reads its own AES-128-CTR
        keystream under ``K``, counter block ``nonce_i || 2, 3, ...`` with ``nonce_i`` = ``i`` as
        12 little-endian bytes (AES-GCM's keystream, see :func:`_aes_words`), as little-endian
        32-bit words, and turns it into residues by :func:`fastkernels.expand_uniform`'s rule
        (rejection sampling with spare words: exactly uniform given a PRF).  Any secure PRG
        would do; AES is what the hardware makes cheap, as in Kyber-90s.  A longer stream
        extends a shorter one, so the retry when spare words run out is deterministic.
        """
        out = np.empty((n_cts, 2, self.n), dtype=np.uint32)
        aes = AESGCM(hashlib.sha256(_DOMAIN_A + seed).digest()[:16])
        for i in range(n_cts):
            nonce = i.to_bytes(12, "little")
            nwords = self.stream_words
            while not fk.expand_uniform(_aes_words(aes, nonce, nwords), self.primes_u32, self.prime_masks, out[i]):
                nwords *= 2
        return out

    def crt_centered(self, r: np.ndarray) -> np.ndarray:
        """CRT of residues ``r[..., 0, :]`` (mod q1) and ``r[..., 1, :]`` (mod q2).

        Returns the representative in (-q/2, q/2] as float64, shape ``r.shape`` minus axis -2.
        """
        q1, q2 = self.primes
        r1 = r[..., 0, :].astype(np.uint64)
        r2 = r[..., 1, :].astype(np.uint64)
        h = ((r2 + np.uint64(q2) - (r1 % np.uint64(q2))) % np.uint64(q2)) * np.uint64(self.q1_inv_mod_q2)
        h %= np.uint64(q2)
        v = r1 + np.uint64(q1) * h  # < q < 2^64, exact in uint64
        half = np.uint64(self.q // 2)
        neg = v > half
        # v - q wraps in uint64; viewed as int64 it is the (negative) centered value.
        centered = np.where(neg, v - np.uint64(self.q), v).view(np.int64)
        return centered.astype(np.float64)


def _aes_words(aes: AESGCM, nonce: bytes, nwords: int) -> np.ndarray:
    """The first ``nwords`` little-endian 32-bit words of AES-CTR keystream under ``aes``'s key,
    counter block ``nonce || 2, 3, ...`` (read-only array).

    That is the keystream AES-GCM encrypts with, so it is the GCM encryption of zeros (tag
    dropped): the one-shot AEAD call has the cheapest key setup in ``cryptography`` (~1 us,
    against ~5 us for a CTR ``Cipher``) and runs its stitched AES-NI/VAES code.
    """
    nbytes = 4 * nwords
    zeros = _ZEROS[:nbytes] if nbytes <= len(_ZEROS) else bytes(nbytes)
    return np.frombuffer(aes.encrypt(nonce, zeros, None), dtype="<u4", count=nwords)


_ZEROS = memoryview(bytes(1 << 20))  # plaintext of _aes_words up to 1 MB (larger: made per call)


@functools.lru_cache(maxsize=8)
def _context(params: FastParams) -> _Context:
    return _Context(params)


@functools.lru_cache(maxsize=64)
def _fingerprint(params: FastParams) -> bytes:
    return hashlib.sha256(b"aideploy-fastlinear-params" + params.to_json()).digest()[:_FP_BYTES]


def _mod_add(x: np.ndarray, y: np.ndarray, q_col: np.ndarray) -> np.ndarray:
    s = x + y
    return np.where(s >= q_col, s - q_col, s)


def _row_geometry(n_features: int, n_classes: int, n: int) -> list[list[int]]:
    """Class indices of each row-layout group: G = min(C, N // n) classes per group."""
    per = min(n_classes, n // n_features)
    return [list(range(g, min(g + per, n_classes))) for g in range(0, n_classes, per)]


def _choose_layout(n_samples: int, n_features: int, n_classes: int, n: int) -> int:
    """The layout that moves fewer ciphertexts, query and response together.

    Row: one up per sample, one down per sample and class group. Column: one up per feature
    and one down per class, per N samples (a 64-feature batch of 64 gets a 6x smaller answer).
    """
    blocks = -(-n_samples // n)
    row_cts = n_samples * (1 + len(_row_geometry(n_features, n_classes, n)))
    column_cts = blocks * (n_features + n_classes)
    return _LAYOUT_COLUMN if column_cts < row_cts else _LAYOUT_ROW


def _key_id(params: FastParams, pk_raw: bytes) -> bytes:
    return hashlib.sha256(_DOMAIN_KEY + params.to_json() + pk_raw).digest()[:_KEY_ID_BYTES]


# -------------------------------------------------------------------------- client


class FastClient:
    """Client half: owns the secret key, encrypts inputs, decrypts logits.

    ``key_id`` is a hash of the public key material and the parameters (safe to log).
    """

    def __init__(self, n_features: int, n_classes: int, params: FastParams | None = None):
        self.params = params if params is not None else FastParams()
        if not isinstance(self.params, FastParams):
            raise FastSchemeError("params must be a FastParams")
        self._ctx = _context(self.params)
        n = self._ctx.n
        for name, v in (("n_features", n_features), ("n_classes", n_classes)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise FastSchemeError(f"{name} must be a positive int, got {v!r}")
        if n_features > n:
            raise FastSchemeError(f"n_features={n_features} exceeds the supported maximum {n} (= N)")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        keygen = seal.KeyGenerator(self._ctx.ctx)
        self._secret_key = keygen.secret_key()
        public_key = keygen.create_public_key()
        self._encryptor = seal.Encryptor(self._ctx.ctx, self._secret_key)
        # The secret key is stored by SEAL in NTT form at the key level; the first
        # two RNS components are s mod q1, q2 in the same NTT domain as ciphertexts.
        sk_raw = self._secret_key.to_string()
        count = 3 * n
        s = np.frombuffer(sk_raw, dtype="<u8", count=count, offset=len(sk_raw) - 8 * count).reshape(3, n)
        self._s_ntt = s[:2].copy()
        pk_bytes = public_key.to_string()  # a size-2 ciphertext at the key level, NTT form
        pk = np.frombuffer(pk_bytes, dtype="<u8", count=2 * count,
                           offset=len(pk_bytes) - 16 * count).reshape(2, 3, n)
        self._pk_raw = pk.astype("<u4").tobytes()
        self._key_id = _key_id(self.params, self._pk_raw)
        self.key_id = self._key_id.hex()
        self._groups = _row_geometry(self.n_features, self.n_classes, n)

    def __repr__(self) -> str:
        return (f"FastClient(n_features={self.n_features}, n_classes={self.n_classes}, "
                f"key_id={self.key_id!r}, N={self.params.poly_modulus_degree})")

    def _reshaped(self, n_features: int, n_classes: int) -> "FastClient":
        """The same key (same secret, same key id) for a layer of another shape; :mod:`fastmlp`
        encrypts and decrypts each layer of a network through one of these."""
        if not 1 <= n_features <= self._ctx.n or n_classes < 1:
            raise FastSchemeError(f"layer shape {n_features}x{n_classes} not supported with N={self._ctx.n}")
        view = copy.copy(self)
        view.n_features, view.n_classes = int(n_features), int(n_classes)
        view._groups = _row_geometry(view.n_features, view.n_classes, self._ctx.n)
        return view

    def public_bundle(self) -> bytes:
        """Everything the server needs (parameters + public key), no secret material."""
        pj = self.params.to_json()
        return _BUNDLE_HEADER.pack(_BUNDLE_MAGIC, WIRE_VERSION, b"\0\0\0", len(pj)) + pj + self._pk_raw

    # -- encryption
    def _check_input(self, X: Any) -> np.ndarray:
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise FastSchemeError(f"input is not numeric: {exc}") from None
        if X.ndim == 1:
            X = X.reshape(1, -1)
        if X.ndim != 2 or X.shape[0] < 1:
            raise FastSchemeError(f"input must have shape (n_samples, {self.n_features}), got {X.shape}")
        if X.shape[1] != self.n_features:
            raise FastSchemeError(f"input has {X.shape[1]} features, the client was set up for {self.n_features}")
        if not np.all(np.isfinite(X)):
            raise FastSchemeError("input contains NaN or infinity")
        bound = float(self.params.x_bound)
        worst = float(np.max(np.abs(X)))
        if worst > bound:
            raise FastSchemeError(
                f"input value {worst:g} is outside the supported range [-{bound:g}, {bound:g}] "
                "(scale the features or use FastParams(x_bound=...))")
        if X.shape[0] > _MAX_CTS:
            raise FastSchemeError(f"at most {_MAX_CTS} samples per request")
        return X

    def _encrypt_messages(self, messages: np.ndarray, a: np.ndarray) -> np.ndarray:
        """c0 (coefficient domain) for each message so that (c0, a) encrypts it.

        SEAL encrypts each message with the secret key as (c0*, c1*) (SEAL's noise);
        then c0 = c0* + INTT((NTT(c1*) - a) * s) re-keys it onto the seeded ``a``.
        """
        ctx = self._ctx
        k = messages.shape[0]
        c0s = np.empty((k, 2, ctx.n), dtype=np.uint64)
        c1s = np.empty((k, 2, ctx.n), dtype=np.uint64)
        for i in range(k):
            ct = self._encryptor.encrypt_symmetric(ctx.plain_load(messages[i]))
            raw = _Context.ct_array(ct)
            c0s[i] = raw[0]
            c1s[i] = raw[1]
        c1_ntt = ctx.ntt(c1s)
        diff = (c1_ntt + ctx.q_col - fk.to_seal_order(a)) % ctx.q_col
        corr = ctx.intt((diff * self._s_ntt) % ctx.q_col)
        return _mod_add(c0s, corr, ctx.q_col)

    def encrypt(self, X: np.ndarray, layout: str | None = None, seeded: bool = True) -> bytes:
        """Encrypt ``X`` (n_samples, n_features) into one query.

        One sample uses the row layout (one seeded half-ciphertext); larger batches
        use whichever layout uploads less, or ``layout='row'|'column'``.  ``seeded=False``
        sends the uniform polynomials in full (2x upload) so the server skips the seed
        expansion -- worthwhile only for large batches where server throughput matters.
        """
        X = self._check_input(X)
        ctx = self._ctx
        n, t = ctx.n, ctx.t
        n_samples = X.shape[0]
        if layout is None:
            code = _choose_layout(n_samples, self.n_features, self.n_classes, n)
        elif layout in _LAYOUT_NAMES:
            code = _LAYOUT_NAMES[layout]
        else:
            raise FastSchemeError(f"layout must be 'row' or 'column', got {layout!r}")
        xh = np.rint(X * self.params.x_scale).astype(np.int64)
        xh_mod = np.where(xh < 0, xh + t, xh).astype(np.uint64)  # plaintext coefficients in [0, t)
        if code == _LAYOUT_ROW:
            messages = np.zeros((n_samples, n), dtype=np.uint64)
            messages[:, : self.n_features] = xh_mod
        else:
            n_blocks = -(-n_samples // n)
            padded = np.zeros((n_blocks * n, self.n_features), dtype=np.uint64)
            padded[:n_samples] = xh_mod
            # block b, feature i -> coefficients are the samples of that block
            messages = padded.reshape(n_blocks, n, self.n_features).transpose(0, 2, 1).reshape(-1, n)
        if messages.shape[0] > _MAX_CTS:
            raise FastSchemeError(f"request would need {messages.shape[0]} ciphertexts (max {_MAX_CTS})")
        seed = os.urandom(_SEED_BYTES)
        a = ctx.expand_a(seed, messages.shape[0])
        c0 = self._encrypt_messages(messages, a.astype(np.uint64))
        flags = 0 if seeded else _FLAG_UNSEEDED
        header = _QUERY_HEADER.pack(_QUERY_MAGIC, WIRE_VERSION, code, flags, self.params.fingerprint(),
                                    self._key_id, self.n_features, n_samples, messages.shape[0],
                                    seed if seeded else b"\0" * _SEED_BYTES)
        parts = [header, c0.astype("<u4").tobytes()]
        if not seeded:
            parts.append(a.astype("<u4").tobytes())
        return b"".join(parts)

    # -- decryption
    def decrypt(self, response: bytes, n_samples: int) -> np.ndarray:
        """Decrypt a response into logits of shape (n_samples, n_classes)."""
        ctx = self._ctx
        n = ctx.n
        if not isinstance(response, (bytes, bytearray, memoryview)):
            raise FastSchemeError("response must be bytes")
        response = bytes(response)
        if len(response) < _RESPONSE_HEADER.size:
            raise FastSchemeError(f"response too short ({len(response)} bytes)")
        magic, ver, code, _, kid, nf, nc, ns, n_cts = _RESPONSE_HEADER.unpack_from(response)
        if magic != _RESPONSE_MAGIC:
            raise FastSchemeError("not a fast-scheme response (bad magic)")
        if ver != WIRE_VERSION:
            raise FastSchemeError(f"unsupported response version {ver} (expected {WIRE_VERSION})")
        if kid != self._key_id:
            raise FastSchemeError("response was computed for a different key")
        if (nf, nc) != (self.n_features, self.n_classes):
            raise FastSchemeError(f"response is for a {nf}x{nc} model, client expects "
                                  f"{self.n_features}x{self.n_classes}")
        if ns != n_samples:
            raise FastSchemeError(f"response holds {ns} samples, caller expected {n_samples}")
        if code == _LAYOUT_ROW:
            expect_cts = ns * len(self._groups)
            c0_count = ns * 2 * nc
        elif code == _LAYOUT_COLUMN:
            expect_cts = -(-ns // n) * nc
            c0_count = nc * 2 * ns
        else:
            raise FastSchemeError(f"unknown layout code {code}")
        if n_cts != expect_cts:
            raise FastSchemeError(f"response has {n_cts} ciphertexts, expected {expect_cts}")
        body = response[_RESPONSE_HEADER.size:]
        c1_count = n_cts * 2 * n
        if len(body) != 4 * (c1_count + c0_count):
            raise FastSchemeError(f"response body has {len(body)} bytes, expected {4 * (c1_count + c0_count)}")
        c1 = np.frombuffer(body, dtype="<u4", count=c1_count).astype(np.uint64).reshape(n_cts, 2, n)
        c0 = np.frombuffer(body, dtype="<u4", offset=4 * c1_count).astype(np.uint64)
        if np.any(c1 >= ctx.q_col):
            raise FastSchemeError("response coefficient out of range")
        # phase at position k = c0'_k + (c1' * s)_k ; c1' is in the NTT domain (tiled order).
        cs = ctx.intt((fk.to_seal_order(c1) * self._s_ntt) % ctx.q_col)
        if code == _LAYOUT_ROW:
            c0 = c0.reshape(ns, 2, nc)
            cs = cs.reshape(ns, len(self._groups), 2, n)
            d = np.empty((ns, 2, nc), dtype=np.uint64)
            for g, classes in enumerate(self._groups):
                pos = [(c - classes[0]) * self.n_features + self.n_features - 1 for c in classes]
                d[:, :, classes[0]:classes[-1] + 1] = cs[:, g][:, :, pos]
            if np.any(c0 >= ctx.q_col):
                raise FastSchemeError("response coefficient out of range")
            values = ctx.crt_centered(_mod_add(c0, d, ctx.q_col))  # (ns, C)
        else:
            c0 = c0.reshape(nc, 2, ns)
            if np.any(c0 >= ctx.q_col):
                raise FastSchemeError("response coefficient out of range")
            n_blocks = -(-ns // n)
            cs = cs.reshape(n_blocks, nc, 2, n).transpose(1, 2, 0, 3).reshape(nc, 2, n_blocks * n)[:, :, :ns]
            values = ctx.crt_centered(_mod_add(c0, cs, ctx.q_col)).T  # (ns, C)
        scale = float(ctx.t) / (float(ctx.q) * self.params.x_scale * self.params.w_scale)
        return values * scale


# ------------------------------------------------------------------- server side


class FastPublicKey:
    """A validated client public key, prepared for making encryptions of zero.

    Holds the key's two polynomials modulo the data primes (SEAL's key is at the key
    level ``q1*q2*p``; its residues mod ``q1, q2`` are an RLWE public key modulo ``q``) in
    tiled NTT order with Shoup companions, plus a table for single coefficients of
    ``pk0 * u``.  Each output ciphertext gets a fresh encryption of zero, made on the
    request path by :func:`fastkernels.encrypt_zero` (no pool, nothing ever reused).
    """

    def __init__(self, ctx: _Context, pk_ntt: np.ndarray, key_id: bytes):
        self.params = ctx.params
        self._ctx = ctx
        self._key_id = key_id
        self.key_id = key_id.hex()
        tables = ctx.tables
        self._pk = fk.aligned(fk.from_seal_order(pk_ntt[:, :2, :]))  # (2 polys, 2 primes, N) u64, tiled
        self._pkp = fk.aligned(np.stack([[fk.shoup(self._pk[p, j], q) for j, q in enumerate(ctx.primes)]
                                         for p in range(2)]))
        pk0 = np.empty((2, ctx.n), dtype=np.uint64)
        for j, q in enumerate(ctx.primes):
            fk.ntt_inverse(self._pk[0, j].copy(), pk0[j], q, tables.big[j], tables.tail[j], tables.n_inv[j])
        self._pk0_rev = fk.pk0_reversed(pk0, ctx.primes)

    def __repr__(self) -> str:
        return f"FastPublicKey(key_id={self.key_id!r})"

    @property
    def nbytes(self) -> int:
        """Memory this key holds, for sizing a key cache."""
        return self._pk.nbytes + self._pkp.nbytes + self._pk0_rev.nbytes

    def zeros(self, k: int) -> np.ndarray:
        """``k`` fresh encryptions of zero: array (k, 2, 2, N) of [z0 coefficients, z1 tiled NTT]."""
        ctx = self._ctx
        tables = ctx.tables
        n = ctx.n
        words = _noise.words(k * 2 * n).reshape(k, 2 * n)
        out = np.empty((k, 2, 2, n), dtype=np.uint64)
        work = _workspace(n)[0][:5]
        for i in range(k):
            fk.encrypt_zero(words[i], ctx.primes_u64, self._pk, self._pkp, tables.big, tables.tail,
                            tables.n_inv, out[i, 1], out[i, 0], True, work)
        return out


class _NoiseStream(threading.local):
    """The server's randomness: AES-128 keyed from the OS CSPRNG, one key per thread (and per
    process: a forked worker re-keys), a fresh nonce per call, re-keyed every 2^32 calls."""

    pid = -1
    calls = 0

    def words(self, count: int) -> np.ndarray:
        """``count`` uniform 64-bit words (read-only)."""
        if self.pid != os.getpid() or self.calls >= 1 << 32:
            self.aes, self.calls, self.pid = AESGCM(os.urandom(16)), 0, os.getpid()
        parts = []
        for lo in range(0, max(count, 1), _NOISE_CALL_WORDS):  # one call at least: count may be 0
            self.calls += 1
            nonce = self.calls.to_bytes(12, "little")
            parts.append(_aes_words(self.aes, nonce, 2 * min(_NOISE_CALL_WORDS, count - lo)).view("<u8"))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)


_noise = _NoiseStream()


class _Workspaces(threading.local):
    """Each thread's kernel scratch memory (:func:`fastkernels.workspace`, by N) and reusable arrays."""

    def __init__(self) -> None:
        self.by_n: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.scratch: dict[tuple, np.ndarray] = {}


_workspaces = _Workspaces()


def _workspace(n: int) -> tuple[np.ndarray, np.ndarray]:
    work = _workspaces.by_n.get(n)
    if work is None:
        work = _workspaces.by_n[n] = fk.workspace(n)
    return work


def _scratch(name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """This thread's reusable array ``name`` of ``shape`` and ``dtype`` (aligned, contents
    undefined): one per thread, name and shape (a network's layers alternate shapes)."""
    key = (name, shape, np.dtype(dtype).str)
    buf = _workspaces.scratch.get(key)
    if buf is None:
        buf = _workspaces.scratch[key] = fk._aligned(shape, dtype)
    return buf


# Batch (column layout) requests this large split their classes over threads when the kernels
# hold no GIL (numba's; not the ahead-of-time build's, fk.RELEASES_GIL).  Below it (a second MLP
# layer, small models) one thread is faster than the hand-off.
_THREAD_MIN_WORK = 1 << 14  # features x classes x blocks
_MAX_THREADS = 4


class _Pool:
    """A thread pool for the batch kernels, made on first use, remade in a forked worker."""

    def __init__(self) -> None:
        self._pid, self._executor, self._lock = -1, None, threading.Lock()

    def executor(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._pid != os.getpid():
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    _MAX_THREADS - 1, thread_name_prefix="aideploy-fast")
                self._pid = os.getpid()
            return self._executor


_pool = _Pool()


def _in_threads(work: Callable[[int, int], None], n_classes: int, parallel: bool) -> None:
    """``work(lo, hi)`` over ``[0, n_classes)``: in one call, or (``parallel``) split into up
    to ``min(cores, 4)`` class ranges (multiples of the kernel's class block) run at once."""
    block = fk._CLASS_BLOCK
    parts = min(os.cpu_count() or 1, _MAX_THREADS, -(-n_classes // block)) if parallel and fk.RELEASES_GIL else 1
    if parts < 2:
        work(0, n_classes)
        return
    step = -(-n_classes // (parts * block)) * block
    bounds = [(lo, min(n_classes, lo + step)) for lo in range(0, n_classes, step)]
    futures = [_pool.executor().submit(work, lo, hi) for lo, hi in bounds[1:]]
    work(*bounds[0])
    for f in futures:
        f.result()


def _read_bundle_params(bundle: Any) -> tuple[FastParams, int]:
    if not isinstance(bundle, bytes):
        raise FastSchemeError("bundle must be bytes")
    if len(bundle) < _BUNDLE_HEADER.size:
        raise FastSchemeError(f"bundle too short ({len(bundle)} bytes)")
    magic, ver, _, plen = _BUNDLE_HEADER.unpack_from(bundle)
    if magic != _BUNDLE_MAGIC:
        raise FastSchemeError("not a fast-scheme public bundle (bad magic)")
    if ver != WIRE_VERSION:
        raise FastSchemeError(f"unsupported bundle version {ver} (expected {WIRE_VERSION})")
    if plen > 4096 or _BUNDLE_HEADER.size + plen > len(bundle):
        raise FastSchemeError("bundle parameter block is truncated or oversized")
    return FastParams.from_json(bundle[_BUNDLE_HEADER.size:_BUNDLE_HEADER.size + plen]), plen


def bundle_params(bundle: bytes) -> FastParams:
    """The parameters a client's public bundle was made for (validated, nothing else parsed)."""
    return _read_bundle_params(bytes(bundle))[0]


@dataclass(frozen=True)
class _ModelFit:
    """A model quantised for one parameter set, with its guarantees (see the module docstring)."""

    wh: np.ndarray  # int64 weights, round(W * s_w)
    bh: list[int]  # intercepts, round(b * S)
    groups: list[list[int]]  # row-layout class groups
    error_bound: float  # guaranteed max |logit error|
    flood_bits: int  # flooding noise is uniform in [-2^flood_bits, 2^flood_bits)
    margin_bits: float  # log2(flood / worst-case model-dependent noise)


def _fit_model(W: np.ndarray, b: np.ndarray, params: FastParams, n: int, t: int, q: int) -> _ModelFit:
    """Quantise ``(W, b)`` for ``params`` and check the error guarantee, or :class:`FastSchemeError`.

    ``n`` is N, ``t`` the plain modulus and ``q`` the data modulus. Pure arithmetic: it
    builds no SEAL objects, so :func:`choose_params` can try many parameter sets.
    """
    C, nf = W.shape
    sx, sw = params.x_scale, params.w_scale
    S = sx * sw
    wh = np.rint(W * sw).astype(np.int64)
    bh = [int(round(float(v) * S)) for v in b]
    dw = np.abs(wh - W * sw)
    groups = _row_geometry(nf, C, n)
    R = float(params.x_bound)
    l1_w = np.abs(W).sum(axis=1)
    l1_dw = dw.sum(axis=1)
    quant = R * l1_dw / sw + l1_w / (2 * sx) + l1_dw / (2 * S) + 1.0 / (2 * S)
    group_l1 = [int(np.abs(wh[cls]).sum()) for cls in groups]
    b_w = _FRESH_NOISE_BOUND * max(group_l1)  # row layout is the worst case
    to_output = float(t) / (float(q) * S)  # phase units -> output units
    budget = params.max_error - float(quant.max())
    pk_noise = _pk_noise_bound(n)
    fixed_noise = (b_w + pk_noise + 2) * to_output
    if budget - fixed_noise <= 0:
        raise FastSchemeError(
            f"model cannot be served within max_error={params.max_error:g}: quantisation error "
            f"bound {quant.max():.3g} + noise {fixed_noise:.3g}")
    flood = (budget - fixed_noise) * 0.9 / to_output
    flood_bits = int(math.floor(math.log2(flood)))
    if flood_bits < 1:
        raise FastSchemeError("no room for flooding noise within max_error")
    F = 1 << flood_bits
    noise_total = b_w + pk_noise + 2 + F
    # no wrap-around: (q/t)*|yh| + E < q/2  <=>  |yh| < t/2 - E*t/q
    yh_max = (R * sx + 0.5) * np.abs(wh).sum(axis=1) + np.abs(np.array(bh, dtype=np.float64))
    wrap_limit = t / 2.0 - noise_total * float(t) / float(q)
    if float(yh_max.max()) >= wrap_limit:
        worst = float((R * l1_w + np.abs(b)).max())
        raise FastSchemeError(
            f"logits can reach {worst:.4g} (x_bound*||w||_1 + |b|), beyond the representable {wrap_limit / S:.4g}")
    # Exactness of the float64 dot products (16-bit limbs times weights, summed).
    if max(group_l1) * (1 << 16) >= 1 << 53:
        raise FastSchemeError("weights too large for exact evaluation")
    return _ModelFit(wh, bh, groups, float(quant.max()) + noise_total * to_output, flood_bits,
                     math.log2(F / max(b_w, 1)))


def choose_params(coef: np.ndarray, intercept: np.ndarray | float, x_bound: float = 1.0,
                  max_error: float = 1e-3) -> FastParams:
    """Fixed-point scales that serve this model within ``max_error`` for inputs in ``[-x_bound, x_bound]``.

    The defaults when they fit (every model they served keeps its parameters); otherwise the
    plain modulus (46..54 bits), input and weight scales (10..30 bits) that fit with the
    largest flooding margin, i.e. the most model privacy. Limits: logits up to
    ``2^(53 - x_scale_bits - w_scale_bits) * x_bound`` and weights small enough for the error
    bound; a model outside every candidate raises :class:`FastSchemeError` with the default
    parameters' reason.
    """
    W = np.asarray(coef, dtype=np.float64)
    W = W.reshape(1, -1) if W.ndim == 1 else W
    b = np.broadcast_to(np.asarray(intercept, dtype=np.float64).reshape(-1), (W.shape[0],))
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise FastSchemeError("model contains NaN or infinity")
    base = FastParams(x_bound=x_bound, max_error=max_error)
    ctx = _context(base)
    if W.shape[1] > ctx.n:
        raise FastSchemeError(f"model has {W.shape[1]} features, the parameters support at most {ctx.n}")
    try:
        _fit_model(W, b, base, ctx.n, ctx.t, ctx.q)
        return base
    except FastSchemeError as exc:
        reason = exc
    candidates = (FastParams(plain_modulus_bits=t_bits, x_scale_bits=x_bits, w_scale_bits=w_bits,
                             x_bound=x_bound, max_error=max_error)
                  for t_bits in range(46, base.coeff_modulus_bits[0] + base.coeff_modulus_bits[1] - 9)
                  for x_bits in range(10, min(30, t_bits - 3) + 1)
                  for w_bits in range(10, 31) if x_bits + w_bits < t_bits)
    best, _ = widest_margin(
        candidates, lambda p: _fit_model(W, b, p, ctx.n, 1 << p.plain_modulus_bits, ctx.q).margin_bits)
    if best is None:
        raise FastSchemeError(f"{reason}; no fixed-point scales serve this model within max_error={max_error:g}")
    return best


def widest_margin(candidates: Iterable[FastParams],
                  margin: Callable[[FastParams], float]) -> tuple[FastParams | None, FastSchemeError | None]:
    """The candidate whose ``margin`` (flooding bits) is largest, the first of equals, and the last
    refusal; ``margin`` raises :class:`FastSchemeError` for a candidate that cannot serve."""
    best: tuple[float, FastParams] | None = None
    reason = None
    for params in candidates:
        try:
            bits = margin(params)
        except FastSchemeError as exc:
            reason = exc
            continue
        if best is None or bits > best[0]:
            best = (bits, params)
    return (best[1] if best is not None else None), reason


class FastServer:
    """Server half: precomputes the model once, then scores encrypted queries.

    ``coef`` is (n_classes, n_features) or 1-D (n_features,) for binary/regression;
    ``intercept`` an array of n_classes or a scalar.  The constructor quantises the
    model, builds the NTT-form weight plaintexts, checks the model against the
    parameters' error guarantee and sizes the flooding noise; a model that cannot be
    served within ``params.max_error`` raises :class:`FastSchemeError`.
    """

    def __init__(self, coef: np.ndarray, intercept: np.ndarray | float, params: FastParams | None = None):
        self.params = params if params is not None else FastParams()
        if not isinstance(self.params, FastParams):
            raise FastSchemeError("params must be a FastParams")
        ctx = self._ctx = _context(self.params)
        n, t = ctx.n, ctx.t
        try:
            W = np.asarray(coef, dtype=np.float64)
            b = np.asarray(intercept, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise FastSchemeError(f"model coefficients are not numeric: {exc}") from None
        if W.ndim == 1:
            W = W.reshape(1, -1)
        if W.ndim != 2 or W.shape[0] < 1 or W.shape[1] < 1:
            raise FastSchemeError(f"coef must be (n_classes, n_features) or (n_features,), got {W.shape}")
        C, nf = W.shape
        if nf > n:
            raise FastSchemeError(f"model has {nf} features, the parameters support at most {n}")
        if b.size not in (1, C):
            raise FastSchemeError(f"intercept must be a scalar or have {C} entries, got shape {b.shape}")
        b = np.broadcast_to(b.reshape(-1), (C,)).astype(np.float64)
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise FastSchemeError("model contains NaN or infinity")
        self._prepare(_fit_model(W, b, self.params, n, t, ctx.q))

    @classmethod
    def _from_fit(cls, params: FastParams, fit: "_ModelFit") -> "FastServer":
        """A server for weights that are already quantised and checked (``fit``), skipping the
        checks of the constructor: :mod:`fastmlp` builds one per layer from the worst case of
        that layer's per-query weights and scores each query with that query's
        :class:`_Weights` (never larger, so the fit's geometry and guarantees hold); their
        plaintexts are made on first use, so the worst case's never are."""
        self = cls.__new__(cls)
        self.params = params
        self._ctx = _context(params)
        self._prepare(fit, precompute=False)
        return self

    def _prepare(self, fit: "_ModelFit", precompute: bool = True) -> None:
        """The layouts' geometry and the model's :class:`_Weights` from ``fit``; with
        ``precompute`` its row-layout plaintexts now rather than on the first row query."""
        ctx = self._ctx
        wh, self._groups = fit.wh, fit.groups
        C, nf = wh.shape
        self.n_features, self.n_classes = nf, C
        self.error_bound, self._flood_bits, self.flood_margin_bits = fit.error_bound, fit.flood_bits, fit.margin_bits
        # ---- row layout: classes in groups of `per`; the logit of class c is coefficient
        # pos[c] of its group's product (see fastkernels.row_plaintexts)
        per = len(self._groups[0])
        classes = np.arange(C)
        self._group = classes // per
        self._pos = (classes % per) * nf + nf - 1
        self._rw_len = np.array([len(g) * nf for g in self._groups], dtype=np.int64)
        # ---- column layout (fastkernels.column_outputs): int32 weights times centred residues
        # (|x| <= 2^31); a partial sum over `fold` features cannot overflow int64
        w_max = int(np.abs(wh).max())
        if w_max >= 1 << 31:
            raise FastSchemeError("weights too large for exact batch evaluation")
        self._fold = min(nf, ((1 << 63) - 1) // (max(w_max, 1) << 31))
        self._weights = _Weights(ctx, wh, np.array(fit.bh, dtype=np.int64), per)
        if precompute:
            self._w_ntt = self._weights.row()[0]
        self._fingerprint = self.params.fingerprint()

    def __repr__(self) -> str:
        return (f"FastServer(n_features={self.n_features}, n_classes={self.n_classes}, "
                f"groups={len(self._groups)}, error_bound={self.error_bound:.2e}, "
                f"flood_margin_bits={self.flood_margin_bits:.1f})")

    def describe(self) -> dict[str, Any]:
        """Model-dependent guarantees: error bound, flood size and margin, layout."""
        return {
            "n_features": self.n_features, "n_classes": self.n_classes,
            "row_groups": [len(g) for g in self._groups],
            "error_bound": self.error_bound, "flood_bits": self._flood_bits,
            "flood_margin_bits": self.flood_margin_bits, "params": self.params.describe(),
        }

    # -- key loading
    def load_public(self, bundle: bytes) -> FastPublicKey:
        """Parse and validate a client's public bundle; the result may be cached."""
        bundle = bytes(bundle) if isinstance(bundle, (bytearray, memoryview)) else bundle
        params, plen = _read_bundle_params(bundle)
        if params != self.params:
            raise FastSchemeError(f"bundle parameters {params} do not match the server's {self.params}")
        ctx = self._ctx
        pk_raw = bundle[_BUNDLE_HEADER.size + plen:]
        if len(pk_raw) != 2 * 3 * ctx.n * 4:
            raise FastSchemeError(f"public key has {len(pk_raw)} bytes, expected {2 * 3 * ctx.n * 4}")
        pk = np.frombuffer(pk_raw, dtype="<u4").astype(np.uint64).reshape(2, 3, ctx.n)
        if np.any(pk >= np.array(ctx.key_primes, dtype=np.uint64).reshape(1, 3, 1)):
            raise FastSchemeError("public key coefficient out of range")
        try:
            public_key = ctx.ctx.from_public_str(ctx.ct_bytes(pk, ctx.key_parms_id, ntt=True))
        except Exception as exc:  # SEAL's loader validates; surface its verdict
            raise FastSchemeError(f"SEAL rejected the public key: {exc}") from None
        if list(public_key.parms_id()) != ctx.key_parms_id:
            raise FastSchemeError("public key is not at the key level of these parameters")
        return FastPublicKey(ctx, pk, _key_id(params, pk_raw))

    def warm_up(self) -> None:
        """Run every kernel of the request path once, so that no request compiles or loads one.

        Scores a zero query of each shape a client can send (row and column layout, seeded and
        unseeded: every argument type the kernels are dispatched on) under a throwaway key.
        The queries are made here, not encrypted: the server cannot tell, and encrypting would
        leave SEAL's memory pool holding a batch's worth of ciphertexts for the worker's life.
        """
        client = FastClient(self.n_features, self.n_classes, self.params)
        public = self.load_public(client.public_bundle())
        n, ns = self._ctx.n, 2
        for code in (_LAYOUT_ROW, _LAYOUT_COLUMN):
            n_cts = ns if code == _LAYOUT_ROW else -(-ns // n) * self.n_features
            for flags in (0, _FLAG_UNSEEDED):
                polys = 2 if flags & _FLAG_UNSEEDED else 1
                header = _QUERY_HEADER.pack(_QUERY_MAGIC, WIRE_VERSION, code, flags, self._fingerprint,
                                            public._key_id, self.n_features, ns, n_cts, bytes(_SEED_BYTES))
                self.predict(header + bytes(polys * n_cts * 2 * n * 4), public)

    # -- scoring
    def _parse_query(self, query: Any, public: FastPublicKey) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Validate a query; returns (layout, n_samples, c0 u32 (k, 2, N), a u32 (k, 2, N))."""
        if not isinstance(public, FastPublicKey):
            raise FastSchemeError("public must be the FastPublicKey returned by load_public()")
        if public._ctx is not self._ctx and public.params != self.params:
            raise FastSchemeError("public key was loaded for other parameters")
        if not isinstance(query, (bytes, bytearray, memoryview)):
            raise FastSchemeError("query must be bytes")
        ctx = self._ctx
        n = ctx.n
        if len(query) < _QUERY_HEADER.size:
            raise FastSchemeError(f"query too short ({len(query)} bytes)")
        magic, ver, code, flags, fp, kid, nf, ns, n_cts, seed = _QUERY_HEADER.unpack_from(query)
        if magic != _QUERY_MAGIC:
            raise FastSchemeError("not a fast-scheme query (bad magic)")
        if ver != WIRE_VERSION:
            raise FastSchemeError(f"unsupported query version {ver} (expected {WIRE_VERSION})")
        if flags & ~_FLAG_UNSEEDED:
            raise FastSchemeError("malformed query header (unknown flags)")
        if fp != self._fingerprint:
            raise FastSchemeError("query was made for different parameters")
        if kid != public._key_id:
            raise FastSchemeError(f"query was encrypted for key {kid.hex()}, not for key {public.key_id}")
        if nf != self.n_features:
            raise FastSchemeError(f"query has {nf} features, the model expects {self.n_features}")
        if ns < 1:
            raise FastSchemeError("query holds no samples")
        if code == _LAYOUT_ROW:
            expect = ns
        elif code == _LAYOUT_COLUMN:
            expect = -(-ns // n) * nf
        else:
            raise FastSchemeError(f"unknown layout code {code}")
        if n_cts != expect or n_cts > _MAX_CTS:
            raise FastSchemeError(f"query declares {n_cts} ciphertexts, expected {expect} (max {_MAX_CTS})")
        polys = 2 if flags & _FLAG_UNSEEDED else 1
        size = _QUERY_HEADER.size + polys * n_cts * 2 * n * 4
        if len(query) != size:
            raise FastSchemeError(f"query has {len(query)} bytes, expected {size} (truncated or padded)")
        body = np.frombuffer(query, dtype="<u4", offset=_QUERY_HEADER.size).reshape(polys, n_cts, 2, n)
        if not fk.residues_below(body, ctx.primes_u32):
            raise FastSchemeError("query coefficient out of range for these parameters")
        a = body[1] if polys == 2 else ctx.expand_a(seed, n_cts)
        return code, ns, body[0], a

    def _flood(self, shape: tuple[int, ...]) -> np.ndarray:
        """Fresh uniform integers in [-F, F) from the server's noise stream, as residues mod q_j.

        ``shape`` is ``(..., 2, X)``: axis -2 indexes the primes and holds the *same*
        integer reduced mod q1 and mod q2.
        """
        one = shape[:-2] + (1, shape[-1])
        count = int(np.prod(one))
        u = _noise.words(count).reshape(one)
        f = (u >> np.uint64(63 - self._flood_bits)).astype(np.int64) - (1 << self._flood_bits)
        return (f % self._ctx.q_i64.reshape(2, 1)).astype(np.uint64)

    def predict(self, query: bytes, public: FastPublicKey, weights: "_Weights | None" = None,
                prefix: Callable[[], bytes] | None = None) -> bytes:
        """Score an encrypted query with the model (or with ``weights``, another quantisation of
        the same shape whose values the server's fit bounds); returns the encrypted response,
        after ``prefix()`` if given (called once the query is accepted; saves a copy of the
        response for a caller that wraps it)."""
        code, ns, c0, a = self._parse_query(query, public)
        weights = self._weights if weights is None else weights
        n, C = self._ctx.n, self.n_classes
        n_cts = ns * len(self._groups) if code == _LAYOUT_ROW else -(-ns // n) * C
        header = (prefix() if prefix is not None else b"") + _RESPONSE_HEADER.pack(
            _RESPONSE_MAGIC, WIRE_VERSION, code, 0, public._key_id, self.n_features, C, ns, n_cts)
        out = bytearray(len(header) + 4 * (n_cts * 2 * n + ns * 2 * C))
        out[: len(header)] = header
        c1_out = np.frombuffer(out, dtype="<u4", count=n_cts * 2 * n, offset=len(header))
        c0_out = np.frombuffer(out, dtype="<u4", offset=len(header) + 4 * c1_out.size)
        if code == _LAYOUT_ROW:
            self._predict_row(ns, c0, a, public, weights, c1_out.reshape(ns, -1, 2, n), c0_out.reshape(ns, 2, C))
        else:
            self._predict_column(ns, c0, a, public, weights, c1_out.reshape(-1, C, 2, n), c0_out.reshape(C, 2, ns))
        return bytes(out)

    def _predict_row(self, ns: int, c0: np.ndarray, a: np.ndarray, public: FastPublicKey, weights: "_Weights",
                     c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        """One ciphertext per sample; output ciphertext (sample, group) = ct * W_g + Enc(0)."""
        ctx = self._ctx
        tables = ctx.tables
        n, n_groups = ctx.n, len(self._groups)
        w_ntt, w_ntt_p, rw = weights.row()
        words = _noise.words(ns * (n_groups * n + 2 * self.n_classes)).reshape(ns, -1)
        fk.row_outputs(c0, a, words, ctx.primes_u64, w_ntt, w_ntt_p, rw, self._rw_len,
                       self._pos, self._group, weights.bias, public._pk, public._pkp, public._pk0_rev,
                       tables.big, tables.tail, tables.n_inv, self._flood_bits, c1_out, c0_out, _workspace(n))

    def _predict_column(self, ns: int, c0: np.ndarray, a: np.ndarray, public: FastPublicKey, weights: "_Weights",
                        c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        """One ciphertext per feature and block of N samples; class c = sum_i wh_ci * ct_i + Enc(0)."""
        ctx = self._ctx
        n, nf, C = ctx.n, self.n_features, self.n_classes
        n_blocks = -(-ns // n)
        wh = weights.column()
        z = public.zeros(n_blocks * C).reshape(n_blocks, C, 2, 2, n)  # [..., 0, :, :] z0, [..., 1, :, :] z1
        c0_full = np.empty((C, 2, n_blocks * n), dtype=np.uint32)

        def classes(lo: int, hi: int) -> None:
            for blk in range(n_blocks):
                rows = slice(blk * nf, (blk + 1) * nf)
                fk.column_outputs(a[rows], wh[lo:hi], self._fold, ctx.primes_u64, z[blk, lo:hi, 1],
                                  c1_out[blk, lo:hi], n)
                # of c0' only the samples' coefficients are sent: a partial block computes those
                used = -(-min(n, ns - blk * n) // fk._COLS) * fk._COLS
                fk.column_outputs(c0[rows], wh[lo:hi], self._fold, ctx.primes_u64, z[blk, lo:hi, 0],
                                  c0_full[lo:hi, :, blk * n:(blk + 1) * n], used)

        _in_threads(classes, C, nf * C * n_blocks >= _THREAD_MIN_WORK)
        logits = c0_full[:, :, :ns].astype(np.int64)
        logits += weights.bias[:, :, None]
        logits += self._flood((C, 2, ns)).astype(np.int64)
        np.remainder(logits, ctx.q_i64.reshape(2, 1), out=c0_out, casting="unsafe")


class _Weights:
    """A quantised model (``wh`` (C, nf) int64, intercepts ``bh`` (C,) int64, ``|.| < 2^53``) in
    the forms the layouts score with: the bias as phases (:attr:`bias`, made at once), the
    column layout's int32 weights and the row layout's NTT-form plaintexts (made on first use).

    ``scratch``: weights for one request (:mod:`fastmlp` makes one of these per query and
    layer): the row plaintexts go to this thread's reusable buffers (fresh arrays of that size
    would page-fault on every request) and get no Shoup companions (the request's ``a`` gets
    them, fewer); such an object is valid until this thread makes the next one.
    """

    def __init__(self, ctx: _Context, wh: np.ndarray, bh: np.ndarray, per: int, scratch: bool = False):
        # C order whatever the model's: the kernels are compiled for one layout (fastkernels_aot)
        self._ctx, self.wh, self._per, self._scratch = ctx, np.ascontiguousarray(wh), per, scratch
        self.bias = np.empty((wh.shape[0], 2), dtype=np.int64)
        fk.bias_phases(bh, np.uint64(ctx.q), ctx.params.plain_modulus_bits, ctx.primes_u64, self.bias)
        self._row: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(w_ntt, w_ntt_p, rw)`` of :func:`fastkernels.row_plaintexts`."""
        if self._row is None:
            ctx = self._ctx
            n, (C, nf) = ctx.n, self.wh.shape
            groups = -(-C // self._per)
            # weights used once: fastkernels.row_outputs takes companions of `a` instead
            shapes = ((groups, 2, n), (0 if self._scratch else groups, 2, n), (groups, self._per * nf))
            dtypes = (np.uint64, np.uint64, np.int64)
            if self._scratch:
                w_ntt, w_ntt_p, rw = (_scratch(f"row{i}", s, d) for i, (s, d) in enumerate(zip(shapes, dtypes)))
            else:
                w_ntt, w_ntt_p, rw = (fk._aligned(s, d) for s, d in zip(shapes, dtypes))
            tables = ctx.tables
            fk.row_plaintexts(self.wh, self._per, ctx.primes_u64, tables.big, tables.tail, w_ntt, w_ntt_p, rw,
                              _workspace(n)[0][0].view(np.uint64))
            self._row = (w_ntt, w_ntt_p, rw)
        return self._row

    def column(self) -> np.ndarray:
        """The weights as int32 (the server's fit checked they fit)."""
        return self.wh.astype(np.int32)
