"""Reliability and security: retries, load, faults, fuzzed input, auth and secrets.

Each fault must end with a one-line cause and a hint (or, for Ctrl-C, the interrupted line),
a non-zero exit, and a complete teardown: no process (the session's leak guard), no temp dir
(every run gets its own TMPDIR, checked empty afterwards), no blob (runs that publish keys to
a test-owned Azurite check its container), no network namespace named after the run.

The figures (throughput, latency, memory) come from ``bench/load.py``; the load test here is
its small version and asserts only zero errors and bounded memory, never a timing.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil
import pytest
import requests
from azure.storage.blob import BlobServiceClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aideploy.artifacts import Endpoint, Request
from aideploy.azurite import DEV_ACCOUNT_KEY, AzuriteServer
from aideploy.blobkeys import BlobKeyStore
from aideploy.errors import PredictError
from aideploy.http import post_all
from aideploy.netns import list_leftovers
from aideploy.process import free_port
from aideploy_scoring.fastlinear import FastClient
from conftest import SERVE_KEY, Cli, fast_params, results_of, served

REPO = Path(__file__).resolve().parent.parent


# ============================================================== retries (aideploy/http.py)


class StubService:
    """A scoring stub on loopback: answers POSTs with scripted statuses (the last one repeats)."""

    def __init__(self, statuses: list[int], delay: float = 0.0, port: int = 0) -> None:
        self.statuses, self.delay, self.requests = list(statuses), delay, 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                index, stub.requests = stub.requests, stub.requests + 1
                time.sleep(stub.delay)
                status = stub.statuses[min(index, len(stub.statuses) - 1)]
                body = json.dumps({"scores": [[0.0]]} if status == 200 else {"error": f"scripted {status}"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("stub", "local", f"http://127.0.0.1:{self.server.server_address[1]}/score")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def stub(statuses, **kwargs):
    service = StubService(statuses, **kwargs)
    try:
        yield service
    finally:
        service.close()


ONE = [Request(b'{"data": [[0]]}', 1)]


def test_a_transient_503_is_retried_and_the_run_goes_on():
    with stub([503, 200]) as service:
        answers = post_all(service.endpoint, ONE, timeout=10)
    assert len(answers.items) == 1 and service.requests == 2


@pytest.mark.parametrize("status", [400, 401, 404, 413, 500])
def test_a_4xx_or_a_500_is_never_retried(status):
    with stub([status, 200]) as service, pytest.raises(PredictError) as caught:
        post_all(service.endpoint, ONE, timeout=10)
    assert service.requests == 1
    assert f"HTTP {status}: scripted {status}" in str(caught.value) and "retries" not in str(caught.value)


def test_a_persistent_502_is_retried_three_times_then_reported():
    with stub([502]) as service, pytest.raises(PredictError) as caught:
        post_all(service.endpoint, ONE, timeout=10)
    assert service.requests == 4
    assert "HTTP 502 (after 3 retries): scripted 502" in str(caught.value)
    assert "key store" in caught.value.hint


def test_connection_refused_while_the_service_starts_is_retried():
    port = free_port()
    started: list[StubService] = []
    timer = threading.Timer(0.2, lambda: started.append(StubService([200], port=port)))
    timer.start()
    try:
        answers = post_all(Endpoint("late", "local", f"http://127.0.0.1:{port}/score"), ONE, timeout=10)
    finally:
        timer.join()
        for service in started:
            service.close()
    assert len(answers.items) == 1 and started[0].requests == 1


def test_a_service_that_never_comes_up_is_reported_as_unreachable():
    port = free_port()
    with pytest.raises(PredictError) as caught:
        post_all(Endpoint("none", "local", f"http://127.0.0.1:{port}/score"), ONE, timeout=10)
    assert "connection refused, after retries" in str(caught.value)


def test_a_timeout_is_not_retried():
    with stub([200], delay=1.5) as service, pytest.raises(PredictError) as caught:
        post_all(service.endpoint, ONE, timeout=0.5)
    assert "did not answer request 1 within 0.5 s" in str(caught.value)
    assert service.requests == 1 and "request_timeout" in caught.value.hint


# ============================================================== shared fixtures


@pytest.fixture(scope="module")
def azurite():
    """A test-owned Azurite: the clients' key store, whose connection string the test knows."""
    with AzuriteServer() as server:
        yield server


