"""The workbench config: typed dataclasses, parsed strictly from JSON or YAML.

An unknown key fails naming its path and the nearest valid key; a wrong type names the path and the
expected type. Nothing is silently fixed: a value is used as written or refused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from pyimgano.runtime import strict
from pyimgano.runtime.defects import DefectsConfig
from pyimgano.runtime.images import InputContract
from pyimgano.runtime.postprocess import PostprocessConfig
from pyimgano.runtime.tiling import TilingConfig


class ConfigError(ValueError):
    """A config that cannot be used as written; the message names the key path."""


def parse_section(cls: type, data: dict, path: str = ""):
    """`strict.parse` with its error as a ConfigError (the workbench's own error for a bad config)."""
    try:
        return strict.parse(cls, data, path)
    except strict.SchemaError as exc:
        raise ConfigError(str(exc)) from exc


@dataclass
class DatasetConfig:
    root: str
    category: str
    name: str = "mvtec"
    resize: tuple[int, int] = (256, 256)
    input_mode: str = "paths"
    # Caps on how many images each split uses (first N after a seeded shuffle); None = all.
    limit_train: int | None = None
    limit_test: int | None = None


@dataclass
class ModelConfig:
    name: str = "vision_patchcore"
    device: str = "auto"
    preset: str | None = None
    backbone: str | None = None
    layers: list[str] | None = None
    pretrained: bool = True
    weights_path: str | None = None
    coreset_ratio: float | None = None
    num_neighbors: int | None = None
    embed_dim: int | None = None
    # vision_padim: size of the random channel subset that keeps per-position covariances small.
    n_features: int | None = None
    # vision_anomalib_checkpoint: the anomalib 2.x Lightning checkpoint (.ckpt) to import.
    checkpoint_path: str | None = None
    # The seed's name for the share of good parts the image threshold may reject: when given, it sets
    # calibration.target_false_reject_rate.
    contamination: float | None = None
    batch_size: int = 8


@dataclass
class CalibrationConfig:
    # Where the normal scores that thresholds are read from come from. "cross_fit": every train/good image
    # is scored by a model fitted on the other folds, and the shipped model is fitted on all of them;
    # "holdout": holdout_fraction of train/good is kept out of the model and scored by it.
    strategy: str = "cross_fit"
    folds: int = 5
    holdout_fraction: float = 0.2
    # The share of good parts the image threshold may reject (default 0.01; model.contamination, when
    # given, sets it). Too few good images for it: a fitted generalized Pareto tail, with a warning.
    target_false_reject_rate: float | None = None
    # The seed's form of the same: the threshold is this quantile of the normal scores (1 - the rate).
    image_quantile: float | None = None
    # The pixel threshold: by default the map level that at most the target share of good parts reach
    # anywhere (each normal image's map maximum, at the same operating point); the seed's pixel_quantile,
    # when given, makes it that quantile of all normal pixels instead.
    pixel_quantile: float | None = None


@dataclass
class TrainingConfig:
    """Reaches `fit` of models that train; a model that does not train says so in the report."""

    enabled: bool = False
    epochs: int | None = None
    lr: float | None = None
    checkpoint_name: str = "model.npz"


@dataclass
class AdaptationConfig:
    # Writes each test image's anomaly map as .npy under artifacts/maps/ and records path/shape/dtype.
    save_maps: bool = False
    tiling: TilingConfig | None = None
    postprocess: PostprocessConfig | None = None


@dataclass
class OutputConfig:
    output_dir: str = "runs/run"
    save_run: bool = True
    per_image_jsonl: bool = True
    # report.html in the run directory: curves, histograms, thresholds and a gallery of the worst false
    # rejects and misses (docs/REPORT.md; needs matplotlib, the `report` extra). It is drawn from the
    # per-image records, so it needs per_image_jsonl.
    html_report: bool = True


@dataclass
class WorkbenchConfig:
    dataset: DatasetConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    defects: DefectsConfig = field(default_factory=DefectsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    recipe: str = "industrial-adapt"
    seed: int = 0


# mvtec: <root>/<category>/{train,test,ground_truth}; custom: <root>/{train/normal,test/normal,test/anomaly};
# manifest: `root` is a JSONL file of image_path/category/split/label/mask_path/group_id rows.
DATASET_NAMES = ("mvtec", "custom", "manifest")
# paths: images are decoded chunk by chunk as they are scored (bounded memory); numpy: all decoded once up front.
INPUT_MODES = ("paths", "numpy")
DEVICES = ("auto", "cpu", "cuda")
CALIBRATION_STRATEGIES = ("cross_fit", "holdout")


def _check_choice(value: str, choices: tuple[str, ...], path: str) -> None:
    if value not in choices:
        raise ConfigError(f"{path}: {value!r} is not one of {list(choices)}")


def _check_range(value: float, low: float, high: float, path: str, low_open: bool = False) -> None:
    # Written as "not inside" so that NaN, which compares false with everything, is refused too.
    inside = (low < value if low_open else low <= value) and value <= high
    if not inside:
        bracket = "(" if low_open else "["
        raise ConfigError(f"{path}: {value} is outside {bracket}{low}, {high}]")


def _check_plain_name(value: str, path: str) -> None:
    """A single file or folder name: no separator, not empty, not `.` or `..`."""
    if not value or value in (".", "..") or "/" in value or "\\" in value or "\x00" in value:
        raise ConfigError(f"{path}: {value!r} must be a plain name (no path separators, not '.' or '..'); "
                          "it names a file or folder inside the run directory")


def validate(config: WorkbenchConfig) -> WorkbenchConfig:
    """Checks values the types cannot express (choices and ranges)."""
    for path, choices in CHOICES.items():
        section, key = path.split(".")
        _check_choice(getattr(getattr(config, section), key), choices, path)
    # Both name a file or folder inside the run directory: a path there would write outside it.
    _check_plain_name(config.dataset.category, "dataset.category")
    _check_plain_name(config.training.checkpoint_name, "training.checkpoint_name")
    # A count of 0 or below would silently use fewer images than written (Python slicing), or none.
    for value, path in ((config.dataset.limit_train, "dataset.limit_train"), (config.dataset.limit_test, "dataset.limit_test"),
                        (config.training.epochs, "training.epochs")):
        if value is not None and value < 1:
            raise ConfigError(f"{path}: {value} must be at least 1 (or null)")
    if min(config.dataset.resize) < 32:
        raise ConfigError(f"dataset.resize: {list(config.dataset.resize)} is smaller than 32 pixels")
    if config.model.coreset_ratio is not None:
        _check_range(config.model.coreset_ratio, 0.0, 1.0, "model.coreset_ratio", low_open=True)
    if config.model.checkpoint_path is not None and (not config.model.checkpoint_path.strip()
                                                     or "\x00" in config.model.checkpoint_path):
        raise ConfigError(f"model.checkpoint_path: {config.model.checkpoint_path!r} is not a file path")
    if config.model.num_neighbors is not None and config.model.num_neighbors < 1:
        raise ConfigError("model.num_neighbors: must be at least 1")
    if config.model.contamination is not None:
        _check_range(config.model.contamination, 0.0, 0.5, "model.contamination", low_open=True)
    _check_range(config.calibration.holdout_fraction, 0.0, 0.9, "calibration.holdout_fraction", low_open=True)
    if config.calibration.folds < 2:
        raise ConfigError(f"calibration.folds: {config.calibration.folds} is below 2 (cross-fitting needs two folds)")
    if config.calibration.target_false_reject_rate is not None:
        _check_range(config.calibration.target_false_reject_rate, 0.0, 0.5, "calibration.target_false_reject_rate",
                     low_open=True)
    if config.calibration.image_quantile is not None:
        _check_range(config.calibration.image_quantile, 0.5, 1.0, "calibration.image_quantile", low_open=False)
        if not config.calibration.image_quantile < 1.0:
            raise ConfigError("calibration.image_quantile: 1.0 would reject no good part at all, which no finite "
                              "sample can show; state calibration.target_false_reject_rate instead")
    target_false_reject_rate(config)
    if config.calibration.pixel_quantile is not None:
        _check_range(config.calibration.pixel_quantile, 0.0, 1.0, "calibration.pixel_quantile")
    if config.model.batch_size < 1:
        raise ConfigError("model.batch_size: must be at least 1")
    if config.output.save_run and config.output.html_report and not config.output.per_image_jsonl:
        raise ConfigError("output.html_report: the report is drawn from the per-image records; set "
                          "output.per_image_jsonl: true, or output.html_report: false")
    # A NaN or infinite rate trains a network of NaNs without any error of its own.
    if config.training.lr is not None and not (math.isfinite(config.training.lr) and config.training.lr > 0):
        raise ConfigError(f"training.lr: {config.training.lr} is not a positive finite number")
    return config


DEFAULT_FALSE_REJECT_RATE = 0.01


def target_false_reject_rate(config: WorkbenchConfig) -> float:
    """The share of good parts the image threshold may reject, from whichever of its three spellings the
    config gives (calibration.target_false_reject_rate, model.contamination, calibration.image_quantile);
    two that disagree are refused."""
    given = {
        "calibration.target_false_reject_rate": config.calibration.target_false_reject_rate,
        "model.contamination": config.model.contamination,
        "calibration.image_quantile": None if config.calibration.image_quantile is None
        else round(1.0 - config.calibration.image_quantile, 12),
    }
    given = {key: value for key, value in given.items() if value is not None}
    if len(set(given.values())) > 1:
        raise ConfigError(f"{' and '.join(given)} set different false-reject rates ({given}); give one")
    return next(iter(given.values()), DEFAULT_FALSE_REJECT_RATE)


def parse_config(data: dict) -> WorkbenchConfig:
    """Applies the recipe's defaults under the given keys, then parses strictly and validates."""
    from pyimgano.recipes import get_recipe, merge_under  # recipes import ConfigError from here

    if not isinstance(data, dict):
        raise ConfigError("the config must be an object at the top level")
    recipe = data.get("recipe", WorkbenchConfig.recipe)
    if not isinstance(recipe, str):
        raise ConfigError(f"recipe: expected string, got {type(recipe).__name__} {recipe!r}")
    return validate(parse_section(WorkbenchConfig, merge_under(get_recipe(recipe).defaults, data)))


def load_config_file(path: str | Path) -> WorkbenchConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read config {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    if path.suffix.lower() in (".yml", ".yaml"):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path} is YAML but PyYAML is not installed: pip install PyYAML, or use JSON") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from exc
    return parse_config(data)


def input_contract(config: WorkbenchConfig) -> InputContract:
    """What the model sees: the dataset's resize, RGB uint8 NHWC with ImageNet normalisation in the graph."""
    height, width = config.dataset.resize
    return InputContract(height=height, width=width)


def to_json(config: WorkbenchConfig) -> dict:
    """The resolved config as plain JSON (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# Values a string key may take, by key path: used by validate() and written into the JSON Schema.
CHOICES: dict[str, tuple[str, ...]] = {
    "dataset.name": DATASET_NAMES,
    "dataset.input_mode": INPUT_MODES,
    "model.device": DEVICES,
    "calibration.strategy": CALIBRATION_STRATEGIES,
}


def _schema_for(tp: Any, path: str) -> dict:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return {"anyOf": [_schema_for(arg, path) for arg in typing.get_args(tp)]}
    if tp is type(None):
        return {"type": "null"}
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        properties, required = {}, []
        for spec in dataclasses.fields(tp):
            where = f"{path}.{spec.name}" if path else spec.name
            prop = _schema_for(hints[spec.name], where)
            if spec.default is not dataclasses.MISSING:
                prop["default"] = json.loads(json.dumps(spec.default))
            elif spec.default_factory is dataclasses.MISSING:
                required.append(spec.name)
            properties[spec.name] = prop
        schema = {"type": "object", "properties": properties, "additionalProperties": False}
        if required:
            schema["required"] = required
        return schema
    if origin in (list, tuple):
        args = typing.get_args(tp)
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            return {"type": "array", "prefixItems": [_schema_for(arg, path) for arg in args],
                    "minItems": len(args), "maxItems": len(args)}
        return {"type": "array", "items": _schema_for(args[0], path) if args else {}}
    schema = {"type": {str: "string", int: "integer", float: "number", bool: "boolean"}[tp]}
    if path in CHOICES:
        schema["enum"] = list(CHOICES[path])
    return schema


def json_schema() -> dict:
    """JSON Schema (2020-12) of the workbench config, generated from the dataclasses above."""
    from pyimgano.recipes import RECIPES

    schema = _schema_for(WorkbenchConfig, "")
    schema["properties"]["recipe"]["enum"] = list(RECIPES)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": "pyimgano workbench config", **schema}
