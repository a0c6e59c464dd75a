"""The encrypted schemes of the scoring service, and how they get the client's public keys."""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from aideploy_scoring import settings
from aideploy_scoring.inputranges import InputRanges
from aideploy_scoring.keyfetch import KeyFetcher, KeyFetchError
from aideploy_scoring.keyshare import SHARE_DIR_ENV
from aideploy_scoring.limits import KeyAdmission, LimitExceeded, LimitsUnavailable, MemoryStore, QueryBudget, Store
from aideploy_scoring.service import LinearModel, RequestError, require

__all__ = ["key_fetcher_from_environment", "fetch_keys", "SealScheme", "FastScheme", "FastMLPScheme", "QueryBudget"]


def key_fetcher_from_environment(max_key_bytes: int | None = None) -> KeyFetcher:
    """One fetcher per worker and key size cap, from the settings (:mod:`.settings`): it fetches keys
    only from the deployment's key store (``AIDEPLOY_KEY_STORE``) and the public hosts
    ``AIDEPLOY_KEY_HOSTS`` adds, bounded by ``AIDEPLOY_KEY_CACHE_BYTES`` / ``AIDEPLOY_MAX_KEY_BYTES``
    (and ``max_key_bytes``, a scheme's own cap, if smaller), reusing a positive SAS check for
    ``AIDEPLOY_SAS_RECHECK_SECONDS`` (:mod:`.keyfetch`) and sharing verified keys with the other
    workers through ``AIDEPLOY_KEY_SHARE_DIR`` (:mod:`.keyshare`)."""
    limit = settings.get("AIDEPLOY_MAX_KEY_BYTES")
    return KeyFetcher(max_cache_bytes=settings.get("AIDEPLOY_KEY_CACHE_BYTES"),
                      max_key_bytes=min(limit, max_key_bytes) if max_key_bytes else limit,
                      store_url=settings.get("AIDEPLOY_KEY_STORE"),
                      allowed_hosts=settings.get("AIDEPLOY_KEY_HOSTS") or (),
                      sas_recheck_seconds=settings.get("AIDEPLOY_SAS_RECHECK_SECONDS"),
                      shared_dir=settings.get(SHARE_DIR_ENV))


def fetch_keys(fetcher: KeyFetcher, payload: dict, transform: Callable[[bytes], Any],
               conn_str: bool = False) -> Any:
    """The public keys a request names: by SAS URL, or (``conn_str``: the seal scheme only) by the
    seed's connection string, which must name the deployment's own key store."""
    key_id = require(payload, "key_id", str, "the id of the public keys blob")
    if "conn_str" in payload and not conn_str:
        raise RequestError("this scheme takes 'key_url' (a read-only SAS URL for the key blob), not the seed's "
                           "'conn_str': no account key is accepted in a request")
    try:
        if "key_url" in payload:
            return fetcher.fetch(key_id, key_url=require(payload, "key_url", str, "a SAS URL"), transform=transform)
        if "conn_str" in payload:
            return fetcher.fetch(key_id, conn_str=require(payload, "conn_str", str, "a connection string"),
                                 container=require(payload, "container", str, "a container name"),
                                 transform=transform)
    except KeyFetchError as exc:
        raise RequestError(str(exc), exc.http_status or 400) from None
    except (LimitExceeded, LimitsUnavailable) as exc:
        raise RequestError(str(exc), exc.status) from None
    raise RequestError("missing field 'key_url' (a SAS URL for the public keys)"
                       + (", or the seed's 'conn_str' and 'container'" if conn_str else ""))


