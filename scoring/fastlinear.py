"""``encryption=fast``: linear scoring under RLWE (BFV) with coefficient encoding.

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

What SEAL does here, and what the compiled kernels do
-----------------------------------------------------
``seal-python`` (4.4.0) checks the parameters against the 128-bit HE standard
(``sec_level_type.tc128``), makes the NTT-friendly primes (``CoeffModulus.Create``) and the
client's secret key (uniform ternary, SEAL's CSPRNG).  Everything else is ours, in numpy and
the numba kernels of :mod:`fastkernels` (compiled ahead of time for the workers): NTTs with
SEAL's roots and order, the client's encryption, the server's re-randomisation and products.
SEAL itself would only encrypt at its data level, which drops the third prime (its "special
prime" for key switching, which this scheme never does); we use all three.

Parameters (defaults, :class:`FastParams`): chosen by the service, never by a client
-----------------------------------------------------------------------------------
* ``N = 4096``; ciphertext modulus ``q = q1*q2*q3``, three ~32-bit NTT primes from
  ``CoeffModulus.Create(4096, [32, 32, 32])``, ``log2 q ~ 96 <= 109`` (HE Security Standard,
  128-bit classical, ternary secret, error sigma 3.2; SEAL's own ``tc128`` check passes).
  Primes below 2^32 make every modular product exact in uint64 and every residue 4 bytes.
* Nominal plain modulus ``t = 2^46``: the scale is the *integer* ``Delta = floor(q/t) ~ 2^50``,
  so a message ``m`` is encoded exactly as ``Delta*m`` (no rounding term that would depend on
  the model after the product).
* Scales: ``s_x = 2^18 / x_bound`` (inputs ``|x_i| <= x_bound``), ``s_w = 2^20``,
  ``S = s_x*s_w``; largest representable logit ``t/(2S) = 128 * x_bound``.
* The service fixes them once, at deploy, from its model, its input ranges and its configured
  ``max_error`` (:func:`choose_params`), and publishes them (``GET /score``).  A bundle or a
  query for any other parameters is refused: a client cannot pick a smaller flood.

Per-feature input ranges
------------------------
A deployed service gives each input feature its own range ``[lo_i, hi_i]`` (:mod:`.inputranges`,
chosen from the model and its data): the client encrypts ``z_i = (x_i - c_i)/h_i`` in
``[-1, 1]`` (``c``, ``h`` the centre and half-width) and the service scores ``W' = W diag(h)``,
``b' = b + W c``, which gives the same logits, so ``x_bound = 1`` and each feature's fixed-point
scale is in effect ``2^x_scale_bits / h_i``.  Everything below is about the model the server
holds, ``(W', b')`` on ``|z| <= 1``: the quantisation error, the noise bounds (``W_g`` is built
from ``W'``) and the flood are computed from it, so the correctness and privacy derivations hold
as written with ``W`` read as ``W'``.  The ranges' digest is one of the parameters
(``input_ranges``): a key or query made for other ranges is refused, never answered wrongly.

Keys: the uniform half is derived, not sent
-------------------------------------------
The client's bundle is ``(params, key_seed, pk0)``.  The key's uniform polynomial is
``pk1 = XOF(SHA-256(domain || params fingerprint || key_seed))`` (AES-128-CTR keystream,
rejection-sampled into residues, interpreted in the NTT domain), as Kyber and FrodoKEM
derive their matrix ``A``: the server derives it itself, so no client can choose it.  The
client computes ``pk0 = -(pk1*s) + e`` (``s`` SEAL's ternary secret, ``e`` centered binomial).
The key id is ``SHA-256(domain || params || key_seed || pk0)[:16]``.  The server refuses a key
with the wrong size, a residue out of range, or a degenerate ``pk0`` (:func:`_degenerate`:
too few distinct residues in either domain, or too many small coefficients, which a real
key, pseudorandom mod q, has with probability below 2^-100).

Queries: ``a`` is always expanded from a seed
---------------------------------------------
A query carries ``c0`` and a 32-byte seed; ``a`` is expanded from it (:meth:`_Context.expand_a`,
AES-128-CTR under ``SHA-256(domain || seed)``, one stream per ciphertext).  The client
computes ``c0 = Delta*m + e - a*s`` with its own centered-binomial ``e``.  There is no
unseeded form: a client cannot choose ``a`` (the old ``a = 1`` gave ``c1' = W + z1``).

Correctness
-----------
The phase at a logit position is ``Delta*yh + E`` (mod q), ``yh = <xh, wh> + bh`` the exact
fixed-point logit (``bh = round(b*S)``), and the client reads ``y = centered(phase)/(Delta*S)``.
So ``|y - y_true| <= x_bound*||dw_c||_1/s_w + ||w_c||_1/(2 s_x) + ||dw_c||_1/(2S) + 1/(2S)
+ E/(Delta*S)``, ``dw = wh - s_w*w``.  With ``e_B = 21`` the largest value of SEAL's centered
binomial noise (42 coin flips: ``|e| <= 21``, variance 10.5) and ``s, u`` ternary,
``|E| <= 21*||W_g||_1`` (the client's noise times the group's weight polynomial)
``+ 42N + 21`` (the re-randomisation, :func:`_pk_noise_bound`) ``+ F`` (the flood).  No
wrap-around needs ``Delta*max|yh| + |E| < q/2``.  The server checks both for its model when it
is built (:func:`_fit_model`) and refuses a model it cannot serve within ``max_error``.

Model privacy: flooding to 2^-40 per query
-----------------------------------------
Each output ciphertext is ``(c0*W_g + z0 + Delta*b, a*W_g + z1)`` with a fresh public-key
encryption of zero ``z = (pk0*u + e0, pk1*u + e1)`` (``u`` uniform ternary, ``e0, e1``
centered binomial, all from an AES-CTR stream keyed by ``os.urandom``); the response holds
all of ``c1'`` but only the logit coefficients of ``c0'``, each plus a fresh flood ``f``
uniform on ``[-F, F)``, ``F = 2^k`` the largest power of two the error budget allows.

*Honest-but-curious client.*  Condition on all its randomness (``s``, the key's ``e``, the
query's ``e``).  Since ``pk0 = -(pk1*s) + e_key``, ``z0 = -s*z1 + (s*e1 + e_key*u + e0)``, so a
released coefficient is ``c0'_k = Delta*yh_c - (s*c1')_k + d_k + f_k`` with
``d_k = (e*W_g)_k + (s*e1 + e_key*u + e0)_k``.  Hybrid 1 drops ``d_k``: for fixed ``d``, the
statistical distance of ``U[-F, F) + d`` from ``U[-F, F)`` is ``|d|/(2F)``, so over the ``K``
released coefficients of a query ``SD <= Pr[bad] + K * max_good|d|/(2F)``.  Hybrid 2: then
``u, e1`` appear only in ``c1' = a*W_g + pk1*u + e1``, which RLWE (``pk1`` uniform, ``u``
ternary, ``e1`` sigma 3.24, N = 4096, log q <= 109) makes pseudorandom, and the simulator that
knows only ``yh`` outputs ``c1'`` uniform and ``c0'_k = Delta*yh_c - (s*c1')_k + f_k``.

The bound on ``d``: ``(e*W_g)_k = sum_i +-e_i w_i`` over all entries of ``W_g``, and each
``e_i = sum_{1..21} (b - b')`` (fair bits) has ``E exp(l*e_i) = cosh(l/2)^42 <= exp(10.5 l^2/2)``:
subgaussian with variance proxy 10.5, so ``Pr[|(e*W_g)_k| > tau*||W_g||_2] <= 2 exp(-tau^2/21)``.
A union bound over at most ``K_max = 2^32`` released coefficients (no query releases more)
with ``Pr[bad] <= 2^-41/L`` (``L`` rounds: 1 here, one per layer for :mod:`fastmlp`) gives
``tau = sqrt(21 * ln(2 * 2^32 * 2^41 * L))`` (~32.8 for L = 1) and, outside the bad event,
``|d_k| <= delta = tau*||W_g||_2 + 42N + 21``.  A query of ``n`` samples releases ``K = n*C``
coefficients, so ``SD <= 2^-41/L + n*C*delta/(2F)``, and ``n <= 2^-41/L * 2F/(C*delta)`` keeps
every round within ``2^-40/L`` and the query within 2^-40.  The server refuses larger queries
(``max_samples``, published as ``max_samples_per_query``); ``flood_margin_bits = log2(2F/delta)``
is ``-log2`` of the distance per released coefficient.

What that costs.  With ``q ~ 2^64`` (two 32-bit primes) the flood that fits ``max_error = 1e-3``
was ~2^46, 10-12 bits above the worst-case noise: 2^-11 per coefficient, 2^-5 for a 784-64-10
query.  2^-40 per query needs ``F`` about ``K * delta * 2^40``: ~2^70-2^78 for these models.
``q`` is what gives room (``F`` grows with ``Delta = q/t``, and ``t`` is fixed by the logits'
range), so the options were a larger N (N = 8192 allows log q <= 218, but doubles every
ciphertext and NTT), another sanitisation (a smoother flood composes as ``sqrt(K)`` rather
than ``K`` but gains nothing for the one-sample queries that dominate), or more primes at
N = 4096.  Three 32-bit primes (log q = 96 <= 109) make ciphertexts 1.5x and the server's
modular arithmetic 1.5x; with the scales searched for the widest margin (:func:`choose_params`)
they give, at ``max_error = 1e-3``, a flood of 2^77-2^78 and 51-54 bits of margin for the
digits and MNIST-shaped linear models (94-700 samples per query).  A network amplifies its
hidden layers' errors into the logits (:mod:`fastmlp`), so a 784-64-10 MLP at 1e-3 fits only
with four primes of 27-28 bits (log q = 109, the standard's limit at N = 4096; 2x the two-prime
arithmetic): :func:`choose_params` takes the cheapest of :data:`RINGS` that serves the model.
A worst-case bound on the client's noise, ``21*||W_g||_1`` instead of ``tau*||W_g||_2``, would
cost ~5 bits more (``||W_g||_1 ~ sqrt(G*n)*||W_g||_2`` for dense weights).

*Dishonest client.*  It may send any ``c0`` and ``pk0`` (``a`` and ``pk1`` come from the XOF).
A free ``pk0 = -(pk1*s) + d`` only changes the noise of its own answers (``d*u`` instead of
``e*u``).  Even knowing ``u``, it sees ``c1' = a*W_g + pk1*u + e1``: an RLWE sample for the
secret ``W_g`` with the fresh error ``e1``, pseudorandom to anyone who does not already know
``W_g`` (RLWE with a fixed unknown secret is as hard as with a uniform one: add ``a*r`` for a
uniform ``r``), so ``c1'`` gives no shortcut to ``W``; the old attack needed ``a = 1`` for it.
A crafted ``c0`` makes ``c0 + a*s`` any polynomial ``m'`` it likes, and a released coefficient
is then coefficient ``k`` of ``m'*W_g`` plus noise it does not control: one linear function of
the group's weights per released coefficient, as many per sample as the plain API gives (``C``).  Not defended: that function's input is unbounded and
its precision the client's choice (a ``c0`` with large coefficients is an input far beyond
its range, above the flood), and in the row layout a crafted ``m'`` can mix the ``G`` classes
of a group into one coefficient.  So a dishonest client learns per answer what the plain
API would give for one chosen input of unbounded range, at full precision.

The server never learns anything about ``x`` (RLWE under the client's key, 128-bit).

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
  products by :func:`fastkernels.column_outputs` (large requests split their classes over
  up to four threads).  Of ``c0'`` only the samples' coefficients are computed.  The cost is
  per block of N samples whatever their number.  The client picks the layout that moves
  fewer ciphertexts, query and response together, unless told otherwise.

Caps (each refusal a :class:`FastSchemeError`, a 400 from the service): samples per query
(``max_samples``, above), answer bytes (:data:`MAX_ANSWER_BYTES`, checked before anything
is allocated), key bytes (a bundle has exactly one size; :data:`MAX_KEY_BYTES` is what the
service lets its key fetcher download for this scheme), ciphertexts per query (``_MAX_CTS``).

Wire formats (little-endian, versioned; every field is validated)
-----------------------------------------------------------------
* bundle:   ``b"AIFB" ver u8, 3 reserved, u32 len, params JSON, key_seed[32], pk0 u32[3][N]``
  (``pk0`` in the coefficient domain)
* query:    ``b"AIFQ" ver u8, layout u8, reserved u16 (0), params fp[8], key id[16],
  n_features u32, n_samples u32, n_cts u32, seed[32], c0 u32[n_cts][3][N]``
* response: ``b"AIFR" ver u8, layout u8, u16 0, key id[16], n_features u32,
  n_classes u32, n_samples u32, n_cts u32, c1' u32[n_cts][3][N], c0' logits u32``
  (row: ``[n_samples][3][C]``, column: ``[C][3][n_samples]``).

NTT-domain polynomials (``a``, ``pk1``, ``c1'``) are in the tiled order of :mod:`fastkernels`
(SEAL's order as an (N/16, 16) matrix, transposed); coefficient-domain ones (``pk0``, ``c0``,
``c0'``) in natural order.
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

__all__ = ["FastSchemeError", "FastParams", "FastClient", "FastServer", "FastPublicKey", "MAX_ANSWER_BYTES",
           "MAX_KEY_BYTES", "SD_LOG2", "RINGS", "choose_params"]

# 2: the uniform polynomials are expanded with AES-128-CTR, not SHAKE-128.
# 3: NTT-domain polynomials travel in tiled order (fastkernels.to_seal_order).
# 4: each ciphertext's ``a`` has its own AES stream, rejected residues take spare words.
# 5: three data primes; pk1 derived from a key seed; seeded queries only; exact Delta encoding.
WIRE_VERSION = 5
_BUNDLE_MAGIC = b"AIFB"
_QUERY_MAGIC = b"AIFQ"
_RESPONSE_MAGIC = b"AIFR"
_LAYOUT_ROW = 1
_LAYOUT_COLUMN = 2
_LAYOUT_NAMES = {"row": _LAYOUT_ROW, "column": _LAYOUT_COLUMN}
_SEED_BYTES = 32
_KEY_ID_BYTES = 16
_FP_BYTES = 8
_DOMAIN_A = b"aideploy-fastlinear-a-v5"
_DOMAIN_PK1 = b"aideploy-fastlinear-pk1-v1"
_DOMAIN_KEY = b"aideploy-fastlinear-key-v2"
# query header: magic, ver, layout, reserved, params fp, key id, n_features, n_samples, n_cts, seed
_QUERY_HEADER = struct.Struct(f"<4sBBH{_FP_BYTES}s{_KEY_ID_BYTES}sIII{_SEED_BYTES}s")
# response header: magic, ver, layout, reserved, key id, n_features, n_classes, n_samples, n_cts
_RESPONSE_HEADER = struct.Struct(f"<4sBBH{_KEY_ID_BYTES}sIIII")
_BUNDLE_HEADER = struct.Struct("<4sB3sI")
# Requests larger than this many ciphertexts are refused before any allocation.
_MAX_CTS = 1 << 16
#: The largest answer the server makes (bytes): a query whose answer would be larger is refused
#: before anything is allocated (a row-layout answer is up to ~13x its query for a 784-64 layer).
MAX_ANSWER_BYTES = 64 << 20
#: The largest key blob the service downloads for this scheme (a bundle is ~49 KB at N = 4096).
MAX_KEY_BYTES = 256 << 10
# 64-bit noise words per AES call (cryptography's one-shot AEAD takes under 2^31 bytes).
_NOISE_CALL_WORDS = 1 << 27
# SEAL's noise (and ours): centered binomial of 42 fair bits, |e| <= 21, variance 10.5.
_NOISE_BOUND = 21
_NOISE_VARIANCE = 10.5
#: Model privacy target: log2 of the statistical distance per query (all its rounds) between an
#: honest-but-curious client's view and one made from the answers alone; half of it for the tail
#: bound on the client's noise, half for the flood.
SD_LOG2 = -40
# More coefficients than any query releases (the union bound of the tail bound runs over them).
_RELEASED_MAX = 1 << 32
#: The rings :func:`choose_params` considers, cheapest first: prime sizes at N = 4096, log2 q = 96
#: and 109 (the HE standard's 128-bit limit); the second costs a third more bytes and work and
#: gives 13 bits more flood, which networks whose errors the layers amplify need.
RINGS = ((32, 32, 32), (28, 27, 27, 27))


def _pk_noise_bound(n: int) -> int:
    """Bound on the phase of the server's encryption of zero under an honest key,
    ``e_key*u + e0 + e1*s``: |e_key|, |e0|, |e1| <= 21 (centered binomial), u and s ternary."""
    return 2 * _NOISE_BOUND * n + _NOISE_BOUND


def _tail_factor(rounds: int) -> float:
    """``tau``: outside probability ``2^-41/rounds`` no released coefficient of a query has
    ``|(e*W_g)_k| > tau*||W_g||_2`` (subgaussian tail, union over ``_RELEASED_MAX``; see above)."""
    return math.sqrt(2 * _NOISE_VARIANCE * math.log(2.0 * _RELEASED_MAX * 2.0 ** (-SD_LOG2 + 1) * rounds))


class FastSchemeError(ValueError):
    """Every user-facing failure of the fast scheme (bad input, bad bytes, bad model)."""


# --------------------------------------------------------------------------- params


@dataclass(frozen=True)
class FastParams:
    """Parameters of the fast scheme; the service chooses them, clients must use them.

    ``coeff_modulus_bits`` are the bit sizes of the three or four primes whose product is the
    ciphertext modulus ``q`` (each <= 32 bits so numpy arithmetic is exact; :data:`RINGS`).
    ``plain_modulus_bits`` sets the nominal ``t = 2^bits`` and the scale ``Delta = q // t``.
    Inputs are scaled by ``s_x = 2^x_scale_bits / x_bound`` and weights by
    ``s_w = 2^w_scale_bits``.  ``max_error`` is the absolute error per logit the
    server must be able to guarantee for its model, or it refuses to serve.
    ``input_ranges``: the digest of the per-feature input ranges (:mod:`.inputranges`) the
    model was folded with and the client maps its inputs by (to ``[-1, 1]``, so ``x_bound`` is
    1), or empty when the inputs are taken as they are; it binds keys and queries to them.
    """

    poly_modulus_degree: int = 4096
    coeff_modulus_bits: tuple[int, ...] = (32, 32, 32)
    plain_modulus_bits: int = 46
    x_scale_bits: int = 18
    w_scale_bits: int = 20
    x_bound: float = 1.0
    max_error: float = 1e-3
    input_ranges: str = ""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise FastSchemeError(f"invalid FastParams: {msg}")

        n = self.poly_modulus_degree
        need(isinstance(n, int) and not isinstance(n, bool), "poly_modulus_degree must be an int")
        need(n in (4096, 8192, 16384), "poly_modulus_degree must be 4096, 8192 or 16384")
        bits = self.coeff_modulus_bits
        need(isinstance(bits, tuple) and len(bits) in (3, 4), "coeff_modulus_bits must be a tuple of 3 or 4 ints")
        need(all(isinstance(b, int) and not isinstance(b, bool) and 20 <= b <= 32 for b in bits),
             "each coeff modulus must have 20..32 bits")
        for name in ("plain_modulus_bits", "x_scale_bits", "w_scale_bits"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool), f"{name} must be an int")
        need(8 <= self.plain_modulus_bits <= min(60, sum(bits) - 20),
             "plain_modulus_bits must be in [8, min(60, modulus bits - 20)]")
        need(1 <= self.x_scale_bits <= 30 and 1 <= self.w_scale_bits <= 30, "scale bits must be in [1, 30]")
        need(self.x_scale_bits + 2 < self.plain_modulus_bits, "x_scale_bits too large for plain_modulus_bits")
        for name in ("x_bound", "max_error"):
            v = getattr(self, name)
            need(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0,
                 f"{name} must be a positive finite number")
        ranges = self.input_ranges
        need(isinstance(ranges, str) and (ranges == "" or (len(ranges) == 32 and all(c in "0123456789abcdef"
                                                                                    for c in ranges))),
             "input_ranges must be empty or the 32 hex digits of InputRanges.digest()")
        need(not ranges or self.x_bound == 1, "x_bound must be 1 with input ranges (the inputs are mapped to [-1, 1])")

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
        poly = len(ctx.primes) * n * 4
        return {
            **json.loads(self.to_json()),
            "scheme": "BFV, coefficient encoding (Cheetah-style); SEAL parameters and keys",
            "security": f"128-bit classical (HE standard): N={n}, log2 q={ctx.log2_q:.1f}",
            "primes": list(ctx.primes),
            "log2_q": round(ctx.log2_q, 3),
            "delta": str(ctx.delta),
            "logit_bound": ctx.t / (2.0 * s),
            "max_features": n,
            "query_bytes_single": _QUERY_HEADER.size + poly,
            "ciphertext_bytes_per_output": poly,
            "bundle_bytes": _BUNDLE_HEADER.size + len(self.to_json()) + _SEED_BYTES + poly,
        }


# ------------------------------------------------------------------ ring context


def _minimal_root(n: int, q: int) -> int:
    """SEAL's NTT root for ``q``: the smallest primitive 2N-th root of unity (SEAL's
    ``try_minimal_primitive_root``), so that our transform is SEAL's and SEAL's secret key,
    stored in NTT form, is read as it is."""
    m = 2 * n
    if (q - 1) % m:
        raise FastSchemeError(f"{q} is not an NTT prime for N={n}")
    for x in range(2, q):
        g = pow(x, (q - 1) // m, q)
        if pow(g, n, q) == q - 1:
            break
    g2, current, best = g * g % q, g, g
    for _ in range(n):  # the primitive 2N-th roots are the odd powers of g
        current = current * g2 % q
        best = min(best, current)
    return best


class _Ring:
    """``R_q`` for one N and prime sizes: SEAL's checked context and primes, our NTT tables."""

    def __init__(self, n: int, bits: tuple[int, ...]):
        parms = seal.EncryptionParameters(seal.scheme_type.bfv)
        parms.set_poly_modulus_degree(n)
        try:
            moduli = seal.CoeffModulus.Create(n, list(bits))
        except Exception as exc:  # SEAL raises when no suitable prime exists
            raise FastSchemeError(f"SEAL cannot create the coefficient moduli: {exc}") from None
        parms.set_coeff_modulus(moduli)
        parms.set_plain_modulus(1 << 20)  # SEAL wants one; we encode with our own Delta (not SEAL's t)
        self.seal = seal.SEALContext(parms, True, seal.sec_level_type.tc128)
        if not self.seal.parameters_set():
            raise FastSchemeError(
                "SEAL rejects the parameters for 128-bit security: " + self.seal.parameter_error_message())
        self.n = n
        # SEAL's key level holds all three primes (and its secret key); we compute there
        self.primes = tuple(int(m.value()) for m in self.seal.key_context_data().parms().coeff_modulus())
        self._tables: fk.NttTables | None = None

    @property
    def tables(self) -> fk.NttTables:
        """Our NTT's twiddles, rooted where SEAL's are."""
        if self._tables is None:
            self._tables = fk.NttTables(self.n, self.primes, tuple(_minimal_root(self.n, q) for q in self.primes))
        return self._tables


