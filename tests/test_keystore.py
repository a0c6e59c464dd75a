"""Key store round trips against a real Azurite and the real azure-storage-blob SDK.

Needs the repo's node_modules (``npm ci`` in the repo root); no mocks.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import numpy as np
import psutil
import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import HttpResponseError
from azure.storage.blob import BlobClient, BlobServiceClient, ContainerClient

from aideploy.azurite import (
    DEV_ACCOUNT_KEY,
    AzuriteError,
    AzuriteNotInstalledError,
    AzuriteServer,
    blob_storage,
    dev_connection_string,
    find_node_modules,
    parse_listening_url,
)
from aideploy.blobkeys import BlobKeyStore, KeyStoreError, redact, validate_key_id
from aideploy_scoring import keyfetch
from aideploy_scoring.keyfetch import (
    KeyAccessDeniedError,
    KeyFetcher,
    KeyFetchError,
    KeyNotFoundError,
    KeyRequestError,
    KeyStoreUnavailableError,
    KeyTooLargeError,
)

try:
    find_node_modules()
    _HAVE_AZURITE = True
except AzuriteNotInstalledError:
    _HAVE_AZURITE = False

needs_azurite = pytest.mark.skipif(not _HAVE_AZURITE, reason="run `npm ci` in the repo root to install Azurite")


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def azurite():
    """One Azurite for the module (startup is ~0.5 s; tests use separate containers)."""
    if not _HAVE_AZURITE:
        pytest.skip("run `npm ci` in the repo root to install Azurite")
    server = AzuriteServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def container_name() -> str:
    return f"keys-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(azurite, container_name):
    with BlobKeyStore.from_connection_string(azurite.connection_string, container_name) as ks:
        yield ks
        # Teardown: drop the container so tests stay independent.
        with BlobServiceClient.from_connection_string(azurite.connection_string) as svc:
            try:
                svc.delete_container(container_name)
            except HttpResponseError:
                pass


@pytest.fixture
def fetcher(azurite):
    """A fetcher whose key store is the test's Azurite, as the service's is the deployment's."""
    return KeyFetcher(max_cache_bytes=1 << 20, max_key_bytes=64 << 10, timeout=5, store_url=azurite.blob_endpoint)


def _key_id() -> str:
    return "k" + uuid.uuid4().hex


def _with_query(url: str, **changes: str) -> str:
    """Return ``url`` with some SAS query parameters replaced (values raw, re-encoded)."""
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    qs = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return parts._replace(query=qs).geturl()


