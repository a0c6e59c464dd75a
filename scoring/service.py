"""Request handling for the scoring service, independent of the HTTP server around it."""

from __future__ import annotations

import hmac
import hashlib
import json
import logging
from typing import Any, BinaryIO, Callable

import numpy as np

from aideploy_scoring import settings
from aideploy_scoring.models import ModelAdapter, NotLinear
from aideploy_scoring.schema import InputError, rows_of

log = logging.getLogger("aideploy.scoring")

DEFAULT_MAX_REQUEST_BYTES = settings.SETTINGS["AIDEPLOY_MAX_REQUEST_BYTES"].default
#: Schemes ``init()`` builds and runs once, comma-separated (``target=local`` sets it from the
#: deployment's ``encryption``); unset: every scheme whose runtime the environment has.
PREPARE_ENV = "AIDEPLOY_PREPARE_SCHEMES"
BINARY_TYPE = "application/octet-stream"
SCHEME_HEADER = "X-Aideploy-Scheme"
KEY_HEADERS = {"key_id": "X-Aideploy-Key-Id", "key_url": "X-Aideploy-Key-Url"}


# Of the plain and encrypted request formats and of GET /score. 2: key registration
# ({"scheme", "register_key": true, "key_id", "key_url"}), which clients send only to 2 or later.
PROTOCOL_VERSION = 2


def _jsonable(values: Any) -> Any:
    """Class labels as JSON values (numpy ints and strings to Python's)."""
    return None if values is None else np.asarray(values).tolist()


class RequestError(ValueError):
    """A request the service refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class LinearModel:
    """A model that is one affine map: weights (n_outputs, n_features) and intercepts (n_outputs,).

    What the encrypted schemes compute under encryption. The scores are the decision
    function of a classifier (one column for a binary one) or the prediction of a regressor.
    """

    def __init__(self, coef: np.ndarray, intercept: np.ndarray | float = 0.0) -> None:
        coef = np.asarray(coef, dtype=np.float64)
        self.coef = coef.reshape(1, -1) if coef.ndim == 1 else coef
        self.intercept = np.broadcast_to(np.asarray(intercept, dtype=np.float64).reshape(-1),
                                         (self.coef.shape[0],)).copy()

    @classmethod
    def of(cls, model: ModelAdapter) -> "LinearModel":
        """The adapter's model as one affine map, or :class:`NotLinear`."""
        return cls(*model.linear())

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    @property
    def n_outputs(self) -> int:
        return int(self.coef.shape[0])

    def scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef.T + self.intercept


