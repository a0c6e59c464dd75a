"""The scoring environment's spec: one resolved list of packages, written as a conda yml.

The same resolved spec is what ``environment=conda`` builds locally (:mod:`aideploy.uvenv`)
and what the Azure targets send (``Environment.from_conda_specification`` / an azure-ai-ml
``Environment(conda_file=...)``), so a spec that misses a package fails here first.
Conda packages are translated to their PyPI names where the same package exists there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import yaml

from aideploy.artifacts import EnvironmentSpec
from aideploy.errors import ConfigError
from aideploy.model_requirements import merge

SPEC_FILE = "environment.yml"

# Conda-forge names whose PyPI package is named differently.
CONDA_TO_PYPI = {
    "py-xgboost": "xgboost", "pytorch": "torch", "pytorch-cpu": "torch", "tensorflow-base": "tensorflow",
    "matplotlib-base": "matplotlib", "pillow-simd": "pillow", "onnxruntime-cpu": "onnxruntime",
    "py-opencv": "opencv-python", "msgpack-python": "msgpack",
}
# Conda packages with no PyPI counterpart: native toolchains and libraries conda ships itself.
CONDA_ONLY = {"cudatoolkit", "cudnn", "mkl", "mkl-service", "blas", "libblas", "openblas", "libgcc", "libgcc-ng",
              "libstdcxx-ng", "gcc", "gxx", "nodejs", "r-base", "openjdk", "libopenblas", "intel-openmp", "cmake"}
# Part of every conda env, not packages to install.
CONDA_IMPLICIT = {"python", "pip"}

_CONDA_SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:([=<>!~]=?)\s*(\S+))?\s*$")


def pypi_requirement(conda_spec: str) -> str | None:
    """``numpy=1.26`` -> ``numpy==1.26.*``; None for python/pip; ValueError if it has no PyPI twin."""
    match = _CONDA_SPEC.match(conda_spec.split("::")[-1])
    if not match:
        raise ValueError(conda_spec)
    name, op, version = match.groups()
    name = name.lower()
    if name in CONDA_IMPLICIT:
        return None
    if name in CONDA_ONLY:
        raise ValueError(conda_spec)
    name = CONDA_TO_PYPI.get(name, name)
    if not op:
        return name
    if op == "=":  # conda's fuzzy pin: 1.26 means 1.26.*
        return f"{name}=={version}" if version.endswith("*") else f"{name}=={version}.*"
    return f"{name}{op}{version}"


def translate(conda: Iterable[str]) -> list[str]:
    """PyPI requirements for conda packages; a ConfigError listing every one that has none."""
    out, untranslatable = [], []
    for spec in conda:
        try:
            req = pypi_requirement(spec)
        except ValueError:
            untranslatable.append(spec)
            continue
        if req:
            out.append(req)
    if untranslatable:
        raise ConfigError(f"environment.conda has packages with no PyPI equivalent: {', '.join(untranslatable)}",
                          hint="drop them, or name their PyPI packages in environment.pip instead")
    return out


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def write_spec(cfg, ctx, requirements: list[str]) -> EnvironmentSpec:
    """Resolve the pip list (config, conda translated, ``environment.extra_pip``, the plugins'
    requirements with the model's pins) and write environment.yml. A pin tightens a looser line
    for the same package; one that contradicts the config is a ConfigError."""
    pip = merge(_unique([*cfg.pip, *translate(cfg.conda)]), list(cfg.get("extra_pip") or []),
                "environment.pip")
    pip = merge(pip, _unique(requirements), "environment.pip and environment.extra_pip")
    azure_pip = _unique(cfg.azure_pip)
    spec = {
        "name": cfg.name,
        "channels": list(cfg.channels),
        "dependencies": [f"python={cfg.python}", "pip", {"pip": pip + azure_pip}],
    }
    path = Path(ctx.output_dir) / SPEC_FILE
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return EnvironmentSpec(cfg.name, path, str(cfg.python), pip, azure_pip)