def _sig(url: str) -> str:
    return parse_qs(urlsplit(url).query)["sig"][0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------- round trips
@needs_azurite
def test_sas_round_trip_and_cache_hit(store, fetcher):
    kid, data = _key_id(), os.urandom(5000)
    url = store.put(kid, data)

    query = parse_qs(urlsplit(url).query)
    assert query["sp"] == ["r"]  # read only
    assert query["sr"] == ["b"]  # scoped to one blob
    assert urlsplit(url).path.endswith(f"/{store.container}/{kid}")

    assert fetcher.fetch(kid, key_url=url) == data
    assert fetcher.stats["misses"] == 1 and fetcher.stats["hits"] == 0
    assert fetcher.fetch(kid, key_url=url) == data
    assert fetcher.stats["hits"] == 1
    assert fetcher.stats["bytes"] == len(data)

    # A freshly minted SAS for the same blob hits the same cache entry.
    assert fetcher.fetch(kid, key_url=store.sas_url(kid)) == data
    assert fetcher.stats["hits"] == 2


@needs_azurite
def test_seed_connection_string_round_trip(azurite, store, fetcher):
    kid, data = _key_id(), b"seed-era public key"
    store.put(kid, data)
    got = fetcher.fetch(kid, conn_str=azurite.connection_string, container=store.container)
    assert got == data


@needs_azurite
def test_sas_connection_string(azurite, store, fetcher):
    """A SharedAccessSignature= connection string: the fetcher accepts it, the store cannot sign with it."""
    kid = _key_id()
    store.put(kid, b"via sas conn_str")
    token = urlsplit(store.sas_url(kid)).query
    conn = f"BlobEndpoint={azurite.blob_endpoint};SharedAccessSignature={token}"
    assert fetcher.fetch(kid, conn_str=conn, container=store.container) == b"via sas conn_str"

    ks = BlobKeyStore.from_connection_string(conn, store.container)
    assert ks.auth_mode == "none"
    assert "?" not in ks.blob_url(kid) and _sig("?" + token) not in repr(ks)
    with pytest.raises(KeyStoreError):
        ks.put(_key_id(), b"x")


@needs_azurite
def test_transform_result_is_cached_and_sized_by_nbytes(store):
    fetcher = KeyFetcher(max_cache_bytes=10_000, max_key_bytes=10_000, timeout=5, store_url=store.account_url)
    kid = _key_id()
    url = store.put(kid, np.arange(100, dtype=np.int64).tobytes())
    calls = []

    def parse(raw: bytes) -> np.ndarray:
        calls.append(1)
        return np.frombuffer(raw, dtype=np.int64).repeat(2)  # 1600 bytes, != blob size

    first = fetcher.fetch(kid, key_url=url, transform=parse)
    second = fetcher.fetch(kid, key_url=url, transform=parse)
    assert second is first and len(calls) == 1
    assert fetcher.stats["bytes"] == first.nbytes == 1600


@needs_azurite
def test_transform_value_error_is_400(store, fetcher):
    kid = _key_id()
    url = store.put(kid, b"garbage")

    def parse(raw: bytes):
        raise ValueError("not a key")

    with pytest.raises(KeyRequestError) as ei:
        fetcher.fetch(kid, key_url=url, transform=parse)
    assert ei.value.http_status == 400 and ei.value.code == "InvalidKeyMaterial"
    assert fetcher.stats["items"] == 0


@needs_azurite
def test_reuploaded_key_is_refetched(store):
    fetcher = KeyFetcher(max_cache_bytes=1 << 20, max_key_bytes=64 << 10, timeout=5, sas_recheck_seconds=0,
                         store_url=store.account_url)
    kid = _key_id()
    url = store.put(kid, b"version-1")
    assert fetcher.fetch(kid, key_url=url) == b"version-1"
    store.put(kid, b"version-2")  # new ETag
    assert fetcher.fetch(kid, key_url=url) == b"version-2"
    assert fetcher.stats["items"] == 1


# ------------------------------------------------------------ SAS properties
@needs_azurite
def test_sas_is_read_only(store):
    kid = _key_id()
    url = store.put(kid, b"original")
    blob = BlobClient.from_blob_url(url)
    with pytest.raises(HttpResponseError) as ei:
        blob.upload_blob(b"overwritten", overwrite=True)
    assert ei.value.status_code == 403
    with pytest.raises(HttpResponseError) as ei:
        blob.delete_blob()
    assert ei.value.status_code == 403
    assert blob.download_blob().readall() == b"original"


@needs_azurite
def test_sas_is_scoped_to_one_blob(store, fetcher):
    kid, other = _key_id(), _key_id()
    url = store.put(kid, b"mine")
    store.put(other, b"someone else's")
    swapped = url.replace(f"/{kid}?", f"/{other}?")
    assert swapped != url

    with pytest.raises(HttpResponseError) as ei:
        BlobClient.from_blob_url(swapped).download_blob().readall()
    assert ei.value.status_code == 403
    with pytest.raises(KeyAccessDeniedError) as ei:
        fetcher.fetch(other, key_url=swapped)
    assert ei.value.http_status == 403

    # Nor can it list the container.
    container_url = url.split(f"/{kid}?")[0] + "?" + urlsplit(url).query
    with pytest.raises(HttpResponseError):
        list(ContainerClient.from_container_url(container_url).list_blobs())

    # The fetcher insists that the URL names the requested key_id.
    with pytest.raises(KeyRequestError) as ei:
        fetcher.fetch(other, key_url=url)
    assert ei.value.code == "KeyIdMismatch"


@needs_azurite
def test_expired_sas_is_refused_on_its_first_request_after_expiry(store, fetcher):
    """The SAS check is remembered (no HEAD on the second request), yet never past ``se``."""
    assert fetcher.sas_recheck_seconds == 30  # the default: longer than this SAS lives
    kid = _key_id()
    url = store.put(kid, b"short-lived", sas_ttl=2)
    assert fetcher.fetch(kid, key_url=url) == b"short-lived"
    heads = fetcher.stats["store_checks"]
    assert fetcher.fetch(kid, key_url=url) == b"short-lived"
    assert fetcher.stats["store_checks"] == heads  # answered from the remembered check
    expiry = dt.datetime.strptime(parse_qs(urlsplit(url).query)["se"][0], "%Y-%m-%dT%H:%M:%SZ")
    wait = (expiry.replace(tzinfo=dt.timezone.utc) - dt.datetime.now(dt.timezone.utc)).total_seconds()
    time.sleep(max(0.0, wait) + 0.05)
    with pytest.raises(KeyAccessDeniedError) as ei:
        fetcher.fetch(kid, key_url=url)
    assert ei.value.http_status == 403 and ei.value.code == "SasExpired"
    assert fetcher.stats["store_checks"] == heads  # refused locally, on the first request after se
    assert _sig(url) not in str(ei.value)
    with pytest.raises(KeyAccessDeniedError):  # and on every later one
        fetcher.fetch(kid, key_url=url)
    # A fresh SAS still works (and comes from the cache).
    hits = fetcher.stats["hits"]
    assert fetcher.fetch(kid, key_url=store.sas_url(kid)) == b"short-lived"
    assert fetcher.stats["hits"] == hits + 1


@needs_azurite
def test_forged_sas_is_never_accepted(store, fetcher):
    """A positive check of the real SAS is remembered; no alteration of it ever rides on that."""
    kid = _key_id()
    url = store.put(kid, b"public key")
    assert fetcher.fetch(kid, key_url=url) == b"public key"  # now cached, and its check remembered
    sig = base64.b64decode(_sig(url))
    tampered_sig = base64.b64encode(bytes([sig[0] ^ 1]) + sig[1:]).decode()
    far_future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365)).strftime("%Y-%m-%dT%H:%M:%SZ")
    forgeries = {
        "tampered signature": _with_query(url, sig=tampered_sig),
        "extended expiry": _with_query(url, se=far_future),
        "escalated permissions": _with_query(url, sp="rwd"),
        "signed with the wrong key": (
            BlobKeyStore.from_connection_string(
                dev_connection_string(store.account_url).replace(
                    DEV_ACCOUNT_KEY, base64.b64encode(b"x" * 64).decode()
                ),
                store.container,
            ).sas_url(kid)
        ),
    }
    for _ in range(2):  # a refused forgery is not remembered either
        for what, forged in forgeries.items():
            heads = fetcher.stats["store_checks"]
            with pytest.raises(KeyAccessDeniedError) as ei:
                fetcher.fetch(kid, key_url=forged)
            assert ei.value.http_status == 403, what
            assert _sig(forged) not in str(ei.value), what
            assert fetcher.stats["store_checks"] == heads + 1, what  # the store judged it
    assert fetcher.stats["items"] == 1  # the cached key was there all along
    heads = fetcher.stats["store_checks"]
    assert fetcher.fetch(kid, key_url=url) == b"public key"
    assert fetcher.stats["store_checks"] == heads  # the genuine SAS's check is still remembered