def require(payload: dict, field: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``payload[field]`` if present and of ``kind``, else a 400 naming the field."""
    if field not in payload:
        raise RequestError(f"missing field {field!r} ({what})")
    value = payload[field]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise RequestError(f"field {field!r} must be {what}, got {type(value).__name__}")
    return value


class PlainScheme:
    """Rows in clear, in any of :mod:`.schema`'s wire forms -> ``{"predictions": [...], ...}``
    (see :mod:`.models`)."""

    name = "none"

    def __init__(self, model: ModelAdapter) -> None:
        self.model = model

    def warm_up(self) -> None:
        """Score the schema's example row and encode the answer, from ``init()``: a fresh worker's
        first call into the model pays for its lazy set-up (~4 ms for a scikit-learn pipeline,
        against ~1.5 ms per request after), and no request should. A model that refuses the
        example is left to its first request."""
        if self.model.schema is None:
            return
        try:
            json.dumps(self.model.predict_rows(None, [self.model.schema.example_row()]).to_json())
        except Exception as exc:  # noqa: BLE001 - a warm-up, not a check of the model
            log.info("the plain scheme's warm-up call failed (%s): the first request pays the model's set-up", exc)

    def score(self, payload: dict) -> Any:
        try:
            columns, rows = rows_of(payload)
            return self.model.predict_rows(columns, rows).to_json()
        except InputError as exc:
            raise RequestError(str(exc)) from None


class ScoringService:
    """Parses, checks and dispatches requests to the scheme they ask for."""

    def __init__(self, model: ModelAdapter, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 auth_key_sha256: str | None = None) -> None:
        self.model = model
        self.max_request_bytes = max_request_bytes
        self.auth_key_sha256 = auth_key_sha256
        self._factories: dict[str, Callable[[ModelAdapter], Any]] = {"none": PlainScheme}
        self._schemes: dict[str, Any] = {}
        self._fetchers: dict[int | None, Any] = {}
        self._store = None
        self._preprocess: dict[str, Any] | None = None

    def key_fetcher(self, max_key_bytes: int | None = None):
        """The worker's key fetcher (and cache) for keys of at most ``max_key_bytes`` (a scheme's
        own cap; None: the service's), shared by the encrypted schemes with that cap."""
        if max_key_bytes not in self._fetchers:
            from aideploy_scoring.encrypted import key_fetcher_from_environment

            self._fetchers[max_key_bytes] = key_fetcher_from_environment(max_key_bytes)
        return self._fetchers[max_key_bytes]

    def limits_store(self):
        """The deployment's limits store (:mod:`.limits`), opened once per worker and shared by the schemes."""
        if self._store is None:
            from aideploy_scoring.limits import open_store

            self._store = open_store()
        return self._store

    @staticmethod
    def linear(model: ModelAdapter) -> LinearModel:
        """The model as the encrypted schemes need it, or a 400 saying why it cannot be."""
        try:
            return LinearModel.of(model)
        except NotLinear as exc:
            raise RequestError(f"this service's model ({model.summary}) cannot be served encrypted: {exc}; "
                               "send plain requests ({\"data\": [[...]]})") from None

    @staticmethod
    def mlp_layers(model: ModelAdapter) -> tuple[list, str] | None:
        """``(layers, activation)`` of a scikit-learn MLP, the served part of the model (affine
        preprocessing folded in, the rest run by the client), None for any other model,
        :class:`NotLinear` for an MLP whose activation cannot be served."""
        from aideploy_scoring.linearize import fold_mlp, is_mlp

        try:
            _, served = model.encrypted_parts()
        except NotLinear:
            return None
        return fold_mlp(served) if served is not None and is_mlp(served) else None

    def mlp(self, model: ModelAdapter) -> tuple[list, str] | None:
        """:meth:`mlp_layers`, with a refused MLP as a 400 saying why."""
        try:
            return self.mlp_layers(model)
        except NotLinear as exc:
            raise RequestError(f"this service's model ({model.summary}) cannot be served encrypted: {exc}; "
                               "send plain requests ({\"data\": [[...]]})") from None

    def _register_encrypted_schemes(self) -> None:
        # Imported on first use, so a plain deployment needs none of the encryption runtimes.
        def seal(model):
            from aideploy_scoring.encrypted import SealScheme

            return SealScheme(self.linear(model), self.key_fetcher(), self.limits_store())

        self.add_scheme("seal", seal)

        def fast(model):
            from aideploy_scoring.encrypted import X_BOUND_ENV, FastMLPScheme, FastScheme
            from aideploy_scoring.fastlinear import MAX_KEY_BYTES
            from aideploy_scoring.inputranges import for_model

            mlp = self.mlp(model)
            linear = self.linear(model) if mlp is None else None
            n_features = linear.n_features if linear is not None else mlp[0][0][0].shape[1]
            try:
                ranges = for_model(model, n_features, settings.get(X_BOUND_ENV))
            except ValueError as exc:
                raise RequestError(f"this service's model cannot be served encrypted: {exc}") from None
            if mlp is not None:
                return FastMLPScheme(*mlp, self.key_fetcher(MAX_KEY_BYTES), store=self.limits_store(), ranges=ranges)
            return FastScheme(linear, self.key_fetcher(MAX_KEY_BYTES), self.limits_store(), ranges=ranges)

        self.add_scheme("fast", fast)

    @classmethod
    def from_environment(cls) -> "ScoringService":
        """Build from ``AZUREML_MODEL_DIR`` and the ``AIDEPLOY_*`` settings (:mod:`.settings`), as
        ``init()`` does."""
        from aideploy_scoring.models import load_dir

        model_dir = settings.get("AZUREML_MODEL_DIR")
        if model_dir is None:
            raise settings.SettingsError("AZUREML_MODEL_DIR is not set: the server gives the model's directory")
        model = load_dir(model_dir)
        service = cls(model, settings.get("AIDEPLOY_MAX_REQUEST_BYTES"), settings.get("AIDEPLOY_AUTH_KEY_SHA256"))
        if settings.get("AIDEPLOY_KEY_STORE") or settings.get("AIDEPLOY_KEY_HOSTS"):
            service._register_encrypted_schemes()  # they need the clients' keys: a store to fetch them from
        else:
            log.info("no key store (AIDEPLOY_KEY_STORE): this service takes plain requests only")
        log.info("loaded a %s model: %s, %s features, task %s", model.kind, model.summary, model.n_features,
                 model.task)
        names = settings.get(PREPARE_ENV)
        service.prepare(names if names is not None else list(service._factories), required=names is not None)
        return service

    def prepare(self, names: list[str], required: bool = True) -> None:
        """Build schemes ``names`` now and run each once (``warm_up()``), so no request pays for it.

        A scheme that cannot serve this model, or whose runtime is missing, is skipped with a
        log line when not ``required``; when required, ``init()`` fails and says why.
        """
        for name in names:
            try:
                scheme = self.scheme(name)
                warm_up = getattr(scheme, "warm_up", None)
                if warm_up is not None:
                    warm_up()
            except Exception as exc:  # noqa: BLE001 - a scheme that cannot serve is reported, not fatal
                if required:
                    raise RuntimeError(f"scheme {name!r} could not be prepared: {exc}") from exc
                log.info("scheme %s not prepared: %s", name, exc)
            else:
                log.info("scheme %s prepared", name)

    def add_scheme(self, name: str, factory: Callable[[ModelAdapter], Any]) -> None:
        """Make scheme ``name`` available; ``factory(model)`` builds it on first use."""
        self._factories[name] = factory

    def scheme(self, name: str) -> Any:
        if name not in self._factories:
            raise RequestError(f"unknown scheme {name!r}; this service offers {sorted(self._factories)}")
        if name not in self._schemes:
            try:
                self._schemes[name] = self._factories[name](self.model)
            except ImportError as exc:  # the deployment's environment has no runtime for it
                raise RequestError(f"scheme {name!r} is not installed in this service ({exc}); "
                                   f"deploy with encryption={name} to serve it") from None
        return self._schemes[name]

    def handle_http(self, method: str, headers, stream: BinaryIO, content_length: int | None) -> tuple[int, Any]:
        """One HTTP request to (status, JSON-able body). Never raises.

        ``GET`` answers :meth:`describe` (query arguments are ignored); ``POST`` scores.
        """
        try:
            if method == "GET":
                self._authorize(headers)
                return 200, self.describe()
            if method != "POST":
                raise RequestError(f"use POST with a JSON body (or GET for what this service serves), not {method}",
                                   405)
            self._authorize(headers)
            if content_length is not None and content_length > self.max_request_bytes:
                raise RequestError(f"request body of {content_length} bytes is over the limit of "
                                   f"{self.max_request_bytes}", 413)
            body = stream.read(self.max_request_bytes + 1)
            if len(body) > self.max_request_bytes:
                raise RequestError(f"request body is over the limit of {self.max_request_bytes} bytes", 413)
            if headers.get("Content-Type", "").startswith(BINARY_TYPE):
                return 200, self.handle_binary(headers, body)
            return 200, self.handle(body)
        except RequestError as exc:
            return exc.status, {"error": str(exc)}
        except Exception:  # a bug or a broken runtime: say so without leaking internals
            log.exception("internal error while scoring")
            return 500, {"error": "internal error; see the service log"}

    def describe(self) -> dict[str, Any]:
        """What a client needs to know without the model: ``GET /score``.

        The features the model takes, its task and classes, its input schema, the schemes this
        service serves, its key store (where a client's public keys must be) and limits and, for
        the fast scheme, the parameters the service chose at start-up from its model, its input
        ranges and its configured ``max_error`` (every client must use them), the input ranges
        (``fast.input_ranges``: each feature's, which the client maps its inputs by), with the
        caps and guarantees that come with them and, for an MLP, its layer sizes and activation
        (``fast.mlp``), which its rounds reveal anyway. The parameters' scales tell the order of
        magnitude of the model's weights and nothing finer; the input ranges tell the ranges of
        the data the version was registered with and of its preprocessing's statistics, not the
        weights (:mod:`.inputranges`); everything else here is what the plain protocol's answers
        reveal anyway. If the fast scheme cannot serve this model, ``fast`` says why
        (``{"error": ...}``) and ``schemes`` leaves it out.
        """
        model = self.model
        info: dict[str, Any] = {
            "service": "aideploy", "protocol": PROTOCOL_VERSION,
            "model": {"kind": model.kind, "summary": model.summary, "task": model.task,
                      "n_features": model.n_features, "feature_names": model.feature_names,
                      "classes": _jsonable(model.classes)},
            "schemes": self.schemes_served(),
            # where the client must put its public keys: the only store this service fetches from
            "keystore": {"url": settings.get("AIDEPLOY_KEY_STORE")},
            "limits": {"max_queries_per_key": settings.get("AIDEPLOY_MAX_QUERIES_PER_KEY"),
                       "max_samples_per_query": settings.get("AIDEPLOY_MLP_MAX_SAMPLES_PER_QUERY"),
                       "max_new_keys_per_hour": settings.get("AIDEPLOY_MAX_NEW_KEYS_PER_HOUR")},
        }
        if model.schema is not None:
            info["input"] = model.schema.describe()
        if len(info["schemes"]) > 1 and self._client_part() is not None:
            info["preprocess"] = self._client_part()
        if "fast" in info["schemes"]:
            try:
                info["fast"] = self.scheme("fast").describe()
            except RequestError as exc:
                info["fast"] = {"error": str(exc)}
                info["schemes"].remove("fast")
        return info

    def _client_part(self) -> dict[str, Any] | None:
        """The model's client part (:func:`.linearize.split`) as the encrypted schemes' clients need it:
        a skops file of its scikit-learn transformers (a format that loads without running code).
        Its parameters (an encoder's categories, an imputer's fill values, a scaler's means) are
        revealed to every client: the README says so."""
        if self._preprocess is None:
            try:
                client, _ = self.model.encrypted_parts()
            except NotLinear:
                client = None
            if client is None:
                self._preprocess = {}
            else:
                import base64
                import zipfile

                import skops.io

                data = skops.io.dumps(client, compression=zipfile.ZIP_DEFLATED)
                self._preprocess = {"format": "skops", "data": base64.b64encode(data).decode()}
        return self._preprocess or None

    def schemes_served(self) -> list[str]:
        """``none`` always; the encrypted schemes whose runtime is installed, for a linear model."""
        import importlib.util

        served = ["none"]
        try:
            self.model.linear()
            runtimes = {"fast": "seal", "seal": "encrypted.inference"}
        except NotLinear:
            try:
                if self.mlp_layers(self.model) is None:
                    return served
            except NotLinear:
                return served
            runtimes = {"fast": "seal"}  # an MLP: only the fast scheme runs its rounds
        for name, module in runtimes.items():
            try:
                present = importlib.util.find_spec(module) is not None
            except ModuleNotFoundError:
                present = False
            if name in self._factories and present:
                served.append(name)
        return served

    def _authorize(self, headers) -> None:
        if self.auth_key_sha256 is None:
            return
        given = headers.get("Authorization", "")
        token = given[7:] if given.startswith("Bearer ") else ""
        digest = hashlib.sha256(token.encode()).hexdigest()
        if not token or not hmac.compare_digest(digest, self.auth_key_sha256):
            raise RequestError("missing or wrong key: send 'Authorization: Bearer <key>'", 401)

    def handle_binary(self, headers, body: bytes) -> bytes:
        """A binary request: the query is the body, the rest comes in ``X-Aideploy-*`` headers.

        Schemes with large ciphertexts use it to save base64's third; the answer is binary too.
        """
        name = headers.get(SCHEME_HEADER)
        if not name:
            raise RequestError(f"a binary request needs the {SCHEME_HEADER} header")
        scheme = self.scheme(name)
        if not hasattr(scheme, "score_binary"):
            raise RequestError(f"scheme {name!r} takes JSON bodies, not {BINARY_TYPE}")
        fields = {field: headers.get(header) for field, header in KEY_HEADERS.items() if headers.get(header)}
        return scheme.score_binary(fields, body)

    def handle(self, body: bytes) -> Any:
        """A request body to the JSON-able answer, or :class:`RequestError`."""
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(f"body is not valid JSON: {exc}") from None
        if not isinstance(payload, dict):
            raise RequestError(f"body must be a JSON object, got {type(payload).__name__}")
        name = payload.get("scheme")
        if name is None:  # seed-era clients send no scheme: key fields mean encrypted-inference
            name = "seal" if "key_id" in payload else "none"
        if not isinstance(name, str):
            raise RequestError("field 'scheme' must be a string")
        scheme = self.scheme(name)
        if payload.get("register_key") is True:
            if not hasattr(scheme, "register_key"):
                raise RequestError(f"scheme {name!r} takes no keys to register")
            return scheme.register_key(payload)
        return scheme.score(payload)
