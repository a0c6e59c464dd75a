"""Limits that hold against a dishonest client (aideploy_scoring.limits): query budgets, spent
MLP round tokens and new keys, counted in one store for every worker of a deployment.

The stores are tested as they run: SQLite files opened by several store objects at once (as
the workers of a local deployment open them) and a blob container on a real Azurite (as the
instances of an Azure deployment share the key store's account). The attacks are replayed on
the real service classes, built as each worker's ``init()`` builds them from the settings
``target=local`` gives it (``ScoringService.from_environment``): two services in one process are
two workers of one deployment, and every request goes through ``handle_http`` with real SEAL,
a real key fetch from Azurite and the real store.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
import uuid
from types import SimpleNamespace

import joblib
import numpy as np
import pytest
from test_fastmlp import digits, trained
from test_keystore import azurite  # noqa: F401  (a module-scoped fixture)

from aideploy.azurite import DEV_ACCOUNT_KEY
from aideploy.blobkeys import BlobKeyStore
from aideploy_scoring import fastmlp as fm
from aideploy_scoring.fastlinear import FastParams
from aideploy_scoring.limits import BlobStore, KeyAdmission, LimitExceeded, MemoryStore, QueryBudget, SqliteStore
from aideploy_scoring.service import RequestError, ScoringService

# ------------------------------------------------------------------ the stores


@pytest.fixture(params=["sqlite", "blob"])
def stores(request, tmp_path, azurite):  # noqa: F811
    """A factory of store objects that all open one store, as each worker opens it."""
    if request.param == "sqlite":
        path = tmp_path / "limits.sqlite"
        return lambda: SqliteStore(path)
    url = f"{azurite.blob_endpoint}/limits-{uuid.uuid4().hex[:12]}"
    return lambda: BlobStore.from_url(url, DEV_ACCOUNT_KEY)


def test_a_budget_is_granted_exactly_once_across_workers(stores):
    """Four workers race to spend one key's budget of 30 in 40 single samples: exactly 30 pass."""
    workers = [stores() for _ in range(4)]
    granted = []

    def spend(store):
        for _ in range(10):
            added, _ = store.add("key", 1, 30)
            granted.append(added)

    threads = [threading.Thread(target=spend, args=(store,)) for store in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(granted) == 30 and len(granted) == 40
    assert workers[0].add("key", 1, 30) == (False, 30)
    workers[1].subtract("key", 5)  # refunds, as a refused round 1 gives back
    assert workers[2].add("key", 5, 30) == (True, 25)


def test_a_token_is_spent_once_by_all_workers(stores):
    one, two = stores(), stores()
    expiry = time.time() + 60
    assert one.first_use(b"query-1\x02", expiry) is True
    assert two.first_use(b"query-1\x02", expiry) is False
    two.forget_use(b"query-1\x02", expiry)  # a refused round spends nothing: the client may resend
    assert one.first_use(b"query-1\x02", expiry) is True
    assert two.first_use(b"query-2\x02", expiry) is True


def test_new_keys_are_limited_per_sliding_hour_and_known_keys_always_pass(stores):
    one, two = stores(), stores()
    now = time.time()
    assert [one.admit("a", 2, now), two.admit("b", 2, now + 1)] == [True, True]
    assert two.admit("c", 2, now + 2) is False and one.admit("c", 2, now + 2) is False
    assert one.admit("a", 2, now + 3) is True and two.admit("b", 2, now + 3) is True  # known keys
    assert two.admit("c", 2, now + 3600.5) is True  # "a" left the window
    assert one.admit("d", 2, now + 3600.5) is False  # "b" and "c" are in it


def test_an_sqlite_store_forgets_expired_tokens(tmp_path, monkeypatch):
    import sqlite3

    from aideploy_scoring import limits

    store = SqliteStore(tmp_path / "limits.sqlite")
    store.first_use(b"old", time.time() - 1)
    monkeypatch.setattr(limits, "_PRUNE_EVERY", 0.0)
    store.first_use(b"new", time.time() + 60)
    rows = sqlite3.connect(tmp_path / "limits.sqlite").execute("SELECT token FROM tokens").fetchall()
    assert rows == [(b"new",)]


def test_the_policies_refuse_with_the_limits_name():
    budget = QueryBudget(3, per_query=2, store=MemoryStore())
    budget.spend("k", 2)
    with pytest.raises(RequestError, match="max_queries_per_key") as refused:
        budget.spend("k", 2)
    assert refused.value.status == 429
    with pytest.raises(RequestError, match="max_samples_per_query") as refused:
        budget.spend("k", 3)
    assert refused.value.status == 400
    admission = KeyAdmission(1, MemoryStore())
    admission.admit("k")
    with pytest.raises(LimitExceeded, match="max_new_keys_per_hour"):
        admission.admit("other")
    admission.admit("k")


def test_an_unreachable_blob_store_refuses_rather_than_skipping_the_limit(azurite):  # noqa: F811
    from test_keystore import _free_port

    from aideploy_scoring.limits import LimitsUnavailable, open_store

    with pytest.raises(LimitsUnavailable, match="limits store .* failed"):
        open_store(f"http://127.0.0.1:{_free_port()}/devstoreaccount1/limits", DEV_ACCOUNT_KEY)
    with pytest.raises(LimitsUnavailable, match="AIDEPLOY_LIMITS_STORE_CREDENTIAL"):
        open_store(f"{azurite.blob_endpoint}/limits", "")


# ------------------------------------------------------------------ the attacks, on the service


@pytest.fixture
def deployment(tmp_path, monkeypatch, azurite):  # noqa: F811
    """The settings ``target=local`` gives each worker of one encrypted MLP deployment: the model,
    the key store, the limits store, one token secret. ``worker()`` builds one more worker."""
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    joblib.dump(trained((16,)), model_dir / "model.pkl")
    settings = {"AZUREML_MODEL_DIR": str(model_dir), "AIDEPLOY_KEY_STORE": azurite.blob_endpoint,
                "AIDEPLOY_LIMITS_STORE": str(tmp_path / "limits.sqlite"),
                "AIDEPLOY_MLP_TOKEN_SECRET": os.urandom(32).hex(), "AIDEPLOY_PREPARE_SCHEMES": "none"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    keys = BlobKeyStore.from_connection_string(azurite.connection_string, "limitkeys")
    yield SimpleNamespace(worker=ScoringService.from_environment, keys=keys)
    keys.close()


class Client:
    """A model-less client of one deployment: its own key, uploaded (under ``names``) to the store."""

    def __init__(self, worker: ScoringService, keys: BlobKeyStore, aliases: int = 0):
        fast = worker.describe()["fast"]
        self.mlp = fm.MLPClient(fast["mlp"]["sizes"], fast["mlp"]["activation"],
                                FastParams.from_json(json.dumps(fast["params"]).encode()))
        bundle = self.mlp.public_bundle()
        self.names = [self.mlp.key_id] + [f"alias{i}-{uuid.uuid4().hex[:8]}" for i in range(aliases)]
        self.urls = {name: keys.put(name, bundle) for name in self.names}

    def post(self, worker: ScoringService, body: bytes, name: str | None = None) -> tuple[int, object]:
        name = name or self.names[0]
        headers = {"Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
                   "X-Aideploy-Key-Id": name, "X-Aideploy-Key-Url": self.urls[name]}
        return worker.handle_http("POST", headers, io.BytesIO(body), len(body))

    def register(self, worker: ScoringService) -> tuple[int, object]:
        body = json.dumps({"scheme": "fast", "register_key": True, "key_id": self.names[0],
                           "key_url": self.urls[self.names[0]]}).encode()
        return worker.handle_http("POST", {"Content-Type": "application/json"}, io.BytesIO(body), len(body))

    def round_two(self, worker: ScoringService, X: np.ndarray) -> bytes:
        """Round 1 of a query on ``worker``: the message of its round 2 (token inside)."""
        status, answer = self.post(worker, self.mlp.encrypt(X))
        assert status == 200, answer
        message, _ = self.mlp.respond(answer, len(X))
        return message


def refused(answer: tuple[int, object], status: int, words: str) -> None:
    assert answer[0] == status, answer
    assert words in answer[1]["error"] and "\n" not in answer[1]["error"], answer


def test_a_spent_round_token_is_refused_by_another_worker(deployment):
    one, two = deployment.worker(), deployment.worker()
    client = Client(one, deployment.keys)
    message = client.round_two(one, digits()[0][:1])
    assert client.post(one, message)[0] == 200
    refused(client.post(two, message), 400, "already used")


def test_a_spent_round_token_is_refused_after_the_worker_drops_its_servers(deployment):
    """The review's replay: after loading bundles for 8 other parameter sets the worker's MLP
    servers (and their spent tokens) were evicted, and a spent token was answered again. Dropping
    every scheme the worker built is any eviction there can be."""
    worker = deployment.worker()
    client = Client(worker, deployment.keys)
    message = client.round_two(worker, digits()[0][:1])
    assert client.post(worker, message)[0] == 200
    worker._schemes.clear()
    refused(client.post(worker, message), 400, "already used")


def test_a_key_has_one_budget_under_any_blob_name_and_on_any_worker(deployment, monkeypatch):
    monkeypatch.setenv("AIDEPLOY_MAX_QUERIES_PER_KEY", "3")
    monkeypatch.setenv("AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY", "2")  # two samples a query (the default is one)
    one, two = deployment.worker(), deployment.worker()
    client = Client(one, deployment.keys, aliases=1)
    X = digits()[0]
    assert client.post(one, client.mlp.encrypt(X[:2]))[0] == 200
    alias = client.names[1]  # the same public key, uploaded under another key_id
    refused(client.post(one, client.mlp.encrypt(X[:2]), alias), 429, "max_queries_per_key")
    assert client.post(two, client.mlp.encrypt(X[:1]), alias)[0] == 200  # the 3rd sample, on another worker
    refused(client.post(two, client.mlp.encrypt(X[:1])), 429, "has used 3 of its 3")
    refused(client.post(one, client.mlp.encrypt(X[:1]), alias), 429, "has used 3 of its 3")


def test_new_keys_past_the_rate_limit_are_refused_by_every_worker(deployment, monkeypatch):
    monkeypatch.setenv("AIDEPLOY_MAX_NEW_KEYS_PER_HOUR", "2")
    one, two = deployment.worker(), deployment.worker()
    first, second, third = (Client(one, deployment.keys) for _ in range(3))
    assert first.register(one)[0] == 200 and second.register(two)[0] == 200
    refused(third.register(one), 429, "max_new_keys_per_hour")
    refused(third.register(two), 429, "max_new_keys_per_hour")
    refused(third.post(two, third.mlp.encrypt(digits()[0][:1])), 429, "max_new_keys_per_hour")
    assert first.register(two)[0] == 200  # a key the deployment knows: on any worker
    message = first.round_two(two, digits()[0][:1])
    assert first.post(one, message)[0] == 200
