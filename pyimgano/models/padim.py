"""PaDiM (Defard et al., "PaDiM: a Patch Distribution Modeling Framework for Anomaly Detection and
Localization", ICPR 2020).

Each position of a feature grid gets a multivariate Gaussian fitted on the normal training images;
a patch's anomaly score is its Mahalanobis distance to the Gaussian of its position.

Two pieces, as for PatchCore: `PadimGraph`, the whole scoring path as one exportable torch module
(uint8 NHWC in, image scores and anomaly maps out, per-position means and inverse covariances inside),
and `VisionPadim`, the detector with the workbench contract (`fit`, `score_batch`, `graph`,
`describe`, `state`, `load_state`).

Features: the backbone layers (for mobilenet_v2 features.3 / .6 / .13: strides 4, 8, 16) are upsampled
bilinearly to the first layer's grid and concatenated; a seeded random subset of `n_features` channels
is kept (the paper's random dimensionality reduction, which bounds the [P, d, d] inverse covariance).
Covariances are estimated in float64 (with 0.01 * I added, as in the paper), inverted once at fit
time (through the Cholesky factor) and stored in float32. The Mahalanobis distance is a batched
matmul, so it exports to ONNX with a dynamic batch. Maps are upsampled bilinearly to the input size
and smoothed with a sigma-4 Gaussian; the image score is the maximum of the map.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyimgano.models.base import Embedded, EmbeddingDetector
from pyimgano.models.features import BackboneDetector, BackboneFeatures
from pyimgano.models.maps import MapSmoother
from pyimgano.models.padim_spec import PADIM, PadimParams

# Added to every covariance before inversion (the paper's regulariser).
COVARIANCE_EPS = 0.01


class PadimEmbedder(nn.Module):
    """uint8 NHWC images -> features (B, h*w, d): backbone features upsampled to the first layer's grid,
    concatenated, the random channel subset kept."""

    def __init__(self, features: BackboneFeatures, channel_index: torch.Tensor) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("channel_index", channel_index.to(torch.long))

    def all_channels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C_total, h, w): every channel of every layer, on the first layer's grid."""
        feature_maps = self.features(images)
        layers = self.features.layers
        first = feature_maps[layers[0]]
        height, width = int(first.shape[2]), int(first.shape[3])
        parts = []
        for layer in layers:
            fmap = feature_maps[layer]
            if fmap.shape[2] != height or fmap.shape[3] != width:
                fmap = F.interpolate(fmap, size=(height, width), mode="bilinear", align_corners=False)
            parts.append(fmap)
        return torch.cat(parts, dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        features = self.all_channels(images).index_select(1, self.channel_index)
        height, width = int(features.shape[2]), int(features.shape[3])
        features = features.permute(0, 2, 3, 1).reshape(features.shape[0], height * width, features.shape[1])
        return features, height, width


def mahalanobis(features: torch.Tensor, mean: torch.Tensor, inv_cov: torch.Tensor) -> torch.Tensor:
    """features [B, P, d], mean [P, d], inv_cov [P, d, d] -> distances [B, P] (sqrt of the quadratic form).

    One batched matmul over positions: (x - mu)^T S^-1 (x - mu) for every position at once.
    """
    delta = (features - mean.unsqueeze(0)).transpose(0, 1)  # [P, B, d]
    quad = (torch.bmm(delta, inv_cov) * delta).sum(dim=2)  # [P, B]
    return quad.clamp_min(0.0).sqrt().transpose(0, 1)


class PadimGraph(nn.Module):
    """The whole scoring path. forward(uint8 [B,H,W,3]) -> (scores [B], maps [B,H,W]), Mahalanobis units."""

    def __init__(self, embedder: PadimEmbedder, mean: torch.Tensor, inv_cov: torch.Tensor, input_hw: tuple[int, int]):
        super().__init__()
        self.embedder = embedder
        self.register_buffer("gauss_mean", mean)
        self.register_buffer("inv_cov", inv_cov)
        self.input_hw = input_hw
        self.smooth = MapSmoother(input_hw)

    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """(distances [B, h*w], h, w) before upsampling and smoothing."""
        features, height, width = self.embedder(images)
        return mahalanobis(features, self.gauss_mean, self.inv_cov), height, width

    def score_features(self, features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B], maps [B,H,W]) of embedded features [B, h*w, d]: the graph after its embedder."""
        distances = mahalanobis(features, self.gauss_mean, self.inv_cov)
        maps = self.smooth(distances.reshape(-1, 1, height, width))
        scores = maps.reshape(maps.shape[0], -1).max(dim=1).values
        return scores, maps

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(*self.embedder(images))


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Runs the batched inversion single-threaded on the CPU.

    A batch of small (d x d, d <= a few hundred) factorisations gains nothing from intra-op threads, and
    opening a thread team per matrix stalls badly when the cores are shared: 1024 inversions of 100 x 100
    measured 5-33 s with 2 threads on 2 busy cores, 0.13 s with one.
    """
    if device.type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class VisionPadim(BackboneDetector, EmbeddingDetector):
    """PaDiM detector. Scores: higher = more anomalous, in raw Mahalanobis-distance units."""

    capabilities = PADIM.capabilities
    fitted_attribute = "mean_"

    def __init__(self, params: PadimParams, device: torch.device):
        self.params = params
        self.device = device
        features = self._backbone_features()
        self.total_channels, self.grid_hw = self._probe(features, params.input_hw)
        self.feature_dim = min(params.n_features, self.total_channels)
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        channel_index = torch.randperm(self.total_channels, generator=generator)[: self.feature_dim].sort().values
        self.embedder = PadimEmbedder(features, channel_index).to(device)

    @property
    def positions(self) -> int:
        return self.grid_hw[0] * self.grid_hw[1]

    @torch.no_grad()
    def embed_inputs(self, images: np.ndarray) -> Embedded:
        """Features of uint8 [N,H,W,3] images, [N, P, d] float32 on the device (P = h*w)."""
        return Embedded(torch.cat([self.embedder(batch)[0] for batch in self._batches(images)]), *self.grid_hw)

    def embed(self, images: np.ndarray) -> torch.Tensor:
        return self.embed_inputs(images).features

    @torch.no_grad()
    def summarise(self, embedded: Embedded) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Per-position sums of the features and of their outer products, and the image count: float64,
        accumulated a batch of images at a time, so the working memory beyond the features is [P, d, d].
        Sums add, so fitting from several parts' summaries is fitting on their union."""
        if len(embedded) < 1:
            raise ValueError("PaDiM needs at least one training image")
        dim = self.feature_dim
        sum_x = torch.zeros(self.positions, dim, dtype=torch.float64, device=self.device)
        sum_xx = torch.zeros(self.positions, dim, dim, dtype=torch.float64, device=self.device)
        count = 0
        for start in range(0, len(embedded), self.params.batch_size):
            features = embedded.features[start : start + self.params.batch_size].double().transpose(0, 1)  # [P, B, d]
            sum_x += features.sum(dim=1)
            sum_xx += features.transpose(1, 2) @ features
            count += int(features.shape[1])
        return sum_x, sum_xx, count

    @torch.no_grad()
    def fit_summaries(self, summaries: list[tuple[torch.Tensor, torch.Tensor, int]]) -> "VisionPadim":
        """Per-position mean and covariance (nothing trains)."""
        sum_x, sum_xx, count = summaries[0]
        for more_x, more_xx, more in summaries[1:]:
            sum_x, sum_xx, count = sum_x + more_x, sum_xx + more_xx, count + more
        dim = self.feature_dim
        mean = sum_x / count
        cov = (sum_xx - count * mean.unsqueeze(2) * mean.unsqueeze(1)) / max(count - 1, 1)
        cov += COVARIANCE_EPS * torch.eye(dim, dtype=torch.float64, device=self.device)
        # The regularised covariance is symmetric positive definite: invert through its Cholesky factor.
        with _one_cpu_thread(cov.device):
            inv_cov = torch.cholesky_inverse(torch.linalg.cholesky(cov))
        inv_cov = 0.5 * (inv_cov + inv_cov.transpose(1, 2))  # exactly symmetric
        self.mean_ = mean.to(torch.float32).contiguous()
        self.inv_cov_ = inv_cov.to(torch.float32).contiguous()
        self.images_seen_ = count
        return self

    def graph(self, precision: str = "fp32") -> PadimGraph:
        self.check_fitted("build its graph")
        self.check_precision(precision)
        return PadimGraph(self.embedder, self.mean_, self.inv_cov_, self.params.input_hw).to(self.device).eval()

    def describe(self) -> dict:
        return {
            "backbone": self.params.backbone,
            "layers": list(self.params.layers),
            "n_features": self.feature_dim,
            "total_channels": self.total_channels,
            "grid": list(self.grid_hw),
            "covariance_eps": COVARIANCE_EPS,
            "score_units": "Mahalanobis distance; image score = maximum of the smoothed map",
            "input_hw": list(self.params.input_hw),
            "images_seen": getattr(self, "images_seen_", None),
            "pretrained": self.params.pretrained,
            "weights_sha256": self.weights_sha256,
            "seed": self.params.seed,
            "trained": False,
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        self.check_fitted("save its state")
        arrays = {
            "mean": self.mean_.cpu().numpy(),
            "inv_cov": self.inv_cov_.cpu().numpy(),
            "channel_index": self.embedder.channel_index.cpu().numpy().astype(np.int64),
        }
        return arrays, {"model": "vision_padim", **self.describe()}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> "VisionPadim":
        if meta.get("model", "vision_padim") != "vision_padim":
            raise ValueError(f"checkpoint holds model {meta.get('model')!r}, not vision_padim")
        self.check_checkpoint_weights(meta)
        if not self.params.pretrained and meta.get("seed") != self.params.seed:
            raise ValueError(
                f"checkpoint was fitted on random backbone weights drawn with seed {meta.get('seed')}, "
                f"this model's are drawn with seed {self.params.seed}"
            )
        missing = {"mean", "inv_cov", "channel_index"} - set(arrays)
        if missing:
            raise ValueError(f"checkpoint lacks array(s) {sorted(missing)}")
        mean, inv_cov, index = arrays["mean"], arrays["inv_cov"], arrays["channel_index"]
        positions, dim = self.positions, self.feature_dim
        if mean.shape != (positions, dim) or inv_cov.shape != (positions, dim, dim):
            raise ValueError(
                f"checkpoint Gaussians mean {mean.shape} / inv_cov {inv_cov.shape} do not fit this model's "
                f"{positions} positions ({self.grid_hw[0]}x{self.grid_hw[1]}) x {dim} features"
            )
        if index.shape != (dim,) or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"checkpoint channel_index {index.shape} {index.dtype} does not fit {dim} features")
        if index.min() < 0 or index.max() >= self.total_channels or len(np.unique(index)) != dim:
            raise ValueError(f"checkpoint channel_index is not {dim} distinct channels of {self.total_channels}")
        # The checkpoint's channel subset defines the fitted Gaussians, so it replaces the seeded one.
        self.embedder.channel_index = torch.from_numpy(index.astype(np.int64)).to(self.device)
        self.mean_ = torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float32)).to(self.device)
        self.inv_cov_ = torch.from_numpy(np.ascontiguousarray(inv_cov, dtype=np.float32)).to(self.device)
        self.images_seen_ = meta.get("images_seen")
        return self
