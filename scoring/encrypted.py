"""The encrypted schemes of the scoring service, and how they get the client's public keys."""

from __future__ import annotations

import base64
import binascii
import os
import threading
from typing import Any, Callable

from cachetools import LRUCache

from aideploy_scoring.keyfetch import MAX_SAS_RECHECK_SECONDS, KeyFetcher, KeyFetchError
from aideploy_scoring.keyshare import SHARE_DIR_ENV
from aideploy_scoring.service import LinearModel, RequestError, require


def key_fetcher_from_environment(max_key_bytes: int | None = None) -> KeyFetcher:
    """One fetcher per worker and key size cap, bounded by ``AIDEPLOY_KEY_CACHE_BYTES`` /
    ``AIDEPLOY_MAX_KEY_BYTES`` (and ``max_key_bytes``, a scheme's own cap, if smaller).

    ``AIDEPLOY_KEY_HOSTS`` (comma-separated globs, e.g. ``*.blob.core.windows.net``) limits
    which storage hosts the service will contact for keys named in requests.
    ``AIDEPLOY_SAS_RECHECK_SECONDS`` (0 to 30, default 30) is how long a positive check of
    one SAS URL with the key store is reused (:mod:`.keyfetch`); 0 checks on every request.
    ``AIDEPLOY_KEY_SHARE_DIR`` is the directory the deployment's workers share verified keys
    through (:mod:`.keyshare`); unset, each worker fetches every key itself.
    """
    hosts = os.environ.get("AIDEPLOY_KEY_HOSTS")
    limit = int(os.environ.get("AIDEPLOY_MAX_KEY_BYTES", 64 * 1024 * 1024))
    return KeyFetcher(max_cache_bytes=int(os.environ.get("AIDEPLOY_KEY_CACHE_BYTES", 256 * 1024 * 1024)),
                      max_key_bytes=min(limit, max_key_bytes) if max_key_bytes else limit,
                      allowed_hosts=[h.strip() for h in hosts.split(",")] if hosts else None,
                      sas_recheck_seconds=float(os.environ.get("AIDEPLOY_SAS_RECHECK_SECONDS",
                                                               MAX_SAS_RECHECK_SECONDS)),
                      shared_dir=os.environ.get(SHARE_DIR_ENV) or None)


def fetch_keys(fetcher: KeyFetcher, payload: dict, transform: Callable[[bytes], Any]) -> Any:
    """The public keys a request names: by SAS URL, or by the seed's connection string."""
    key_id = require(payload, "key_id", str, "the id of the public keys blob")
    try:
        if "key_url" in payload:
            return fetcher.fetch(key_id, key_url=require(payload, "key_url", str, "a SAS URL"), transform=transform)
        if "conn_str" in payload:
            return fetcher.fetch(key_id, conn_str=require(payload, "conn_str", str, "a connection string"),
                                 container=require(payload, "container", str, "a container name"),
                                 transform=transform)
    except KeyFetchError as exc:
        raise RequestError(str(exc), exc.http_status or 400) from None
    raise RequestError("missing field 'key_url' (a SAS URL for the public keys), "
                       "or the seed's 'conn_str' and 'container'")


class KeyedScheme:
    """A scheme whose requests name the client's public keys (``key_id`` + ``key_url``):
    ``self.fetcher`` fetches them and ``self._load`` parses them."""

    fetcher: KeyFetcher
    _load: Callable[[bytes], Any]

    def register_key(self, payload: dict) -> dict:
        """``{"scheme", "register_key": true, "key_id", "key_url"}``: fetch and parse the keys
        now, before any query. Every worker of the deployment then holds them (the fetch is
        shared, :mod:`.keyshare`), and a key the service cannot read or use is refused here, with
        the reason, rather than on the client's first query."""
        fetch_keys(self.fetcher, payload, self._load)
        return {"registered": payload["key_id"]}


def score_as_json(score_binary: Callable[[dict, bytes], bytes], payload: dict, what: str) -> dict:
    """A binary scheme's JSON form: ``{"data": <base64>}`` in and out, around ``score_binary``."""
    data = require(payload, "data", str, what)
    try:
        body = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("field 'data' is not valid base64") from None
    return {"data": base64.b64encode(score_binary(payload, body)).decode()}