@pytest.fixture(scope="module")
def service(tmp_path_factory, azurite):
    """``aideploy mode=serve encryption=fast``, with a fast client whose keys are in ``azurite``.

    Served from aideploy's own interpreter (``environment=current``), which has every scheme's
    runtime, so that one service is fuzzed with fast, seal and plain requests alike; an
    isolated environment has only its own scheme's (a request for another gets a 400).
    """
    tmp = tmp_path_factory.mktemp("relsvc")
    cli = Cli(tmp, tmp / "home")
    with served(cli, "encryption=fast", "target.max_request_mb=1", "environment=current", store=azurite) as uri:
        client = FastClient(64, 10, fast_params(uri))
        store = BlobKeyStore.from_connection_string(azurite.connection_string, "relkeys")
        key_url = store.put(client.key_id, client.public_bundle())
        yield SimpleNamespace(uri=uri, client=client, key_url=key_url, out=tmp / "run1", store=store,
                              store_conn=azurite.connection_string)
        store.delete(client.key_id)


def fast_headers(svc, key: str | None = SERVE_KEY) -> dict:
    headers = {"Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
               "X-Aideploy-Key-Id": svc.client.key_id, "X-Aideploy-Key-Url": svc.key_url}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return headers


def good_request_works(svc) -> bool:
    x = np.full((1, 64), 0.25)
    response = requests.post(svc.uri, data=svc.client.encrypt(x), headers=fast_headers(svc), timeout=60)
    return response.status_code == 200 and svc.client.decrypt(response.content, 1).shape == (1, 10)


def server_pids(svc) -> set[int]:
    """The served deployment's gunicorn master and workers (a crashed worker is replaced: new pid)."""
    port = int(svc.uri.split(":")[2].split("/")[0])
    for conn in psutil.net_connections("tcp"):
        if conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            master = psutil.Process(conn.pid)
            return {master.pid, *(p.pid for p in master.children(recursive=True))}
    raise AssertionError(f"nothing listens on {port}")


# ============================================================== load and memory


