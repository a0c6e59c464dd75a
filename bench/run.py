"""One benchmark of aideploy's encrypted scoring against its anchors, same run, same models, same data.

    .venv/bin/python bench/run.py [--quick]

Schemes, each on a 784x10 and a 64x10 LogisticRegression:

* ``encryption=fast`` -- our scheme, ``aideploy_scoring.fastlinear`` (FastClient / FastServer);
* ``encryption=seal`` -- encrypted-inference 0.9 as the service runs it: ``SealLinearServer`` with
  cached ``PreparedKeys``; and the stock library ``EIServer.predict`` (the seed's code path,
  ~10 s per query, so only a few repetitions) as the anchor;
* Concrete-ML's LogisticRegression (Zama), run by ``bench/concrete_part.py`` in the separate venv
  ``bench/.venv-concrete`` (see bench/RESULTS.md); skipped with the reason if it is not importable.

Models and data (no internet): scikit-learn's 8x8 digits /16 for 64 features, and the same
images upsampled to 28x28 (``scipy.ndimage.zoom``, bilinear, clipped to [0, 1] and rounded to
multiples of 1/255 so that the IDX files of the HTTP run hold exactly the same values) for 784
features. A fixed permutation (seed 0) gives 1347 training and 450 test samples; the fitted
sklearn weights are what every scheme serves.

"Server ms/query" is the median wall time from the request's bytes to the response's bytes inside
the scoring code, one sample per query:

* fast: ``FastServer.predict(query_bytes, loaded_key)`` -- what ``FastScheme.score_binary`` runs
  once the key bundle is cached. It includes everything the server does for the query, the fresh
  public-key encryptions of zero (re-randomisation) too: nothing is precomputed between requests;
* seal: ``json.loads(body)``, ``SealLinearServer.predict(data, prepared_keys)``, ``json.dumps``;
  library: ``EIServer.predict(ciphertexts, public_key_bytes)``;
* Concrete-ML: ``FHEModelServer.run(query_bytes, evaluation_keys)`` with the keys deserialized once.

Key bytes are what the client uploads; query/response bytes are the encrypted payload of one
sample (seal's JSON body without the key id/URL fields, which the fast scheme sends as headers).
Batch samples/s: fast's column layout (``--batch`` samples in one query, at most what the
flooding covers for the parameters a service chooses at ``max_error`` 1e-2), encryptions of zero included; seal has no batch mode (1000 / server ms); Concrete-ML:
``decision_function(X, fhe="execute")`` throughput.

The fast server calls no BLAS: its kernels are compiled with numba and run in the calling thread,
so every fast figure is one core's work (the batch median is over 5 runs).

Last, one end-to-end run through the real service: ``aideploy encryption=fast data=mnist_idx
model=sklearn_pickle`` (Azurite key store, azmlinfsrv on localhost) on the 784-feature model and
test images, one sample per request; its results.json gives the HTTP round-trip latency p50.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import machine  # bench/machine.py
from threadpoolctl import threadpool_info

ROOT = Path(__file__).resolve().parent.parent
CONCRETE_PYTHON = ROOT / "bench" / ".venv-concrete" / "bin" / "python"
TARGETS_MS = {"server_784": 0.5, "server_64": 0.1, "http_p50": 20.0}


# --------------------------------------------------------------------------- helpers


def say(*args) -> None:
    print(*args, flush=True)


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def timed_ms(fn, reps: int) -> tuple[float, list[float], object]:
    """(median ms, all times in ms, last result) of ``reps`` calls."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(times), times, out


