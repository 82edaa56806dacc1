"""Tests for pyimgano.config: strict parsing, validation, file loading and the JSON round trip.

No torch here: the config module is shared by the workbench and tooling that runs without it.
"""

from __future__ import annotations

import copy
import json
import math

import pytest

from pyimgano.runtime.defects import DefectsConfig
from pyimgano.config import (
    DEFAULT_FALSE_REJECT_RATE,
    CalibrationConfig,
    ConfigError,
    DatasetConfig,
    ModelConfig,
    OutputConfig,
    WorkbenchConfig,
    load_config_file,
    parse_config,
    target_false_reject_rate,
    to_json,
)

# What every recipe sets under the defects block: regions refined to their peaks.
RECIPE_DEFECTS = DefectsConfig(region_peak_fraction=0.5)

# The seed's minimal config, copied literally.
SEED_JSON = (
    '{"recipe": "industrial-adapt", "seed": 123, "dataset": {"name": "mvtec", "root": "/path/to/mvtec_ad", '
    '"category": "bottle", "resize": [256, 256], "input_mode": "paths"}, "model": {"name": "vision_patchcore", '
    '"device": "cuda", "preset": "industrial-balanced", "pretrained": true, "contamination": 0.1}, '
    '"output": {"output_dir": "runs/my_run", "save_run": true, "per_image_jsonl": true}}'
)

SEED_YAML = """\
recipe: industrial-adapt
seed: 123
dataset:
  name: mvtec
  root: /path/to/mvtec_ad
  category: bottle
  resize: [256, 256]
  input_mode: paths
model:
  name: vision_patchcore
  device: cuda
  preset: industrial-balanced
  pretrained: true
  contamination: 0.1
output:
  output_dir: runs/my_run
  save_run: true
  per_image_jsonl: true
"""


def seed_data() -> dict:
    return json.loads(SEED_JSON)


def with_value(dotted: str, value) -> dict:
    """The seed config with one (possibly nested, possibly new) key set to `value`."""
    data = seed_data()
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


def without(dotted: str) -> dict:
    data = seed_data()
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node[part]
    del node[last]
    return data


def config_error(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return str(info.value)


# --------------------------------------------------------------------------- the seed config


def test_seed_config_parses_with_exact_values_and_types():
    cfg = parse_config(seed_data())

    assert isinstance(cfg, WorkbenchConfig)
    assert cfg.recipe == "industrial-adapt"
    assert cfg.seed == 123 and type(cfg.seed) is int

    assert isinstance(cfg.dataset, DatasetConfig)
    assert cfg.dataset.name == "mvtec"
    assert cfg.dataset.root == "/path/to/mvtec_ad"
    assert cfg.dataset.category == "bottle"
    assert cfg.dataset.resize == (256, 256)
    assert type(cfg.dataset.resize) is tuple
    assert all(type(v) is int for v in cfg.dataset.resize)
    assert cfg.dataset.input_mode == "paths"
    assert cfg.dataset.limit_train is None
    assert cfg.dataset.limit_test is None

    assert isinstance(cfg.model, ModelConfig)
    assert cfg.model.name == "vision_patchcore"
    assert cfg.model.device == "cuda"
    assert cfg.model.preset == "industrial-balanced"
    assert cfg.model.pretrained is True
    assert cfg.model.contamination == 0.1 and type(cfg.model.contamination) is float
    # Defaults filled for keys the seed leaves out.
    assert cfg.model.backbone is None
    assert cfg.model.layers is None
    assert cfg.model.weights_path is None
    assert cfg.model.coreset_ratio is None
    assert cfg.model.num_neighbors is None
    assert cfg.model.embed_dim is None
    assert cfg.model.batch_size == 8

    assert isinstance(cfg.calibration, CalibrationConfig)
    assert cfg.calibration.strategy == "cross_fit" and cfg.calibration.folds == 5
    assert cfg.calibration.holdout_fraction == 0.2
    assert cfg.calibration.image_quantile is None
    assert cfg.calibration.pixel_quantile is None
    assert cfg.calibration.target_false_reject_rate is None
    assert target_false_reject_rate(cfg) == 0.1  # the seed's contamination sets it

    assert isinstance(cfg.output, OutputConfig)
    assert cfg.output.output_dir == "runs/my_run"
    assert cfg.output.save_run is True
    assert cfg.output.per_image_jsonl is True


def test_seed_config_equals_explicitly_built_dataclasses():
    expected = WorkbenchConfig(
        dataset=DatasetConfig(root="/path/to/mvtec_ad", category="bottle", resize=(256, 256)),
        model=ModelConfig(device="cuda", preset="industrial-balanced", contamination=0.1),
        output=OutputConfig(output_dir="runs/my_run"),
        defects=RECIPE_DEFECTS,
        seed=123,
    )
    assert parse_config(seed_data()) == expected


def test_minimal_config_only_needs_dataset_root_and_category():
    cfg = parse_config({"dataset": {"root": "r", "category": "c"}})
    assert cfg == WorkbenchConfig(dataset=DatasetConfig(root="r", category="c"), defects=RECIPE_DEFECTS)
    assert cfg.seed == 0
    assert cfg.recipe == "industrial-adapt"
    assert cfg.model.device == "auto"
    assert cfg.dataset.resize == (256, 256)


def test_parse_does_not_mutate_its_input():
    data = seed_data()
    before = copy.deepcopy(data)
    parse_config(data)
    assert data == before


def test_int_is_accepted_for_a_float_field_and_becomes_float():
    cfg = parse_config(with_value("model.coreset_ratio", 1))
    assert cfg.model.coreset_ratio == 1.0
    assert type(cfg.model.coreset_ratio) is float


def test_layers_list_of_strings_is_kept_as_list():
    cfg = parse_config(with_value("model.layers", ["layer2", "layer3"]))
    assert cfg.model.layers == ["layer2", "layer3"]
    assert type(cfg.model.layers) is list


def test_top_level_must_be_an_object():
    with pytest.raises(ConfigError, match="must be an object at the top level"):
        parse_config([1, 2])


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# --------------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("dotted", "nearest"),
    [
        ("modle", "model"),
        ("dataset.categroy", "dataset.category"),
        ("model.coreset_ration", "model.coreset_ratio"),
        ("calibration.pixel_quantil", "calibration.pixel_quantile"),
        ("output.save_runs", "output.save_run"),
    ],
)
def test_unknown_key_names_full_path_and_nearest_valid_key(dotted, nearest):
    message = config_error(with_value(dotted, 1))
    assert f"unknown key {dotted!r}" in message
    assert f"did you mean {nearest!r}?" in message


