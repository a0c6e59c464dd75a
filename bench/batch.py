#!/usr/bin/env python
"""Batch scoring of a folder of files: Ray workers beside one mode=predict client (issue 29).

Writes ``--files`` CSV files of a mixed table (``--rows`` in all: strings with non-ASCII and
commas, booleans, numbers with empty cells, and a column the model does not take; the table and
the pipeline are bench/tables.py's), fits the pipeline, and in this one run:

1. serves it (``mode=serve target.worker_count=2``, the real azmlinfsrv) and scores the folder
   with one ``mode=predict`` client (the stream engine: the folder read as one table);
2. scores it with ``predict.engine=ray predict.local_model=true`` (the model in the Ray workers,
   no service) with 1, 2 and 4 workers (``--workers``);
3. with 2 workers, kills the run (SIGKILL) once ``--kill-after`` files are finished, resumes it
   with ``predict.resume=true``, and checks that no finished file was written again.

Every file's predictions are checked against ``pipeline.predict`` on the file read with pandas.
Reported per run: rows/s of the scoring (the engine's encrypt + predict + decrypt time: for Ray
from the start of its local cluster to the last file) and of the whole command (process start
to exit, the evaluation's second pass over the predictions included).

    .venv/bin/python bench/batch.py                        # 20 files, 2,000,000 rows
    .venv/bin/python bench/batch.py --rows 200000 --json out.json

Everything it starts is stopped and its temp dir deleted when it ends.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from machine import machine  # noqa: E402
from tables import AIDEPLOY, FEATURES, STREAMED, fit, served, table  # noqa: E402


def write_files(folder: Path, rows: int, files: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for i in range(files):
        path = folder / f"rows{i:02d}.csv"
        table(rows // files + (1 if i < rows % files else 0), seed=100 + i).to_csv(path, index=False)
        paths.append(path)
    return paths


def run(argv: list[str], env: dict[str, str]) -> tuple[dict, float, str]:
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env)
    whole = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    out = Path(next(a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")))
    results = json.loads((out / "results.json").read_text())
    results["load_after"] = [round(v, 1) for v in os.getloadavg()]  # the machine is shared: how busy it was
    return results, whole, proc.stderr


ENGINE_LINE = re.compile(r"(\d+) rows in ([\d.]+) s on \d+ workers \(\d+ rows/s\), after ([\d.]+) s for Ray to start")


def rates(name: str, results: dict, whole: float, rows: int, stderr: str) -> dict:
    scoring = sum(results["stage_seconds"][s] for s in STREAMED)
    rate = {"run": name, "rows": rows, "scoring_s": round(scoring, 1), "scoring_rows_per_s": round(rows / scoring),
            "whole_command_s": round(whole, 1), "whole_command_rows_per_s": round(rows / whole),
            "load_after": results["load_after"]}
    engine = ENGINE_LINE.search(stderr)
    if engine:  # the Ray engine's own account: its workers' time, and Ray's start apart
        rate.update(workers_s=float(engine[2]), workers_rows_per_s=round(int(engine[1]) / float(engine[2])),
                    ray_start_s=float(engine[3]))
    return rate


def check(expected: dict[Path, np.ndarray], predictions: dict[Path, Path]) -> int:
    """Rows whose prediction differs from the pipeline's (0 is the pass)."""
    return sum(int((pd.read_csv(predictions[p])["prediction"].to_numpy() != want).sum()) for p, want in expected.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--kill-after", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="aideploy-bench-batch-"))
    key = secrets.token_urlsafe(24)
    env = {**os.environ, "AIDEPLOY_SCORING_KEY": key}
    common = ["mode=predict", "data=csv", f"data.path={workdir / 'rows'}", "predict.extra_columns=drop",
              f"home={workdir / 'home'}"]
    local = ["predict.engine=ray", "predict.local_model=true", "model=sklearn_pickle",
             f"model.path={workdir / 'pipeline.pkl'}"]
    report: dict = {"rows": args.rows, "files": args.files, "machine": machine(), "runs": []}
    try:
        pipeline = fit(workdir)
        paths = write_files(workdir / "rows", args.rows, args.files)
        expected = {p: pipeline.predict(pd.read_csv(p)[FEATURES]) for p in paths}
        with served(workdir, key, 2, workdir / "pipeline.pkl", paths[0]) as (uri, _):
            out = workdir / "client"
            results, whole, stderr = run([AIDEPLOY, *common, f"scoring_uri={uri}", f"hydra.run.dir={out}"], env)
            table_out = pd.read_csv(out / "predictions.csv")["prediction"].to_numpy()
            wrong = int((table_out != np.concatenate([expected[p] for p in paths])).sum())
            report["runs"].append({**rates("one mode=predict client, 2-worker service", results, whole, args.rows,
                                           stderr),
                                   "wrong": wrong})
        for workers in args.workers:
            out = workdir / f"ray{workers}"
            results, whole, stderr = run([AIDEPLOY, *common, *local, f"predict.ray.workers={workers}",
                                     f"hydra.run.dir={out}"], env)
            wrong = check(expected, {p: out / "predictions" / p.name for p in paths})
            report["runs"].append({**rates(f"ray, model in {workers} workers", results, whole, args.rows, stderr),
                                   "wrong": wrong})
        report["resume"] = kill_and_resume(workdir, common + local, env, expected, args.kill_after)
        client = report["runs"][0]["scoring_rows_per_s"]
        for entry in report["runs"][1:]:
            entry["vs_client"] = round(entry["scoring_rows_per_s"] / client, 2)
        report["load_after"] = os.getloadavg()
        print(json.dumps(report, indent=1))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def kill_and_resume(workdir: Path, args: list[str], env: dict, expected: dict[Path, np.ndarray], after: int) -> dict:
    """SIGKILL a 2-worker run once ``after`` files are finished; resume it; nothing finished is written again."""
    output = workdir / "resumed"
    argv = [AIDEPLOY, *args, "predict.ray.workers=2", f"predict.output={output}"]
    proc = subprocess.Popen([*argv, f"hydra.run.dir={workdir / 'killed'}"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    while len(list(output.glob("*.csv"))) < after:
        if proc.poll() is not None:
            raise RuntimeError("the run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(3)  # the local Ray stops itself (its watchdog); a worker may finish the file it is on
    finished = {p: (p.stat().st_mtime_ns, p.stat().st_ino) for p in output.glob("*.csv")}
    results, whole, stderr = run([*argv, "predict.resume=true", f"hydra.run.dir={workdir / 'resume'}"], env)
    rewritten = [p.name for p, stamp in finished.items() if (p.stat().st_mtime_ns, p.stat().st_ino) != stamp]
    return {"finished_before_kill": len(finished), "rewritten_on_resume": rewritten,
            "wrong": check(expected, {p: output / p.name for p in expected}),
            "resume_rows": results["predictions"]["rows"], "resume_whole_command_s": round(whole, 1),
            "resume_said": next((line.strip() for line in stderr.splitlines() if "finished earlier" in line), None)}


if __name__ == "__main__":
    main()
