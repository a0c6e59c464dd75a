"""The values stages hand to each other.

Each stage hook returns one of these; the runner keeps it on the :class:`RunContext` and
passes it, by argument name, to the hooks of later stages. ``summary()`` gives the few facts
the progress line shows; it must never include a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class Secret:
    """A string that never shows itself in ``repr``, ``str``, logs or results."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret itself: call this only where it is sent, never where it is shown."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass
class Dataset:
    """Samples to score, labels when the source has them, and (for training) a training split.

    Small data sets live in memory (``X_test``: an array, or a DataFrame of named, typed
    columns). A file's rows may instead come as ``rows``, a :class:`aideploy.datafiles.RowSource`
    read a chunk at a time, so a million-row file is never in memory at once; ``X_test`` is then
    None. :meth:`chunks` reads either way.

    ``schema`` is what the model takes (:class:`aideploy_scoring.schema.Schema`), set once the
    model stage (or the service's description) knows it: chunks of a file are then read in its
    column types, as a DataFrame for a model that takes named columns. ``first_row``: a chunk's
    first row in the whole data (0-based, as messages number rows).
    """

    name: str
    X_test: Any = None
    y_test: np.ndarray | None = None  # None: no labels (nothing to compute accuracy against)
    X_train: Any = None
    y_train: np.ndarray | None = None
    rows: Any = field(default=None, repr=False)
    feature_names: list[str] | None = None
    schema: Any = field(default=None, repr=False)
    first_row: int = 0

    def __post_init__(self) -> None:
        if self.X_test is None and self.rows is None:
            raise ValueError("a Dataset needs X_test or rows")

    @property
    def n_samples(self) -> int:
        return int(self.rows.n_rows if self.rows is not None else len(self.X_test))

    @property
    def n_features(self) -> int:
        return int(self.rows.n_features if self.rows is not None else self.X_test.shape[1])

    @property
    def has_labels(self) -> bool:
        return bool(self.rows.has_labels) if self.rows is not None else self.y_test is not None

    def sample(self, rows: int = 1000) -> Any:
        """The first ``rows`` samples as the source types them (a DataFrame for a table), for
        typing a schema's columns; None when there is nothing to look at."""
        if self.rows is not None:
            return self.rows.sample(rows)
        return self.X_test[:rows]

    def chunks(self, size: int, start: int = 0) -> Iterator["Dataset"]:
        """The samples from ``start`` on as in-memory Datasets of at most ``size`` rows each."""
        if self.rows is not None:
            first = start
            for X, y in self.rows.chunks(size, start, self.schema):
                yield Dataset(self.name, X, y, feature_names=self.feature_names, schema=self.schema, first_row=first)
                first += len(X)
            return
        for first in range(start, len(self.X_test), size):
            y = self.y_test[first:first + size] if self.y_test is not None else None
            yield Dataset(self.name, self.X_test[first:first + size], y, feature_names=self.feature_names,
                          schema=self.schema, first_row=first)

    def summary(self) -> dict[str, Any]:
        return {"data": self.name, "test_samples": self.n_samples, "features": self.n_features,
                "labels": "yes" if self.has_labels else "none"}


@dataclass
class RegisteredModel:
    """A model version in a registry: where its files are, and the model loaded in process.

    ``adapter`` is an :class:`aideploy_scoring.models.ModelAdapter`, loaded by the same code the
    service runs, so what aideploy checks and evaluates in process is what the service serves.
    """

    name: str
    version: int
    path: Path  # the version's directory: what is deployed
    payload: str  # the model file or directory inside ``path``
    kind: str  # a key of aideploy_scoring.models.KINDS
    adapter: Any = field(repr=False)
    pending: Any = field(default=None, repr=False)  # aideploy.registry.Pending until registered

    def commit(self) -> None:
        """Register a staged version (the runner does, once every check at the model stage passed)."""
        if self.pending is not None:
            version = self.pending.commit()
            self.version, self.path = version.version, version.path
            self.pending = None

    @property
    def file(self) -> Path:
        return self.path / self.payload

    @property
    def n_features(self) -> int | None:
        return self.adapter.n_features

    @property
    def task(self) -> str | None:
        return self.adapter.task

    @property
    def classes(self) -> list | None:
        return self.adapter.classes

    @property
    def schema(self) -> Any:
        """What the model takes (:class:`aideploy_scoring.schema.Schema`), or None if nothing says."""
        return self.adapter.schema

    def summary(self) -> dict[str, Any]:
        return {"model": f"{self.name}:{self.version}", "kind": self.kind, "type": self.adapter.summary,
                "features": self.n_features, "task": self.task,
                "classes": len(self.classes) if self.classes is not None else None}


