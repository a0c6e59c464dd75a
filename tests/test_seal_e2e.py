"""encryption=seal end to end: encrypted-inference, keys in Azurite, the real azmlinfsrv."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
from azure.storage.blob import BlobServiceClient

from conftest import SERVE_KEY as KEY, Cli, results_of, served
from aideploy.azurite import AzuriteServer


@pytest.fixture
def azurite():
    with AzuriteServer() as server:
        yield server


def test_seal_round_trip_leaves_no_blob_and_no_secret(cli, azurite, tmp_path):
    secret_file = tmp_path / "secret.txt"
    proc = cli("encryption=seal", "data.limit=4", "plugins=[secret_capture_plugin]",
               "keystore.connection_string_env=TEST_AZURITE", "keystore.container=roundtrip",
               env={"TEST_AZURITE": azurite.connection_string, "PYTEST_AIDEPLOY_SECRET_FILE": str(secret_file)})
    assert proc.returncode == 0, proc.stderr
    results = results_of(proc.out)
    assert results["agreement"] == 1.0 and results["max_score_error"] <= 1e-3
    assert results["bytes"]["keys"] > 1_000_000  # encrypted-inference's public keys are ~9 MB
    # the public keys blob was deleted at teardown
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client("roundtrip")
    assert list(container.list_blobs()) == []
    # the secret key appears nowhere: not on the terminal, not in any file of the run
    secret = secret_file.read_text()
    assert len(base64.b64decode(secret)) == 64
    needles = [secret.encode(), base64.b64decode(secret)]
    haystacks = [proc.stdout.encode(), proc.stderr.encode()]
    haystacks += [p.read_bytes() for p in proc.out.rglob("*") if p.is_file()]
    assert len(haystacks) > 5
    for needle in needles:
        assert not any(needle in hay for hay in haystacks)


def test_seal_with_its_own_azurite(cli):
    proc = cli("encryption=seal", "data.limit=2")
    assert proc.returncode == 0, proc.stderr
    assert results_of(proc.out)["agreement"] == 1.0
    assert "keystore" in results_of(proc.out)["stage_seconds"]


# ---------------------------------------------------------------- a served seal deployment

@pytest.fixture(scope="module")
def seal_service(tmp_path_factory):
    """``aideploy mode=serve encryption=seal`` plus an Azurite for the clients' keys."""
    tmp = tmp_path_factory.mktemp("sealsvc")
    with AzuriteServer() as store, served(Cli(tmp, tmp / "home"), "encryption=seal",
                                          "target.max_request_mb=1", store=store) as uri:
        yield uri, store


class SeedClient:
    """A client written as in seed 000: EILinearRegressionClient, keys in blob storage via a
    connection string, JSON POST, decrypt, argmax."""

    def __init__(self, uri: str, conn_str: str, container: str = "seedkeys"):
        from encrypted.inference.eiclient import EILinearRegressionClient

        self.uri, self.conn_str, self.container = uri, conn_str, container
        self.client = EILinearRegressionClient()
        self.key_id, public_keys = self.client.get_public_keys()
        service = BlobServiceClient.from_connection_string(conn_str)
        try:
            service.create_container(container)
        except Exception:
            pass
        service.get_blob_client(container, self.key_id).upload_blob(public_keys, overwrite=True)

    def body(self, x) -> dict:
        return {"data": self.client.encrypt(x), "key_id": self.key_id, "conn_str": self.conn_str,
                "container": self.container}

    def post(self, body, **kwargs):
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(self.uri, data=data, headers={"Authorization": f"Bearer {KEY}",
                                                           "Content-Type": "application/json"}, timeout=120,
                             **kwargs)

    def predict(self, x) -> int:
        response = self.post(self.body(x))
        assert response.status_code == 200, response.text
        return int(np.argmax(self.client.decrypt(response.json())))


@pytest.fixture(scope="module")
def seed_client(seal_service):
    uri, store = seal_service
    return SeedClient(uri, store.connection_string)


def test_seed_000_client_against_a_served_seal_deployment(seed_client):
    from sklearn.linear_model import LogisticRegression

    from aideploy.datasets import digits_split

    X_train, X_test, y_train, y_test = digits_split(0.25, 0)
    model = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(X_train, y_train)
    for x in X_test[:3]:
        assert seed_client.predict(x) == model.predict([x])[0]


def bad_bodies(client: SeedClient):
    good = client.body(np.zeros(64))
    ciphertext = base64.b64decode(good["data"][0])
    sas_less = BlobServiceClient.from_connection_string(client.conn_str).get_blob_client(
        client.container, client.key_id).url
    yield "malformed JSON", b'{"data": [', 400
    yield "not an object", b"[1, 2]", 400
    yield "missing data", {k: v for k, v in good.items() if k != "data"}, 400
    yield "data of the wrong type", {**good, "data": "abc"}, 400
    yield "key_id of the wrong type", {**good, "key_id": 7}, 400
    yield "garbage base64", {**good, "data": ["!!!not base64!!!"]}, 400
    yield "ciphertext of the wrong size", {**good, "data": [base64.b64encode(ciphertext[:-100]).decode()]}, 400
    yield "ciphertext bytes scrambled", {**good, "data": [base64.b64encode(ciphertext[:16] + bytes(
        len(ciphertext) - 16)).decode()]}, 400
    yield "unknown key_id", {**good, "key_id": "nosuchkey"}, 404
    yield "forged SAS", {k: v for k, v in {**good, "key_url": sas_less + "?sv=2021-08-06&sr=b&sp=r&se="
                                           "2099-01-01T00:00:00Z&sig=Zm9yZ2Vk"}.items()
                         if k not in ("conn_str", "container")}, 403
    yield "body over the size limit", {**good, "padding": "x" * (2 * 1024 * 1024)}, 413


@pytest.mark.parametrize("case", range(11))
def test_bad_input_gets_a_4xx_and_the_service_keeps_serving(seed_client, case):
    what, body, status = list(bad_bodies(seed_client))[case]
    response = seed_client.post(body)
    assert response.status_code == status, (what, response.text)
    assert "error" in response.json(), what
    assert seed_client.predict(np.zeros(64)) in range(10), f"service broken after {what}"


def test_expired_sas_is_refused(seal_service, seed_client):
    from aideploy.blobkeys import BlobKeyStore

    uri, store = seal_service
    keys = BlobKeyStore.from_connection_string(store.connection_string, "expiring", clock_skew=0)
    _, public_keys = seed_client.client.get_public_keys()
    url = keys.put(seed_client.key_id, public_keys, sas_ttl=1)
    import time

    time.sleep(2.5)
    body = {"data": seed_client.client.encrypt(np.zeros(64)), "key_id": seed_client.key_id, "key_url": url}
    response = seed_client.post(body)
    assert response.status_code == 403, response.text
    keys.delete(seed_client.key_id)


def test_client_decrypt_equals_the_librarys(seed_client):
    from aideploy_plugins.encryption_seal import decrypt_scores

    response = seed_client.post(seed_client.body(np.full(64, 0.25)))
    encrypted = response.json()
    assert np.array_equal(decrypt_scores(seed_client.client, encrypted), seed_client.client.decrypt(encrypted))
    with pytest.raises(TypeError):
        decrypt_scores(seed_client.client, [7])
