"""encryption=fast end to end: our SEAL scheme through Azurite and the real azmlinfsrv."""

from __future__ import annotations

import base64

import joblib
import numpy as np
import pytest
import requests

from aideploy.azurite import AzuriteServer
from aideploy.blobkeys import BlobKeyStore
from aideploy_scoring import fastlinear as fl
from aideploy_scoring.fastlinear import FastClient, FastParams
from conftest import SERVE_KEY, Cli, fast_params, results_of, served
from test_fast_attacks import key_material_at, with_key
from test_local_e2e import mnist_like


def test_fast_on_digits_meets_the_size_targets(cli):
    proc = cli("encryption=fast")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["n_samples"] == 450 and results["agreement"] == 1.0
    assert results["max_score_error"] <= 1e-3
    assert results["bytes"]["keys"] <= 256 * 1024
    assert results["bytes"]["request"] <= 50 * 1024 and results["bytes"]["response"] <= 100 * 1024
    # The kernels were compiled with the scoring environment (or found there, once per machine), and
    # the workers loaded that build: none compiled them, none fell back to numba (each would say so).
    kernels = results["kernels"]
    assert kernels["path"] == "aot" and kernels["made"] in ("built", "reused"), kernels
    server_log = (proc.out / "azmlinfsrv.log").read_text()
    assert not [w for w in ("kernels: jit", "compiled now", "do not load") if w in server_log], server_log[-2000:]
    assert "kernels=aot (" in (proc.out / "aideploy.log").read_text()  # the environment stage says it


def test_fast_batch_mode(cli):
    proc = cli("encryption=fast", "encryption.batch_size=200")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["requests"] == 3 and results["agreement"] == 1.0 and results["max_score_error"] <= 1e-3


def test_fast_on_a_784_feature_model(cli, tmp_path):
    from sklearn.linear_model import LogisticRegression

    images, labels = mnist_like(tmp_path, n=60)
    model = LogisticRegression(C=0.1, max_iter=1000).fit(images.reshape(60, -1) / 255.0, labels)
    joblib.dump(model, tmp_path / "mnist.pkl")
    proc = cli("encryption=fast", "data=mnist_idx", f"data.images={tmp_path / 't10k-images-idx3-ubyte.gz'}",
               f"data.labels={tmp_path / 't10k-labels-idx1-ubyte.gz'}", "model=sklearn_pickle",
               f"model.path={tmp_path / 'mnist.pkl'}")
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["max_score_error"] <= 1e-3
    assert results["bytes"]["request"] <= 50 * 1024 and results["bytes"]["response"] <= 100 * 1024


def test_input_outside_the_supported_range_is_refused(cli):
    proc = cli("encryption=fast", "encryption.x_bound=0.5")
    assert proc.returncode == 2
    assert "outside its range [-0.5, 0.5]" in proc.stderr and "x_bound" in proc.stderr
    assert "deploy" not in results_of(proc.out)["stage_seconds"]  # found before anything is deployed


# ---------------------------------------------------------------- a served fast deployment


class FastCaller:
    def __init__(self, uri: str, store: AzuriteServer):
        self.uri = uri
        self.params = fast_params(uri)
        self.client = FastClient(64, 10, self.params)
        self.keys = BlobKeyStore.from_connection_string(store.connection_string, "fastkeys")
        self.key_url = self.keys.put(self.client.key_id, self.client.public_bundle())

    def headers(self, **overrides) -> dict:
        headers = {"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/octet-stream",
                   "X-Aideploy-Scheme": "fast", "X-Aideploy-Key-Id": self.client.key_id,
                   "X-Aideploy-Key-Url": self.key_url}
        headers.update(overrides)
        return {k: v for k, v in headers.items() if v is not None}

    def post(self, body: bytes, **header_overrides) -> requests.Response:
        return requests.post(self.uri, data=body, headers=self.headers(**header_overrides), timeout=60)

    def scores(self, X: np.ndarray) -> np.ndarray:
        response = self.post(self.client.encrypt(X))
        assert response.status_code == 200, response.text
        return self.client.decrypt(response.content, len(X))


