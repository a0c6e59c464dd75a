"""The service fetches keys only from its key store (scoring/keyfetch.py), whatever URL or
connection string a client sends: the review's SSRF replayed on the real service classes.

Each worker is built as ``init()`` builds it (``ScoringService.from_environment``) from the
settings ``target=local`` gives it, with a real Azurite as the deployment's key store; every
request goes through ``handle_http``. Where the attack aims is a small HTTP server of the test's
on another loopback port, which records every request that reaches it: a refused attack is one
it never saw.
"""

from __future__ import annotations

import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import joblib
import pytest
from test_keystore import _free_port, azurite  # noqa: F401  (azurite is a module-scoped fixture)

from aideploy.blobkeys import BlobKeyStore
from aideploy_scoring.fastlinear import FastClient, FastParams
from aideploy_scoring.service import ScoringService


class Target(ThreadingHTTPServer):
    """An HTTP server on another loopback port: records each request; answers 200, or a 302 to
    ``redirect`` when set."""

    def __init__(self, redirect: str | None = None):
        self.seen: list[str] = []
        self.redirect = redirect
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                server.seen.append(f"{self.command} {self.path}")
                if server.redirect:
                    self.send_response(302)
                    self.send_header("Location", server.redirect)
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def url(self, key_id: str, host: str = "127.0.0.1") -> str:
        """A SAS-shaped URL of blob ``key_id`` on this server."""
        return (f"http://{host}:{self.port}/devstoreaccount1/keys/{key_id}"
                "?sv=2021-08-06&se=2099-01-01T00%3A00%3A00Z&sr=b&sp=r&sig=Zm9yZ2Vk")

    def __exit__(self, *exc):
        self.shutdown()
        super().__exit__(*exc)


@pytest.fixture
def worker(tmp_path, monkeypatch, azurite):  # noqa: F811
    """One worker of a deployment of a linear model (fast and seal), whose key store is ``azurite``."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(LogisticRegression(max_iter=200).fit(X[:300] / 16, y[:300]), model_dir / "model.pkl")
    for name, value in {"AZUREML_MODEL_DIR": str(model_dir), "AIDEPLOY_KEY_STORE": azurite.blob_endpoint,
                        "AIDEPLOY_LIMITS_STORE": str(tmp_path / "limits.sqlite"),
                        "AIDEPLOY_PREPARE_SCHEMES": "none"}.items():
        monkeypatch.setenv(name, value)
    return ScoringService.from_environment


def register(worker: ScoringService, **fields) -> tuple[int, dict]:
    body = json.dumps({"scheme": "fast", "register_key": True, "key_id": "k" + uuid.uuid4().hex, **fields}).encode()
    status, answer = worker.handle_http("POST", {"Content-Type": "application/json"}, io.BytesIO(body), len(body))
    assert "\n" not in answer.get("error", ""), answer
    return status, answer


def test_the_deployments_own_store_is_fetched_from(worker, azurite):  # noqa: F811
    service = worker()
    params = FastParams.from_json(json.dumps(service.describe()["fast"]["params"]).encode())  # the service's own
    client = FastClient(64, 10, params)
    with BlobKeyStore.from_connection_string(azurite.connection_string, "ssrfkeys") as keys:
        url = keys.put(client.key_id, client.public_bundle())
        assert register(service, key_id=client.key_id, key_url=url) == (200, {"registered": client.key_id})


def test_no_proxy_from_the_environment_is_used(worker, azurite, monkeypatch):  # noqa: F811
    """A proxy set in the service's environment would be the peer the address checks see; the key
    is fetched from the store itself and the proxy is never contacted."""
    service = worker()
    params = FastParams.from_json(json.dumps(service.describe()["fast"]["params"]).encode())
    client = FastClient(64, 10, params)
    with Target() as proxy, BlobKeyStore.from_connection_string(azurite.connection_string, "proxykeys") as keys:
        url = keys.put(client.key_id, client.public_bundle())  # the test's own upload: before any proxy is set
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.port}")
        assert register(service, key_id=client.key_id, key_url=url) == (200, {"registered": client.key_id})
        assert proxy.seen == []
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)  # the store's clean-up goes direct


def test_another_loopback_port_is_never_contacted_and_open_and_closed_ports_look_alike(worker):
    service = worker()
    closed = _free_port()
    with Target() as target:
        kid = "k" + uuid.uuid4().hex
        open_port = register(service, key_id=kid, key_url=target.url(kid))
        closed_port = register(service, key_id=kid, key_url=target.url(kid).replace(str(target.port), str(closed)))
        assert target.seen == []
    assert open_port[0] == closed_port[0] == 400
    assert "is not allowed: this service's key store is 127.0.0.1:" in open_port[1]["error"]
    # no port-scan oracle: the same status and the same words, whether something listens or not
    assert open_port[1]["error"].replace(str(target.port), "PORT") == closed_port[1]["error"].replace(str(closed),
                                                                                                     "PORT")


def test_private_and_loopback_addresses_are_refused_even_when_an_operator_allows_every_host(worker, monkeypatch):
    monkeypatch.setenv("AIDEPLOY_KEY_HOSTS", "*:*")  # any host, any port: still never a private address
    service = worker()
    with Target() as target:
        kid = "k" + uuid.uuid4().hex
        for host in ("localhost", "127.0.0.1", "127.1.2.3"):
            status, answer = register(service, key_id=kid, key_url=target.url(kid, host))
            assert status == 400 and "private address" in answer["error"], (host, answer)
        assert target.seen == []
    monkeypatch.delenv("AIDEPLOY_KEY_HOSTS")
    status, answer = register(worker(), key_id=kid, key_url=target.url(kid, "10.255.0.1"))
    assert status == 400 and "is not allowed" in answer["error"]  # refused before any connection attempt


def test_a_redirect_from_the_store_is_not_followed(worker, monkeypatch):
    with Target() as elsewhere, Target(redirect=None) as store:
        kid = "k" + uuid.uuid4().hex
        store.redirect = elsewhere.url(kid)
        monkeypatch.setenv("AIDEPLOY_KEY_STORE", f"http://127.0.0.1:{store.port}/devstoreaccount1")
        status, answer = register(worker(), key_id=kid, key_url=store.url(kid))
        assert store.seen and elsewhere.seen == []
    assert status == 502 and "redirect (HTTP 302), which the service does not follow" in answer["error"]


def test_conn_str_is_refused_by_the_fast_scheme(worker, azurite):  # noqa: F811
    client = FastClient(64, 10)
    with BlobKeyStore.from_connection_string(azurite.connection_string, "ssrfkeys") as keys:
        keys.put(client.key_id, client.public_bundle())
        status, answer = register(worker(), key_id=client.key_id, conn_str=azurite.connection_string,
                                  container="ssrfkeys")
    assert status == 400 and "not the seed's 'conn_str'" in answer["error"]


def test_the_seeds_conn_str_names_only_the_deployments_own_account(worker, azurite):  # noqa: F811
    pytest.importorskip("encrypted.inference")
    service = worker()
    with Target() as target:
        elsewhere = azurite.connection_string.replace(f"127.0.0.1:{azurite.port}", f"127.0.0.1:{target.port}")
        assert elsewhere != azurite.connection_string
        body = json.dumps({"data": [], "key_id": "seedkey", "conn_str": elsewhere, "container": "seedkeys"}).encode()
        status, answer = service.handle_http("POST", {"Content-Type": "application/json"}, io.BytesIO(body),
                                             len(body))
        assert target.seen == []
    assert status == 400 and "conn_str names another storage account" in answer["error"], answer