@needs_azurite
def test_bad_account_key_in_conn_str_is_403(azurite, store, fetcher):
    kid = _key_id()
    store.put(kid, b"k")
    bad = azurite.connection_string.replace(DEV_ACCOUNT_KEY, base64.b64encode(b"y" * 64).decode())
    with pytest.raises(KeyAccessDeniedError) as ei:
        fetcher.fetch(kid, conn_str=bad, container=store.container)
    assert "AccountKey" not in str(ei.value) and base64.b64encode(b"y" * 64).decode() not in str(ei.value)


# ----------------------------------------------------------- error statuses
@needs_azurite
def test_unknown_key_id_is_404(azurite, store, fetcher):
    store.ensure_container()
    kid = _key_id()
    with pytest.raises(KeyNotFoundError) as ei:
        fetcher.fetch(kid, key_url=store.sas_url(kid))
    assert ei.value.http_status == 404
    with pytest.raises(KeyNotFoundError):
        fetcher.fetch(kid, conn_str=azurite.connection_string, container=store.container)
    with pytest.raises(KeyNotFoundError):
        fetcher.fetch(kid, conn_str=azurite.connection_string, container="no-such-container")


@needs_azurite
def test_deleted_key_is_refused_within_the_recheck_bound(store, monkeypatch):
    """A deleted key blob is 404 once the remembered check is older than the bound (set small here)."""
    from aideploy_scoring.encrypted import key_fetcher_from_environment

    monkeypatch.setenv("AIDEPLOY_SAS_RECHECK_SECONDS", "1")
    monkeypatch.setenv("AIDEPLOY_KEY_STORE", store.account_url)
    fetcher = key_fetcher_from_environment()
    assert fetcher.sas_recheck_seconds == 1
    kid = _key_id()
    url = store.put(kid, b"soon gone")
    assert fetcher.fetch(kid, key_url=url) == b"soon gone"
    checked = time.monotonic()
    store.delete(kid)
    time.sleep(max(0.0, checked + 1.0 - time.monotonic()) + 0.05)
    with pytest.raises(KeyNotFoundError):
        fetcher.fetch(kid, key_url=url)
    # With no reuse at all, the very next request sees it.
    now = KeyFetcher(timeout=5, sas_recheck_seconds=0, store_url=store.account_url)
    url = store.put(kid, b"back")
    assert now.fetch(kid, key_url=url) == b"back"
    store.delete(kid)
    with pytest.raises(KeyNotFoundError):
        now.fetch(kid, key_url=url)