class KeyedScheme:
    """A scheme whose requests name the client's public keys (``key_id`` + ``key_url``):
    ``self.fetcher`` fetches them, ``self._load`` parses them and admits a new key
    (``self.admission``: ``max_new_keys_per_hour`` over the deployment)."""

    fetcher: KeyFetcher
    admission: KeyAdmission
    _load: Callable[[bytes], Any]
    accepts_conn_str = False

    def _keys(self, payload: dict) -> Any:
        return fetch_keys(self.fetcher, payload, self._load, self.accepts_conn_str)

    def register_key(self, payload: dict) -> dict:
        """``{"scheme", "register_key": true, "key_id", "key_url"}``: fetch and parse the keys
        now, before any query. Every worker of the deployment then holds them (the fetch is
        shared, :mod:`.keyshare`), and a key the service cannot read or use is refused here, with
        the reason, rather than on the client's first query."""
        self._keys(payload)
        return {"registered": payload["key_id"]}


def admission(store: Store | None) -> KeyAdmission:
    """New keys as the settings limit them, counted in ``store`` (this process's memory if None)."""
    return KeyAdmission(settings.get("AIDEPLOY_MAX_NEW_KEYS_PER_HOUR"), store if store is not None else MemoryStore())


def score_as_json(score_binary: Callable[[dict, bytes], bytes], payload: dict, what: str) -> dict:
    """A binary scheme's JSON form: ``{"data": <base64>}`` in and out, around ``score_binary``."""
    data = require(payload, "data", str, what)
    try:
        body = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("field 'data' is not valid base64") from None
    return {"data": base64.b64encode(score_binary(payload, body)).decode()}


class SealScheme(KeyedScheme):
    """encrypted-inference (seed 000): ``{"data": [ciphertext, ...], "key_id", "key_url"}``, or the
    seed's own body with ``conn_str`` + ``container`` (for the deployment's own key store only)."""

    name = "seal"
    accepts_conn_str = True  # the seed's client sends its connection string; only this scheme's clients do

    def __init__(self, model: LinearModel, fetcher: KeyFetcher, store: Store | None = None) -> None:
        from aideploy_scoring import seal_ei

        self._seal = seal_ei
        self._load = self._load_keys  # one object: the key cache is keyed by the transform
        try:
            self.server = seal_ei.SealLinearServer(model.coef, model.intercept)
        except ValueError as exc:  # weights outside what the library can encode
            raise RequestError(f"this service's model cannot be served with encryption=seal: {exc}") from None
        self.fetcher = fetcher
        self.admission = admission(store)

    def _load_keys(self, data: bytes) -> Any:
        keys = self._seal.prepare_keys(data)
        self.admission.admit(hashlib.sha256(data).hexdigest()[:32])  # the key's id: a digest of its material
        return keys

    def score(self, payload: dict) -> Any:
        data = require(payload, "data", list, "a list of base64 ciphertexts")
        keys = self._keys(payload)
        try:
            return self.server.predict(data, keys)
        except self._seal.SealInputError as exc:
            raise RequestError(str(exc)) from None


class _LoadedKey(tuple):
    """``(server, public key)`` as the key cache holds it, sized by what the key holds
    (a plain tuple would be sized by ``len()``: 2 bytes, leaving the cache unbounded)."""

    @property
    def nbytes(self) -> int:
        return self[1].nbytes


#: The fast scheme's one input bound for every feature, when set (``encryption.x_bound``; unset:
#: each feature's own range, recorded with the model version, :mod:`.inputranges`), and its
#: guaranteed logit error (``encryption.max_error``, default 0.001): the service chooses its
#: parameters from these and its model once, in ``init()``, and publishes them (``GET /score``).
X_BOUND_ENV = "AIDEPLOY_FAST_X_BOUND"
MAX_ERROR_ENV = "AIDEPLOY_FAST_MAX_ERROR"


def _ranges(ranges: InputRanges | None, n_features: int) -> InputRanges:
    """``ranges``, else one range for every feature: ``[-x_bound, x_bound]`` as the settings say."""
    if ranges is not None:
        return ranges
    return InputRanges.uniform(n_features, settings.get(X_BOUND_ENV) or 1.0)


