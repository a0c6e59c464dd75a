"""Every config mistake is one error line and a hint, before any stage runs, never a traceback."""

from __future__ import annotations

import dataclasses
import enum
import typing

import pytest

from conftest import results_of
from aideploy.config import SCHEMAS
from aideploy.errors import ConfigError
from aideploy.validate import preflight

from test_config import REQUIRED  # noqa: E402  (the options' required values, in one place)


@pytest.fixture(scope="module", autouse=True)
def schemas_in_the_config_store():
    """As the command does before it composes anything."""
    from aideploy.config import register_configs
    from aideploy.manager import PluginRegistry

    register_configs(registry=PluginRegistry.load())


def _base(field_type: typing.Any) -> typing.Any:
    if typing.get_origin(field_type) is typing.Union:  # Optional[X]
        return next(a for a in typing.get_args(field_type) if a is not type(None))
    return field_type


def wrong_value(field_type: typing.Any) -> str | None:
    """A command-line value of the wrong type for a field, or None for a nested node."""
    base = _base(field_type)
    origin = typing.get_origin(base)
    if origin in (list, dict):
        return "5"
    if dataclasses.is_dataclass(base):
        return None
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "no_such_choice"
    if base is bool:
        return "maybe"
    if base in (int, float):
        return "not_a_number"
    return "[1,2]"  # a list where a string belongs


def out_of_range(bounds: dict) -> str:
    if "ge" in bounds:
        return str(bounds["ge"] - 1)
    if "gt" in bounds:
        return str(bounds["gt"])
    if "le" in bounds:
        return str(bounds["le"] + 1)
    return str(bounds["lt"])


def every_field():
    """(group, option, dotted key, field) for every field of every option, nested ones included."""
    hints = {}
    for group, options in SCHEMAS.items():
        for option, schema in options.items():
            stack = [(group, schema)]
            while stack:
                prefix, node = stack.pop()
                hints = typing.get_type_hints(node)
                for f in dataclasses.fields(node):
                    ftype = hints[f.name]
                    if dataclasses.is_dataclass(_base(ftype)):
                        stack.append((f"{prefix}.{f.name}", _base(ftype)))
                    yield group, option, f"{prefix}.{f.name}", f, ftype


CASES = [(g, o, k, f, t) for g, o, k, f, t in every_field()]


def assert_one_line(error: ConfigError, key: str) -> None:
    assert "\n" not in error.cause and error.hint, error.report()
    assert key.split(".")[-1] in error.cause or key in error.cause, error.report()


@pytest.mark.parametrize("group,option,key,field,ftype", CASES, ids=[f"{c[1]}:{c[2]}" for c in CASES])
def test_every_field_refuses_wrong_type_out_of_range_and_missing(group, option, key, field, ftype):
    base = [f"{group}={option}", *REQUIRED.get((group, option), [])]
    value = wrong_value(ftype)
    if value is not None:
        with pytest.raises(ConfigError) as info:
            preflight([*base, f"{key}={value}"])
        assert_one_line(info.value, key)
    bounds = field.metadata.get("bounds")
    if bounds:
        with pytest.raises(ConfigError, match="out of range") as info:
            preflight([*base, f"{key}={out_of_range(bounds)}"])
        assert_one_line(info.value, key)
    if value is not None:
        with pytest.raises(ConfigError, match="is required") as info:
            preflight([*base, f"{key}=???"])
        assert_one_line(info.value, key)


def test_the_defaults_pass(tmp_path):
    preflight([])
    for (group, option), extra in REQUIRED.items():
        preflight([f"{group}={option}", *extra])


# ----------------------------------------------------------------------------- through the command


def one_error(proc, needle: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    hints = [line for line in proc.stderr.splitlines() if line.startswith("hint: ")]
    assert len(errors) == 1 and len(hints) == 1 and needle in errors[0], proc.stderr


@pytest.mark.parametrize("overrides,needle", [
    (["+encryptoin=fast"], "did you mean encryption?"),
    (["encryptoin=fast"], "did you mean encryption?"),
    (["model=sklearn_pickle"], "model.path is required: path to the pickle/joblib file"),
    (["data.limit=0"], "data.limit=0 is out of range"),
    (["data.limit=-5"], "data.limit=-5 is out of range"),
    (["target.port=99999"], "target.port=99999 is out of range"),
    (["target=loca"], "unknown option target=loca; did you mean local?"),
    (["-m", "encryption=none,fsat", "dry_run=true"], "unknown option encryption=fsat"),
])
def test_config_mistakes_are_refused_before_anything_runs(cli, overrides, needle):
    proc = cli(*overrides)
    one_error(proc, needle)
    assert not proc.out.exists()  # refused before Hydra made an output dir


def test_an_unknown_plugin_fails_before_the_first_stage(cli):
    proc = cli("target.plugin=nonesuch")
    one_error(proc, "target.plugin='nonesuch': no plugin of that name is registered")
    assert list(results_of(proc.out)["stage_seconds"]) == ["teardown"]


def test_a_plugin_returning_the_wrong_type_is_named(cli, tmp_path):
    (tmp_path / "tuple_data.py").write_text(
        "PLUGIN_NAME = 'tuple_data'\n\n\ndef aideploy_prepare_data(cfg):\n    return (1, 2)\n")
    proc = cli("plugins=[tuple_data]", "data.plugin=tuple_data", env={"PYTHONPATH": str(tmp_path)})
    one_error(proc, "plugin 'tuple_data' returned tuple from aideploy_prepare_data; expected Dataset")


def test_a_plugin_module_in_the_current_directory_is_found(cli, tmp_path):
    import subprocess

    (tmp_path / "here_plugin.py").write_text("def aideploy_after_stage(stage, ctx):\n"
                                             "    ctx.log.info('here_plugin saw %s', stage.name)\n")
    argv, out = cli.argv("plugins=[here_plugin]", "dry_run=true")
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "here_plugin saw plan" in proc.stderr


def test_multirun_flag_anywhere_on_the_line(cli, tmp_path):
    import subprocess

    argv = [cli.argv()[0][0], f"home={cli.home}", "dry_run=true", "-m", "data.limit=1,2",
            f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    proc = subprocess.run(argv, capture_output=True, text=True, env=cli.env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]
