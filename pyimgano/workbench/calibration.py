"""Thresholds calibrated on normal images the model did not fit, each recorded with its provenance.

Images whose patches are in the memory bank score near zero and would set a threshold far too low, so the
normal scores come either from cross-fitting (workbench/cross_fit.py: every train/good image scored by a
model fitted without it) or from a held-out share of train/good.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pyimgano.config import WorkbenchConfig, target_false_reject_rate
from pyimgano.runtime.defects import normal_pixel_quantiles
from pyimgano.runtime.postprocess import NormalizationStats, calibrate_normalization
from pyimgano.runtime.scoring import BatchScorer, MapSteps
from pyimgano.workbench.image_scoring import predict_chunked
from pyimgano.workbench.operating_point import operating_point


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


def image_threshold(scores: np.ndarray, rate: float, source: str) -> dict:
    return operating_point(scores, rate, source, score_summary(scores))


def pixel_threshold(map_max: np.ndarray, rate: float, source: str) -> dict:
    """The map level that at most `rate` of good parts reach anywhere: the operating point of the image
    threshold, read from each normal image's highest map value. (A quantile of all normal pixels, the
    seed's method, sits far below the defects' peaks on a blurred map, and its masks came out 8x too large
    on PIPED; benchmarks/decisions.py compares the two.)"""
    record = operating_point(map_max, rate, source, score_summary(map_max))
    return {**record, "method": f"normal_map_max_{record['method'].removeprefix('normal_score_')}"}


@dataclass(frozen=True)
class Calibration:
    thresholds: dict  # image, pixel and the normal-pixel quantile table, as the report and manifest carry them
    steps: MapSteps  # the scoring steps with the map normalisation statistics calibrated here
    normal_scores: np.ndarray  # the image scores the image threshold was read from
    normal_map_max: np.ndarray  # each normal image's highest (post-processed) map value

    def stored(self) -> dict:
        """What a report keeps so that thresholds can be re-derived at another rate without a refit
        (pyimgano-export --target-false-reject-rate)."""
        return {"normal_scores": [float(v) for v in self.normal_scores],
                "normal_map_max": [float(v) for v in self.normal_map_max]}


def score_normal(
    scorer: BatchScorer, steps: MapSteps, load: Callable[[slice], list[np.ndarray]], count: int
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and raw maps (before map post-processing) of `count` held-out normal images."""
    raw = dataclasses.replace(steps, postprocess=None, normalization=None)
    return predict_chunked(scorer, raw, load, count, "calibration")


def calibrate(scores: np.ndarray, raw_maps: list[np.ndarray], steps: MapSteps, config: WorkbenchConfig,
              source: str) -> Calibration:
    """Both thresholds from normal images' scores and raw maps (the map normalisation first, so that the
    pixel threshold is in the post-processed units the edge sees)."""
    stats: NormalizationStats | None = calibrate_normalization(raw_maps, steps.postprocess) if steps.postprocess else None
    calibrated = dataclasses.replace(steps, normalization=stats)
    finished = calibrated.finish(raw_maps)
    normal_pixels = np.concatenate([m.ravel() for m in finished])
    map_max = np.array([float(m.max()) for m in finished], dtype=np.float64)
    rate = target_false_reject_rate(config)
    if config.calibration.pixel_quantile is None:
        pixel = pixel_threshold(map_max, rate, source)
    else:
        pixel = quantile_threshold(normal_pixels, config.calibration.pixel_quantile, "normal_pixel_quantile", source)
    thresholds = {
        "image": image_threshold(scores, rate, source),
        "pixel": pixel,
        # Lets deployment pick another pixel quantile (strategy normal_pixel_quantile) without refitting.
        "normal_pixel_quantiles": normal_pixel_quantiles(normal_pixels),
    }
    return Calibration(thresholds, calibrated, np.asarray(scores, dtype=np.float64), map_max)
