"""Model registry: detectors looked up by name, each with presets and a one-line description.

Registering a name twice is an error, so two modules can never silently shadow each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from pyimgano.config import ConfigError, ModelConfig, WorkbenchConfig, input_contract
from pyimgano.models.autoencoder import AUTOENCODER_PRESETS, VisionAutoencoder, resolve_autoencoder
from pyimgano.models.backbones import (
    backbone_fields,
    get_backbone_spec,
    preset_and_backbone,
)
from pyimgano.models.base import GraphDetector
from pyimgano.models.padim import PADIM_PRESETS, VisionPadim, resolve_padim
from pyimgano.models.patchcore import PatchCoreParams, VisionPatchCore
from pyimgano.runtime.images import InputContract

# ModelConfig keys every model takes: the seed's keys and the scoring batch size.
COMMON_KNOBS = frozenset({"name", "device", "preset", "pretrained", "contamination", "batch_size"})
BACKBONE_KNOBS = frozenset({"backbone", "layers", "weights_path"})


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    presets: dict[str, dict]
    default_preset: str
    detector: type[GraphDetector]
    # The model config -> the detector's parameters (preset and backbone resolved, refused by name);
    # needs no weights, so --dry-run can run it.
    resolve: Callable[[ModelConfig, InputContract, int], object]
    # ModelConfig keys this model reads beyond COMMON_KNOBS; setting any other is an error naming the model.
    knobs: frozenset[str] = frozenset()

    @property
    def trains(self) -> bool:
        return self.detector.capabilities.trains

    def build(self, model: ModelConfig, contract: InputContract, seed: int, device: torch.device) -> GraphDetector:
        return self.detector(self.resolve(model, contract, seed), device)

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
        self.resolve(config.model, input_contract(config), config.seed)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(entry: ModelEntry) -> ModelEntry:
    if entry.name in _REGISTRY:
        raise ValueError(f"model {entry.name!r} is already registered")
    _REGISTRY[entry.name] = entry
    return entry


def get_model(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: {name!r} is not a registered model; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def list_models() -> list[ModelEntry]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


# Offline machines here carry only mobilenet_v2 ImageNet weights, so the presets that must run anywhere
# use it; `industrial-accurate` is the paper's wide_resnet50_2 setting for servers that have its weights.
PATCHCORE_PRESETS: dict[str, dict] = {
    "industrial-fast": {"backbone": "mobilenet_v2", "coreset_ratio": 0.01, "num_neighbors": 9, "embed_dim": 1024},
    "industrial-balanced": {"backbone": "mobilenet_v2", "coreset_ratio": 0.1, "num_neighbors": 9, "embed_dim": 1024},
    "industrial-accurate": {"backbone": "wide_resnet50_2", "coreset_ratio": 0.1, "num_neighbors": 9, "embed_dim": 1024},
}


def resolve_patchcore(model: ModelConfig, contract: InputContract, seed: int) -> PatchCoreParams:
    """Preset values fill only what the config leaves unset; explicit keys always win."""
    preset, backbone = preset_and_backbone(model, PATCHCORE_PRESETS)
    spec = get_backbone_spec(backbone)
    return PatchCoreParams(
        backbone=backbone,
        layers=tuple(model.layers) if model.layers else spec.default_layers,
        coreset_ratio=model.coreset_ratio if model.coreset_ratio is not None else preset["coreset_ratio"],
        num_neighbors=model.num_neighbors if model.num_neighbors is not None else preset["num_neighbors"],
        embed_dim=model.embed_dim if model.embed_dim is not None else preset["embed_dim"],
        **backbone_fields(model, contract, seed),
    )


register_model(
    ModelEntry(
        name="vision_patchcore",
        description="PatchCore: memory bank of ImageNet patch features, nearest-neighbour patch distance",
        presets=PATCHCORE_PRESETS,
        default_preset="industrial-balanced",
        detector=VisionPatchCore,
        resolve=resolve_patchcore,
        knobs=BACKBONE_KNOBS | {"coreset_ratio", "num_neighbors", "embed_dim"},
    )
)

register_model(
    ModelEntry(
        name="vision_padim",
        description="PaDiM: per-position Gaussian of ImageNet features (random channel subset), Mahalanobis distance",
        presets=PADIM_PRESETS,
        default_preset="industrial-balanced",
        detector=VisionPadim,
        resolve=resolve_padim,
        knobs=BACKBONE_KNOBS | {"n_features"},
    )
)

register_model(
    ModelEntry(
        name="vision_autoencoder",
        description="Convolutional autoencoder trained from scratch on normal images; reconstruction error",
        presets=AUTOENCODER_PRESETS,
        default_preset="industrial-balanced",
        detector=VisionAutoencoder,
        resolve=resolve_autoencoder,
        # its architecture's name may stand as the backbone (bundle names use it)
        knobs=frozenset({"backbone"}),
    )
)