def blas_threads() -> int:
    return max((i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"), default=0)


# ------------------------------------------------------------------------ data, models


def make_data(seed: int = 0) -> dict:
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    images = digits.images / 16.0
    y = digits.target
    up = np.clip(zoom(images, (1, 28 / 8, 28 / 8), order=1), 0.0, 1.0)
    up = np.round(up * 255.0) / 255.0  # exactly representable in the IDX (uint8 / 255) files
    perm = np.random.default_rng(seed).permutation(len(y))
    train, test = perm[:-450], perm[-450:]
    out = {}
    for name, X in (("784x10", up.reshape(len(y), -1)), ("64x10", images.reshape(len(y), -1))):
        model = LogisticRegression(max_iter=5000).fit(X[train], y[train])
        out[name] = {"model": model, "coef": model.coef_, "intercept": model.intercept_,
                     "X_train": X[train], "X_test": X[test], "y_test": y[test],
                     "accuracy": float(model.score(X[test], y[test])),
                     "images_test": (up[test] * 255.0).round().astype(np.uint8) if name == "784x10" else None}
    return out


# --------------------------------------------------------------------------- fast


def bench_fast(d: dict, reps: int, batch: int, rng: np.random.Generator) -> dict:
    from aideploy_scoring.fastlinear import FastClient, FastServer, choose_params

    coef, intercept, X = d["coef"], d["intercept"], d["X_test"]
    ref = X @ coef.T + intercept
    n_classes, n_features = coef.shape
    params = choose_params(coef, intercept)  # what a service with the default max_error serves
    client = FastClient(n_features, n_classes, params)
    server = FastServer(coef, intercept, params)
    bundle = client.public_bundle()
    t0 = time.perf_counter()
    public = server.load_public(bundle)
    load_ms = 1e3 * (time.perf_counter() - t0)

    xs = [X[i:i + 1] for i in range(16)]
    queries = [client.encrypt(x) for x in xs]
    turn = iter(range(10**9))

    def one():
        return server.predict(queries[next(turn) % len(queries)], public)

    one()
    server_ms, _, _ = timed_ms(one, reps)
    responses = [server.predict(q, public) for q in queries]
    scores = np.vstack([client.decrypt(r, 1) for r in responses])
    err = float(np.abs(scores - ref[:16]).max())
    agree = float((scores.argmax(1) == ref[:16].argmax(1)).mean())

    enc_ms, _, _ = timed_ms(lambda: client.encrypt(xs[0]), max(20, reps // 10))
    dec_ms, _, _ = timed_ms(lambda: client.decrypt(responses[0], 1), max(20, reps // 10))

    # batch: column layout, test samples (drawn with replacement) in one query, as many as the
    # flooding of a service at max_error 1e-2 covers
    batch_params = choose_params(coef, intercept, max_error=1e-2)
    batch_server, batch_client = FastServer(coef, intercept, batch_params), FastClient(n_features, n_classes, batch_params)
    batch = min(batch, batch_server.max_samples)
    Xb = X[rng.integers(0, len(X), batch)]
    refb = Xb @ coef.T + intercept
    qb = batch_client.encrypt(Xb, layout="column")
    batch_public = batch_server.load_public(batch_client.public_bundle())
    rates = []
    for _ in range(5):
        t0 = time.perf_counter()
        rb = batch_server.predict(qb, batch_public)
        rates.append(batch / (time.perf_counter() - t0))
    sb = batch_client.decrypt(rb, batch)
    batch_res = {"samples": batch, "sps": statistics.median(rates), "query_B_per_sample": len(qb) / batch,
                 "response_B_per_sample": len(rb) / batch, "max_err": float(np.abs(sb - refb).max()),
                 "error_bound": batch_server.error_bound}
    agree_b = float((sb.argmax(1) == refb.argmax(1)).mean())
    return {
        "server_ms": server_ms, "key_load_ms": load_ms,
        "enc_ms": enc_ms, "dec_ms": dec_ms, "key_B": len(bundle), "query_B": len(queries[0]),
        "response_B": len(responses[0]), "batch": batch_res, "batch_sps": batch_res["sps"],
        "max_err": err, "agreement": min(agree, agree_b), "error_bound": server.error_bound,
        "flood_margin_bits": server.flood_margin_bits, "max_samples": server.max_samples, "reps": reps,
    }


# --------------------------------------------------------------------------- seal


def bench_seal(d: dict, client, key_id: str, public_keys: bytes, prepared, reps: int, lib_reps: int) -> dict:
    from encrypted.inference.eiserver import EIServer

    from aideploy_scoring.seal_ei import SealLinearServer

    coef, intercept, X = d["coef"], d["intercept"], d["X_test"]
    x = X[0]
    ref = coef @ x + intercept
    server = SealLinearServer(coef, intercept)
    enc_ms, _, ciphertexts = timed_ms(lambda: client.encrypt(x), 3)
    body = json.dumps({"data": ciphertexts, "key_id": key_id,
                       "key_url": f"https://account.blob.core.windows.net/keys/{key_id}?sas"}).encode()

    def serve() -> bytes:  # SealScheme.score with the keys already fetched and prepared
        payload = json.loads(body)
        return json.dumps(server.predict(payload["data"], prepared)).encode()

    server_ms, _, response = timed_ms(serve, reps)
    dec_ms, _, scores = timed_ms(lambda: client.decrypt(json.loads(response)), 3)
    library = EIServer(coef, intercept)
    lib_ms, lib_times, lib_out = timed_ms(lambda: library.predict(ciphertexts, public_keys), lib_reps)
    assert lib_out == json.loads(response), "EIServer and SealLinearServer results differ"
    return {
        "server_ms": server_ms, "total_ms": server_ms, "lib_ms": lib_ms, "lib_times_ms": lib_times,
        "enc_ms": enc_ms, "dec_ms": dec_ms, "key_B": len(public_keys),
        "query_B": len(json.dumps({"data": ciphertexts})), "response_B": len(response),
        "batch_sps": 1e3 / server_ms, "lib_batch_sps": 1e3 / lib_ms,
        "max_err": float(np.abs(np.asarray(scores) - ref).max()),
        "agreement": float(np.argmax(scores) == np.argmax(ref)), "reps": reps, "lib_reps": lib_reps,
    }


# ------------------------------------------------------------------------- concrete


def run_concrete_part(script: str, arrays: dict, tmp: Path, args: list[str], timeout: float = 900) -> dict:
    """Runs ``bench/<script> --npz <arrays> --out <json> <args>`` in bench/.venv-concrete and
    returns the JSON it wrote; {"error": reason} if it cannot."""
    if not CONCRETE_PYTHON.exists():
        return {"error": f"{CONCRETE_PYTHON.relative_to(ROOT)} does not exist (see bench/RESULTS.md to create it)"}
    stem = Path(script).stem
    npz, out = tmp / f"{stem}.npz", tmp / f"{stem}.json"
    np.savez(npz, **arrays)
    cmd = [str(CONCRETE_PYTHON), str(ROOT / "bench" / script), "--npz", str(npz), "--out", str(out), *args]
    try:
        # Concrete's compiler leaves a temp dir (sharedlib.so, circuit.mlir) per circuit behind:
        # keep them inside the bench's own temp dir, which is deleted at the end.
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp,
                              env={**os.environ, "TMPDIR": str(tmp)})
    except subprocess.TimeoutExpired:
        return {"error": f"bench/{script} took more than {timeout:.0f} s"}
    if not out.exists():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        return {"error": f"bench/{script} failed: {tail[0]}"}
    return json.loads(out.read_text())


def bench_concrete(data: dict, quick: bool, tmp: Path) -> dict:
    """Runs bench/concrete_part.py in bench/.venv-concrete; {"error": reason} if it cannot."""
    arrays: dict = {"names": np.array(list(data))}
    for name, d in data.items():
        arrays.update({f"{name}_coef": d["coef"], f"{name}_intercept": d["intercept"],
                       f"{name}_classes": d["model"].classes_, f"{name}_X_train": d["X_train"],
                       f"{name}_X_test": d["X_test"]})
    return run_concrete_part("concrete_part.py", arrays, tmp, ["--quick"] if quick else [])


# ---------------------------------------------------------------------------- http


def bench_http(d: dict, limit: int, tmp: Path, encryption: str = "fast") -> dict:
    """``aideploy encryption=<encryption>`` on the 784-feature model through azmlinfsrv; results.json."""
    import joblib

    from aideploy.datasets import write_idx

    if not (tmp / "model784.pkl").exists():
        write_idx(tmp / "images-idx3-ubyte.gz", d["images_test"][:limit].reshape(-1, 28, 28))
        write_idx(tmp / "labels-idx1-ubyte.gz", d["y_test"][:limit].astype(np.uint8))
        joblib.dump(d["model"], tmp / "model784.pkl")
    out = tmp / f"http-run-{encryption}"
    cmd = [str(ROOT / ".venv" / "bin" / "aideploy"), f"encryption={encryption}", "data=mnist_idx",
           f"data.images={tmp / 'images-idx3-ubyte.gz'}", f"data.labels={tmp / 'labels-idx1-ubyte.gz'}",
           "model=sklearn_pickle", f"model.path={tmp / 'model784.pkl'}", f"home={tmp / 'home'}",
           f"hydra.run.dir={out}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    except subprocess.TimeoutExpired:
        return {"error": "aideploy run took more than 600 s", "command": cmd}
    results_file = out / "results.json"
    if proc.returncode != 0 or not results_file.exists():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return {"error": f"aideploy exited {proc.returncode}: {tail}", "command": cmd}
    r = json.loads(results_file.read_text())
    r["command"] = "aideploy " + " ".join(c.replace(str(tmp), "$TMP") for c in cmd[1:])
    return r


# --------------------------------------------------------------------------- report


def fmt_bytes(n: float) -> str:
    return f"{n:,.0f}"


def print_table(headers: list[str], rows: list[list[str]], left: int = 1) -> None:
    """Columns before ``left`` are left-aligned, the rest right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(cells))

    say(line(headers).rstrip())
    say("  ".join("-" * w for w in widths))
    for r in rows:
        say(line(r).rstrip())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions: a smoke run (~2-3 min)")
    ap.add_argument("--no-http", action="store_true", help="skip the end-to-end HTTP run")
    args = ap.parse_args()
    quick = args.quick
    reps = 60 if quick else 400
    batch = 4096 if quick else 16384
    seal_reps = 2 if quick else 5
    lib_reps = {"784x10": 1 if quick else 3, "64x10": 1 if quick else 2}
    http_limit = 60 if quick else 300

    started = time.time()
    m = machine()
    now = datetime.datetime.now(datetime.timezone.utc)
    say(f"aideploy encrypted scoring benchmark -- {now:%Y-%m-%d %H:%M:%S} UTC")
    say(f"command: .venv/bin/python bench/run.py{' --quick' if quick else ''}   (commit {m['commit']})")
    say(f"machine: {m['cpu']} ({' '.join(m['vector_flags'])}), nproc={m['nproc']}, {m['mem_gib']} GiB, Python {m['python']} "
        f"({platform.system()} {platform.release()})")
    say(f"load average at start: {os.getloadavg()[0]:.2f}  "
        f"(OpenBLAS default threads: {blas_threads()}, OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')})")

    import sklearn

    import encrypted.inference  # noqa: F401

    progress("training the models")
    data = make_data()
    rng = np.random.default_rng(1)
    say(f"numpy {np.__version__}, scikit-learn {sklearn.__version__}; reps: fast {reps}, seal {seal_reps}, "
        f"EIServer {lib_reps['784x10']}/{lib_reps['64x10']}, fast batch {batch} samples")
    for name, d in data.items():
        say(f"model {name}: LogisticRegression on digits{' upsampled to 28x28' if name == '784x10' else ''}, "
            f"{len(d['X_train'])} train / {len(d['X_test'])} test, plaintext accuracy {d['accuracy']:.4f}, "
            f"max |w| {np.abs(d['coef']).max():.3f}")

    fast, seal, concrete = {}, {}, {}
    for name, d in data.items():
        progress(f"fast {name}")
        fast[name] = bench_fast(d, reps, batch, rng)

    with tempfile.TemporaryDirectory(prefix="aideploy-bench-") as tmpdir:
        tmp = Path(tmpdir)
        progress("Concrete-ML (subprocess in bench/.venv-concrete)")
        cml = bench_concrete(data, quick, tmp)
        concrete = cml.get("models", {})

        from encrypted.inference.eiclient import EILinearRegressionClient

        from aideploy_scoring.seal_ei import prepare_keys

        progress("encrypted-inference keys")
        t0 = time.perf_counter()
        ei_client = EILinearRegressionClient()  # never verbose=True: it prints the secret key
        key_id, public_keys = ei_client.get_public_keys()
        ei_keygen_s = time.perf_counter() - t0
        prepare_ms, _, prepared = timed_ms(lambda: prepare_keys(public_keys), 3)
        for name, d in data.items():
            progress(f"seal {name} (EIServer.predict x{lib_reps[name]}, ~10 s each)")
            seal[name] = bench_seal(d, ei_client, key_id, public_keys, prepared, seal_reps, lib_reps[name])

        http = http_plain = {"error": "skipped (--no-http)"}
        if not args.no_http:
            progress(f"end-to-end HTTP run, {http_limit} single-sample requests")
            http = bench_http(data["784x10"], http_limit, tmp)
            progress(f"end-to-end HTTP run without encryption (baseline), {http_limit} requests")
            http_plain = bench_http(data["784x10"], http_limit, tmp, "none")

    # ------------------------------------------------------------------ the table
    say("")
    say("== per-query costs (one sample per query; medians) ==")
    headers = ["model / scheme", "server ms/q", "encrypt ms", "decrypt ms",
               "key B", "query B", "response B", "batch samples/s", "max |err|"]
    rows = []
    for name in data:
        f, s = fast[name], seal[name]
        rows.append([f"{name} fast (ours)", f"{f['server_ms']:.3f}",
                     f"{f['enc_ms']:.2f}", f"{f['dec_ms']:.2f}", fmt_bytes(f["key_B"]), fmt_bytes(f["query_B"]),
                     fmt_bytes(f["response_B"]), f"{f['batch_sps']:,.0f}", f"{f['max_err']:.1e}"])
        rows.append([f"{name} seal SealLinearServer", f"{s['server_ms']:.1f}",
                     f"{s['enc_ms']:.1f}", f"{s['dec_ms']:.1f}", fmt_bytes(s["key_B"]), fmt_bytes(s["query_B"]),
                     fmt_bytes(s["response_B"]), f"{s['batch_sps']:.2f}", f"{s['max_err']:.1e}"])
        rows.append([f"{name} seal EIServer (library)", f"{s['lib_ms']:.0f}",
                     f"{s['enc_ms']:.1f}", f"{s['dec_ms']:.1f}", fmt_bytes(s["key_B"]), fmt_bytes(s["query_B"]),
                     fmt_bytes(s["response_B"]), f"{s['lib_batch_sps']:.3f}", f"{s['max_err']:.1e}"])
        if name in concrete:
            c = concrete[name]
            rows.append([f"{name} Concrete-ML LR 8-bit", f"{c['server_ms']:.2f}",
                         f"{c['encrypt_ms']:.2f}", f"{c['decrypt_ms']:.2f}", fmt_bytes(c["key_bytes"]),
                         fmt_bytes(c["query_bytes"]), fmt_bytes(c["response_bytes"]), f"{c['batch_sps']:,.1f}",
                         f"{c['max_abs_err']:.1e}"])
    print_table(headers, rows)
    say("server ms/q: request bytes -> response bytes in the scoring code (fast: the fresh public-key")
    say("encryptions of zero included). batch samples/s: fast = column layout, one thread;")
    say("seal = 1000/ms (no batching); Concrete-ML = decision_function(fhe='execute') on a batch.")
    say("max |err|: decrypted logits vs the plaintext model (Concrete-ML: 8-bit quantisation error).")
    if "error" in cml:
        say(f"Concrete-ML: not importable ({cml['error']})")
    else:
        say(f"Concrete-ML {cml.get('concrete_ml')} (torch {cml.get('torch')}, numpy {cml.get('numpy')}, "
            f"Python {cml.get('python')}) in bench/.venv-concrete: "
            + "; ".join(f"{n}: compile {c['compile_s']:.1f} s, keygen {c['keygen_s']:.2f} s, "
                        f"{c['pbs_count']} PBS, argmax agreement {c['argmax_agreement']:.2f}, "
                        f"server reps {c['reps']}, batch {c['batch_samples']} samples"
                        for n, c in concrete.items()))
    say(f"encrypted-inference: client key generation {ei_keygen_s:.2f} s, prepare_keys {prepare_ms:.0f} ms "
        f"(cached by the service); EIServer.predict times ms: "
        + "; ".join(f"{n} {[round(t) for t in s['lib_times_ms']]}" for n, s in seal.items()))

    say("")
    say("== fast batch mode (column layout, one query; samples/s of server compute) ==")
    headers = ["model", "samples/query", "B/sample up", "B/sample down", "samples/s (one thread)", "max |err| / bound"]
    rows = []
    for name in data:
        b = fast[name]["batch"]
        rows.append([name, f"{b['samples']:,}", fmt_bytes(b["query_B_per_sample"]), fmt_bytes(b["response_B_per_sample"]),
                     f"{b['sps']:,.0f}", f"{b['max_err']:.1e} / {b['error_bound']:.1e}"])
    print_table(headers, rows)
    say(f"up to {batch} samples per query (what a service at max_error 1e-2 covers), encryptions of zero "
        "included; median of 5 runs. Key bundle load "
        "(one-off, cached): " + ", ".join(f"{n} {fast[n]['key_load_ms']:.1f} ms" for n in data) + ".")
    say("fast error bound (guaranteed) / flood margin bits: "
        + ", ".join(f"{n} {fast[n]['error_bound']:.1e} / {fast[n]['flood_margin_bits']:.1f}" for n in data)
        + "; argmax agreement with the plaintext model: "
        + ", ".join(f"{n} {fast[n]['agreement']:.3f}" for n in data))

    say("")
    say("== end-to-end HTTP (784x10, encryption=fast, one sample per request, localhost) ==")
    if http.get("error") or http.get("status") != "ok":
        say(f"not measured: {http.get('error')}")
    else:
        lat = http["latency_ms"]
        say(f"command: {http['command']}")
        say(f"status {http['status']}, {http['n_samples']} requests, latency ms p50 {lat['p50']:.2f}  "
            f"p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}; accuracy {http['accuracy']:.4f} "
            f"(plaintext {http['plaintext_accuracy']:.4f}), agreement {http['agreement']}, "
            f"max score error {http['max_score_error']:.1e}; bytes {http['bytes']}")
    if http_plain.get("status") == "ok":
        lat = http_plain["latency_ms"]
        say(f"baseline, same service and data with encryption=none (JSON floats): latency ms p50 {lat['p50']:.2f}  "
            f"p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}; bytes {http_plain['bytes']}")
    elif not args.no_http:
        say(f"baseline encryption=none not measured: {http_plain.get('error')}")

    say("")
    say("== ratios (same run; server ms/q of the anchor / server ms/q of fast) ==")
    for name in data:
        f, s = fast[name], seal[name]
        parts = [("encrypted-inference EIServer.predict (library)", s["lib_ms"]),
                 ("SealLinearServer, cached keys", s["server_ms"])]
        if name in concrete:
            parts.append(("Concrete-ML LogisticRegression", concrete[name]["server_ms"]))
        for label, anchor in parts:
            say(f"{name}  fast vs {label:<47} {anchor / f['server_ms']:>12,.0f}x")

    # ------------------------------------------------------------------ targets
    say("")
    say("== targets (784x10 unless noted) ==")
    f, f64, s = fast["784x10"], fast["64x10"], seal["784x10"]
    c = concrete.get("784x10")
    http_ok = http.get("status") == "ok"
    batch_sps = f["batch"]["sps"]

    targets = [
        ("server compute per query median <= 0.5 ms", f"{f['server_ms']:.3f} ms",
         f["server_ms"] <= TARGETS_MS["server_784"]),
        (">= 100x faster than Concrete-ML", f"{c['server_ms'] / f['server_ms']:,.0f}x" if c
         else "n/a (Concrete-ML not run)", (c["server_ms"] / f["server_ms"] >= 100) if c else None),
        (">= 10,000x faster than encrypted-inference", f"{s['lib_ms'] / f['server_ms']:,.0f}x vs EIServer; "
         f"{s['server_ms'] / f['server_ms']:,.0f}x vs SealLinearServer", s["lib_ms"] / f["server_ms"] >= 10_000),
        ("64x10 server per query <= 0.1 ms", f"{f64['server_ms']:.3f} ms", f64["server_ms"] <= TARGETS_MS["server_64"]),
        ("query <= 50 KB (51,200 B)", f"{f['query_B']:,} B", f["query_B"] <= 50 * 1024),
        ("response <= 100 KB (102,400 B)", f"{f['response_B']:,} B", f["response_B"] <= 100 * 1024),
        ("key material uploaded <= 256 KB", f"{f['key_B']:,} B", f["key_B"] <= 256 * 1024),
        (">= 100,000 samples/s batch (one thread)", f"{batch_sps:,.0f}/s ({f['batch']['samples']:,} per query)",
         batch_sps >= 100_000),
        ("HTTP round trip p50 <= 20 ms", f"{http['latency_ms']['p50']:.2f} ms" if http_ok else "n/a",
         (http["latency_ms"]["p50"] <= TARGETS_MS["http_p50"]) if http_ok else None),
    ]
    print_table(["target", "measured", "met"],
                [[t, v, {True: "yes", False: "NO", None: "n/a"}.get(ok, ok)] for t, v, ok in targets], left=3)
    say("")
    say(f"load average at end: {os.getloadavg()[0]:.2f}; wall time {time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
