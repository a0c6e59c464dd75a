#!/usr/bin/env python
"""Load test: plaintext and ``encryption=fast`` against the same server config, in one invocation.

For each of ``encryption=none`` and ``encryption=fast`` it starts ``aideploy mode=serve
target.worker_count=W`` (the real azmlinfsrv, gunicorn master + W workers; the rest of the
config identical) one after the other, with one Azurite for the clients' public keys, and
measures on each:

1. **fresh**: the first 50 requests of the new deployment, one client (the cold start), after
   what precedes them in a real run: the platform's health probes (``GET /``, twice) and, for
   fast, the client's key registration (timed and reported apart);
2. **single**: one client, sequential requests (the per-request overhead);
3. **load**: C threads of R requests each, every thread on its own keep-alive session;
4. **batch**: C threads sending ``--batch`` samples per request, in samples/s.

Every query is made before the timed phases (fast: encrypted with K client key pairs, used
round-robin, so the service's key cache sees K distinct keys; plain: the JSON body), and
every answer is checked after them (fast: decrypted); both client costs are reported apart.
A sampler sums the RSS of the server's processes (master + workers) with psutil while the
load runs, and their PSS (shared pages split between the processes that map them) is read
after it. Bounded in count and in time (``--max-seconds`` per phase; requests not sent by
then are reported as skipped, not as errors).

    .venv/bin/python bench/load.py                     # 8 clients x 500 (batch: x 50), 50 keys
    .venv/bin/python bench/load.py --environment current --json load.json
    .venv/bin/python bench/load.py --cache-mb 4        # also: fast alone with a 4 MB/worker key cache

Everything it starts is stopped, and its temp dir deleted, when it ends (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import joblib
import numpy as np
import psutil
import requests

from aideploy.azurite import AzuriteServer
from aideploy.blobkeys import BlobKeyStore
from aideploy.datasets import digits_split
from aideploy_scoring.fastlinear import FastClient, FastParams
from aideploy_scoring.inputranges import InputRanges

AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
MB = 1024 * 1024
FRESH_REQUESTS = 50


@dataclass
class LoadConfig:
    clients: int = 8  # concurrent threads
    requests: int = 500  # requests per thread
    keys: int = 50  # distinct client key pairs, used round-robin
    cache_mb: float = 256.0  # AIDEPLOY_KEY_CACHE_BYTES, per worker (the service's default)
    workers: int = 2  # target.worker_count
    max_seconds: float = 300.0  # deadline of each timed phase
    timeout: float = 30.0  # per request
    sample_every: float = 0.2  # RSS sampling interval, seconds
    batch: int = 64  # samples per request in the batch phase
    batch_requests: int = 50  # batch requests per thread
    single_requests: int = 500  # sequential requests of the single-client phase
    environment: str | None = None  # aideploy's environment= (None: its default)


@dataclass
class LoadResult:
    config: dict
    encryption: str = "fast"
    sent: int = 0
    ok: int = 0
    errors: int = 0
    skipped: int = 0
    error_samples: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    throughput_rps: float = 0.0
    latency_ms: dict = field(default_factory=dict)
    max_score_error: float = 0.0
    rss_mb: dict = field(default_factory=dict)  # idle, warm, peak, end, and at 25/50/75 % done
    rss_samples: int = 0
    pss_mb: dict = field(default_factory=dict)  # warm, end
    fresh_ms: dict = field(default_factory=dict)  # first requests of the new deployment: p50, max
    register_ms: float = 0.0  # fast: the key registration before them
    single_ms: dict = field(default_factory=dict)  # one client: p50, p99
    batch: dict = field(default_factory=dict)  # samples/s, p50/p99 ms, errors
    client_ms: dict = field(default_factory=dict)  # per request: prepare (encrypt), check (decrypt)
    numba_workers: int = 0  # workers with numba's LLVM loaded (0: the kernels' ahead-of-time build)


# ------------------------------------------------------------------ the served deployment


@dataclass
class Served:
    uri: str
    key: str
    master_pid: int
    model_file: Path
    output_dir: Path


def server_processes(master_pid: int) -> list[psutil.Process]:
    """The gunicorn master (azmlinfsrv) and its workers."""
    try:
        master = psutil.Process(master_pid)
        return [master, *master.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def numba_workers(master_pid: int) -> int:
    """How many of the server's processes have LLVM (numba just in time) mapped."""
    count = 0
    for proc in server_processes(master_pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, OSError):
            count += any("llvmlite" in m.path for m in proc.memory_maps())
    return count