def test_unknown_nested_key_is_reported_even_when_the_value_would_be_valid():
    # A misspelt key must never be silently dropped, whatever its value.
    message = config_error(with_value("dataset.categroy", "bottle"))
    assert message == "unknown key 'dataset.categroy'; did you mean 'dataset.category'?"


# --------------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("dotted", "value", "fragments"),
    [
        ("dataset.resize", "256", ["dataset.resize", "expected list of integer", "str '256'"]),
        ("model.coreset_ratio", "0.1", ["model.coreset_ratio", "expected number or null", "str '0.1'"]),
        ("seed", True, ["seed", "expected integer", "bool True"]),
        ("seed", 1.5, ["seed", "expected integer", "float 1.5"]),
        ("output.save_run", 1, ["output.save_run", "expected boolean", "int 1"]),
        ("model.pretrained", "yes", ["model.pretrained", "expected boolean", "str 'yes'"]),
        ("dataset.resize", [256], ["dataset.resize", "expected a list of 2 items, got 1"]),
        ("dataset.resize", [256, 256, 3], ["dataset.resize", "expected a list of 2 items, got 3"]),
        ("dataset.resize", [256, "256"], ["dataset.resize[1]", "expected integer", "str '256'"]),
        ("dataset.resize", [256.0, 256], ["dataset.resize[0]", "expected integer", "float 256.0"]),
        ("dataset.limit_train", True, ["dataset.limit_train", "expected integer or null", "bool True"]),
        ("model.contamination", "0.1", ["model.contamination", "expected number or null", "str '0.1'"]),
        # Inside an optional (`| None`) field the whole value is reported, not the bad item.
        ("model.layers", ["layer2", 3], ["model.layers", "expected list of string or null", "list ['layer2', 3]"]),
        ("model.layers", "layer2", ["model.layers", "expected list of string or null", "str 'layer2'"]),
        ("model", "vision_patchcore", ["model: expected an object, got str"]),
    ],
)
def test_wrong_type_names_path_and_expected_type(dotted, value, fragments):
    message = config_error(with_value(dotted, value))
    for fragment in fragments:
        assert fragment in message, (fragment, message)


def test_wrong_type_message_exact_for_bool_seed():
    assert config_error(with_value("seed", True)) == "seed: expected integer, got bool True"


def test_wrong_length_resize_message_exact():
    assert config_error(with_value("dataset.resize", [256])) == "dataset.resize: expected a list of 2 items, got 1"


