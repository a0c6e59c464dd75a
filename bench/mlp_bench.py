"""Short bench of scoring/fastmlp.py: server compute per query (all rounds) and traffic, 784->64->10
on digits upsampled to 28x28, beside the linear anchor (fastlinear, 784->10). Single process, no HTTP.
Single queries use the parameters a service chooses with the default configuration (max_error
1e-3, one sample per query); the batches those of a service configured for them (max_error 1e-2,
max_samples_per_query 4096), whose flooding covers a full block.

    PYTHONPATH=... python bench/mlp_bench.py [n_queries]

With ``--http``: the same model served by ``aideploy mode=serve encryption=fast environment=current``
(the real azmlinfsrv, one worker, keys in a local Azurite), and a client running every round over
HTTP on a keep-alive connection: the wall time per query, all rounds (client encryption,
decryption and ReLU included), and the HTTP time alone (the sum of the rounds' POSTs).

    PYTHONPATH=... AIDEPLOY_NODE_MODULES=... python bench/mlp_bench.py --http [n_queries]

With ``--concrete`` (after the in-process or HTTP part): Concrete-ML's ``NeuralNetClassifier``
(ReLU, 4-bit, the same hidden sizes: 64->32->10 on digits, 784->64->10 on the 28x28 digits, same
training split) run by ``bench/concrete_mlp_part.py`` in ``bench/.venv-concrete``, beside our
server compute per query (all rounds, ``MLPServer.score``) on MLPs of the same sizes, with the
speed ratio. A few encrypted samples only: Concrete-ML takes seconds per sample.

    PYTHONPATH=... python bench/mlp_bench.py --concrete [n_queries]
"""

import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from aideploy_scoring import fastmlp as fm
from aideploy_scoring.fastlinear import FastClient, FastServer, choose_params
from aideploy_scoring.linearize import fold_mlp

args = [a for a in sys.argv[1:] if a not in ("--http", "--concrete")]
n_queries = int(args[0]) if args else 20
X, y = load_digits(return_X_y=True)
X = np.kron((X / 16.0).reshape(-1, 8, 8), np.ones((4, 4)))[:, 2:30, 2:30].reshape(len(X), 784)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = MLPClassifier((64,), max_iter=60, random_state=0).fit(X[:1400], y[:1400])
layers, act = fold_mlp(model)
SECRET = b"bench-secret-bench-secret-bench!"


def served(lay, a, **choice):
    """Server, client and loaded key for the parameters a service would choose (``choice``: the
    configuration, ``max_error`` and ``min_samples``; default: the default configuration's)."""
    params = fm.choose_params(lay, a, max_error=choice.get("max_error", 1e-3), min_samples=choice.get("min_samples", 1))
    server = fm.MLPServer(lay, a, params, secret=SECRET)
    client = fm.MLPClient(server.sizes, a, params)
    return server, client, server.load_public(client.public_bundle())


