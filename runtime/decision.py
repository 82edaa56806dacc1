"""One verdict per image: the image decision, and the defect regions that locate it.

The rule, the same for `pyimgano-infer`, the Python API and the line service: a part is anomalous when
its image score is strictly above the image threshold; regions are extracted only for an anomalous part
(pixels above the pixel threshold, with the defect settings). A part judged good has no regions and an
empty mask, so a record never says OK while listing defects. An anomalous part may have no region when
no pixel reaches the pixel threshold (the evidence is spread thin); its record says so (`located` false).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pyimgano.runtime.defects import DefectsConfig, extract_regions


class NoDecision(ValueError):
    """The model produced a non-finite score or map: NaN compares false with the threshold, so it would pass as a
    good part. The caller reports the image as failed (an error record, a 500), never as a verdict."""


@dataclass(frozen=True)
class Decision:
    score: float
    label: int  # 1 = anomalous (score > threshold)
    threshold: float
    # With defect extraction: the regions (empty for a good part), the uint8 0/255 mask at the image's size,
    # and the pixel threshold used.
    regions: list[dict] | None = None
    mask: np.ndarray | None = None
    pixel_threshold: float | None = None

    @property
    def located(self) -> bool | None:
        """Whether an anomalous part's defect was located by at least one region (None: not asked, or good)."""
        if self.regions is None or not self.label:
            return None
        return bool(self.regions)


def decide(score: float, anomaly_map: np.ndarray, image_hw: tuple[int, int], image_threshold: float,
           defects: DefectsConfig | None = None, pixel_threshold: float | None = None) -> Decision:
    if not (math.isfinite(float(score)) and np.isfinite(anomaly_map).all()):
        raise NoDecision("the model produced a non-finite score or map for this image; no decision")
    label = int(score > image_threshold)
    if defects is None:
        return Decision(float(score), label, image_threshold)
    if label:
        mask, regions = extract_regions(anomaly_map, image_hw, pixel_threshold, defects)
    else:
        mask, regions = np.zeros(image_hw, dtype=np.uint8), []
    return Decision(float(score), label, image_threshold, regions, mask, pixel_threshold)
