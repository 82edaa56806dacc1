"""Model registry: detectors looked up by name, each with presets and a one-line description.

Registering a name twice is an error, so two modules can never silently shadow each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from pyimgano.config import ConfigError, ModelConfig
from pyimgano.models.autoencoder import AUTOENCODER_PRESETS, build_autoencoder
from pyimgano.models.backbones import (
    backbone_fields,
    get_backbone_spec,
    preset_and_backbone,
)
from pyimgano.models.padim import PADIM_PRESETS, build_padim
from pyimgano.models.patchcore import PatchCoreParams, VisionPatchCore
from pyimgano.runtime.images import InputContract


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    presets: dict[str, dict]
    default_preset: str
    build: Callable[[ModelConfig, InputContract, int, torch.device], object]
    # Whether `fit` runs a training loop (takes epochs / lr); mirrors the detector class's `trains`.
    trains: bool = False


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


def _build_patchcore(model: ModelConfig, contract: InputContract, seed: int, device: torch.device) -> VisionPatchCore:
    return VisionPatchCore(resolve_patchcore(model, contract, seed), device)


register_model(
    ModelEntry(
        name="vision_patchcore",
        description="PatchCore: memory bank of ImageNet patch features, nearest-neighbour patch distance",
        presets=PATCHCORE_PRESETS,
        default_preset="industrial-balanced",
        build=_build_patchcore,
    )
)

register_model(
    ModelEntry(
        name="vision_padim",
        description="PaDiM: per-position Gaussian of ImageNet features (random channel subset), Mahalanobis distance",
        presets=PADIM_PRESETS,
        default_preset="industrial-balanced",
        build=build_padim,
        trains=False,
    )
)

register_model(
    ModelEntry(
        name="vision_autoencoder",
        description="Convolutional autoencoder trained from scratch on normal images; reconstruction error",
        presets=AUTOENCODER_PRESETS,
        default_preset="industrial-balanced",
        build=build_autoencoder,
        trains=True,
    )
)
