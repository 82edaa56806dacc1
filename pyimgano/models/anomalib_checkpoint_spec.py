"""vision_anomalib_checkpoint's registration, torch-free: an anomalib 2.x PatchCore or PaDiM checkpoint,
read and checked here (models/anomalib_format.py), so `--dry-run` refuses a bad file before anything is
written; models/anomalib_checkpoint.py holds the detector."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from pyimgano.config import ConfigError, ModelConfig
from pyimgano.models.anomalib_format import AnomalibCheckpoint, AnomalibCheckpointError, read_checkpoint
from pyimgano.models.registry import Capabilities, ModelEntry, register_model
from pyimgano.runtime.images import InputContract

NAME = "vision_anomalib_checkpoint"


@dataclass(frozen=True)
class AnomalibCheckpointParams:
    checkpoint: AnomalibCheckpoint
    # The bundle's input size (dataset.resize); the graph resizes to the checkpoint's own size as anomalib did.
    input_hw: tuple[int, int]
    seed: int
    batch_size: int


def resolve_anomalib_checkpoint(model: ModelConfig, contract: InputContract, seed: int) -> AnomalibCheckpointParams:
    """Everything comes from the checkpoint: a preset or unpretrained weights would be silently ignored, so
    they are refused."""
    if not model.checkpoint_path:
        raise ConfigError(f"model.checkpoint_path: {NAME} imports an anomalib checkpoint; give its path (the .ckpt "
                          "anomalib wrote under weights/lightning/)")
    if model.preset is not None:
        raise ConfigError(f"model.preset: {NAME} takes its settings from the checkpoint; remove preset")
    if not model.pretrained:
        raise ConfigError(f"model.pretrained: {NAME} uses the checkpoint's own backbone weights; remove pretrained")
    if importlib.util.find_spec("timm") is None:
        raise ConfigError(f"model.name: {NAME} rebuilds the backbone with timm, which is not installed: "
                          "pip install 'pyimgano[anomalib]'")
    checkpoint = read_checkpoint(model.checkpoint_path)
    transform = checkpoint.model.transform
    # The manifest states the normalisation; a checkpoint normalised otherwise would make it wrong.
    if any(abs(a - b) > 1e-6 for a, b in zip(transform.mean + transform.std, contract.mean + contract.std)):
        raise AnomalibCheckpointError(
            f"{checkpoint.path}: its Normalize (mean {list(transform.mean)}, std {list(transform.std)}) is not the "
            f"input contract's (mean {list(contract.mean)}, std {list(contract.std)})")
    return AnomalibCheckpointParams(checkpoint=checkpoint, input_hw=(contract.height, contract.width), seed=seed,
                                    batch_size=model.batch_size)


ANOMALIB_CHECKPOINT = register_model(
    ModelEntry(
        name=NAME,
        description="An anomalib 2.x PatchCore or PaDiM checkpoint, imported: its backbone weights and memory bank "
                    "(or Gaussians) scored as anomalib scores them",
        presets={},
        default_preset="none",
        detector="pyimgano.models.anomalib_checkpoint:VisionAnomalibCheckpoint",
        resolve=resolve_anomalib_checkpoint,
        capabilities=Capabilities(trains=False, imported=True),
        knobs=frozenset({"checkpoint_path"}),
        requires=("timm",),
    )
)
