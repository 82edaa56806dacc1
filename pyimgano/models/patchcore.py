"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Two pieces: `PatchCoreGraph`, the whole scoring path as one exportable torch module (uint8 NHWC images
in, image scores and anomaly maps out, memory bank inside), and `VisionPatchCore`, the detector with
the scikit-learn contract (parameters in `__init__`, fitted state ending in `_`, `fit` returns self).
The graph is written only in ops that export to ONNX: matmul distances with precomputed norms, a
bank walked in fixed chunks to bound memory, and the map step shared by every model (models/maps.py).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyimgano.models.base import Embedded, EmbeddingDetector
from pyimgano.models.coreset import greedy_coreset, rows_for_ratio
from pyimgano.models.features import BackboneDetector, BackboneFeatures
from pyimgano.models.maps import MapSmoother
from pyimgano.models.patchcore_spec import PATCHCORE, PatchCoreParams
from pyimgano.runtime.progress import track

# Graph precisions: the dtype of the backbone, projection and bank GEMM (everything else is float32).
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
# The bank's row blocks are buffers `rows_<n>` of the graph's `bank` module, so their ONNX initializers are
# named `bank.rows_<n>`: how the int8 rewrite (export/quantize.py) finds the bank search's GEMMs.
BANK_ROWS_BUFFER = "rows_"
BANK_SEARCH_PREFIX = f"bank.{BANK_ROWS_BUFFER}"
# Bank rows compared at once: bounds the (patches x rows) distance block that nearest-neighbour search holds.
BANK_CHUNK_ROWS = 4096