def server_rss(master_pid: int) -> int:
    total = 0
    for proc in server_processes(master_pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


def server_pss(master_pid: int) -> int:
    """PSS summed over the server's processes: what they occupy, shared pages counted once."""
    total = 0
    for proc in server_processes(master_pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_full_info().pss
    return total


@contextlib.contextmanager
def serve(workdir: Path, workers: int, cache_bytes: int, extra: tuple[str, ...] = (),
          startup_timeout: float = 300, encryption: str = "fast", store: AzuriteServer | None = None
          ) -> Iterator[Served]:
    """``aideploy mode=serve encryption=...`` until the block ends (then Ctrl-C, as a user would);
    ``store`` is its key store (the only one the service fetches keys from)."""
    key = secrets.token_urlsafe(32)
    out, home = workdir / f"serve-{encryption}", workdir / "home"
    env = {**os.environ, "AIDEPLOY_SCORING_KEY": key, "AIDEPLOY_KEY_CACHE_BYTES": str(cache_bytes)}
    if store is not None:
        env["BENCH_KEYSTORE"] = store.connection_string
        extra = (*extra, "keystore.connection_string_env=BENCH_KEYSTORE")
    argv = [AIDEPLOY, "mode=serve", f"encryption={encryption}", f"target.worker_count={workers}", f"home={home}",
            f"hydra.run.dir={out}", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        while not (out / "endpoint.json").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"aideploy mode=serve exited with {proc.returncode}:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("aideploy mode=serve did not start in time")
            time.sleep(0.05)
        endpoint = json.loads((out / "endpoint.json").read_text())
        record = json.loads((home / "deployments" / f"{endpoint['name']}.json").read_text())
        model = endpoint["model"]
        model_file = home / "models" / model["name"] / str(model["version"]) / "model.pkl"
        yield Served(endpoint["scoring_uri"], key, record["pid"], model_file, out)
    finally:
        # Ctrl-C, as a user would; SIGTERM also tears down. Never SIGKILL first: that orphans the server.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=60)
                break
            except subprocess.TimeoutExpired:
                continue


# ------------------------------------------------------------------ clients


@dataclass
class Query:
    """One request made in advance, and how to check its answer afterwards."""

    body: bytes
    headers: dict[str, str]
    rows: np.ndarray  # sample indices it holds
    check: Callable[[bytes], np.ndarray]  # answer -> scores (n_samples, n_classes)


def served_params(served: Served) -> tuple[FastParams, InputRanges]:
    """The fast parameters and input ranges the service publishes (``GET /score``): the only ones it serves."""
    info = requests.get(served.uri, headers={"Authorization": f"Bearer {served.key}"}, timeout=60).json()
    return FastParams.from_json(json.dumps(info["fast"]["params"]).encode()), \
        InputRanges.from_json(info["fast"]["input_ranges"])


class FastQueries:
    """K client key pairs with their public bundles in the store, and queries made in advance
    (each row mapped into [-1, 1] by the service's input ranges, as a client does)."""

    def __init__(self, n_keys: int, store: BlobKeyStore, X: np.ndarray, n_classes: int, per_key: int,
                 served: tuple[FastParams, InputRanges], batch: int = 1) -> None:
        params, ranges = served
        self.clients: list[FastClient] = []
        self.registrations: list[bytes] = []  # the key registration of each client, JSON
        self.queries: list[Query] = []  # round-robin over the keys
        self.encrypt_s = 0.0
        rng = np.random.default_rng(0)
        for _ in range(n_keys):
            client = FastClient(X.shape[1], n_classes, params)
            url = store.put(client.key_id, client.public_bundle())
            self.clients.append(client)
            self.registrations.append(json.dumps({"scheme": "fast", "register_key": True, "key_id": client.key_id,
                                                  "key_url": url}).encode())
            headers = {"Content-Type": "application/octet-stream", "X-Aideploy-Scheme": "fast",
                       "X-Aideploy-Key-Id": client.key_id, "X-Aideploy-Key-Url": url}
            for _ in range(per_key):
                rows = rng.choice(len(X), size=batch, replace=False)
                start = time.perf_counter()
                body = client.encrypt(ranges.normalize(X[rows]))
                self.encrypt_s += time.perf_counter() - start
                self.queries.append(Query(body, headers, rows,
                                          lambda answer, c=client, n=batch: c.decrypt(answer, n)))
        # key 0, key 1, ..., key K-1, key 0, ...: a request's key changes every time
        self.queries = [self.queries[k * per_key + i] for i in range(per_key) for k in range(n_keys)]


def _plain_values(answer: dict) -> np.ndarray:
    """What a plain answer gives to check: the probabilities, else the scores."""
    return np.asarray(answer["probabilities"] if "probabilities" in answer else answer["scores"], dtype=np.float64)


class PlainQueries:
    """The same samples as JSON bodies, made in advance; the answer's probabilities are checked."""

    def __init__(self, X: np.ndarray, count: int, batch: int = 1) -> None:
        rng = np.random.default_rng(0)
        self.queries = []
        self.encrypt_s = 0.0
        for _ in range(count):
            rows = rng.choice(len(X), size=batch, replace=False)
            start = time.perf_counter()
            body = json.dumps({"data": X[rows].tolist()}).encode()
            self.encrypt_s += time.perf_counter() - start
            self.queries.append(Query(body, {"Content-Type": "application/json"}, rows,
                                      lambda answer: _plain_values(json.loads(answer))))


class RssSampler(threading.Thread):
    def __init__(self, master_pid: int, every: float) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.master_pid, self.every = master_pid, every
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.samples.append((time.monotonic(), server_rss(self.master_pid)))
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


@dataclass
class Phase:
    """What one timed phase saw: per request (latency ms, query, answer or None, error or None)."""

    wall_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    answers: list[tuple[Query, bytes]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    skipped: int = 0
    marks: dict[int, float] = field(default_factory=dict)  # progress quartile -> time reached


def _run_phase(served: Served, queries: list[Query], clients: int, per_client: int, cfg: LoadConfig,
               keep: int | None = None) -> Phase:
    """``clients`` threads x ``per_client`` requests over ``queries`` round-robin; answers are kept
    (up to ``keep`` per thread) and checked later, outside the timed phase."""
    phase = Phase()
    total = clients * per_client
    lock = threading.Lock()
    deadline = time.monotonic() + cfg.max_seconds
    auth = {"Authorization": f"Bearer {served.key}"}

    def client(c: int) -> int:
        with requests.Session() as session:
            for i in range(per_client):
                if time.monotonic() > deadline:
                    return per_client - i
                query = queries[(c * per_client + i) % len(queries)]
                error, answer = None, None
                start = time.perf_counter()
                try:
                    response = session.post(served.uri, data=query.body, headers={**auth, **query.headers},
                                            timeout=cfg.timeout)
                    latency = (time.perf_counter() - start) * 1000.0
                    if response.status_code != 200:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                    elif keep is None or i < keep:
                        answer = response.content
                except Exception as exc:  # counted, not raised: the run goes on
                    latency = (time.perf_counter() - start) * 1000.0
                    error = f"{type(exc).__name__}: {exc}"[:200]
                with lock:
                    phase.latencies.append(latency)
                    if error:
                        phase.errors.append(error)
                    elif answer is not None:
                        phase.answers.append((query, answer))
                    done = len(phase.latencies)
                    for q in (25, 50, 75):
                        if q not in phase.marks and done >= total * q / 100:
                            phase.marks[q] = time.monotonic()
        return 0

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        phase.skipped = sum(pool.map(client, range(clients)))
    phase.wall_s = time.monotonic() - start
    return phase


def _check(phase: Phase, expected: np.ndarray, tolerance: float) -> tuple[float, float, list[str]]:
    """Decrypt (fast) or read (plain) every kept answer: (max score error, seconds spent, errors)."""
    worst, errors = 0.0, []
    start = time.perf_counter()
    for query, answer in phase.answers:
        try:
            scores = query.check(answer)
            err = float(np.abs(scores - expected[query.rows]).max())
        except Exception as exc:  # a broken answer is an error of the run, not of the bench
            errors.append(f"{type(exc).__name__}: {exc}"[:200])
            continue
        if err > tolerance:
            errors.append(f"score error {err:g} for samples {query.rows[:4].tolist()}")
        worst = max(worst, err)
    return worst, time.perf_counter() - start, errors


def _percentiles(latencies: list[float]) -> dict:
    lat = np.asarray(latencies)
    if not len(lat):
        return {}
    p50, p90, p99 = np.percentile(lat, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(lat.max())}


def _warm_up(served: Served, queries: list[Query], cfg: LoadConfig) -> None:
    """A few concurrent rounds, so every worker has served (and cached a key) before measuring."""
    _run_phase(served, queries, 2 * cfg.workers, 4, cfg)


def run_mode(encryption: str, cfg: LoadConfig, workdir: Path, azurite: AzuriteServer,
             X: np.ndarray) -> LoadResult:
    """Serve with ``encryption``, run the four phases, check every kept answer, tear down."""
    result = LoadResult(config=asdict(cfg), encryption=encryption)
    extra = (f"environment={cfg.environment}",) if cfg.environment else ()
    tolerance = 1e-3 if encryption == "fast" else 1e-9
    with serve(workdir, cfg.workers, int(cfg.cache_mb * MB), extra, encryption=encryption, store=azurite) as served:
        model = joblib.load(served.model_file)
        # the fast scheme answers the logits; a plain answer carries the probabilities where the model has them
        expected = model.decision_function(X) if encryption == "fast" else model.predict_proba(X)
        if encryption == "fast":
            store = BlobKeyStore.from_connection_string(azurite.connection_string, f"loadkeys{secrets.token_hex(4)}")
            params = served_params(served)
            single = FastQueries(cfg.keys, store, X, expected.shape[1], per_key=4, served=params)
            batch = FastQueries(min(cfg.keys, 8), store, X, expected.shape[1], per_key=2, served=params,
                                batch=cfg.batch)
        else:
            store = None
            single = PlainQueries(X, 4 * cfg.keys)
            batch = PlainQueries(X, 16, batch=cfg.batch)
        result.rss_mb["idle"] = server_rss(served.master_pid) / MB
        # 1. fresh: the first requests the deployment ever serves (one client, one key)
        auth = {"Authorization": f"Bearer {served.key}"}
        for _ in range(2):  # the health probes of the platform (and of the local target's readiness check)
            requests.get(served.uri.rsplit("/", 1)[0] + "/", timeout=cfg.timeout).raise_for_status()
        if encryption == "fast":
            start = time.perf_counter()
            requests.post(served.uri, data=single.registrations[0], headers={**auth, "Content-Type": "application/json"},
                          timeout=cfg.timeout).raise_for_status()
            result.register_ms = (time.perf_counter() - start) * 1000.0
        fresh = _run_phase(served, single.queries[:1], 1, FRESH_REQUESTS, cfg)
        result.fresh_ms = {k: v for k, v in _percentiles(fresh.latencies).items() if k in ("p50", "max")}
        _warm_up(served, single.queries, cfg)
        result.rss_mb["warm"] = server_rss(served.master_pid) / MB
        result.pss_mb["warm"] = server_pss(served.master_pid) / MB
        result.numba_workers = numba_workers(served.master_pid)
        # 2. single client
        one = _run_phase(served, single.queries, 1, cfg.single_requests, cfg)
        result.single_ms = {k: v for k, v in _percentiles(one.latencies).items() if k in ("p50", "p99")}
        # 3. load, with the RSS sampler
        sampler = RssSampler(served.master_pid, cfg.sample_every)
        sampler.start()
        try:
            load = _run_phase(served, single.queries, cfg.clients, cfg.requests, cfg)
        finally:
            sampler.stop()
        # 4. batch
        many = _run_phase(served, batch.queries, cfg.clients, cfg.batch_requests, cfg, keep=4)
        time.sleep(1.0)
        result.rss_mb["end"] = server_rss(served.master_pid) / MB
        result.pss_mb["end"] = server_pss(served.master_pid) / MB
        if store is not None:
            store.close()
    # After the timed phases: check every answer kept (all of the load phase's).
    phases = (fresh, one, load)
    worst, check_s, check_errors = 0.0, 0.0, []
    for phase in phases:
        w, seconds, errs = _check(phase, expected, tolerance)
        worst, check_s, check_errors = max(worst, w), check_s + seconds, check_errors + errs
    b_worst, b_check_s, b_errors = _check(many, expected, tolerance)
    result.sent = len(load.latencies)
    result.errors = len(load.errors) + len(check_errors) + len(fresh.errors) + len(one.errors)
    result.skipped = load.skipped
    result.error_samples = (fresh.errors + one.errors + load.errors + check_errors)[:5]
    result.ok = result.sent - len(load.errors)
    result.wall_s = load.wall_s
    result.throughput_rps = result.sent / load.wall_s if load.wall_s else 0.0
    result.latency_ms = _percentiles(load.latencies)
    result.max_score_error = max(worst, b_worst)
    checked = sum(len(p.answers) for p in phases)
    result.client_ms = {"prepare": 1000.0 * single.encrypt_s / len(single.queries),
                        "check": 1000.0 * check_s / max(checked, 1),
                        "prepare_batch": 1000.0 * batch.encrypt_s / len(batch.queries),
                        "check_batch": 1000.0 * b_check_s / max(len(many.answers), 1)}
    sent_batch = len(many.latencies)
    result.batch = {"samples_per_s": cfg.batch * (sent_batch - len(many.errors)) / many.wall_s if many.wall_s else 0.0,
                    "sent": sent_batch, "errors": len(many.errors) + len(b_errors), "checked": len(many.answers),
                    **{k: v for k, v in _percentiles(many.latencies).items() if k in ("p50", "p99")}}
    result.error_samples += (many.errors + b_errors)[:3]
    _rss_summary(result, sampler.samples, load.marks)
    return result


def _rss_summary(result: LoadResult, samples: list[tuple[float, int]], marks: dict[int, float]) -> None:
    result.rss_samples = len(samples)
    if samples:
        result.rss_mb["peak"] = max(rss for _, rss in samples) / MB
        for q, when in sorted(marks.items()):
            at = min(samples, key=lambda s: abs(s[0] - when))
            result.rss_mb[f"at_{q}pct"] = at[1] / MB


def run_compare(cfg: LoadConfig, workdir: Path | None = None) -> list[LoadResult]:
    """Plaintext, then fast, against the same server config: the fair comparison."""
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="aideploy-load-")) if owned else workdir
    try:
        _, X_test, _, _ = digits_split(0.25, 0)
        with AzuriteServer() as azurite:
            return [run_mode(encryption, cfg, workdir, azurite, X_test) for encryption in ("none", "fast")]
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)


def run_load(cfg: LoadConfig, workdir: Path | None = None) -> LoadResult:
    """Fast alone (the key cache and memory scenario): serve, load, measure, tear down."""
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="aideploy-load-")) if owned else workdir
    result = LoadResult(config=asdict(cfg))
    try:
        _, X_test, _, _ = digits_split(0.25, 0)
        extra = (f"environment={cfg.environment}",) if cfg.environment else ()
        with AzuriteServer() as azurite, serve(workdir, cfg.workers, int(cfg.cache_mb * MB), extra,
                                               store=azurite) as served:
            store = BlobKeyStore.from_connection_string(azurite.connection_string, "loadkeys")
            model = joblib.load(served.model_file)
            expected = model.decision_function(X_test)
            ring = FastQueries(cfg.keys, store, X_test, expected.shape[1], per_key=4, served=served_params(served))
            result.rss_mb["idle"] = server_rss(served.master_pid) / MB
            _warm_up(served, ring.queries[:1], cfg)
            result.rss_mb["warm"] = server_rss(served.master_pid) / MB
            sampler = RssSampler(served.master_pid, cfg.sample_every)
            sampler.start()
            try:
                load = _run_phase(served, ring.queries, cfg.clients, cfg.requests, cfg)
            finally:
                sampler.stop()
            time.sleep(1.0)
            result.rss_mb["end"] = server_rss(served.master_pid) / MB
            store.close()
        worst, _, check_errors = _check(load, expected, 1e-3)
        result.sent, result.skipped, result.wall_s = len(load.latencies), load.skipped, load.wall_s
        result.errors = len(load.errors) + len(check_errors)
        result.ok = result.sent - len(load.errors)
        result.error_samples = (load.errors + check_errors)[:5]
        result.throughput_rps = result.sent / load.wall_s if load.wall_s else 0.0
        result.latency_ms = _percentiles(load.latencies)
        result.max_score_error = worst
        _rss_summary(result, sampler.samples, load.marks)
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