def fast_linear_server(model: LinearModel, ranges: InputRanges, max_error: float):
    """The fast scheme's server for a linear model as a service serves it: ``ranges`` folded into
    its weights, the parameters chosen for the folded model and bound to the ranges' digest
    (``mode=run`` computes the same in the client, ``plugins/encryption_fast.py``)."""
    from aideploy_scoring import fastlinear

    W, b = ranges.fold(model.coef, model.intercept)
    params = replace(fastlinear.choose_params(W, b, 1.0, max_error), input_ranges=ranges.digest())
    return fastlinear.FastServer(W, b, params)


def fast_mlp_plan(layers: list, activation: str, ranges: InputRanges, max_error: float, min_samples: int):
    """The fast scheme's plan for an MLP as a service serves it (``fastmlp.MLPPlan``): ``ranges``
    folded into the first layer, the parameters chosen for the folded network (covering
    ``min_samples`` per query where a ring can) and bound to the ranges' digest."""
    from aideploy_scoring import fastmlp

    layers = [ranges.fold(*layers[0]), *layers[1:]]
    params = replace(fastmlp.choose_params(layers, activation, 1.0, max_error, min_samples=min_samples),
                     input_ranges=ranges.digest())
    return fastmlp.plan(layers, activation, params)


class _FastKeyedScheme(KeyedScheme):
    """What the fast schemes share: one server, for the parameters the service chose from its
    model, input ranges and ``max_error`` when it was built (never a client's); a bundle for other
    parameters, or a degenerate key, is refused when it is parsed, as the key cache holds it."""

    name = "fast"

    def __init__(self, fetcher: KeyFetcher, server: Any, ranges: InputRanges, store: Store | None = None) -> None:
        self.fetcher = fetcher  # the service's caps keys at fastlinear.MAX_KEY_BYTES
        self.server = server
        self.ranges = ranges
        self.admission = admission(store)
        self._load = self._load_bundle  # one object: the key cache is keyed by the transform

    def _load_bundle(self, bundle: bytes) -> tuple[Any, Any]:
        from aideploy_scoring.fastlinear import FastSchemeError

        try:
            public = self.server.load_public(bundle)
        except FastSchemeError as exc:
            raise ValueError(f"public bundle refused: {exc}") from None  # KeyFetcher makes it a 400
        self.admission.admit(public.key_id)  # by its cryptographic id: a blob name costs nothing to change
        return _LoadedKey((self.server, public))

    def describe(self) -> dict[str, Any]:
        """``GET /score``'s ``fast``: the parameters every client must use, with the guarantees and
        caps that come with them for this model."""
        import json

        from aideploy_scoring import fastlinear

        info = self.server.describe()
        return {"params": json.loads(self.server.params.to_json()), "input_ranges": self.ranges.to_json(),
                **{k: info[k] for k in ("max_samples_per_query", "error_bound", "flood_bits", "flood_margin_bits")},
                "statistical_distance_log2": fastlinear.SD_LOG2, "max_answer_bytes": fastlinear.MAX_ANSWER_BYTES,
                "max_key_bytes": fastlinear.MAX_KEY_BYTES}


