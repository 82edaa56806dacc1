"""Whole images -> scores and maps through any batch scorer (the ONNX engine, or a torch detector in
the workbench): resized to the model input, or cut into tiles and blended back, then the maps
post-processed. One implementation for both sides, so the edge reproduces exactly what the workbench
calibrated on.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pyimgano.runtime.images import InputContract, to_contract
from pyimgano.runtime.postprocess import NormalizationStats, PostprocessConfig, apply_postprocess
from pyimgano.runtime.tiling import TilingConfig, blend_maps, cut_tiles, make_grid, reduce_scores


class BatchScorer(Protocol):
    """The ONNX engine, an exported graph in the exporter, or a torch detector: one method."""

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B,H,W,3] at the contract size -> (scores [B], maps [B,H,W]) as float32."""
        ...


def model_inputs(image: np.ndarray, contract: InputContract, tiling: TilingConfig | None) -> np.ndarray:
    """The uint8 batch the model sees for one image: the image resized, or its tiles, each resized."""
    if tiling is None:
        return to_contract(image, contract)[None]
    grid = make_grid(image.shape[:2], tiling)
    return np.stack([to_contract(tile, contract) for tile in cut_tiles(image, grid)])


def combine(image_hw: tuple[int, int], scores: np.ndarray, maps: np.ndarray, tiling: TilingConfig | None):
    """One image's (score, map) from its model outputs; tiled maps come back at the image's own size."""
    if tiling is None:
        return float(scores[0]), maps[0]
    grid = make_grid(image_hw, tiling)
    return reduce_scores(scores, tiling), blend_maps(maps, grid, tiling)


def score_images(
    scorer: BatchScorer,
    images: list[np.ndarray],
    contract: InputContract,
    tiling: TilingConfig | None,
    batch_size: int,
    seconds: dict[str, float] | None = None,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and maps of whole images, feeding the scorer batches of at most `batch_size` model inputs.

    `seconds`, when given, accumulates time spent under "preprocess" (resizing, tiling, blending) and "graph".
    """
    seconds = seconds if seconds is not None else {}
    started = time.perf_counter()
    inputs = [model_inputs(image, contract, tiling) for image in images]
    flat = np.concatenate(inputs)
    seconds["preprocess"] = seconds.get("preprocess", 0.0) + time.perf_counter() - started
    scores, maps = [], []
    for start in range(0, len(flat), batch_size):
        started = time.perf_counter()
        batch_scores, batch_maps = scorer.score_batch(flat[start : start + batch_size])
        seconds["graph"] = seconds.get("graph", 0.0) + time.perf_counter() - started
        scores.append(batch_scores)
        maps.append(batch_maps)
    started = time.perf_counter()
    all_scores, all_maps = np.concatenate(scores), np.concatenate(maps)
    out_scores, out_maps, offset = [], [], 0
    for image, model_input in zip(images, inputs):
        count = len(model_input)
        score, anomaly_map = combine(image.shape[:2], all_scores[offset : offset + count], all_maps[offset : offset + count], tiling)
        out_scores.append(score)
        out_maps.append(anomaly_map)
        offset += count
    seconds["preprocess"] += time.perf_counter() - started
    return np.asarray(out_scores, dtype=np.float32), out_maps


@dataclass(frozen=True)
class MapSteps:
    """How an image becomes a score and a map: the input contract, the tiling, and the map
    post-processing with the statistics it was calibrated with (none before calibration)."""

    contract: InputContract
    tiling: TilingConfig | None = None
    postprocess: PostprocessConfig | None = None
    normalization: NormalizationStats | None = None

    def with_tiling(self, tiling: TilingConfig | None) -> "MapSteps":
        return dataclasses.replace(self, tiling=tiling)

    def finish(self, maps: list[np.ndarray]) -> list[np.ndarray]:
        """The maps post-processed as configured (unchanged without post-processing)."""
        if self.postprocess is None:
            return maps
        return [apply_postprocess(m, self.postprocess, self.normalization) for m in maps]

    def score(
        self, scorer: BatchScorer, images: list[np.ndarray], batch_size: int, seconds: dict[str, float] | None = None
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores and post-processed maps of whole images: what calibration, evaluation, the edge loop and
        the benchmarks all compute. `seconds` as in score_images (post-processing counts as "preprocess")."""
        seconds = seconds if seconds is not None else {}
        scores, maps = score_images(scorer, images, self.contract, self.tiling, batch_size, seconds)
        started = time.perf_counter()
        maps = self.finish(maps)
        seconds["preprocess"] = seconds.get("preprocess", 0.0) + time.perf_counter() - started
        return scores, maps
