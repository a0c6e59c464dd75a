"""``encryption=fast``: aideploy's coefficient-encoded RLWE scheme (``aideploy_scoring.fastlinear``).

The client keeps the secret key and publishes a ~49-65 KB bundle (parameters, key seed, pk0)
to the key store. Each request carries ``batch_size`` samples in one binary query; the answer
holds only the logits, re-randomised and flooded by the service. The parameters are the
service's: chosen from the model and ``x_bound``/``max_error`` (``fastlinear.choose_params``),
by the service at start-up and, identically, by this client when it has the model
(``mode=run``); without the model (``mode=predict``) the client takes them from the service's
description. A query holds at most the samples the service's flooding covers within a
statistical distance of 2^-40 (and, for an MLP, ``max_samples_per_query``, default 1).

A ReLU (or identity) MLP is served with ``aideploy_scoring.fastmlp``'s interactive rounds, one
per layer: the request the target sends is round 1; the service answers with the permuted,
scaled hidden pre-activations and a sealed round token, and :func:`aideploy_decrypt` runs the
remaining rounds itself (decrypt, ReLU, re-encrypt, and the next round's requests sent through
the target's predict hook, :meth:`aideploy.context.RunContext.send`) until the encrypted logits
come back. A request's latency and bytes in the run's traffic are then those of all its rounds.
"""

import json

import numpy as np

from aideploy import hookimpl
from aideploy.artifacts import KeySession, Request, Requests, Response, Scores
from aideploy.errors import ConfigError, PredictError
from aideploy.keystore import publish_public_keys
from aideploy.client import configured_batch
from aideploy.linear import client_runtime, features, linear_model, mlp_layers
from aideploy.stages import Mode
from aideploy.targets import capabilities
from aideploy_scoring import fastmlp
from aideploy_scoring.fastlinear import FastClient, FastParams, FastSchemeError, FastServer, choose_params
from aideploy_scoring.service import BINARY_TYPE, KEY_HEADERS, SCHEME_HEADER

SCHEME = "fast"
# numba compiles the kernels; setuptools is what numba.pycc builds their extension modules with
# (scoring/fastkernels_aot.py: the workers then run without numba)
RUNTIME = ["seal-python==4.4.0", "cryptography>=41", "numba>=0.68", "setuptools", "azure-storage-blob>=12.19",
           "cachetools>=5.3"]


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME + client_runtime(ctx) if ctx.cfg.encryption.plugin == SCHEME else None


def _params(cfg, model) -> tuple[list[int], str | None, FastParams, int]:
    """``(sizes, activation, params, samples)`` for this model, as the service computes them:
    ``[n_in, n_out]`` and None for a linear one, the layer sizes and the hidden activation for
    an MLP, and the most samples a query may hold; or a ConfigError."""
    mlp = mlp_layers(model, SCHEME)
    try:
        if mlp is not None:
            layers, activation = mlp
            sizes = [layers[0][0].shape[1]] + [W.shape[0] for W, _ in layers]
            configured = int(cfg.max_samples_per_query)
            params = fastmlp.choose_params(layers, activation, cfg.x_bound, cfg.max_error,
                                           min_samples=max(1, configured))
            covered = fastmlp.plan(layers, activation, params).max_samples
            return sizes, activation, params, min(covered, configured) if configured > 0 else covered
        linear = linear_model(model, SCHEME)
        params = choose_params(linear.coef, linear.intercept, cfg.x_bound, cfg.max_error)
        return ([linear.n_features, linear.n_outputs], None, params,
                FastServer(linear.coef, linear.intercept, params).max_samples)
    except FastSchemeError as exc:
        raise ConfigError(f"encryption=fast cannot serve {model.name}:{model.version}: {exc}",
                          hint="allow a larger error (encryption.max_error), or, if the inputs are smaller "
                          "than encryption.x_bound, lower it; the limits are in scoring/fastlinear.py "
                          "and scoring/fastmlp.py") from None


def _check_range(cfg, X: np.ndarray, what: str) -> None:
    top = float(np.abs(X).max(initial=0.0))
    if top > cfg.x_bound:
        raise ConfigError(f"encryption=fast: {what} has values up to {top:g}, outside "
                          f"[-{cfg.x_bound:g}, {cfg.x_bound:g}]", hint="raise encryption.x_bound (or scale the data)")


def _check_batch(root_cfg, samples: int, where: str) -> None:
    batch = configured_batch(root_cfg) or 1
    if batch > samples:
        raise ConfigError(f"predict.batch_size={batch} is over the {samples} samples per query {where}",
                          hint=f"send predict.batch_size={samples} or fewer (a larger encryption.max_error lets "
                          "the flooding cover more; for an MLP, encryption.max_samples_per_query sets its limit)")


@hookimpl
def aideploy_check_model(ctx, model, dataset):
    if ctx.cfg.encryption.plugin == SCHEME:
        if dataset.X_test is not None:  # a file's rows are checked a chunk at a time, as they are sent
            _check_range(ctx.cfg.encryption, features(ctx, dataset), f"data {dataset.name!r}")
        _, activation, _, samples = _params(ctx.cfg.encryption, model)
        _check_batch(ctx.cfg, samples, "the service will take (max_samples_per_query)")
        target = ctx.cfg.target.plugin
        if activation is not None and ctx.mode is not Mode.predict and not capabilities(ctx).serves_mlps:
            raise ConfigError(f"encryption=fast serves {model.name}:{model.version} (an MLP) with round tokens "
                              f"that every worker must open, and target={target} does not provision their "
                              "shared secret yet",
                              hint="deploy it with a target that does (target=local), or with encryption=none")