@functools.lru_cache(maxsize=4)
def _ring(n: int, bits: tuple[int, ...]) -> _Ring:
    return _Ring(n, bits)


class _Context:
    """One parameter set: its ring (:class:`_Ring`), the scale ``Delta`` and the arithmetic
    around them (seed expansion, products with the secret, CRT)."""

    def __init__(self, params: FastParams):
        self.ring = _ring(params.poly_modulus_degree, params.coeff_modulus_bits)
        self.params = params
        self.n = n = self.ring.n
        self.primes = self.ring.primes
        self.t = 1 << params.plain_modulus_bits
        self.q = math.prod(self.primes)
        self.log2_q = math.log2(self.q)
        self.delta = self.q // self.t
        self.primes_u64 = np.array(self.primes, dtype=np.uint64)
        self.primes_u32 = self.primes_u64.astype(np.uint32)
        self.delta_mod = np.array([self.delta % p for p in self.primes], dtype=np.uint64)
        self.q_col = self.primes_u64.reshape(-1, 1)  # broadcast over (L, N)
        # Garner's CRT: x = sum_j k_j * prod_{i<j} q_i; factor[j][i] = prod_{m<i} q_m mod q_j
        self._garner = [([math.prod(self.primes[:i]) % q for i in range(j)],
                         pow(math.prod(self.primes[:j]), -1, q) if j else 1) for j, q in enumerate(self.primes)]
        # expand_uniform: candidates are masked to each prime's bit length; a ciphertext's stream
        # has L*N words and twice the expected spare words (+64), extended if they run out.
        self.prime_masks = np.array([(1 << q.bit_length()) - 1 for q in self.primes], dtype=np.uint32)
        reject = [1.0 - q / (int(m) + 1) for q, m in zip(self.primes, self.prime_masks)]
        self.stream_words = len(self.primes) * n + 2 * math.ceil(n * sum(r / (1.0 - r) for r in reject)) + 64

    @property
    def tables(self) -> fk.NttTables:
        return self.ring.tables

    # -- transforms (k polynomials, shape (k, L, N); NTT side in tiled order)
    def ntt(self, polys: np.ndarray) -> np.ndarray:
        tables, out = self.tables, np.empty(polys.shape, dtype=np.uint64)
        for i in range(polys.shape[0]):
            for j, q in enumerate(self.primes):
                fk.ntt_forward(polys[i, j].astype(np.uint64), out[i, j], q, tables.big[j], tables.tail[j])
        return out

    def intt(self, polys: np.ndarray) -> np.ndarray:
        tables, out = self.tables, np.empty(polys.shape, dtype=np.uint64)
        for i in range(polys.shape[0]):
            for j, q in enumerate(self.primes):
                fk.ntt_inverse(polys[i, j].astype(np.uint64), out[i, j], q, tables.big[j], tables.tail[j],
                               tables.n_inv[j])
        return out

    def times_secret(self, polys: np.ndarray, s: np.ndarray) -> np.ndarray:
        """``INTT(polys (.) s)``: NTT-domain polynomials (k, L, N) times ``s`` (L, N), in the
        coefficient domain (uint64)."""
        out = np.empty(polys.shape, dtype=np.uint64)
        for i in range(polys.shape[0]):
            out[i] = self.intt(((polys[i].astype(np.uint64) * s) % self.q_col)[None])[0]
        return out

    def residues(self, v: np.ndarray) -> np.ndarray:
        """Signed integers ``v`` (|v| < 2^63) as residues, shape ``v.shape[:-1] + (L, v.shape[-1])``."""
        v = np.asarray(v, dtype=np.int64)
        return np.stack([np.mod(v, q).astype(np.uint64) for q in self.primes], axis=-2)

    def noise(self, count: int) -> np.ndarray:
        """``count`` centered-binomial values (SEAL's distribution, |e| <= 21) from the CSPRNG."""
        e, scratch = np.empty(count, dtype=np.int64), np.empty(count, dtype=np.int64)
        words = _noise.words(count + fk.SPARE_WORDS)
        fk.sample_noise(words, scratch, e)
        return e

    def centered_fraction(self, r: np.ndarray) -> np.ndarray:
        """``x/q`` in ``[-1/2, 1/2)`` (float64) for the residues ``r[..., j, :]`` of ``x`` mod each prime."""
        ks = []
        for j, (q, (factors, inv)) in enumerate(zip(self.primes, self._garner)):
            qq = np.uint64(q)
            acc = np.zeros(r.shape[:-2] + r.shape[-1:], dtype=np.uint64)
            for k, f in zip(ks, factors):  # sum_{i<j} k_i * prod_{m<i} q_m, mod q_j
                acc = (acc + (k % qq) * np.uint64(f)) % qq
            ks.append(((r[..., j, :].astype(np.uint64) + qq - acc) % qq) * np.uint64(inv) % qq)
        frac = np.zeros(ks[0].shape, dtype=np.float64)
        for j, k in enumerate(ks):  # x/q = sum_j k_j / prod_{m>=j} q_m, largest term last
            frac += k.astype(np.float64) / float(math.prod(self.primes[j:]))
        frac -= np.floor(frac)
        return np.where(frac >= 0.5, frac - 1.0, frac)

    # -- uniform polynomials from seeds
    def _expand(self, key: bytes, n_polys: int) -> np.ndarray:
        out = np.empty((n_polys, len(self.primes), self.n), dtype=np.uint32)
        aes = AESGCM(key)
        for i in range(n_polys):
            nonce = i.to_bytes(12, "little")
            nwords = self.stream_words
            while not fk.expand_uniform(_aes_words(aes, nonce, nwords), self.primes_u32, self.prime_masks, out[i]):
                nwords *= 2
        return out

    def expand_a(self, seed: bytes, n_cts: int) -> np.ndarray:
        """Uniform ``a`` for ``n_cts`` ciphertexts, NTT domain (tiled order), shape (n_cts, L, N), uint32.

        Key ``K = SHA-256(domain || seed)[:16]``.  Ciphertext ``i`` reads its own AES-128-CTR
        keystream under ``K``, counter block ``nonce_i || 2, 3, ...`` with ``nonce_i`` = ``i`` as
        12 little-endian bytes (AES-GCM's keystream, see :func:`_aes_words`), as little-endian
        32-bit words, and turns it into residues by :func:`fastkernels.expand_uniform`'s rule
        (rejection sampling with spare words: exactly uniform given a PRF).  Any secure PRG
        would do; AES is what the hardware makes cheap, as in Kyber-90s.  A longer stream
        extends a shorter one, so the retry when spare words run out is deterministic.
        """
        return self._expand(hashlib.sha256(_DOMAIN_A + seed).digest()[:16], n_cts)

    def expand_pk1(self, key_seed: bytes) -> np.ndarray:
        """The key's uniform polynomial ``pk1`` (L, N) uint32, NTT domain (tiled order): the
        stream of :meth:`expand_a` under ``SHA-256(domain || params fingerprint || key_seed)``."""
        key = hashlib.sha256(_DOMAIN_PK1 + self.params.fingerprint() + key_seed).digest()[:16]
        return self._expand(key, 1)[0]


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