@dataclass
class ScoringCode:
    """The service's code as every target ships it: a source directory and its entry script."""

    source_dir: Path
    entry_script: str  # relative to ``source_dir``, with '/'
    builtin: bool  # aideploy's own score.py (plain and encrypted requests, key auth)
    # The service's settings the config determines (``aideploy.service_env``), as environment
    # variables every target forwards; never a secret.
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def entry(self) -> Path:
        return self.source_dir / self.entry_script

    def summary(self) -> dict[str, Any]:
        return {"scoring": "builtin" if self.builtin else "custom", "entry_script": self.entry_script}


@dataclass
class EnvironmentSpec:
    """The scoring environment: a conda spec file and the pip requirements in it."""

    name: str
    conda_file: Path
    python: str
    pip: list[str]  # needed wherever the service runs
    azure_pip: list[str] = field(default_factory=list)  # needed only in an Azure image
    python_exe: Path | None = None  # the isolated environment's interpreter; None: aideploy's own
    built: str | None = None  # "built" or "reused" for an isolated environment
    # encryption=fast's compiled kernels for the service (aideploy.kernels.for_environment): the
    # path its workers take ("aot" or "jit") and why; None for a scheme without kernels
    kernels: dict[str, Any] | None = None

    def summary(self) -> dict[str, Any]:
        from aideploy.kernels import summary

        where = f"{self.python_exe.parent.parent.name} ({self.built})" if self.python_exe else "this interpreter"
        kernels = summary(self.kernels)
        return {"environment": self.name, "spec": str(self.conda_file), "packages": len(self.pip), "serves_from": where,
                **({"kernels": kernels} if kernels else {})}


@dataclass
class NetworkInfo:
    """Where the service listens and how clients reach it.

    ``run_client`` runs a callable where the clients of the service live: in the caller's own
    network for a public endpoint, inside the private network for a VNET.
    """

    kind: str
    bind_host: str
    client_host: str
    run_client: Any = None
    argv_prefix: list[str] = field(default_factory=list)  # runs a command where the service lives
    store_host: str = "127.0.0.1"  # where a key store started by aideploy listens
    store_argv_prefix: list[str] = field(default_factory=list)  # runs a command where the store lives
    details: dict[str, Any] = field(default_factory=dict)

    def call(self, fn, *args, **kwargs):
        """Call ``fn`` from the clients' side of this network."""
        if self.run_client is None:
            return fn(*args, **kwargs)
        return self.run_client(fn, *args, **kwargs)

    def summary(self) -> dict[str, Any]:
        return {"network": self.kind, "host": self.client_host, **self.details}


@dataclass
class Endpoint:
    """A deployed scoring service."""

    name: str
    target: str
    scoring_uri: str
    auth_key: Secret | None = None
    keep_alive: bool = False  # True when the service lives only as long as this process
    alive: Any = field(default=None, repr=False)  # callable: is the service still up?
    details: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.auth_key:
            headers["Authorization"] = f"Bearer {self.auth_key.reveal()}"
        return headers

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "scoring_uri": self.scoring_uri, **self.details}


@dataclass
class Request:
    """One scoring request: the JSON body and how many samples it carries."""

    body: bytes
    n_samples: int
    headers: dict[str, str] = field(default_factory=dict)  # beyond the endpoint's own


@dataclass
class Response:
    """One scoring response with what it cost."""

    body: bytes
    latency_ms: float
    request_bytes: int
    response_bytes: int | None = None  # None: len(body); more when the answer took several rounds


@dataclass
class Requests:
    """The encrypted (or plain) queries for the test set, in order."""

    items: list[Request]

    def summary(self) -> dict[str, Any]:
        sizes = [len(r.body) for r in self.items]
        return {"requests": len(self.items), "median_bytes": int(np.median(sizes)) if sizes else 0}


