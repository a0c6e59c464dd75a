"""``predict.engine=ray``: the files of a folder or glob scored in parallel by Ray workers.

Each worker is a Ray actor and a client of the run of its own (:class:`aideploy.engines.ClientSpec`):
the run's plugins and config, its own HTTP connections to the service (``predict.concurrency``
requests in flight) and, for an encrypted scheme, its own keys, made, published and registered
in the worker, so that no secret key crosses a process boundary. With ``predict.local_model=true``
each worker loads the model from the registry instead and there is no service.

A worker takes one input file at a time, the next one as soon as it is done with one, and
writes that file's predictions to ``<folder>/<its path below data.path>`` with the output
format's suffix: first as ``<name>.part`` (appended a chunk at a time, as the stream engine
writes), renamed to its final name once every row is in. So a finished file is one with its
final name, and ``predict.resume=true predict.output=<folder>`` skips those, continues each
``.part`` after its last whole row (a CSV survives a kill), and scores the rest.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aideploy import errors, ray_cluster
from aideploy.artifacts import Dataset, Traffic
from aideploy.client import Progress
from aideploy.engines import STREAMED, ClientSpec, Scored
from aideploy.errors import AideployError, ConfigError, PredictError
from aideploy.predictions import FORMATS, Predictions, PredictionFiles, PredictionsWriter, _csv_rows

PART = ".part"
CLOSE_SECONDS = 10.0


@dataclass
class FileTask:
    """One input file to score, and where its predictions go."""

    index: int
    name: str  # its path below data.path
    rows: Any  # its aideploy.datafiles.RowSource (picklable)
    final: Path
    part: Path


@dataclass
class FileResult:
    """What a worker did with one file: rows written, its traffic, its stages' seconds, or its error."""

    index: int
    rows: int = 0
    traffic: Traffic = field(default_factory=Traffic)
    seconds: dict[str, float] = field(default_factory=dict)
    error: tuple[str, str, str] | None = None  # (AideployError class name, cause, hint)


def _described(exc: AideployError) -> tuple[str, str, str]:
    # An AideployError pickles without its hint; the worker sends the three parts instead.
    return type(exc).__name__, exc.cause, exc.hint


def _raised(error: tuple[str, str, str]) -> AideployError:
    name, cause, hint = error
    kind = getattr(errors, name, None)
    kind = kind if isinstance(kind, type) and issubclass(kind, AideployError) else PredictError
    return kind(cause, hint=hint)


class Worker:
    """A Ray actor's body (made remote by :func:`score_files`): the run's client, one file at a time."""

    def __init__(self, spec: ClientSpec, fmt: str, schema: Any, feature_names: list[str] | None) -> None:
        self.spec, self.fmt, self.schema, self.feature_names = spec, fmt, schema, feature_names
        self.failed: tuple[str, str, str] | None = None
        try:
            self.scoring = spec.open()
        except AideployError as exc:  # told with the first file, where the driver reads results
            self.failed = _described(exc)

    def score(self, task: FileTask) -> FileResult:
        if self.failed is not None:
            return FileResult(task.index, error=self.failed)
        scoring = self.scoring
        scoring.traffic, scoring.seconds = Traffic(), {stage.name: 0.0 for stage in STREAMED}
        dataset = Dataset(task.name, rows=task.rows, feature_names=self.feature_names, schema=self.schema)
        writer = None
        try:
            writer = PredictionsWriter(task.part, self.fmt, resume=True)
            scoring.rows_into(dataset, writer)
        except AideployError as exc:
            rows = writer.close().rows if writer is not None else 0
            return FileResult(task.index, rows, scoring.traffic, scoring.seconds, _described(exc))
        info = writer.close()
        if task.part.exists():
            os.replace(task.part, task.final)
        return FileResult(task.index, info.rows, scoring.traffic, scoring.seconds)

    def close(self) -> None:
        """Release the worker's connections and key blobs."""
        self.spec.close()


