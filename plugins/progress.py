"""Progress on the terminal: one line per stage with its time and key facts, then a summary."""

import logging

from aideploy import hookimpl

log = logging.getLogger("aideploy")


def _facts(result) -> str:
    summary = getattr(result, "summary", None)
    if not callable(summary):
        return ""
    return "  ".join(f"{k}={v}" for k, v in summary().items() if v is not None)


@hookimpl
def aideploy_before_stage(stage, ctx):
    index, total = ctx.progress
    log.debug("[%d/%d] %s: starting", index, total, stage.name)


@hookimpl
def aideploy_after_stage(stage, ctx, result, seconds):
    index, total = ctx.progress
    label = f"[{index}/{total}]" if index <= total and stage.name != "keystore" else "     "
    log.info("%s %-12s %7.2f s  %s", label, stage.name, seconds, _facts(result))


@hookimpl
def aideploy_on_stage_error(stage, ctx, error):
    log.info("      %-12s failed: %s", stage.name, type(error).__name__)


@hookimpl
def aideploy_run_end(ctx, results):
    rows = [("status", results["status"]), ("options", " ".join(f"{k}={v}" for k, v in results["options"].items()))]
    for key in ("task", "n_samples", "accuracy", "plaintext_accuracy", "agreement", "max_score_error",
                "max_probability_error", "rmse", "plaintext_rmse", "r2", "max_abs_diff", "evaluation"):
        if results.get(key) is not None:
            value = results[key]
            rows.append((key, f"{value:.6g}" if isinstance(value, float) else value))
    if results.get("latency_ms"):
        rows.append(("latency ms", "  ".join(f"{k}={v:.2f}" for k, v in results["latency_ms"].items())))
    if results.get("bytes"):
        rows.append(("bytes", "  ".join(f"{k}={v}" for k, v in results["bytes"].items())))
    rows.append(("results", ctx.output_dir / "results.json"))
    log.info("--- summary " + "-" * 48)
    for key, value in rows:
        log.info("%-22s %s", key, value)