def _bench_load():
    spec = importlib.util.spec_from_file_location("bench_load", REPO / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_fast_key_cache_is_bounded_in_bytes(azurite):
    """Many distinct client keys: the worker keeps only what fits in its key cache."""
    from aideploy_scoring.encrypted import FastScheme
    from aideploy_scoring.keyfetch import KeyFetcher
    from aideploy_scoring.service import LinearModel

    rng = np.random.default_rng(0)
    model = LinearModel(rng.normal(0, 0.1, (10, 64)), np.zeros(10))
    limit = 1024 * 1024
    fetcher = KeyFetcher(max_cache_bytes=limit, store_url=azurite.blob_endpoint)
    scheme = FastScheme(model, fetcher)
    store = BlobKeyStore.from_connection_string(azurite.connection_string, "cachebound")
    x = np.full((1, 64), 0.5)
    for _ in range(12):
        client = FastClient(64, 10, scheme.server.params)
        url = store.put(client.key_id, client.public_bundle())
        answer = scheme.score_binary({"key_id": client.key_id, "key_url": url}, client.encrypt(x))
        assert np.allclose(client.decrypt(answer, 1), model.scores(x), atol=1e-3)
        store.delete(client.key_id)
    stats = fetcher.stats
    assert 1 <= stats["items"] <= 3 and stats["bytes"] <= limit
    assert stats["bytes"] >= stats["items"] * 300_000  # a key's real size (prepared key tables), not len(tuple)


def test_load_has_no_errors_and_memory_stays_bounded(tmp_path):
    """bench/load.py, small: 4 clients x 40 fast queries over 30 client keys, 2 MB of key cache."""
    load = _bench_load()
    cfg = load.LoadConfig(clients=4, requests=40, keys=30, cache_mb=2, workers=2, max_seconds=600)
    result = load.run_load(cfg, workdir=tmp_path / "load")
    print(load.table([result]))
    assert result.errors == 0, result.error_samples
    assert result.sent == 160 and result.max_score_error <= 1e-3
    # Bounded: 2 workers x 2 MB of cache, plus allocator slack. Each key the cache could not
    # hold used to stay alive (~1 MB per worker): +60 MB for 30 keys.
    growth = result.rss_mb["peak"] - result.rss_mb["warm"]
    assert growth < 2 * cfg.cache_mb + 24, result.rss_mb


# ============================================================== faults


def run_with_fault(cli: Cli, tmp_path: Path, *overrides: str, fault: str | None = None, after: int = 0,
                   env: dict | None = None):
    """One ``aideploy`` run with its own TMPDIR, and the fault plugin if ``fault`` is given."""
    tmpdir = tmp_path / f"tmpdir{cli.calls + 1}"
    tmpdir.mkdir()
    extra = {"TMPDIR": str(tmpdir), **(env or {})}
    if fault:
        extra.update(PYTEST_AIDEPLOY_FAULT=fault, PYTEST_AIDEPLOY_FAULT_AFTER=str(after))
        overrides = (*overrides, "plugins=[fault_plugins]")
    proc = cli(*overrides, env=extra)
    proc.tmpdir = tmpdir
    return proc


def assert_torn_down(proc, code: int, cause: str, status: str = "failed") -> dict:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    if status == "interrupted":
        assert lines[-1] == "interrupted; everything was torn down", lines[-3:]
    else:
        assert lines[-2].startswith("error: ") and cause in lines[-2], lines[-3:]
        assert lines[-1].startswith("hint: ") and len(lines[-1]) > len("hint: ") + 10, lines[-3:]
    print("\n".join(lines[-2:]))
    results = results_of(proc.out)
    assert results["status"] == status
    assert list(proc.tmpdir.iterdir()) == [], "a temp dir was left behind"
    assert not [ns for ns in list_leftovers() if results["run_id"] in ns], "a namespace was left behind"
    return results


def blobs(azurite: AzuriteServer, container: str) -> list[str]:
    client = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(container)
    return [b.name for b in client.list_blobs()] if client.exists() else []


def test_key_store_down_mid_run(cli, tmp_path):
    """Azurite dies after the keys stage: the service answers 502 (retried), teardown's blob
    delete fails and is logged, and the rest of teardown still runs."""
    proc = run_with_fault(cli, tmp_path, "encryption=fast", "data.limit=5", fault="kill_keystore")
    results = assert_torn_down(proc, 1, "HTTP 502 (after 3 retries): key store at 127.0.0.1:")
    assert "is unreachable" in proc.stderr
    assert any(f.startswith("public keys blob") for f in results["teardown_failures"])
    assert "could not release public keys blob" in (proc.out / "aideploy.log").read_text()
    # ...and teardown went on: the server (released after the blob) was stopped
    assert "Shutting down: Master" in (proc.out / "azmlinfsrv.log").read_text()


@pytest.mark.parametrize("after", [0, 10], ids=["before-predict", "while-predicting"])
def test_service_killed_mid_run(cli, tmp_path, azurite, after):
    proc = run_with_fault(cli, tmp_path, "encryption=fast", "data.limit=120", "keystore.connection_string_env="
                          "TEST_AZURITE", "keystore.container=killed", fault="kill_service", after=after,
                          env={"TEST_AZURITE": azurite.connection_string})
    assert_torn_down(proc, 1, "http://127.0.0.1:")
    assert any(reason in proc.stderr for reason in ("connection refused, after retries",
                                                    "closed the connection before answering", "broke off midway"))
    assert blobs(azurite, "killed") == []


class Proxy:
    """A TCP proxy on loopback that can hold each answer back, and counts the requests it forwards."""

    def __init__(self, target_port: int, delay: float = 0.0) -> None:
        self.target_port, self.delay, self.requests = target_port, delay, 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/score"

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target_port))

        def pump(src, dst, hold: float, count: bool):
            with contextlib.suppress(OSError):
                while data := src.recv(65536):
                    if count:
                        self.requests += data.count(b"POST /score HTTP/1.1")
                    if hold:
                        time.sleep(hold)
                        hold = 0.0
                    dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

        up = threading.Thread(target=pump, args=(client, upstream, 0.0, True), daemon=True)
        up.start()
        pump(upstream, client, self.delay, False)
        up.join(timeout=5)
        client.close()
        upstream.close()

    def close(self) -> None:
        self._closing = True
        self.listener.close()