def output_folder(ctx: Any) -> Path:
    """``predict.output`` (a folder here), else ``<output dir>/predictions``."""
    cfg = ctx.cfg.predict
    if cfg.output:
        return Path(cfg.output).expanduser()
    if cfg.resume:
        raise ConfigError("predict.resume=true needs the folder of the predictions to continue",
                          hint="add predict.output=<the earlier run's predictions folder>")
    return ctx.output_dir / "predictions"


def plan_files(dataset: Dataset, folder: Path, fmt: str) -> list[FileTask]:
    """A task per input file, with its predictions' final and partial paths below ``folder``."""
    rows = dataset.rows
    if rows is None:
        raise ConfigError(f"predict.engine=ray scores files, and data {dataset.name!r} is held in memory",
                          hint="give data=csv (or parquet) data.path=<a file, folder or glob>, or use "
                          "predict.engine=stream")
    sources = getattr(rows, "files", [rows])
    relative = getattr(rows, "relative", lambda source: Path(Path(source.path).name))
    tasks, seen = [], {}
    inputs = {Path(source.path).resolve() for source in sources}
    for index, source in enumerate(sources):
        name = relative(source)
        final = folder / name.with_suffix(f".{fmt}")
        if final in seen:
            raise ConfigError(f"{source.path} and {seen[final]} would both write their predictions to {final}",
                              hint="give the files different names, or narrow data.path")
        if final.resolve() in inputs:
            raise ConfigError(f"predict.output={folder} would write predictions over the input file {final}",
                              hint="give predict.output a folder of its own")
        seen[final] = source.path
        tasks.append(FileTask(index, str(name), source, final, final.with_name(final.name + PART)))
    return tasks


def finished(path: Path, fmt: str) -> Predictions:
    """The predictions file of a file finished earlier, with its row count."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return Predictions(path, fmt, int(pq.ParquetFile(path).metadata.num_rows))
    columns, rows = _csv_rows(path) or ([], 0)
    return Predictions(path, fmt, rows, columns)


def score_files(cfg: Any, ctx: Any, scoring: Any) -> Scored:
    """Score the run's files on Ray (see the module docstring); the predictions of every file, in input order."""
    dataset = ctx.artifacts["dataset"]
    fmt = str(getattr(cfg.output_format, "value", cfg.output_format))
    if fmt not in FORMATS:
        raise ConfigError(f"predict.output_format={fmt!r} is not one of {', '.join(FORMATS)}",
                          hint="use predict.output_format=csv or parquet")
    folder = output_folder(ctx)
    tasks = plan_files(dataset, folder, fmt)
    done: dict[int, Predictions] = {}
    for task in tasks:
        if cfg.resume and task.final.exists():
            done[task.index] = finished(task.final, fmt)
        else:
            if not cfg.resume:
                task.final.unlink(missing_ok=True)
                task.part.unlink(missing_ok=True)
            task.final.parent.mkdir(parents=True, exist_ok=True)
    todo = [task for task in tasks if task.index not in done]
    if done:
        ctx.log.info("      resuming %s: %d of %d files finished earlier (%d rows)", folder, len(done), len(tasks),
                     sum(p.rows for p in done.values()))
    scoring.current = STREAMED[1]
    for stage in STREAMED:
        scoring.begin(stage)
    results: dict[int, FileResult] = {}
    start = time.perf_counter()
    if todo:
        if not scoring.local:
            scoring.size_requests(dataset)
        _dispatch(cfg, ctx, scoring, dataset, todo, fmt, results, sum(p.rows for p in done.values()))
    wall = time.perf_counter() - start
    spent = {stage.name: sum(r.seconds.get(stage.name, 0.0) for r in results.values()) for stage in STREAMED}
    # The workers' stage times add up across workers; the run reports wall time, shared out as they spent it.
    total = sum(spent.values())
    scoring.seconds = {name: (wall * value / total if total else 0.0) for name, value in spent.items()}
    traffic = Traffic()
    parts = []
    for task in tasks:
        result = results.get(task.index)
        if result is not None:
            for name in ("samples", "request_bytes", "response_bytes", "latency_ms"):
                getattr(traffic, name).extend(getattr(result.traffic, name))
            traffic.unread_answers += result.traffic.unread_answers[:3 - len(traffic.unread_answers)]
            done[task.index] = Predictions(task.final, fmt, result.rows)
        if task.final.exists():
            parts.append(done[task.index])
    columns = parts[0].columns if parts else []
    return Scored(traffic, PredictionFiles(folder, fmt, sum(p.rows for p in parts), columns, parts=parts))