# ------------------------------------------------------------------ command line


def _lat(d: dict, keys=("p50", "p99")) -> str:
    return " / ".join(f"{d[k]:.2f}" for k in keys) + " ms" if d else "-"


def compare_table(plain: LoadResult, fast: LoadResult) -> str:
    """The issue's table: plaintext and fast side by side, and the ratios."""
    c = fast.config
    rows = [
        ("server", f"azmlinfsrv, {c['workers']} workers", "same"),
        (f"load: {c['clients']} clients x {c['requests']} requests, 1 sample/request",
         f"{plain.throughput_rps:.1f} req/s", f"{fast.throughput_rps:.1f} req/s"),
        ("load latency p50 / p99", _lat(plain.latency_ms), _lat(fast.latency_ms)),
        ("load requests sent / errors", f"{plain.sent} / {plain.errors}", f"{fast.sent} / {fast.errors}"),
        (f"single client, {c['single_requests']} requests: p50 / p99", _lat(plain.single_ms), _lat(fast.single_ms)),
        (f"batch of {c['batch']}: {c['clients']} clients x {c['batch_requests']} requests",
         f"{plain.batch.get('samples_per_s', 0):,.0f} samples/s", f"{fast.batch.get('samples_per_s', 0):,.0f} samples/s"),
        ("batch latency p50 / p99", _lat(plain.batch), _lat(fast.batch)),
        ("fresh deployment: the client's key registration, before its queries", "-", f"{fast.register_ms:.2f} ms"),
        (f"fresh deployment, first {FRESH_REQUESTS} requests: p50 / max", _lat(plain.fresh_ms, ("p50", "max")),
         _lat(fast.fresh_ms, ("p50", "max"))),
        ("server RSS idle / warm / peak / end",
         *(" / ".join(f"{r.rss_mb.get(k, 0):.0f}" for k in ("idle", "warm", "peak", "end")) + " MB"
           for r in (plain, fast))),
        ("server PSS warm / end", *(f"{r.pss_mb.get('warm', 0):.0f} / {r.pss_mb.get('end', 0):.0f} MB"
                                    for r in (plain, fast))),
        ("client, per request: prepare / check (outside the timed phases)",
         *(f"{r.client_ms['prepare']:.2f} / {r.client_ms['check']:.2f} ms" for r in (plain, fast))),
        (f"client, per batch of {c['batch']}: prepare / check",
         *(f"{r.client_ms['prepare_batch']:.2f} / {r.client_ms['check_batch']:.2f} ms" for r in (plain, fast))),
        ("max score error", f"{plain.max_score_error:.1e}", f"{fast.max_score_error:.1e}"),
        ("workers with numba (LLVM) loaded", str(plain.numba_workers),
         f"{fast.numba_workers}" + (" (kernels compiled ahead of time)" if not fast.numba_workers else "")),
    ]
    lines = ["| | encryption=none | encryption=fast |", "|---|---|---|"]
    lines += [f"| {label} | {a} | {b} |" for label, a, b in rows]
    ratio = fast.throughput_rps / plain.throughput_rps if plain.throughput_rps else 0.0
    batch_ratio = (fast.batch.get("samples_per_s", 0) / plain.batch["samples_per_s"]
                   if plain.batch.get("samples_per_s") else 0.0)
    overhead = fast.single_ms.get("p50", 0) - plain.single_ms.get("p50", 0)
    fresh = fast.fresh_ms.get("max", 0) / fast.fresh_ms["p50"] if fast.fresh_ms.get("p50") else 0.0
    lines += ["", "| measure | value | target |", "|---|---|---|",
              f"| fast / plaintext throughput, 1 sample/request | {ratio:.2f} | >= 0.80 |",
              f"| fast / plaintext samples/s, batch of {c['batch']} | {batch_ratio:.2f} | - |",
              f"| single-client p50 overhead of fast over plaintext | {overhead:+.2f} ms | <= 1.0 ms |",
              f"| server RSS, {c['workers']} workers, fast (peak) | {fast.rss_mb.get('peak', 0):.0f} MB | <= 450 MB |",
              f"| slowest of the first {FRESH_REQUESTS} requests of a fresh fast deployment / their p50 | "
              f"{fresh:.1f}x | <= 3x |"]
    for r in (plain, fast):
        if r.error_samples:
            lines.append(f"encryption={r.encryption}, first errors: " + "; ".join(r.error_samples))
    return "\n".join(lines)