class FastScheme(_FastKeyedScheme):
    """Our coefficient-encoded scheme (``fastlinear``): one query, up to the service's
    ``max_samples_per_query`` samples.

    Each output ciphertext gets a fresh public-key encryption of zero, made on the request
    path (compiled kernels, no GIL held): nothing runs between requests.
    """

    def __init__(self, model: LinearModel, fetcher: KeyFetcher, store: Store | None = None,
                 ranges: InputRanges | None = None, max_error: float | None = None) -> None:
        from aideploy_scoring import fastlinear

        self._fl = fastlinear
        self.model = model
        ranges = _ranges(ranges, model.n_features)
        max_error = max_error if max_error is not None else settings.get(MAX_ERROR_ENV)
        try:
            server = fast_linear_server(model, ranges, max_error)
        except (fastlinear.FastSchemeError, ValueError) as exc:
            raise RequestError(f"encryption=fast cannot serve this model for its input ranges ({ranges.source}), "
                               f"max_error={max_error:g}: {exc}") from None
        super().__init__(fetcher, server, ranges, store)

    def describe(self) -> dict[str, Any]:
        return {"n_features": self.model.n_features, "n_outputs": self.model.n_outputs, **super().describe()}

    def warm_up(self) -> None:
        """Run every kernel once (called from ``init()``: the numba kernels are compiled, or
        loaded from numba's disk cache, there, so no request pays for them)."""
        self.server.warm_up()

    def score_binary(self, payload: dict, query: bytes) -> bytes:
        server, public = self._keys(payload)
        try:
            return server.predict(query, public)
        except self._fl.FastSchemeError as exc:
            raise RequestError(str(exc)) from None

    def score(self, payload: dict) -> Any:
        return score_as_json(self.score_binary, payload, "a base64 query")


#: The per-deployment secret that seals the MLP rounds' tokens (:mod:`.settings` declares it and the
#: limits below). Every worker and replica of one deployment must have the same one: ``target=local``
#: generates it at deploy time and hands it to its workers, ``target=managed_endpoint`` keeps it in Key
#: Vault (:mod:`.secret_settings`), ``target=aci`` (one container) leaves it to the server (below).
TOKEN_SECRET_ENV = "AIDEPLOY_MLP_TOKEN_SECRET"
#: Samples one client key may send through round 1 of the MLP protocol; 0: unlimited.
MAX_QUERIES_ENV = "AIDEPLOY_MAX_QUERIES_PER_KEY"
#: Samples one MLP query may hold (round 1); 0: unlimited. A query's secret permutation and
#: factors are shared by its samples, so n + 1 samples in one query give W_1's rows away
#: (bench/mlp_attack.py); 1 makes every sample pay for its own.
MAX_SAMPLES_ENV = "AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY"
#: Seconds a round token stays valid (default 300): a client sends a whole chunk's round 1 before
#: its round 2, so this must outlast sending one chunk. Spent tokens are remembered this long.
TOKEN_TTL_ENV = "AIDEPLOY_MLP_TOKEN_TTL"


def token_secret_from_environment() -> bytes:
    """The deployment's token secret (:func:`.secret_settings.secret`: Key Vault or the environment); when
    there is none, the one this server's workers share (:func:`.secret_settings.server_secret`, in
    ``AIDEPLOY_KEY_SHARE_DIR``), or, without that directory, a fresh one for this worker (a warning)."""
    import logging

    from aideploy_scoring.secret_settings import secret, server_secret

    value = secret(TOKEN_SECRET_ENV)
    if value is not None:
        return value
    log = logging.getLogger("aideploy.scoring")
    directory = settings.get(SHARE_DIR_ENV)
    if directory:
        try:
            value = server_secret(directory)
        except (OSError, ValueError) as exc:
            log.warning("the server's shared MLP token secret is unavailable (%s)", exc)
        else:
            log.info("%s is not set: this server's workers seal MLP round tokens with one secret it generated "
                     "(%s); a deployment of several servers needs one secret for all of them", TOKEN_SECRET_ENV,
                     directory)
            return value
    log.warning(
        "%s is not set: this worker seals MLP round tokens with its own random secret, so a query's rounds "
        "succeed only if they all reach this worker; set it to the same secret in every worker and replica",
        TOKEN_SECRET_ENV)
    return os.urandom(32)


