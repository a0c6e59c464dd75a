"""``predict.engine=ray``: a folder or glob of CSV/Parquet files scored in parallel on Ray.

One predictions file per input file, resumable per file; each Ray worker a client of its own
(keys and connections), or, with ``predict.local_model=true``, the model itself in each worker
and no service. A local Ray is started for the run unless ``predict.ray.address`` names a
cluster. The work is :mod:`aideploy.ray_engine`'s; the cluster's, :mod:`aideploy.ray_cluster`'s.
"""

from aideploy import hookimpl
from aideploy.ray_engine import score_files

PLUGIN_NAME = "ray"


@hookimpl
def aideploy_predict_engine(cfg, ctx, scoring):
    return score_files(cfg, ctx, scoring)
