"""Backbone records: which torchvision network, which layers, which ImageNet weights file, and the
parameters every backbone-based detector takes. Torch-free, so `--dry-run` and `--list-models` can
resolve a config without importing torch; the network itself is built in models/features.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyimgano.config import ConfigError, ModelConfig
from pyimgano.runtime.images import InputContract


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    # torchvision.models' builder of this network (looked up when the network is built).
    builder: str
    # torchvision's own file name for IMAGENET1K_V1; its hex part is a sha256 prefix.
    weights_file: str
    weights_url: str
    # Layers whose outputs PatchCore combines: mid-level features, as the paper's layer2 + layer3.
    default_layers: tuple[str, ...]

    @property
    def sha256_prefix(self) -> str:
        return self.weights_file.rsplit("-", 1)[1].split(".", 1)[0]


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            name="mobilenet_v2",
            builder="mobilenet_v2",
            weights_file="mobilenet_v2-b0353104.pth",
            weights_url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            # features.6 ends the stride-8 stage (32 ch), features.13 the stride-16 stage (96 ch).
            default_layers=("features.6", "features.13"),
        ),
        BackboneSpec(
            name="resnet18",
            builder="resnet18",
            weights_file="resnet18-f37072fd.pth",
            weights_url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            default_layers=("layer2", "layer3"),
        ),
        BackboneSpec(
            name="wide_resnet50_2",
            builder="wide_resnet50_2",
            weights_file="wide_resnet50_2-95faca4d.pth",
            weights_url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
            default_layers=("layer2", "layer3"),
        ),
    )
}

# ModelConfig keys every backbone-based model reads.
BACKBONE_KNOBS = frozenset({"backbone", "layers", "weights_path"})


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None


@dataclass(frozen=True)
class BackboneParams:
    """What every backbone-based detector is built from; a model's own parameters extend it."""

    backbone: str
    layers: tuple[str, ...]
    pretrained: bool
    weights_path: str | None
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seed: int
    batch_size: int


def chosen_preset(model: ModelConfig, presets: dict[str, dict]) -> dict:
    """The model config's preset (default industrial-balanced), refused by name when unknown."""
    preset_name = model.preset or "industrial-balanced"
    if preset_name not in presets:
        raise ConfigError(f"model.preset: {preset_name!r} is not one of {sorted(presets)}")
    return presets[preset_name]


def backbone_params(
    model: ModelConfig,
    contract: InputContract,
    seed: int,
    preset: dict,
    default_layers: dict[str, tuple[str, ...]] | None = None,
) -> dict:
    """BackboneParams' fields from the model config, the preset and the input contract: the config's own
    backbone and layers win, then the preset's backbone, then `default_layers` for it (else its spec's)."""
    backbone = model.backbone or preset["backbone"]
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: {backbone!r} is not one of {sorted(BACKBONES)}")
    fallback = (default_layers or {}).get(backbone, BACKBONES[backbone].default_layers)
    return {
        "backbone": backbone,
        "layers": tuple(model.layers) if model.layers else fallback,
        "pretrained": model.pretrained,
        "weights_path": model.weights_path,
        "input_hw": (contract.height, contract.width),
        "mean": contract.mean,
        "std": contract.std,
        "seed": seed,
        "batch_size": model.batch_size,
    }