@contextlib.contextmanager
def proxy_to(uri: str, delay: float = 0.0):
    p = Proxy(int(uri.split(":")[2].split("/")[0]), delay)
    try:
        yield p
    finally:
        p.close()


def test_slow_service_past_the_request_timeout(cli, tmp_path, service):
    with proxy_to(service.uri, delay=3.0) as proxy:
        proc = run_with_fault(cli, tmp_path, "mode=predict", f"scoring_uri={proxy.uri()}", "data.limit=3",
                              "model=sklearn_digits", "predict.concurrency=1", "target.request_timeout=1",
                              env={"AIDEPLOY_SCORING_KEY": SERVE_KEY})
    assert_torn_down(proc, 1, "did not answer request 1 within 1 s")
    assert "target.request_timeout" in proc.stderr
    assert proxy.requests == 1  # a timeout is not retried


def test_a_4xx_from_the_service_is_not_retried(cli, tmp_path, service):
    with proxy_to(service.uri) as proxy:
        proc = run_with_fault(cli, tmp_path, "mode=predict", f"scoring_uri={proxy.uri()}", "data.limit=3",
                              "model=sklearn_digits", "predict.concurrency=1", env={"AIDEPLOY_SCORING_KEY": "not-the-key"})
    assert_torn_down(proc, 1, "HTTP 401: missing or wrong key")
    assert proxy.requests == 1


def test_ctrl_c_during_deploy(cli, tmp_path):
    proc = run_with_fault(cli, tmp_path, fault="sigint_deploy")
    assert_torn_down(proc, 130, "", status="interrupted")
    assert "Booting worker" in (proc.out / "azmlinfsrv.log").read_text()  # it was interrupted mid-start


@pytest.mark.parametrize("network", ["public", "vnet"])
def test_ctrl_c_during_predict(cli, tmp_path, azurite, network):
    """With network=vnet the requests run on a thread in the client's namespace, which the
    signal does not interrupt: it must stop too, or teardown waits for every request."""
    overrides = ["encryption=fast", f"network={network}"]
    env = {}
    if network == "public":  # keys in the test's Azurite, to check the blob is deleted
        overrides += ["keystore.connection_string_env=TEST_AZURITE", "keystore.container=interrupted"]
        env["TEST_AZURITE"] = azurite.connection_string
    proc = run_with_fault(cli, tmp_path, *overrides, fault="sigint_predict", after=10, env=env)
    results = assert_torn_down(proc, 130, "", status="interrupted")
    answered = (proc.out / "azmlinfsrv.log").read_text().count("gunicorn.access")
    print(f"{network}: {answered} of 450 answered, teardown {results['stage_seconds']['teardown']:.2f} s")
    assert answered < 100, f"{answered} of 450 requests were sent after Ctrl-C"
    assert results["stage_seconds"]["teardown"] < 30
    if network == "public":
        assert blobs(azurite, "interrupted") == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "tinyfs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_disk_full_in_the_key_stores_temp_dir(cli, tmp_path, tiny_tmpfs):
    """encryption=seal's ~9 MB of public keys do not fit in a 4 MB TMPDIR (Azurite's data dir)."""
    proc = cli("encryption=seal", "data.limit=1", env={"TMPDIR": str(tiny_tmpfs)})
    proc.tmpdir = tiny_tmpfs
    assert_torn_down(proc, 1, "no room for key")
    assert "MB free" in proc.stderr and "TMPDIR" in proc.stderr.splitlines()[-1]


# ============================================================== fuzzed input


