"""A small convolutional autoencoder trained from scratch on the normal images: the reconstruction error
is the anomaly signal.

Unlike PatchCore and PaDiM this model uses no ImageNet backbone, so its input is NOT normalised with
the contract's ImageNet mean/std: the graph scales uint8 pixels to [0, 1] (x / 255) and the decoder
ends in a sigmoid, so input and reconstruction live on the same [0, 1] scale. (The contract's mean/std
are still recorded in a bundle's manifest; for this model they describe nothing the graph does.)

Network: four stride-2 conv blocks 3 -> 32 -> 64 -> 128 -> 128 (4x4 kernels, BatchNorm, ReLU), the
mirror image in transposed convolutions, and a sigmoid. Inputs whose sides are not multiples of 16 are
edge-padded to the next multiple inside the graph and the reconstruction is cropped back.

Training: MSE, Adam (`lr`, default 1e-3), `epochs` (default 5), batches of `batch_size` images drawn
in a seeded shuffle; weights are initialised under `torch.manual_seed(seed)` (in a forked RNG, so the
global generator is untouched), so two fits with the same seed give identical weights on the CPU.

Map: per-pixel squared error averaged over the channels, smoothed with a sigma-4 Gaussian (mirrored
borders). Image score: the mean of the top 1% of map values (`topk`, exportable). Units: squared error
of [0, 1] intensities.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyimgano.models.autoencoder_spec import ARCHITECTURE, AUTOENCODER, AutoencoderParams
from pyimgano.models.base import GraphDetector
from pyimgano.models.maps import MapSmoother

# The image score averages this share of the highest map values.
TOP_FRACTION = 0.01
# Total down-sampling of the encoder (four stride-2 blocks): input sides are padded to a multiple of it.
STRIDE = 16


class ConvAutoencoder(nn.Module):
    """[B, 3, H, W] in [0, 1] -> reconstruction [B, 3, H, W] in (0, 1); H and W multiples of 16."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        widths = (3, *channels)
        encoder: list[nn.Module] = []
        for cin, cout in zip(widths[:-1], widths[1:]):
            encoder += [nn.Conv2d(cin, cout, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        decoder: list[nn.Module] = []
        reverse = widths[::-1]
        for i, (cin, cout) in enumerate(zip(reverse[:-1], reverse[1:])):
            last = i == len(reverse) - 2
            decoder.append(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1, bias=last))
            decoder += [nn.Sigmoid()] if last else [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _padding(input_hw: tuple[int, int]) -> tuple[int, int]:
    height, width = input_hw
    return (-height) % STRIDE, (-width) % STRIDE


def _to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float [B, 3, H, W] in [0, 1]."""
    return images.permute(0, 3, 1, 2).to(torch.float32) / 255.0


def _reconstruct(network: nn.Module, x: torch.Tensor, input_hw: tuple[int, int]) -> torch.Tensor:
    pad_h, pad_w = _padding(input_hw)
    if pad_h or pad_w:
        padded = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        return network(padded)[:, :, : input_hw[0], : input_hw[1]]
    return network(x)


class AutoencoderGraph(nn.Module):
    """forward(uint8 [B,H,W,3]) -> (scores [B], maps [B,H,W]), in squared-error units of [0, 1] pixels."""

    def __init__(self, network: ConvAutoencoder, input_hw: tuple[int, int]):
        super().__init__()
        self.network = network
        self.input_hw = input_hw
        self.top_k = max(1, int(math.ceil(TOP_FRACTION * input_hw[0] * input_hw[1])))
        self.smooth = MapSmoother(input_hw)

    def error_maps(self, images: torch.Tensor) -> torch.Tensor:
        """[B, H, W] per-pixel squared error, mean over channels, before smoothing."""
        x = _to_unit(images)
        recon = _reconstruct(self.network, x, self.input_hw)
        return (recon - x).pow(2).mean(dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        errors = self.error_maps(images)
        maps = self.smooth(errors.unsqueeze(1))
        top = maps.reshape(maps.shape[0], -1).topk(self.top_k, dim=1).values
        return top.mean(dim=1), maps


class VisionAutoencoder(GraphDetector):
    """Convolutional autoencoder detector. Scores: higher = more anomalous (reconstruction error)."""

    capabilities = AUTOENCODER.capabilities
    fitted_attribute = "train_losses_"

    def __init__(self, params: AutoencoderParams, device: torch.device):
        self.params = params
        self.device = device
        self.network = self._new_network()

    def _new_network(self) -> ConvAutoencoder:
        # Seeded initialisation without disturbing the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.params.seed)
            network = ConvAutoencoder(self.params.channels)
        return network.to(self.device)

    @property
    def parameter_count(self) -> int:
        return int(sum(p.numel() for p in self.network.parameters()))

    def fit(self, images: np.ndarray, epochs: int | None = None, lr: float | None = None) -> "VisionAutoencoder":
        """Trains a freshly initialised network with MSE for `epochs` (default: params) at `lr` (default: params)."""
        if len(images) < 1:
            raise ValueError("the autoencoder needs at least one training image")
        epochs = self.params.epochs if epochs is None else int(epochs)
        lr = self.params.lr if lr is None else float(lr)
        if epochs < 1 or not lr > 0.0:
            raise ValueError(f"epochs must be >= 1 and lr > 0, got epochs={epochs}, lr={lr}")
        self.network = self._new_network()
        optimizer = torch.optim.Adam(self.network.parameters(), lr=lr)
        generator = torch.Generator(device="cpu").manual_seed(self.params.seed)
        data = torch.from_numpy(np.ascontiguousarray(images))
        count = len(images)
        batch_size = self.params.batch_size
        # A last batch of one image would give BatchNorm a single sample; fold it into the previous batch.
        losses: list[float] = []
        self.network.train()
        for _ in range(epochs):
            order = torch.randperm(count, generator=generator)
            starts = list(range(0, count, batch_size))
            if len(starts) > 1 and count - starts[-1] == 1:
                starts.pop()
            total = 0.0
            for i, start in enumerate(starts):
                stop = starts[i + 1] if i + 1 < len(starts) else count
                x = _to_unit(data[order[start:stop]].to(self.device))
                recon = _reconstruct(self.network, x, self.params.input_hw)
                loss = F.mse_loss(recon, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * (stop - start)
            losses.append(total / count)
        self._recalibrate_batchnorm(data)
        self.network.eval()
        self.train_losses_ = losses
        self.epochs_ = epochs
        self.lr_ = lr
        self.images_seen_ = count
        return self

    @torch.no_grad()
    def _recalibrate_batchnorm(self, data: torch.Tensor) -> None:
        """BatchNorm running statistics recomputed with the final weights, as an exact average over the
        training images (momentum None). A few dozen optimiser steps leave the momentum-0.1 running
        averages far from the final weights' statistics, so eval-mode reconstructions would differ from
        what training optimised."""
        norms = [m for m in self.network.modules() if isinstance(m, nn.BatchNorm2d)]
        saved = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        self.network.train()
        for start in range(0, len(data), self.params.batch_size):
            x = _to_unit(data[start : start + self.params.batch_size].to(self.device))
            if len(x) > 1 or len(data) == 1:
                _reconstruct(self.network, x, self.params.input_hw)
        for m, momentum in zip(norms, saved):
            m.momentum = momentum

    def graph(self, precision: str = "fp32") -> AutoencoderGraph:
        self.check_fitted("build its graph")
        self.check_precision(precision)
        self.network.eval()
        return AutoencoderGraph(self.network, self.params.input_hw).to(self.device).eval()

    def describe(self) -> dict:
        fitted = self.fitted
        return {
            # No pretrained backbone: the architecture's name stands in (bundle names use this key).
            "backbone": ARCHITECTURE,
            "channels": list(self.params.channels),
            "parameters": self.parameter_count,
            "input_hw": list(self.params.input_hw),
            "input_normalisation": "x / 255 (no ImageNet mean/std)",
            "epochs": getattr(self, "epochs_", self.params.epochs),
            "lr": getattr(self, "lr_", self.params.lr),
            "batch_size": self.params.batch_size,
            "top_fraction": TOP_FRACTION,
            "score_units": "squared error of [0, 1] pixels; image score = mean of the top 1% of the smoothed map",
            "images_seen": getattr(self, "images_seen_", None),
            "train_losses": list(getattr(self, "train_losses_", [])),
            "trained": fitted,
            "pretrained": False,
            "weights_sha256": None,
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        self.check_fitted("save its state")
        arrays = {key: value.detach().cpu().numpy() for key, value in self.network.state_dict().items()}
        return arrays, {"model": "vision_autoencoder", **self.describe()}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> "VisionAutoencoder":
        if meta.get("model", "vision_autoencoder") != "vision_autoencoder":
            raise ValueError(f"checkpoint holds model {meta.get('model')!r}, not vision_autoencoder")
        network = self._new_network()
        expected = network.state_dict()
        if set(arrays) != set(expected):
            missing = sorted(set(expected) - set(arrays))
            extra = sorted(set(arrays) - set(expected))
            raise ValueError(f"checkpoint tensors do not fit this network: missing {missing}, unexpected {extra}")
        for key, value in expected.items():
            if tuple(arrays[key].shape) != tuple(value.shape):
                raise ValueError(f"checkpoint tensor {key} has shape {arrays[key].shape}, this network needs {tuple(value.shape)}")
        network.load_state_dict({key: torch.from_numpy(np.array(arrays[key])).to(value.dtype) for key, value in expected.items()})
        self.network = network.to(self.device).eval()
        self.train_losses_ = [float(v) for v in meta.get("train_losses", [])]
        self.epochs_ = meta.get("epochs", self.params.epochs)
        self.lr_ = meta.get("lr", self.params.lr)
        self.images_seen_ = meta.get("images_seen")
        return self
