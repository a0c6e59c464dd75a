"""Verified keys shared by a deployment's workers (scoring/keyshare.py), and key registration.

The fetchers here are separate objects over one directory, as two workers are; the store is a
real Azurite. The last tests serve a real two-worker deployment.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import requests
from azure.storage.blob import BlobServiceClient

from aideploy.azurite import AzuriteServer
from aideploy.blobkeys import BlobKeyStore
from aideploy_scoring.fastlinear import FastClient
from aideploy_scoring.keyfetch import KeyAccessDeniedError, KeyFetcher, KeyNotFoundError
from aideploy_scoring.keyshare import SharedKeys
from conftest import SERVE_KEY, Cli, fast_params, served, session_processes
from test_keystore import _sig, _with_query

SERVER_LOG = "azmlinfsrv.log"


@pytest.fixture(scope="module")
def azurite():
    with AzuriteServer() as server:
        yield server


@pytest.fixture
def store(azurite):
    container = f"share-{uuid.uuid4().hex[:12]}"
    with BlobKeyStore.from_connection_string(azurite.connection_string, container) as ks:
        yield ks
    with BlobServiceClient.from_connection_string(azurite.connection_string) as service:
        service.delete_container(container)


@pytest.fixture
def shared(tmp_path) -> Path:
    return tmp_path / "shared"


def workers(shared: Path, store: BlobKeyStore, n: int = 2, **options) -> list[KeyFetcher]:
    """``n`` workers' fetchers sharing ``shared``, whose key store is ``store``."""
    return [KeyFetcher(max_cache_bytes=1 << 20, max_key_bytes=64 << 10, timeout=5, shared_dir=shared,
                       store_url=store.account_url, **options) for _ in range(n)]


def key_id() -> str:
    return "k" + uuid.uuid4().hex


def test_a_key_one_worker_fetched_is_served_by_another_without_the_store(store, shared):
    a, b = workers(shared, store)
    kid, data = key_id(), os.urandom(5000)
    url = store.put(kid, data)
    assert a.fetch(kid, key_url=url) == data
    assert b.fetch(kid, key_url=url, transform=bytes.upper) == data.upper()  # parsed by b itself
    assert b.stats["store_checks"] == 0 and b.stats["shared_hits"] == 1
    assert b.fetch(kid, key_url=url, transform=bytes.upper) == data.upper()
    assert b.stats["store_checks"] == 0 and b.stats["shared_hits"] == 1  # then from its own memory
    # Only digests name the files; neither the SAS nor its signature is written anywhere.
    signature = _sig(url)
    for path in shared.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert signature.encode() not in content and url.encode() not in content
    assert all(oct(p.stat().st_mode)[-3:] == "700" for p in (shared, shared / "blobs", shared / "checks"))


def test_an_expired_sas_is_refused_by_every_worker_on_its_first_request_after_expiry(store, shared):
    a, b = workers(shared, store)
    kid = key_id()
    url = store.put(kid, b"short-lived", sas_ttl=2)
    assert a.fetch(kid, key_url=url) == b"short-lived"
    expiry = dt.datetime.strptime(parse_qs(urlsplit(url).query)["se"][0], "%Y-%m-%dT%H:%M:%SZ")
    wait = (expiry.replace(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)).total_seconds()
    time.sleep(max(0.0, wait) + 0.05)
    for worker in (a, b):
        with pytest.raises(KeyAccessDeniedError) as ei:
            worker.fetch(kid, key_url=url)
        assert ei.value.code == "SasExpired"
    assert b.stats["store_checks"] == 0 and b.stats["shared_hits"] == 0  # refused locally


def test_a_forged_sas_never_rides_on_another_workers_check(store, shared):
    a, b = workers(shared, store)
    kid = key_id()
    url = store.put(kid, b"public key")
    assert a.fetch(kid, key_url=url) == b"public key"
    sig = base64.b64decode(_sig(url))
    forged = _with_query(url, sig=base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode())
    with pytest.raises(KeyAccessDeniedError):
        b.fetch(kid, key_url=forged)
    assert b.stats["store_checks"] == 1 and b.stats["shared_hits"] == 0  # the store judged it
    assert b.fetch(kid, key_url=url) == b"public key"  # the genuine one rides on a's check
    assert b.stats["shared_hits"] == 1


def test_a_deleted_key_is_refused_by_every_worker_within_the_bound_of_the_stores_answer(store, shared):
    """Reading another worker's check does not renew it: the deadline is the store's answer's."""
    a, b = workers(shared, store, sas_recheck_seconds=2)
    kid = key_id()
    url = store.put(kid, b"soon gone")
    assert a.fetch(kid, key_url=url) == b"soon gone"
    answered = time.monotonic()
    store.delete(kid)
    time.sleep(1.0)
    assert b.fetch(kid, key_url=url) == b"soon gone"  # within the bound: served, from a's check
    assert b.stats["shared_hits"] == 1
    time.sleep(max(0.0, answered + 2.0 - time.monotonic()) + 0.05)
    for worker in (b, a):
        with pytest.raises(KeyNotFoundError):
            worker.fetch(kid, key_url=url)


def test_the_shared_directory_stays_bounded_in_bytes(store, shared):
    fetchers = [KeyFetcher(max_cache_bytes=40_000, max_key_bytes=20_000, timeout=5, shared_dir=shared,
                           store_url=store.account_url)
                for _ in range(2)]
    for i in range(12):
        kid = key_id()
        data = os.urandom(9_000)
        assert fetchers[i % 2].fetch(kid, key_url=store.put(kid, data)) == data
        held = SharedKeys(shared, 40_000, 30).bytes_held
        assert held <= 40_000, f"after key {i}: {held} bytes"
    assert held >= 27_000  # the newest keys are kept
    assert len(list((shared / "checks").iterdir())) == 12  # a few hundred bytes each, live for 30 s