@dataclass
class Responses:
    """The service's answers, one per request, in order."""

    items: list[Response]

    def summary(self) -> dict[str, Any]:
        lat = [r.latency_ms for r in self.items]
        return {"responses": len(self.items), "p50_ms": round(float(np.median(lat)), 2) if lat else None}


@dataclass
class Scores:
    """What the service's answers say, decrypted where they were encrypted, in sample order.

    Each field is None when the answers do not carry it. ``values`` are decision scores
    (n_samples, n_outputs), one column for binary classifiers and regressors: what the
    encrypted schemes return. ``predictions`` are labels or regression values as the service
    chose them; ``probabilities`` are per class. ``answers`` keeps answers in a shape aideploy
    does not know (a custom scoring script's), so nothing is lost.
    """

    values: np.ndarray | None = None
    predictions: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    answers: list | None = None

    def summary(self) -> dict[str, Any]:
        shown = {name: list(getattr(self, name).shape) for name in ("values", "predictions", "probabilities")
                 if getattr(self, name) is not None}
        return shown or {"answers": len(self.answers or [])}


@dataclass
class KeySession:
    """The client's keys for one run: ``client`` holds the secret and never leaves the process.

    ``public`` is whatever the encryption scheme needs on the wire to name the public keys
    (for the built-in schemes, ``{"key_id": ..., "key_url": <read-only SAS URL>}``).
    ``register``: aideploy's service (protocol 2) is sent ``public`` once before the queries
    (:func:`aideploy.client.register_keys`), so that it fetches the keys then.
    """

    scheme: str
    key_id: str
    key_bytes: int
    client: Any = field(repr=False)
    public: dict[str, Any] = field(default_factory=dict, repr=False)
    register: bool = False

    def summary(self) -> dict[str, Any]:
        return {"scheme": self.scheme, "key_id": self.key_id, "key_bytes": self.key_bytes}


@dataclass
class Traffic:
    """What a run's requests cost, one entry per request in order; no bodies are kept."""

    samples: list[int] = field(default_factory=list)
    request_bytes: list[int] = field(default_factory=list)
    response_bytes: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    unread_answers: list[str] = field(default_factory=list)  # a few answers aideploy could not read

    def add(self, requests: Requests, responses: Responses) -> None:
        for request, response in zip(requests.items, responses.items):
            self.samples.append(request.n_samples)
            self.request_bytes.append(response.request_bytes)
            self.response_bytes.append(len(response.body) if response.response_bytes is None
                                       else response.response_bytes)
            self.latency_ms.append(response.latency_ms)

    def summary(self) -> dict[str, Any]:
        lat = self.latency_ms
        return {"requests": len(lat), "samples": sum(self.samples),
                "median_bytes": int(np.median(self.request_bytes)) if lat else 0,
                "p50_ms": round(float(np.median(lat)), 2) if lat else None}


@dataclass
class ServiceInfo:
    """What a service says about itself (``GET /score``): enough to predict without the model."""

    n_features: int | None = None
    task: str | None = None
    classes: list | None = None
    feature_names: list[str] | None = None
    schemes: list[str] = field(default_factory=lambda: ["none"])
    fast: dict[str, Any] | None = None  # the fast scheme's n_features, n_outputs and public params
    model_summary: str = ""
    protocol: int = 1  # of the service's request formats (2: key registration)
    schema: Any = None  # what the model takes (aideploy_scoring.schema.Schema), where the service says
    preprocess: dict[str, Any] | None = None  # the encrypted schemes' client part (aideploy.linear.ClientPart)
    keystore: str | None = None  # the blob service the service fetches public keys from (and no other)

    @classmethod
    def from_json(cls, info: dict[str, Any]) -> "ServiceInfo":
        from aideploy_scoring.schema import Schema

        model = info.get("model") or {}
        schema = Schema.from_json(info["input"]) if isinstance(info.get("input"), dict) else None
        store = info.get("keystore") if isinstance(info.get("keystore"), dict) else {}
        return cls(model.get("n_features"), model.get("task"), model.get("classes"), model.get("feature_names"),
                   list(info.get("schemes") or ["none"]), info.get("fast"), str(model.get("summary") or ""),
                   int(info.get("protocol") or 1), schema, info.get("preprocess"), store.get("url"))

    def summary(self) -> dict[str, Any]:
        return {"service_model": self.model_summary, "features": self.n_features, "task": self.task,
                "schemes": ",".join(self.schemes)}
