#!/usr/bin/env python
"""Load test: concurrent clients send ``encryption=fast`` single-sample queries to a served deployment.

It starts ``aideploy mode=serve encryption=fast target.worker_count=W`` (the real azmlinfsrv,
gunicorn master + W workers) and an Azurite for the clients' public keys. It makes K client
key pairs, so the service's key cache (``AIDEPLOY_KEY_CACHE_BYTES``, per worker) sees K
distinct keys, and runs C threads of R requests each, every thread on its own keep-alive
session. Every answer is decrypted and checked against the registered model.

Bounded in count (C x R requests) and in time (``--max-seconds``; requests not sent by then
are reported as skipped, not as errors). While it runs, a sampler sums the RSS of the server's
processes (master + workers) with psutil.

    .venv/bin/python bench/load.py            # 8 clients x 500, 50 keys; key cache 256 MB, then 4 MB
    .venv/bin/python bench/load.py --clients 4 --requests 100 --keys 10 --cache-mb 1 --json load.json

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
from typing import Iterator

import joblib
import numpy as np
import psutil
import requests

from aideploy.azurite import AzuriteServer
from aideploy.blobkeys import BlobKeyStore
from aideploy.datasets import digits_split
from aideploy_scoring.fastlinear import FastClient

AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
MB = 1024 * 1024


@dataclass
class LoadConfig:
    clients: int = 8  # concurrent threads
    requests: int = 500  # requests per thread
    keys: int = 50  # distinct client key pairs, used round-robin
    cache_mb: float = 256.0  # AIDEPLOY_KEY_CACHE_BYTES, per worker (the service's default)
    workers: int = 2  # target.worker_count
    max_seconds: float = 300.0  # load phase deadline
    timeout: float = 30.0  # per request
    sample_every: float = 0.2  # RSS sampling interval, seconds


@dataclass
class LoadResult:
    config: dict
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


def server_rss(master_pid: int) -> int:
    total = 0
    for proc in server_processes(master_pid):
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            total += proc.memory_info().rss
    return total


@contextlib.contextmanager
def serve(workdir: Path, workers: int, cache_bytes: int, extra: tuple[str, ...] = (),
          startup_timeout: float = 180) -> Iterator[Served]:
    """``aideploy mode=serve encryption=fast`` until the block ends (then Ctrl-C, as a user would)."""
    key = secrets.token_urlsafe(32)
    out, home = workdir / "serve", workdir / "home"
    env = {**os.environ, "AIDEPLOY_SCORING_KEY": key, "AIDEPLOY_KEY_CACHE_BYTES": str(cache_bytes)}
    argv = [AIDEPLOY, "mode=serve", "encryption=fast", f"target.worker_count={workers}", f"home={home}",
            f"hydra.run.dir={out}", *extra]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + startup_timeout
        while not (out / "endpoint.json").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"aideploy mode=serve exited with {proc.returncode}:\n{proc.stderr.read()}")
            if time.monotonic() > deadline:
                raise RuntimeError("aideploy mode=serve did not start in time")
            time.sleep(0.2)
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


class KeyRing:
    """K client key pairs with their public bundles in the store, and queries made in advance."""

    def __init__(self, n_keys: int, store: BlobKeyStore, X: np.ndarray, per_key: int = 4) -> None:
        self.clients: list[FastClient] = []
        self.urls: list[str] = []
        self.queries: list[list[tuple[int, bytes]]] = []  # per key: (sample index, query)
        rng = np.random.default_rng(0)
        for _ in range(n_keys):
            client = FastClient(X.shape[1], 10)
            self.clients.append(client)
            self.urls.append(store.put(client.key_id, client.public_bundle()))
            rows = rng.choice(len(X), size=per_key, replace=False)
            self.queries.append([(int(i), client.encrypt(X[i:i + 1])) for i in rows])

    def headers(self, k: int, auth_key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {auth_key}", "Content-Type": "application/octet-stream",
                "X-Aideploy-Scheme": "fast", "X-Aideploy-Key-Id": self.clients[k].key_id,
                "X-Aideploy-Key-Url": self.urls[k]}


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


def run_load(cfg: LoadConfig, workdir: Path | None = None) -> LoadResult:
    """Serve, load, measure, tear down. Returns the figures (see :class:`LoadResult`)."""
    owned = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="aideploy-load-")) if owned else workdir
    result = LoadResult(config=asdict(cfg))
    try:
        _, X_test, _, _ = digits_split(0.25, 0)
        with AzuriteServer() as azurite, serve(workdir, cfg.workers, int(cfg.cache_mb * MB)) as served:
            store = BlobKeyStore.from_connection_string(azurite.connection_string, "loadkeys")
            model = joblib.load(served.model_file)
            ring = KeyRing(cfg.keys, store, X_test)
            expected = model.decision_function(X_test)
            result.rss_mb["idle"] = server_rss(served.master_pid) / MB
            _warm_up(served, ring, cfg)
            result.rss_mb["warm"] = server_rss(served.master_pid) / MB
            _load(served, ring, expected, cfg, result)
            time.sleep(1.0)  # let the workers' refill threads settle
            result.rss_mb["end"] = server_rss(served.master_pid) / MB
            store.close()
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    return result


def _warm_up(served: Served, ring: KeyRing, cfg: LoadConfig) -> None:
    """Every worker loads the fast scheme (key 0 only), so 'warm' is the baseline for the cache.

    Requests go to whichever worker accepts first, so this sends concurrent rounds until each
    worker has grown (the scheme's runtime is tens of MB), or gives up after a few rounds.
    """
    _, query = ring.queries[0][0]

    def worker_rss() -> dict[int, int]:
        return {p.pid: p.memory_info().rss for p in server_processes(served.master_pid)[1:]}

    def post(_: int) -> None:
        with requests.Session() as session:
            for _ in range(4):
                response = session.post(served.uri, data=query, headers=ring.headers(0, served.key), timeout=60)
                response.raise_for_status()

    idle = worker_rss()
    for _ in range(5):
        with ThreadPoolExecutor(2 * cfg.workers) as pool:
            list(pool.map(post, range(2 * cfg.workers)))
        now = worker_rss()
        if all(now.get(pid, 0) - rss > 10 * MB for pid, rss in idle.items()):
            return


def _load(served: Served, ring: KeyRing, expected: np.ndarray, cfg: LoadConfig, result: LoadResult) -> None:
    total = cfg.clients * cfg.requests
    latencies: list[float] = []
    errors: list[str] = []
    max_error = [0.0]
    done = [0]
    lock = threading.Lock()
    marks: dict[int, float] = {}  # progress quartile -> time reached
    deadline = time.monotonic() + cfg.max_seconds

    def client(c: int) -> int:
        with requests.Session() as session:
            for i in range(cfg.requests):
                if time.monotonic() > deadline:
                    return cfg.requests - i
                k = (c * cfg.requests + i) % len(ring.clients)
                index, query = ring.queries[k][i % len(ring.queries[k])]
                start = time.perf_counter()
                error = None
                try:
                    response = session.post(served.uri, data=query, headers=ring.headers(k, served.key),
                                            timeout=cfg.timeout)
                    latency = (time.perf_counter() - start) * 1000.0
                    if response.status_code != 200:
                        error = f"HTTP {response.status_code}: {response.text[:200]}"
                    else:
                        scores = ring.clients[k].decrypt(response.content, 1)[0]
                        err = float(np.abs(scores - expected[index]).max())
                        if err > 1e-3:
                            error = f"score error {err:g} for sample {index}"
                except Exception as exc:  # counted, not raised: the run goes on
                    latency = (time.perf_counter() - start) * 1000.0
                    error = f"{type(exc).__name__}: {exc}"[:200]
                with lock:
                    done[0] += 1
                    latencies.append(latency)
                    if error:
                        errors.append(error)
                    else:
                        max_error[0] = max(max_error[0], err)
                    for q in (25, 50, 75):
                        if q not in marks and done[0] >= total * q / 100:
                            marks[q] = time.monotonic()
        return 0

    sampler = RssSampler(served.master_pid, cfg.sample_every)
    sampler.start()
    start = time.monotonic()
    try:
        with ThreadPoolExecutor(cfg.clients) as pool:
            skipped = sum(pool.map(client, range(cfg.clients)))
    finally:
        wall = time.monotonic() - start
        sampler.stop()
    result.sent = len(latencies)
    result.errors = len(errors)
    result.ok = result.sent - result.errors
    result.skipped = skipped
    result.error_samples = errors[:5]
    result.wall_s = wall
    result.throughput_rps = result.sent / wall if wall else 0.0
    lat = np.asarray(latencies)
    if len(lat):
        p50, p90, p99 = np.percentile(lat, [50, 90, 99])
        result.latency_ms = {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(lat.max())}
    result.max_score_error = max_error[0]
    samples = sampler.samples
    result.rss_samples = len(samples)
    if samples:
        result.rss_mb["peak"] = max(rss for _, rss in samples) / MB
        for q, when in sorted(marks.items()):
            at = min(samples, key=lambda s: abs(s[0] - when))
            result.rss_mb[f"at_{q}pct"] = at[1] / MB


# ------------------------------------------------------------------ command line


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
    """A markdown table, one column per scenario."""
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
    parser.add_argument("--keys", type=int, default=defaults.keys, help="distinct client key pairs")
    parser.add_argument("--cache-mb", default="256,4",
                        help="key cache per worker (AIDEPLOY_KEY_CACHE_BYTES), MB; a comma list runs one "
                        "scenario each (default: 256 = the service's default, all keys cached; 4 = a few)")
    parser.add_argument("--workers", type=int, default=defaults.workers)
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds, help="per scenario")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    results = []
    for cache_mb in (float(v) for v in str(args.cache_mb).split(",")):
        cfg = LoadConfig(clients=args.clients, requests=args.requests, keys=args.keys, cache_mb=cache_mb,
                         workers=args.workers, max_seconds=args.max_seconds)
        results.append(run_load(cfg))
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return 0 if all(r.errors == 0 and r.sent > 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