class SealScheme(KeyedScheme):
    """encrypted-inference (seed 000): ``{"data": [ciphertext, ...], "key_id", "key_url"}``."""

    name = "seal"

    def __init__(self, model: LinearModel, fetcher: KeyFetcher) -> None:
        from aideploy_scoring import seal_ei

        self._seal = seal_ei
        self._load = seal_ei.prepare_keys
        try:
            self.server = seal_ei.SealLinearServer(model.coef, model.intercept)
        except ValueError as exc:  # weights outside what the library can encode
            raise RequestError(f"this service's model cannot be served with encryption=seal: {exc}") from None
        self.fetcher = fetcher

    def score(self, payload: dict) -> Any:
        data = require(payload, "data", list, "a list of base64 ciphertexts")
        keys = fetch_keys(self.fetcher, payload, self._load)
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


#: The fast scheme's input bound and guaranteed logit error (``encryption.x_bound``,
#: ``encryption.max_error``; defaults 1 and 0.001): the service chooses its parameters from these
#: and its model once, in ``init()``, and publishes them (``GET /score``).
X_BOUND_ENV = "AIDEPLOY_FAST_X_BOUND"
MAX_ERROR_ENV = "AIDEPLOY_FAST_MAX_ERROR"


def _positive_from_environment(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise RuntimeError(f"{name}={raw!r} is not a positive number")
    return value


class _FastKeyedScheme(KeyedScheme):
    """What the fast schemes share: one server, for the parameters the service chose from its
    model, ``x_bound`` and ``max_error`` when it was built (never a client's); a bundle for other
    parameters, or a degenerate key, is refused when it is parsed, as the key cache holds it."""

    name = "fast"

    def __init__(self, fetcher: KeyFetcher, server: Any) -> None:
        self.fetcher = fetcher  # the service's caps keys at fastlinear.MAX_KEY_BYTES
        self.server = server
        self._load = self._load_bundle  # one object: the key cache is keyed by the transform

    def _load_bundle(self, bundle: bytes) -> tuple[Any, Any]:
        from aideploy_scoring.fastlinear import FastSchemeError

        try:
            return _LoadedKey((self.server, self.server.load_public(bundle)))
        except FastSchemeError as exc:
            raise ValueError(f"public bundle refused: {exc}") from None  # KeyFetcher makes it a 400

    def describe(self) -> dict[str, Any]:
        """``GET /score``'s ``fast``: the parameters every client must use, with the guarantees and
        caps that come with them for this model."""
        import json

        from aideploy_scoring import fastlinear

        info = self.server.describe()
        return {"params": json.loads(self.server.params.to_json()),
                **{k: info[k] for k in ("max_samples_per_query", "error_bound", "flood_bits", "flood_margin_bits")},
                "statistical_distance_log2": fastlinear.SD_LOG2, "max_answer_bytes": fastlinear.MAX_ANSWER_BYTES,
                "max_key_bytes": fastlinear.MAX_KEY_BYTES}


class FastScheme(_FastKeyedScheme):
    """Our coefficient-encoded scheme (``fastlinear``): one query, up to the service's
    ``max_samples_per_query`` samples.

    Each output ciphertext gets a fresh public-key encryption of zero, made on the request
    path (compiled kernels, no GIL held): nothing runs between requests.
    """

    def __init__(self, model: LinearModel, fetcher: KeyFetcher, x_bound: float | None = None,
                 max_error: float | None = None) -> None:
        from aideploy_scoring import fastlinear

        self._fl = fastlinear
        self.model = model
        x_bound = x_bound if x_bound is not None else _positive_from_environment(X_BOUND_ENV, 1.0)
        max_error = max_error if max_error is not None else _positive_from_environment(MAX_ERROR_ENV, 1e-3)
        try:
            params = fastlinear.choose_params(model.coef, model.intercept, x_bound, max_error)
            server = fastlinear.FastServer(model.coef, model.intercept, params)
        except fastlinear.FastSchemeError as exc:
            raise RequestError(f"encryption=fast cannot serve this model for x_bound={x_bound:g}, "
                               f"max_error={max_error:g}: {exc}") from None
        super().__init__(fetcher, server)

    def describe(self) -> dict[str, Any]:
        return {"n_features": self.model.n_features, "n_outputs": self.model.n_outputs, **super().describe()}

    def warm_up(self) -> None:
        """Run every kernel once (called from ``init()``: the numba kernels are compiled, or
        loaded from numba's disk cache, there, so no request pays for them)."""
        self.server.warm_up()

    def score_binary(self, payload: dict, query: bytes) -> bytes:
        server, public = fetch_keys(self.fetcher, payload, self._load)
        try:
            return server.predict(query, public)
        except self._fl.FastSchemeError as exc:
            raise RequestError(str(exc)) from None

    def score(self, payload: dict) -> Any:
        return score_as_json(self.score_binary, payload, "a base64 query")


#: The per-deployment secret that seals the MLP rounds' tokens (hex, at least 32 digits). Every
#: worker and replica of one deployment must have the same one; the target sets it from a
#: secret it generates at deploy time (never logged, never written to the run's files).
TOKEN_SECRET_ENV = "AIDEPLOY_MLP_TOKEN_SECRET"
#: Samples one client key may send through round 1 of the MLP protocol, per worker; 0: unlimited.
MAX_QUERIES_ENV = "AIDEPLOY_MAX_QUERIES_PER_KEY"
#: Samples one MLP query may hold (round 1); 0: unlimited. A query's secret permutation and
#: factors are shared by its samples, so n + 1 samples in one query give W_1's rows away
#: (bench/mlp_attack.py); 1 makes every sample pay for its own.
MAX_SAMPLES_ENV = "AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY"
#: Seconds a round token stays valid (default 300): a client sends a whole chunk's round 1 before
#: its round 2, so this must outlast sending one chunk. Spent tokens are remembered this long.
TOKEN_TTL_ENV = "AIDEPLOY_MLP_TOKEN_TTL"


def token_secret_from_environment() -> bytes:
    """The deployment's token secret, or a fresh per-worker one (with a warning) when unset."""
    import logging

    value = os.environ.get(TOKEN_SECRET_ENV, "")
    if value:
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            raise RuntimeError(f"{TOKEN_SECRET_ENV} must be hex digits") from None
        if len(secret) < 16:
            raise RuntimeError(f"{TOKEN_SECRET_ENV} must hold at least 16 bytes (32 hex digits)")
        return secret
    logging.getLogger("aideploy.scoring").warning(
        "%s is not set: this worker seals MLP round tokens with its own random secret, so a query's rounds "
        "succeed only if they all reach this worker; set it to the same secret in every worker and replica",
        TOKEN_SECRET_ENV)
    return os.urandom(32)


class QueryBudget:
    """Round-1 samples per client key id on this worker, refused (429) beyond ``limit``, and
    samples per query, refused (400) beyond ``per_query``; 0: unlimited.

    Per worker and per replica: a deployment with W workers on R replicas lets one key through
    up to ``W * R * limit`` samples. The counts of the least recently used keys are forgotten
    beyond ``MAX_KEYS`` (a key forgotten starts again at 0). A client can always make a new key:
    the budget bounds what one key learns; who may query at all is the deployment's auth key's.
    """

    MAX_KEYS = 100_000

    def __init__(self, limit: int, per_query: int = 0) -> None:
        self.limit, self.per_query = int(limit), int(per_query)
        self._used: LRUCache[str, int] = LRUCache(maxsize=self.MAX_KEYS)
        self._lock = threading.Lock()

    def spend(self, key_id: str, n: int) -> None:
        if 0 < self.per_query < n:
            raise RequestError(f"a query of {n} samples is refused: this service takes at most {self.per_query} "
                               "per query (max_samples_per_query); send encryption.batch_size="
                               f"{self.per_query} or fewer")
        if self.limit <= 0:
            return
        with self._lock:
            used = self._used.get(key_id, 0)
            if used + n > self.limit:
                raise RequestError(f"key {key_id} has used {used} of its {self.limit} queries on this service "
                                   f"(max_queries_per_key); a query of {n} more is refused", 429)
            self._used[key_id] = used + n

    def refund(self, key_id: str, n: int) -> None:
        if self.limit > 0:
            with self._lock:
                self._used[key_id] = max(0, self._used.get(key_id, 0) - n)


class FastMLPScheme(_FastKeyedScheme):
    """``encryption=fast`` for a ReLU (or identity) MLP: :mod:`fastmlp`'s interactive rounds.

    Every round is one binary request, the body a ``fastmlp`` round message; the answer a
    ``fastmlp`` round answer, binary, carrying the sealed round token for the next round (its
    secrets: the query's permutation and scaling seed). Nothing is kept between rounds but the
    spent tokens (replay refusal, per worker): any worker holding :data:`TOKEN_SECRET_ENV`
    serves any round. A bad round (tampered, expired, replayed, out of order, wrong size) is a
    400; a key over ``max_queries_per_key`` a 429.
    """

    def __init__(self, layers: list, activation: str, fetcher: KeyFetcher, secret: bytes | None = None,
                 max_queries_per_key: int | None = None, token_ttl: float | None = None,
                 max_samples_per_query: int | None = None, x_bound: float | None = None,
                 max_error: float | None = None) -> None:
        from aideploy_scoring import fastmlp

        self._fm = fastmlp
        self.layers, self.activation = layers, activation
        self._secret = secret if secret is not None else token_secret_from_environment()
        if max_queries_per_key is None:
            max_queries_per_key = int(os.environ.get(MAX_QUERIES_ENV, "0") or 0)
        if max_samples_per_query is None:  # unset: one sample per query (every sample its own secrets)
            max_samples_per_query = int(os.environ.get(MAX_SAMPLES_ENV) or 1)
        self.budget = QueryBudget(max_queries_per_key, max_samples_per_query)
        self.token_ttl = token_ttl if token_ttl is not None else float(os.environ.get(TOKEN_TTL_ENV) or 300.0)
        x_bound = x_bound if x_bound is not None else _positive_from_environment(X_BOUND_ENV, 1.0)
        max_error = max_error if max_error is not None else _positive_from_environment(MAX_ERROR_ENV, 1e-3)
        try:
            self.params = fastmlp.choose_params(layers, activation, x_bound, max_error,
                                                min_samples=max(1, max_samples_per_query))
            server = fastmlp.MLPServer(layers, activation, self.params, secret=self._secret, token_ttl=self.token_ttl)
        except fastmlp.FastSchemeError as exc:
            raise RequestError(f"encryption=fast cannot serve this MLP for x_bound={x_bound:g}, "
                               f"max_error={max_error:g}: {exc}") from None
        super().__init__(fetcher, server)

    def describe(self) -> dict[str, Any]:
        sizes = self.server.sizes
        return {"n_features": sizes[0], "n_outputs": sizes[-1], **super().describe(),
                "mlp": {"sizes": sizes, "activation": self.activation}}

    def warm_up(self) -> None:
        """Run one query through every round (compiles the kernels, or loads them)."""
        import numpy as np

        # the rounds run on a throwaway server: its tokens may not expire mid-warm-up, nor be spent here
        server = self._fm.MLPServer(self.layers, self.activation, self.params, secret=os.urandom(32),
                                    token_ttl=3600.0)
        client = self._fm.MLPClient(server.sizes, self.activation, self.params)
        public = server.load_public(client.public_bundle())
        for n in sorted({1, min(4, server.max_samples)}):
            client.predict(np.zeros((n, server.sizes[0])), lambda message: server.score(message, public))

    def score_binary(self, payload: dict, message: bytes) -> bytes:
        server, public = fetch_keys(self.fetcher, payload, self._load)
        head = self._fm.peek(message)
        first = head is not None and head[0] == 1
        if first:
            self.budget.spend(payload["key_id"], head[1])
        try:
            return server.score(message, public)
        except self._fm.FastSchemeError as exc:
            if first:
                self.budget.refund(payload["key_id"], head[1])
            raise RequestError(str(exc)) from None

    def score(self, payload: dict) -> Any:
        return score_as_json(self.score_binary, payload, "a base64 round message")
