"""Defect extraction: anomaly map -> binary mask and connected regions in original image pixels.

Pure numpy/OpenCV so the workbench and the edge compute the same thing with the same code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

MASK_FORMATS = ("png", "npy")


@dataclass(frozen=True)
class DefectsConfig:
    """The seed's `defects` block. `pixel_threshold` is in the map's raw units."""

    pixel_threshold: float
    enabled: bool = False
    pixel_threshold_strategy: str = "calibrated"
    mask_format: str = "png"
    min_area: int = 0

    def __post_init__(self) -> None:
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format {self.mask_format!r} is not one of {list(MASK_FORMATS)}")
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")

    def to_json(self) -> dict:
        return asdict(self)


def map_to_image(anomaly_map: np.ndarray, height: int, width: int) -> np.ndarray:
    """The model-resolution map resized (bilinear) to the original image size."""
    if anomaly_map.shape == (height, width):
        return anomaly_map
    return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)


def extract_regions(
    anomaly_map: np.ndarray, original_hw: tuple[int, int], pixel_threshold: float, min_area: int = 0
) -> tuple[np.ndarray, list[dict]]:
    """Mask (uint8 0/255, original size) and regions sorted by peak score, highest first.

    A pixel is defective when its map value is strictly above the threshold, as an image is anomalous
    when its score is strictly above the image threshold. Bounding boxes are [x0, y0, x1, y1] with
    x1/y1 exclusive, in original image pixels.
    """
    height, width = original_hw
    full = map_to_image(np.asarray(anomaly_map, dtype=np.float32), height, width)
    binary = (full > pixel_threshold).astype(np.uint8)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(binary, connectivity=8)
    regions = []
    for label in range(1, count):
        area = int(stats[label, cv2.CC_STAT_AREA])
        if area < min_area:
            binary[labels == label] = 0
            continue
        values = full[labels == label]
        x, y = int(stats[label, cv2.CC_STAT_LEFT]), int(stats[label, cv2.CC_STAT_TOP])
        w, h = int(stats[label, cv2.CC_STAT_WIDTH]), int(stats[label, cv2.CC_STAT_HEIGHT])
        regions.append(
            {
                "bbox_xyxy": [x, y, x + w, y + h],
                "area": area,
                "centroid_xy": [round(float(centroids[label, 0]), 2), round(float(centroids[label, 1]), 2)],
                "score_max": float(values.max()),
                "score_mean": float(values.mean()),
            }
        )
    regions.sort(key=lambda region: -region["score_max"])
    for index, region in enumerate(regions):
        region["id"] = index
    return binary * 255, regions
