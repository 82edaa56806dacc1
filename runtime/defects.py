"""Defect extraction: anomaly map -> binary mask and connected regions in original image pixels.

Pure numpy/OpenCV so the workbench and the edge compute the same thing with the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

MASK_FORMATS = ("png", "npy")
THRESHOLD_STRATEGIES = ("calibrated", "fixed", "normal_pixel_quantile")
REGION_SORT_KEYS = ("score_max", "score_mean", "area")


@dataclass(frozen=True)
class DefectsConfig:
    """The seed's `defects` block. Thresholds and scores are in the map's units (raw, or normalised
    when the bundle's map post-processing normalises)."""

    enabled: bool = False
    # None with strategy "calibrated": the pixel threshold calibrated at training time.
    pixel_threshold: float | None = None
    pixel_threshold_strategy: str = "calibrated"
    pixel_normal_quantile: float = 0.999
    mask_format: str = "png"
    # Region of interest as fractions of width/height [x0, y0, x1, y1]; pixels outside are never defects.
    roi_xyxy_norm: tuple[float, float, float, float] | None = None
    border_ignore_px: int = 0
    min_area: int = 0
    min_score_max: float | None = None
    min_score_mean: float | None = None
    open_ksize: int = 0
    close_ksize: int = 0
    fill_holes: bool = False
    max_regions: int | None = None
    region_sort: str = "score_max"

    def __post_init__(self) -> None:
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format {self.mask_format!r} is not one of {list(MASK_FORMATS)}")
        if self.pixel_threshold_strategy not in THRESHOLD_STRATEGIES:
            raise ValueError(
                f"pixel_threshold_strategy {self.pixel_threshold_strategy!r} is not one of {list(THRESHOLD_STRATEGIES)}"
            )
        if self.pixel_threshold_strategy == "fixed" and self.pixel_threshold is None:
            raise ValueError("pixel_threshold_strategy 'fixed' needs pixel_threshold")
        if self.region_sort not in REGION_SORT_KEYS:
            raise ValueError(f"region_sort {self.region_sort!r} is not one of {list(REGION_SORT_KEYS)}")
        if not 0.0 < self.pixel_normal_quantile < 1.0:
            raise ValueError(f"pixel_normal_quantile must be in (0, 1), got {self.pixel_normal_quantile}")
        for name in ("border_ignore_px", "min_area", "open_ksize", "close_ksize"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_regions is not None and self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1 or null, got {self.max_regions}")
        if self.roi_xyxy_norm is not None:
            x0, y0, x1, y1 = self.roi_xyxy_norm
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"roi_xyxy_norm must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {self.roi_xyxy_norm}")

    def to_json(self) -> dict:
        data = asdict(self)
        data["roi_xyxy_norm"] = list(self.roi_xyxy_norm) if self.roi_xyxy_norm is not None else None
        return data

    @classmethod
    def from_json(cls, data: dict) -> "DefectsConfig":
        fields = dict(data)
        if fields.get("roi_xyxy_norm") is not None:
            fields["roi_xyxy_norm"] = tuple(fields["roi_xyxy_norm"])
        return cls(**fields)


def map_to_image(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """The model-resolution map resized (bilinear) to the original image size."""
    if anomaly_map.shape == (height, width):
        return anomaly_map
    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)


def _allowed_area(height: int, width: int, config: DefectsConfig) -> np.ndarray:
    """uint8 mask of where defects may be reported (ROI minus the ignored border)."""
    allowed = np.ones((height, width), dtype=np.uint8)
    if config.roi_xyxy_norm is not None:
        x0, y0, x1, y1 = config.roi_xyxy_norm
        roi = np.zeros_like(allowed)
        roi[int(round(y0 * height)) : int(round(y1 * height)), int(round(x0 * width)) : int(round(x1 * width))] = 1
        allowed &= roi
    border = config.border_ignore_px
    if border:
        allowed[:border] = 0
        allowed[height - border :] = 0
        allowed[:, :border] = 0
        allowed[:, width - border :] = 0
    return allowed


def _ellipse(ksize: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ksize, ksize))


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    """Fills background pockets not connected to the image border."""
    padded = np.pad(binary, 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 1)
    holes = (flood == 0)[1:-1, 1:-1]
    return binary | holes.astype(np.uint8)


def extract_regions(
    anomaly_map: np.ndarray, original_hw: tuple[int, int], pixel_threshold: float, config: DefectsConfig = DefectsConfig()
) -> tuple[np.ndarray, list[dict]]:
    """Mask (uint8 0/255, original size) and regions, in original image pixels.

    A pixel is defective when its map value is strictly above the threshold (as an image is anomalous
    when its score is strictly above the image threshold) and it lies in the allowed area. Then
    opening, closing and hole filling; then regions below `min_area`, `min_score_max` or
    `min_score_mean` are dropped (and cleared from the mask); the rest are sorted by `region_sort`,
    highest first, and cut to `max_regions`. Boxes are [x0, y0, x1, y1], x1/y1 exclusive.
    """
    height, width = original_hw
    full = map_to_image(np.asarray(anomaly_map, dtype=np.float32), height, width)
    binary = (full > pixel_threshold).astype(np.uint8) & _allowed_area(height, width, config)
    if config.open_ksize:
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _ellipse(config.open_ksize))
    if config.close_ksize:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _ellipse(config.close_ksize))
    if config.fill_holes:
        binary = _fill_holes(binary)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions = []
    for label in range(1, count):
        inside = labels == label
        values = full[inside]
        area = int(stats[label, cv2.CC_STAT_AREA])
        score_max, score_mean = float(values.max()), float(values.mean())
        if (
            area < config.min_area
            or (config.min_score_max is not None and score_max < config.min_score_max)
            or (config.min_score_mean is not None and score_mean < config.min_score_mean)
        ):
            binary[inside] = 0
            continue
        x, y = int(stats[label, cv2.CC_STAT_LEFT]), int(stats[label, cv2.CC_STAT_TOP])
        w, h = int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT])
        regions.append(
            {
                "bbox_xyxy": [x, y, x + w, y + h],
                "area": area,
                "centroid_xy": [round(float(centroids[label, 0]), 2), round(float(centroids[label, 1]), 2)],
                "score_max": score_max,
                "score_mean": score_mean,
                "_label": label,
            }
        )
    regions.sort(key=lambda region: -region[config.region_sort])
    if config.max_regions is not None:
        for dropped in regions[config.max_regions :]:
            binary[labels == dropped["_label"]] = 0
        regions = regions[: config.max_regions]
    for index, region in enumerate(regions):
        del region["_label"]
        region["id"] = index
    return binary * 255, regions
