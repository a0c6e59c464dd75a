"""``encryption=fast``: aideploy's coefficient-encoded RLWE scheme (``aideploy_scoring.fastlinear``).

The client keeps the secret key and publishes a ~49-65 KB bundle (parameters, key seed, pk0)
to the key store. Each request carries ``batch_size`` samples in one binary query; the answer
holds only the logits, re-randomised and flooded by the service. The parameters are the
service's: chosen from the model, its input ranges and ``max_error``
(``aideploy_scoring.encrypted.fast_linear_server``/``fast_mlp_plan``), by the service at start-up
and, identically, by this client when it has the model (``mode=run``); against a service that
describes itself (``mode=predict``) the client takes them from that description. A query holds at
most the samples the service's flooding covers within a statistical distance of 2^-40 (and, for
an MLP, ``max_samples_per_query``, default 1).

Each input feature has its own range (``aideploy_scoring.inputranges``: recorded with the model
version, or ``[-x_bound, x_bound]`` for all when ``encryption.x_bound`` is set): the client maps
its rows into ``[-1, 1]`` by them before encrypting. A value outside its range is refused with
one line naming the column: before anything is deployed for the rows in memory and a file's
first rows (the model stage; at the keys stage against a described service), and chunk by chunk
as they are encrypted for the rest of a file (its row numbered), so no file is scanned in full
before the first query.

A ReLU (or identity) MLP is served with ``aideploy_scoring.fastmlp``'s interactive rounds, one
per layer: the request the target sends is round 1; the service answers with the permuted,
scaled hidden pre-activations and a sealed round token, and :func:`aideploy_decrypt` runs the
remaining rounds itself (decrypt, ReLU, re-encrypt, and the next round's requests sent through
the target's predict hook, :meth:`aideploy.context.RunContext.send`) until the encrypted logits
come back. A request's latency and bytes in the run's traffic are then those of all its rounds.
"""

import json
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from aideploy import hookimpl, kernels
from aideploy.artifacts import Dataset, KeySession, Request, Requests, Response, Scores
from aideploy.errors import ConfigError, PredictError
from aideploy.keystore import publish_public_keys
from aideploy.client import configured_batch
from aideploy.linear import ClientPart, client_runtime, features, linear_model, mlp_layers
from aideploy.schemas import SAMPLE_ROWS
from aideploy.stages import Mode
from aideploy.targets import capabilities
from aideploy_scoring import fastmlp
from aideploy_scoring.encrypted import fast_linear_server, fast_mlp_plan
from aideploy_scoring.fastlinear import FastClient, FastParams, FastSchemeError
from aideploy_scoring.inputranges import InputRanges, OutOfRange, for_model
from aideploy_scoring.schema import InputError
from aideploy_scoring.service import BINARY_TYPE, KEY_HEADERS, SCHEME_HEADER

SCHEME = "fast"
# setuptools builds the kernels' C extension (scoring/fastkernels_aot.py: the workers then run without
# numba); numba compiles them where that build fails
RUNTIME = ["seal-python==4.4.0", "cryptography>=41", "numba>=0.68", "setuptools", "azure-storage-blob>=12.19",
           "cachetools>=5.3"]


class Served(NamedTuple):
    """The fast scheme as the service runs it for a model: ``[n_in, n_out]`` and None for a
    linear model (an MLP: its layer sizes and hidden activation), the parameters, the most
    samples a query may hold and the input ranges."""

    sizes: list[int]
    activation: str | None
    params: FastParams
    samples: int
    ranges: InputRanges


@dataclass
class FastKeys:
    """The run's client (:class:`FastClient` or :class:`fastmlp.MLPClient`: the secret key) and the
    input ranges it maps rows by before encrypting them."""

    crypto: Any
    ranges: InputRanges


@hookimpl
def aideploy_scoring_requirements(ctx):
    return RUNTIME + client_runtime(ctx) if ctx.cfg.encryption.plugin == SCHEME else None


