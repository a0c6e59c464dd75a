"""encryption=fast for a ReLU MLP end to end: the interactive rounds (scoring/fastmlp.py) through
the real azmlinfsrv, a real Azurite key store and real SEAL.

A 64->16->10 MLPClassifier trained here on digits is deployed with encryption=fast (mode=run),
served (mode=serve, two workers: any worker serves any round) and predicted against without the
model (mode=predict: the service's GET /score says it is an MLP and gives its sizes and
parameters). A tampered round token, a round out of order and a key over its query budget are
refused with one-line 4xx errors, and the service keeps serving; a spent token is refused by
both workers, a key's budget is the same under another blob name, and the server has every
setting the config gives it.
"""

from __future__ import annotations

import json
import re
import time
import warnings

import joblib
import numpy as np
import pandas as pd
import psutil
import pytest
import requests
from conftest import SERVE_KEY, Cli, results_of, served
from test_service_settings import assert_settings_arrive

from aideploy.azurite import AzuriteServer
from aideploy.blobkeys import BlobKeyStore
from aideploy.datasets import digits_split
from aideploy_scoring import fastmlp as fm
from aideploy_scoring.fastlinear import FastParams
from aideploy_scoring.inputranges import InputRanges

CURRENT = "environment=current"  # serves this checkout's code (conda would install /work/main's)
BUDGET = 600  # max_queries_per_key of the served deployment: above one predict run's 450 samples


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    from sklearn.neural_network import MLPClassifier

    X_train, X_test, y_train, y_test = digits_split(0.25, 0)  # what data=digits serves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence: a small, quick net is the point
        model = MLPClassifier((16,), max_iter=300, random_state=0).fit(X_train, y_train)
    path = tmp_path_factory.mktemp("mlp") / "mlp.pkl"
    joblib.dump(model, path)
    return model, path, X_test, y_test


