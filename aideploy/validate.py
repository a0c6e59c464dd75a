"""Config mistakes, caught before the first stage and told in one line plus a hint.

OmegaConf's schemas refuse unknown keys and wrong types while Hydra composes; this module
adds what they cannot see (keys force-added with ``+``, values out of range, required values
left at ``???``) and turns every composition error into an :class:`ConfigError` that names the
key and the nearest valid names, instead of Hydra's advice to prepend ``+``.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from aideploy.errors import ConfigError


def _nearest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _fields(schema: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else {}


def unknown_key(key: str, schema: Any) -> ConfigError:
    """An error for ``key`` (dotted) that ``schema`` does not have, with the nearest names."""
    parent, _, leaf = key.rpartition(".")
    names = sorted(_fields(schema))
    where = f"in {parent}" if parent else "at the top level"
    near = _nearest(leaf, names).replace("mean ", f"mean {parent}.") if parent else _nearest(leaf, names)
    return ConfigError(f"unknown config key {key!r}{near}",
                       hint=f"keys {where}: {', '.join(names)}" if names else "check the spelling")


def _describe_bounds(bounds: dict[str, float]) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    return " and ".join(f"{words[op]} {value:g}" for op, value in bounds.items())


def _in_bounds(value: Any, bounds: dict[str, float]) -> bool:
    checks = {"ge": value >= bounds.get("ge", value), "gt": "gt" not in bounds or value > bounds["gt"],
              "le": value <= bounds.get("le", value), "lt": "lt" not in bounds or value < bounds["lt"]}
    return all(checks.values())


def _check_node(node: DictConfig, prefix: str) -> None:
    schema = OmegaConf.get_type(node)
    fields = _fields(schema)
    if not fields:
        return
    for key in node.keys():
        if key not in fields:  # only `+key=...` (force_add) gets past the schema
            raise unknown_key(f"{prefix}.{key}", schema)
    for name, f in fields.items():
        try:
            value = node[name]
        except InterpolationResolutionError as exc:  # e.g. ${oc.env:...} naming an unset variable
            raise ConfigError(f"{prefix}.{name}: {str(exc).splitlines()[0]}",
                              hint=f"give {prefix}.{name} a value, or set what it refers to") from None
        bounds = f.metadata.get("bounds")
        if bounds and value is not None and not _in_bounds(value, bounds):
            wanted = _describe_bounds(bounds)
            default = f", or leave it out for the default ({f.default!r})" if f.default is not None else ""
            raise ConfigError(f"{prefix}.{name}={value!r} is out of range: it must be {wanted}",
                              hint=f"give {prefix}.{name} a value {wanted}{default}")
        if isinstance(value, DictConfig):
            _check_node(value, f"{prefix}.{name}")


def _required_comment(group: str, option: str | None, key: str) -> str:
    """What the option's YAML says about a required field (its trailing comment), if anything."""
    if option is None:
        return ""
    from importlib.resources import files

    try:
        text = files("aideploy_conf").joinpath(group, f"{option}.yaml").read_text()
    except (FileNotFoundError, OSError):
        return ""
    match = re.search(rf"^{re.escape(key)}:\s*\?\?\?\s*#\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def _missing_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Dotted keys left at ``???``, without resolving interpolations (OmegaConf's own
    ``missing_keys`` resolves them, and fails on one that points at a missing value)."""
    found = []
    for key in node.keys():
        child = node._get_node(key)
        if OmegaConf.is_missing(node, key):
            found.append(f"{prefix}{key}")
        elif isinstance(child, DictConfig):
            found += _missing_keys(child, f"{prefix}{key}.")
    return found


def check(cfg: DictConfig, choices: dict[str, str]) -> None:
    """Refuse the config if anything in it is unknown, out of range or missing. ``cfg`` without ``hydra``."""
    from aideploy.config import AideployConfig

    root = _fields(AideployConfig)
    for key in cfg.keys():
        if key not in root and key != "hydra":
            raise unknown_key(str(key), AideployConfig)
    missing = sorted(k for k in _missing_keys(cfg) if not k.startswith("hydra."))
    if missing:
        key = missing[0]
        group, _, leaf = key.partition(".")
        said = _required_comment(group, choices.get(group), leaf)
        more = f" (also missing: {', '.join(missing[1:])})" if len(missing) > 1 else ""
        raise ConfigError(f"{key} is required{': ' + said if said else ''}{more}",
                          hint=f"add {key}=<value> to the command line")
    for group in choices:
        if group in cfg and isinstance(cfg[group], DictConfig):
            _check_node(cfg[group], group)
    if isinstance(cfg.get("predict"), DictConfig):
        _check_node(cfg["predict"], "predict")
    if isinstance(cfg.get("update"), DictConfig):
        _check_node(cfg["update"], "update")
        from aideploy.update import check_traffic_steps

        check_traffic_steps(cfg["update"].traffic_steps)


def explain(exc: BaseException) -> ConfigError | None:
    """One line and a hint for a Hydra/OmegaConf composition error; None when it is not one."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    cause = exc.__cause__ if exc.__cause__ is not None else exc
    message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        return unknown_key(cause.full_key, getattr(cause, "object_type", None))
    if isinstance(cause, ValidationError) and getattr(cause, "full_key", None):
        return ConfigError(f"{cause.full_key}: {message}",
                           hint=f"give {cause.full_key} a value of the right type (`aideploy --cfg job` shows the "
                           "current values)")
    if isinstance(cause, MissingConfigException):
        found = re.search(r"Could not find '([^']+)/([^']+)'", str(cause))
        options = re.findall(r"^\t(\S+)$", str(cause), re.MULTILINE)
        if found:
            group, option = found.groups()
            return ConfigError(f"unknown option {group}={option}{_nearest(option, options)}",
                               hint=f"options for {group}: {', '.join(options) or 'none found'} (Could not find "
                               f"'{group}/{option}')")
        return ConfigError(message, hint="check the option names (`aideploy --help` lists them)")
    if isinstance(cause, OverrideParseException):
        return ConfigError(f"cannot parse a command-line override: {message}",
                           hint="write overrides as key=value; quote values with spaces or brackets, "
                           "e.g. 'environment.pip=[numpy,scikit-learn]'")
    if "Ambiguous value for argument" in str(cause):
        return ConfigError(message, hint="to sweep over the values add -m; for a list write key=[a,b]")
    return None


def _variants(overrides: list[str]) -> list[list[str]] | None:
    """The override lists a sweep expands to, each sweep value at least once (None: cannot tell)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        values = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                  else [o.input_line] for o in parsed]
    except Exception as exc:  # a parse error is reported by the compose below; a glob sweep is left to Hydra
        from hydra.errors import OverrideParseException

        return [overrides] if isinstance(exc, OverrideParseException) else None
    base = [v[0] for v in values]
    variants = [base]
    for i, options in enumerate(values):
        variants += [base[:i] + [option] + base[i + 1:] for option in options[1:]]
    return variants


def preflight(overrides: list[str], multirun: bool = False) -> None:
    """Compose and check ``overrides`` as the command would (every value of a sweep); ConfigError if bad.

    Errors that are not about the config are left for the run to report.
    """
    from aideploy.api import compose_registered

    variants = _variants(overrides) if multirun else [overrides]
    for variant in variants or []:
        try:
            cfg, choices = compose_registered(variant)
        except Exception as exc:
            explained = explain(exc)
            if explained is None:
                return
            raise explained from None
        check(cfg, choices)