# PYTEST_AIDEPLOY_FUZZ_SCALE=10 runs ten times the examples, freshly random each time, to look further.
FUZZ_SCALE = float(os.environ.get("PYTEST_AIDEPLOY_FUZZ_SCALE", "1"))


def fuzz(examples: int):
    """Bounded and reproducible: the same examples every run, no example database on disk."""
    return settings(max_examples=max(1, int(examples * FUZZ_SCALE)), deadline=None, database=None,
                    derandomize=FUZZ_SCALE == 1, suppress_health_check=list(HealthCheck))


# Examples per fuzz test (about 20 s in all on a 2-core machine).
FUZZ_JSON, FUZZ_BINARY, FUZZ_SEAL = 800, 800, 400

def _json_containers(children):
    return st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    _json_containers, max_leaves=20)
# What requests lets through as a header value: printable ASCII, no surrounding blanks.
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(str.strip)
DROP = object()


def sas_variants(svc) -> st.SearchStrategy[str]:
    """key_url values that only ever point at the live test store (so a 502 could never be the
    client's fault), or are not URLs at all."""
    base, query = svc.key_url.split("?", 1)
    return st.one_of(
        st.builds(lambda sig: base + "?" + query.split("&sig=")[0] + "&sig=" + sig, header_text),
        st.builds(lambda name: base.rsplit("/", 1)[0] + "/" + name + "?" + query, header_text),
        st.builds(lambda q: base + "?" + q, header_text),
        st.builds(lambda n: svc.key_url[:n], st.integers(0, len(svc.key_url))),
        header_text.filter(lambda s: "://" not in s),
    )


def mangled(good: bytes) -> st.SearchStrategy[bytes]:
    """A valid body, cut, with bytes flipped, repeated, or random bytes instead."""
    n = len(good)
    return st.one_of(
        st.just(good),
        st.builds(lambda cut: good[:cut], st.integers(0, n)),
        st.builds(lambda flips: bytes(b ^ flips.get(i, 0) for i, b in enumerate(good)),
                  st.dictionaries(st.integers(0, n - 1), st.integers(1, 255), min_size=1, max_size=8)),
        st.builds(lambda k: good * k, st.integers(2, 3)),
        st.binary(max_size=300),
    )


@st.composite
def mutated(draw, valid: dict, fields: dict) -> dict:
    """``valid`` with up to three fields replaced by a fuzz value or dropped; sometimes intact."""
    out = dict(valid)
    for name in draw(st.sets(st.sampled_from(sorted(fields)), max_size=3)):
        value = draw(fields[name] | st.just(DROP))
        if value is DROP:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def fuzz_post(svc, body: bytes, headers: dict, seen: Counter) -> requests.Response:
    response = requests.post(svc.uri, data=body, headers=headers, timeout=60)
    seen[response.status_code] += 1
    assert response.status_code < 500, (response.status_code, response.text[:300], headers, body[:200])
    return response


def test_a_sas_with_malformed_percent_encoding_is_refused_as_the_clients_fault(azurite):
    """Found by the binary fuzz: Azurite answers HTTP 500 to a SAS whose query has a '%' not
    followed by two hex digits (it decodes twice), which the service reported as 502 (store
    failed). The service now refuses such a SAS itself, with 400."""
    from aideploy_scoring.keyfetch import KeyFetcher, KeyRequestError

    store = BlobKeyStore.from_connection_string(azurite.connection_string, "percent")
    url = store.put("pctkey", b"x" * 100)
    bad_sig = url.split("&sig=")[0] + "&sig=ab%zz"
    assert requests.head(bad_sig, timeout=10).status_code == 500  # what Azurite does with it
    endpoint = azurite.blob_endpoint
    for kwargs in ({"key_url": bad_sig}, {"key_url": url[:url.rindex("%") + 1]},
                   {"conn_str": f"BlobEndpoint={endpoint};SharedAccessSignature=sv=2021-08-06&sig=ab%zz",
                    "container": "percent"}):
        with pytest.raises(KeyRequestError) as caught:
            KeyFetcher(store_url=endpoint).fetch("pctkey", **kwargs)
        assert caught.value.http_status == 400 and "percent-encoding" in str(caught.value)
    assert KeyFetcher(store_url=endpoint).fetch("pctkey", key_url=url) == b"x" * 100
    store.delete("pctkey")