# --------------------------------------------------------------------------- missing keys


@pytest.mark.parametrize("dotted", ["dataset", "dataset.root", "dataset.category"])
def test_missing_required_key_is_named(dotted):
    assert config_error(without(dotted)) == f"missing required key {dotted!r}"


def test_optional_sections_may_be_missing():
    data = without("model")
    del data["output"]
    cfg = parse_config(data)
    assert cfg.model == ModelConfig()
    assert cfg.output == OutputConfig()


# --------------------------------------------------------------------------- validate(): ranges and choices


@pytest.mark.parametrize(
    ("dotted", "value", "expected"),
    [
        ("model.device", "gpu", "model.device: 'gpu' is not one of ['auto', 'cpu', 'cuda']"),
        ("recipe", "industrial-fast", "recipe: 'industrial-fast' is not a builtin recipe; did you mean 'industrial-adapt'? (--list-recipes)"),
        ("dataset.name", "visa", "dataset.name: 'visa' is not one of ['mvtec', 'custom', 'manifest']"),
        ("dataset.input_mode", "tensor", "dataset.input_mode: 'tensor' is not one of ['paths', 'numpy']"),
        ("model.coreset_ratio", 0, "model.coreset_ratio: 0.0 is outside (0.0, 1.0]"),
        ("model.coreset_ratio", 1.5, "model.coreset_ratio: 1.5 is outside (0.0, 1.0]"),
        ("model.coreset_ratio", -0.1, "model.coreset_ratio: -0.1 is outside (0.0, 1.0]"),
        ("calibration.pixel_quantile", 2, "calibration.pixel_quantile: 2.0 is outside [0.0, 1.0]"),
        ("calibration.image_quantile", 1.01, "calibration.image_quantile: 1.01 is outside [0.5, 1.0]"),
        ("calibration.strategy", "bootstrap", "calibration.strategy: 'bootstrap' is not one of ['cross_fit', 'holdout']"),
        ("calibration.folds", 1, "calibration.folds: 1 is below 2 (cross-fitting needs two folds)"),
        ("calibration.target_false_reject_rate", 0, "calibration.target_false_reject_rate: 0.0 is outside (0.0, 0.5]"),
        ("calibration.holdout_fraction", 0, "calibration.holdout_fraction: 0.0 is outside (0.0, 0.9]"),
        ("calibration.holdout_fraction", 0.95, "calibration.holdout_fraction: 0.95 is outside (0.0, 0.9]"),
        ("model.contamination", 0.6, "model.contamination: 0.6 is outside (0.0, 0.5]"),
        ("model.contamination", 0.0, "model.contamination: 0.0 is outside (0.0, 0.5]"),
        ("model.num_neighbors", 0, "model.num_neighbors: must be at least 1"),
        ("model.batch_size", 0, "model.batch_size: must be at least 1"),
        ("dataset.resize", [256, 31], "dataset.resize: [256, 31] is smaller than 32 pixels"),
    ],
)
def test_validate_rejects_out_of_range_and_unknown_choices(dotted, value, expected):
    assert config_error(with_value(dotted, value)) == expected


@pytest.mark.parametrize(
    ("dotted", "value"),
    [
        ("model.coreset_ratio", 1.0),  # upper bound is closed
        ("model.coreset_ratio", 1e-6),
        ("model.contamination", 1e-6),
        ("model.contamination", 0.5),
        ("model.contamination", None),
        ("calibration.holdout_fraction", 0.9),
        ("calibration.pixel_quantile", 1.0),
        ("calibration.image_quantile", 0.9),  # the seed's contamination 0.1 says the same
        ("dataset.resize", [32, 32]),
        ("model.device", "cpu"),
        ("model.device", "auto"),
    ],
)
def test_validate_accepts_boundary_values(dotted, value):
    cfg = parse_config(with_value(dotted, value))
    section, _, key = dotted.rpartition(".")
    got = getattr(getattr(cfg, section), key)
    assert got == (tuple(value) if isinstance(value, list) else value)


@pytest.mark.parametrize(
    "dotted", ["model.contamination", "calibration.pixel_quantile", "calibration.holdout_fraction"]
)
def test_validate_rejects_nan(dotted):
    data = with_value(dotted, math.nan)
    with pytest.raises(ConfigError, match=dotted.replace(".", r"\.")):
        parse_config(data)


# --------------------------------------------------------------------------- load_config_file