def rows(result: LoadResult) -> list[tuple[str, str]]:
    c, lat, rss = result.config, result.latency_ms, result.rss_mb
    quartiles = " / ".join(f"{rss[f'at_{q}pct']:.0f}" for q in (25, 50, 75) if f"at_{q}pct" in rss)
    return [
        ("load", f"{c['clients']} clients x {c['requests']} requests"),
        ("distinct client keys", str(c["keys"])),
        ("key cache per worker", f"{c['cache_mb']:g} MB"),
        ("server workers", str(c["workers"])),
        ("requests sent / ok", f"{result.sent} / {result.ok}"),
        ("errors", str(result.errors)),
        ("skipped (time bound)", str(result.skipped)),
        ("wall time", f"{result.wall_s:.1f} s"),
        ("throughput", f"{result.throughput_rps:.1f} req/s"),
        ("latency p50 / p90 / p99 / max", " / ".join(f"{lat[k]:.1f}" for k in ("p50", "p90", "p99", "max"))
         + " ms" if lat else "-"),
        ("max score error", f"{result.max_score_error:.1e}"),
        ("server RSS idle / warm", f"{rss.get('idle', 0):.0f} / {rss.get('warm', 0):.0f} MB"),
        ("server RSS at 25 / 50 / 75 % done", f"{quartiles} MB"),
        ("server RSS peak / end", f"{rss.get('peak', 0):.0f} / {rss.get('end', 0):.0f} MB"),
        ("RSS growth over warm (peak)", f"{rss.get('peak', 0) - rss.get('warm', 0):+.0f} MB"),
    ]


