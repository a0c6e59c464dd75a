"""Entry script for the Azure ML inference server (``azmlinfsrv``), locally and in Azure.

``init()`` loads the model from ``AZUREML_MODEL_DIR`` (any kind: its record says which);
``run()`` answers one HTTP request. Linear models (and Pipelines that fold into one) are also
served under the encrypted schemes. Request bodies:

- plain, for every model kind (:mod:`aideploy_scoring.models`): ``{"data": [[x1, ..., xn], ...]}``
  -> ``{"predictions": [...]}``, plus ``"probabilities"`` and ``"scores"`` where the model has them
- seal (encrypted-inference, seed 000): ``{"data": [ciphertext, ...], "key_id": ..., "key_url":
  <read-only SAS URL>}``, or the seed's ``{"data", "key_id", "conn_str", "container"}``
  -> ``[encrypted score, ...]``
- fast: the query as an ``application/octet-stream`` body with headers ``X-Aideploy-Scheme:
  fast``, ``X-Aideploy-Key-Id`` and ``X-Aideploy-Key-Url`` -> the encrypted logits, binary;
  or as JSON, ``{"scheme": "fast", "data": <base64 query>, "key_id", "key_url"}``
- fast, a ReLU MLP (``fastmlp``): the same headers, one request per round; the body a round
  message, the answer the round's encrypted values with the next round's sealed token
  (``AIDEPLOY_MLP_TOKEN_SECRET``: one secret for every worker, ``encrypted.TOKEN_SECRET_ENV``)

- a key registration, for the encrypted schemes: ``{"scheme", "register_key": true, "key_id",
  "key_url"}`` -> ``{"registered": key_id}``, sent once after the client uploads its keys: the
  service fetches and parses them then, and every worker reads them from
  ``AIDEPLOY_KEY_SHARE_DIR`` (``keyshare``), so no query waits for the key store

``GET /score`` describes the service (``ScoringService.describe``): the features, task and
classes of the model, the schemes served and the fast scheme's public parameters, so a client
needs only the scoring URI.

Bad requests get HTTP 4xx with ``{"error": "..."}``; the server keeps serving.
"""

import os
import sys
import tempfile

# The package beside this file is shipped with it; make it importable wherever it runs.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The fast scheme's kernels as a C extension module (fastkernels_aot): no numba or LLVM in the
# workers, ~115 MB less each. A machine without a build makes one in the first init() (seconds).
os.environ.setdefault("AIDEPLOY_KERNELS", "aot")
# The server's private directory (keyshare): its workers share verified keys there, and, where the
# deployment does not give them, the MLP token secret and the limits (target=aci's one container).
# One per server (the gunicorn master is every worker's parent); the local target sets its own,
# and removes it when it stops.
os.environ.setdefault("AIDEPLOY_KEY_SHARE_DIR", os.path.join(tempfile.gettempdir(), f"aideploy-keys-{os.getppid()}"))

try:
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse
except ImportError:  # older Azure ML images expose the same classes here
    from azureml.contrib.services.aml_request import rawhttp
    from azureml.contrib.services.aml_response import AMLResponse

from aideploy_scoring import secret_settings, settings  # noqa: E402
from aideploy_scoring.service import ScoringService  # noqa: E402

service = None


def init():
    """Check the settings, then load the model once per worker.

    An unknown ``AIDEPLOY_*`` variable or a malformed value stops the worker (and so the server)
    with one line naming it (:mod:`aideploy_scoring.settings`), before anything is loaded; so does a
    secret setting kept in Key Vault that cannot be read (:mod:`aideploy_scoring.secret_settings`).
    """
    global service
    import logging

    try:
        settings.check()
    except settings.SettingsError as exc:
        logging.getLogger("aideploy.scoring").error("%s%s", settings.INVALID, exc)
        raise SystemExit(3) from None
    try:
        secret_settings.load()  # Key Vault's, through the deployment's identity: before anything is built
    except secret_settings.SecretUnavailable as exc:
        logging.getLogger("aideploy.scoring").error("%s%s", secret_settings.UNAVAILABLE, exc)
        raise SystemExit(3) from None
    # BLAS threads (the plaintext model's products; the fast scheme's kernels use none): the
    # cores divided among the workers (AIDEPLOY_BLAS_THREADS overrides). More would
    # oversubscribe: OpenBLAS's spinning threads starved numpy work 3-5x on a busy 2-core
    # machine; fewer leaves cores idle with one worker. threadpoolctl, because numpy is
    # already imported when init() runs.
    from threadpoolctl import threadpool_limits

    threads = settings.get("AIDEPLOY_BLAS_THREADS") or max(1, (os.cpu_count() or 1) // settings.get("WORKER_COUNT"))
    threadpool_limits(limits=threads, user_api="blas")
    service = ScoringService.from_environment()


@rawhttp
def run(request):
    """Answer one request: JSON in, JSON out, a 4xx for anything malformed; GET describes."""
    status, body = service.handle_http(request.method, request.headers, request.stream, request.content_length)
    if isinstance(body, bytes):
        return AMLResponse(body, status, {"Content-Type": "application/octet-stream"})
    return AMLResponse(body, status, {"Content-Type": "application/json"}, json_str=True)
