"""Anomaly-map post-processing: smoothing, grey morphology and normalisation calibrated on normal images.

Normalisation statistics come from NORMAL images only, once, and are then frozen: every test image
goes through the same affine map. Per-image min-max would stretch a flawless part's noise to [0, 1]
and make a fixed pixel threshold mean something different on every image.

Pure numpy/OpenCV so the workbench and the edge compute the same thing with the same code.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

NORMALIZE_METHODS = ("none", "minmax", "percentile")


MAX_GAUSSIAN_SIGMA = 64.0


@dataclass(frozen=True)
class PostprocessConfig:
    """The seed's `postprocess` block. Sizes are in anomaly-map pixels; 0 switches a step off."""

    normalize: bool = False
    normalize_method: str = "percentile"
    percentile_range: tuple[float, float] = (1.0, 99.0)
    gaussian_sigma: float = 0.0
    morph_open_ksize: int = 0
    morph_close_ksize: int = 0

    def __post_init__(self) -> None:
        if self.normalize_method not in NORMALIZE_METHODS:
            raise ValueError(f"normalize_method {self.normalize_method!r} is not one of {list(NORMALIZE_METHODS)}")
        if len(self.percentile_range) != 2:
            raise ValueError(f"percentile_range must be (low, high), got {self.percentile_range!r}")
        low, high = self.percentile_range
        if not 0.0 <= low < high <= 100.0:
            raise ValueError(f"percentile_range must satisfy 0 <= low < high <= 100, got {self.percentile_range!r}")
        # A blur wider than any anomaly map is no post-processing, and its kernel (6 sigma + 1) gets slow, then
        # beyond what OpenCV can allocate.
        if not (math.isfinite(self.gaussian_sigma) and 0.0 <= self.gaussian_sigma <= MAX_GAUSSIAN_SIGMA):
            raise ValueError(f"gaussian_sigma must be a number in [0, {MAX_GAUSSIAN_SIGMA:g}], got {self.gaussian_sigma}")
        for name in ("morph_open_ksize", "morph_close_ksize"):
            _check_ksize(name, getattr(self, name))

    @property
    def normalizes(self) -> bool:
        """Whether apply_postprocess needs calibrated stats."""
        return self.normalize and self.normalize_method != "none"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "PostprocessConfig":
        fields = dict(data)
        if "percentile_range" in fields:
            # JSON has no tuples; a list would also make the frozen config unhashable.
            fields["percentile_range"] = tuple(fields["percentile_range"])
        return cls(**fields)


def _check_ksize(name: str, ksize: int) -> None:
    # Even kernels have no centre pixel, so the result would shift by half a pixel.
    if isinstance(ksize, bool) or not isinstance(ksize, int):
        raise ValueError(f"{name} must be an int, got {ksize!r}")
    if ksize != 0 and (ksize < 3 or ksize % 2 == 0):
        raise ValueError(f"{name} must be 0 (off) or an odd size >= 3, got {ksize}")


@dataclass(frozen=True)
class NormalizationStats:
    """Frozen affine map (x - low) / (high - low); `count` is the number of normal pixels it came from."""

    method: str
    low: float
    high: float
    count: int

    def __post_init__(self) -> None:
        if self.method not in NORMALIZE_METHODS or self.method == "none":
            raise ValueError(f"method {self.method!r} is not one of {list(NORMALIZE_METHODS[1:])}")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite, got low={self.low}, high={self.high}")
        if self.high <= self.low:
            raise ValueError(f"high must be > low, got low={self.low}, high={self.high}")
        if self.count < 1:
            raise ValueError(f"count must be >= 1, got {self.count}")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "NormalizationStats":
        return cls(
            method=str(data["method"]), low=float(data["low"]), high=float(data["high"]), count=int(data["count"])
        )


def gaussian_ksize(sigma: float) -> int:
    """Odd kernel size covering +-3 sigma, where the Gaussian has lost all but 0.3 % of its mass."""
    return 2 * math.ceil(3.0 * sigma) + 1


