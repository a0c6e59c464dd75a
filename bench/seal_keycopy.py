"""Benchmark the public-key copy fix: library ``EIServer.predict`` vs ``SealLinearServer.predict``.

For a 784x10 model (random weights at the scale of a LogisticRegression on MNIST pixels in
[0, 1]) and a 64x10 model (LogisticRegression trained on sklearn's digits), times:

* the library's ``EIServer.predict(ciphertexts, public_keys)``;
* ``SealLinearServer.predict`` given the raw key bytes (key validated and prepared per call);
* ``SealLinearServer.predict`` given a cached ``PreparedKeys``;

and prints medians, speedups and the sizes of key, request and response. All three must
return identical result ciphertexts, which is checked.

    .venv/bin/python bench/seal_keycopy.py [--reps 5] [--lib-reps 3]
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import time

import numpy as np
from encrypted.inference.eiclient import EILinearRegressionClient
from encrypted.inference.eiserver import EIServer
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from aideploy_scoring.seal_ei import SealLinearServer, prepare_keys


def mnist_like(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """784x10 weights ~N(0, 0.1), intercepts ~N(0, 0.3), and a sparse [0, 1] 'image'."""
    coef = rng.normal(0.0, 0.1, (10, 784))
    intercept = rng.normal(0.0, 0.3, 10)
    x = np.where(rng.random(784) < 0.19, rng.random(784), 0.0)  # ~19% of MNIST pixels are ink
    return coef, intercept, x


def digits_model() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    model = LogisticRegression(max_iter=5000).fit(x[:-1], y[:-1])
    return model.coef_, model.intercept_, x[-1]


def timed(fn, reps: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of the fast paths")
    parser.add_argument("--lib-reps", type=int, default=3, help="repetitions of the library path (~10 s each)")
    args = parser.parse_args()

    client = EILinearRegressionClient()  # never verbose=True: it prints the secret key
    key_times, (_, public_keys) = timed(client.get_public_keys, 1)
    prep_times, prepared = timed(lambda: prepare_keys(public_keys), args.reps)
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"client key generation: {key_times[0]:.2f} s; prepare_keys: median {statistics.median(prep_times) * 1e3:.0f} ms")

    rows, sizes = [], []
    for name, (coef, intercept, x) in {
        "784x10": mnist_like(np.random.default_rng(0)),
        "64x10": digits_model(),
    }.items():
        ciphertexts = client.encrypt(x)
        library = EIServer(coef, intercept)
        ours = SealLinearServer(coef, intercept)
        runs = {
            "EIServer.predict (library)": timed(lambda: library.predict(ciphertexts, public_keys), args.lib_reps),
            "SealLinearServer, raw key bytes": timed(lambda: ours.predict(ciphertexts, public_keys), args.reps),
            "SealLinearServer, cached PreparedKeys": timed(lambda: ours.predict(ciphertexts, prepared), args.reps),
        }
        results = [out for _, out in runs.values()]
        assert all(r == results[0] for r in results), "result ciphertexts differ between paths"
        scores = client.decrypt(results[0])
        assert np.abs(scores - (coef @ x + intercept)).max() < 1e-3, "decrypted scores are wrong"

        base = statistics.median(runs["EIServer.predict (library)"][0])
        for method, (times, _) in runs.items():
            med = statistics.median(times)
            rows.append((name, method, len(times), med, min(times), base / med))
        request = [base64.b64decode(c) for c in ciphertexts]
        response = [base64.b64decode(r) for r in results[0]]
        sizes.append((name, len(request), sum(map(len, request)), sum(map(len, ciphertexts)),
                      statistics.median(map(len, response)), sum(map(len, results[0]))))

    print()
    print(f"{'model':<8} {'method':<38} {'reps':>4} {'median s':>9} {'min s':>7} {'speedup':>8}")
    for name, method, reps, med, low, speedup in rows:
        print(f"{name:<8} {method:<38} {reps:>4} {med:>9.3f} {low:>7.3f} {speedup:>7.1f}x")

    print()
    print(f"public keys: {len(public_keys):,} bytes raw, {4 * -(-len(public_keys) // 3):,} as base64; "
          f"prepared form holds {prepared.nbytes:,} bytes")
    print(f"{'model':<8} {'ciphertexts':>11} {'request raw':>12} {'request b64':>12} {'per-class resp':>15} {'response b64':>13}")
    for name, count, raw, b64, per_class, total in sizes:
        print(f"{name:<8} {count:>11} {raw:>12,} {b64:>12,} {per_class:>15,.0f} {total:>13,}")
    print(f"\nload average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
