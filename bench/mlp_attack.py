"""Leakage of ``encryption=fast``'s MLP rounds: an adaptive client with a valid key recovers W1.

    PYTHONPATH=... python bench/mlp_attack.py [--json] [--quick] [--seed N] [--model 64-32-10] [--real-single]

Per query the server permutes the first layer's hidden units and scales each by a fresh secret
positive factor (``scoring/fastmlp.py``), so after round 1 the client decrypts
``z = R * u * h[pi] / H[pi]`` with ``h = W1 x + b1`` *before* its ReLU, ``u`` log-uniform in
``[2^-spread, 1]`` and ``pi`` a fresh permutation.  The client never has to finish the query
(the server keeps no state), so one round-1 message is one oracle call.  Three attacks:

1. **batch** (one query): a query of ``m`` samples shares one permutation and one set of factors,
   so for each answer unit ``z_k = c_k (<w_k, x> + b_k)`` exactly: least squares on ``[X, 1]``
   gives ``(w_k, b_k)`` up to the positive factor ``c_k``.  Random probes in ``[-R, R]^n``;
   reported: the samples ``m`` at which each row reaches the cosine threshold.
2. **keys** (the per-key budget, ``max_queries_per_key`` = B samples): batches of ``B`` samples,
   each from a *new* client key (the real ``QueryBudget`` refuses a key's sample ``B + 1``), with
   ``A`` anchor samples shared by all batches.  A unit's answers to the anchors, as a vector, are
   fixed up to its factor, so units are matched across batches by the cosine of their anchor
   vectors and rescaled onto the first batch; then least squares as in 1.
3. **single** (one sample per query, no shared factors): count-bisection along lines through the
   box ``[-R/2, R/2]^n`` finds, for each unit, a point ``p`` on its hyperplane ``<w, x> + b = 0``
   (the number of positive answers is invariant to the permutation and the factors; two points
   are on one hyperplane iff points between them are too).  Near ``p`` that unit is the answer
   closest to zero whatever the permutation, so the probes ``p +- d e_i`` identify it (the
   smallest ``|z|``, ``2^(spread+1)`` times below the next, above the noise floor, opposite signs
   on the two sides, else ``d`` shrinks) and read ``sign(w_i)`` and ``|w_i|`` up to the factor
   ``u``.  Passes over all ``i`` repeat the probes with fresh factors; per coordinate the
   magnitudes are combined by the bounded support of ``u`` and of the noise (midpoint of the
   interval all probes allow; median if they disagree).  The noise floor is measured, and at
   least what the public parameters bound it by (:func:`public_floor`: the flood and the
   per-query rounding of the weights, which the finer scales of 2^-40 flooding make comparable).  A unit whose point is crowded (other
   units near zero there: small probes, more noise) moves along its estimated hyperplane.
   Reported per unit: queries until its row reaches the threshold (its probes plus an equal share
   of the line search); at most 4 passes (2 with ``--quick``).

The service with the default configuration (``max_error`` 1e-3, ``max_samples_per_query`` 1)
refuses attacks 1 and 2 (their queries hold many samples): they run against a service configured
for batches of ``n + 16`` samples (``max_error`` 1e-2, whose flooding covers them), and attack 3
against the default one.  Beside them: the queries a client that sees only the logits needs
(Carlini, Jagielski, Mironov, CRYPTO 2020), the yardstick for what the protocol adds.

Oracles: the real scheme in process (``MLPClient`` encrypts, ``MLPServer.score`` answers round 1,
the client decrypts with its own key; no HTTP) for attacks 1 and 2.  Attack 3 needs ~4*10^4
queries on 64 inputs and ~4*10^5 on 784, ~8 ms each on the real path, so by default it runs on a
simulation of exactly what the client decrypts (``--real-single`` for the real path): the server's
plan and a fresh seed give the query's permutation and factors, folded into the weights as the
server folds them, the fixed-point arithmetic is reproduced exactly, and the flood is drawn as
the server draws it (:class:`SimulatedOracle`).  The simulation is validated against the real
path in every run, on queries whose seed the bench reads back from the round token (it holds the
deployment secret): the difference is the flood alone.  Evaluation only (never used by the
attacks): cosines against the true rows, units matched to rows by the best assignment.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from aideploy_scoring import fastlinear as fl
from aideploy_scoring import fastmlp as fm
from aideploy_scoring.encrypted import QueryBudget
from aideploy_scoring.fastlinear import FastSchemeError
from aideploy_scoring.linearize import fold_mlp
from aideploy_scoring.service import RequestError

SECRET = b"mlp-attack-bench-secret-32bytes!"
MODELS = {"64-32-10": 32, "784-64-10": 64}  # name: hidden units
# Extraction from the logits alone (Carlini, Jagielski, Mironov, CRYPTO 2020): queries for a
# ReLU network of this many parameters.
LOGITS_ONLY = {4_000: 2 ** 18.5, 100_000: 2 ** 21.5}


def served(layers: list, act: str, max_error: float = 1e-3, samples: int = 1) -> fm.MLPServer:
    """The server a service with this configuration (``max_samples_per_query = samples``) runs."""
    return fm.MLPServer(layers, act, fm.choose_params(layers, act, max_error=max_error, min_samples=samples),
                        secret=SECRET)


# ------------------------------------------------------------------------ models and oracles


def digits_models() -> dict[str, tuple[list, str]]:
    """The bench's two networks: 64->32->10 on digits, 784->64->10 on digits upsampled to 28x28
    (as ``bench/mlp_bench.py``), first 1400 samples for training."""
    X, y = load_digits(return_X_y=True)
    X8 = X / 16.0
    X28 = np.kron(X8.reshape(-1, 8, 8), np.ones((4, 4)))[:, 2:30, 2:30].reshape(len(X), 784)
    out = {}
    for (name, hidden), Xs in zip(MODELS.items(), (X8, X28)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = MLPClassifier((hidden,), max_iter=60, random_state=0).fit(Xs[:1400], y[:1400])
        out[name] = fold_mlp(model)
    return out


class RealOracle:
    """Round 1 of the real scheme in process; returns the hidden values the client decrypts
    (before its ReLU), one row per sample.  ``new_key`` switches to a fresh client key."""

    def __init__(self, server: fm.MLPServer):
        self.server, self.queries, self.samples = server, 0, 0
        self.new_key()

    def new_key(self) -> None:
        self.client = fm.MLPClient(self.server.sizes, self.server.plan.activation, self.server.params)
        self.public = self.server.load_public(self.client.public_bundle())

    def answer(self, X: np.ndarray) -> tuple[np.ndarray, bytes]:
        X = np.atleast_2d(X)
        self.queries += 1
        self.samples += len(X)
        answer = self.server.score(self.client.encrypt(X), self.public)
        tlen = fm._ANSWER_HEADER.unpack_from(answer)[-1]
        start = fm._ANSWER_HEADER.size
        # the client's own first-layer decryption, as MLPClient.respond does before its ReLU
        values = self.client._layers[0].decrypt(answer[start + tlen:], len(X))
        return values.reshape(len(X), -1), answer[start:start + tlen]

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.answer(X)[0]


class SimulatedOracle:
    """What the client decrypts after round 1, without the cryptography: the server's plan and a
    fresh seed give the query's permutation and factors (``fastmlp._layer_secrets``), folded into
    the weights as the server folds them (``fastmlp._effective``); the fixed-point arithmetic is
    reproduced exactly (inputs rounded to ``s_x``, weights to ``s_w``, bias to ``s_x s_w``, as
    ``FastClient.encrypt`` and ``MLPServer`` do), and the server's flood is drawn as it draws it
    (uniform in ``[-2^flood_bits, 2^flood_bits)`` phase units).  Left out: the encryption noise,
    ``2^-flood_margin_bits`` of the flood.  Checked against :class:`RealOracle` by :func:`validate`."""

    def __init__(self, server: fm.MLPServer, rng: np.random.Generator):
        p = server.plan
        self.plan, self.rng, self.queries, self.samples = p, rng, 0, 0
        ctx = fl._context(p.params)
        self.sx, self.sw = p.params.x_scale, p.params.w_scale
        self.flood = 2.0 ** p.flood_bits[0] / (float(ctx.delta) * self.sx * self.sw)

    def view(self, X: np.ndarray, seed: bytes) -> np.ndarray:
        """The exact fixed-point hidden values of ``X`` under the secrets of ``seed``, unflooded."""
        p = self.plan
        W, b = p.layers[0]
        perm, u = fm._layer_secrets(seed, 0, W.shape[0], p.spread)
        A, c = fm._effective(W, b, 0, len(p.layers), p.bounds, float(p.params.x_bound),
                             None, None, perm, u, p.out_scale)
        xh = np.rint(np.atleast_2d(X) * self.sx)
        bh = np.array([round(float(v) * self.sx * self.sw) for v in c])
        return (xh @ np.rint(A * self.sw).T + bh) / (self.sx * self.sw)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        self.queries += 1
        self.samples += len(X)
        z = self.view(X, self.rng.bytes(32))
        return z + self.rng.uniform(-self.flood, self.flood, z.shape)


def validate(server: fm.MLPServer, rng: np.random.Generator, n_queries: int = 8) -> dict:
    """Real decrypted views against the simulation with the same seed (read from the round
    token: the bench holds the deployment secret): the difference is the flood (and the
    encryption noise), so it stays within the flood's bound and is spread like it."""
    real, sim = RealOracle(server), SimulatedOracle(server, rng)
    R = float(server.params.x_bound)
    diffs = []
    for _ in range(n_queries):
        X = rng.uniform(-R, R, (8, server.sizes[0]))
        values, token = real.answer(X)
        diffs.append((values - sim.view(X, server._tokens.open(token)[5])).ravel())
    diff = np.concatenate(diffs)
    bound = sim.flood * (1 + 2.0 ** -server.plan.margin_bits) + 1.0 / (sim.sx * sim.sw)
    return {"queries": n_queries, "values": int(diff.size), "max_abs_diff": float(np.abs(diff).max()),
            "flood": sim.flood, "std_over_uniform_flood_std": float(diff.std() / (sim.flood / math.sqrt(3))),
            "within_bound": bool(np.abs(diff).max() <= bound)}


