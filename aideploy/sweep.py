"""The sweep report: one row per multirun job, as ``sweep.md``, ``sweep.csv`` and PNG plots.

Per job: how it ended, accuracy and agreement, what each row cost end to end (rows/s and
seconds per 1,000 rows over the client's streamed stages; the client's encrypt and decrypt
seconds; key set-up), the server's latency (p50/p99), bytes per row each way, and the sweep
overrides the job's options had no use for. Plots: latency, payload, and seconds per 1,000
rows by stage.

Every job of ``aideploy -m ...`` writes its own ``results.json``; the report is built from
those files, so it covers failed jobs as well. It is built by :class:`SweepReport`, a Hydra
callback registered in ``conf/config.yaml`` (``hydra.callbacks.sweep_report``):

- after each job (``on_job_end``, which Hydra calls for failed jobs too, in whichever process
  the launcher ran the job) it records how the job ended in ``<job dir>/job_status.json`` and
  refreshes ``sweep.md`` and ``sweep.csv``;
- at the end of the sweep it adds the plots and prints the table. Hydra skips
  ``on_multirun_end`` when a job failed (the sweeper re-raises the first failure once all
  jobs ran), so the same final step is also registered to run at interpreter exit.

``python -m aideploy.sweep <multirun dir>`` (re)builds the report by hand.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import io
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from aideploy.fsutil import locked_dir, replace_atomically
from aideploy.results import RESULTS_FILE, describe_error

log = logging.getLogger("aideploy")

MARKDOWN_FILE = "sweep.md"
CSV_FILE = "sweep.csv"
LATENCY_PLOT = "sweep_latency.png"
BYTES_PLOT = "sweep_bytes.png"
COST_PLOT = "sweep_cost.png"
STREAMED = ("encrypt", "predict", "decrypt")  # the client's stages, run chunk by chunk
JOB_STATUS_FILE = "job_status.json"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"

# After "job" come one column per override key (see render_csv), then these.
CSV_COLUMNS = ["job", "status", "error", "n_samples", "accuracy", "agreement", "rmse", "max_score_error",
               "latency_p50_ms", "latency_p99_ms", "per_sample_p50_ms", "warmup_max_ms", "keys_s", "encrypt_s",
               "predict_s", "decrypt_s", "rows_per_s", "s_per_1000_rows", "request_bytes_per_row",
               "response_bytes_per_row", "request_bytes", "response_bytes", "key_bytes", "not_applied", "dir"]


def override_items(overrides: Sequence[str]) -> dict[str, str]:
    """``{"encryption": "fast", ...}`` from ``["encryption=fast", ...]`` (``+``/``++``/``~`` dropped)."""
    items = {}
    for override in overrides:
        key, _, value = override.partition("=")
        items[key.lstrip("+~")] = value
    return items


@dataclass
class Row:
    """One job of the sweep, read from its output dir."""

    job: int | None
    dir: str  # relative to the multirun root
    overrides: list[str]
    status: str
    error: str = ""
    n_samples: int | None = None
    accuracy: float | None = None
    agreement: float | None = None
    rmse: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    per_sample_p50_ms: float | None = None  # compares batch_size sweeps fairly
    warmup_max_ms: float | None = None  # the slowest of the first requests, kept out of the p99
    request_bytes: int | None = None
    response_bytes: int | None = None
    key_bytes: int | None = None
    max_score_error: float | None = None
    keys_s: float | None = None  # key generation and upload (the key store's start included)
    encrypt_s: float | None = None  # the client's time in each streamed stage, all chunks
    predict_s: float | None = None
    decrypt_s: float | None = None
    rows_per_s: float | None = None  # end to end: rows over the three streamed stages
    s_per_1000_rows: float | None = None
    request_bytes_per_row: float | None = None
    response_bytes_per_row: float | None = None
    not_applied: str = ""  # sweep overrides the job's options have no use for

    def csv_record(self, keys: Sequence[str]) -> dict[str, Any]:
        given = override_items(self.overrides)
        record = {"job": self.job, **{key: given.get(key) for key in keys},
                  **{name: getattr(self, name) for name in CSV_COLUMNS[1:]}}
        return {k: "" if v is None else v for k, v in record.items()}


@dataclass
class Report:
    """What :func:`build` wrote, and the rows it wrote them from."""

    sweep_dir: Path
    rows: list[Row]
    common: list[str] = field(default_factory=list)  # overrides every job shares
    files: list[Path] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
        return counts


# ----------------------------------------------------------------------------- reading the jobs


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _error_text(error: dict[str, Any] | None) -> str:
    if not error:
        return ""
    return f"{error.get('type', 'Error')}: {error.get('message', '')}"


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs under ``sweep_dir``: those Hydra saved overrides in, or holding results."""
    found = {p.parent.parent for p in sweep_dir.glob(f"**/{OVERRIDES_FILE}")}
    found |= {p.parent for p in sweep_dir.glob(f"**/{RESULTS_FILE}")}
    return sorted(d for d in found if d != sweep_dir)


