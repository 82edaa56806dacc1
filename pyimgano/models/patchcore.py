"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

Two pieces: `PatchCoreGraph`, the whole scoring path as one exportable torch module (uint8 NHWC images
in, image scores and anomaly maps out, memory bank inside), and `VisionPatchCore`, the detector with
the scikit-learn contract (parameters in `__init__`, fitted state ending in `_`, `fit` returns self).
The graph is written only in ops that export to ONNX: matmul distances with precomputed norms, a
bank walked in fixed chunks to bound memory, and the map step shared by every model (models/maps.py).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyimgano.models.backbones import build_feature_extractor, get_backbone_spec
from pyimgano.models.base import Capabilities, GraphDetector
from pyimgano.models.maps import MapSmoother
from pyimgano.runtime.progress import Progress, track

# Graph precisions: the dtype of the backbone, projection and bank GEMM (everything else is float32).
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16}
# The bank's row blocks are buffers `rows_<n>` of the graph's `bank` module, so their ONNX initializers are
# named `bank.rows_<n>`: how the int8 rewrite (export/quantize.py) finds the bank search's GEMMs.
BANK_ROWS_BUFFER = "rows_"
BANK_SEARCH_PREFIX = f"bank.{BANK_ROWS_BUFFER}"
# Bank rows compared at once: bounds the (patches x rows) distance block that nearest-neighbour search holds.
BANK_CHUNK_ROWS = 4096
# Coreset selection works on a random projection of this width (the paper's Johnson-Lindenstrauss step).
CORESET_PROJECTION_DIM = 128
# Batched greedy: at most this many centres per pass over all rows, about CORESET_ROUNDS_HINT passes in
# all, each chosen among CORESET_POOL_FACTOR x as many farthest candidates.
CORESET_MAX_PER_ROUND = 256
CORESET_ROUNDS_HINT = 100
CORESET_POOL_FACTOR = 4
CORESET_UPDATE_ROWS = 16384
# The bfloat16 screen (greedy_coreset): rows per GEMM (4,096 ran 16% faster per row than 16,384 here:
# the block stays in cache for the minimum), bfloat16's unit roundoff, the factor on its error bound
# (5% to spare), and how much faster than float32 its GEMM must measure to be used (1.7x on this
# machine's AVX512-BF16; a 1.5x bar was missed under load, and emulated bfloat16 is slower than float32).
CORESET_SCREEN_ROWS = 4096
BFLOAT16_UNIT_ROUNDOFF = 2.0**-8
CORESET_SCREEN_SAFETY = 1.05
CORESET_SCREEN_MIN_SPEEDUP = 1.2


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
    """uint8 NHWC images -> patch features (B, h*w, D): normalise, backbone, 3x3 aggregation, projection."""

    def __init__(
        self,
        extractor: nn.Module,
        layers: tuple[str, ...],
        mean: tuple[float, float, float],
        std: tuple[float, float, float],
        projection: torch.Tensor | None,
    ) -> None:
        super().__init__()
        self.extractor = extractor
        self.layers = layers
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("projection", projection if projection is not None else torch.empty(0))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        x = images.permute(0, 3, 1, 2).to(torch.float32)
        x = (x - self.mean) / self.std
        # A half-precision graph (extractor and projection in float16) casts once here and back at the end.
        compute_dtype = next(self.extractor.parameters()).dtype
        if compute_dtype != torch.float32:
            x = x.to(compute_dtype)
        feature_maps = self.extractor(x)
        first = feature_maps[self.layers[0]]
        height, width = int(first.shape[2]), int(first.shape[3])
        pooled = []
        for layer in self.layers:
            fmap = F.avg_pool2d(feature_maps[layer], kernel_size=3, stride=1, padding=1)
            if fmap.shape[2] != height or fmap.shape[3] != width:
                fmap = F.interpolate(fmap, size=(height, width), mode="bilinear", align_corners=False)
            pooled.append(fmap)
        features = torch.cat(pooled, dim=1)
        features = features.permute(0, 2, 3, 1).reshape(features.shape[0], height * width, features.shape[1])
        if self.projection.numel():
            features = features @ self.projection
        if compute_dtype != torch.float32:
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
        features = self.bank.centre(features)
        batch, patches, dim = features.shape
        d2, index = self.bank.nearest(features.reshape(-1, dim))
        return features, d2.sqrt().reshape(batch, patches), index.reshape(batch, patches), height, width

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

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features, scores, index, height, width = self.patch_scores(images)
        return self.image_scores(features, scores, index), self.anomaly_maps(scores, height, width)