class FastMLPScheme(_FastKeyedScheme):
    """``encryption=fast`` for a ReLU (or identity) MLP: :mod:`fastmlp`'s interactive rounds.

    Every round is one binary request, the body a ``fastmlp`` round message; the answer a
    ``fastmlp`` round answer, binary, carrying the sealed round token for the next round (its
    secrets: the query's permutation and scaling seed). Nothing is kept between rounds but the
    spent tokens, in ``store`` (:mod:`.limits`: one for the whole deployment): any worker holding
    :data:`TOKEN_SECRET_ENV` serves any round, and a token is answered once by all of them. A bad
    round (tampered, expired, replayed, out of order, wrong size) is a 400; a key over
    ``max_queries_per_key`` (counted in ``store`` too) a 429. Limits not given come from the settings.
    """

    def __init__(self, layers: list, activation: str, fetcher: KeyFetcher, secret: bytes | None = None,
                 max_queries_per_key: int | None = None, token_ttl: float | None = None,
                 max_samples_per_query: int | None = None, store: Store | None = None,
                 ranges: InputRanges | None = None, max_error: float | None = None) -> None:
        from aideploy_scoring import fastmlp

        self._fm = fastmlp
        self.layers, self.activation = layers, activation
        self._secret = secret if secret is not None else token_secret_from_environment()
        if max_queries_per_key is None:
            max_queries_per_key = settings.get(MAX_QUERIES_ENV)
        if max_samples_per_query is None:  # default 1: every sample its own secrets; 0: the flood's cap only
            max_samples_per_query = settings.get(MAX_SAMPLES_ENV)
        self.store = store if store is not None else MemoryStore()
        self.budget = QueryBudget(max_queries_per_key, max_samples_per_query, self.store)
        self.token_ttl = token_ttl if token_ttl is not None else settings.get(TOKEN_TTL_ENV)
        ranges = _ranges(ranges, np.shape(layers[0][0])[1])
        max_error = max_error if max_error is not None else settings.get(MAX_ERROR_ENV)
        try:
            plan = fast_mlp_plan(layers, activation, ranges, max_error, max(1, max_samples_per_query))
            self.layers, self.params = plan.layers, plan.params
            server = fastmlp.MLPServer(self.layers, activation, self.params, secret=self._secret,
                                       token_ttl=self.token_ttl, spent=self.store)
        except (fastmlp.FastSchemeError, ValueError) as exc:
            raise RequestError(f"encryption=fast cannot serve this MLP for its input ranges ({ranges.source}), "
                               f"max_error={max_error:g}: {exc}") from None
        super().__init__(fetcher, server, ranges, self.store)

    def describe(self) -> dict[str, Any]:
        sizes = self.server.sizes
        return {"n_features": sizes[0], "n_outputs": sizes[-1], **super().describe(),
                "mlp": {"sizes": sizes, "activation": self.activation}}

    def warm_up(self) -> None:
        """Run one query through every round (compiles the kernels, or loads them)."""
        # the rounds run on a throwaway server: its tokens may not expire mid-warm-up, nor be spent here
        server = self._fm.MLPServer(self.layers, self.activation, self.params, secret=os.urandom(32),
                                    token_ttl=3600.0)
        client = self._fm.MLPClient(server.sizes, self.activation, self.params)
        public = server.load_public(client.public_bundle())
        for n in sorted({1, min(4, server.max_samples)}):
            client.predict(np.zeros((n, server.sizes[0])), lambda message: server.score(message, public))

    def score_binary(self, payload: dict, message: bytes) -> bytes:
        server, public = self._keys(payload)
        head = self._fm.peek(message)
        first = head is not None and head[0] == 1
        try:
            if first:  # by the key's cryptographic id: the same key under another blob name is one budget
                self.budget.spend(public.key_id, head[1])
        except LimitsUnavailable as exc:
            raise RequestError(str(exc), exc.status) from None
        try:
            return server.score(message, public)
        except LimitsUnavailable as exc:
            if first:
                self.budget.refund(public.key_id, head[1])
            raise RequestError(str(exc), exc.status) from None
        except self._fm.FastSchemeError as exc:
            if first:
                self.budget.refund(public.key_id, head[1])
            raise RequestError(str(exc)) from None

    def score(self, payload: dict) -> Any:
        return score_as_json(self.score_binary, payload, "a base64 round message")