def _smooth(anomaly_map: np.ndarray, config: PostprocessConfig) -> np.ndarray:
    """Every step but normalisation, on a float32 copy."""
    out = np.array(anomaly_map, dtype=np.float32, copy=True)
    if config.gaussian_sigma > 0.0:
        ksize = gaussian_ksize(config.gaussian_sigma)
        out = cv2.GaussianBlur(
            out, (ksize, ksize), sigmaX=config.gaussian_sigma, sigmaY=config.gaussian_sigma,
            borderType=cv2.BORDER_REFLECT,
        )
    # Opening before closing: isolated hot pixels go first, so closing cannot grow them into blobs.
    for ksize, operation in ((config.morph_open_ksize, cv2.MORPH_OPEN), (config.morph_close_ksize, cv2.MORPH_CLOSE)):
        if ksize:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ksize, ksize))
            out = cv2.morphologyEx(out, operation, kernel)
    return out


def _check_map(anomaly_map: np.ndarray) -> None:
    if anomaly_map.ndim != 2 or anomaly_map.size == 0:
        raise ValueError(f"anomaly_map must be a non-empty 2-D (H, W) array, got shape {anomaly_map.shape}")


def calibrate_normalization(
    normal_maps: Iterable[np.ndarray], config: PostprocessConfig
) -> NormalizationStats | None:
    """Stats over all pixels of the normal maps (each (H, W)), taken after smoothing and morphology.

    Taken after the other steps because those change the value range (a blur lowers peaks), and the
    stats must describe exactly the values they will normalise. None when the config does not normalise.
    """
    if not config.normalizes:
        return None
    # A sequence, not one array: tiled maps keep each image's own size.
    maps = [np.asarray(anomaly_map) for anomaly_map in normal_maps]
    if not maps or any(anomaly_map.ndim != 2 or anomaly_map.size == 0 for anomaly_map in maps):
        raise ValueError("normal_maps must be a non-empty sequence of non-empty (H, W) maps")
    values = np.concatenate([_smooth(anomaly_map, config).ravel() for anomaly_map in maps])
    if not np.isfinite(values).all():
        raise ValueError("normal_maps contain NaN or infinite values")
    if config.normalize_method == "minmax":
        low, high = float(values.min()), float(values.max())
    else:
        low, high = (float(v) for v in np.percentile(values, config.percentile_range))
    if high <= low:
        raise ValueError(
            f"normal maps give high <= low ({config.normalize_method}: low={low}, high={high}); "
            "they are constant over that range, so there is no scale to normalise by"
        )
    return NormalizationStats(method=config.normalize_method, low=low, high=high, count=int(values.size))


def _check_stats(config: PostprocessConfig, stats: NormalizationStats | None) -> None:
    if not config.normalizes:
        return
    if stats is None:
        raise ValueError(
            "normalisation is on but stats is None: stats must be calibrated on normal images "
            "with calibrate_normalization"
        )
    if stats.method != config.normalize_method:
        raise ValueError(f"stats.method {stats.method!r} does not match normalize_method {config.normalize_method!r}")


def apply_postprocess(
    anomaly_map: np.ndarray, config: PostprocessConfig, stats: NormalizationStats | None
) -> np.ndarray:
    """Blur -> grey opening -> grey closing -> (x - low) / (high - low); float32, same shape, input untouched.

    Normalisation is linear and NOT clipped: a defect hotter than anything seen on normal images
    lands above 1, and the ordering of pixel values is preserved, so thresholds and region peaks keep
    their meaning. `stats` is ignored when the config does not normalise.
    """
    anomaly_map = np.asarray(anomaly_map)
    _check_map(anomaly_map)
    _check_stats(config, stats)
    out = _smooth(anomaly_map, config)
    if config.normalizes:
        out = ((out.astype(np.float64) - stats.low) / (stats.high - stats.low)).astype(np.float32)
    return out


def apply_batch(maps: np.ndarray, config: PostprocessConfig, stats: NormalizationStats | None) -> np.ndarray:
    """apply_postprocess on each map of [N, H, W]; float32 [N, H, W]."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [N, H, W], got shape {maps.shape}")
    # Checked here too so that an empty batch fails the same way as a full one.
    _check_stats(config, stats)
    out = np.empty(maps.shape, dtype=np.float32)
    for index, anomaly_map in enumerate(maps):
        out[index] = apply_postprocess(anomaly_map, config, stats)
    return out