def _sq_dist_to(points: torch.Tensor, points_sq: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared distances [N, C] from every point to each centre, one GEMM."""
    return points_sq.unsqueeze(1) - 2.0 * (points @ centres.t()) + (centres * centres).sum(dim=1).unsqueeze(0)


def screen_pays_off(device: torch.device) -> bool:
    """Whether to screen with bfloat16: on CPUs where its GEMM measures CORESET_SCREEN_MIN_SPEEDUP x
    faster than float32 at the screen's block shape (AVX512-BF16 or AMX; emulated bfloat16 is slower),
    never on GPUs, where the screen's small blocks are launch-bound (an H200: 731k rows in 2.1 s
    unscreened, 8.6 s screened). The measurement takes a few ms, once per call."""
    if device.type != "cpu":
        return False
    generator = torch.Generator(device="cpu").manual_seed(0)
    rows = torch.randn(CORESET_SCREEN_ROWS, CORESET_PROJECTION_DIM + 8, generator=generator)
    centres = torch.randn(CORESET_PROJECTION_DIM + 8, CORESET_MAX_PER_ROUND, generator=generator)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = rows.to(dtype), centres.to(dtype)
        best = math.inf
        for _ in range(8):
            started = time.perf_counter()
            torch.mm(a, b).amin(dim=1)
            best = min(best, time.perf_counter() - started)
        timings[dtype] = best
    return timings[torch.bfloat16] * CORESET_SCREEN_MIN_SPEEDUP < timings[torch.float32]


def greedy_coreset(features: torch.Tensor, ratio: float, seed: int, screen: bool | None = None) -> torch.Tensor:
    """Indices of a greedy k-center coreset (the paper's minimax facility location) on a random projection.

    Keeps the rows that cover the feature space, so rare normal patterns survive. Exact greedy reads
    the whole feature matrix once per selected row, which is memory-bound and far too slow for 10^5
    rows; so each round takes the `pool` farthest rows as candidates, runs exact greedy among them to
    pick `per_round` centres (which keeps near-duplicates apart), then updates every row's distance to
    its nearest centre. With per_round=1 this is exactly the paper's greedy.

    The update is the cost (rows x centres x dims, twice over). With `screen` (default: where bfloat16
    GEMMs are measured faster) a bfloat16 GEMM first bounds each row's distance to the new centres;
    only rows the bound cannot rule out (6% on magnetic_tile features, 9% on random-weight ones) are
    recomputed in float32, so the result is the same as updating every row in float32. (A
    triangle-inequality skip did not pay: on real features 73% of rows passed it.)
    """
    total = features.shape[0]
    target = max(1, int(math.ceil(total * ratio)))
    if target >= total:
        return torch.arange(total)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    dim = features.shape[1]
    if dim > CORESET_PROJECTION_DIM:
        projection = torch.randn(dim, CORESET_PROJECTION_DIM, generator=generator) / math.sqrt(CORESET_PROJECTION_DIM)
        reduced = features @ projection.to(features.device)
    else:
        reduced = features
    # Centring changes no distance but shrinks the norms, against which both the float32 expansion's
    # cancellation and the bfloat16 screen's error bound are measured.
    reduced = reduced - reduced.mean(dim=0)
    reduced_sq = (reduced * reduced).sum(dim=1)
    if screen is None:
        screen = screen_pays_off(reduced.device)
    layout = _screen_layout(reduced, reduced_sq) if screen else None
    per_round = max(1, min(CORESET_MAX_PER_ROUND, target // CORESET_ROUNDS_HINT))
    first = int(torch.randint(total, (1,), generator=generator))
    selected = [first]
    min_d2 = _sq_dist_to(reduced, reduced_sq, reduced[first : first + 1])[:, 0].clamp_min(0.0)
    progress = Progress("coreset", target)
    progress.update()
    while len(selected) < target:
        take = min(per_round, target - len(selected))
        pool = torch.topk(min_d2, min(total, take * CORESET_POOL_FACTOR)).indices
        pool_points = reduced[pool]
        # Exact greedy within the pool on a precomputed pairwise matrix: the per-pick step is then one
        # small numpy minimum, not several torch launches (which dominated at 10^4+ picks).
        pool_pairwise = _sq_dist_to(pool_points, reduced_sq[pool], pool_points).cpu().numpy()
        pool_d2 = min_d2[pool].cpu().numpy().copy()
        chosen = []
        for _ in range(take):
            best = int(pool_d2.argmax())
            chosen.append(best)
            np.minimum(pool_d2, pool_pairwise[best], out=pool_d2)
        chosen_rows = pool[torch.tensor(chosen, device=pool.device)]
        selected.extend(int(row) for row in chosen_rows)
        progress.update(len(chosen))
        centres, centres_sq = reduced[chosen_rows], reduced_sq[chosen_rows]
        if layout is None:
            rows = None  # every row, in contiguous chunks
        else:
            rows = _screen(layout, reduced_sq, min_d2, centres, centres_sq)
        _update_min_d2(reduced, reduced_sq, min_d2, centres, centres_sq, rows)
    return torch.tensor(selected, dtype=torch.long)


@dataclass(frozen=True)
class _ScreenLayout:
    """What the bfloat16 screen reads of the rows, prepared once per selection."""

    rows: torch.Tensor  # bfloat16 [x, 1, 1, 0...], width padded to a multiple of 8
    rounding: torch.Tensor  # ||x - bf16(x)|| per row, for the error bound
    norms: torch.Tensor  # ||x|| per row


def _screen_layout(reduced: torch.Tensor, reduced_sq: torch.Tensor) -> _ScreenLayout:
    """Rows as bfloat16 [x, 1, 1, 0...], so that one plain GEMM against [-2c, hi, lo, 0...] (||c||^2 = hi + lo,
    two bfloat16 parts) gives ||c||^2 - 2 x.c: plain mm ran faster than addmm with the bias."""
    dim = reduced.shape[1]
    padded = torch.zeros(reduced.shape[0], -(-(dim + 2) // 8) * 8, dtype=torch.bfloat16, device=reduced.device)
    padded[:, :dim] = reduced
    padded[:, dim : dim + 2] = 1.0
    rounding = (reduced - padded[:, :dim].float()).norm(dim=1)
    return _ScreenLayout(padded, rounding, reduced_sq.sqrt())


def _screen(layout: _ScreenLayout, reduced_sq, min_d2, centres, centres_sq) -> torch.Tensor:
    """Indices of the rows a new centre may come closer to than their current nearest, by a bfloat16 GEMM.

    With x~, c~ the bfloat16 rows, e_x = ||x - x~||, e_c = max ||c - c~||, C >= every ||c||, ||c~|| and
    u = 2^-8, the computed key for ||c||^2 - 2 x.c errs by at most 2(e_x C + ||x|| e_c) (the inputs'
    rounding, by Cauchy-Schwarz on the measured residuals) + u(C^2 + 2(||x|| + e_x) C) (the output's
    rounding) + 2^-14 (C^2 + 2 ||x|| C) (float32 accumulation, the lo part). A row whose key minus that
    bound is not below its current distance cannot improve; the rest are recomputed exactly.
    """
    screen_rows = layout.rows
    dim = centres.shape[1]
    low = centres.to(torch.bfloat16)
    centre_rounding = float((centres - low.float()).norm(dim=1).max())
    reach = float(centres_sq.max().sqrt()) + centre_rounding
    hi = centres_sq.to(torch.bfloat16)
    augmented = torch.zeros(screen_rows.shape[1], centres.shape[0], dtype=torch.bfloat16, device=centres.device)
    augmented[:dim] = (-2.0 * low).t()  # exact: a power-of-two scale
    augmented[dim] = hi
    augmented[dim + 1] = (centres_sq - hi.float()).to(torch.bfloat16)
    unit, tiny = BFLOAT16_UNIT_ROUNDOFF, 2.0**-14
    error = (
        (2 * centre_rounding + 2 * unit * reach + 2 * tiny * reach) * layout.norms
        + (2 * reach + 2 * unit * reach) * layout.rounding
        + (unit + tiny) * reach**2
    )
    # A row may improve only if some key falls below this (its current distance less its own norm).
    bound = min_d2 - reduced_sq + CORESET_SCREEN_SAFETY * error
    flagged = []
    for start in range(0, screen_rows.shape[0], CORESET_SCREEN_ROWS):
        stop = min(screen_rows.shape[0], start + CORESET_SCREEN_ROWS)
        key = torch.mm(screen_rows[start:stop], augmented).amin(dim=1)
        flagged.append((key.float() < bound[start:stop]).nonzero().squeeze(1) + start)
    return torch.cat(flagged)


def _update_min_d2(reduced, reduced_sq, min_d2, centres, centres_sq, rows: torch.Tensor | None) -> None:
    """min_d2 = min(min_d2, distance to the nearest new centre), in float32, for `rows` (None: all).
    One fused GEMM + broadcast add and one pass for the minimum per chunk; each row's own norm does not
    change which centre is nearest, so it is added to the [rows] minimum, not to the block."""
    count = reduced.shape[0] if rows is None else rows.numel()
    for start in range(0, count, CORESET_UPDATE_ROWS):
        stop = min(count, start + CORESET_UPDATE_ROWS)
        part = slice(start, stop) if rows is None else rows[start:stop]
        partial = torch.addmm(centres_sq.unsqueeze(0), reduced[part], centres.t(), beta=1.0, alpha=-2.0)
        nearest = (partial.amin(dim=1) + reduced_sq[part]).clamp_min(0.0)
        min_d2[part] = torch.minimum(min_d2[part], nearest)


@dataclass(frozen=True)
class PatchCoreParams:
    backbone: str
    layers: tuple[str, ...]
    coreset_ratio: float
    num_neighbors: int
    embed_dim: int
    pretrained: bool
    weights_path: str | None
    input_hw: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    seed: int
    batch_size: int


class VisionPatchCore(GraphDetector):
    """PatchCore detector. Scores: higher = more anomalous, in raw nearest-neighbour distance units."""

    # The memory bank is collected, not trained: `fit` takes no epochs or learning rate. int8 is the
    # exporter's rewrite of the fp32 graph, whose bank search it finds by BANK_SEARCH_PREFIX.
    capabilities = Capabilities(trains=False, precisions=("fp32", "fp16", "int8"), reducible_bank=True)
    fitted_attribute = "memory_bank_"

    def __init__(self, params: PatchCoreParams, device: torch.device):
        self.params = params
        self.device = device
        spec = get_backbone_spec(params.backbone)
        extractor, self.weights_sha256 = build_feature_extractor(
            spec, params.layers, params.pretrained, params.weights_path, params.seed
        )
        channels = self._probe_channels(extractor)
        projection = adaptive_pool_matrix(channels, params.embed_dim) if channels > params.embed_dim else None
        self.embedder = PatchEmbedder(extractor, params.layers, params.mean, params.std, projection).to(device)
        self.feature_dim = params.embed_dim if projection is not None else channels

    def _probe_channels(self, extractor: nn.Module) -> int:
        with torch.no_grad():
            probe = extractor(torch.zeros(1, 3, 64, 64))
        return sum(int(probe[layer].shape[1]) for layer in self.params.layers)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Patch features of uint8 [N,H,W,3] images, as one [N*h*w, D] tensor on the device."""
        batches = track(self._batches(images), "features", -(-len(images) // self.params.batch_size))
        parts = [self.embedder(batch)[0].reshape(-1, self.feature_dim) for batch in batches]
        return torch.cat(parts)

    def fit(self, images: np.ndarray, epochs: int | None = None, lr: float | None = None) -> "VisionPatchCore":
        features = self.embed(images)
        keep = greedy_coreset(features, self.params.coreset_ratio, self.params.seed)
        self.memory_bank_ = features[keep.to(features.device)].contiguous()
        self.patches_seen_ = int(features.shape[0])
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
            embedder.extractor.half()
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
        # ceil((rows - 0.5) / total * total) == rows, whatever the float rounding.
        keep = greedy_coreset(self.memory_bank_, (rows - 0.5) / total, self.params.seed)
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
        if meta.get("weights_sha256") != self.weights_sha256:
            raise ValueError(
                f"checkpoint was fitted on backbone weights sha256 {meta.get('weights_sha256')}, "
                f"but the weights found now have {self.weights_sha256}"
            )
        bank = arrays["memory_bank"]
        if bank.ndim != 2 or bank.shape[1] != self.feature_dim:
            raise ValueError(f"memory bank shape {bank.shape} does not fit feature width {self.feature_dim}")
        self.memory_bank_ = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)).to(self.device)
        self.patches_seen_ = meta.get("patches_seen")
        return self