def test_the_served_service_contacts_no_host_but_its_key_store(service):
    """Over HTTP, as in the review: a key_url on another loopback port is refused before any
    connection is made (tests/test_ssrf.py has the other attacks, on the service classes)."""
    from test_ssrf import Target

    with Target() as target:
        headers = {**fast_headers(service), "X-Aideploy-Key-Url": target.url(service.client.key_id)}
        response = requests.post(service.uri, data=service.client.encrypt(np.zeros((1, 64))), headers=headers,
                                 timeout=60)
        assert target.seen == []
    assert response.status_code == 400 and "is not allowed" in response.json()["error"]
    assert good_request_works(service)


def test_fuzz_json_bodies(service):
    """Plain and fast requests as JSON: valid ones with fields mutated, any JSON, any bytes."""
    before = server_pids(service)
    query = base64.b64encode(service.client.encrypt(np.zeros((1, 64)))).decode()
    fast = {"scheme": "fast", "data": query, "key_id": service.client.key_id, "key_url": service.key_url}
    plain = {"data": [[0.5] * 64]}
    fields = {
        "scheme": st.sampled_from(["none", "fast", "seal", "rot13", ""]) | json_values,
        "data": json_values | mangled(base64.b64decode(query)).map(lambda b: base64.b64encode(b).decode())
        | st.text(max_size=50) | st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(),
                                                   min_size=63, max_size=65), max_size=3),
        "key_id": header_text | json_values, "key_url": sas_variants(service) | json_values,
        "conn_str": header_text | json_values, "container": header_text | json_values, "padding": json_values}
    seen: Counter = Counter()

    @fuzz(FUZZ_JSON)
    @given(body=st.one_of(
        mutated(fast, fields).map(lambda d: json.dumps(d).encode()),  # json.dumps writes NaN and Infinity
        mutated(plain, fields).map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=200)))
    def check(body):
        fuzz_post(service, body, {"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"}, seen)

    check()
    print(f"fuzz json: {sum(seen.values())} examples, statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[400]  # the fuzz reached both good answers and refusals
    assert good_request_works(service) and server_pids(service) == before


def test_fuzz_binary_bodies_and_headers(service):
    """Fast queries as application/octet-stream: mangled queries, mutated and random headers."""
    before = server_pids(service)
    good = service.client.encrypt(np.zeros((1, 64)))
    other = FastClient(64, 10, service.client.params).encrypt(np.zeros((1, 64)))  # a key the service never saw
    valid = {k: v for k, v in fast_headers(service).items()}
    fields = {"X-Aideploy-Scheme": st.sampled_from(["fast", "seal", "none", "FAST"]) | header_text,
              "X-Aideploy-Key-Id": header_text, "X-Aideploy-Key-Url": sas_variants(service),
              "Content-Type": st.sampled_from(["application/octet-stream; x=1", "application/json", "text/plain"])}
    extra = st.dictionaries(st.from_regex(r"X-[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True), header_text,
                            max_size=4)
    seen: Counter = Counter()

    @fuzz(FUZZ_BINARY)
    @given(body=mangled(good) | st.just(other), headers=mutated(valid, fields), extra=extra)
    def check(body, headers, extra):
        fuzz_post(service, body, {**extra, **headers}, seen)

    check()
    print(f"fuzz binary: {sum(seen.values())} examples, statuses {dict(sorted(seen.items()))}")
    assert seen[200] and seen[400]
    assert good_request_works(service) and server_pids(service) == before


@pytest.fixture(scope="module")
def fake_seal_keys(service):
    """Key blobs that are not encrypted-inference keys, in the live store: cheap, and they get
    past the key fetch to the key validation, which must refuse them before native code."""
    from aideploy_scoring.seal_ei import _COMPR_DEFLATE, _header

    blobs = {"sealfake-random": os.urandom(4096), "sealfake-empty": b"",
             "sealfake-header": _header(_COMPR_DEFLATE, 16 + 512) + os.urandom(512)}
    urls = {key_id: service.store.put(key_id, data) for key_id, data in blobs.items()}
    yield urls
    for key_id in urls:
        service.store.delete(key_id)


def test_fuzz_seal_with_cheap_invalid_inputs(service, fake_seal_keys):
    """The seal scheme validates everything before native code sees it (a bad ciphertext or key
    aborts the worker otherwise): ciphertexts, keys named by a SAS, the seed's connection strings."""
    from aideploy_scoring.seal_ei import _COMPR_NONE, _header

    before = server_pids(service)
    ciphertext = st.one_of(
        st.binary(max_size=300).map(lambda b: base64.b64encode(b).decode()),
        st.binary(min_size=0, max_size=200).map(lambda b: base64.b64encode(_header(_COMPR_NONE, 16 + len(b)) + b)
                                                 .decode()),
        json_values)
    key = st.sampled_from(sorted(fake_seal_keys.items()))
    seen: Counter = Counter()

    @fuzz(FUZZ_SEAL)
    @given(key=key, payload=st.fixed_dictionaries(
        {"data": st.lists(ciphertext, min_size=0, max_size=11) | json_values},
        optional={"scheme": st.just("seal"), "padding": json_values}), mutate=st.sampled_from(
        ["none", "key_id", "key_url", "conn_str"]), junk=header_text)
    def check(key, payload, mutate, junk):
        key_id, url = key
        payload = {**payload, "key_id": key_id, "key_url": url}
        if mutate == "key_id":
            payload["key_id"] = junk
        elif mutate == "key_url":
            payload["key_url"] = url[: len(junk)] + junk
        elif mutate == "conn_str":  # the seed's form, to the test store, with a wrong account key
            del payload["key_url"]
            payload.update(conn_str=service.store_conn.replace("AccountKey=", "AccountKey=" + junk[:4]),
                           container="relkeys")
        response = requests.post(service.uri, data=json.dumps(payload), timeout=60,  # NaN allowed
                                 headers={"Authorization": f"Bearer {SERVE_KEY}", "Content-Type": "application/json"})
        seen[response.status_code] += 1
        assert response.status_code < 500, (response.status_code, response.text[:300])

    check()
    print(f"fuzz seal: {sum(seen.values())} examples, statuses {dict(sorted(seen.items()))}")
    assert seen[400] and seen[403]
    assert good_request_works(service) and server_pids(service) == before


# ============================================================== auth


@pytest.mark.parametrize("authorization", [None, "", "Bearer ", "Bearer not-the-key", f"bearer {SERVE_KEY}",
                                           f"Basic {SERVE_KEY}", f"Bearer {SERVE_KEY}x", SERVE_KEY])
def test_requests_without_the_right_key_get_401(service, authorization):
    for body, headers in ((b'{"data": [[0.0]]}', {"Content-Type": "application/json"}),
                          (service.client.encrypt(np.zeros((1, 64))), fast_headers(service, key=None))):
        if authorization is not None:
            headers = {**headers, "Authorization": authorization}
        response = requests.post(service.uri, data=body, headers=headers, timeout=30)
        assert response.status_code == 401, response.text
        assert "Authorization: Bearer" in response.json()["error"]
    assert good_request_works(service)


def test_the_key_from_the_environment_works_and_is_never_written(service):
    """...nor is the SAS the service was sent with every request of this module."""
    assert good_request_works(service)
    sig = service.key_url.split("sig=", 1)[1].split("&", 1)[0]
    files = [p for p in service.out.rglob("*") if p.is_file()]
    assert any(p.name == "azmlinfsrv.log" for p in files) and any(p.name == "config.yaml" for p in files)
    for path in files:
        data = path.read_bytes()
        assert SERVE_KEY.encode() not in data and sig.encode() not in data, path
        if path.suffix == ".log":
            assert b"sig=" not in data, path


def test_the_service_listens_on_the_network_host_only(service):
    """azmlinfsrv binds 0.0.0.0; with network=public (host 127.0.0.1) only loopback may answer."""
    port = int(service.uri.split(":")[2].split("/")[0])
    listening = {c.laddr.ip for c in psutil.net_connections("tcp") if c.laddr.port == port
                 and c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}


def test_a_generated_key_is_shown_once_works_and_is_never_written(cli):
    env = {k: v for k, v in os.environ.items() if k != "AIDEPLOY_SCORING_KEY"}
    proc, out = cli.start("mode=serve", env=env)
    seen: list[str] = []
    try:
        for line in proc.stdout:  # the terminal: stdout and stderr
            seen.append(line)
            if line.startswith("scoring key (shown once"):
                break
        key = seen[-1].strip().rsplit(": ", 1)[1]
        deadline = time.monotonic() + 180
        while not (out / "endpoint.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        uri = json.loads((out / "endpoint.json").read_text())["scoring_uri"]
        body = {"data": [[0.0] * 64]}
        response = requests.post(uri, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert response.status_code == 200 and len(response.json()["probabilities"][0]) == 10
        assert requests.post(uri, json=body, timeout=30).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        seen.append(proc.communicate(timeout=60)[0])
    assert proc.returncode == 0, "".join(seen)
    assert len(key) >= 32 and "".join(seen).count(key) == 1
    files = [p for p in out.rglob("*") if p.is_file()]
    assert {"aideploy.log", "azmlinfsrv.log", "endpoint.json", "results.json"} <= {p.name for p in files}
    for path in files:
        assert key.encode() not in path.read_bytes(), path


# ============================================================== secrets


def needles(secret_key: bytes, key_url: str, conn_str: str, endpoint_key: str) -> dict[str, list[bytes]]:
    sig = key_url.split("sig=", 1)[1].split("&", 1)[0]
    from urllib.parse import unquote

    return {
        "secret key": [secret_key[:48], base64.b64encode(secret_key)[:64], secret_key[:32].hex().encode()],
        "SAS URL": [key_url.encode()],
        "SAS token (sig=)": [sig.encode(), unquote(sig).encode()],
        "connection string": [conn_str.encode()],
        "account key": [DEV_ACCOUNT_KEY.encode(), DEV_ACCOUNT_KEY[:40].encode()],
        "endpoint key": [endpoint_key.encode()],
    }


@pytest.mark.parametrize("encryption,limit", [("fast", 20), ("seal", 2)])
def test_no_secret_in_any_output(cli, tmp_path, azurite, encryption, limit):
    capture = tmp_path / "captured.json"
    endpoint_key = "endpoint-key-" + os.urandom(12).hex()
    store = tmp_path / "tracking"  # the MLflow store is an output too
    proc = cli(f"encryption={encryption}", f"data.limit={limit}", "plugins=[leak_capture_plugin]",
               "keystore.connection_string_env=TEST_AZURITE", "keystore.container=secrets",
               "tracking=mlflow", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
               env={"TEST_AZURITE": azurite.connection_string, "PYTEST_AIDEPLOY_CAPTURE_FILE": str(capture),
                    "AIDEPLOY_SCORING_KEY": endpoint_key})
    assert proc.returncode == 0, proc.stderr
    captured = json.loads(capture.read_text())
    found = needles(base64.b64decode(captured["secret_key"]), captured["key_url"], azurite.connection_string,
                    endpoint_key)
    files = [p for p in proc.out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"aideploy.log", "azmlinfsrv.log", "results.json", "config.yaml", "overrides.yaml"} <= names
    haystacks = {"stdout": proc.stdout.encode(), "stderr": proc.stderr.encode()}
    haystacks.update({str(p.relative_to(proc.out)): p.read_bytes() for p in files})
    tracked = [p for p in store.rglob("*") if p.is_file()]
    assert {"mlflow.db", "results.json", "azmlinfsrv.log"} <= {p.name for p in tracked}
    haystacks.update({f"tracking store: {p.relative_to(store)}": p.read_bytes() for p in tracked})
    leaks = [(what, where) for what, values in found.items() for value in values
             for where, hay in haystacks.items() if value in hay]
    assert leaks == []
    assert blobs(azurite, "secrets") == []
