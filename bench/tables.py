#!/usr/bin/env python
"""A mixed table through the client tool: rows/s streamed and for the whole command, beside the
pipeline in process on the same batches (issue 26).

Fits ``Pipeline(ColumnTransformer(OneHotEncoder on two string columns, imputer + scaler on four
numbers, a boolean passed through), HistGradientBoostingClassifier)`` on a DataFrame, writes
``--rows`` rows of an 8-column table (strings with non-ASCII and commas, booleans, numbers with
empty cells, one column the model does not take, dropped by the client) to a CSV without labels,
serves the pipeline with ``aideploy mode=serve target.worker_count=2`` (the real azmlinfsrv, the
scoring environment built from the pins aideploy finds) and runs ``aideploy mode=predict`` with
defaults only (``predict.extra_columns=drop`` for the extra column) against it.

Reported, all in this one run:

- streamed rows/s: the client's encrypt + predict + decrypt stages (read the CSV in the schema's
  types, build JSON, send, write predictions.csv);
- whole-command rows/s: process start to exit;
- the service's own rows/s: the same batches (as many rows per request as the client sent),
  scored through the service's request path in this process (JSON parse, schema check,
  DataFrame, predict, JSON answer) one request at a time, against ``pipeline.predict`` on the
  same batches as DataFrames (the anchor): their ratio is the price of the service's own work;
- every prediction checked against ``pipeline.predict`` on the file read with pandas;
- encrypted (``--encrypted-rows``, default 400): the same preprocessing before a LogisticRegression
  under ``aideploy mode=run encryption=fast`` (the client runs the ColumnTransformer, the service
  the linear part on ciphertexts), beside a LogisticRegression fitted on the transformer's output
  written as a numeric CSV (the same model on numeric input), one row per query, in this run:
  each one's per-row latency p50 (server time and HTTP) and agreement.

    .venv/bin/python bench/tables.py                  # 100,000 rows
    .venv/bin/python bench/tables.py --rows 20000 --json out.json

Everything it starts is stopped and its temp dir deleted when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
from machine import machine  # bench/machine.py
from predict import served  # bench/predict.py: aideploy mode=serve for the duration of a block

AIDEPLOY = str(Path(sys.executable).with_name("aideploy"))
STREAMED = ("encrypt", "predict", "decrypt")
FEATURES = ["city", "plan", "age", "income", "tenure", "visits", "active"]


def table(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "city": rng.choice(["São Paulo", "Berlin", "Tokyo, JP", "Zürich", "Lagos", "Lima"], n),
        "plan": rng.choice(["basic", "pro", "team", "enterprise"], n),
        "age": rng.integers(18, 80, n).astype(float),
        "income": rng.normal(50, 10, n).round(2),
        "tenure": rng.exponential(3.0, n).round(1),
        "visits": rng.integers(0, 30, n),
        "active": rng.choice([True, False], n),
        "note": rng.choice(["", "vip", "moved"], n),  # not a feature: dropped by the client
    })
    frame.loc[rng.random(n) < 0.1, "age"] = np.nan
    frame.loc[rng.random(n) < 0.05, "tenure"] = np.nan
    return frame


def fit(folder: Path):
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    train = table(20_000, 0)
    y = ((train.income > 50) ^ (train.plan == "pro") ^ train.active).astype(int)
    train.to_csv(folder / "train.csv", index=False)
    read = pd.read_csv(folder / "train.csv")[FEATURES]
    pre = ColumnTransformer([
        ("cat", OneHotEncoder(handle_unknown="ignore"), ["city", "plan"]),
        ("num", make_pipeline(SimpleImputer(), StandardScaler()), ["age", "income", "tenure", "visits"]),
        ("flag", "passthrough", ["active"])])
    pipeline = Pipeline([("pre", pre), ("clf", HistGradientBoostingClassifier(max_iter=50))]).fit(read, y)
    joblib.dump(pipeline, folder / "pipeline.pkl")
    return pipeline


def service_rate(pipeline, model_dir: Path, frame: pd.DataFrame, batch: int, seconds: float = 10.0) -> dict:
    """The service's request path in this process (azmlinfsrv's HTTP aside) against pipeline.predict,
    on the same batches, interleaved so that the machine's load hits both alike."""
    from aideploy_scoring.models import load_dir
    from aideploy_scoring.service import ScoringService

    service = ScoringService(load_dir(model_dir))
    batches = [frame.iloc[i:i + batch] for i in range(0, len(frame) - batch + 1, batch)][:20]
    bodies = [b.to_json(orient="split", index=False, force_ascii=False).encode() for b in batches]
    conformed = [service.model.schema.conform(b) for b in batches]
    rows = {"service": 0, "in_process": 0}
    spent = {"service": 0.0, "in_process": 0.0}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for body, data in zip(bodies, conformed):
            start = time.perf_counter()
            json.dumps(service.handle(body))
            spent["service"] += time.perf_counter() - start
            start = time.perf_counter()
            pipeline.predict_proba(data)
            pipeline.predict(data)
            spent["in_process"] += time.perf_counter() - start
            rows["service"] += len(data)
            rows["in_process"] += len(data)
    rates = {name: rows[name] / spent[name] for name in rows}
    return {"batch_rows": batch, "service_rows_per_s": round(rates["service"]),
            "in_process_rows_per_s": round(rates["in_process"]),
            "ratio": round(rates["service"] / rates["in_process"], 3)}


