"""``encryption=fast``: aideploy's coefficient-encoded SEAL scheme (``aideploy_scoring.fastlinear``).

The client keeps the secret key and publishes a ~98 KB bundle (parameters + public key) to
the key store. Each request carries ``batch_size`` samples in one binary query; the answer
holds only the logits, re-randomised and flooded by the service. The fixed-point scales are
chosen from the model (``fastlinear.choose_params``), so a folded Pipeline with large weights
is served as well as a plain LogisticRegression.
"""

import json

import numpy as np

from aideploy import hookimpl
from aideploy.artifacts import KeySession, Request, Requests, Scores
from aideploy.errors import ConfigError, PredictError
from aideploy.keystore import publish_public_keys
from aideploy.linear import linear_model
from aideploy_scoring.fastlinear import FastClient, FastParams, FastSchemeError, choose_params
from aideploy_scoring.service import BINARY_TYPE, KEY_HEADERS, SCHEME_HEADER

SCHEME = "fast"
RUNTIME = ["seal-python==4.4.0", "cryptography>=41", "numba>=0.68", "azure-storage-blob>=12.19", "cachetools>=5.3"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME if ctx.cfg.encryption.plugin == SCHEME else None


def _params(cfg, model):
    """The scheme's parameters for this model, or a ConfigError naming options that exist."""
    linear = linear_model(model, SCHEME)
    try:
        return linear, choose_params(linear.coef, linear.intercept, cfg.x_bound, cfg.max_error)
    except FastSchemeError as exc:
        raise ConfigError(f"encryption=fast cannot serve {model.name}:{model.version}: {exc}",
                          hint="allow a larger error (encryption.max_error), or, if the inputs are smaller "
                          "than encryption.x_bound, lower it; the limits are in scoring/fastlinear.py") from None


def _check_range(cfg, X: np.ndarray, what: str) -> None:
    top = float(np.abs(X).max(initial=0.0))
    if top > cfg.x_bound:
        raise ConfigError(f"encryption=fast: {what} has values up to {top:g}, outside "
                          f"[-{cfg.x_bound:g}, {cfg.x_bound:g}]", hint="raise encryption.x_bound (or scale the data)")


@hookimpl
def aideploy_check_model(ctx, model, dataset):
    if ctx.cfg.encryption.plugin == SCHEME:
        if dataset.X_test is not None:  # a file's rows are checked a chunk at a time, as they are sent
            _check_range(ctx.cfg.encryption, dataset.X_test, f"data {dataset.name!r}")
        _params(ctx.cfg.encryption, model)


def _described(ctx, service) -> tuple[int, int, FastParams]:
    """Shape and parameters from the service's description (``mode=predict`` without a model)."""
    if service is None or not service.fast:
        raise ConfigError(f"encryption=fast without a model needs the service's public parameters, and the "
                          f"service at {ctx.cfg.scoring_uri} does not give them",
                          hint="predict against a service running aideploy's score.py, or give the model "
                          "(model=sklearn_pickle model.path=...)")
    fast = service.fast
    try:
        params = FastParams.from_json(json.dumps(fast["params"]).encode())
        return int(fast["n_features"]), int(fast["n_outputs"]), params
    except (FastSchemeError, KeyError, TypeError, ValueError) as exc:
        raise PredictError(f"the service at {ctx.cfg.scoring_uri} described unusable fast parameters: {exc}",
                           hint="is it running the same aideploy version as this client?") from None


@hookimpl
def aideploy_setup_keys(cfg, ctx, model, service):
    if model is not None:
        linear, params = _params(cfg, model)
        n_features, n_outputs = linear.n_features, linear.n_outputs
    else:
        n_features, n_outputs, params = _described(ctx, service)
    client = FastClient(n_features, n_outputs, params)
    bundle = client.public_bundle()
    url = publish_public_keys(ctx, client.key_id, bundle)
    return KeySession(SCHEME, client.key_id, len(bundle), client, {"key_id": client.key_id, "key_url": url})


@hookimpl
def aideploy_encrypt(cfg, keys, dataset):
    X = dataset.X_test
    _check_range(cfg, X, f"data {dataset.name!r}")
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
