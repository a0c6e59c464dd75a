"""A local model registry: a directory of numbered versions, like ``Model.register``."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

MODEL_FILE = "model.pkl"
META_FILE = "aideploy-model.json"


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    path: Path
    sha256: str


class LocalRegistry:
    """``<root>/<name>/<version>/model.pkl`` plus a metadata file per version.

    Registering the same bytes again returns the existing version instead of a new one, so
    repeated runs of the same training do not grow the registry.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and (p / META_FILE).exists())

    def register(self, name: str, model_file: Path, tags: dict | None = None) -> Version:
        """Register ``model_file`` under ``name``; returns the new (or identical existing) version."""
        digest = hashlib.sha256(Path(model_file).read_bytes()).hexdigest()
        for version in reversed(self.versions(name)):
            meta = json.loads((self.root / name / str(version) / META_FILE).read_text())
            if meta["sha256"] == digest:
                return Version(name, version, self.root / name / str(version), digest)
        version = (self.versions(name) or [0])[-1] + 1
        final = self.root / name / str(version)
        staging = self.root / name / f".{version}.{time.time_ns()}"
        staging.mkdir(parents=True)
        shutil.copyfile(model_file, staging / MODEL_FILE)
        meta = {"name": name, "version": version, "sha256": digest, "tags": tags or {},
                "registered": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        try:
            staging.rename(final)  # atomic: a concurrent run either sees the version or not
        except OSError:  # another run registered this number first
            shutil.rmtree(staging, ignore_errors=True)
            return self.register(name, model_file, tags)
        return Version(name, version, final, digest)
