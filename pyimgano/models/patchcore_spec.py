"""PatchCore's registration: its parameters, presets and capabilities, torch-free (models/patchcore.py
holds the detector)."""

from __future__ import annotations

from dataclasses import dataclass

from pyimgano.config import ModelConfig
from pyimgano.models.backbones import BACKBONE_KNOBS, BackboneParams, backbone_params, chosen_preset
from pyimgano.models.registry import Capabilities, ModelEntry, register_model
from pyimgano.runtime.images import InputContract

# Offline machines here carry only mobilenet_v2 ImageNet weights, so the presets that must run anywhere
# use it; `industrial-accurate` is the paper's wide_resnet50_2 setting for servers that have its weights.
PATCHCORE_PRESETS: dict[str, dict] = {
    "industrial-fast": {"backbone": "mobilenet_v2", "coreset_ratio": 0.01, "num_neighbors": 9, "embed_dim": 1024},
    "industrial-balanced": {"backbone": "mobilenet_v2", "coreset_ratio": 0.1, "num_neighbors": 9, "embed_dim": 1024},
    "industrial-accurate": {"backbone": "wide_resnet50_2", "coreset_ratio": 0.1, "num_neighbors": 9, "embed_dim": 1024},
}


@dataclass(frozen=True)
class PatchCoreParams(BackboneParams):
    coreset_ratio: float
    num_neighbors: int
    embed_dim: int


def resolve_patchcore(model: ModelConfig, contract: InputContract, seed: int) -> PatchCoreParams:
    """Preset values fill only what the config leaves unset; explicit keys always win."""
    preset = chosen_preset(model, PATCHCORE_PRESETS)
    return PatchCoreParams(
        coreset_ratio=model.coreset_ratio if model.coreset_ratio is not None else preset["coreset_ratio"],
        num_neighbors=model.num_neighbors if model.num_neighbors is not None else preset["num_neighbors"],
        embed_dim=model.embed_dim if model.embed_dim is not None else preset["embed_dim"],
        **backbone_params(model, contract, seed, preset),
    )


PATCHCORE = register_model(
    ModelEntry(
        name="vision_patchcore",
        description="PatchCore: memory bank of ImageNet patch features, nearest-neighbour patch distance",
        presets=PATCHCORE_PRESETS,
        default_preset="industrial-balanced",
        detector="pyimgano.models.patchcore:VisionPatchCore",
        resolve=resolve_patchcore,
        # The memory bank is collected, not trained: `fit` takes no epochs or learning rate. int8 is the
        # exporter's rewrite of the fp32 graph, whose bank search it finds by BANK_SEARCH_PREFIX.
        capabilities=Capabilities(trains=False, precisions=("fp32", "fp16", "int8"), reducible_bank=True),
        knobs=BACKBONE_KNOBS | {"coreset_ratio", "num_neighbors", "embed_dim"},
    )
)
