"""``encryption=fast``: aideploy's coefficient-encoded SEAL scheme (``aideploy_scoring.fastlinear``).

The client keeps the secret key and publishes a ~98 KB bundle (parameters + public key) to
the key store. Each request carries ``batch_size`` samples in one binary query; the answer
holds only the logits, re-randomised and flooded by the service.
"""

import numpy as np

from aideploy import hookimpl
from aideploy.artifacts import KeySession, Request, Requests, Scores
from aideploy.errors import ConfigError, PredictError
from aideploy.keystore import publish_public_keys
from aideploy_scoring.fastlinear import FastClient, FastParams, FastSchemeError
from aideploy_scoring.service import BINARY_TYPE, KEY_HEADERS, SCHEME_HEADER

SCHEME = "fast"
RUNTIME = ["seal-python==4.4.0", "cryptography>=41", "numba>=0.68", "azure-storage-blob>=12.19", "cachetools>=5.3"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME if ctx.cfg.encryption.plugin == SCHEME else None


@hookimpl
def aideploy_setup_keys(cfg, ctx, model):
    n_outputs = int(np.atleast_2d(model.estimator.coef_).shape[0])
    try:
        client = FastClient(model.n_features, n_outputs, FastParams(x_bound=cfg.x_bound, max_error=cfg.max_error))
    except FastSchemeError as exc:
        raise ConfigError(f"encryption=fast cannot serve this model: {exc}",
                          hint="see the supported ranges in scoring/fastlinear.py") from None
    bundle = client.public_bundle()
    url = publish_public_keys(ctx, client.key_id, bundle)
    return KeySession(SCHEME, client.key_id, len(bundle), client, {"key_id": client.key_id, "key_url": url})


@hookimpl
def aideploy_encrypt(cfg, keys, dataset):
    X = dataset.X_test
    if np.abs(X).max(initial=0.0) > cfg.x_bound:
        raise ConfigError(f"encryption=fast: the data has values up to {np.abs(X).max():g}, outside "
                          f"[-{cfg.x_bound:g}, {cfg.x_bound:g}]", hint="raise encryption.x_bound (or scale the data)")
    headers = {"Content-Type": BINARY_TYPE, SCHEME_HEADER: SCHEME,
               **{KEY_HEADERS[field]: value for field, value in keys.public.items()}}
    step = max(1, int(cfg.batch_size))
    return Requests([Request(keys.client.encrypt(X[i:i + step]), len(X[i:i + step]), headers)
                     for i in range(0, len(X), step)])


@hookimpl
def aideploy_decrypt(keys, requests, responses):
    rows = []
    for index, (request, response) in enumerate(zip(requests.items, responses.items), start=1):
        try:
            rows.append(keys.client.decrypt(response.body, request.n_samples))
        except FastSchemeError as exc:
            raise PredictError(f"answer {index} cannot be decrypted: {exc}",
                               hint="is the service running aideploy's score.py with the same scheme version?") from None
    return Scores(np.vstack(rows))
