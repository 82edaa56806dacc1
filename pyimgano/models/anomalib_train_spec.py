"""vision_patchcore_anomalib / vision_padim_anomalib: fitted here through anomalib's own torch models (its
PatchcoreModel / PadimModel, not its Engine), then scored by the graph an imported checkpoint gets
(models/anomalib_graph.py). Torch-free; where anomalib is not installed, config validation (and so
`--dry-run`) refuses the model naming the package to install. models/anomalib_train.py holds the detector."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

from pyimgano.config import ConfigError, ModelConfig
from pyimgano.models.backbones import chosen_preset
from pyimgano.models.registry import Capabilities, ModelEntry, register_model
from pyimgano.runtime.images import InputContract

# anomalib 2.1 keeps PatchCore's embeddings in the torch model (`embedding_store`), which fitting relies on.
MIN_ANOMALIB = (2, 1)

# anomalib's names: timm backbones and their feature modules. The presets that must run anywhere use
# mobilenetv2_100, torchvision's mobilenet_v2 under timm's names, whose ImageNet weights are the file found
# offline here (../shared/WEIGHTS.md); its blocks.1 / blocks.2 / blocks.4 are mobilenet_v2's features.3 / .6 /
# .13, the layers of pyimgano's own presets. Weights are never downloaded (models/anomalib_train_weights.py).
PATCHCORE_ANOMALIB_PRESETS: dict[str, dict] = {
    "industrial-fast": {"backbone": "mobilenetv2_100", "layers": ["blocks.2", "blocks.4"], "coreset_ratio": 0.01,
                        "num_neighbors": 9},
    "industrial-balanced": {"backbone": "mobilenetv2_100", "layers": ["blocks.2", "blocks.4"], "coreset_ratio": 0.1,
                            "num_neighbors": 9},
    # anomalib's own defaults.
    "industrial-accurate": {"backbone": "wide_resnet50_2", "layers": ["layer2", "layer3"], "coreset_ratio": 0.1,
                            "num_neighbors": 9},
}
PADIM_ANOMALIB_PRESETS: dict[str, dict] = {
    "industrial-fast": {"backbone": "mobilenetv2_100", "layers": ["blocks.1", "blocks.2", "blocks.4"],
                        "n_features": 50},
    "industrial-balanced": {"backbone": "mobilenetv2_100", "layers": ["blocks.1", "blocks.2", "blocks.4"],
                            "n_features": 100},
    # anomalib's own defaults (n_features 100 is its default for resnet18).
    "industrial-accurate": {"backbone": "resnet18", "layers": ["layer1", "layer2", "layer3"], "n_features": 100},
}


@dataclass(frozen=True)
class AnomalibTrainParams:
    family: str
    backbone: str
    layers: tuple[str, ...]
    pretrained: bool
    # A torchvision or timm state dict of the backbone; None: torchvision's file in the torch hub cache.
    weights_path: str | None
    # PatchCore: coreset_ratio and num_neighbors; PaDiM: n_features (None for the others).
    coreset_ratio: float | None
    num_neighbors: int | None
    n_features: int | None
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seed: int
    batch_size: int


def require_anomalib(name: str) -> str:
    """anomalib's version, or a ConfigError naming the package to install."""
    if importlib.util.find_spec("anomalib") is None:
        raise ConfigError(
            f"model.name: {name} trains through anomalib, which is not installed: pip install anomalib (2.x); or "
            "train in anomalib and import its checkpoint with model.name vision_anomalib_checkpoint and "
            "model.checkpoint_path")
    version = importlib.metadata.version("anomalib")
    parts = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if len(parts) < 2 or not MIN_ANOMALIB <= parts < (3, 0):
        raise ConfigError(f"model.name: {name} needs anomalib >= {'.'.join(map(str, MIN_ANOMALIB))}, < 3; found "
                          f"{version}: pip install 'anomalib>=2.1,<3'")
    return version


def _resolver(family: str, name: str, presets: dict[str, dict]):
    def resolve(model: ModelConfig, contract: InputContract, seed: int) -> AnomalibTrainParams:
        require_anomalib(name)
        preset = chosen_preset(model, presets)
        patchcore = family == "patchcore"
        pick = lambda key: getattr(model, key) if getattr(model, key) is not None else preset.get(key)  # noqa: E731
        n_features = None if patchcore else pick("n_features")
        if n_features is not None and n_features < 1:
            raise ConfigError(f"model.n_features: must be at least 1, got {n_features}")
        return AnomalibTrainParams(
            family=family,
            backbone=model.backbone or preset["backbone"],
            layers=tuple(model.layers) if model.layers else tuple(preset["layers"]),
            pretrained=model.pretrained,
            weights_path=model.weights_path,
            coreset_ratio=pick("coreset_ratio") if patchcore else None,
            num_neighbors=pick("num_neighbors") if patchcore else None,
            n_features=n_features,
            input_hw=(contract.height, contract.width),
            mean=contract.mean,
            std=contract.std,
            seed=seed,
            batch_size=model.batch_size,
        )
    return resolve


PATCHCORE_ANOMALIB = register_model(
    ModelEntry(
        name="vision_patchcore_anomalib",
        description="PatchCore fitted through anomalib's torch model (needs anomalib), scored as anomalib scores it",
        presets=PATCHCORE_ANOMALIB_PRESETS,
        default_preset="industrial-balanced",
        detector="pyimgano.models.anomalib_train:VisionAnomalibTrained",
        resolve=_resolver("patchcore", "vision_patchcore_anomalib", PATCHCORE_ANOMALIB_PRESETS),
        capabilities=Capabilities(trains=False),
        knobs=frozenset({"backbone", "layers", "weights_path", "coreset_ratio", "num_neighbors"}),
        requires=("anomalib",),
    )
)

PADIM_ANOMALIB = register_model(
    ModelEntry(
        name="vision_padim_anomalib",
        description="PaDiM fitted through anomalib's torch model (needs anomalib), scored as anomalib scores it",
        presets=PADIM_ANOMALIB_PRESETS,
        default_preset="industrial-balanced",
        detector="pyimgano.models.anomalib_train:VisionAnomalibTrained",
        resolve=_resolver("padim", "vision_padim_anomalib", PADIM_ANOMALIB_PRESETS),
        capabilities=Capabilities(trains=False),
        knobs=frozenset({"backbone", "layers", "weights_path", "n_features"}),
        requires=("anomalib",),
    )
)
