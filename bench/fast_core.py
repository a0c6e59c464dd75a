"""Micro-benchmark of the ``encryption=fast`` core (aideploy_scoring.fastlinear).

Run:  python bench/fast_core.py [--repeat 200] [--batch 16384]

For 64x10 and 784x10 models (weights shaped like a trained LogisticRegression,
inputs in [0, 1]) it prints, per model:

* server ms/query: median wall time of ``FastServer.predict`` on a single query,
  from request bytes to response bytes (its fresh encryptions of zero included);
* client encrypt / decrypt ms (single query);
* bundle / query / response bytes (single query);
* batch samples/s: server compute for one column-layout request of ``--batch``
  samples (at most what the flooding covers per query: the service's parameters for
  ``--batch-max-error``), and the max logit error seen.

The server's kernels are single-threaded (no BLAS): the C build (``scoring/fastkernels.c``,
compiled ahead of time) when this machine has one, numba's with ``AIDEPLOY_KERNELS=jit``; the
last line says which ran. ``--compare`` measures both in one process (numba's first: run it with
``AIDEPLOY_KERNELS=jit``), alternating, on the same models and queries, and prints their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from aideploy_scoring import fastkernels_aot
from aideploy_scoring.fastlinear import FastClient, FastServer, choose_params


def _model(rng: np.random.Generator, n: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    # A trained LogisticRegression on [0, 1] pixels has small, mostly signed weights.
    w = rng.normal(0.0, 0.15, size=(c, n)) * (rng.random((c, n)) < 0.8)
    b = rng.normal(0.0, 0.5, size=c)
    return w, b


def _median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def _served(w: np.ndarray, b: np.ndarray, max_error: float) -> tuple[FastClient, FastServer, object]:
    """A server with the parameters a service would choose, and a client's key loaded."""
    params = choose_params(w, b, max_error=max_error)
    client, server = FastClient(w.shape[1], w.shape[0], params), FastServer(w, b, params)
    return client, server, server.load_public(client.public_bundle())