def adaptive_pool_matrix(in_dim: int, out_dim: int) -> torch.Tensor:
    """The paper's channel reduction (adaptive average pooling over channels) as a fixed matrix.

    `x @ P` equals `F.adaptive_avg_pool1d(x[:, None], out_dim)[:, 0]`; as a matmul it exports with a
    dynamic batch, which the pooling op does not.
    """
    matrix = torch.zeros(in_dim, out_dim)
    for j in range(out_dim):
        start = (j * in_dim) // out_dim
        stop = -((-(j + 1) * in_dim) // out_dim)  # ceil((j+1) * in / out)
        matrix[start:stop, j] = 1.0 / (stop - start)
    return matrix


class PatchEmbedder(nn.Module):
    """uint8 NHWC images -> patch features (B, h*w, D): backbone features, 3x3 aggregation, projection."""

    def __init__(self, features: BackboneFeatures, projection: torch.Tensor | None) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("projection", projection if projection is not None else torch.empty(0))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        # A half-precision graph (extractor and projection in float16) casts back to float32 at the end.
        feature_maps = self.features(images)
        layers = self.features.layers
        first = feature_maps[layers[0]]
        height, width = int(first.shape[2]), int(first.shape[3])
        pooled = []
        for layer in layers:
            fmap = F.avg_pool2d(feature_maps[layer], kernel_size=3, stride=1, padding=1)
            if fmap.shape[2] != height or fmap.shape[3] != width:
                fmap = F.interpolate(fmap, size=(height, width), mode="bilinear", align_corners=False)
            pooled.append(fmap)
        features = torch.cat(pooled, dim=1)
        features = features.permute(0, 2, 3, 1).reshape(features.shape[0], height * width, features.shape[1])
        if self.projection.numel():
            features = features @ self.projection
        if features.dtype != torch.float32:
            features = features.float()
        return features, height, width


class MemoryBank(nn.Module):
    """The memory bank inside the scoring graph: stored once, in fixed row chunks, centred on its mean.

    Chunks bound the (queries x rows) distance block that a search holds. Every use (nearest-neighbour
    search, row lookup, the anchor's neighbourhood) reads the same chunk tensors, so the exported file
    holds each row once. Centring changes no distance, but it shrinks the norms in the ranking key
    ||b||^2 - 2 q.b, whose cancellation otherwise costs digits (and overflows fp16) when the nearest
    distance is small against the norms, as it is for normal patches.

    `dtype` float16 stores the rows in half precision and ranks them in it: the key
    ||b||^2 / 2 - p.b is one GEMM's float16 output minus float16 half-norms. The GEMM output is float16
    already, so a float32 key adds no digits, only passes over the (patches x rows) block. The distance
    to the chosen row, the image score and the map stay in float32. (A float32 key, the GEMM output cast
    up, cost three more passes over the block: wide_resnet50_2 with 16k rows at batch 32 on an H200,
    1,046 against 1,094 images/s.)
    """

    def __init__(self, bank: torch.Tensor, dtype: torch.dtype = torch.float32, chunk_rows: int | None = None):
        super().__init__()
        chunk_rows = chunk_rows or BANK_CHUNK_ROWS
        self.register_buffer("mean", bank.mean(dim=0))
        self.starts: list[int] = []
        for number, chunk in enumerate((bank - self.mean).split(chunk_rows)):
            stored = chunk.to(dtype).contiguous()
            self.register_buffer(f"{BANK_ROWS_BUFFER}{number}", stored)
            self.register_buffer(f"sq_norms_{number}", stored.float().pow(2).sum(dim=1))
            self.starts.append(number * chunk_rows)
        self.low_precision_key = dtype != torch.float32
        if self.low_precision_key:
            for number in range(len(self.starts)):
                half_norms = (getattr(self, f"sq_norms_{number}") / 2).to(dtype)
                if not torch.isfinite(half_norms).all():
                    raise ValueError(f"memory bank norms overflow {dtype}: export this model in float32")
                self.register_buffer(f"half_sq_norms_{number}", half_norms)

    def chunks(self):
        for number, start in enumerate(self.starts):
            yield start, getattr(self, f"{BANK_ROWS_BUFFER}{number}"), getattr(self, f"sq_norms_{number}")

    def centre(self, points: torch.Tensor) -> torch.Tensor:
        return points - self.mean

    @staticmethod
    def _partial(points: torch.Tensor, rows: torch.Tensor, sq_norms: torch.Tensor) -> torch.Tensor:
        """||b||^2 - 2 p.b for every point and row of one chunk, float32 [P, rows]."""
        if rows.dtype == torch.float32:
            return torch.addmm(sq_norms.unsqueeze(0), points, rows.t(), beta=1.0, alpha=-2.0)
        return sq_norms.unsqueeze(0) - 2.0 * torch.mm(points.to(rows.dtype), rows.t()).float()

    def nearest(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared distance to, and index of, each centred point's nearest row.

        The search ranks rows by ||b||^2 - 2 p.b (||p||^2 does not change which row is nearest); the
        distance to the chosen row is then computed directly, which is exact where the expansion loses
        digits to cancellation, and lets an int8 search (export/quantize.py) pick the row while the
        distance stays fp32."""
        best = None
        best_index = None
        low_points = points.to(self.rows_0.dtype) if self.low_precision_key else None
        for number, (start, rows, sq_norms) in enumerate(self.chunks()):
            if self.low_precision_key:
                partial = getattr(self, f"half_sq_norms_{number}").unsqueeze(0) - torch.mm(low_points, rows.t())
            else:
                partial = self._partial(points, rows, sq_norms)
            # argmin + gather, not min(dim): ONNX has no single op for both, and ReduceMin would be a
            # second full pass over the (points x rows) block.
            index = partial.argmin(dim=1)
            value = partial.gather(1, index.unsqueeze(1)).squeeze(1).float()
            if best is None:
                best, best_index = value, index
            else:
                better = value < best
                best = torch.where(better, value, best)
                best_index = torch.where(better, index + start, best_index)
        return (points - self.lookup(best_index)).pow(2).sum(dim=1), best_index

    def sq_distances(self, points: torch.Tensor) -> torch.Tensor:
        """Squared distances [P, rows] from each centred point to every row."""
        partial = torch.cat([self._partial(points, rows, sq_norms) for _, rows, sq_norms in self.chunks()], dim=1)
        return partial + (points * points).sum(dim=1, keepdim=True)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """Centred float32 rows at `index` (any shape) -> [*index.shape, D], gathered chunk by chunk."""
        picked = None
        for start, rows, _ in self.chunks():
            local = rows[(index - start).clamp(0, rows.shape[0] - 1)].float()
            if picked is None:
                picked = local
            else:
                inside = ((index >= start) & (index < start + rows.shape[0])).unsqueeze(-1)
                picked = torch.where(inside, local, picked)
        return picked


class PatchCoreGraph(nn.Module):
    """The whole scoring path. forward(uint8 [B,H,W,3]) -> (scores [B], maps [B,H,W]), raw distance units."""

    def __init__(
        self,
        embedder: PatchEmbedder,
        memory_bank: torch.Tensor,
        num_neighbors: int,
        input_hw: tuple[int, int],
        bank_dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.embedder = embedder
        self.bank = MemoryBank(memory_bank, bank_dtype)
        self.num_neighbors = min(num_neighbors, memory_bank.shape[0])
        self.input_hw = input_hw
        self.smooth = MapSmoother(input_hw)

    def patch_scores(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Centred patch features [B, P, D], nearest distances [B, P], nearest rows [B, P], feature grid h, w."""
        features, height, width = self.embedder(images)
        return (*self._nearest(features), height, width)

    def _nearest(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.bank.centre(features)
        batch, patches, dim = features.shape
        d2, index = self.bank.nearest(features.reshape(-1, dim))
        return features, d2.sqrt().reshape(batch, patches), index.reshape(batch, patches)

    def image_scores(self, features: torch.Tensor, scores: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The paper's reweighted image score: the worst patch, damped when its neighbourhood in the bank is dense."""
        max_score, max_pos = scores.max(dim=1)
        if self.num_neighbors <= 1:
            return max_score
        dim = features.shape[2]
        worst = features.gather(1, max_pos.view(-1, 1, 1).expand(-1, 1, dim)).squeeze(1)  # [B, D]
        anchor = self.bank.lookup(index.gather(1, max_pos.view(-1, 1)).squeeze(1))  # [B, D]: m*
        _, support = self.bank.sq_distances(anchor).topk(self.num_neighbors, dim=1, largest=False)  # [B, k], m* first
        support_features = self.bank.lookup(support)  # [B, k, D]
        distances = (worst.unsqueeze(1) - support_features).pow(2).sum(dim=2).clamp_min(0.0).sqrt()
        weight = 1.0 - torch.softmax(distances, dim=1)[:, 0]
        return weight * max_score

    def anomaly_maps(self, scores: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.smooth(scores.reshape(-1, 1, height, width))

    def score_features(self, features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B], maps [B,H,W]) of embedded patch features [B, h*w, D]: the graph after its embedder."""
        centred, scores, index = self._nearest(features)
        return self.image_scores(centred, scores, index), self.anomaly_maps(scores, height, width)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(*self.embedder(images))


class VisionPatchCore(BackboneDetector, EmbeddingDetector):
    """PatchCore detector. Scores: higher = more anomalous, in raw nearest-neighbour distance units."""

    capabilities = PATCHCORE.capabilities
    fitted_attribute = "memory_bank_"

    def __init__(self, params: PatchCoreParams, device: torch.device):
        self.params = params
        self.device = device
        features = self._backbone_features()
        # Any input size gives the channel count; a small one keeps the probe cheap.
        channels, _ = self._probe(features, (64, 64))
        projection = adaptive_pool_matrix(channels, params.embed_dim) if channels > params.embed_dim else None
        self.embedder = PatchEmbedder(features, projection).to(device)
        self.feature_dim = params.embed_dim if projection is not None else channels

    @torch.no_grad()
    def embed_inputs(self, images: np.ndarray) -> Embedded:
        """Patch features of uint8 [N,H,W,3] images, [N, h*w, D] on the device."""
        batches = track(self._batches(images), "features", -(-len(images) // self.params.batch_size))
        parts, height, width = [], 0, 0
        for batch in batches:
            features, height, width = self.embedder(batch)
            parts.append(features)
        return Embedded(torch.cat(parts), height, width)

    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Patch features of uint8 [N,H,W,3] images, as one [N*h*w, D] tensor on the device."""
        return self.embed_inputs(images).features.reshape(-1, self.feature_dim)

    def summarise(self, embedded: Embedded) -> tuple[torch.Tensor, int]:
        """(a greedy coreset of the part's patch rows at the model's ratio, the part's patch count). Several
        parts' coresets together are a composable coreset of their union: each part's rows covered as the
        part's own coreset covers them, at the same ratio (the union's covering radius is at most the
        largest part's), for a k-th of the selection cost on k parts."""
        features = embedded.features.reshape(-1, self.feature_dim)
        keep = greedy_coreset(features, rows_for_ratio(len(features), self.params.coreset_ratio), self.params.seed)
        return features[keep.to(features.device)], int(features.shape[0])

    def fit_summaries(self, summaries: list[tuple[torch.Tensor, int]]) -> "VisionPatchCore":
        self.memory_bank_ = torch.cat([rows for rows, _ in summaries]).contiguous()
        self.patches_seen_ = sum(count for _, count in summaries)
        return self

    def graph(self, precision: str = "fp32") -> PatchCoreGraph:
        """The scoring graph. precision "fp16" (for GPUs) runs the backbone, the projection and the ranking
        of bank rows in float16 (MemoryBank) and keeps the normalisation, the distance to the picked row,
        the image score and the map in float32."""
        self.check_fitted("build its graph")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r} is not one of {list(PRECISIONS)}")
        embedder = self.embedder
        if precision == "fp16":
            embedder = copy.deepcopy(self.embedder)
            embedder.features.extractor.half()
            embedder.projection = embedder.projection.half()
        graph = PatchCoreGraph(
            embedder, self.memory_bank_, self.params.num_neighbors, self.params.input_hw, PRECISIONS[precision]
        )
        return graph.to(self.device).eval()

    def reduce_bank(self, rows: int) -> "VisionPatchCore":
        """Keeps a greedy k-center coreset of `rows` rows of the fitted bank (a lighter, less exact model)."""
        self.check_fitted("reduce its bank")
        total = int(self.memory_bank_.shape[0])
        if not 1 <= rows < total:
            raise ValueError(f"a reduced bank needs between 1 and {total - 1} rows (the bank has {total}), got {rows}")
        keep = greedy_coreset(self.memory_bank_, rows, self.params.seed)
        self.memory_bank_ = self.memory_bank_[keep.to(self.memory_bank_.device)].contiguous()
        return self

    def describe(self) -> dict:
        return {
            "backbone": self.params.backbone,
            "layers": list(self.params.layers),
            "coreset_ratio": self.params.coreset_ratio,
            "num_neighbors": self.params.num_neighbors,
            "feature_dim": self.feature_dim,
            "memory_bank_rows": int(self.memory_bank_.shape[0]) if hasattr(self, "memory_bank_") else None,
            "patches_seen": getattr(self, "patches_seen_", None),
            "pretrained": self.params.pretrained,
            "weights_sha256": self.weights_sha256,
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        self.check_fitted("save its state")
        return {"memory_bank": self.memory_bank_.cpu().numpy()}, {"model": "vision_patchcore", **self.describe()}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> "VisionPatchCore":
        self.check_checkpoint_weights(meta)
        bank = arrays["memory_bank"]
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim:
            raise ValueError(f"memory bank shape {bank.shape} does not fit feature width {self.feature_dim}")
        self.memory_bank_ = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)).to(self.device)
        self.patches_seen_ = meta.get("patches_seen")
        return self