def test_load_json_file(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(SEED_JSON, encoding="utf-8")
    assert load_config_file(path) == parse_config(seed_data())
    assert load_config_file(str(path)) == parse_config(seed_data())


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".YAML"])
def test_load_yaml_file_equals_json(tmp_path, suffix):
    pytest.importorskip("yaml")
    json_path = tmp_path / "config.json"
    json_path.write_text(SEED_JSON, encoding="utf-8")
    yaml_path = tmp_path / f"config{suffix}"
    yaml_path.write_text(SEED_YAML, encoding="utf-8")
    from_yaml = load_config_file(yaml_path)
    assert from_yaml == load_config_file(json_path)
    assert from_yaml.dataset.resize == (256, 256)
    assert from_yaml.seed == 123


def test_yaml_file_is_strict_too(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "config.yaml"
    path.write_text(SEED_YAML.replace("  category: bottle", "  categroy: bottle"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == "unknown key 'dataset.categroy'; did you mean 'dataset.category'?"


def test_invalid_yaml_names_the_file(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "broken.yaml"
    path.write_text("dataset: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value).startswith(f"{path}: not valid YAML (")


def test_invalid_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{"dataset": {"root": "r",}}', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not valid JSON (")
    assert "line 1" in message


def test_missing_file_raises_config_error(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(info.value) == f"cannot read config {path}: No such file or directory"


def test_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config_file(tmp_path)
    assert str(info.value).startswith(f"cannot read config {tmp_path}: ")


def test_json_file_with_non_object_top_level(tmp_path):
    path = tmp_path / "list.json"
    path.write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(ConfigError, match="must be an object at the top level"):
        load_config_file(path)


def test_non_utf8_file_raises_config_error_naming_the_file(tmp_path):
    path = tmp_path / "utf16.json"
    path.write_bytes(SEED_JSON.encode("utf-16"))
    with pytest.raises(ConfigError) as info:
        load_config_file(path)
    assert str(path) in str(info.value)


# --------------------------------------------------------------------------- to_json round trip


def test_to_json_is_plain_json_with_lists():
    cfg = parse_config(seed_data())
    data = to_json(cfg)
    assert data["dataset"]["resize"] == [256, 256]
    assert type(data["dataset"]["resize"]) is list
    assert data["calibration"] == {"strategy": "cross_fit", "folds": 5, "holdout_fraction": 0.2,
                                   "target_false_reject_rate": None, "image_quantile": None, "pixel_quantile": None}
    assert data["seed"] == 123
    assert json.loads(json.dumps(data)) == data


def test_to_json_round_trip_seed():
    cfg = parse_config(seed_data())
    assert parse_config(to_json(cfg)) == cfg


def test_to_json_round_trip_every_field_set():
    data = seed_data()
    data["dataset"].update({"resize": [320, 224], "limit_train": 10, "limit_test": 5})
    data["model"].update(
        {
            "backbone": "wide_resnet50_2",
            "layers": ["layer2", "layer3"],
            "weights_path": "/w.pth",
            "coreset_ratio": 0.25,
            "num_neighbors": 3,
            "embed_dim": 512,
            "batch_size": 4,
        }
    )
    data["model"]["contamination"] = 0.01
    data["calibration"] = {"strategy": "holdout", "folds": 3, "holdout_fraction": 0.3, "image_quantile": 0.99,
                           "pixel_quantile": 0.995, "target_false_reject_rate": 0.01}
    cfg = parse_config(data)
    assert cfg.dataset.resize == (320, 224)
    assert cfg.model.layers == ["layer2", "layer3"]
    again = parse_config(to_json(cfg))
    assert again == cfg
    assert to_json(again) == to_json(cfg)


@pytest.mark.parametrize("extra, rate", [({}, 0.1), ({"calibration": {"target_false_reject_rate": 0.1}}, 0.1),
                                         ({"calibration": {"image_quantile": 0.9}}, 0.1)])
def test_the_false_reject_rate_has_three_spellings_that_must_agree(extra, rate):
    data = seed_data()
    for section, values in extra.items():
        data[section] = {**data.get(section, {}), **values}
    assert target_false_reject_rate(parse_config(data)) == rate
    data["calibration"] = {"target_false_reject_rate": 0.01}
    with pytest.raises(ConfigError, match="calibration.target_false_reject_rate and model.contamination set different"):
        parse_config(data)
    del data["model"]["contamination"]
    assert target_false_reject_rate(parse_config(data)) == 0.01
    data["calibration"] = {}
    assert target_false_reject_rate(parse_config(data)) == DEFAULT_FALSE_REJECT_RATE