def test_the_recheck_bound_cannot_exceed_azures_own(monkeypatch):
    from aideploy_scoring.encrypted import key_fetcher_from_environment

    assert KeyFetcher().sas_recheck_seconds == keyfetch.MAX_SAS_RECHECK_SECONDS == 30
    for bad in (30.5, 3600, -1):
        with pytest.raises(ValueError, match="sas_recheck_seconds"):
            KeyFetcher(sas_recheck_seconds=bad)
    monkeypatch.setenv("AIDEPLOY_SAS_RECHECK_SECONDS", "60")
    with pytest.raises(ValueError, match="AIDEPLOY_SAS_RECHECK_SECONDS=60 is not valid"):
        key_fetcher_from_environment()


@needs_azurite
def test_oversize_key_is_413(store):
    fetcher = KeyFetcher(max_cache_bytes=10_000, max_key_bytes=1000, timeout=5, store_url=store.account_url)
    ok, big = _key_id(), _key_id()
    assert fetcher.fetch(ok, key_url=store.put(ok, b"a" * 1000)) == b"a" * 1000
    with pytest.raises(KeyTooLargeError) as ei:
        fetcher.fetch(big, key_url=store.put(big, b"b" * 1001))
    assert ei.value.http_status == 413


@needs_azurite
def test_store_unreachable(azurite, store):
    dead = _free_port()
    kid = _key_id()
    url = store.put(kid, b"k").replace(f":{azurite.port}/", f":{dead}/")
    fetcher = KeyFetcher(timeout=2, retries=1, store_url=f"http://127.0.0.1:{dead}/devstoreaccount1")
    t0 = time.monotonic()
    with pytest.raises(KeyStoreUnavailableError) as ei:
        fetcher.fetch(kid, key_url=url)
    assert ei.value.http_status == 502
    assert time.monotonic() - t0 < 5
    assert _sig(url) not in str(ei.value)
    assert ei.value.__cause__ is None and ei.value.__suppress_context__  # no SDK message (URL) chained

    down = BlobKeyStore.from_connection_string(
        dev_connection_string(f"http://127.0.0.1:{dead}/devstoreaccount1"), "keys", retries=0, timeout=2
    )
    t0 = time.monotonic()
    with pytest.raises(KeyStoreError) as ei2:
        down.put(kid, b"k")
    msg = str(ei2.value)
    assert f"127.0.0.1:{dead}" in msg and "Azurite" in msg and DEV_ACCOUNT_KEY not in msg
    assert time.monotonic() - t0 < 5