# ------------------------------------------------------------------------ evaluation


def row_cosines(est: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Cosine of each true row with the estimated unit the best assignment gives it (sign kept:
    the factors are positive, so a recovered row must point the same way)."""
    E = est / np.maximum(np.linalg.norm(est, axis=1, keepdims=True), 1e-300)
    T = W / np.linalg.norm(W, axis=1, keepdims=True)
    C = T @ E.T
    rows, cols = linear_sum_assignment(-C)
    out = np.full(len(W), -1.0)
    out[rows] = C[rows, cols]
    return out


def _summary(per_unit: np.ndarray) -> dict:
    """Median and max over units of the queries/samples each needed (inf: not recovered)."""
    ok = np.isfinite(per_unit)
    return {"recovered": float(ok.mean()),
            "median": float(np.median(per_unit)) if ok.all() else (float(np.median(per_unit[ok])) if ok.any() else None),
            "max": float(per_unit[ok].max()) if ok.any() else None}


# ------------------------------------------------------------------------ 1. batch


def _least_squares(X: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Rows ``(w_k, b_k)`` up to a factor, from ``Z = c (X W^T + b)`` (minimum norm if short)."""
    sol = np.linalg.lstsq(np.hstack([X, np.ones((len(X), 1))]), Z, rcond=None)[0]
    return sol.T


def batch_attack(oracle, W: np.ndarray, R: float, threshold: float, rng: np.random.Generator) -> dict:
    n = W.shape[1]
    X = rng.uniform(-R, R, (n + 16, n))
    Z = oracle(X)  # one query: one permutation, one set of factors
    budgets = {n // 8: "n/8", n // 4: "n/4", n // 2: "n/2", 3 * n // 4: "3n/4", n - 1: "n-1", n: "n", n + 1: "n+1"}
    grid = sorted(set(np.linspace(8, n + 16, 48).astype(int)) | set(range(n - 8, n + 9)) | set(budgets))
    need = np.full(len(W), np.inf)
    at = {}
    for m in grid:
        cos = row_cosines(_least_squares(X[:m], Z[:m])[:, :n], W)
        need[(cos >= threshold) & ~np.isfinite(need)] = m
        if m in budgets:
            at[budgets[m]] = {"samples": int(m), "median_cosine": float(np.median(cos)), "min_cosine": float(cos.min())}
    final = row_cosines(_least_squares(X, Z)[:, :n], W)
    return {"queries": 1, "samples_per_unit": _summary(need), "min_cosine_at_all": float(final.min()),
            "samples_all": float(need.max()) if np.isfinite(need).all() else None, "cosine_at_samples": at}


# ------------------------------------------------------------------------ 2. per-key budget


def keys_attack(server: fm.MLPServer, W: np.ndarray, budget: int, anchors: int, threshold: float,
                rng: np.random.Generator) -> dict:
    """Batches of ``budget`` samples, one fresh key each, matched through shared anchor samples."""
    n, R = W.shape[1], float(server.params.x_bound)
    oracle, limit = RealOracle(server), QueryBudget(budget)
    A = rng.uniform(-R, R, (anchors, n))
    ref = None
    Xs, Zs, keys, refused = [], [], 0, 0
    while sum(len(x) for x in Xs) < n + 16:
        if keys:
            oracle.new_key()
        keys += 1
        X = np.vstack([A, rng.uniform(-R, R, (budget - anchors, n))])
        limit.spend(oracle.client.key_id, len(X))
        try:
            limit.spend(oracle.client.key_id, 1)  # one sample more on the same key
        except RequestError:  # the service's 429
            refused += 1
        Z = oracle(X)
        if ref is None:
            ref = Z[:anchors]
        else:  # match this batch's units to the first batch's by their anchor vectors
            a, r = Z[:anchors], ref
            C = (a / np.linalg.norm(a, axis=0)).T @ (r / np.linalg.norm(r, axis=0))
            mine, theirs = linear_sum_assignment(-C)
            order = np.empty(len(theirs), dtype=int)
            order[theirs] = mine
            Z = Z[:, order]
            Z = Z * ((ref * Z[:anchors]).sum(0) / (Z[:anchors] ** 2).sum(0))
        Xs.append(X if not Xs else X[anchors:])
        Zs.append(Z if len(Zs) == 0 else Z[anchors:])
    X, Z = np.vstack(Xs), np.vstack(Zs)
    cos = row_cosines(_least_squares(X, Z)[:, :n], W)
    return {"budget_per_key": budget, "anchors": anchors, "keys": keys, "samples": oracle.samples,
            "refused_over_budget": refused, "recovered": float((cos >= threshold).mean()),
            "min_cosine": float(cos.min()), "median_cosine": float(np.median(cos))}


# ------------------------------------------------------------------------ 3. one sample per query


@dataclass
class _Unit:
    point: np.ndarray
    gap: float  # second smallest |z| at the point: no other unit is nearer zero than this
    lo: list = field(default_factory=list)  # per coordinate: log2 |z| / d of each probe
    sign: list = field(default_factory=list)
    d: list = field(default_factory=list)  # per probe pass: the displacement used, (n, 1)
    queries: int = 0
    recovered_at: float = math.inf


class SingleSampleAttack:
    """The attack of the module docstring, point 3, against ``oracle`` (one sample per call)."""

    def __init__(self, oracle, n: int, n_units: int, R: float, spread: float, rng: np.random.Generator,
                 floor: float = 0.0):
        self.oracle, self.n, self.H, self.R, self.s, self.rng = oracle, n, n_units, R, spread, rng
        self.line_queries = 0
        self.least_floor = floor  # what the public parameters say the noise can reach
        self.floor = floor  # the noise floor, measured in find_units, at least least_floor

    def ask(self, x: np.ndarray) -> np.ndarray:
        return self.oracle(np.clip(x, -self.R, self.R)[None])[0]

    def _crossings(self, a: np.ndarray, b: np.ndarray, cells: int) -> list[tuple[np.ndarray, float]]:
        """Points of segment a-b where one unit changes sign, found by bisecting the count of
        positive answers to ~1e-11 of the segment."""
        ts = np.linspace(0.0, 1.0, cells + 1)
        counts = [int((self.ask(a + t * (b - a)) > 0).sum()) for t in ts]
        out = []
        stack = [(ts[i], counts[i], ts[i + 1], counts[i + 1]) for i in range(cells) if counts[i] != counts[i + 1]]
        while stack:
            tl, nl, tr, nr = stack.pop()
            tm = 0.5 * (tl + tr)
            z = self.ask(a + tm * (b - a))
            if tr - tl < 1e-11:
                out.append((a + tm * (b - a), float(np.sort(np.abs(z))[1])))
                continue
            nm = int((z > 0).sum())
            if nm != nl:
                stack.append((tl, nl, tm, nm))
            if nm != nr:
                stack.append((tm, nm, tr, nr))
        return out

    def find_units(self, max_lines: int, lines_min: int) -> list[_Unit]:
        """One point per unit (the one with the largest gap over the lines that cross it)."""
        units: list[_Unit] = []
        start = self.oracle.queries
        for line in range(max_lines):
            if line >= lines_min and len(units) >= self.H:
                break
            # corners of the box [-R/2, R/2]^n: every point has room R/2 on both sides for the probes
            a = self.rng.choice([-self.R / 2, self.R / 2], self.n)
            found = self._crossings(a, -a if line == 0 else self.rng.choice([-self.R / 2, self.R / 2], self.n), 4 * self.H)
            if line == 0:  # the noise floor: |z| of a unit on its hyperplane
                self.floor = max([self.least_floor] + [float(np.abs(self.ask(p)).min()) for p, _ in found[:8]])
            for p, gap in found:
                same = None
                for u in units:  # same hyperplane iff points between them are on it too
                    if self._same_plane(p, u.point):
                        same = u
                        break
                if same is None:
                    units.append(_Unit(p, gap))
                elif gap > same.gap:
                    same.point, same.gap = p, gap
        self.line_queries = self.oracle.queries - start
        return units

    def probe(self, unit: _Unit, i: int, d: float) -> tuple[list, list, int, float]:
        """Coordinate ``i`` of ``unit``'s row from the two probes ``p +- d e_i``: in each the unit is
        the answer nearest zero (``2^(s+1)`` times nearer than the next), and its two values have
        opposite signs and magnitudes within the factors' range (another unit passing near zero on
        one side is not near zero on the other), above the noise floor.  Returns ``([log2 |z|/d]
        * 2, [sign] * 2, queries, d)``; ``d`` shrinks fourfold until the probes agree (``-inf``
        if they never do: a coordinate too small to read, estimated as 0)."""
        e = np.eye(1, self.n, i)[0]
        for tries in range(1, 12):
            picks = []
            for side in (1.0, -1.0):
                z = self.ask(unit.point + side * d * e)
                order = np.argsort(np.abs(z))
                if not 4 * self.floor < abs(z[order[0]]) * 2.0 ** (self.s + 1) < abs(z[order[1]]):
                    break  # not singled out, or lost in the noise
                picks.append(side * z[order[0]])
            if len(picks) == 2:
                a, b = abs(picks[0]) + self.floor, abs(picks[1]) + self.floor
                if np.sign(picks[0]) == np.sign(picks[1]) and max(a / b, b / a) <= 2.0 ** self.s:
                    logs = [math.log2(max(abs(v), 1e-300) / d) for v in picks]
                    return logs, [float(np.sign(v)) for v in picks], 2 * tries, d
            d /= 4
        return [-math.inf] * 2, [0.0] * 2, 2 * tries, d

    def estimate(self, unit: _Unit) -> np.ndarray:
        """Per coordinate: ``|z| = u y d + e`` with ``u`` in ``[2^-s, 1]`` and ``|e| <= floor``, so
        ``y`` lies in ``[(|z| - floor) / d, 2^s (|z| + floor) / d]``; the geometric midpoint of the
        intersection over the probes (their median if the intervals disagree)."""
        mag, d = np.exp2(np.array(unit.lo)) * np.array(unit.d)[:, :, 0], np.array(unit.d)[:, :, 0]
        low = np.log2(np.maximum(mag - self.floor, 1e-300) / d).max(axis=0)
        high = (np.log2((mag + self.floor) / d) + self.s).min(axis=0)
        mid = np.where(low <= high, 0.5 * (low + high), np.median(np.array(unit.lo), axis=0) + 0.5 * self.s)
        sign = np.sign(np.array(unit.sign).sum(axis=0))
        return sign * np.exp2(mid)

    def _same_plane(self, p: np.ndarray, q: np.ndarray) -> bool:
        """Are ``p`` and ``q`` on one unit's hyperplane?  Then so are the points between them."""
        return all(np.abs(self.ask(p + f * (q - p))).min() <= 2 * self.floor for f in (0.5, 0.25, 0.75))

    def relocate(self, unit: _Unit, w: np.ndarray, tries: int) -> None:
        """Move ``unit``'s point along its hyperplane to where the other units are farther from
        zero (a larger gap allows larger, less noisy probes): random points near the estimated
        hyperplane, the crossings on short segments across it, kept if on the same hyperplane."""
        before = self.oracle.queries
        normal = w / np.linalg.norm(w)
        for _ in range(tries):
            q = unit.point + 0.1 * (self.rng.uniform(-self.R / 2, self.R / 2, self.n) - unit.point)
            q -= (normal @ (q - unit.point)) * normal
            half = 0.3 * np.linalg.norm(q - unit.point)
            if np.abs(q).max() + half > self.R:
                continue
            for point, gap in self._crossings(q - half * normal, q + half * normal, 4):
                if gap > unit.gap and self._same_plane(point, unit.point):
                    unit.point, unit.gap = point, gap
                    break
        unit.queries += self.oracle.queries - before

    def run(self, W: np.ndarray, threshold: float, passes: int, max_lines: int, lines_min: int,
            relocations: int = 4) -> dict:
        units = self.find_units(max_lines, lines_min)
        share = self.line_queries / max(len(units), 1)
        est = np.zeros((self.H, self.n))
        wide = float(np.median([u.gap for u in units]))
        for k, unit in enumerate(units[:self.H]):
            d0 = d = min(self.R / 2, unit.gap * self.n)
            for _ in range(passes):
                lo, sg, ds = np.empty((2, self.n)), np.empty((2, self.n)), np.empty((2, self.n, 1))
                for i in range(self.n):
                    lo[:, i], sg[:, i], q, ds[:, i] = self.probe(unit, i, d)
                    unit.queries += q
                    if np.isfinite(lo[0, i]):  # grow after a first-try success, else keep what worked
                        d = min(self.R / 2, max(d0 / 16, ds[0, i, 0] * (2 if q == 2 else 1)))
                unit.lo.extend(lo)
                unit.sign.extend(sg)
                unit.d.extend(ds)
                est[k] = self.estimate(unit)
                cos = row_cosines(est[k:k + 1], W).max()  # evaluation only
                if cos >= threshold:
                    unit.recovered_at = share + unit.queries
                    break
                if relocations and unit.gap < wide:  # only the units in the most crowded places
                    self.relocate(unit, est[k], relocations)
                    d0 = d = max(d, min(self.R / 2, unit.gap * self.n))
        cos = row_cosines(est, W)
        # per true row: the queries of the unit assigned to it, if it reached the threshold
        T = W / np.linalg.norm(W, axis=1, keepdims=True)
        E = est / np.maximum(np.linalg.norm(est, axis=1, keepdims=True), 1e-300)
        rows, cols = linear_sum_assignment(-(T @ E.T))
        need = np.full(self.H, np.inf)
        for r, c in zip(rows, cols):
            if c < len(units) and cos[r] >= threshold:
                need[r] = units[c].recovered_at
        return {"units_found": len(units), "line_search_queries": self.line_queries,
                "queries_total": self.oracle.queries, "queries_per_unit": _summary(need),
                "median_cosine": float(np.median(cos)), "min_cosine": float(cos.min())}


# ------------------------------------------------------------------------ main


def public_floor(server: fm.MLPServer) -> float:
    """What the first round's answer can differ from ``u * h / H`` by, from the public parameters:
    the flood, and the per-query rounding of the weights (each within ``1/(2 s_w)``, times inputs
    up to ``R``) and of the input (``1/(2 s_x)``, times weights of L1 norm at most 1)."""
    p = server.params
    n, R = server.sizes[0], float(p.x_bound)
    flood = 2.0 ** server.plan.flood_bits[0] / (float(fl._context(p).delta) * p.x_scale * p.w_scale)
    return flood + n * R / (2 * p.w_scale) + 1 / (2 * p.x_scale)


def run(quick: bool, seed: int, threshold: float, real_single: bool, only: str | None = None) -> dict:
    rng = np.random.default_rng(seed)
    out = {"threshold": threshold, "seed": seed, "models": {}}
    for name, (layers, act) in digits_models().items():
        if only is not None and name != only:
            continue
        t0 = time.perf_counter()
        W = layers[0][0]
        n, H = W.shape[1], W.shape[0]
        server = served(layers, act)  # the default configuration
        batches = served(layers, act, max_error=1e-2, samples=n + 16)
        R = float(server.params.x_bound)
        res: dict = {"sizes": server.sizes, "parameters": int(sum(w.size + c.size for w, c in layers)),
                     "spread_bits": server.plan.spread, "error_bound_layer1": server.plan.error_bounds[0],
                     "default": {"params": str(server.params), "flood_covers": server.max_samples},
                     "batches": {"params": str(batches.params), "flood_covers": batches.max_samples}}
        try:  # what the default service says to one query of n + 16 samples
            QueryBudget(0, 1).spend("attacker", n + 16)
        except RequestError as exc:
            res["default"]["batch_refused"] = str(exc)
        res["batch"] = batch_attack(RealOracle(batches), W, R, threshold, rng)
        res["keys"] = keys_attack(batches, W, max(32, n // 8), 8, threshold, rng)
        if not real_single:
            res["simulation_check"] = validate(server, rng)
            if not res["simulation_check"]["within_bound"]:
                raise SystemExit(f"{name}: the simulated view differs from the real one: {res['simulation_check']}")
        oracle = RealOracle(server) if real_single else SimulatedOracle(server, rng)
        attack = SingleSampleAttack(oracle, n, H, R, server.plan.spread, rng, public_floor(server))
        res["single"] = {"oracle": "real" if real_single else "simulated",
                         **attack.run(W, threshold, passes=2 if quick else 4, max_lines=6, lines_min=2 if quick else 4)}
        res["seconds"] = time.perf_counter() - t0
        out["models"][name] = res
    return out


def table(result: dict) -> str:
    th = result["threshold"]
    lines = [f"Recovering W1's rows up to scale to cosine >= {th} (seed {result['seed']})", "",
             "| model (parameters) | attack | service | oracle | queries | per row: median / max | rows recovered |"
             " logits only (Carlini et al. 2020) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in result["models"].items():
        b, k, s = r["batch"], r["keys"], r["single"]
        bs = b["samples_per_unit"]
        n = r["sizes"][0]
        size = max(LOGITS_ONLY, key=lambda p: -abs(math.log(p / r["parameters"])))
        yardstick = f"2^{math.log2(LOGITS_ONLY[size]):.1f} for {size:,} parameters"
        model = f"{name} ({r['parameters']:,})"
        batches = f"configured for {n + 16} samples per query"
        lines.append(f"| {model} | one query of many samples | default | - | refused (max_samples_per_query = 1) | - | "
                     f"0% | {yardstick} |")
        lines.append(f"| {model} | one query of many samples | {batches} | real | 1 | {bs['median']:.0f} / {bs['max']:.0f}"
                     f" samples | {bs['recovered']:.0%} | {yardstick} |")
        lines.append(f"| {model} | {k['keys']} keys x {k['budget_per_key']} samples ({k['anchors']} anchors) | {batches} |"
                     f" real | {k['keys']} | all {k['samples']} samples | {k['recovered']:.0%} (min cos "
                     f"{k['min_cosine']:.4f}) | {yardstick} |")
        q = s["queries_per_unit"]
        med = "-" if q["median"] is None else f"{q['median']:.0f}"
        mx = "-" if q["max"] is None else f"{q['max']:.0f}"
        lines.append(f"| {model} | one sample per query | default | {s['oracle']} | {s['queries_total']} "
                     f"(2^{math.log2(s['queries_total']):.1f}) | {med} / {mx} | {q['recovered']:.0%} (median cos "
                     f"{s['median_cosine']:.4f}) | {yardstick} |")
    lines.append("")
    for name, r in result["models"].items():
        lines.append(f"{name}: default service {r['default']['params']}, its flooding covers "
                     f"{r['default']['flood_covers']} samples per query; batch service {r['batches']['params']}, "
                     f"covers {r['batches']['flood_covers']}.")
    labels = list(next(iter(result["models"].values()))["batch"]["cosine_at_samples"])
    lines += ["", "What one key learns within max_queries_per_key = B samples, n inputs (one query of B random "
              "probes; cosine of W1's rows, median / min):", "",
              "| model | " + " | ".join(f"B = {m}" for m in labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, r in result["models"].items():
        at = r["batch"]["cosine_at_samples"]
        lines.append(f"| {name} | " + " | ".join(f"{v['median_cosine']:.3f} / {v['min_cosine']:.3f}" for v in at.values()) + " |")
    lines.append("")
    for name, r in result["models"].items():
        if "simulation_check" in r:
            c = r["simulation_check"]
            lines.append(f"{name}: simulation checked on {c['queries']} real queries ({c['values']} values, same seed): "
                         f"max |real - simulated| {c['max_abs_diff']:.2e} within the flood {c['flood']:.2e}; "
                         f"spread {c['std_over_uniform_flood_std']:.3f} x the uniform flood's.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the result as JSON instead of the table")
    ap.add_argument("--quick", action="store_true", help="fewer passes and lines for the single-sample attack")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.99, help="cosine a row must reach")
    ap.add_argument("--real-single", action="store_true",
                    help="run the one-sample-per-query attack on the real scheme instead of the validated "
                         "simulation (~10 ms per query: minutes for 64 inputs, about an hour for 784)")
    ap.add_argument("--model", choices=MODELS, help="attack this network only")
    args = ap.parse_args()
    if not 0 < args.threshold < 1:
        raise SystemExit("--threshold must be in (0, 1)")
    try:
        result = run(args.quick, args.seed, args.threshold, args.real_single, args.model)
    except FastSchemeError as exc:
        raise SystemExit(f"mlp_attack: {exc}") from None
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    sys.exit(main())
