"""Short bench of scoring/fastmlp.py: server compute per query (all rounds) and traffic, 784->64->10
on digits upsampled to 28x28, beside the linear anchor (fastlinear, 784->10). Single process, no HTTP.

    PYTHONPATH=... python bench/mlp_bench.py [n_queries]
"""

import sys
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits
from sklearn.neural_network import MLPClassifier

from aideploy_scoring import fastmlp as fm
from aideploy_scoring.fastlinear import FastClient, FastServer
from aideploy_scoring.linearize import fold_mlp

n_queries = int(sys.argv[1]) if len(sys.argv) > 1 else 20
X, y = load_digits(return_X_y=True)
X = np.kron((X / 16.0).reshape(-1, 8, 8), np.ones((4, 4)))[:, 2:30, 2:30].reshape(len(X), 784)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    model = MLPClassifier((64,), max_iter=60, random_state=0).fit(X[:1400], y[:1400])
layers, act = fold_mlp(model)
server = fm.MLPServer(layers, act, secret=b"bench-secret-bench-secret-bench!")
client = fm.MLPClient(server.sizes, act, server.params)
public = server.load_public(client.public_bundle())
server_s, traffic = [], []


def send(message):
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
server_s, traffic = server_s[2:], traffic[2:]  # first two: warm-up (numba compile)
server_s.append(0.0)
traffic.append(0)
Xb = X[1400:]
got = client.predict(Xb, send)
batch_s = server_s.pop()
traffic.pop()
want = model.predict_proba(Xb).argmax(1)
lin_w = layers[-1][0] @ layers[0][0]  # a 784x10 linear model of the same shape as the anchor
lin = FastServer(lin_w * 0.01, np.zeros(10))
lc = FastClient(784, 10, lin.params)
lp = lin.load_public(lc.public_bundle())
lin_s = []
for i in range(n_queries + 2):
    q = lc.encrypt(Xt[i])
    t0 = time.perf_counter()
    r = lin.predict(q, lp)
    lin_s.append(time.perf_counter() - t0)
print(f"MLP 784-64-10: params {server.params}, error_bound {server.error_bound:.2e}, "
      f"flood_margin_bits {server.plan.margin_bits:.1f}")
print(f"server compute per query, all rounds: p50 {1e3 * np.median(server_s):.2f} ms "
      f"(min {1e3 * min(server_s):.2f}) over {n_queries} queries")
print(f"traffic per query, all rounds: {traffic[0] / 1024:.1f} KB; public bundle {len(client.public_bundle()) / 1024:.1f} KB")
print(f"batch of {len(Xb)}: server {batch_s * 1e3:.0f} ms = {len(Xb) / batch_s:.0f} samples/s; "
      f"agreement with sklearn {(got.argmax(1) == want).mean():.4f}")
print(f"linear anchor 784-10 (fastlinear row, one round): p50 {1e3 * np.median(lin_s[2:]):.2f} ms; "
      f"query+response {(len(q) + len(r)) / 1024:.1f} KB")