@needs_azurite
def test_client_auth_failure_is_key_store_error(azurite, container_name):
    bad = azurite.connection_string.replace(DEV_ACCOUNT_KEY, base64.b64encode(b"z" * 64).decode())
    ks = BlobKeyStore.from_connection_string(bad, container_name)
    with pytest.raises(KeyStoreError) as ei:
        ks.put(_key_id(), b"k")
    assert "authentication" in str(ei.value).lower() or "denied" in str(ei.value).lower()
    assert base64.b64encode(b"z" * 64).decode() not in str(ei.value)


@needs_azurite
def test_malformed_requests_are_400(azurite, store, fetcher):
    kid = _key_id()
    url = store.put(kid, b"k")
    no_sig = url.split("?")[0] + "?" + "&".join(p for p in urlsplit(url).query.split("&") if not p.startswith("sig="))
    cases = {
        "bad key_id": dict(key_id="../etc/passwd", key_url=url),
        "empty key_id": dict(key_id="", key_url=url),
        "no source": dict(key_id=kid),
        "both sources": dict(key_id=kid, key_url=url, conn_str=azurite.connection_string, container=store.container),
        "not a url": dict(key_id=kid, key_url="this is not a url"),
        "ftp url": dict(key_id=kid, key_url="ftp://example/devstoreaccount1/c/" + kid + "?sig=x"),
        "unsigned url": dict(key_id=kid, key_url=no_sig),
        "user info": dict(key_id=kid, key_url=url.replace("http://", "http://u:p@")),
        "garbage conn_str": dict(key_id=kid, conn_str="AccountKey=secret;nonsense", container=store.container),
        "conn_str without credentials": dict(
            key_id=kid, conn_str=f"BlobEndpoint={azurite.blob_endpoint}", container=store.container
        ),
        "missing container": dict(key_id=kid, conn_str=azurite.connection_string),
        "bad container": dict(key_id=kid, conn_str=azurite.connection_string, container="Bad_Name"),
    }
    for what, kwargs in cases.items():
        with pytest.raises(KeyRequestError) as ei:
            fetcher.fetch(**kwargs)
        assert ei.value.http_status == 400, what
        assert isinstance(ei.value, ValueError) and isinstance(ei.value, KeyFetchError)
        assert _sig(url) not in str(ei.value) and "secret" not in str(ei.value), what
        assert DEV_ACCOUNT_KEY not in str(ei.value), what


@needs_azurite
def test_only_the_store_and_public_hosts_an_operator_names_are_reached(azurite, store):
    kid = _key_id()
    url = store.put(kid, b"k")
    assert KeyFetcher(store_url=azurite.blob_endpoint).fetch(kid, key_url=url) == b"k"
    elsewhere = f"http://127.0.0.1:{_free_port()}/devstoreaccount1"
    for refusing in (KeyFetcher(), KeyFetcher(allowed_hosts=["*.blob.core.windows.net"]),
                     KeyFetcher(allowed_hosts=["127.0.0.1"]),  # no port: the scheme's default (80), not Azurite's
                     KeyFetcher(store_url=elsewhere)):
        with pytest.raises(KeyRequestError) as ei:
            refusing.fetch(kid, key_url=url)
        assert ei.value.code == "HostNotAllowed" and ei.value.http_status == 400
    # a pattern that names the port still reaches only public addresses: Azurite is on loopback
    with pytest.raises(KeyRequestError, match="private address") as ei:
        KeyFetcher(allowed_hosts=[f"127.0.0.1:{azurite.port}"]).fetch(kid, key_url=url)
    assert ei.value.code == "HostNotAllowed"