@functools.lru_cache(maxsize=64)
def _context(params: FastParams) -> _Context:
    return _Context(params)


@functools.lru_cache(maxsize=64)
def _fingerprint(params: FastParams) -> bytes:
    return hashlib.sha256(b"aideploy-fastlinear-params" + params.to_json()).digest()[:_FP_BYTES]


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


def _key_id(params: FastParams, key_seed: bytes, pk0_raw: bytes) -> bytes:
    return hashlib.sha256(_DOMAIN_KEY + params.to_json() + key_seed + pk0_raw).digest()[:_KEY_ID_BYTES]


def _degenerate(ctx: _Context, pk0: np.ndarray, pk0_ntt: np.ndarray) -> str | None:
    """Why ``pk0`` (coefficients, and tiled NTT) cannot be a real key's, or None.

    A real ``pk0 = -(pk1*s) + e`` is pseudorandom modulo each prime: its N residues are
    distinct but for ~N^2/2^33 collisions, and ~N/128 of them lie within q/256 of 0.
    """
    n = ctx.n
    for j, q in enumerate(ctx.primes):
        for domain, values in (("coefficient", pk0[j]), ("NTT", pk0_ntt[j])):
            distinct = np.unique(values).size
            if distinct < n - n // 16:
                return f"pk0 has {distinct} distinct residues of {n} modulo prime {j + 1} in the {domain} domain"
        small = int(np.count_nonzero(np.minimum(pk0[j], q - pk0[j]) < q >> 8))
        if small > n // 16:
            return f"{small} of pk0's {n} coefficients modulo prime {j + 1} are within q/256 of 0"
    return None


