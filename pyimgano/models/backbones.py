"""Backbone records: which torchvision network, which layers, which ImageNet weights file.

Weights are never downloaded at run time (factory networks are often air-gapped): they are looked up
in the torch hub cache or at an explicit path, and a missing file is an error naming exactly the file
and the folder to put it in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from pyimgano.runtime.bundle import sha256_file


class WeightsNotFoundError(FileNotFoundError):
    """The pretrained weights file is not where it was looked for."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    builder: Callable[..., torch.nn.Module]
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
            builder=torchvision.models.mobilenet_v2,
            weights_file="mobilenet_v2-b0353104.pth",
            weights_url="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth",
            # features.6 ends the stride-8 stage (32 ch), features.13 the stride-16 stage (96 ch).
            default_layers=("features.6", "features.13"),
        ),
        BackboneSpec(
            name="resnet18",
            builder=torchvision.models.resnet18,
            weights_file="resnet18-f37072fd.pth",
            weights_url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
            default_layers=("layer2", "layer3"),
        ),
        BackboneSpec(
            name="wide_resnet50_2",
            builder=torchvision.models.wide_resnet50_2,
            weights_file="wide_resnet50_2-95faca4d.pth",
            weights_url="https://download.pytorch.org/models/wide_resnet50_2-95faca4d.pth",
            default_layers=("layer2", "layer3"),
        ),
    )
}


def get_backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}") from None


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(spec: BackboneSpec, weights_path: str | None) -> Path:
    """The weights file to load: an explicit path, else torchvision's cache file name."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.weights_path {path} does not exist")
        return path
    path = hub_checkpoint_dir() / spec.weights_file
    if not path.is_file():
        raise WeightsNotFoundError(
            f"pretrained {spec.name} weights not found: expected the file {spec.weights_file} in "
            f"{path.parent} (the torch hub cache; TORCH_HOME moves it). Download {spec.weights_url} "
            f"there on a machine with internet, or set model.weights_path to the file, or set "
            f"model.pretrained to false for random weights."
        )
    return path


def build_feature_extractor(
    spec: BackboneSpec, layers: tuple[str, ...], pretrained: bool, weights_path: str | None, seed: int
) -> tuple[torch.nn.Module, str | None]:
    """The backbone truncated to return `layers`, in eval mode, and the weights' sha256 (None if random).

    Random initialisation is seeded so that an unpretrained run is reproducible too.
    """
    torch.manual_seed(seed)
    network = spec.builder(weights=None)
    digest = None
    if pretrained:
        path = resolve_weights(spec, weights_path)
        digest = sha256_file(path)
        # torchvision's file names carry a sha256 prefix: a cached file that does not match is damaged.
        if path.name == spec.weights_file and not digest.startswith(spec.sha256_prefix):
            raise WeightsNotFoundError(f"{path} is damaged: its sha256 {digest[:16]}... does not start with {spec.sha256_prefix}")
        # weights_only=True: a state dict of tensors, never arbitrary pickled code.
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state)
    known = {name for name, _ in network.named_modules()}
    missing = [layer for layer in layers if layer not in known]
    if missing:
        raise ValueError(f"backbone {spec.name} has no layer(s) {missing}; its defaults are {list(spec.default_layers)}")
    extractor = create_feature_extractor(network, return_nodes={layer: layer for layer in layers})
    return extractor.eval(), digest


def preset_and_backbone(model, presets: dict[str, dict]) -> tuple[dict, str]:
    """The model config's preset (default industrial-balanced) and its backbone, the config's own winning."""
    from pyimgano.config import ConfigError

    preset_name = model.preset or "industrial-balanced"
    if preset_name not in presets:
        raise ConfigError(f"model.preset: {preset_name!r} is not one of {sorted(presets)}")
    preset = presets[preset_name]
    backbone = model.backbone or preset["backbone"]
    if backbone not in BACKBONES:
        raise ConfigError(f"model.backbone: {backbone!r} is not one of {sorted(BACKBONES)}")
    return preset, backbone


def backbone_fields(model, contract, seed: int) -> dict:
    """The parameters every backbone-based detector takes from the model config and the input contract."""
    return {
        "pretrained": model.pretrained,
        "weights_path": model.weights_path,
        "input_hw": (contract.height, contract.width),
        "mean": contract.mean,
        "std": contract.std,
        "seed": seed,
        "batch_size": model.batch_size,
    }
