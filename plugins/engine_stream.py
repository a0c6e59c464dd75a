"""``predict.engine=stream`` (the default): this process scores the rows a chunk at a time into one file.

Each chunk of ``predict.chunk_rows`` rows goes through the run's encrypt, predict and decrypt
hooks (:class:`aideploy.engines.Scoring`) and is appended to the predictions file before the next
is read, so memory holds one chunk whatever the size of the data; a folder of files is read as
one table, its rows numbered on from file to file. A failure keeps every row already written and
says how many that is; ``predict.resume=true`` (with ``predict.output`` naming the file)
continues after them.
"""

from aideploy import hookimpl
from aideploy.client import Progress, output_path
from aideploy.engines import Scored
from aideploy.errors import AideployError
from aideploy.predictions import PredictionsWriter

PLUGIN_NAME = "stream"


@hookimpl
def aideploy_predict_engine(cfg, ctx, scoring):
    dataset = ctx.artifacts["dataset"]
    writer = PredictionsWriter(output_path(ctx), getattr(cfg.output_format, "value", cfg.output_format), cfg.resume)
    if writer.resumed:
        ctx.log.info("      resuming %s after its %d rows", writer.info.path, writer.resumed)
    ctx.artifacts["predictions"] = writer.info
    batch = scoring.size_requests(dataset)
    ctx.log.info("      %d rows per request, %d per chunk, %d requests in flight", batch, scoring.chunk_rows,
                 int(cfg.concurrency))
    progress = Progress(dataset.n_samples, writer.rows, float(cfg.progress_seconds))
    ctx.on_answer = progress.answered
    try:
        scoring.rows_into(dataset, writer, progress)
    except BaseException as exc:
        ctx.on_answer = None
        progress.close()
        info = writer.close()
        if isinstance(exc, AideployError) and info.rows:
            exc.cause += f" ({info.rows - writer.resumed} rows were predicted; {info.rows} are in {info.path})"
            exc.hint += f"; predict.resume=true predict.output={info.path} continues after them"
        raise
    progress.close()
    info = writer.close()
    if not info.rows and info.path.exists():
        info.path.unlink()
    return Scored(scoring.traffic, info)
