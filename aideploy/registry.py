"""A local model registry: a directory of numbered versions, like ``Model.register``.

A version holds the model as it was given (a file, or a directory such as an MLflow model)
under its own name, plus ``aideploy-model.json`` recording its kind and ``aideploy-schema.json``
recording what it takes (:mod:`aideploy.schemas`). The service reads both, so the whole version
directory is what gets deployed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from aideploy_scoring.models import META_FILE
from aideploy_scoring.schema import Schema


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    path: Path  # the version's directory
    payload: str  # the model file or directory inside ``path``
    kind: str
    sha256: str


def content_digest(payload: Path) -> str:
    """SHA-256 of a file, or of a directory's relative paths and file contents."""
    digest = hashlib.sha256()
    files = [payload] if payload.is_file() else sorted(p for p in payload.rglob("*") if p.is_file())
    for file in files:
        digest.update(str(file.relative_to(payload.parent)).encode() + b"\0")
        with file.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


class LocalRegistry:
    """``<root>/<name>/<version>/<model file or dir>`` plus a metadata file per version.

    Registering the same content again returns the existing version instead of a new one, so
    repeated runs of the same training do not grow the registry.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / META_FILE).exists())

    def _existing(self, name: str, digest: str, kind: str, schema: Schema | None) -> Version | None:
        for version in reversed(self.versions(name)):
            folder = self.root / name / str(version)
            meta = json.loads((folder / META_FILE).read_text())
            if meta["sha256"] == digest and meta.get("kind") == kind and Schema.load(folder) == schema:
                return Version(name, version, folder, meta["path"], kind, digest)
        return None

    def stage(self, name: str, payload: Path, kind: str, tags: dict | None = None,
              schema: Schema | None = None) -> "Pending":
        """Copy ``payload`` (a file or directory) with its records into a staging directory, to be
        registered by :meth:`Pending.commit` once the run has checked it, or removed by
        :meth:`Pending.discard`: a model refused at the model stage never becomes a version."""
        payload = Path(payload)
        digest = content_digest(payload)
        existing = self._existing(name, digest, kind, schema)
        if existing:
            return Pending(self, existing, None)
        staging = self.root / name / f".staging.{time.time_ns()}"
        staging.mkdir(parents=True)
        try:
            if payload.is_dir():
                shutil.copytree(payload, staging / payload.name)
            else:
                shutil.copyfile(payload, staging / payload.name)
            meta = {"name": name, "kind": kind, "path": payload.name, "sha256": digest, "tags": tags or {}}
            (staging / META_FILE).write_text(json.dumps(meta, indent=2))
            if schema is not None:
                schema.save(staging)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        version = (self.versions(name) or [0])[-1] + 1
        return Pending(self, Version(name, version, self.root / name / str(version), payload.name, kind, digest),
                       staging)

    def register(self, name: str, payload: Path, kind: str, tags: dict | None = None,
                 schema: Schema | None = None) -> Version:
        """Register ``payload`` as ``kind`` with its ``schema`` at once; the new version, or the
        existing one with the same content and schema."""
        return self.stage(name, payload, kind, tags, schema).commit()


class Pending:
    """A model version staged for registration: :attr:`version` is the one it gets (an identical
    one already there, or the next number), until :meth:`commit` makes it so."""

    def __init__(self, registry: LocalRegistry, version: Version, staging: Path | None) -> None:
        self.registry, self.version, self.staging = registry, version, staging

    def commit(self) -> Version:
        """Register the staged version (a rename: a concurrent run sees it whole or not at all)."""
        if self.staging is None:
            return self.version
        name = self.version.name
        meta_path = self.staging / META_FILE
        while True:
            number = (self.registry.versions(name) or [0])[-1] + 1
            meta = json.loads(meta_path.read_text())
            meta.update(version=number, registered=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            meta_path.write_text(json.dumps(meta, indent=2))
            final = self.registry.root / name / str(number)
            try:
                self.staging.rename(final)
                break
            except OSError:
                if not final.exists():
                    raise  # not a race with another run's registration
        self.staging = None
        self.version = Version(name, number, final, self.version.payload, self.version.kind, self.version.sha256)
        return self.version

    def discard(self) -> None:
        """Remove what was staged (nothing was registered)."""
        if self.staging is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None


KIND_NAMES = {"sklearn": "scikit-learn", "onnx": "ONNX", "mlflow": "MLflow"}
OPTION_OF_KIND = {"sklearn": "model=sklearn_pickle", "onnx": "model=onnx", "mlflow": "model=mlflow"}
"""The ``model`` option that registers each kind, for hints."""


def register_model(ctx, name: str, payload: Path, kind: str, tags: dict | None = None):
    """Load ``payload`` as ``kind`` (as the service will), capture its schema (the model's own,
    typed by the run's data) and stage both for registration; a RegisteredModel, which the runner
    registers (:meth:`~aideploy.artifacts.RegisteredModel.commit`) once every check has passed.

    A file that does not load is refused before it is registered, with a hint naming the
    option that fits it when it looks like another kind.
    """
    from aideploy.artifacts import RegisteredModel
    from aideploy.errors import ConfigError
    from aideploy.resources import path_record
    from aideploy_scoring import models

    try:
        adapter = models.load(payload, kind)
    except models.ModelLoadError as exc:
        other = models.guess_kind(payload)
        hint = (f"it looks like a {KIND_NAMES[other]} model: use {OPTION_OF_KIND[other]}" if other and other != kind
                else f"{OPTION_OF_KIND[kind]} needs a valid {KIND_NAMES[kind]} model; is the file complete and from a "
                "compatible library version?")
        raise ConfigError(f"{OPTION_OF_KIND[kind]} cannot load {payload}: {exc}", hint=hint) from None
    from aideploy.schemas import capture

    adapter.use_schema(capture(adapter, ctx.artifacts.get("dataset")))
    pending = LocalRegistry(Path(ctx.cfg.home) / "models").stage(name, payload, kind, tags, adapter.schema)
    if pending.staging is not None:
        ctx.resources.add(f"staged model {name}", pending.discard, path_record(pending.staging))
    version = pending.version
    return RegisteredModel(name, version.version, version.path, version.payload, kind, adapter, pending=pending)


def model_path(cfg, what: str, directory: bool = False) -> Path:
    """``cfg.path`` as an existing file (or directory), else a ConfigError saying what to give."""
    from aideploy.errors import ConfigError

    path = Path(cfg.path).expanduser()
    kind = "directory" if directory else "file"
    if not path.exists():
        raise ConfigError(f"model {kind} not found: {path} (model.path)", hint=f"give {what}")
    if path.is_dir() != directory:
        raise ConfigError(f"model.path {path} is not a {kind}", hint=f"give {what}")
    return path
