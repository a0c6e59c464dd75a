"""``encryption=fast`` for ReLU MLPs: interactive rounds over :mod:`fastlinear`'s linear layer.

Protocol (one round per layer; a network with L layers takes L round trips)
---------------------------------------------------------------------------
Round 1: the client sends ``Enc(x)``, an ordinary :mod:`fastlinear` query.  In round ``r``
the server evaluates layer ``r`` with fastlinear's coefficient-encoded product (no rotations,
no Galois keys), with that query's secrets folded into the layer's weights and bias:

* a hidden layer's output units are permuted (``pi_r``) and each unit ``k`` is multiplied by
  ``R * u_k / H_k``: ``H_k`` is a *public, guaranteed* bound on ``|h_k|`` (interval arithmetic
  from ``|x| <= x_bound = R``), ``u_k`` a fresh secret factor, log-uniform in
  ``[2^-spread, 1]``.  So the client decrypts ``z = R * u * h[pi] / H[pi]`` with ``|z| <= R``:
  ReLU commutes with the permutation and the positive factors, and ``z`` is again a valid
  input for the same fixed-point scale, which is why one parameter set serves every round;
* the output is re-randomised (fresh public-key encryption of zero) and flooded exactly as the
  linear scheme's (:meth:`FastServer.predict`, the same code);
* the next layer's weights get the inverse folded in: column ``k`` of ``W_{r+1}`` becomes
  ``W_{r+1}[:, pi_r[k]] * H[pi_r[k]] / (R * u_k)``.  The last layer is not permuted or
  scaled: its answer is ``logits / D``, ``D`` a public power of two at least the logits'
  guaranteed bound (so every layer's output lies in ``[-R, R]`` and one pair of fixed-point
  scales fits all of them); ``D`` travels in the final answer and the client multiplies back.

The client decrypts, applies the activation (ReLU or identity), clips to ``[-R, R]`` (the true
value lies there, so clipping only removes error), re-quantises with the same ``s_x`` and
re-encrypts under its key.  Batches work as in fastlinear (row or column layout per round; one
permutation and one set of factors per query, shared by its samples).

Stateless server, round tokens
------------------------------
The per-query secret is a 32-byte seed (``os.urandom``); the permutation and factors of layer
``l`` are AES-CTR keystream under ``SHA-256(domain, seed, l)``.  After each non-final round the
server seals ``(next round, n_samples, expiry, key id, seed, query id)`` with ChaCha20-Poly1305
under a key derived from a per-deployment secret, with the parameters' and the model's
fingerprints as associated data, and sends it with the answer; the client returns it with the
next round.  Any worker holding the secret can serve any round.  Refused (``RoundError``, a
:class:`FastSchemeError`, so the service answers 400): a token that does not authenticate
(tampered, other deployment, other model), an expired one, one for another key, a round number
other than the token's, a token on round 1 or none after it, a ciphertext whose shape differs
from the layer's (features) or from the token's sample count.  Replay of a token is refused by
the spent ``(query id, round)`` pairs of ``spent`` (:mod:`.limits`), kept until the token expires:
the service gives every worker and replica one store, so a token is answered once by all of them.

Fixed-point scales and error bounds (``plan``)
----------------------------------------------
All rounds share one :class:`FastParams` (one SEAL key): inputs scaled by ``s_x = 2^x / R``,
weights by ``s_w = 2^w``.  A deployed service folds its per-feature input ranges into the
first layer (:mod:`.inputranges`; ``encrypted.fast_mlp_plan``): round 1 carries each feature
mapped to ``[-1, 1]`` by its own range (``R = 1``), so each raw feature has its own first-layer
scale, and everything below is about the folded network.  The bound ``H`` makes every hidden value fit ``[-R, R]``, hence
no wrap-around, for every query.  For each layer the server fits (``fastlinear._fit_model``:
quantisation, client noise times weights, the public-key re-randomisation, flooding, wrap) the
*worst-case* per-query weights (``u = 1`` on the outputs, ``u = 2^-spread`` on the inputs):
every per-query weight is at most that in absolute value and all those bounds are monotone,
so the guarantee holds for every query.  Errors propagate linearly: an error ``e`` in ``z_r``
(ReLU is 1-Lipschitz, clipping does not increase it) moves layer ``r+1``'s outputs by at most
``||W'_{r+1}||_{inf} * e`` (max row L1 norm, worst case), which is ``<= 2^spread`` for a hidden
layer.  The logit error budget ``max_error`` goes half to the last layer and half, split
evenly, to the hidden layers, each divided by its amplification to the logits; the flood of
each layer fills its budget.  Each round's flood keeps it within ``2^-40 / L`` of the round's
ideal output (fastlinear's derivation with ``rounds = L``), so a query, all its rounds, is within
2^-40; the samples per query that covers is the plan's ``max_samples``, which every round
enforces.  :func:`choose_params` takes the cheapest ring of ``fastlinear.RINGS`` whose flood
covers the service's ``max_samples_per_query`` (the amplification of the layers' errors makes
networks need the larger ring at ``max_error = 1e-3``), and in it the scales with the most
samples per query; ``MLPServer.error_bound`` is the guaranteed max logit error.  The price of the worst-case ``H`` is precision: typical hidden values use a few bits
of ``[-R, R]`` fewer than their bound, paid for with larger ``s_x, s_w`` and ``t``.

Privacy (what each party learns)
--------------------------------
The server learns nothing about ``x`` or the hidden values (BFV under SEAL's 128-bit
parameters, fresh ciphertexts every round).  The client learns, per query and hidden layer,
the permuted, scaled pre-activations ``R * u * h[pi] / H[pi]`` (plus the logits).  That
reveals which units are active and how many, their values up to a factor in
``[2^-spread, 1]`` relative to public bounds, and, by the sign pattern, the half-spaces of
the first layer: an adaptive client varying ``x`` can estimate the rows of ``W_1`` up to scale
(it sees ``<w_k, x> + b_k`` up to an unknown positive factor and an unknown permutation, and
can re-identify units across queries by their responses).  Fresh permutations and factors
per query slow this down; they do not prevent it, and a query's samples share them: one batch
query of ``n + 1`` samples gives ``W_1``'s rows exactly (``bench/mlp_attack.py`` measures
both).  The service's knobs (``limits.QueryBudget``): ``max_samples_per_query`` (default 1:
every sample gets its own secrets) refuses a larger round 1 with a 400, ``max_queries_per_key``
refuses round 1 with a 429 once a key has sent that many samples, counted for the whole
deployment (:mod:`.limits`).  Weight privacy of each round's
answer is fastlinear's (seeded queries, derived ``pk1``, flooding within ``2^-40 / L``, see its
docstring): beyond the round's permuted, scaled outputs, an honest-but-curious client learns
nothing but with probability 2^-40 per query; a dishonest one learns, per released value, one
linear function of that round's (secretly permuted and scaled) weights for an input it chooses,
of unbounded range and precision.  Not hidden: layer sizes, the
activation, ``H`` (derived from the model, sent nowhere but implied by the values' range).

Wire format (little-endian, versioned)
--------------------------------------
* round message (client -> server): ``b"AIMQ" ver u8, round u8, token_len u16, token,``
  then a fastlinear query for that layer.
* round answer (server -> client): ``b"AIMR" ver u8, round u8, final u8, 0 u8,
  out_scale f64, token_len u16, token,`` then a fastlinear response (``logits / out_scale``
  when ``final``; ``out_scale`` is 0 before).
* token: ``nonce[12] || ChaCha20-Poly1305(plaintext[88]) (+16 tag)``.
"""

