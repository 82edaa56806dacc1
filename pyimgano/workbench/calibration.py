"""Thresholds calibrated on held-out normal images, each recorded with its provenance.

Images whose patches are in the memory bank score near zero and would set a threshold far too low,
so both thresholds come from train/good images kept out of the bank.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pyimgano.config import WorkbenchConfig
from pyimgano.runtime.defects import normal_pixel_quantiles
from pyimgano.runtime.postprocess import NormalizationStats, calibrate_normalization
from pyimgano.runtime.scoring import BatchScorer, MapSteps
from pyimgano.workbench.image_scoring import predict_chunked


def score_summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64).ravel()
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p50": float(np.quantile(values, 0.5)),
        "p99": float(np.quantile(values, 0.99)),
    }


def quantile_threshold(values: np.ndarray, quantile: float, method: str, source: str) -> dict:
    """The threshold record the run report and the bundle manifest carry (runtime.manifest.Threshold)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"cannot calibrate {method}: no values from {source}")
    return {
        "value": float(np.quantile(values, quantile)),
        "method": method,
        "quantile": float(quantile),
        "count": int(values.size),
        "score_summary": score_summary(values),
        "source": source,
    }


def image_quantile(config: WorkbenchConfig) -> float:
    if config.calibration.image_quantile is not None:
        return config.calibration.image_quantile
    return 1.0 - config.model.contamination


@dataclass(frozen=True)
class Calibration:
    thresholds: dict  # image, pixel and the normal-pixel quantile table, as the report and manifest carry them
    steps: MapSteps  # the scoring steps with the map normalisation statistics calibrated here


def calibrate(
    scorer: BatchScorer, steps: MapSteps, load: Callable[[slice], list[np.ndarray]], count: int,
    config: WorkbenchConfig, source: str,
) -> Calibration:
    """Scores `count` held-out normal images and calibrates both thresholds (and the map normalisation,
    first, so that the pixel threshold is in the post-processed units the edge sees)."""
    raw = dataclasses.replace(steps, postprocess=None, normalization=None)
    scores, maps = predict_chunked(scorer, raw, load, count, "calibration")
    stats: NormalizationStats | None = calibrate_normalization(maps, steps.postprocess) if steps.postprocess else None
    calibrated = dataclasses.replace(steps, normalization=stats)
    normal_pixels = np.concatenate([m.ravel() for m in calibrated.finish(maps)])
    del maps
    thresholds = {
        "image": quantile_threshold(scores, image_quantile(config), "normal_score_quantile", source),
        "pixel": quantile_threshold(normal_pixels, config.calibration.pixel_quantile, "normal_pixel_quantile", source),
        # Lets deployment pick another pixel quantile (strategy normal_pixel_quantile) without refitting.
        "normal_pixel_quantiles": normal_pixel_quantiles(normal_pixels),
    }
    return Calibration(thresholds, calibrated)
