"""ImageNet backbones as feature extractors, written once for every backbone-based detector.

Weights are never downloaded at run time (factory networks are often air-gapped): they are looked up
in the torch hub cache or at an explicit path, and a missing file is an error naming exactly the file
and the folder to put it in.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.feature_extraction import create_feature_extractor

from pyimgano.models.backbones import BackboneParams, BackboneSpec, get_backbone_spec
from pyimgano.models.base import GraphDetector
from pyimgano.runtime.bundle import sha256_file


class WeightsNotFoundError(FileNotFoundError):
    """The pretrained weights file is not where it was looked for."""


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


def read_weights(spec: BackboneSpec, weights_path: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """The pretrained state dict found for `spec` (resolve_weights) and the file's sha256."""
    path = resolve_weights(spec, weights_path)
    digest = sha256_file(path)
    # torchvision's file names carry a sha256 prefix: a cached file that does not match is damaged.
    if path.name == spec.weights_file and not digest.startswith(spec.sha256_prefix):
        raise WeightsNotFoundError(f"{path} is damaged: its sha256 {digest[:16]}... does not start with {spec.sha256_prefix}")
    # weights_only=True: a state dict of tensors, never arbitrary pickled code.
    return torch.load(path, map_location="cpu", weights_only=True), digest


def build_feature_extractor(
    spec: BackboneSpec, layers: tuple[str, ...], pretrained: bool, weights_path: str | None, seed: int
) -> tuple[nn.Module, str | None]:
    """The backbone truncated to return `layers`, in eval mode, and the weights' sha256 (None if random).

    Random initialisation is seeded so that an unpretrained run is reproducible too.
    """
    torch.manual_seed(seed)
    network = getattr(torchvision.models, spec.builder)(weights=None)
    digest = None
    if pretrained:
        state, digest = read_weights(spec, weights_path)
        network.load_state_dict(state)
    known = {name for name, _ in network.named_modules()}
    missing = [layer for layer in layers if layer not in known]
    if missing:
        raise ValueError(f"backbone {spec.name} has no layer(s) {missing}; its defaults are {list(spec.default_layers)}")
    extractor = create_feature_extractor(network, return_nodes={layer: layer for layer in layers})
    return extractor.eval(), digest


class BackboneFeatures(nn.Module):
    """uint8 NHWC images -> {layer: feature map}: the contract's normalisation, then the truncated backbone.

    A half-precision extractor gets its input cast once, after the float32 normalisation."""

    def __init__(self, extractor: nn.Module, layers: tuple[str, ...], mean, std) -> None:
        super().__init__()
        self.extractor = extractor
        self.layers = layers
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    @property
    def compute_dtype(self) -> torch.dtype:
        return next(self.extractor.parameters()).dtype

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) / self.std
        if self.compute_dtype != torch.float32:
            x = x.to(self.compute_dtype)
        return self.extractor(x)


class BackboneDetector(GraphDetector):
    """A detector on ImageNet backbone features: builds them from BackboneParams and checks that a
    checkpoint was fitted on the same weights."""

    params: BackboneParams

    def _backbone_features(self) -> BackboneFeatures:
        params = self.params
        extractor, self.weights_sha256 = build_feature_extractor(
            get_backbone_spec(params.backbone), params.layers, params.pretrained, params.weights_path, params.seed
        )
        return BackboneFeatures(extractor, params.layers, params.mean, params.std)

    @torch.no_grad()
    def _probe(self, features: BackboneFeatures, input_hw: tuple[int, int]) -> tuple[int, tuple[int, int]]:
        """Total channels over the layers, and the first layer's grid for an input of `input_hw`."""
        probe = features.extractor(torch.zeros(1, 3, *input_hw))
        first = probe[self.params.layers[0]]
        return sum(int(probe[layer].shape[1]) for layer in self.params.layers), (int(first.shape[2]), int(first.shape[3]))

    def check_checkpoint_weights(self, meta: dict) -> None:
        if meta.get("weights_sha256") != self.weights_sha256:
            raise ValueError(
                f"checkpoint was fitted on backbone weights sha256 {meta.get('weights_sha256')}, "
                f"but the weights found now have {self.weights_sha256}"
            )