@pytest.fixture(scope="module")
def fast_caller(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fastsvc")
    with AzuriteServer() as store, served(Cli(tmp, tmp / "home"), "encryption=fast",
                                          "target.max_request_mb=1", store=store) as uri:
        yield FastCaller(uri, store)


def test_json_body_works_too(fast_caller):
    query = fast_caller.client.encrypt(np.zeros((1, 64)))
    body = {"scheme": "fast", "data": base64.b64encode(query).decode(), "key_id": fast_caller.client.key_id,
            "key_url": fast_caller.key_url}
    response = requests.post(fast_caller.uri, json=body, headers={"Authorization": f"Bearer {SERVE_KEY}"},
                             timeout=60)
    assert response.status_code == 200, response.text
    assert fast_caller.client.decrypt(base64.b64decode(response.json()["data"]), 1).shape == (1, 10)


def bad_requests(caller: FastCaller):
    good = caller.client.encrypt(np.zeros((1, 64)))
    other = FastClient(64, 10, caller.params)
    yield "garbage bytes", b"\x00garbage" * 100, {}, 400
    yield "truncated query", good[:-10], {}, 400
    yield "query for another key", other.encrypt(np.zeros((1, 64))), {}, 400
    yield "query for 32 features", FastClient(32, 10, caller.params).encrypt(np.zeros((1, 32))), {}, 400
    yield "missing scheme header", good, {"X-Aideploy-Scheme": None}, 400
    yield "unknown scheme", good, {"X-Aideploy-Scheme": "rot13"}, 400
    yield "binary body to a JSON scheme", good, {"X-Aideploy-Scheme": "seal"}, 400
    yield "missing key url", good, {"X-Aideploy-Key-Url": None}, 400
    yield "unknown key_id", good, {"X-Aideploy-Key-Id": "nosuchkey"}, 400
    yield "forged SAS", good, {"X-Aideploy-Key-Url": caller.key_url.rsplit("sig=", 1)[0] + "sig=Zm9yZ2Vk"}, 403
    yield "body over the size limit", good * 40, {}, 413
    yield "no key at all", good, {"Authorization": None}, 401


@pytest.mark.parametrize("case", range(12))
def test_bad_input_gets_a_4xx_and_the_service_keeps_serving(fast_caller, case):
    what, body, headers, status = list(bad_requests(fast_caller))[case]
    response = fast_caller.post(body, **headers)
    assert response.status_code == status, (what, response.text)
    assert response.json()["error"], what
    scores = fast_caller.scores(np.full((1, 64), 0.5))
    assert scores.shape == (1, 10), f"service broken after {what}"


def register(caller: FastCaller, key_id: str, bundle: bytes) -> requests.Response:
    url = caller.keys.put(key_id, bundle)
    body = {"scheme": "fast", "register_key": True, "key_id": key_id, "key_url": url}
    return requests.post(caller.uri, json=body, headers={"Authorization": f"Bearer {SERVE_KEY}"}, timeout=60)


def evil_bundles(caller: FastCaller):
    """Key bundles a dishonest client publishes (issue 27), and what the service must answer."""
    bundle = caller.client.public_bundle()
    yield "all-zero public key", with_key(bundle, bytes(len(bundle) - key_material_at(bundle))), 400, "degenerate"
    own = FastParams(plain_modulus_bits=50, x_scale_bits=14, w_scale_bits=26)
    yield "the client's own parameters", FastClient(64, 10, own).public_bundle(), 400, "parameters"
    yield "a 300 KB key", bundle + bytes(300 * 1024), 413, "limit"


@pytest.mark.parametrize("case", range(3))
def test_a_dishonest_key_is_refused_when_registered(fast_caller, case):
    what, bundle, status, words = list(evil_bundles(fast_caller))[case]
    response = register(fast_caller, f"evil{case}", bundle)
    assert response.status_code == status, (what, response.text)
    assert words in response.json()["error"], what


def test_a_query_with_a_chosen_uniform_polynomial_is_refused(fast_caller):
    """The unseeded query form (flag 1) let the client choose ``a``: gone."""
    query = bytearray(fast_caller.client.encrypt(np.zeros((1, 64))))
    query[6] = 1  # the flags field
    response = fast_caller.post(bytes(query) + b"\x01\x00\x00\x00" * ((len(query) - fl._QUERY_HEADER.size) // 4))
    assert response.status_code == 400, response.text
    assert "unseeded" in response.json()["error"]


# ---------------------------------------------------------------- no cold start

# Runs in a fresh interpreter, as a worker does: init (ScoringService.from_environment), then
# the queries the test made, through handle_http. Prints the kernels' compiled signatures after
# init and after the requests, and writes the answers.
WORKER = r"""
import json, sys
from pathlib import Path
from aideploy_scoring import fastkernels
from aideploy_scoring.service import ScoringService

def signatures():
    return {name: len(kernel.signatures) for name, kernel in vars(fastkernels).items()
            if hasattr(kernel, "signatures")}

service = ScoringService.from_environment()
after_init = signatures()
work = Path(sys.argv[1])
headers = json.loads((work / "headers.json").read_text())
statuses = []
for query in sorted(work.glob("*.query")):
    body = query.read_bytes()
    status, answer = service.handle_http("POST", headers, __import__("io").BytesIO(body), len(body))
    statuses.append(status)
    query.with_suffix(".answer").write_bytes(answer if isinstance(answer, bytes) else json.dumps(answer).encode())
print(json.dumps({"after_init": after_init, "after_requests": signatures(), "statuses": statuses,
                  "numba": "numba" in sys.modules}))
"""


def run_worker(work, model_dir, store: str, prepare: str, kernels: str = "jit") -> dict:
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "AZUREML_MODEL_DIR": str(model_dir), "AIDEPLOY_PREPARE_SCHEMES": prepare,
           "AIDEPLOY_KERNELS": kernels, "AIDEPLOY_KEY_STORE": store}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(work)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_init_compiles_every_kernel_so_no_request_pays_a_compile(tmp_path):
    """After init() the kernels have their signatures, and real queries of every shape add none;
    a worker on the ahead-of-time build answers the same queries without numba."""
    import json

    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    from aideploy_scoring.encrypted import fast_linear_server
    from aideploy_scoring.inputranges import InputRanges
    from aideploy_scoring.service import LinearModel

    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    model = LogisticRegression(max_iter=2000).fit(X, y)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(model, model_dir / "model.pkl")
    # a bare file, no recorded ranges, a model without statistics: the service takes [-1, 1] for each feature
    server = fast_linear_server(LinearModel(model.coef_, model.intercept_), InputRanges.uniform(64, 1.0), 1e-3)
    client = FastClient(64, 10, server.params)
    work = tmp_path / "work"
    work.mkdir()
    shapes = {"1-single": (1, "row"), "2-batch64": (64, "row"), "3-column": (64, "column")}
    with AzuriteServer() as azurite:
        keys = BlobKeyStore.from_connection_string(azurite.connection_string, "warmkeys")
        url = keys.put(client.key_id, client.public_bundle())
        (work / "headers.json").write_text(json.dumps({
            "Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
            "X-Aideploy-Key-Id": client.key_id, "X-Aideploy-Key-Url": url}))
        for name, (n, layout) in shapes.items():
            (work / f"{name}.query").write_bytes(client.encrypt(X[:n], layout=layout))
        cold = run_worker(work, model_dir, azurite.blob_endpoint, "none")
        warm = run_worker(work, model_dir, azurite.blob_endpoint, "none,fast")
        warm_answers = {name: (work / f"{name}.answer").read_bytes() for name in shapes}
        built = run_worker(work, model_dir, azurite.blob_endpoint, "none,fast", kernels="aot")  # as score.py serves
        keys.close()
    # Not prepared: the first requests compile (or load) the kernels; the test can tell.
    assert cold["after_init"]["row_outputs"] == 0 and cold["after_requests"]["row_outputs"] > 0
    # Prepared: everything the requests need is there after init, and they add nothing.
    assert warm["statuses"] == [200] * len(shapes)
    for kernel in ("row_outputs", "column_outputs", "encrypt_zero", "expand_uniform", "residues_below",
                   "row_plaintexts", "bias_phases", "ntt_inverse"):
        assert warm["after_init"][kernel] > 0, kernel
    assert warm["after_requests"] == warm["after_init"]
    assert warm["numba"]
    # The ahead-of-time kernels (fastkernels_aot): the same answers, and numba never imported.
    assert built["statuses"] == [200] * len(shapes) and not built["numba"]
    for name, (n, _) in shapes.items():
        for answer in (warm_answers[name], (work / f"{name}.answer").read_bytes()):
            scores = client.decrypt(answer, n)
            assert np.abs(scores - model.decision_function(X[:n])).max() <= 1e-3, name
