#!/usr/bin/env python
"""mode=predict throughput: the client tool end to end, plain and encryption=fast, one service.

Serves the default model (``aideploy mode=serve environment=current target.worker_count=2``,
the real azmlinfsrv with 2 workers), writes ``--rows`` digits rows (the test split, tiled) to a
CSV without labels, then runs ``aideploy mode=predict scoring_uri=... data=csv`` against it:

- plain, ``encryption.batch_size=--plain-batch``;
- ``encryption=fast``, ``encryption.batch_size=--fast-batch`` (client encryption and
  decryption included; the public keys go to an Azurite the client starts).

For each it reports rows/s over the client's streamed stages (read, encrypt, send, decrypt,
write predictions.csv: ``stage_seconds`` of encrypt + predict + decrypt) and over the whole
command (process start to exit: imports, key store, evaluation included), the peak RSS of
the client process, and checks every prediction against the model trained in this process.

    .venv/bin/python bench/predict.py                 # 100,000 rows
    .venv/bin/python bench/predict.py --rows 20000 --json out.json

Everything it starts is stopped and its temp dir deleted when it ends.
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
from pathlib import Path

import numpy as np
import pandas as pd
import psutil

from aideploy.datasets import digits_split

AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
STREAMED = ("encrypt", "predict", "decrypt")


@contextlib.contextmanager
def served(workdir: Path, key: str, *overrides: str):
    """``aideploy mode=serve`` with ``overrides`` for the block; yields the scoring URI and the run's dir."""
    out = workdir / "serve"
    argv = [AIDEPLOY, "mode=serve", *overrides, f"home={workdir / 'home'}", f"hydra.run.dir={out}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AIDEPLOY_SCORING_KEY": key})
    try:
        deadline = time.monotonic() + 180
        while not (out / "endpoint.json").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mode=serve did not start:\n{proc.stderr.read() if proc.poll() is not None else ''}")
            time.sleep(0.2)
        yield json.loads((out / "endpoint.json").read_text())["scoring_uri"], out
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if proc.poll() is None:
                proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=60)
                break


def predict(workdir: Path, name: str, uri: str, key: str, rows: Path, *overrides: str) -> dict:
    out = workdir / name
    argv = [AIDEPLOY, "mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={rows}",
            f"home={workdir / 'home'}", f"hydra.run.dir={out}", *overrides]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "AIDEPLOY_SCORING_KEY": key})
    peak, done = 0, threading.Event()

    def sample():
        nonlocal peak
        watched = psutil.Process(proc.pid)
        while not done.is_set():
            with contextlib.suppress(psutil.NoSuchProcess):
                peak = max(peak, watched.memory_info().rss)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{err[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    streamed = sum(results["stage_seconds"][s] for s in STREAMED)
    return {"out": out, "wall_s": wall, "streamed_s": streamed, "stages": results["stage_seconds"],
            "latency_ms": results.get("latency_ms"), "requests": results.get("requests"),
            "peak_rss_mb": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plain-batch", type=int, default=500)
    parser.add_argument("--fast-batch", type=int, default=4096)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from sklearn.linear_model import LogisticRegression

    X_train, X_test, y_train, _ = digits_split(0.25, 0)
    model = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(X_train, y_train)
    X = np.tile(X_test, (-(-args.rows // len(X_test)), 1))[: args.rows]
    expected = model.predict(X)
    workdir = Path(tempfile.mkdtemp(prefix="aideploy-bench-predict-"))
    report = {"rows": args.rows, "workers": args.workers, "concurrency": args.concurrency, "runs": {}}
    try:
        rows = workdir / "rows.csv"
        pd.DataFrame(X, columns=[f"pixel{i}" for i in range(X.shape[1])]).to_csv(rows, index=False)
        key = secrets.token_urlsafe(24)
        with served(workdir, key, "environment=current", f"target.worker_count={args.workers}") as (uri, _):
            runs = {"plain": ("encryption=none", f"encryption.batch_size={args.plain_batch}"),
                    "fast": ("encryption=fast", f"encryption.batch_size={args.fast_batch}")}
            for name, overrides in runs.items():
                run = predict(workdir, name, uri, key, rows, *overrides, f"predict.concurrency={args.concurrency}")
                got = pd.read_csv(run.pop("out") / "predictions.csv")["prediction"].to_numpy()
                run["agreement"] = float(np.mean(got == expected))
                run["rows_per_s_streamed"] = args.rows / run["streamed_s"]
                run["rows_per_s_wall"] = args.rows / run["wall_s"]
                run["overrides"] = list(overrides)
                report["runs"][name] = run
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"{args.rows} digits rows, CSV without labels, service with {args.workers} workers, "
          f"client concurrency {args.concurrency}")
    print(f"{'run':6} {'batch':>6} {'rows/s streamed':>16} {'rows/s whole cmd':>17} {'requests':>9} "
          f"{'p50 ms':>8} {'peak RSS MB':>12} {'agreement':>10}")
    for name, run in report["runs"].items():
        batch = run["overrides"][1].split("=")[1]
        print(f"{name:6} {batch:>6} {run['rows_per_s_streamed']:16.0f} {run['rows_per_s_wall']:17.0f} "
              f"{run['requests']:9d} {run['latency_ms']['p50']:8.1f} {run['peak_rss_mb']:12.0f} "
              f"{run['agreement']:10.4f}")
        print("       stages (s): " + "  ".join(f"{k}={v:.2f}" for k, v in run["stages"].items()))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