def _described(ctx, service) -> tuple[list[int], str | None, FastParams, int]:
    """Sizes, activation, parameters and samples per query from the service's description
    (``mode=predict`` without a model)."""
    if service is None or not service.fast:
        raise ConfigError(f"encryption=fast without a model needs the service's public parameters, and the "
                          f"service at {ctx.cfg.scoring_uri} does not give them",
                          hint="predict against a service running aideploy's score.py, or give the model "
                          "(model=sklearn_pickle model.path=...)")
    fast = service.fast
    try:
        params = FastParams.from_json(json.dumps(fast["params"]).encode())
        samples = int(fast["max_samples_per_query"])
        mlp = fast.get("mlp")
        if mlp is not None:
            sizes, activation = [int(s) for s in mlp["sizes"]], str(mlp["activation"])
            if activation not in fastmlp.ACTIVATIONS or len(sizes) < 2:
                raise ValueError(f"an MLP with activation {activation!r} and sizes {sizes}")
            return sizes, activation, params, samples
        return [int(fast["n_features"]), int(fast["n_outputs"])], None, params, samples
    except (FastSchemeError, KeyError, TypeError, ValueError) as exc:
        raise PredictError(f"the service at {ctx.cfg.scoring_uri} described unusable fast parameters: {exc}",
                           hint="is it running the same aideploy version as this client?") from None


@hookimpl
def aideploy_setup_keys(cfg, ctx, model, service):
    if model is not None:
        sizes, activation, params, _ = _params(cfg, model)
    else:
        sizes, activation, params, samples = _described(ctx, service)
        _check_batch(ctx.cfg, samples, f"the service at {ctx.cfg.scoring_uri} takes")
    if activation is not None:
        client = fastmlp.MLPClient(sizes, activation, params)
    else:
        client = FastClient(sizes[0], sizes[-1], params)
    bundle = client.public_bundle()
    url = publish_public_keys(ctx, client.key_id, bundle)
    return KeySession(SCHEME, client.key_id, len(bundle), client, {"key_id": client.key_id, "key_url": url},
                      register=True)


@hookimpl
def aideploy_encrypt(ctx, keys, dataset):
    X = features(ctx, dataset)
    _check_range(keys.client.params, X, f"data {dataset.name!r}")  # the service's bound
    headers = {"Content-Type": BINARY_TYPE, SCHEME_HEADER: SCHEME,
               **{KEY_HEADERS[field]: value for field, value in keys.public.items()}}
    step = max(1, int(ctx.batch_size))
    return Requests([Request(keys.client.encrypt(X[i:i + step]), len(X[i:i + step]), headers)
                     for i in range(0, len(X), step)])


def _undecryptable(index: int, exc: Exception) -> PredictError:
    return PredictError(f"answer {index} cannot be decrypted: {exc}",
                        hint="is the service running aideploy's score.py with the same scheme version?")


def _rounds(ctx, client, requests, responses) -> Scores:
    """Run an MLP's remaining rounds for every request of the chunk, round by round (each round's
    requests sent together through the target's predict hook, ``predict.concurrency`` at a time);
    the logits."""
    items = responses.items
    answers = [response.body for response in items]
    cost = [[response.latency_ms, response.request_bytes, len(response.body)] for response in items]
    logits: list = [None] * len(items)
    waiting = list(range(len(items)))
    while waiting:
        sends = []
        for i in waiting:
            request = requests.items[i]
            try:
                message, values = client.respond(answers[i], request.n_samples)
            except FastSchemeError as exc:
                raise _undecryptable(i + 1, exc) from None
            if message is None:
                logits[i] = values
            else:
                sends.append((i, Request(message, request.n_samples, request.headers)))
        waiting = [i for i, _ in sends]
        if sends:
            try:
                answered = ctx.send(Requests([r for _, r in sends]))
            except PredictError as exc:
                if "expired" in exc.cause:
                    exc.hint = ("round 1 of a whole chunk is sent before its round 2: lower predict.chunk_rows, "
                                "or deploy with a larger encryption.round_ttl_seconds")
                raise
            for (i, _), response in zip(sends, answered.items):
                answers[i] = response.body
                cost[i][0] += response.latency_ms
                cost[i][1] += response.request_bytes
                cost[i][2] += len(response.body)
    # the run's traffic counts every round of a request as that request's
    for i, (latency, sent, received) in enumerate(cost):
        items[i] = Response(answers[i], latency, sent, received)
    return Scores(np.vstack(logits))


@hookimpl
def aideploy_decrypt(ctx, keys, requests, responses):
    if isinstance(keys.client, fastmlp.MLPClient):
        return _rounds(ctx, keys.client, requests, responses)
    rows = []
    for index, (request, response) in enumerate(zip(requests.items, responses.items), start=1):
        try:
            rows.append(keys.client.decrypt(response.body, request.n_samples))
        except FastSchemeError as exc:
            raise _undecryptable(index, exc) from None
    return Scores(np.vstack(rows))
