"""PaDiM's registration: its parameters, presets and capabilities, torch-free (models/padim.py holds
the detector)."""

from __future__ import annotations

from dataclasses import dataclass

from pyimgano.config import ConfigError, ModelConfig
from pyimgano.models.backbones import BACKBONE_KNOBS, BackboneParams, backbone_params, chosen_preset
from pyimgano.models.registry import Capabilities, ModelEntry, register_model
from pyimgano.runtime.images import InputContract

# The paper combines the first three stages of the network (ResNet layer1..layer3).
PADIM_DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    # features.3 ends the stride-4 stage (24 ch), features.6 stride 8 (32 ch), features.13 stride 16 (96 ch).
    "mobilenet_v2": ("features.3", "features.6", "features.13"),
    "resnet18": ("layer1", "layer2", "layer3"),
    "wide_resnet50_2": ("layer1", "layer2", "layer3"),
}

PADIM_PRESETS: dict[str, dict] = {
    "industrial-fast": {"backbone": "mobilenet_v2", "n_features": 50},
    "industrial-balanced": {"backbone": "mobilenet_v2", "n_features": 100},
}


@dataclass(frozen=True)
class PadimParams(BackboneParams):
    n_features: int


def resolve_padim(model: ModelConfig, contract: InputContract, seed: int) -> PadimParams:
    """Preset values fill only what the config leaves unset; explicit keys always win."""
    preset = chosen_preset(model, PADIM_PRESETS)
    n_features = model.n_features if model.n_features is not None else preset["n_features"]
    if int(n_features) < 1:
        raise ConfigError(f"model.n_features: must be at least 1, got {n_features}")
    return PadimParams(n_features=int(n_features), **backbone_params(model, contract, seed, preset, PADIM_DEFAULT_LAYERS))


PADIM = register_model(
    ModelEntry(
        name="vision_padim",
        description="PaDiM: per-position Gaussian of ImageNet features (random channel subset), Mahalanobis distance",
        presets=PADIM_PRESETS,
        default_preset="industrial-balanced",
        detector="pyimgano.models.padim:VisionPadim",
        resolve=resolve_padim,
        # PaDiM estimates Gaussians; it has no training loop (fit ignores epochs and lr).
        capabilities=Capabilities(trains=False),
        knobs=BACKBONE_KNOBS | {"n_features"},
    )
)
