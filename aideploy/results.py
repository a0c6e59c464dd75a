"""results.json and endpoint.json: what a run reports, with nothing secret in it."""

from __future__ import annotations

import json
import logging
import traceback
from typing import Any

import numpy as np

from aideploy.context import RunContext
from aideploy.errors import AideployError

log = logging.getLogger("aideploy")

RESULTS_FILE = "results.json"
ENDPOINT_FILE = "endpoint.json"
PLAN_FILE = "plan.json"


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p90/p99 of ``values`` in the same unit, or None when there are none."""
    if not values:
        return None
    p50, p90, p99 = np.percentile(np.asarray(values, dtype=float), [50, 90, 99])
    return {"p50": round(float(p50), 3), "p90": round(float(p90), 3), "p99": round(float(p99), 3)}


def describe_error(error: BaseException | None) -> dict[str, str] | None:
    if error is None:
        return None
    described = {"type": type(error).__name__, "message": str(error) or type(error).__name__}
    if isinstance(error, AideployError) and error.hint:
        described["hint"] = error.hint
    return described


def build(ctx: RunContext, status: str, error: BaseException | None, stage_seconds: dict[str, float],
          teardown_failures: list[tuple[str, BaseException]]) -> dict[str, Any]:
    """The results dict: options, status, timings and whatever metrics the evaluate stage gave."""
    if error is not None and not isinstance(error, (AideployError, KeyboardInterrupt)):
        # An unexpected error: keep the traceback in the log file for whoever reports it.
        log.debug("unexpected error:\n%s", "".join(traceback.format_exception(error)))
    results: dict[str, Any] = {
        "run_id": ctx.run_id,
        "mode": ctx.mode.value,
        "options": dict(ctx.choices),
        "status": status,
        "error": describe_error(error),
        "stage_seconds": {k: round(v, 4) for k, v in stage_seconds.items()},
    }
    endpoint = ctx.artifacts.get("endpoint")
    if endpoint is not None:
        results["endpoint"] = {"name": endpoint.name, "target": endpoint.target, "scoring_uri": endpoint.scoring_uri}
    environment = ctx.artifacts.get("environment")
    if getattr(environment, "kernels", None):  # encryption=fast: which kernels the service runs, and why
        results["kernels"] = environment.kernels
    predictions = ctx.artifacts.get("predictions")
    if predictions is not None and predictions.rows:
        results["predictions"] = {"path": str(predictions.path), "rows": predictions.rows}
    results.update(ctx.artifacts.get("metrics") or {})
    if ctx.not_applied:
        results["not_applied"] = list(ctx.not_applied)
    if teardown_failures:
        results["teardown_failures"] = [f"{what}: {exc}" for what, exc in teardown_failures]
    return results


def _dump(path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    tmp.replace(path)  # readers never see half a file


def write(ctx: RunContext, results: dict[str, Any]) -> None:
    _dump(ctx.output_dir / RESULTS_FILE, results)


def write_endpoint(ctx: RunContext, endpoint) -> None:
    """endpoint.json for ``mode=serve``: how to reach the service, and no key."""
    _dump(ctx.output_dir / ENDPOINT_FILE, {
        "name": endpoint.name,
        "scoring_uri": endpoint.scoring_uri,
        "target": ctx.choices.get("target"),
        "network": ctx.choices.get("network"),
        "encryption": ctx.choices.get("encryption"),
        "model": {"name": ctx.artifacts["model"].name, "version": ctx.artifacts["model"].version},
        "auth": bool(endpoint.auth_key),
    })


def write_plan(ctx: RunContext, plan: dict[str, Any]) -> None:
    """plan.json for ``dry_run=true``, and the same plan on the terminal."""
    _dump(ctx.output_dir / PLAN_FILE, plan)
    log.info("plan (nothing was created):\n%s", json.dumps(plan, indent=2, default=str))
