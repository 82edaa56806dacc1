"""Model registry: detectors looked up by name, each with presets, capabilities and a one-line description.

Each model registers itself beside its code, in a torch-free `<model>_spec.py` module (parameters,
presets, resolution of the config, capabilities); the registry imports every such module of this
package on first use, and the detector class, which needs torch, only when a detector is built. So
`--dry-run`, `--list-models` and config validation never import torch. Registering a name twice is an
error, so two modules can never silently shadow each other.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from pyimgano.config import CalibrationConfig, ConfigError, ModelConfig, WorkbenchConfig, input_contract
from pyimgano.runtime.images import InputContract

# ModelConfig keys every model takes: the seed's keys and the scoring batch size.
COMMON_KNOBS = frozenset({"name", "device", "preset", "pretrained", "contamination", "batch_size"})
SPEC_MODULE_SUFFIX = "_spec"


@dataclass(frozen=True)
class Capabilities:
    # `fit` runs a training loop that takes epochs and a learning rate (training.enabled must be true).
    trains: bool = False
    # Graph precisions the exporter may ask for (`graph(precision)`).
    precisions: tuple[str, ...] = ("fp32",)
    # `reduce_bank(rows)` keeps a coreset of a fitted memory bank (`pyimgano-export --bank-rows`).
    reducible_bank: bool = False
    # The fitted state is read from model.checkpoint_path (fitted by another library) when the detector is
    # built: nothing is fitted here, so calibration cannot cross-fit (that refits on folds) and every
    # train/good image is a held-out calibration image.
    imported: bool = False


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    presets: dict[str, dict]
    default_preset: str
    # "module:Class" of the GraphDetector, imported when a detector is built.
    detector: str
    # The model config -> the detector's parameters (preset and backbone resolved, refused by name);
    # needs no torch and no weights, so --dry-run can run it.
    resolve: Callable[[ModelConfig, InputContract, int], object]
    capabilities: Capabilities
    # ModelConfig keys this model reads beyond COMMON_KNOBS; setting any other is an error naming the model.
    knobs: frozenset[str] = frozenset()
    # Import packages beyond the base install that the model needs; its `resolve` refuses it, naming the
    # package to install, where one is missing.
    requires: tuple[str, ...] = ()

    @property
    def trains(self) -> bool:
        return self.capabilities.trains

    def detector_class(self) -> type:
        module_name, _, class_name = self.detector.partition(":")
        return getattr(importlib.import_module(module_name), class_name)

    def build(self, model: ModelConfig, contract: InputContract, seed: int, device: Any):
        """The unfitted detector (a GraphDetector) on a torch device."""
        return self.detector_class()(self.resolve(model, contract, seed), device)

    def validate(self, config: WorkbenchConfig) -> None:
        """Everything the real run would refuse about the model, before anything is written: knobs the
        model does not use, the training switch against what the model does, preset and backbone."""
        defaults = ModelConfig()
        for spec in dataclasses.fields(ModelConfig):
            if spec.name in COMMON_KNOBS or spec.name in self.knobs:
                continue
            if getattr(config.model, spec.name) != getattr(defaults, spec.name):
                raise ConfigError(f"model.{spec.name}: {self.name} does not use it (its keys: "
                                  f"{sorted(COMMON_KNOBS | self.knobs)}); remove it")
        if self.trains and not config.training.enabled:
            raise ConfigError(f"training.enabled: {self.name} trains its network; set it true (with "
                              "training.epochs and training.lr, or see recipe micro-finetune-autoencoder)")
        if not self.trains and config.training.enabled:
            raise ConfigError(f"training.enabled: {self.name} does not train (nothing takes epochs or lr); "
                              "set it false")
        if self.capabilities.imported:
            _check_imported_calibration(self.name, config)
        self.resolve(config.model, input_contract(config), config.seed)


def _check_imported_calibration(name: str, config: WorkbenchConfig) -> None:
    if config.calibration.strategy != "holdout":
        raise ConfigError(
            f"calibration.strategy: {config.calibration.strategy} refits the model on folds of train/good, but "
            f"{name} is fitted already (its state is the checkpoint's, fixed); set calibration.strategy to "
            "holdout: every train/good image then calibrates the thresholds, so give the dataset good images "
            "the checkpoint was not fitted on (docs/MODELS.md)")
    if config.calibration.holdout_fraction != CalibrationConfig().holdout_fraction:
        raise ConfigError(f"calibration.holdout_fraction: {name} fits nothing here, so every train/good image "
                          "calibrates; remove holdout_fraction")


_REGISTRY: dict[str, ModelEntry] = {}
_discovered = False


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def _discover() -> None:
    """Imports every `*_spec` module of this package once: each registers its model."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(__package__)
    for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if module.name.endswith(SPEC_MODULE_SUFFIX):
            importlib.import_module(f"{__package__}.{module.name}")


def get_model(name: str) -> ModelEntry:
    _discover()
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: {name!r} is not a registered model; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_models() -> list[ModelEntry]:
    _discover()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