def in_process():
    server, client, public = served(layers, act)
    server_s, traffic = [], []

    def send(message, server=server, public=public):
        t0 = time.perf_counter()
        answer = server.score(message, public)
        server_s[-1] += time.perf_counter() - t0
        traffic[-1] += len(message) + len(answer)
        return answer


    Xt = X[1400:1400 + n_queries + 2]
    for i in range(len(Xt)):
        server_s.append(0.0)
        traffic.append(0)
        client.predict(Xt[i], send)
    server_s, traffic = server_s[2:], traffic[2:]  # first two: warm-up (numba's compile, with AIDEPLOY_KERNELS=jit)
    batch_server, batch_client, batch_public = served(layers, act, max_error=1e-2, min_samples=4096)

    def send_batch(message):
        return send(message, batch_server, batch_public)

    server_s.append(0.0)
    traffic.append(0)
    Xb = X[1400:]
    got = batch_client.predict(Xb, send_batch)
    batch_s = server_s.pop()
    traffic.pop()
    want = model.predict_proba(Xb).argmax(1)
    # a full block: the batch layout's cost is per block of N = 4096 samples, however many it holds
    Xf = X[np.arange(4096) % len(X)]
    server_s.append(0.0)
    traffic.append(0)
    full_agree = (batch_client.predict(Xf, send_batch).argmax(1) == model.predict_proba(Xf).argmax(1)).mean()
    full_s = server_s.pop()
    traffic.pop()
    lin_w = layers[-1][0] @ layers[0][0]  # a 784x10 linear model of the same shape as the anchor
    lin = FastServer(lin_w * 0.01, np.zeros(10), choose_params(lin_w * 0.01, np.zeros(10)))
    lc = FastClient(784, 10, lin.params)
    lp = lin.load_public(lc.public_bundle())
    lin_s = []
    for i in range(n_queries + 2):
        q = lc.encrypt(Xt[i])
        t0 = time.perf_counter()
        r = lin.predict(q, lp)
        lin_s.append(time.perf_counter() - t0)
    print(f"MLP 784-64-10: params {server.params}, error_bound {server.error_bound:.2e}, "
          f"flood_margin_bits {server.plan.margin_bits:.1f}, samples per query within 2^-40 {server.max_samples}")
    print(f"batches: params {batch_server.params}, error_bound {batch_server.error_bound:.2e}, "
          f"samples per query within 2^-40 {batch_server.max_samples}")
    print(f"server compute per query, all rounds: p50 {1e3 * np.median(server_s):.2f} ms "
          f"(min {1e3 * min(server_s):.2f}) over {n_queries} queries")
    print(f"traffic per query, all rounds: {traffic[0] / 1024:.1f} KB; public bundle {len(client.public_bundle()) / 1024:.1f} KB")
    print(f"batch of {len(Xb)}: server {batch_s * 1e3:.0f} ms = {len(Xb) / batch_s:.0f} samples/s; "
          f"agreement with sklearn {(got.argmax(1) == want).mean():.4f}")
    print(f"batch of {len(Xf)} (one full block): server {full_s * 1e3:.0f} ms = {len(Xf) / full_s:.0f} samples/s; "
          f"agreement {full_agree:.4f}")
    print(f"linear anchor 784-10 (fastlinear row, one round): p50 {1e3 * np.median(lin_s[2:]):.2f} ms; "
          f"query+response {(len(q) + len(r)) / 1024:.1f} KB")


def over_http():
    import json
    import os
    import secrets
    import shutil
    import signal
    import subprocess
    import tempfile
    from pathlib import Path

    import joblib
    import requests

    from aideploy.azurite import dev_connection_string
    from aideploy.blobkeys import BlobKeyStore
    from aideploy_scoring.fastlinear import FastParams
    from aideploy_scoring.inputranges import InputRanges

    tmp = Path(tempfile.mkdtemp(prefix="aideploy-mlpbench-"))
    key = secrets.token_urlsafe(24)
    proc = None
    try:
        joblib.dump(model, tmp / "mlp.pkl")
        np.save(tmp / "rows.npy", X[1400:1500])
        out = tmp / "out"
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("aideploy")), f"home={tmp / 'home'}", f"hydra.run.dir={out}",
             "mode=serve", "encryption=fast", "environment=current", "model=sklearn_pickle",
             f"model.path={tmp / 'mlp.pkl'}", "data=npy", f"data.path={tmp / 'rows.npy'}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "AIDEPLOY_SCORING_KEY": key})
        deadline = time.monotonic() + 300
        while not (out / "endpoint.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the service did not start:\n" + (proc.stdout.read() if proc.poll() is not None else ""))
            time.sleep(0.2)
        uri = json.loads((out / "endpoint.json").read_text())["scoring_uri"]
        auth = {"Authorization": f"Bearer {key}"}
        described = requests.get(uri, headers=auth, timeout=60).json()
        fast = described["fast"]
        client = fm.MLPClient(fast["mlp"]["sizes"], fast["mlp"]["activation"],
                              FastParams.from_json(json.dumps(fast["params"]).encode()))
        ranges = InputRanges.from_json(fast["input_ranges"])  # each feature's: rows are mapped into [-1, 1]
        # the keys go to the service's own key store (its Azurite), the only one it fetches from
        with BlobKeyStore.from_connection_string(dev_connection_string(described["keystore"]["url"]),
                                                 "benchkeys") as keys:
            url = keys.put(client.key_id, client.public_bundle())
            session = requests.Session()
            session.headers.update({**auth, "Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
                                    "X-Aideploy-Key-Id": client.key_id, "X-Aideploy-Key-Url": url})
            http_s, traffic, wall, agree = [], [], [], []

            def send(message):
                t0 = time.perf_counter()
                answer = session.post(uri, data=message, timeout=60)
                http_s[-1] += time.perf_counter() - t0
                assert answer.status_code == 200, answer.text
                traffic[-1] += len(message) + len(answer.content)
                return answer.content

            rows = X[1400:1400 + n_queries + 3]
            for x in rows:
                http_s.append(0.0)
                traffic.append(0)
                t0 = time.perf_counter()
                logits = client.predict(ranges.normalize(x[None]), send)
                wall.append(time.perf_counter() - t0)
                agree.append(int(logits.argmax()) == int(model.predict(x[None])[0]))
            session.close()
        wall, http_s = wall[3:], http_s[3:]  # first three: warm-up (key fetch, connection)
        print(f"HTTP 784-64-10, one azmlinfsrv worker, {n_queries} queries one sample each: "
              f"wall per query, all rounds, p50 {1e3 * np.median(wall):.2f} ms "
              f"(p90 {1e3 * np.percentile(wall, 90):.2f}); HTTP alone p50 {1e3 * np.median(http_s):.2f} ms; "
              f"traffic per query {traffic[-1] / 1024:.1f} KB; agreement {np.mean(agree[3:]):.3f}")
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        shutil.rmtree(tmp, ignore_errors=True)