def bench(n: int, c: int, repeat: int, batch: int, batch_max_error: float, rng: np.random.Generator) -> dict:
    w, b = _model(rng, n, c)
    client, server, public = _served(w, b, 1e-3)
    bundle = client.public_bundle()

    x = rng.random((1, n))
    queries = [client.encrypt(x) for _ in range(8)]
    i = iter(range(10**9))
    server_ms = _median_ms(lambda: server.predict(queries[next(i) % 8], public), repeat)

    enc_ms = _median_ms(lambda: client.encrypt(x), max(10, repeat // 10))
    response = server.predict(queries[0], public)
    dec_ms = _median_ms(lambda: client.decrypt(response, 1), max(10, repeat // 10))
    err_single = float(np.abs(client.decrypt(server.predict(client.encrypt(x), public), 1)
                              - (x @ w.T + b)).max())

    # batch: column layout, samples in coefficients
    batch_client, batch_server, batch_public = _served(w, b, batch_max_error)
    batch = min(batch, batch_server.max_samples)
    xb = rng.random((batch, n))
    qb = batch_client.encrypt(xb, layout="column")
    rates = []
    for _ in range(3):
        t0 = time.perf_counter()
        rb = batch_server.predict(qb, batch_public)
        rates.append(batch / (time.perf_counter() - t0))
    err_batch = float(np.abs(batch_client.decrypt(rb, batch) - (xb @ w.T + b)).max())
    return {
        "model": f"{n}x{c}",
        "server_ms": server_ms,
        "enc_ms": enc_ms,
        "dec_ms": dec_ms,
        "bundle_B": len(bundle),
        "query_B": len(queries[0]),
        "response_B": len(response),
        "batch": batch,
        "batch_sps": statistics.median(rates),
        "batch_query_B_per_sample": len(qb) / batch,
        "batch_response_B_per_sample": len(rb) / batch,
        "err": err_single,
        "error_bound": server.error_bound,
        "batch_err": err_batch,
        "batch_error_bound": batch_server.error_bound,
        "max_samples": server.max_samples,
        "flood_margin_bits": server.flood_margin_bits,
    }


def compare(repeat: int, rounds: int = 3) -> None:
    """Server ms per single-sample query with numba's kernels and the C build's, alternating in this
    process (fastkernels' kernels swapped by name), best of ``rounds``."""
    from aideploy_scoring import fastkernels as fk

    found = fastkernels_aot._found()
    if fk._BUILT is not None or found is None:
        raise SystemExit("--compare needs numba's kernels here (AIDEPLOY_KERNELS=jit) and a build on this machine "
                         "(python scoring/fastkernels_aot.py)")
    sets = {"numba": {k: getattr(fk, k) for k in fk.KERNELS}, "C": {k: getattr(found[0], k) for k in fk.KERNELS}}
    rng = np.random.default_rng(0)
    for n, c in ((64, 10), (784, 10)):
        w, b = _model(rng, n, c)
        params = choose_params(w, b, max_error=1e-3)
        client = FastClient(n, c, params)
        queries = [client.encrypt(rng.random((1, n))) for _ in range(8)]
        best: dict[str, float] = {}
        for _ in range(rounds):
            for name, kernels in sets.items():
                vars(fk).update(kernels)
                server = FastServer(w, b, params)
                public = server.load_public(client.public_bundle())
                i = iter(range(10**9))
                ms = _median_ms(lambda: server.predict(queries[next(i) % 8], public), repeat)
                best[name] = min(best.get(name, ms), ms)
        print(f"{n}x{c}: server ms/query numba {best['numba']:.4f}, C {best['C']:.4f}, C/numba "
              f"{best['C'] / best['numba']:.3f} (best of {rounds} alternating medians of {repeat})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16384)
    ap.add_argument("--batch-max-error", type=float, default=1e-2,
                    help="max_error of the batch's parameters (a larger error covers more samples per query)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compare", action="store_true", help="numba's kernels against the C build's, in one process")
    args = ap.parse_args()
    if args.compare:
        compare(args.repeat)
        return
    rng = np.random.default_rng(args.seed)
    rows = [bench(n, c, args.repeat, args.batch, args.batch_max_error, rng) for n, c in ((64, 10), (784, 10))]
    cols = [
        ("model", "model", "{}"),
        ("server_ms", "server ms/q", "{:.3f}"),
        ("enc_ms", "encrypt ms", "{:.2f}"),
        ("dec_ms", "decrypt ms", "{:.2f}"),
        ("bundle_B", "bundle B", "{:,}"),
        ("query_B", "query B", "{:,}"),
        ("response_B", "response B", "{:,}"),
        ("max_samples", "samples/query", "{:,}"),
        ("batch", "batch", "{:,}"),
        ("batch_sps", "batch samples/s", "{:,.0f}"),
        ("batch_query_B_per_sample", "batch q B/sample", "{:,.0f}"),
        ("batch_response_B_per_sample", "batch r B/sample", "{:,.0f}"),
        ("err", "max |err|", "{:.1e}"),
        ("error_bound", "err bound", "{:.1e}"),
        ("flood_margin_bits", "flood margin bits", "{:.1f}"),
        ("batch_err", "batch |err|", "{:.1e}"),
        ("batch_error_bound", "batch bound", "{:.1e}"),
    ]
    table = [[h for _, h, _ in cols]] + [[f.format(r[k]) for k, _, f in cols] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    for j, row in enumerate(table):
        print("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))
        if j == 0:
            print("  ".join("-" * wd for wd in widths))
    print(f"(repeat={args.repeat}; single queries: max_error 1e-3; batch: up to {args.batch} samples, column layout, "
          f"max_error {args.batch_max_error:g})")
    status = fastkernels_aot.STATUS
    print(f"kernels: {status['kernels']} ({status['build'] or status['why']})")


if __name__ == "__main__":
    main()