# ------------------------------------------------------------------ caching
@needs_azurite
def test_lru_eviction_by_bytes(store):
    fetcher = KeyFetcher(max_cache_bytes=3000, max_key_bytes=10_000, timeout=5, store_url=store.account_url)
    a, b, c, huge = (_key_id() for _ in range(4))
    urls = {k: store.put(k, bytes([i]) * 1200) for i, k in enumerate((a, b, c))}
    urls[huge] = store.put(huge, b"h" * 4000)

    fetcher.fetch(a, key_url=urls[a])
    fetcher.fetch(b, key_url=urls[b])
    fetcher.fetch(a, key_url=urls[a])  # a is now most recently used
    assert fetcher.stats == {**fetcher.stats, "items": 2, "bytes": 2400, "hits": 1}
    fetcher.fetch(c, key_url=urls[c])  # 3600 > 3000: evicts b, the LRU entry
    assert fetcher.stats["items"] == 2 and fetcher.stats["bytes"] == 2400

    hits = fetcher.stats["hits"]
    fetcher.fetch(a, key_url=urls[a])
    fetcher.fetch(c, key_url=urls[c])
    assert fetcher.stats["hits"] == hits + 2
    misses = fetcher.stats["misses"]
    fetcher.fetch(b, key_url=urls[b])
    assert fetcher.stats["misses"] == misses + 1

    # Larger than the whole cache: returned, not cached, nothing else evicted.
    before = fetcher.stats
    assert fetcher.fetch(huge, key_url=urls[huge]) == b"h" * 4000
    after = fetcher.stats
    assert (after["items"], after["bytes"]) == (before["items"], before["bytes"])
    assert after["bytes"] <= 3000


@needs_azurite
def test_the_key_cache_stays_bounded_in_bytes_with_sas_checks_remembered(store):
    """Remembered checks hold no key: an evicted key is downloaded again, and they are bounded too."""
    fetcher = KeyFetcher(max_cache_bytes=3000, max_key_bytes=10_000, timeout=5, max_sas_checks=4,
                         store_url=store.account_url)
    keys = [_key_id() for _ in range(10)]
    urls = {k: store.put(k, bytes([i]) * 1200) for i, k in enumerate(keys)}
    for _ in range(2):
        for i, k in enumerate(keys):
            assert fetcher.fetch(k, key_url=urls[k]) == bytes([i]) * 1200
            assert fetcher.fetch(k, key_url=urls[k]) == bytes([i]) * 1200  # a remembered check
            stats = fetcher.stats
            assert stats["bytes"] <= 3000 and stats["items"] <= 2 and stats["sas_checks"] <= 4
    # Second round: every key had been evicted, so each was downloaded again.
    assert fetcher.stats["misses"] == 2 * len(keys)


# ------------------------------------------------------------- client store
@needs_azurite
def test_delete_is_idempotent(store):
    kid = _key_id()
    store.put(kid, b"k")
    assert store.exists(kid)
    store.delete(kid)
    assert not store.exists(kid)
    store.delete(kid)
    store.delete(_key_id())  # never existed


@needs_azurite
def test_invalid_key_ids_rejected(store):
    for bad in ["", "a/b", "../x", "x" * 129, "k?sig=1", "ключ", None, 5]:
        with pytest.raises(ValueError):
            store.put(bad, b"k")  # type: ignore[arg-type]
    assert validate_key_id("A-z_09") == "A-z_09"
    with pytest.raises(ValueError):
        BlobKeyStore.from_connection_string(dev_connection_string("http://127.0.0.1:1/devstoreaccount1"), "Bad")