# -------------------------------------------------------------------------- client


class FastClient:
    """Client half: owns the secret key, encrypts inputs, decrypts logits.

    ``key_id`` is a hash of the public key material and the parameters (safe to log).
    """

    def __init__(self, n_features: int, n_classes: int, params: FastParams | None = None):
        self.params = params if params is not None else FastParams()
        if not isinstance(self.params, FastParams):
            raise FastSchemeError("params must be a FastParams")
        ctx = self._ctx = _context(self.params)
        n = ctx.n
        for name, v in (("n_features", n_features), ("n_classes", n_classes)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise FastSchemeError(f"{name} must be a positive int, got {v!r}")
        if n_features > n:
            raise FastSchemeError(f"n_features={n_features} exceeds the supported maximum {n} (= N)")
        self.n_features = int(n_features)
        self.n_classes = int(n_classes)
        # SEAL's secret key is uniform ternary, stored in NTT form (SEAL's order) at its key level
        sk_raw = seal.KeyGenerator(ctx.ring.seal).secret_key().to_string()
        count = len(ctx.primes) * n
        s = np.frombuffer(sk_raw, dtype="<u8", count=count, offset=len(sk_raw) - 8 * count)
        self._s_ntt = fk.from_seal_order(s.reshape(-1, n))
        self._key_seed = os.urandom(_SEED_BYTES)
        pk1 = ctx.expand_pk1(self._key_seed)
        e = ctx.residues(ctx.noise(n))
        pk0 = (e + ctx.q_col - ctx.times_secret(pk1[None], self._s_ntt)[0]) % ctx.q_col  # -(pk1*s) + e
        self._pk0_raw = pk0.astype("<u4").tobytes()
        self._key_id = _key_id(self.params, self._key_seed, self._pk0_raw)
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
        """Everything the server needs (parameters, key seed, pk0), no secret material."""
        pj = self.params.to_json()
        return (_BUNDLE_HEADER.pack(_BUNDLE_MAGIC, WIRE_VERSION, b"\0\0\0", len(pj)) + pj + self._key_seed
                + self._pk0_raw)

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
        """``c0 = Delta*m + e - a*s`` (coefficient domain, (k, L, N)) for each signed message
        ``m`` (k, N), so that ``(c0, a)`` encrypts it with fresh noise ``e``."""
        ctx = self._ctx
        k, n = messages.shape
        c0 = ctx.residues(messages) * ctx.delta_mod.reshape(-1, 1) % ctx.q_col
        c0 += ctx.residues(ctx.noise(k * n).reshape(k, n))
        c0 += ctx.q_col - ctx.times_secret(a, self._s_ntt)
        return c0 % ctx.q_col

    def encrypt(self, X: np.ndarray, layout: str | None = None) -> bytes:
        """Encrypt ``X`` (n_samples, n_features) into one query.

        One sample uses the row layout (one seeded half-ciphertext); larger batches
        use whichever layout moves less, or ``layout='row'|'column'``.
        """
        X = self._check_input(X)
        n = self._ctx.n
        n_samples = X.shape[0]
        if layout is None:
            code = _choose_layout(n_samples, self.n_features, self.n_classes, n)
        elif layout in _LAYOUT_NAMES:
            code = _LAYOUT_NAMES[layout]
        else:
            raise FastSchemeError(f"layout must be 'row' or 'column', got {layout!r}")
        xh = np.rint(X * self.params.x_scale).astype(np.int64)
        if code == _LAYOUT_ROW:
            messages = np.zeros((n_samples, n), dtype=np.int64)
            messages[:, : self.n_features] = xh
        else:
            n_blocks = -(-n_samples // n)
            padded = np.zeros((n_blocks * n, self.n_features), dtype=np.int64)
            padded[:n_samples] = xh
            # block b, feature i -> coefficients are the samples of that block
            messages = padded.reshape(n_blocks, n, self.n_features).transpose(0, 2, 1).reshape(-1, n)
        if messages.shape[0] > _MAX_CTS:
            raise FastSchemeError(f"request would need {messages.shape[0]} ciphertexts (max {_MAX_CTS})")
        seed = os.urandom(_SEED_BYTES)
        c0 = self._encrypt_messages(messages, self._ctx.expand_a(seed, messages.shape[0]))
        header = _QUERY_HEADER.pack(_QUERY_MAGIC, WIRE_VERSION, code, 0, self.params.fingerprint(), self._key_id,
                                    self.n_features, n_samples, messages.shape[0], seed)
        return header + c0.astype("<u4").tobytes()

    # -- decryption
    def decrypt(self, response: bytes, n_samples: int) -> np.ndarray:
        """Decrypt a response into logits of shape (n_samples, n_classes)."""
        ctx = self._ctx
        n, n_primes = ctx.n, len(ctx.primes)
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
        elif code == _LAYOUT_COLUMN:
            expect_cts = -(-ns // n) * nc
        else:
            raise FastSchemeError(f"unknown layout code {code}")
        if n_cts != expect_cts:
            raise FastSchemeError(f"response has {n_cts} ciphertexts, expected {expect_cts}")
        body = response[_RESPONSE_HEADER.size:]
        c1_count, c0_count = n_cts * n_primes * n, ns * n_primes * nc
        if len(body) != 4 * (c1_count + c0_count):
            raise FastSchemeError(f"response body has {len(body)} bytes, expected {4 * (c1_count + c0_count)}")
        c1 = np.frombuffer(body, dtype="<u4", count=c1_count).reshape(n_cts, n_primes, n)
        c0 = np.frombuffer(body, dtype="<u4", offset=4 * c1_count).astype(np.uint64)
        if not fk.residues_below(c1, ctx.primes_u32):
            raise FastSchemeError("response coefficient out of range")
        # phase at position k = c0'_k + (c1' * s)_k ; c1' is in the NTT domain (tiled order).
        cs = ctx.times_secret(c1, self._s_ntt)
        if code == _LAYOUT_ROW:
            c0 = c0.reshape(ns, n_primes, nc)
            cs = cs.reshape(ns, len(self._groups), n_primes, n)
            d = np.empty((ns, n_primes, nc), dtype=np.uint64)
            for g, classes in enumerate(self._groups):
                pos = [(c - classes[0]) * self.n_features + self.n_features - 1 for c in classes]
                d[:, :, classes[0]:classes[-1] + 1] = cs[:, g][:, :, pos]
            if np.any(c0 >= ctx.q_col):
                raise FastSchemeError("response coefficient out of range")
            values = ctx.centered_fraction((c0 + d) % ctx.q_col)  # (ns, C)
        else:
            c0 = c0.reshape(nc, n_primes, ns)
            if np.any(c0 >= ctx.q_col):
                raise FastSchemeError("response coefficient out of range")
            n_blocks = -(-ns // n)
            cs = cs.reshape(n_blocks, nc, n_primes, n).transpose(1, 2, 0, 3).reshape(nc, n_primes, n_blocks * n)
            values = ctx.centered_fraction((c0 + cs[:, :, :ns]) % ctx.q_col).T  # (ns, C)
        return values * (float(ctx.q) / (float(ctx.delta) * self.params.x_scale * self.params.w_scale))


# ------------------------------------------------------------------- server side


class FastPublicKey:
    """A validated client public key, prepared for making encryptions of zero.

    Holds ``(pk0, pk1)`` in tiled NTT order with Shoup companions (``pk1`` re-derived from the
    key seed), plus a table for single coefficients of ``pk0 * u``.  Each output ciphertext
    gets a fresh encryption of zero, made on the request path by
    :func:`fastkernels.encrypt_zero` (no pool, nothing ever reused).
    """

    def __init__(self, ctx: _Context, pk0: np.ndarray, pk0_ntt: np.ndarray, pk1_ntt: np.ndarray, key_id: bytes):
        self.params = ctx.params
        self._ctx = ctx
        self._key_id = key_id
        self.key_id = key_id.hex()
        self._pk = fk.aligned(np.stack([pk0_ntt, pk1_ntt]).astype(np.uint64))  # (2 polys, L primes, N) tiled
        self._pkp = fk.aligned(np.stack([[fk.shoup(self._pk[p, j], q) for j, q in enumerate(ctx.primes)]
                                         for p in range(2)]))
        self._pk0_rev = fk.pk0_reversed(pk0, ctx.primes)

    def __repr__(self) -> str:
        return f"FastPublicKey(key_id={self.key_id!r})"

    @property
    def nbytes(self) -> int:
        """Memory this key holds, for sizing a key cache."""
        return self._pk.nbytes + self._pkp.nbytes + self._pk0_rev.nbytes

    def zeros(self, k: int) -> np.ndarray:
        """``k`` fresh encryptions of zero: array (k, 2, L, N) of [z0 coefficients, z1 tiled NTT]."""
        ctx = self._ctx
        tables = ctx.tables
        n, n_primes = ctx.n, len(ctx.primes)
        words = _noise.words(k * (2 * n + fk.SPARE_WORDS)).reshape(k, -1)
        out = np.empty((k, 2, n_primes, n), dtype=np.uint64)
        work = _workspace(n, n_primes)[0][:5]
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
    """Each thread's kernel scratch memory (:func:`fastkernels.workspace`, by N and primes) and reusable arrays."""

    def __init__(self) -> None:
        self.by_n: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self.scratch: dict[tuple, np.ndarray] = {}


_workspaces = _Workspaces()


def _workspace(n: int, n_primes: int) -> tuple[np.ndarray, np.ndarray]:
    work = _workspaces.by_n.get((n, n_primes))
    if work is None:
        work = _workspaces.by_n[(n, n_primes)] = fk.workspace(n, n_primes)
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
# hold no GIL (numba's and the C build's both release it, fk.RELEASES_GIL).  Below it (a second MLP
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


@dataclass(frozen=True)
class _ModelFit:
    """A model quantised for one parameter set, with its guarantees (see the module docstring)."""

    wh: np.ndarray  # int64 weights, round(W * s_w)
    bh: list[int]  # intercepts, round(b * S)
    groups: list[list[int]]  # row-layout class groups
    error_bound: float  # guaranteed max |logit error|
    flood_bits: int  # flooding noise is uniform in [-2^flood_bits, 2^flood_bits)
    margin_bits: float  # log2(2F / delta): -log2 of the statistical distance per released coefficient
    max_samples: int  # samples per query within the round's share of 2^-40


def _fit_model(W: np.ndarray, b: np.ndarray, params: FastParams, ctx: _Context, rounds: int = 1) -> _ModelFit:
    """Quantise ``(W, b)`` for ``params`` and check the error and privacy guarantees, or
    :class:`FastSchemeError`.  ``rounds``: the rounds of a query that share its 2^-40 (layers of
    an MLP).  Pure arithmetic on ``ctx``'s numbers: :func:`choose_params` tries many sets."""
    C, nf = W.shape
    n = ctx.n
    t, q = 1 << params.plain_modulus_bits, ctx.q
    delta = q // t
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
    whf = wh.astype(np.float64)
    group_l1 = [float(np.abs(whf[cls]).sum()) for cls in groups]
    group_l2 = [math.sqrt(float((whf[cls] ** 2).sum())) for cls in groups]
    client = _NOISE_BOUND * max(group_l1)  # worst case of the client's noise times the weights (row layout)
    server = _pk_noise_bound(n)
    to_output = 1.0 / (float(delta) * S)  # phase units -> output units
    budget = params.max_error - float(quant.max())
    fixed_noise = (client + server) * to_output
    if budget - fixed_noise <= 0:
        raise FastSchemeError(
            f"model cannot be served within max_error={params.max_error:g}: quantisation error "
            f"bound {quant.max():.3g} + noise {fixed_noise:.3g}")
    flood_bits = min(95, int(math.floor(math.log2((budget - fixed_noise) * 0.9 / to_output))))
    if flood_bits < 1:
        raise FastSchemeError("no room for flooding noise within max_error")
    F = 2.0 ** flood_bits
    noise_total = client + server + F
    # no wrap-around: Delta*|yh| + E < q/2
    yh_max = (R * sx + 0.5) * np.abs(whf).sum(axis=1) + np.abs(np.array(bh, dtype=np.float64))
    wrap_limit = (q / 2.0 - noise_total) / float(delta)
    if float(yh_max.max()) >= wrap_limit:
        worst = float((R * l1_w + np.abs(b)).max())
        raise FastSchemeError(
            f"logits can reach {worst:.4g} (x_bound*||w||_1 + |b|), beyond the representable {wrap_limit / S:.4g}")
    # Exactness of the float64 dot products (16-bit limbs times weights, summed).
    if max(group_l1) * (1 << 16) >= 1 << 53:
        raise FastSchemeError("weights too large for exact evaluation")
    # model privacy (module docstring): per released coefficient |d| <= spread outside 2^-41/rounds
    spread = _tail_factor(rounds) * max(group_l2) + server
    margin = math.log2(2 * F / spread)
    max_samples = min(int(2.0 ** (SD_LOG2 - 1 + margin) / (rounds * C)), _RELEASED_MAX // C)
    if max_samples < 1:
        raise FastSchemeError(
            f"the flooding that fits max_error={params.max_error:g} leaves a statistical distance of "
            f"2^{-margin + math.log2(C * rounds) :.1f} per sample, above 2^{SD_LOG2 - 1}")
    return _ModelFit(wh, bh, groups, float(quant.max()) + noise_total * to_output, flood_bits, margin, max_samples)


def choose_params(coef: np.ndarray, intercept: np.ndarray | float, x_bound: float = 1.0,
                  max_error: float = 1e-3) -> FastParams:
    """The parameters a service serves this model with, for inputs in ``[-x_bound, x_bound]``
    within ``max_error``; deterministic, so a client with the model computes the same ones.

    The cheapest ring of :data:`RINGS` that serves the model, and in it, of the input and
    weight scales (8..30 bits each) with the smallest plain modulus that holds the model's
    logits (:func:`scale_candidates`), the one with the largest flooding margin: the most
    samples per query within 2^-40 (finer scales leave less of ``max_error`` to the flood,
    coarser ones more to quantisation).
    """
    W = np.asarray(coef, dtype=np.float64)
    W = W.reshape(1, -1) if W.ndim == 1 else W
    b = np.broadcast_to(np.asarray(intercept, dtype=np.float64).reshape(-1), (W.shape[0],))
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise FastSchemeError("model contains NaN or infinity")
    top = float((np.abs(W).sum(axis=1) * x_bound + np.abs(b)).max())
    reason = None
    for ring in RINGS:
        ctx = _context(FastParams(coeff_modulus_bits=ring, x_bound=x_bound, max_error=max_error))
        if W.shape[1] > ctx.n:
            raise FastSchemeError(f"model has {W.shape[1]} features, the parameters support at most {ctx.n}")
        best, reason = widest_margin(scale_candidates(top, x_bound, max_error, ring=ring),
                                     lambda p: _fit_model(W, b, p, ctx).margin_bits)
        if best is not None:
            return best
    raise FastSchemeError(f"no fixed-point scales serve this model within max_error={max_error:g}: {reason}")


def scale_candidates(top: float, x_bound: float, max_error: float, bits: Iterable[int] = range(8, 31),
                     ring: tuple[int, ...] = RINGS[0]) -> Iterable[FastParams]:
    """For every input and weight scale in ``bits``, the two smallest plain moduli whose range
    ``t/(2S)`` holds logits up to ``top`` (the smallest that fits is the best: the scale
    ``Delta = q/t``, and with it the flood, is largest), in the ring of primes ``ring``."""
    bits = list(bits)
    for x_bits in bits:
        for w_bits in bits:
            scale = 2.0 ** (x_bits + w_bits) / x_bound
            t_min = max(x_bits + 3, math.ceil(math.log2(2.0 * top * scale + 4.0)))
            for t_bits in (t_min, t_min + 1):
                if t_bits <= min(60, sum(ring) - 20):
                    yield FastParams(coeff_modulus_bits=ring, plain_modulus_bits=t_bits, x_scale_bits=x_bits,
                                     w_scale_bits=w_bits, x_bound=x_bound, max_error=max_error)


def widest_margin(candidates: Iterable[FastParams],
                  margin: Callable[[FastParams], float]) -> tuple[FastParams | None, FastSchemeError | None]:
    """The candidate whose ``margin`` (flooding bits, or samples per query) is largest, the first
    of equals, and the last refusal; ``margin`` raises :class:`FastSchemeError` for a candidate
    that cannot serve."""
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
        n = ctx.n
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
        self._prepare(_fit_model(W, b, self.params, ctx))

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
        self._flood = fk.flood_constants(fit.flood_bits, ctx.primes_u64)
        self.max_samples = fit.max_samples
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
        """Model-dependent guarantees: error bound, flood size and margin, caps, layout."""
        return {
            "n_features": self.n_features, "n_classes": self.n_classes,
            "row_groups": [len(g) for g in self._groups],
            "error_bound": self.error_bound, "flood_bits": self._flood_bits,
            "flood_margin_bits": self.flood_margin_bits, "max_samples_per_query": self.max_samples,
            "params": self.params.describe(),
        }

    # -- key loading
    def load_public(self, bundle: bytes) -> FastPublicKey:
        """Parse and validate a client's public bundle; the result may be cached."""
        bundle = bytes(bundle) if isinstance(bundle, (bytearray, memoryview)) else bundle
        params, plen = _read_bundle_params(bundle)
        if params != self.params:
            raise FastSchemeError(f"the key was made for other parameters ({_difference(params, self.params)}); "
                                  "a client must use the parameters the service publishes (GET /score)")
        ctx = self._ctx
        n, n_primes = ctx.n, len(ctx.primes)
        body = bundle[_BUNDLE_HEADER.size + plen:]
        expect = _SEED_BYTES + n_primes * n * 4
        if len(body) != expect:
            raise FastSchemeError(f"public key has {len(body)} bytes, expected {expect}")
        key_seed = body[:_SEED_BYTES]
        pk0 = np.frombuffer(body, dtype="<u4", offset=_SEED_BYTES).reshape(n_primes, n)
        if not fk.residues_below(pk0[None], ctx.primes_u32):
            raise FastSchemeError("public key coefficient out of range")
        pk0_ntt = ctx.ntt(pk0[None])[0]
        why = _degenerate(ctx, pk0, pk0_ntt)
        if why:
            raise FastSchemeError(f"public key is degenerate: {why} (a real key's are pseudorandom)")
        return FastPublicKey(ctx, pk0.astype(np.uint64), pk0_ntt, ctx.expand_pk1(key_seed),
                             _key_id(params, key_seed, body[_SEED_BYTES:]))

    def warm_up(self) -> None:
        """Run every kernel of the request path once, so that no request compiles or loads one.

        Scores a zero query of each shape a client can send (row and column layout: every
        argument type the kernels are dispatched on) under a throwaway key.  The queries are
        made here, not encrypted: the server cannot tell.
        """
        client = FastClient(self.n_features, self.n_classes, self.params)
        public = self.load_public(client.public_bundle())
        n, n_primes, ns = self._ctx.n, len(self._ctx.primes), min(2, self.max_samples)
        for code in (_LAYOUT_ROW, _LAYOUT_COLUMN):
            n_cts = ns if code == _LAYOUT_ROW else -(-ns // n) * self.n_features
            header = _QUERY_HEADER.pack(_QUERY_MAGIC, WIRE_VERSION, code, 0, self._fingerprint,
                                        public._key_id, self.n_features, ns, n_cts, bytes(_SEED_BYTES))
            self.predict(header + bytes(n_cts * n_primes * n * 4), public)

    # -- scoring
    def _parse_query(self, query: Any, public: FastPublicKey) -> tuple[int, int, np.ndarray, np.ndarray]:
        """Validate a query; returns (layout, n_samples, c0 u32 (k, L, N), a u32 (k, L, N))."""
        if not isinstance(public, FastPublicKey):
            raise FastSchemeError("public must be the FastPublicKey returned by load_public()")
        if public._ctx is not self._ctx and public.params != self.params:
            raise FastSchemeError("public key was loaded for other parameters")
        if not isinstance(query, (bytes, bytearray, memoryview)):
            raise FastSchemeError("query must be bytes")
        ctx = self._ctx
        n, n_primes = ctx.n, len(ctx.primes)
        if len(query) < _QUERY_HEADER.size:
            raise FastSchemeError(f"query too short ({len(query)} bytes)")
        magic, ver, code, flags, fp, kid, nf, ns, n_cts, seed = _QUERY_HEADER.unpack_from(query)
        if magic != _QUERY_MAGIC:
            raise FastSchemeError("not a fast-scheme query (bad magic)")
        if ver != WIRE_VERSION:
            raise FastSchemeError(f"unsupported query version {ver} (expected {WIRE_VERSION})")
        if flags:
            raise FastSchemeError(f"query flags {flags:#x} refused: unseeded queries (a client-chosen a) are not "
                                  "accepted; a is always expanded from the query's seed")
        if fp != self._fingerprint:
            raise FastSchemeError("query was made for different parameters")
        if kid != public._key_id:
            raise FastSchemeError(f"query was encrypted for key {kid.hex()}, not for key {public.key_id}")
        if nf != self.n_features:
            raise FastSchemeError(f"query has {nf} features, the model expects {self.n_features}")
        if ns < 1:
            raise FastSchemeError("query holds no samples")
        if code == _LAYOUT_ROW:
            expect, answer_cts = ns, ns * len(self._groups)
        elif code == _LAYOUT_COLUMN:
            expect, answer_cts = -(-ns // n) * nf, -(-ns // n) * self.n_classes
        else:
            raise FastSchemeError(f"unknown layout code {code}")
        if n_cts != expect or n_cts > _MAX_CTS:
            raise FastSchemeError(f"query declares {n_cts} ciphertexts, expected {expect} (max {_MAX_CTS})")
        if ns > self.max_samples:
            raise FastSchemeError(f"a query of {ns} samples is refused: this service takes at most {self.max_samples} "
                                  "per query (max_samples_per_query: what its flooding covers within a "
                                  f"statistical distance of 2^{SD_LOG2} per query)")
        answer = _RESPONSE_HEADER.size + 4 * n_primes * (answer_cts * n + ns * self.n_classes)
        if answer > MAX_ANSWER_BYTES:
            raise FastSchemeError(f"the answer to this query would be {answer} bytes, over this service's limit of "
                                  f"{MAX_ANSWER_BYTES} (MAX_ANSWER_BYTES); send fewer samples per query")
        size = _QUERY_HEADER.size + n_cts * n_primes * n * 4
        if len(query) != size:
            raise FastSchemeError(f"query has {len(query)} bytes, expected {size} (truncated or padded)")
        c0 = np.frombuffer(query, dtype="<u4", offset=_QUERY_HEADER.size).reshape(n_cts, n_primes, n)
        if not fk.residues_below(c0, ctx.primes_u32):
            raise FastSchemeError("query coefficient out of range for these parameters")
        return code, ns, c0, ctx.expand_a(seed, n_cts)

    def predict(self, query: bytes, public: FastPublicKey, weights: "_Weights | None" = None,
                prefix: Callable[[], bytes] | None = None) -> bytes:
        """Score an encrypted query with the model (or with ``weights``, another quantisation of
        the same shape whose values the server's fit bounds); returns the encrypted response,
        after ``prefix()`` if given (called once the query is accepted; saves a copy of the
        response for a caller that wraps it)."""
        code, ns, c0, a = self._parse_query(query, public)
        weights = self._weights if weights is None else weights
        n, n_primes, C = self._ctx.n, len(self._ctx.primes), self.n_classes
        n_cts = ns * len(self._groups) if code == _LAYOUT_ROW else -(-ns // n) * C
        header = (prefix() if prefix is not None else b"") + _RESPONSE_HEADER.pack(
            _RESPONSE_MAGIC, WIRE_VERSION, code, 0, public._key_id, self.n_features, C, ns, n_cts)
        out = bytearray(len(header) + 4 * n_primes * (n_cts * n + ns * C))
        out[: len(header)] = header
        c1_out = np.frombuffer(out, dtype="<u4", count=n_cts * n_primes * n, offset=len(header))
        c0_out = np.frombuffer(out, dtype="<u4", offset=len(header) + 4 * c1_out.size)
        if code == _LAYOUT_ROW:
            self._predict_row(ns, c0, a, public, weights, c1_out.reshape(ns, -1, n_primes, n),
                              c0_out.reshape(ns, n_primes, C))
        else:
            self._predict_column(ns, c0, a, public, weights, c1_out.reshape(-1, C, n_primes, n),
                                 c0_out.reshape(C, n_primes, ns))
        return bytes(out)

    def _predict_row(self, ns: int, c0: np.ndarray, a: np.ndarray, public: FastPublicKey, weights: "_Weights",
                     c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        """One ciphertext per sample; output ciphertext (sample, group) = ct * W_g + Enc(0)."""
        ctx = self._ctx
        tables = ctx.tables
        n, n_groups = ctx.n, len(self._groups)
        w_ntt, w_ntt_p, rw = weights.row()
        words = _noise.words(ns * (n_groups * (n + fk.SPARE_WORDS) + 3 * self.n_classes)).reshape(ns, -1)
        fk.row_outputs(c0, a, words, ctx.primes_u64, w_ntt, w_ntt_p, rw, self._rw_len,
                       self._pos, self._group, weights.bias, public._pk, public._pkp, public._pk0_rev,
                       tables.big, tables.tail, tables.n_inv, self._flood_bits, self._flood, c1_out, c0_out,
                       _workspace(n, len(ctx.primes)))

    def _predict_column(self, ns: int, c0: np.ndarray, a: np.ndarray, public: FastPublicKey, weights: "_Weights",
                        c1_out: np.ndarray, c0_out: np.ndarray) -> None:
        """One ciphertext per feature and block of N samples; class c = sum_i wh_ci * ct_i + Enc(0)."""
        ctx = self._ctx
        n, n_primes, nf, C = ctx.n, len(ctx.primes), self.n_features, self.n_classes
        n_blocks = -(-ns // n)
        wh = weights.column()
        z = public.zeros(n_blocks * C).reshape(n_blocks, C, 2, n_primes, n)  # [..., 0, :, :] z0, [..., 1, :, :] z1
        c0_full = np.empty((C, n_primes, n_blocks * n), dtype=np.uint32)

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
        flood = np.empty((n_primes, C * ns), dtype=np.int64)
        fk.flood_residues(_noise.words(2 * C * ns).reshape(-1, 2), self._flood_bits, self._flood, ctx.primes_u64,
                          flood)
        logits = c0_full[:, :, :ns].astype(np.int64)
        logits += weights.bias[:, :, None]
        logits += flood.reshape(n_primes, C, ns).transpose(1, 0, 2)
        np.remainder(logits, ctx.primes_u64.astype(np.int64).reshape(-1, 1), out=c0_out, casting="unsafe")


def _difference(got: FastParams, want: FastParams) -> str:
    """The fields in which two parameter sets differ, as ``name=got (service: want)``."""
    return ", ".join(f"{f.name}={getattr(got, f.name)!r} (service: {getattr(want, f.name)!r})"
                     for f in fields(FastParams) if getattr(got, f.name) != getattr(want, f.name))


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
        self.bias = np.empty((wh.shape[0], len(ctx.primes)), dtype=np.int64)
        fk.bias_phases(bh, ctx.delta_mod, ctx.primes_u64, self.bias)
        self._row: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    def row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(w_ntt, w_ntt_p, rw)`` of :func:`fastkernels.row_plaintexts`."""
        if self._row is None:
            ctx = self._ctx
            n, (C, nf) = ctx.n, self.wh.shape
            groups = -(-C // self._per)
            # weights used once: fastkernels.row_outputs takes companions of `a` instead
            n_primes = len(ctx.primes)
            shapes = ((groups, n_primes, n), (0 if self._scratch else groups, n_primes, n), (groups, self._per * nf))
            dtypes = (np.uint64, np.uint64, np.int64)
            if self._scratch:
                w_ntt, w_ntt_p, rw = (_scratch(f"row{i}", s, d) for i, (s, d) in enumerate(zip(shapes, dtypes)))
            else:
                w_ntt, w_ntt_p, rw = (fk._aligned(s, d) for s, d in zip(shapes, dtypes))
            tables = ctx.tables
            fk.row_plaintexts(self.wh, self._per, ctx.primes_u64, tables.big, tables.tail, w_ntt, w_ntt_p, rw,
                              _workspace(n, len(ctx.primes))[0][0].view(np.uint64))
            self._row = (w_ntt, w_ntt_p, rw)
        return self._row

    def column(self) -> np.ndarray:
        """The weights as int32 (the server's fit checked they fit)."""
        return self.wh.astype(np.int32)