def _params(cfg, model) -> Served:
    """The fast scheme for ``model`` as the service computes it, or a ConfigError."""
    mlp = mlp_layers(model, SCHEME)
    try:
        if mlp is not None:
            layers, activation = mlp
            ranges = for_model(model.adapter, layers[0][0].shape[1], cfg.x_bound)
            configured = int(cfg.max_samples_per_query)
            plan = fast_mlp_plan(layers, activation, ranges, cfg.max_error, max(1, configured))
            samples = min(plan.max_samples, configured) if configured > 0 else plan.max_samples
            return Served(plan.sizes, activation, plan.params, samples, ranges)
        linear = linear_model(model, SCHEME)
        ranges = for_model(model.adapter, linear.n_features, cfg.x_bound)
        server = fast_linear_server(linear, ranges, cfg.max_error)
        return Served([linear.n_features, linear.n_outputs], None, server.params, server.max_samples, ranges)
    except ValueError as exc:  # FastSchemeError, or ranges that do not fit the model
        raise ConfigError(f"encryption=fast cannot serve {model.name}:{model.version}: {exc}",
                          hint="allow a larger error (encryption.max_error); the input ranges come from the model and "
                          "its data (or encryption.x_bound, one range for every feature); the limits are in "
                          "scoring/fastlinear.py and scoring/fastmlp.py") from None


def _range_hint(ranges: InputRanges, service: str | None = None) -> str:
    if ranges.source == "encryption.x_bound":
        return ("raise encryption.x_bound" + (f" of the service at {service}" if service else "") +
                ", or leave it unset: each feature then gets its own range, from the model and its data")
    whose = f"the service at {service} took its ranges" if service else "the ranges come"
    return (f"{whose} from {ranges.source or 'the model'}, when the model version was registered; deploy with data "
            f"that covers this value (every row held in memory and a file's first {SAMPLE_ROWS} rows count), or "
            "give every feature one range with encryption.x_bound=B")


def _check_first_rows(ctx, dataset, ranges: InputRanges, model=None, service: str | None = None) -> None:
    """The rows known before anything is deployed or sent (all in memory, a file's first
    :data:`SAMPLE_ROWS`), through ``model``'s client part (or the described service's), within
    ``ranges``, or a ConfigError naming the first value outside; the rest of a file is checked
    chunk by chunk as it is encrypted (:func:`aideploy_encrypt`)."""
    part = ClientPart.of(ctx, model)
    if dataset.X_test is not None:
        X = part.features(dataset)
    else:
        sample = dataset.sample(SAMPLE_ROWS)
        if sample is None or len(sample) == 0:
            return
        try:
            if hasattr(sample, "columns") and dataset.schema is not None and dataset.schema.named:
                sample = dataset.schema.conform(sample, extra="drop")
            X = part.features(Dataset(dataset.name, sample, schema=dataset.schema))
        except (InputError, TypeError, ValueError):
            return  # a cell the model cannot take: reading the file's chunks reports it, with its line
    error = ranges.outside(X)
    if error is not None:
        raise ConfigError(f"encryption=fast: data {dataset.name!r}: {error}", hint=_range_hint(ranges, service))


def _check_batch(root_cfg, samples: int, where: str) -> None:
    batch = configured_batch(root_cfg) or 1
    if batch > samples:
        raise ConfigError(f"predict.batch_size={batch} is over the {samples} samples per query {where}",
                          hint=f"send predict.batch_size={samples} or fewer (a larger encryption.max_error lets "
                          "the flooding cover more; for an MLP, encryption.max_samples_per_query sets its limit)")


@hookimpl
def aideploy_check_model(ctx, model, dataset):
    if ctx.cfg.encryption.plugin == SCHEME:
        kernels.in_process()  # the checks below run the kernels: the build's, not numba's first compile
        served = _params(ctx.cfg.encryption, model)
        _check_first_rows(ctx, dataset, served.ranges, model)  # the model is not the run's artifact yet
        _check_batch(ctx.cfg, served.samples, "the service will take (max_samples_per_query)")
        target = ctx.cfg.target.plugin
        if served.activation is not None and ctx.mode is not Mode.predict and not capabilities(ctx).serves_mlps:
            raise ConfigError(f"encryption=fast serves {model.name}:{model.version} (an MLP) with round tokens "
                              f"that every worker must open, and target={target} does not provision their "
                              "shared secret yet",
                              hint="deploy it with a target that does (target=local, target=managed_endpoint or "
                              "target=aci), or with encryption=none")