def encrypted_per_row(workdir: Path, pipeline, n_rows: int) -> dict:
    """Per-row latency under encryption=fast: the mixed-table pipeline (preprocessing in the client)
    against the same linear model on the numbers that preprocessing makes (one row per query)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    train = pd.read_csv(workdir / "train.csv")
    y = ((train.income > 50) ^ (train.plan == "pro") ^ train.active).astype(int)
    pre = pipeline.named_steps["pre"]
    mixed = Pipeline([("pre", pre), ("lr", LogisticRegression(max_iter=1000))]).fit(train[FEATURES], y)
    numbers = pre.transform(train[FEATURES])
    numeric = LogisticRegression(max_iter=1000).fit(numbers, y)
    joblib.dump(mixed, workdir / "mixed_lr.pkl")
    joblib.dump(numeric, workdir / "numeric_lr.pkl")
    rows = table(n_rows, 2)
    rows.to_csv(workdir / "enc_mixed.csv", index=False)
    pd.DataFrame(pre.transform(rows[FEATURES])).to_csv(workdir / "enc_numeric.csv", index=False, header=False)
    report = {"rows": n_rows, "features_encrypted": int(numbers.shape[1])}
    for name, extra in (("mixed", ["predict.extra_columns=drop"]), ("numeric", ["data.header=false"])):
        out = workdir / f"enc-{name}"
        argv = [AIDEPLOY, "encryption=fast", "model=sklearn_pickle", f"model.path={workdir / f'{name}_lr.pkl'}",
                "data=csv", f"data.path={workdir / f'enc_{name}.csv'}", *extra,
                f"home={workdir / 'home'}", f"hydra.run.dir={out}"]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        results = json.loads((out / "results.json").read_text())
        model = joblib.load(workdir / f"{name}_lr.pkl")
        X = rows[FEATURES] if name == "mixed" else pre.transform(rows[FEATURES])
        served_predictions = pd.read_csv(out / "predictions.csv")["prediction"].to_numpy()
        differ = served_predictions != model.predict(X)
        # a row the encrypted answer classes otherwise lies within max_error of the decision boundary
        report[f"{name}_differing_rows_max_abs_logit"] = (
            float(np.abs(model.decision_function(X)[differ]).max()) if differ.any() else None)
        report[name] = {"latency_p50_ms": results["latency_ms"]["p50"], "latency_p90_ms": results["latency_ms"]["p90"],
                        "agreement": results["agreement"], "max_score_error": results.get("max_score_error"),
                        "request_bytes": results["bytes"]["request"]}
    report["mixed_over_numeric_p50"] = round(report["mixed"]["latency_p50_ms"] / report["numeric"]["latency_p50_ms"], 3)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encrypted-rows", type=int, default=400, help="0: skip the encrypted comparison")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aideploy-bench-tables-"))
    key = secrets.token_urlsafe(24)
    try:
        pipeline = fit(workdir)
        rows = workdir / "rows.csv"
        table(args.rows, 1).to_csv(rows, index=False)
        expected = pipeline.predict(pd.read_csv(rows)[FEATURES])
        with served(workdir, key, f"target.worker_count={args.workers}", "model=sklearn_pickle",
                    f"model.path={workdir / 'pipeline.pkl'}", "data=csv", f"data.path={rows}",
                    "predict.extra_columns=drop") as (uri, serve_out):
            out = workdir / "predict"
            argv = [AIDEPLOY, "mode=predict", f"scoring_uri={uri}", "data=csv", f"data.path={rows}",
                    "predict.extra_columns=drop", f"home={workdir / 'home'}", f"hydra.run.dir={out}"]
            start = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "AIDEPLOY_SCORING_KEY": key})
            whole = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            results = json.loads((out / "results.json").read_text())
            served_predictions = pd.read_csv(out / "predictions.csv")["prediction"].to_numpy()
            batch = int(results["n_samples"] / max(1, results["requests"]))
            model_dir = next((serve_out / "deploy" / "azureml-models").glob("*/*"))
        streamed = sum(results["stage_seconds"][s] for s in STREAMED)
        report = {
            "rows": args.rows, "workers": args.workers, "requests": results["requests"],
            "rows_per_request": batch, "request_bytes_median": results["bytes"]["request"],
            "streamed_rows_per_s": round(args.rows / streamed), "whole_command_rows_per_s": round(args.rows / whole),
            "whole_command_s": round(whole, 1), "agreement": float(np.mean(served_predictions == expected)),
            **service_rate(pipeline, model_dir, pd.read_csv(rows)[FEATURES], batch),
            "machine": machine(),
        }
        if args.encrypted_rows:
            report["encrypted"] = encrypted_per_row(workdir, pipeline, args.encrypted_rows)
        print(json.dumps(report, indent=1))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