def table(results: list[LoadResult]) -> str:
    """A markdown table of fast-alone scenarios, one column each."""
    columns = [rows(r) for r in results]
    header = "| encryption=fast, 1 sample/request | " + " | ".join(f"run {i}" for i in range(1, len(results) + 1))
    lines = [header + " |", "|---" * (len(results) + 1) + "|"]
    for i, (label, _) in enumerate(columns[0]):
        lines.append(f"| {label} | " + " | ".join(col[i][1] for col in columns) + " |")
    for i, r in enumerate(results, start=1):
        if r.error_samples:
            lines.append(f"run {i}, first errors: " + "; ".join(r.error_samples))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    defaults = LoadConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=defaults.clients)
    parser.add_argument("--requests", type=int, default=defaults.requests, help="per client")
    parser.add_argument("--single-requests", type=int, default=defaults.single_requests)
    parser.add_argument("--batch", type=int, default=defaults.batch, help="samples per request, batch phase")
    parser.add_argument("--batch-requests", type=int, default=defaults.batch_requests, help="per client")
    parser.add_argument("--keys", type=int, default=defaults.keys, help="distinct client key pairs")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--environment", default=None,
                        help="aideploy's environment= for both servers (default: aideploy's own default); "
                        "'current' serves this interpreter's packages")
    parser.add_argument("--cache-mb", default="",
                        help="also run fast alone with these key caches per worker (AIDEPLOY_KEY_CACHE_BYTES), "
                        "MB, comma-separated: the memory bound when the keys do not fit (e.g. 4)")
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help="per phase")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    cfg = LoadConfig(clients=args.clients, requests=args.requests, keys=args.keys, workers=args.workers,
                     max_seconds=args.max_seconds, batch=args.batch, batch_requests=args.batch_requests,
                     single_requests=args.single_requests, environment=args.environment)
    plain, fast = run_compare(cfg)
    print(compare_table(plain, fast))
    results = [plain, fast]
    extra = []
    for cache_mb in (float(v) for v in str(args.cache_mb).split(",") if v.strip()):
        extra.append(run_load(LoadConfig(**{**asdict(cfg), "cache_mb": cache_mb})))
    if extra:
        print()
        print(table(extra))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results + extra], indent=2) + "\n")
    ok = all(r.errors == 0 and r.sent > 0 for r in results + extra) and all(r.batch.get("errors", 0) == 0
                                                                              for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