def test_sas_fields_and_https_only():
    """SAS minting is offline: check protocol, window and permissions directly."""
    conn = (
        "DefaultEndpointsProtocol=https;AccountName=acct;"
        f"AccountKey={base64.b64encode(b'k' * 64).decode()};EndpointSuffix=core.windows.net"
    )
    ks = BlobKeyStore.from_connection_string(conn, "keys", sas_ttl=600, clock_skew=120)
    before = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    q = {k: v[0] for k, v in parse_qs(urlsplit(ks.sas_url("abc")).query).items()}
    after = dt.datetime.now(dt.timezone.utc)
    assert q["spr"] == "https" and q["sp"] == "r" and q["sr"] == "b"
    parse = lambda s: dt.datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.timezone.utc)  # noqa: E731
    assert before - dt.timedelta(seconds=121) <= parse(q["st"]) <= after - dt.timedelta(seconds=119)
    assert before + dt.timedelta(seconds=599) <= parse(q["se"]) <= after + dt.timedelta(seconds=600)
    http = BlobKeyStore.from_connection_string(dev_connection_string("http://127.0.0.1:1/devstoreaccount1"), "keys")
    assert "spr=" not in http.sas_url("abc")  # Azurite on http must stay usable
    with pytest.raises(ValueError):
        ks.sas_url("abc", sas_ttl=0)


def test_repr_and_redact_hide_secrets():
    key = base64.b64encode(b"s" * 64).decode()
    conn = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net"
    ks = BlobKeyStore.from_connection_string(conn, "keys")
    url = ks.sas_url("abc")
    sig = _sig(url)
    r = repr(ks)
    assert "acct" in r and "keys" in r
    for secret in (key, sig, conn, "AccountKey", "sig="):
        assert secret not in r

    for red in (redact, keyfetch.redact):
        masked = red(f"GET {url} failed; conn={conn}; {json.dumps({'key_url': url})}")
        assert sig not in masked and quote(sig, safe="") not in masked and key not in masked
        assert "sig=***" in masked and "AccountKey=***" in masked
        assert "acct.blob.core.windows.net/keys/abc" in masked  # the useful part survives
        sas_conn = f"BlobEndpoint=https://a.blob.core.windows.net;SharedAccessSignature=sv=2020&sig={sig}"
        assert sig not in red(sas_conn)
        nested = "https://proxy/?target=" + quote(url, safe="")
        assert quote(sig, safe="") not in red(nested)


# ----------------------------------------------------------------- Azurite
@needs_azurite
def test_azurite_stop_leaves_no_process_and_no_data():
    server = AzuriteServer()
    server.start()
    pid, data_dir, log = server.pid, server.data_dir, server.log_path
    assert pid and psutil.pid_exists(pid)
    assert data_dir is not None and data_dir.is_dir() and any(data_dir.iterdir())
    assert os.getpgid(pid) == pid  # own process group
    assert server.blob_endpoint.startswith(f"http://127.0.0.1:{server.port}/")
    server.stop()
    assert not psutil.pid_exists(pid)
    assert not [p for p in psutil.process_iter(["pid"]) if _pgid(p.info["pid"]) == pid]
    assert not data_dir.exists() and not log.exists()
    assert not data_dir.parent.exists()
    server.stop()  # idempotent
    assert not server.running and server.pid is None


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@needs_azurite
def test_azurite_command_builder(tmp_path):
    server = AzuriteServer(host="10.0.1.5", port=12345, argv_prefix=["ip", "netns", "exec", "ns1"])
    argv = server.command(data_dir=tmp_path)
    assert argv[:4] == ["ip", "netns", "exec", "ns1"]
    assert Path(argv[5]).name == "main.js" and Path(argv[5]).is_file()
    joined = " ".join(argv)
    for flag in ("--blobHost 10.0.1.5", "--blobPort 12345", f"--location {tmp_path}", "--skipApiVersionCheck"):
        assert flag in joined
    assert "--debug" not in argv and "-d" not in argv
    assert server.command(data_dir=tmp_path, argv_prefix=[])[0].endswith("node")