def test_relu_mlp_runs_end_to_end(cli, mlp):
    model, path, X, _ = mlp
    # The target counts what its predict hook sends: the engine's first rounds and the second rounds
    # the scheme sends through ctx.send, none beside it.
    proc = cli("encryption=fast", CURRENT, "model=sklearn_pickle", f"model.path={path}",
               "predict.batch_size=10", "encryption.max_samples_per_query=10",
               "plugins=[counting_target]", "target.plugin=counting_local")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["n_samples"] == len(X) >= 100
    assert results["agreement"] >= 0.99
    assert results["max_score_error"] <= 1e-3  # against the MLP's own logits in process
    predictions = pd.read_csv(proc.out / "predictions.csv")["prediction"].to_numpy()
    assert np.mean(predictions == model.predict(X)) >= 0.99
    layers = len(model.coefs_)  # one round per layer
    assert results["target_predict"]["requests"] == layers * results["requests"] == layers * -(-len(X) // 10)


def test_the_token_secret_is_shared_by_the_workers_and_in_no_output(cli, mlp):
    import hashlib
    import os

    _, path, X, _ = mlp
    secret = os.urandom(32)
    proc = cli("encryption=fast", CURRENT, "model=sklearn_pickle", f"model.path={path}", "data.limit=40",
               "target.worker_count=2", "predict.concurrency=4", env={"AIDEPLOY_MLP_TOKEN_SECRET": secret.hex()})
    assert proc.returncode == 0, proc.stderr
    assert results_of(proc.out)["agreement"] >= 0.99  # two workers: either may answer any round
    aead_key = hashlib.sha256(b"aideploy-fastmlp-token-key-v1" + secret).digest()
    needles = [secret.hex().encode(), secret.hex().upper().encode(), secret, aead_key, aead_key.hex().encode()]
    haystacks = {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    haystacks.update({str(p): p.read_bytes() for p in proc.out.rglob("*") if p.is_file()})
    assert "azmlinfsrv.log" in {os.path.basename(name) for name in haystacks}
    assert [name for name, hay in haystacks.items() if any(n in hay for n in needles)] == []


def test_an_expired_round_token_is_one_line_with_a_hint(cli, mlp):
    _, path, _, _ = mlp
    # round 2 comes at least one client decryption, encryption and POST after round 1's answer
    proc = cli("encryption=fast", CURRENT, "model=sklearn_pickle", f"model.path={path}", "data.limit=5",
               "encryption.round_ttl_seconds=0.001")
    assert proc.returncode != 0
    assert "HTTP 400" in proc.stderr and "expired" in proc.stderr and "predict.chunk_rows" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_784_feature_mlp_in_batch_mode(cli, tmp_path):
    """784->32->10 on digits upsampled to 28x28, written as MNIST idx files: 397 test images,
    20 per encrypted query; the predictions agree with the model's."""
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from test_local_e2e import write_idx

    X8, y = load_digits(return_X_y=True)
    images = np.rint(np.kron(X8.reshape(-1, 8, 8) / 16.0, np.ones((4, 4)))[:, 2:30, 2:30] * 255).astype(np.uint8)
    X = images.reshape(len(images), -1) / 255.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = MLPClassifier((32,), max_iter=100, random_state=0).fit(X[:1400], y[:1400])
    joblib.dump(model, tmp_path / "mlp784.pkl")
    write_idx(tmp_path / "images.gz", images[1400:])
    write_idx(tmp_path / "labels.gz", y[1400:].astype(np.uint8))
    proc = cli("encryption=fast", CURRENT, "model=sklearn_pickle", f"model.path={tmp_path / 'mlp784.pkl'}",
               "data=mnist_idx", f"data.images={tmp_path / 'images.gz'}", f"data.labels={tmp_path / 'labels.gz'}",
               "encryption.batch_size=20", "encryption.max_samples_per_query=20")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["n_samples"] == 397 and results["agreement"] >= 0.998
    predictions = pd.read_csv(proc.out / "predictions.csv")["prediction"].to_numpy()
    assert np.mean(predictions == model.predict(X[1400:])) >= 0.998


def test_tanh_mlp_is_refused_before_deploying(cli, tmp_path):
    from sklearn.neural_network import MLPClassifier

    X, _, y, _ = digits_split(0.25, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        joblib.dump(MLPClassifier((8,), activation="tanh", max_iter=20).fit(X, y), tmp_path / "tanh.pkl")
    proc = cli("encryption=fast", CURRENT, "model=sklearn_pickle", f"model.path={tmp_path / 'tanh.pkl'}")
    assert proc.returncode == 2
    assert "tanh" in proc.stderr and "relu" in proc.stderr
    assert "azmlinfsrv" not in proc.stderr


class Caller:
    """A model-less client of the served MLP, from what GET /score says."""

    def __init__(self, uri: str, store: AzuriteServer):
        self.uri = uri
        self.auth = {"Authorization": f"Bearer {SERVE_KEY}"}
        info = requests.get(uri, headers=self.auth, timeout=60).json()
        fast = info["fast"]
        self.sizes, self.activation = fast["mlp"]["sizes"], fast["mlp"]["activation"]
        self.client = fm.MLPClient(self.sizes, self.activation,
                                   FastParams.from_json(json.dumps(fast["params"]).encode()))
        self.ranges = InputRanges.from_json(fast["input_ranges"])  # each feature's, to map rows into [-1, 1]
        self.keys = BlobKeyStore.from_connection_string(store.connection_string, "mlpkeys")
        self.key_url = self.keys.put(self.client.key_id, self.client.public_bundle())

    def post(self, body: bytes, key_id: str | None = None) -> requests.Response:
        headers = {**self.auth, "Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
                   "X-Aideploy-Key-Id": key_id or self.client.key_id, "X-Aideploy-Key-Url": self.key_url}
        return requests.post(self.uri, data=body, headers=headers, timeout=60)

    def send(self, message: bytes) -> bytes:
        response = self.post(message)
        assert response.status_code == 200, response.text
        return response.content

    def logits(self, X: np.ndarray) -> np.ndarray:
        return self.client.predict(self.ranges.normalize(X), self.send)


def server_pid(uri: str) -> int:
    """The gunicorn master listening at ``uri``."""
    port = int(uri.split(":")[2].split("/")[0])
    return next(c.pid for c in psutil.net_connections("tcp") if c.laddr.port == port and c.status == "LISTEN")


def refused(response: requests.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error and "\n" not in error


def test_served_mlp_predicts_without_the_model_and_refuses_bad_rounds(cli, mlp, tmp_path):
    model, path, X, y = mlp
    rows = tmp_path / "rows.csv"
    pd.DataFrame(X, columns=[f"pixel{i}" for i in range(X.shape[1])]).assign(digit=y).to_csv(rows, index=False)
    with AzuriteServer() as store, served(Cli(tmp_path / "svc", tmp_path / "home"), "encryption=fast", CURRENT,
                                          "model=sklearn_pickle", f"model.path={path}", "target.worker_count=2",
                                          f"encryption.max_queries_per_key={BUDGET}",
                                          f"encryption.max_samples_per_query={BUDGET + 1}", store=store) as uri:
        # mode=predict knows only the URI: GET /score says MLP, sizes and parameters
        proc = cli("mode=predict", f"scoring_uri={uri}", "encryption=fast", "data=csv", f"data.path={rows}",
                   "data.label_column=digit", "predict.batch_size=25", "predict.concurrency=2",
                   env={"AIDEPLOY_SCORING_KEY": SERVE_KEY})
        assert proc.returncode == 0, proc.stderr
        predictions = pd.read_csv(proc.out / "predictions.csv")["prediction"].to_numpy()
        assert len(predictions) == len(X) >= 100
        assert np.mean(predictions == model.predict(X)) >= 0.99
        assert results_of(proc.out)["accuracy"] >= 0.9

        caller = Caller(uri, store)
        assert caller.sizes == [64, 16, 10] and caller.activation == "relu"
        sample = X[:3]
        first = caller.send(caller.client.encrypt(sample))
        message, _ = caller.client.respond(first, len(sample))
        assert message is not None  # round 2's message: header, token, query
        token_at = 8 + 5  # inside the token, after the round message's 8-byte header
        tampered = bytearray(message)
        tampered[token_at] ^= 0x01
        refused(caller.post(bytes(tampered)), 400, "does not authenticate")
        out_of_order = bytearray(message)
        out_of_order[5] = 1  # claims to be round 1, with a token
        refused(caller.post(bytes(out_of_order)), 400, "takes no token")
        refused(caller.post(message[:-100]), 400, "")
        # the untampered message is still good (refusals spend nothing), and the service serves
        _, logits = caller.client.respond(caller.send(message), len(sample))
        assert (logits.argmax(1) == model.predict(sample)).all()
        # more samples in one query than max_samples_per_query: a 400, which spends nothing
        refused(caller.post(caller.client.encrypt(np.zeros((BUDGET + 2, 64)))), 400, "max_samples_per_query")
        # one key's budget: a query that would take it over max_queries_per_key is a 429
        refused(caller.post(caller.client.encrypt(np.zeros((BUDGET + 1, 64)))), 429, "max_queries_per_key")
        assert (caller.logits(X[3:13]).argmax(1) == model.predict(X[3:13])).mean() >= 0.9

        # Limits that hold across workers. A spent round token, replayed on new connections until
        # both workers have answered it, is refused by each: the spent tokens are the deployment's.
        log = tmp_path / "svc" / "run1" / "azmlinfsrv.log"
        offset = log.stat().st_size
        message, _ = caller.client.respond(caller.send(caller.client.encrypt(X[:1])), 1)
        caller.send(message)
        for attempt in range(400):  # which worker accepts a new connection is the kernel's choice: try until both did
            refused(caller.post(message), 400, "already used")
            if len(set(re.findall(rb"\[(\d+)\] azmlinfsrv - POST /score 400", log.read_bytes()[offset:]))) == 2:
                break
            time.sleep(0.01 * (attempt % 5))  # a busy machine: give the other worker a moment to wait in accept()
        else:
            raise AssertionError("one worker answered every replay")
        # The same public key under another blob name is the same budget (its cryptographic id).
        assert caller.post(caller.client.encrypt(np.zeros((BUDGET - 20, 64)))).status_code == 200
        alias = f"alias-{caller.client.key_id[:16]}"
        caller.key_url = caller.keys.put(alias, caller.client.public_bundle())
        refused(caller.post(caller.client.encrypt(np.zeros((30, 64))), key_id=alias), 429, "max_queries_per_key")

        # target=local forwards every setting the config sets (and the deployment's own stores)
        variables = psutil.Process(server_pid(uri)).environ()
        limits = variables.get("AIDEPLOY_LIMITS_STORE", "")
        assert re.fullmatch(r".*/aideploy-service-[^/]+/limits\.sqlite", limits), limits
        assert_settings_arrive(variables, {
            "WORKER_COUNT": "2", "AIDEPLOY_MAX_REQUEST_BYTES": str(64 * 1024 * 1024),
            "AIDEPLOY_PREPARE_SCHEMES": "none,fast", "AIDEPLOY_MAX_QUERIES_PER_KEY": str(BUDGET),
            "AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY": str(BUDGET + 1), "AIDEPLOY_MLP_TOKEN_TTL": "300.0",
            "AIDEPLOY_MAX_NEW_KEYS_PER_HOUR": "100", "AIDEPLOY_KEY_STORE": store.blob_endpoint,
            "AIDEPLOY_LIMITS_STORE": limits, "AIDEPLOY_FAST_MAX_ERROR": "0.001"},
            not_in_config={"AIDEPLOY_FAST_X_BOUND"}, secrets=True)
        assert "AIDEPLOY_FAST_X_BOUND" not in variables  # unset: each feature's own range
        assert variables.get("AIDEPLOY_MLP_TOKEN_SECRET")  # a secret: to the local server process only
        caller.keys.close()
