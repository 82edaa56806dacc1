"""ImageNet weights for the timm backbone inside anomalib's torch models, from a local file, never downloaded.

anomalib asks timm for pretrained weights and timm fetches them from Hugging Face at run time, which an
air-gapped machine cannot reach (these cannot: the attempt fails after a minute of retries with a
traceback). So the torch model is built with `pre_trained=False` and its backbone is given the weights
pyimgano's own backbones use: torchvision's ImageNet file in the torch hub cache, or `model.weights_path`
(models/features.read_weights, which names the missing file). The timm networks in TORCHVISION_TWINS are
torchvision's architectures under timm's module names, so their state dicts pair entry for entry, in
order, with equal shapes (mobilenetv2_100 given torchvision's mobilenet_v2 file computes torchvision's
outputs exactly). A file already in timm's names is loaded as it is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pyimgano.models.backbones import get_backbone_spec
from pyimgano.models.features import WeightsNotFoundError, read_weights
from pyimgano.runtime.bundle import sha256_file

# timm backbone -> pyimgano's torchvision backbone (models/backbones.py) with the same architecture.
TORCHVISION_TWINS = {"mobilenetv2_100": "mobilenet_v2", "resnet18": "resnet18", "wide_resnet50_2": "wide_resnet50_2"}


def load_backbone_weights(extractor: nn.Module, backbone: str, weights_path: str | None) -> str:
    """Loads ImageNet weights into anomalib's timm `features_only` network; returns the file's sha256."""
    twin = TORCHVISION_TWINS.get(backbone)
    if twin is not None:
        try:
            state, digest = read_weights(get_backbone_spec(twin), weights_path)
        except WeightsNotFoundError as exc:
            raise WeightsNotFoundError(f"timm's {backbone} is torchvision's {twin}: {exc}") from exc
        source = weights_path or f"torchvision's {twin} file"
    elif weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"model.weights_path {path} does not exist")
        digest, source = sha256_file(path), str(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        raise WeightsNotFoundError(
            f"pretrained {backbone} weights: pyimgano does not let timm download them; set model.weights_path to "
            f"a state dict of timm's {backbone} (saved where timm can download it), or use one of "
            f"{sorted(TORCHVISION_TWINS)} (torchvision's ImageNet file from the torch hub cache), or set "
            "model.pretrained to false for random weights")
    wanted = extractor.state_dict()
    if not set(wanted) <= set(state):
        state = _paired_with_timm(backbone, state, source)
    extractor.load_state_dict({name: state[name] for name in wanted}, strict=True)
    return digest


def _paired_with_timm(backbone: str, state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """`state` renamed to timm's full network's entry names, pairing them in order; refused unless every
    pair has the same shape."""
    import timm

    names = timm.create_model(backbone, pretrained=False).state_dict()
    pairs = list(zip(state.items(), names.items()))
    mismatch = next((f"{ours} {tuple(value.shape)} vs {theirs} {tuple(reference.shape)}"
                     for (ours, value), (theirs, reference) in pairs if value.shape != reference.shape), None)
    if len(state) != len(names) or mismatch is not None:
        raise WeightsNotFoundError(
            f"{source}: its {len(state)} entries are not timm's {backbone} ({len(names)} entries"
            f"{'; first differing pair ' + mismatch if mismatch else ''}): give timm's {backbone} state dict or "
            "torchvision's file for the same network")
    return {theirs: value for (_, value), (theirs, _) in pairs}