def _job_number(job_dir: Path, record: dict[str, Any] | None) -> int | None:
    if record and isinstance(record.get("job"), int):
        return record["job"]
    if job_dir.name.isdigit():  # Hydra's default subdir is the job number
        return int(job_dir.name)
    try:
        return int(yaml.safe_load((job_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]["job"]["num"])
    except (OSError, KeyError, TypeError, ValueError, yaml.YAMLError):
        return None


def read_row(job_dir: Path, sweep_dir: Path) -> Row:
    """The report row of one job; a job without results is a row saying why."""
    results = _read_json(job_dir / RESULTS_FILE)
    record = _read_json(job_dir / JOB_STATUS_FILE)
    try:
        overrides = [str(o) for o in yaml.safe_load((job_dir / OVERRIDES_FILE).read_text()) or []]
    except (OSError, yaml.YAMLError):
        overrides = []
    status, error = None, ""
    if results is not None:
        status, error = results.get("status"), _error_text(results.get("error"))
    if record is not None and record.get("status") == "failed" and status in (None, "ok"):
        # The job failed outside the run (e.g. a plugin that would not load): Hydra's record tells why.
        status, error = "failed", _error_text(record.get("error"))
    if status is None:
        status = "no results" if record is not None else "unfinished"
        error = error or ("the job ended without writing results.json" if record is not None
                          else "no results.json yet: still running, or killed")
    results = results or {}
    latency = results.get("latency_ms") or {}
    per_sample = results.get("latency_per_sample_ms") or {}
    warmup = results.get("warmup_latency_ms") or []
    sizes = results.get("bytes") or {}
    per_row = results.get("bytes_per_row") or {}
    seconds = results.get("stage_seconds") or {}
    streamed = sum(seconds.get(stage, 0.0) for stage in STREAMED)
    rows = results.get("n_samples") or 0
    keys = seconds.get("keys", 0.0) + seconds.get("keystore", 0.0) if sizes.get("keys") else None  # a scheme with keys
    return Row(job=_job_number(job_dir, record), dir=str(job_dir.relative_to(sweep_dir)), overrides=overrides,
               status=status, error=error, n_samples=results.get("n_samples"), accuracy=results.get("accuracy"),
               agreement=results.get("agreement"), rmse=results.get("rmse"), latency_p50_ms=latency.get("p50"),
               latency_p99_ms=latency.get("p99"), per_sample_p50_ms=per_sample.get("p50"),
               warmup_max_ms=max(warmup) if warmup else None, request_bytes=sizes.get("request"),
               response_bytes=sizes.get("response"), key_bytes=sizes.get("keys"),
               max_score_error=results.get("max_score_error"), keys_s=_rounded(keys),
               encrypt_s=_rounded(seconds.get("encrypt")), predict_s=_rounded(seconds.get("predict")),
               decrypt_s=_rounded(seconds.get("decrypt")),
               rows_per_s=round(rows / streamed, 2) if rows and streamed else None,
               s_per_1000_rows=round(1000 * streamed / rows, 4) if rows and streamed else None,
               request_bytes_per_row=per_row.get("request"), response_bytes_per_row=per_row.get("response"),
               not_applied=" ".join(results.get("not_applied") or []))


def _rounded(value: float | None) -> float | None:
    return round(value, 4) if value is not None else None


def collect(sweep_dir: Path) -> list[Row]:
    """Every job's row, in job order."""
    rows = [read_row(d, sweep_dir) for d in job_dirs(sweep_dir)]
    return sorted(rows, key=lambda r: (r.job is None, r.job if r.job is not None else 0, r.dir))


def common_overrides(rows: Sequence[Row]) -> list[str]:
    """Overrides every job has, so the table can show only what varies."""
    if len(rows) < 2:
        return []
    shared = set(rows[0].overrides).intersection(*(r.overrides for r in rows[1:]))
    return [o for o in rows[0].overrides if o in shared]


def _varying(row: Row, common: Sequence[str]) -> str:
    return " ".join(o for o in row.overrides if o not in common) or "(none)"


# ----------------------------------------------------------------------------- writing the report


def _fmt(value: Any, digits: int | None = None) -> str:
    if value is None:
        return "-"
    if digits is not None and isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return str(value)


def _md_cell(text: str, limit: int = 160) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first if len(first) <= limit else first[: limit - 3] + "..."
    return first.replace("|", "\\|")


def markdown_table(rows: Sequence[Row], common: Sequence[str]) -> str:
    header = ["job", "overrides", "status", "accuracy", "agreement", "rows/s", "s per 1000 rows", "keys s",
              "encrypt s", "decrypt s", "p50 ms", "p99 ms", "per sample ms", "warm-up max ms", "B/row sent",
              "B/row received", "key B", "not applied", "error"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [_fmt(r.job), _md_cell(_varying(r, common)), r.status, _fmt(r.accuracy, 4), _fmt(r.agreement, 4),
                 _fmt(r.rows_per_s, 0), _fmt(r.s_per_1000_rows, 3), _fmt(r.keys_s, 2), _fmt(r.encrypt_s, 2),
                 _fmt(r.decrypt_s, 2), _fmt(r.latency_p50_ms, 2), _fmt(r.latency_p99_ms, 2),
                 _fmt(r.per_sample_p50_ms, 3), _fmt(r.warmup_max_ms, 2), _fmt(r.request_bytes_per_row, 0),
                 _fmt(r.response_bytes_per_row, 0), _fmt(r.key_bytes), _md_cell(r.not_applied) or "-",
                 _md_cell(r.error) or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(report: Report, plots: Sequence[Path]) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(report.counts().items()))
    parts = ["# Sweep report", "",
             f"- multirun dir: `{report.sweep_dir}`",
             f"- jobs: {len(report.rows)} ({counts})"]
    if report.common:
        parts.append(f"- every job: `{' '.join(report.common)}`")
    parts += ["- per job: `<job dir>/results.json`, `aideploy.log`; all columns in `sweep.csv`", "",
              markdown_table(report.rows, report.common)]
    for plot in plots:
        parts += ["", f"![{plot.stem}]({plot.name})"]
    return "\n".join(parts) + "\n"


def render_csv(rows: Sequence[Row]) -> str:
    """One row per job: its number, one column per override key (any job's), then the figures."""
    keys = list(dict.fromkeys(key for row in rows for key in override_items(row.overrides)))
    clash = set(keys) & set(CSV_COLUMNS)
    keys = [f"override:{k}" if k in clash else k for k in keys]  # never shadow a figure's column
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["job", *keys, *CSV_COLUMNS[1:]], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        record = row.csv_record([k.removeprefix("override:") for k in keys])
        writer.writerow({("override:" + k if k in clash else k): v for k, v in record.items()})
    return out.getvalue()


def _bar_chart(rows: Sequence[Row], labels: Sequence[str], series: dict[str, list[float | None]],
               xlabel: str, title: str, log_scale: bool, path: Path, stacked: bool = False) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    n, k = len(rows), len(series)
    # a log axis needs one positive value (an interrupted sweep may have no measurement at all)
    log_scale = log_scale and any(v is not None and v > 0 for values in series.values() for v in values)
    bars = 1 if stacked else k
    fig = Figure(figsize=(9, 1.2 + 0.32 * n * bars), layout="constrained")
    ax = fig.add_subplot()
    height = 0.8 / bars
    left = [0.0] * n
    for i, (name, values) in enumerate(series.items()):
        ys = list(range(n)) if stacked else [j + (i - (k - 1) / 2) * height for j in range(n)]
        xs = [v if v is not None and (v > 0 or not log_scale) else float("nan") for v in values]
        ax.barh(ys, xs, height=height, label=name, left=left if stacked else None)
        if stacked:
            left = [a + (b if b == b else 0.0) for a, b in zip(left, xs)]  # NaN (no value) adds nothing
    for j, row in enumerate(rows):
        if row.status != "ok":
            ax.annotate(row.status, (0, j), xytext=(4, 0), textcoords="offset points", va="center",
                        xycoords=("axes fraction", "data"), color="crimson", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.invert_yaxis()  # job 0 on top, as in the table
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    replace_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def write_plots(report: Report) -> list[Path]:
    """Latency and payload per job as PNGs; none (with a warning) without matplotlib."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("sweep report: plots skipped, matplotlib is not installed (pip install 'aideploy[report]')")
        return []
    rows = report.rows
    labels = [f"#{_fmt(r.job)} {_varying(r, report.common)}" for r in rows]
    latency = report.sweep_dir / LATENCY_PLOT
    _bar_chart(rows, labels, {"p50": [r.latency_p50_ms for r in rows], "p99": [r.latency_p99_ms for r in rows]},
               "latency per request (ms)", "Latency", True, latency)
    payload = report.sweep_dir / BYTES_PLOT
    _bar_chart(rows, labels, {"request": [r.request_bytes for r in rows],
                              "response": [r.response_bytes for r in rows],
                              "keys": [r.key_bytes for r in rows]},
               "bytes (request and response: median per request; keys: total uploaded)", "Payload", True, payload)
    cost = report.sweep_dir / COST_PLOT
    per_1000 = {stage: [getattr(r, f"{stage}_s") * 1000 / r.n_samples if getattr(r, f"{stage}_s") is not None
                        and r.n_samples else None for r in rows] for stage in STREAMED}
    _bar_chart(rows, labels, per_1000, "seconds per 1,000 rows, end to end (client's encrypt, send and wait, decrypt)",
               "What each option costs", False, cost, stacked=True)
    return [latency, payload, cost]


def build(sweep_dir: str | Path, plots: bool = True) -> Report:
    """Scan ``sweep_dir``'s jobs and write ``sweep.md``, ``sweep.csv`` and (``plots``) the PNGs."""
    sweep_dir = Path(sweep_dir).resolve()
    with locked_dir(sweep_dir):  # concurrent jobs (joblib, ray) each refresh the report
        rows = collect(sweep_dir)
        report = Report(sweep_dir, rows, common_overrides(rows))
        plot_files = []
        if plots and rows:
            try:
                plot_files = write_plots(report)
            except Exception as exc:  # the tables matter more than the pictures
                log.warning("sweep report: plots skipped: %s", exc)
        md, table = sweep_dir / MARKDOWN_FILE, sweep_dir / CSV_FILE
        replace_atomically(table, lambda tmp: tmp.write_text(render_csv(rows)))
        replace_atomically(md, lambda tmp: tmp.write_text(render_markdown(report, plot_files)))
        report.files = [md, table, *plot_files]
    return report


def show(report: Report, stream=None) -> None:
    """Print the table and where the report files are."""
    stream = stream or sys.stdout
    print(f"\nsweep report ({len(report.rows)} jobs): {report.sweep_dir}", file=stream)
    if report.common:
        print(f"every job: {' '.join(report.common)}", file=stream)
    print(markdown_table(report.rows, report.common), file=stream)
    print("files: " + ", ".join(f.name for f in report.files), file=stream, flush=True)


# ----------------------------------------------------------------------------- the Hydra callback


def record_job(job_dir: Path, job: int | None, job_return: JobReturn) -> None:
    """``<job dir>/job_status.json``: how Hydra saw the job end, with the error of a failed one."""
    failed = job_return.status == JobStatus.FAILED
    error = describe_error(job_return._return_value) if failed else None  # .return_value re-raises
    replace_atomically(job_dir / JOB_STATUS_FILE, lambda tmp: tmp.write_text(json.dumps(
        {"job": job, "status": "failed" if failed else "completed", "error": error}, indent=2, default=str) + "\n"))


class SweepReport(Callback):
    """Builds the sweep report in the multirun dir; see the module docstring.

    Args:
        plots: write the PNG plots at the end of the sweep (needs matplotlib).
    """

    def __init__(self, plots: bool = True) -> None:
        self.plots = plots
        self._sweep_dir: Path | None = None
        self._config: DictConfig | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self._config = config
        atexit.register(self._finish)  # Hydra skips on_multirun_end when a job failed

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            job_dir = Path(str(config.hydra.runtime.output_dir))
            record_job(job_dir, OmegaConf.select(config, "hydra.job.num"), job_return)
            build(Path(str(OmegaConf.select(config, "hydra.sweep.dir"))), plots=False)
        except Exception as exc:  # a report problem must not fail the job
            log.warning("sweep report: could not refresh it after this job: %s", exc)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._finish()
        atexit.unregister(self._finish)

    def _finish(self) -> None:
        sweep_dir, self._sweep_dir = self._sweep_dir, None
        if sweep_dir is None or not sweep_dir.is_dir() or not job_dirs(sweep_dir):
            return
        try:
            report = build(sweep_dir, plots=self.plots)
            show(report)
        except Exception as exc:
            log.warning("sweep report: could not write it in %s: %s", sweep_dir, exc)
            return
        _sweep_end(sweep_dir, report, self._config)


def _sweep_end(sweep_dir: Path, report: Report, config: DictConfig | None) -> None:
    """``aideploy_sweep_end`` on the sweep's plugins (installed ones and ``plugins=[...]``)."""
    from aideploy.manager import PluginRegistry

    try:
        modules = list(config.get("plugins") or []) if config is not None else []
        registry = PluginRegistry.load(modules, strict=False)
        registry.hook.aideploy_sweep_end(sweep_dir=sweep_dir, report=report, config=config)
    except Exception as exc:  # an observer must not fail the sweep
        log.warning("a plugin failed at the end of the sweep: %s", exc)


# ----------------------------------------------------------------------------- by hand


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aideploy.sweep",
                                     description="(Re)build the sweep report of an aideploy multirun dir.")
    parser.add_argument("sweep_dir", type=Path, help="the multirun dir (hydra.sweep.dir), e.g. multirun/2026-11-21/10-00-00")
    parser.add_argument("--no-plots", action="store_true", help="write sweep.md and sweep.csv only")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir() or not job_dirs(args.sweep_dir):
        print(f"error: {args.sweep_dir} holds no aideploy jobs (no */.hydra/overrides.yaml or */results.json)",
              file=sys.stderr)
        print("hint: pass the dir that `aideploy -m ...` printed as its sweep output dir", file=sys.stderr)
        return 2
    show(build(args.sweep_dir, plots=not args.no_plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