from __future__ import annotations

import hashlib
import math
import os
import struct
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from . import fastkernels as fk
from . import fastlinear as fl
from .fastlinear import FastClient, FastParams, FastPublicKey, FastSchemeError, FastServer
from .limits import MemoryStore

__all__ = ["RoundError", "MLPClient", "MLPServer", "MLPPlan", "plan", "choose_params", "peek", "ACTIVATIONS"]

WIRE_VERSION = 1
ACTIVATIONS = ("relu", "identity")
_QUERY_MAGIC = b"AIMQ"
_ANSWER_MAGIC = b"AIMR"
_QUERY_HEADER = struct.Struct("<4sBBH")
_ANSWER_HEADER = struct.Struct("<4sBBBBdH")
# token plaintext: version, next round, reserved, n_samples, expiry, key id, seed, query id
_TOKEN = struct.Struct("<BBHId16s32s16s")
_TOKEN_VERSION = 1
_NONCE = 12
_TOKEN_BYTES = _NONCE + _TOKEN.size + 16
_DOMAIN_TOKEN_KEY = b"aideploy-fastmlp-token-key-v1"
_DOMAIN_TOKEN_AD = b"aideploy-fastmlp-token-v1"
_DOMAIN_LAYER = b"aideploy-fastmlp-layer-v1"
_MAX_LAYERS = 255