def test_checks_past_their_deadline_are_removed(tmp_path):
    keys = SharedKeys(tmp_path / "s", 1 << 20, recheck_seconds=0.2, max_checks=3)
    for i in range(5):
        keys.put_check(f"k{i}", bytes(32), "http://h/c/k", "etag", time.monotonic() + 0.2, time.time() + 60)
        keys._pruned = 0.0  # sweep on every write
    assert len(list((tmp_path / "s" / "checks").iterdir())) == 3  # capped in count
    time.sleep(1.3)  # past the deadline (0.2 s) and the second of slack
    keys.put_check("last", bytes(32), "http://h/c/k", "etag", time.monotonic() + 0.2, time.time() + 60)
    assert len(list((tmp_path / "s" / "checks").iterdir())) == 1  # only the new one
    assert keys.check("last", bytes(32)) is not None and keys.check("k4", bytes(32)) is None


def test_a_directory_others_can_reach_is_not_used(store, tmp_path, caplog):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    a, b = workers(loose, store)
    assert "keys are not shared between workers" in caplog.text and "loose" in caplog.text
    kid = key_id()
    url = store.put(kid, b"k")
    assert a.fetch(kid, key_url=url) == b"k" and b.fetch(kid, key_url=url) == b"k"
    assert b.stats["store_checks"] == 1 and b.stats["shared_hits"] == 0  # each worker on its own
    assert not any(loose.iterdir())


# ---------------------------------------------------------------- a served two-worker deployment


def _pids_answering(log: Path, offset: int) -> set[str]:
    return set(re.findall(rb"\[(\d+)\] azmlinfsrv - POST /score 200", log.read_bytes()[offset:]))


def _key_dirs() -> set[str]:
    """The share directories (target=local gives each deployment its own) of the servers this test
    session started: another session's (a parallel pytest process) are not this test's to judge."""
    import psutil

    found = set()
    for pid in session_processes():
        try:
            directory = psutil.Process(pid).environ().get("AIDEPLOY_KEY_SHARE_DIR")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if directory:
            found.add(directory)
    return found


def test_a_registered_key_is_served_by_every_worker_without_the_store(tmp_path):
    """Register once; delete the blob: every worker still answers (from the shared check) until
    the bound set by the store's answer, and none after it. The directory goes with the service."""
    cli = Cli(tmp_path, tmp_path / "home")
    with AzuriteServer() as azurite, served(cli, "encryption=fast", "target.worker_count=2",
                                            env={"AIDEPLOY_SAS_RECHECK_SECONDS": "6"}, store=azurite) as uri:
        log = tmp_path / f"run{cli.calls}" / SERVER_LOG
        (keys_dir,) = _key_dirs()  # in the deployment's own directory, which its workers share
        shared = Path(keys_dir).parent
        assert shared.is_dir() and shared.name.startswith("aideploy-service-")
        client = FastClient(64, 10, fast_params(uri))
        with BlobKeyStore.from_connection_string(azurite.connection_string, "regkeys") as keys:
            url = keys.put(client.key_id, client.public_bundle())
            auth = {"Authorization": f"Bearer {SERVE_KEY}"}
            registration = {"scheme": "fast", "register_key": True, "key_id": client.key_id, "key_url": url}
            answer = requests.post(uri, json=registration, headers=auth, timeout=60)
            registered = time.monotonic()
            assert answer.status_code == 200 and answer.json() == {"registered": client.key_id}, answer.text
            keys.delete(client.key_id)
            offset = log.stat().st_size
            headers = {**auth, "Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
                       "X-Aideploy-Key-Id": client.key_id, "X-Aideploy-Key-Url": url}
            X = np.full((1, 64), 0.25)
            query = client.encrypt(X)
            sent = 0
            while len(_pids_answering(log, offset)) < 2 and time.monotonic() < registered + 4:
                response = requests.post(uri, data=query, headers=headers, timeout=60)  # a new connection each
                assert response.status_code == 200, f"request {sent}: {response.text}"
                assert client.decrypt(response.content, 1).shape == (1, 10)
                sent += 1
            assert len(_pids_answering(log, offset)) == 2, f"one worker answered all {sent} requests"
            time.sleep(max(0.0, registered + 6.0 - time.monotonic()) + 0.1)
            for _ in range(6):
                response = requests.post(uri, data=query, headers=headers, timeout=60)
                assert response.status_code == 404, response.text
            # A key the service cannot read is refused at registration, with the store's reason.
            answer = requests.post(uri, json=registration, headers=auth, timeout=60)
            assert answer.status_code == 404 and client.key_id in answer.json()["error"]
    assert not shared.exists()  # gone with the service


def test_a_run_whose_keys_the_service_cannot_read_stops_at_the_registration(cli):
    proc = cli("encryption=fast", env={"AIDEPLOY_MAX_KEY_BYTES": "1000"})  # the keys are ~98 KB
    assert proc.returncode != 0
    assert "the service cannot use this run's public keys" in proc.stderr, proc.stderr
    assert "1000-byte limit" in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (proc.out / "predictions.csv").exists() or "row" not in (proc.out / "predictions.csv").read_text()
    results = json.loads((proc.out / "results.json").read_text())
    assert results["status"] == "failed"
