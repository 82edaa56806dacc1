"""The autoencoder's registration: its parameters, presets and capabilities, torch-free
(models/autoencoder.py holds the detector)."""

from __future__ import annotations

from dataclasses import dataclass

from pyimgano.config import ConfigError, ModelConfig
from pyimgano.models.backbones import chosen_preset
from pyimgano.models.registry import Capabilities, ModelEntry, register_model
from pyimgano.runtime.images import InputContract

DEFAULT_EPOCHS = 5
DEFAULT_LR = 1e-3
ARCHITECTURE = "conv_autoencoder"

AUTOENCODER_PRESETS: dict[str, dict] = {
    "industrial-fast": {"channels": (32, 64, 128, 128), "epochs": 3, "lr": 1e-3},
    "industrial-balanced": {"channels": (32, 64, 128, 128), "epochs": DEFAULT_EPOCHS, "lr": DEFAULT_LR},
}


@dataclass(frozen=True)
class AutoencoderParams:
    channels: tuple[int, ...]
    # The preset's training length and rate; the run's training.epochs / training.lr override them at fit.
    epochs: int
    lr: float
    input_hw: tuple[int, int]
    seed: int
    batch_size: int


def resolve_autoencoder(model: ModelConfig, contract: InputContract, seed: int) -> AutoencoderParams:
    """The network is trained from scratch: a backbone other than its own architecture's name, or layers,
    are refused rather than silently ignored."""
    preset = chosen_preset(model, AUTOENCODER_PRESETS)
    if model.backbone not in (None, ARCHITECTURE):
        raise ConfigError(f"model.backbone: vision_autoencoder trains its own network; {model.backbone!r} does not apply")
    if model.layers:
        raise ConfigError("model.layers: vision_autoencoder has no backbone layers to choose")
    return AutoencoderParams(
        channels=tuple(preset["channels"]),
        epochs=preset["epochs"],
        lr=preset["lr"],
        input_hw=(contract.height, contract.width),
        seed=seed,
        batch_size=model.batch_size,
    )


AUTOENCODER = register_model(
    ModelEntry(
        name="vision_autoencoder",
        description="Convolutional autoencoder trained from scratch on normal images; reconstruction error",
        presets=AUTOENCODER_PRESETS,
        default_preset="industrial-balanced",
        detector="pyimgano.models.autoencoder:VisionAutoencoder",
        resolve=resolve_autoencoder,
        capabilities=Capabilities(trains=True),
        # its architecture's name may stand as the backbone (bundle names use it)
        knobs=frozenset({"backbone"}),
    )
)
