"""An observer: ``stages.csv`` in the run's output dir, one line per stage as it ends.

Not an entry point, so it only runs when named in config: ``plugins=[aideploy_example.stage_log]``.
Observer hooks are called on every plugin around every stage; they must not change the run.
"""

from __future__ import annotations

import csv

from aideploy import hookimpl

PLUGIN_NAME = "example_stage_log"  # the name it is registered under (default: the module name)
LOG_FILE = "stages.csv"


def _append(ctx, stage, status: str, seconds: float | str) -> None:
    path = ctx.output_dir / LOG_FILE
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["stage", "status", "seconds"])
        writer.writerow([stage.name, status, seconds])


@hookimpl
def aideploy_after_stage(stage, ctx, seconds):
    _append(ctx, stage, "ok", round(seconds, 4))


@hookimpl
def aideploy_on_stage_error(stage, ctx, error):
    _append(ctx, stage, f"failed: {type(error).__name__}", "")