class RoundError(FastSchemeError):
    """A round message the server refuses: bad, expired, replayed or misplaced token, wrong shape."""


# ------------------------------------------------------------------------ planning


def _check_layers(layers: Sequence[tuple[np.ndarray, np.ndarray]], activation: str
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    if activation not in ACTIVATIONS:
        raise FastSchemeError(f"activation {activation!r} is not supported under encryption "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    out = []
    if not 1 <= len(layers) <= _MAX_LAYERS:
        raise FastSchemeError(f"a network needs 1..{_MAX_LAYERS} layers, got {len(layers)}")
    for i, (W, b) in enumerate(layers):
        W = np.asarray(W, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise FastSchemeError(f"layer {i + 1}: weights must be (n_out, n_in) and bias (n_out,)")
        if out and W.shape[1] != out[-1][0].shape[0]:
            raise FastSchemeError(f"layer {i + 1} takes {W.shape[1]} inputs, layer {i} gives {out[-1][0].shape[0]}")
        if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
            raise FastSchemeError("model contains NaN or infinity")
        out.append((W, b))
    return out


@dataclass(frozen=True)
class MLPPlan:
    """One network fitted to one parameter set: bounds, worst-case fits, error budget."""

    params: FastParams
    layers: list[tuple[np.ndarray, np.ndarray]]
    activation: str
    spread: float  # u is log-uniform in [2^-spread, 1]
    bounds: list[np.ndarray]  # H per hidden layer (guaranteed |h| bound)
    out_scale: float  # D: the last layer answers logits / D (|logits / D| <= R), D a power of two
    flood_bits: list[int]
    error_bounds: list[float]  # per layer, in that layer's output units
    amplification: list[float]  # per layer: worst-case gain of its output error to the logits
    error_bound: float  # guaranteed max logit error
    margin_bits: float  # smallest flooding margin over the layers
    max_samples: int  # samples per query within 2^-40 over all rounds

    @property
    def sizes(self) -> list[int]:
        return [self.layers[0][0].shape[1]] + [W.shape[0] for W, _ in self.layers]


def _bounds(layers: list[tuple[np.ndarray, np.ndarray]], R: float) -> list[np.ndarray]:
    """Guaranteed bounds on |h| of each hidden layer for |x| <= R (ReLU and identity: |act(h)| <= |h|)."""
    out = []
    hin = np.full(layers[0][0].shape[1], R)
    for W, b in layers[:-1]:
        H = np.abs(W) @ hin + np.abs(b)
        H = np.where(H > 0, H, 1.0)  # a dead unit is always 0: any positive normaliser will do
        out.append(H)
        hin = H
    return out


def _effective(W: np.ndarray, b: np.ndarray, l: int, L: int, H: list[np.ndarray], R: float,
               perm_in: np.ndarray | None, u_in: np.ndarray | None,
               perm_out: np.ndarray | None, u_out: np.ndarray | None, out_scale: float = 1.0
               ) -> tuple[np.ndarray, np.ndarray]:
    """Layer ``l``'s weights with the secrets folded in: inverse of the previous layer's on the
    inputs, its own (permutation, factors, normalisation) on the outputs of a hidden layer."""
    A = W
    if l > 0:
        A = W[:, perm_in] * (H[l - 1][perm_in] / (R * u_in))[None, :]
    if l == L - 1:
        return A / out_scale, b / out_scale
    scale = R * u_out / H[l][perm_out]
    return A[perm_out] * scale[:, None], b[perm_out] * scale


def _worst_case(layers: list[tuple[np.ndarray, np.ndarray]], R: float, spread: float
                ) -> tuple[list[np.ndarray], float, list[tuple[np.ndarray, np.ndarray]], list[float]]:
    """``(H, D, worst, amplification)``: the hidden bounds, the logits' public divisor, each
    layer's worst-case per-query weights (``u = 1`` on its outputs, ``u = 2^-spread`` on its
    inputs) and the worst-case gain of each layer's output error to the logits."""
    L = len(layers)
    H = _bounds(layers, R)
    u_min = 2.0 ** -spread
    # the logits are normalised too, by a public power of two D >= their guaranteed bound
    W, b = layers[-1]
    A_last = _effective(W, b, L - 1, L, H, R, np.arange(W.shape[1]), np.full(W.shape[1], u_min), None, None)
    top = float((np.abs(A_last[0]).sum(axis=1) * R + np.abs(A_last[1])).max())
    D = 2.0 ** math.ceil(math.log2(max(top / R, 2.0 ** -30)))
    worst = []
    for l, (W, b) in enumerate(layers):
        ident_in = np.arange(W.shape[1])
        ident_out = np.arange(W.shape[0])
        worst.append(_effective(W, b, l, L, H, R, ident_in, np.full(W.shape[1], u_min),
                                ident_out, np.ones(W.shape[0]), D))
    # gain of an error in layer l's outputs to the logits: product of later max row L1 norms
    amp = [D] * L
    for l in range(L - 2, -1, -1):
        amp[l] = amp[l + 1] * float(np.abs(worst[l + 1][0]).sum(axis=1).max())
    return H, D, worst, amp


def plan(layers: Sequence[tuple[np.ndarray, np.ndarray]], activation: str = "relu",
         params: FastParams | None = None, spread: float = 1.0) -> MLPPlan:
    """Fit a network to ``params`` (see the module docstring), or :class:`FastSchemeError`."""
    params = params if params is not None else FastParams()
    layers = _check_layers(layers, activation)
    if not (isinstance(spread, (int, float)) and 0 <= spread <= 8):
        raise FastSchemeError("spread must be in [0, 8] bits")
    ctx = fl._context(params)
    R, L = float(params.x_bound), len(layers)
    if max(W.shape[1] for W, _ in layers) > ctx.n:
        raise FastSchemeError(f"a layer has more than {ctx.n} inputs")
    H, D, worst, amp = _worst_case(layers, R, spread)
    M = float(params.max_error)
    budgets = [M / (2 * (L - 1) * amp[l]) for l in range(L - 1)] + [(M / 2 if L > 1 else M) / D]
    fits = []
    for l, (Wq, bq) in enumerate(worst):
        try:  # the query's 2^-40 is shared by its L rounds
            fits.append(fl._fit_model(Wq, bq, replace(params, max_error=budgets[l]), ctx, rounds=L))
        except FastSchemeError as exc:
            raise FastSchemeError(f"layer {l + 1} of {L}: {exc}") from None
    total = sum(f.error_bound * a for f, a in zip(fits, amp))
    return MLPPlan(params, layers, activation, float(spread), H, D, [f.flood_bits for f in fits],
                   [f.error_bound for f in fits], amp, total, min(f.margin_bits for f in fits),
                   min(f.max_samples for f in fits))


def choose_params(layers: Sequence[tuple[np.ndarray, np.ndarray]], activation: str = "relu",
                  x_bound: float = 1.0, max_error: float = 1e-2, spread: float = 1.0,
                  min_samples: int = 1) -> FastParams:
    """The parameter set that serves the network within ``max_error`` logit error: the cheapest
    ring of :data:`fastlinear.RINGS` whose flooding covers ``min_samples`` samples per query
    (else the ring that covers most), and in it the scales (and the smallest plain modulus
    that holds every layer's worst-case outputs, :func:`fastlinear.scale_candidates`) with the
    most samples per query; :class:`FastSchemeError` if none.  Deterministic: a client with
    the model (and the service's ``min_samples``) computes what the service serves."""
    layers = _check_layers(layers, activation)
    R = float(x_bound)
    _, _, worst, _ = _worst_case(layers, R, spread)
    top = max(float((np.abs(W).sum(axis=1) * R + np.abs(b)).max()) for W, b in worst)
    found: list[tuple[int, FastParams]] = []
    reason = None
    for ring in fl.RINGS:
        best, reason = fl.widest_margin(fl.scale_candidates(top, x_bound, max_error, range(10, 31, 2), ring),
                                        lambda p: plan(layers, activation, p, spread).max_samples)
        if best is not None:
            found.append((plan(layers, activation, best, spread).max_samples, best))
            if found[-1][0] >= min_samples:
                return best
    if not found:
        raise FastSchemeError(f"no parameters serve this network within max_error={max_error:g}: {reason}")
    return max(found, key=lambda f: f[0])[1]


# ------------------------------------------------------------------------ secrets


def _layer_secrets(seed: bytes, layer: int, width: int, spread: float) -> tuple[np.ndarray, np.ndarray]:
    """Permutation (unit k of the answer is original unit perm[k]) and factors u of one layer."""
    key = hashlib.sha256(_DOMAIN_LAYER + seed + layer.to_bytes(2, "little")).digest()[:16]
    words = fl._aes_words(AESGCM(key), bytes(12), 4 * width).view("<u8")
    perm = np.argsort(words[:width], kind="stable")
    uniform = (words[width:] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return perm, 2.0 ** (-spread * uniform)


class _TokenBox:
    """Seal and open round tokens (ChaCha20-Poly1305 under a key derived from the deployment secret)."""

    def __init__(self, secret: bytes, ad: bytes):
        if not isinstance(secret, (bytes, bytearray)) or len(secret) < 16:
            raise FastSchemeError("the token secret must be at least 16 bytes")
        self._aead = ChaCha20Poly1305(hashlib.sha256(_DOMAIN_TOKEN_KEY + bytes(secret)).digest())
        self._ad = _DOMAIN_TOKEN_AD + ad

    def seal(self, *fields: Any) -> bytes:
        nonce = os.urandom(_NONCE)
        return nonce + self._aead.encrypt(nonce, _TOKEN.pack(_TOKEN_VERSION, *fields), self._ad)

    def open(self, token: bytes) -> tuple:
        if len(token) != _TOKEN_BYTES:
            raise RoundError(f"round token has {len(token)} bytes, expected {_TOKEN_BYTES}")
        try:
            plain = self._aead.decrypt(token[:_NONCE], token[_NONCE:], self._ad)
        except InvalidTag:
            raise RoundError("round token does not authenticate (tampered, or made by another "
                             "deployment or model)") from None
        ver, *fields = _TOKEN.unpack(plain)
        if ver != _TOKEN_VERSION:
            raise RoundError(f"unsupported round token version {ver}")
        return tuple(fields)


# ------------------------------------------------------------------------ server


def peek(message: bytes) -> tuple[int, int] | None:
    """``(round, n_samples)`` of a round message, read without authenticating anything (the
    service's query budget counts round-1 samples before scoring); None if it is not one."""
    try:
        magic, ver, rnd, tlen = _QUERY_HEADER.unpack_from(message)
        if magic != _QUERY_MAGIC or ver != WIRE_VERSION:
            return None
        return rnd, int(fl._QUERY_HEADER.unpack_from(message, _QUERY_HEADER.size + tlen)[7])
    except struct.error:
        return None


class MLPServer:
    """Server half: scores one round of a query per call, keeping no state between rounds.

    ``layers`` is ``[(W, b), ...]`` with ``W`` (n_out, n_in); ``activation`` applies to every
    hidden layer.  ``secret`` is the per-deployment token secret (every replica must share it);
    ``spent`` the store of spent tokens (:mod:`.limits`; the deployment's, shared by every server
    that shares the secret; this server's own memory if None).  ``clock`` (seconds) is injectable
    for tests.
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], activation: str = "relu",
                 params: FastParams | None = None, secret: bytes | None = None, spread: float = 1.0,
                 token_ttl: float = 60.0, clock: Callable[[], float] = time.time, spent: Any = None):
        if params is None:
            params = choose_params(layers, activation, spread=spread)
        self.plan = plan(layers, activation, params, spread)
        self.params = params
        self.error_bound = self.plan.error_bound
        self.n_layers = len(self.plan.layers)
        self.sizes = self.plan.sizes
        self.max_samples = self.plan.max_samples  # every round refuses more (the flooding's 2^-40)
        if not (isinstance(token_ttl, (int, float)) and token_ttl > 0):
            raise FastSchemeError("token_ttl must be a positive number of seconds")
        self.token_ttl = float(token_ttl)
        self._clock = clock
        h = hashlib.sha256(b"aideploy-fastmlp-model" + params.fingerprint() + activation.encode()
                           + struct.pack("<d", self.plan.spread))
        for W, b in self.plan.layers:
            h.update(struct.pack("<II", *W.shape) + W.tobytes() + b.tobytes())
        self.model_fingerprint = h.digest()[:16]
        self._tokens = _TokenBox(secret if secret is not None else os.urandom(32),
                                 params.fingerprint() + self.model_fingerprint)
        self._ctx = fl._context(params)
        # per layer: a server fitted to the worst case of its per-query weights (geometry,
        # flooding, input validation); each query is scored with its own weights (_weights)
        self._servers = [self._worst_case_server(l) for l in range(self.n_layers)]
        self._W = [np.ascontiguousarray(W) for W, _ in self.plan.layers]
        self._outputs = np.arange(self.sizes[-1])
        self._no_map = np.empty(0, dtype=np.intp), np.empty(0)
        self._scales = float(params.x_bound), params.x_scale, params.w_scale
        self._spent = spent if spent is not None else MemoryStore()

    def describe(self) -> dict[str, Any]:
        return {"sizes": self.sizes, "activation": self.plan.activation, "error_bound": self.error_bound,
                "flood_bits": self.plan.flood_bits, "flood_margin_bits": self.plan.margin_bits,
                "max_samples_per_query": self.max_samples,
                "spread_bits": self.plan.spread, "token_ttl": self.token_ttl, "params": self.params.describe()}

    def load_public(self, bundle: bytes) -> FastPublicKey:
        return self._servers[0].load_public(bundle)

    def _worst_case_server(self, l: int) -> FastServer:
        """Layer ``l`` fitted as planned: ``u = 1`` on its outputs, ``u = 2^-spread`` on its inputs."""
        p = self.plan
        W, b = p.layers[l]
        n_out, n_in = W.shape
        Wq, bq = _effective(W, b, l, self.n_layers, p.bounds, float(self.params.x_bound),
                            np.arange(n_in), np.full(n_in, 2.0 ** -p.spread), np.arange(n_out), np.ones(n_out),
                            p.out_scale)
        sx, sw = self.params.x_scale, self.params.w_scale
        fit = fl._ModelFit(np.rint(Wq * sw).astype(np.int64), [int(round(float(v) * sx * sw)) for v in bq],
                           fl._row_geometry(n_in, n_out, self._ctx.n), p.error_bounds[l], p.flood_bits[l],
                           p.margin_bits, p.max_samples)
        return FastServer._from_fit(self.params, fit)

    def _weights(self, l: int, seed: bytes) -> "fl._Weights":
        """Layer ``l``'s weights for the query of ``seed``: what :func:`_effective` gives for its
        secrets, quantised by one kernel into this thread's buffers (valid for this round)."""
        p, L = self.plan, self.n_layers
        R, sx, sw = self._scales
        n_out, n_in = self._W[l].shape
        if l > 0:  # undo the previous layer's permutation and factors
            col_map, u_in = _layer_secrets(seed, l - 1, n_in, p.spread)
            col_scale = p.bounds[l - 1][col_map] / (R * u_in)
        else:  # the inputs as they are (scaled_weights' empty map)
            col_map, col_scale = self._no_map
        if l < L - 1:  # permute, scale by R * u / H
            row_map, u_out = _layer_secrets(seed, l, n_out, p.spread)
            row_scale = (R * sw) * u_out / p.bounds[l][row_map]
        else:
            row_map, row_scale = self._outputs, np.full(n_out, sw / p.out_scale)
        wh = fl._scratch("fastmlp-wh", (n_out, n_in), np.int64)
        fk.scaled_weights(self._W[l], row_map, row_scale, col_map, col_scale, wh)
        bh = np.rint(p.layers[l][1][row_map] * row_scale * sx).astype(np.int64)
        return fl._Weights(self._ctx, wh, bh, len(self._servers[l]._groups[0]), scratch=True)

    def _spend(self, query_id: bytes, rnd: int, expiry: float) -> None:
        """Refuse a token already used (by any server sharing ``spent``); remember it until it expires."""
        if not self._spent.first_use(query_id + bytes([rnd]), expiry):
            raise RoundError("round token was already used (replay)")

    def score(self, message: bytes, public: FastPublicKey) -> bytes:
        """Answer one round message with the next round's answer (or the logits)."""
        if not isinstance(message, (bytes, bytearray, memoryview)):
            raise RoundError("round message must be bytes")
        message = bytes(message)
        if len(message) < _QUERY_HEADER.size:
            raise RoundError("round message too short")
        magic, ver, rnd, tlen = _QUERY_HEADER.unpack_from(message)
        if magic != _QUERY_MAGIC:
            raise RoundError("not a fast MLP round message (bad magic)")
        if ver != WIRE_VERSION:
            raise RoundError(f"unsupported round message version {ver} (expected {WIRE_VERSION})")
        if not 1 <= rnd <= self.n_layers:
            raise RoundError(f"round {rnd} does not exist (this network has {self.n_layers} rounds)")
        if len(message) < _QUERY_HEADER.size + tlen:
            raise RoundError("round message truncated in its token")
        token = message[_QUERY_HEADER.size:_QUERY_HEADER.size + tlen]
        query = memoryview(message)[_QUERY_HEADER.size + tlen:]  # a batch's query is megabytes: no copy
        if len(query) < fl._QUERY_HEADER.size:
            raise RoundError("round message holds no query")
        n_samples = fl._QUERY_HEADER.unpack_from(query)[7]
        now = self._clock()
        if rnd == 1:
            if tlen:
                raise RoundError("round 1 starts a query and takes no token")
            seed, query_id = os.urandom(32), os.urandom(16)
        else:
            if not tlen:
                raise RoundError(f"round {rnd} needs the token of round {rnd - 1}'s answer")
            t_round, _, t_ns, expiry, kid, seed, query_id = self._tokens.open(token)
            if t_round != rnd:
                raise RoundError(f"round token is for round {t_round}, message says round {rnd} (out of order)")
            if now > expiry:
                raise RoundError("round token expired; start the query again")
            if kid != public._key_id:
                raise RoundError("round token was issued for another key")
            if n_samples != t_ns:
                raise RoundError(f"round {rnd} carries {n_samples} samples, the query started with {t_ns}")
            self._spend(query_id, rnd, expiry)
        l = rnd - 1
        final = rnd == self.n_layers

        def header() -> bytes:
            out_token = b"" if final else self._tokens.seal(rnd + 1, 0, n_samples, now + self.token_ttl,
                                                             public._key_id, seed, query_id)
            scale = self.plan.out_scale if final else 0.0
            return _ANSWER_HEADER.pack(_ANSWER_MAGIC, WIRE_VERSION, rnd, int(final), 0, scale,
                                       len(out_token)) + out_token

        try:  # validates the query (key, shape, size, ranges), then answers after header()
            return self._servers[l].predict(query, public, self._weights(l, seed), header)
        except FastSchemeError:
            if rnd > 1:  # a refused message does not spend the token: the client may resend
                self._spent.forget_use(query_id + bytes([rnd]), expiry)
            raise


# ------------------------------------------------------------------------ client


class MLPClient:
    """Client half: one SEAL key for every round; encrypts, and answers each round.

    ``sizes`` is ``[n_in, hidden..., n_out]`` (the server's ``sizes``).
    """

    def __init__(self, sizes: Sequence[int], activation: str = "relu", params: FastParams | None = None):
        if activation not in ACTIVATIONS:
            raise FastSchemeError(f"activation {activation!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise FastSchemeError("sizes must list the input width and at least one layer")
        self.sizes, self.activation = sizes, activation
        self._key = FastClient(sizes[0], sizes[-1], params)
        self.params = self._key.params
        self.key_id = self._key.key_id
        self._layers = [self._key._reshaped(sizes[i], sizes[i + 1]) for i in range(len(sizes) - 1)]

    def public_bundle(self) -> bytes:
        return self._key.public_bundle()

    def encrypt(self, X: np.ndarray, layout: str | None = None) -> bytes:
        """Round 1: the message that starts a query for ``X`` (n_samples, n_in)."""
        return _QUERY_HEADER.pack(_QUERY_MAGIC, WIRE_VERSION, 1, 0) + self._layers[0].encrypt(X, layout)

    def respond(self, answer: bytes, n_samples: int, layout: str | None = None
                ) -> tuple[bytes | None, np.ndarray | None]:
        """``(next round's message, None)``, or ``(None, logits)`` after the last round."""
        if not isinstance(answer, (bytes, bytearray, memoryview)):
            raise FastSchemeError("answer must be bytes")
        answer = bytes(answer)
        if len(answer) < _ANSWER_HEADER.size:
            raise FastSchemeError("answer too short")
        magic, ver, rnd, final, _, out_scale, tlen = _ANSWER_HEADER.unpack_from(answer)
        if magic != _ANSWER_MAGIC or ver != WIRE_VERSION:
            raise FastSchemeError("not a fast MLP answer (bad magic or version)")
        L = len(self._layers)
        if not 1 <= rnd <= L or bool(final) != (rnd == L):
            raise FastSchemeError(f"answer for round {rnd} (final={final}) does not fit a {L}-layer network")
        token = answer[_ANSWER_HEADER.size:_ANSWER_HEADER.size + tlen]
        values = self._layers[rnd - 1].decrypt(answer[_ANSWER_HEADER.size + tlen:], n_samples)
        if final:
            if not (math.isfinite(out_scale) and out_scale > 0):
                raise FastSchemeError("final answer carries no valid output scale")
            return None, values * out_scale
        R = float(self.params.x_bound)
        z = np.clip(np.maximum(values, 0.0) if self.activation == "relu" else values, -R, R)
        return (_QUERY_HEADER.pack(_QUERY_MAGIC, WIRE_VERSION, rnd + 1, len(token)) + token
                + self._layers[rnd].encrypt(z, layout)), None

    def predict(self, X: np.ndarray, send: Callable[[bytes], bytes], layout: str | None = None) -> np.ndarray:
        """Run every round through ``send`` (message -> answer); returns the logits."""
        X = np.asarray(X, dtype=np.float64)
        ns = 1 if X.ndim == 1 else X.shape[0]
        message: bytes | None = self.encrypt(X, layout)
        logits = None
        while message is not None:
            message, logits = self.respond(send(message), ns, layout)
        return logits
