"""What a model needs installed where it is served: the distributions its objects come from,
pinned to the versions it was loaded with here.

A pickle is only safe with the library versions that wrote it (scikit-learn says so itself),
so a scikit-learn model's scoring environment gets ``scikit-learn==<that version>`` and the
same for every library whose classes or functions the model holds (xgboost, lightgbm, scipy,
pandas, ...): found by walking the loaded model's objects, mapped to distributions with
``importlib.metadata``. An MLflow model brings its own ``requirements.txt``. A model that takes
named columns also needs pandas, which builds its DataFrames.
"""

from __future__ import annotations

import functools
import importlib.metadata
import sys
import types
from pathlib import Path
from typing import Any, Iterable

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from aideploy.errors import ConfigError

MAX_OBJECTS = 200_000  # a model's object graph is walked this far (a forest holds ~10^4 objects per 100 trees)
# Modules of the interpreter itself and of aideploy's own scoring package: nothing to install.
_BUILTIN_ROOTS = frozenset(sys.stdlib_module_names) | {"builtins", "__builtin__", "aideploy_scoring"}


def modules_of(model: Any, limit: int = MAX_OBJECTS) -> set[str]:
    """Top-level modules of the classes and functions reachable from ``model``: the type of every
    object, and every class or function it holds (a FunctionTransformer's ``func``, say)."""
    import numpy as np

    found: set[str] = set()
    seen: set[int] = set()
    stack = [model]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or obj is None or isinstance(obj, (str, bytes, int, float, complex)):
            continue
        seen.add(id(obj))
        found.add(type(obj).__module__.split(".")[0])
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, np.ufunc, functools.partial)):
            found.add(str(getattr(obj, "__module__", None) or "builtins").split(".")[0])
            if isinstance(obj, functools.partial):
                stack.extend([obj.func, *obj.args, *obj.keywords.values()])
            continue
        if isinstance(obj, np.ndarray):
            if obj.dtype == object:  # e.g. an encoder's categories
                stack.extend(obj.ravel()[:10_000].tolist())
            continue
        if isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        else:
            stack.extend(getattr(obj, "__dict__", {}).values())
            stack.extend(getattr(obj, slot) for slot in getattr(type(obj), "__slots__", ())
                         if isinstance(slot, str) and hasattr(obj, slot))
    return found


def distributions(modules: Iterable[str]) -> dict[str, str]:
    """``{distribution: installed version}`` providing ``modules``; ConfigError for a model that holds
    code from ``__main__`` (a class defined in the script that pickled it cannot be imported)."""
    modules = set(modules) - _BUILTIN_ROOTS
    if "__main__" in modules:
        raise ConfigError("the model holds a class or function defined in the script that pickled it (__main__), "
                          "which the service cannot import",
                          hint="move it into an importable module, pickle the model again, and add that module "
                          "to the scoring code (scoring=custom) or environment.extra_pip")
    providers = importlib.metadata.packages_distributions()
    pins: dict[str, str] = {}
    for module in sorted(modules):
        for dist in providers.get(module, []):
            try:
                pins[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
    return pins


def pinned(versions: dict[str, str]) -> list[str]:
    return [f"{name}=={version}" for name, version in sorted(versions.items())]


def of_sklearn(model: Any) -> list[str]:
    """Pins for a scikit-learn (or xgboost, lightgbm, ...) model object, in the versions loaded here,
    except where the pickle says it was written by another scikit-learn (that one is pinned)."""
    versions = distributions(modules_of(model.adapter.estimator))
    written = getattr(model.adapter, "pickled_with", None)
    if written:
        versions["scikit-learn"] = written
    if model.schema is not None and model.schema.named:
        versions.update(distributions({"pandas"}))
    return pinned(versions)


def of_mlflow(model_dir: Path) -> list[str]:
    """An MLflow model's own ``requirements.txt`` (MLflow writes it beside ``MLmodel``), mlflow itself
    as mlflow-skinny (the serving part), unreadable lines skipped."""
    found = sorted(Path(model_dir).rglob("requirements.txt"))
    if not found:
        return []
    out = []
    for line in found[0].read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == "mlflow":
            req.name = "mlflow-skinny"
        out.append(str(req))
    return out


def for_model(model: Any) -> list[str]:
    """What ``model`` (a RegisteredModel) needs in its scoring environment, by its kind."""
    if model is None:
        return []
    if model.kind == "sklearn":
        return of_sklearn(model)
    needs = of_mlflow(model.file) if model.kind == "mlflow" else []
    if model.schema is not None and model.schema.named:
        needs += pinned(distributions({"pandas"}))
    return needs


def merge(base: list[str], required: list[str], where: str) -> list[str]:
    """``base`` with each of ``required`` in place of a looser line for the same distribution (kept in
    ``base``'s order); a ConfigError when the two cannot both hold."""
    out = list(base)
    index = {}
    for i, line in enumerate(out):
        try:
            index[canonicalize_name(Requirement(line).name)] = i
        except InvalidRequirement:
            continue
    for line in required:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise ConfigError(f"{line!r} is not a pip requirement: {exc}",
                              hint="write it as pip takes it, e.g. xgboost==3.2.0 or 'scikit-learn>=1.3'") from None
        name = canonicalize_name(req.name)
        if name not in index:
            index[name] = len(out)
            out.append(line)
            continue
        current = Requirement(out[index[name]])
        pinned_to = next((s.version for s in req.specifier if s.operator == "=="), None)
        if pinned_to is not None and current.specifier and not current.specifier.contains(pinned_to,
                                                                                           prereleases=True):
            raise ConfigError(f"{where} asks for {current}, but the model needs {req}",
                              hint=f"let the model's version in (drop or widen {current.name} in {where}), or "
                              "save the model again with the version the environment asks for")
        if pinned_to is not None or not current.specifier:
            out[index[name]] = line
    return out


def override(key: str, values: list[str]) -> str:
    """``values`` as a command-line override of list ``key`` that a shell and Hydra both take as it is:
    ``'environment.extra_pip=["xgboost==3.2.0"]'``."""
    inner = ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "'" + f"{key}=[{inner}]".replace("'", "'\\''") + "'"