def _described(ctx, service) -> Served:
    """The fast scheme as the service describes it (``GET /score``)."""
    if service is None or not service.fast:
        raise ConfigError(f"encryption=fast without a model needs the service's public parameters, and the "
                          f"service at {ctx.cfg.scoring_uri} does not give them",
                          hint="predict against a service running aideploy's score.py, or give the model "
                          "(model=sklearn_pickle model.path=...)")
    fast = service.fast
    try:
        params = FastParams.from_json(json.dumps(fast["params"]).encode())
        samples = int(fast["max_samples_per_query"])
        ranges = InputRanges.from_json(fast["input_ranges"])
        if ranges.digest() != params.input_ranges:
            raise ValueError("its input ranges are not the ones its parameters were chosen for")
        mlp = fast.get("mlp")
        if mlp is not None:
            sizes, activation = [int(s) for s in mlp["sizes"]], str(mlp["activation"])
            if activation not in fastmlp.ACTIVATIONS or len(sizes) < 2:
                raise ValueError(f"an MLP with activation {activation!r} and sizes {sizes}")
        else:
            sizes, activation = [int(fast["n_features"]), int(fast["n_outputs"])], None
        if ranges.n_features != sizes[0]:
            raise ValueError(f"input ranges for {ranges.n_features} features, a model of {sizes[0]}")
        return Served(sizes, activation, params, samples, ranges)
    except (FastSchemeError, KeyError, TypeError, ValueError) as exc:
        raise PredictError(f"the service at {ctx.cfg.scoring_uri} described unusable fast parameters: {exc}",
                           hint="is it running the same aideploy version as this client?") from None


@hookimpl
def aideploy_setup_keys(cfg, ctx, model, service):
    kernels.in_process()  # mode=predict has no model stage: the keys are the first kernels it runs
    if service is not None and service.fast:  # mode=predict against aideploy's service: its scheme, not ours
        served = _described(ctx, service)
        _check_batch(ctx.cfg, served.samples, f"the service at {ctx.cfg.scoring_uri} takes")
        if ctx.artifacts.get("dataset") is not None:  # a Ray worker has none: the run checked them before starting it
            _check_first_rows(ctx, ctx.artifacts["dataset"], served.ranges, service=ctx.cfg.scoring_uri)
    elif model is not None:
        served = _params(cfg, model)
    else:
        served = _described(ctx, service)
    if served.activation is not None:
        client = fastmlp.MLPClient(served.sizes, served.activation, served.params)
    else:
        client = FastClient(served.sizes[0], served.sizes[-1], served.params)
    bundle = client.public_bundle()
    url = publish_public_keys(ctx, client.key_id, bundle)
    return KeySession(SCHEME, client.key_id, len(bundle), FastKeys(client, served.ranges),
                      {"key_id": client.key_id, "key_url": url}, register=True)


@hookimpl
def aideploy_encrypt(ctx, keys, dataset):
    try:  # the service's ranges; rows after a file's first ones are met here first
        X = keys.client.ranges.normalize(features(ctx, dataset), dataset.first_row)
    except OutOfRange as exc:
        service = ctx.cfg.scoring_uri if ctx.artifacts.get("service") is not None else None
        raise ConfigError(f"encryption=fast: data {dataset.name!r}: {exc}",
                          hint=_range_hint(keys.client.ranges, service)) from None
    headers = {"Content-Type": BINARY_TYPE, SCHEME_HEADER: SCHEME,
               **{KEY_HEADERS[field]: value for field, value in keys.public.items()}}
    step = max(1, int(ctx.batch_size))
    encrypt = keys.client.crypto.encrypt
    return Requests([Request(encrypt(X[i:i + step]), len(X[i:i + step]), headers) for i in range(0, len(X), step)])


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
    client = keys.client.crypto
    if isinstance(client, fastmlp.MLPClient):
        return _rounds(ctx, client, requests, responses)
    rows = []
    for index, (request, response) in enumerate(zip(requests.items, responses.items), start=1):
        try:
            rows.append(client.decrypt(response.body, request.n_samples))
        except FastSchemeError as exc:
            raise _undecryptable(index, exc) from None
    return Scores(np.vstack(rows))