@needs_azurite
def test_azurite_start_failure_shows_log_tail():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = AzuriteServer(port=busy.getsockname()[1], startup_timeout=20)
        with pytest.raises(AzuriteError) as ei:
            server.start()
    assert "EADDRINUSE" in str(ei.value) or "address already in use" in str(ei.value).lower()
    assert not server.running and server.data_dir is None


def test_missing_node_modules_gives_clear_error(tmp_path, monkeypatch):
    temp = tmp_path / "temp"  # its own temp dir: a parallel test session's Azurite dirs are not this test's
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(AzuriteNotInstalledError) as ei:
        AzuriteServer(node_modules=tmp_path / "node_modules").start()
    assert "npm ci" in str(ei.value)
    monkeypatch.setenv("AIDEPLOY_NODE_MODULES", str(tmp_path / "nowhere"))
    with pytest.raises(AzuriteNotInstalledError) as ei:
        AzuriteServer().start()
    assert "npm ci" in str(ei.value) and "AIDEPLOY_NODE_MODULES" in str(ei.value)
    assert list(temp.iterdir()) == []  # no data dir left behind


def test_parse_listening_url():
    log = "Azurite Blob service is starting on 10.0.1.5:0\nAzurite Blob service successfully listens on http://10.0.1.5:41234\n"
    assert parse_listening_url(log) == "http://10.0.1.5:41234"
    assert parse_listening_url("Azurite Blob service is starting on 127.0.0.1:0\n") is None


def test_blob_storage_uses_given_connection_string_without_starting():
    conn = dev_connection_string("http://127.0.0.1:1/devstoreaccount1")
    with blob_storage(conn) as got:
        assert got == conn


# ------------------------------------------------------- user delegation SAS
class _FakeEntraCredential:
    """Token credential issuing unsigned JWTs (Azurite's --oauth basic skips signature checks)."""

    def get_token(self, *scopes, **kwargs):
        now = int(time.time())
        claims = {
            "aud": "https://storage.azure.com",
            "iss": "https://sts.windows.net/00000000-0000-0000-0000-000000000001/",
            "iat": now - 60, "nbf": now - 60, "exp": now + 3600,
            "oid": "00000000-0000-0000-0000-00000000000a",
            "tid": "00000000-0000-0000-0000-000000000001",
        }
        enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
        return AccessToken(f"{enc({'alg': 'HS256', 'typ': 'JWT'})}.{enc(claims)}.c2ln", now + 3600)


@pytest.fixture
def https_azurite(tmp_path, monkeypatch):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import ipaddress

    if not _HAVE_AZURITE:
        pytest.skip("run `npm ci` in the repo root to install Azurite")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_path))  # trusted by the SDK's requests transport
    server = AzuriteServer(extra_args=["--cert", str(cert_path), "--key", str(key_path), "--oauth", "basic"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@needs_azurite
def test_user_delegation_sas_round_trip(https_azurite, container_name):
    assert https_azurite.blob_endpoint.startswith("https://")
    ks = BlobKeyStore.from_account_url(https_azurite.blob_endpoint, container_name, credential=_FakeEntraCredential())
    assert ks.auth_mode == "user-delegation"
    kid = _key_id()
    url = ks.put(kid, b"delegated key")
    q = parse_qs(urlsplit(url).query)
    assert q["sp"] == ["r"] and q["spr"] == ["https"] and "skoid" in q  # a user-delegation SAS
    fetcher = KeyFetcher(timeout=5, store_url=https_azurite.blob_endpoint)
    assert fetcher.fetch(kid, key_url=url) == b"delegated key"
    forged = _with_query(url, sp="rw")
    with pytest.raises(KeyAccessDeniedError):
        fetcher.fetch(kid, key_url=forged)
    ks.delete(kid)
    ks.delete(kid)
