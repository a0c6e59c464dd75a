"""Every config option composes and validates; bad config fails before any stage runs."""

from __future__ import annotations

import pytest
from hydra.errors import ConfigCompositionException, OverrideParseException
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from aideploy.api import compose
from aideploy.config import SCHEMAS

# Required values an option cannot have a default for.
REQUIRED = {("model", "sklearn_pickle"): ["model.path=/some/model.pkl"], ("model", "onnx"): ["model.path=/m.onnx"],
            ("model", "mlflow"): ["model.path=/some/mlflow_model"], ("scoring", "custom"): ["scoring.source_dir=/src"],
            ("data", "csv"): ["data.path=/rows.csv"], ("data", "parquet"): ["data.path=/rows.parquet"],
            ("data", "npy"): ["data.path=/rows.npy"], ("data", "mnist_idx"): ["data.images=/i.gz", "data.labels=/l.gz"]}


def all_options():
    return [(group, option) for group, options in SCHEMAS.items() for option in options]


@pytest.mark.parametrize("group,option", all_options())
def test_every_option_composes_and_validates(group, option):
    cfg, choices = compose([f"{group}={option}", *REQUIRED.get((group, option), [])])
    assert choices[group] == option
    node = cfg[group]
    schema = SCHEMAS[group][option]
    assert OmegaConf.get_type(node) is schema
    # Every value resolves and no required value is missing.
    container = OmegaConf.to_container(node, resolve=True, throw_on_missing=True)
    assert container["plugin"] or (group, option) == ("tracking", "none")  # the one option no plugin serves


def test_option_yaml_fields_are_commented():
    from importlib.resources import files

    for group, options in SCHEMAS.items():
        for option in options:
            text = files("aideploy_conf").joinpath(group, f"{option}.yaml").read_text()
            assert text.lstrip().startswith("#"), f"{group}/{option}.yaml needs a header comment"
            fields = [line for line in text.splitlines()
                      if line and not line.startswith((" ", "#", "-", "defaults")) and ":" in line]
            for line in fields:
                assert "#" in line or line.rstrip().endswith(":"), f"{group}/{option}.yaml: uncommented {line!r}"


def test_schema_options_match_yaml_options():
    from importlib.resources import files

    for group, options in SCHEMAS.items():
        on_disk = {p.name[:-5] for p in files("aideploy_conf").joinpath(group).iterdir() if p.name.endswith(".yaml")}
        assert on_disk == set(options), group


def test_unknown_key_is_refused_naming_it():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["target.prot=1"])
    assert "prot" in str(info.value.__cause__ or info.value)


def test_wrong_type_is_refused_naming_the_key():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["target.port=abc"])
    cause = info.value.__cause__
    assert isinstance(cause, ValidationError) and cause.full_key == "target.port"


def test_unknown_option_lists_valid_ones():
    with pytest.raises(Exception) as info:
        compose(["target=nope"])
    message = str(info.value)
    assert "target/nope" in message and "local" in message


def test_unknown_mode_lists_modes():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["mode=bogus"])
    assert "run, serve, predict, delete" in str(info.value.__cause__)


def test_malformed_override_is_refused():
    with pytest.raises(OverrideParseException):
        compose(["target.port=["])


def test_unknown_top_level_key_is_refused():
    with pytest.raises(ConfigCompositionException) as info:
        compose(["nonsense=1"])
    assert isinstance(info.value.__cause__, ConfigKeyError) or "nonsense" in str(info.value)


def test_model_split_follows_data_split():
    cfg, _ = compose(["data.seed=7", "data.test_size=0.5"])
    assert cfg.model.seed == 7 and cfg.model.test_size == 0.5