def _dispatch(cfg: Any, ctx: Any, scoring: Any, dataset: Dataset, todo: list[FileTask], fmt: str,
              results: dict[int, FileResult], rows_before: int) -> None:
    """Start the workers, give each the next file as it finishes one, and collect their results."""
    ray = ray_cluster.require_ray()
    start = time.perf_counter()
    if cfg.ray.address:
        ray_cluster.connect(ctx, cfg.ray)
    else:
        ray_cluster.start_local(ctx, cfg.ray)
    started = time.perf_counter()
    n = min(int(cfg.ray.workers), len(todo))
    cpus = min(1.0, float(ray.cluster_resources().get("CPU", 1.0)) / n)
    actor = ray.remote(Worker)
    spec = scoring.spec()
    workers = [actor.options(num_cpus=cpus, max_concurrency=1).remote(spec, fmt, dataset.schema, dataset.feature_names)
               for _ in range(n)]
    # A worker busy with a file (a run stopped by an error or Ctrl-C) closes only once that file is done: wait a
    # little, then Ray's shutdown ends it (its connections go with it; an encrypted scheme's public key blob stays).
    ctx.resources.add(f"{n} Ray workers' connections and keys",
                      lambda: ray.get([w.close.remote() for w in workers], timeout=CLOSE_SECONDS))
    ctx.log.info("      %d files on %d Ray workers (%.2g CPU each), predictions in %s", len(todo), n, cpus,
                 output_folder(ctx))
    progress = Progress(dataset.n_samples, rows_before, float(cfg.progress_seconds))
    queue = list(todo)
    running: dict[Any, tuple[Any, FileTask]] = {}
    written = rows_before
    try:
        for worker in workers:
            task = queue.pop(0)
            running[worker.score.remote(task)] = (worker, task)
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            worker, task = running.pop(ready[0])
            result: FileResult = ray.get(ready[0])
            results[task.index] = result
            written += result.rows
            progress.written(written)
            if result.error is not None:
                raise _failed(_raised(result.error), task, results, len(todo), output_folder(ctx))
            ctx.log.info("      %s: %d rows", task.name, result.rows)
            if queue:
                task = queue.pop(0)
                running[worker.score.remote(task)] = (worker, task)
    except ray.exceptions.RayError as exc:
        raise PredictError(f"a Ray worker failed: {str(exc).strip().splitlines()[-1][:300]}",
                           hint=f"see the workers' logs (the local Ray's are in {ctx.output_dir}); finished files "
                           "are kept: predict.resume=true continues") from None
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    rows = written - rows_before
    ctx.log.info("      %d rows in %.1f s on %d workers (%.0f rows/s), after %.1f s for Ray to start", rows, seconds, n,
                 rows / max(seconds, 1e-9), started - start)


def _failed(exc: AideployError, task: FileTask, results: dict[int, FileResult], files: int,
            folder: Path) -> AideployError:
    """``exc`` with which file it stopped and what is kept for a resume."""
    finished_files = sum(1 for r in results.values() if r.error is None)
    exc.cause += f" (file {task.name}; {finished_files} of {files} files finished, in {folder})"
    exc.hint = (exc.hint + "; " if exc.hint else "") + \
        f"predict.resume=true predict.output={folder} continues after the finished files"
    return exc