def server_ms_per_query(layers, act, rows) -> float:
    """Median ``MLPServer.score`` time per single-sample query, all rounds (two warm-up queries)."""
    server, client, public = served(layers, act)
    times = []

    def send(message):
        t0 = time.perf_counter()
        answer = server.score(message, public)
        times[-1] += time.perf_counter() - t0
        return answer

    for x in rows:
        times.append(0.0)
        client.predict(x, send)
    return 1e3 * float(np.median(times[2:]))


def versus_concrete(samples: int = 3):
    """Concrete-ML's NeuralNetClassifier of the same sizes in its venv, beside our server compute."""
    import tempfile
    from pathlib import Path

    from run import run_concrete_part

    X8 = load_digits().data / 16.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = MLPClassifier((32,), max_iter=60, random_state=0).fit(X8[:1400], y[:1400])
    ours = {"64-32-10": (X8, small, fold_mlp(small)), "784-64-10": (X, model, (layers, act))}
    arrays = {"names": np.array(list(ours))}
    for name, (Xs, _, (lay, _)) in ours.items():
        arrays.update({f"{name}_hidden": lay[0][0].shape[0], f"{name}_X_train": Xs[:1400],
                       f"{name}_y_train": y[:1400], f"{name}_X_test": Xs[1400:], f"{name}_y_test": y[1400:]})
    with tempfile.TemporaryDirectory(prefix="aideploy-mlpbench-concrete-") as tmp:
        cml = run_concrete_part("concrete_mlp_part.py", arrays, Path(tmp), ["--samples", str(samples)], timeout=1800)
    if "error" in cml:
        print(f"Concrete-ML: not run ({cml['error']})")
        return
    print(f"\nConcrete-ML {cml['concrete_ml']} (torch {cml['torch']}) NeuralNetClassifier, ReLU, 4-bit, "
          f"server FHEModelServer.run per sample (median of {samples}) vs our MLPServer.score, all rounds, "
          f"median of {n_queries} single-sample queries:")
    print("| model | ours ms/query | Concrete-ML ms/sample | speed-up | Concrete-ML eval keys | "
          "Concrete-ML query + response | accuracy: ours (plaintext MLP) / Concrete-ML (clear, quantised) | "
          "Concrete-ML FHE = clear |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (Xs, mlp, (lay, a)) in ours.items():
        c = cml["models"][name]
        mine = server_ms_per_query(lay, a, Xs[1400:1400 + n_queries + 2])
        print(f"| {name} | {mine:.2f} | {c['server_ms_median']:.0f} | {c['server_ms_median'] / mine:,.0f}x | "
              f"{c['key_bytes'] / 2**20:.1f} MB | {(c['query_bytes'] + c['response_bytes']) / 1024:.1f} KB | "
              f"{mlp.score(Xs[1400:], y[1400:]):.3f} / {c['clear_quantized_accuracy']:.3f} | "
              f"{c['fhe_vs_clear_agreement']:.2f} on {c['fhe_samples']} |")


if __name__ == "__main__":
    over_http() if "--http" in sys.argv[1:] else in_process()
    from aideploy_scoring import fastkernels_aot

    print(f"kernels (this process): {fastkernels_aot.STATUS['kernels']} "
          f"({fastkernels_aot.STATUS['build'] or fastkernels_aot.STATUS['why']})")
    if "--concrete" in sys.argv[1:]:
        versus_concrete()
