"""Defect extraction: anomaly map -> binary mask and connected regions in original image pixels.

Pure numpy/OpenCV so the workbench and the edge compute the same thing with the same code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import cv2
import numpy as np

MASK_FORMATS = ("png", "npy")
THRESHOLD_STRATEGIES = ("calibrated", "fixed", "normal_pixel_quantile")
REGION_SORT_KEYS = ("score_max", "score_mean", "area")
SMOOTH_MODES = ("none", "gaussian", "median")
# cv2.medianBlur takes float32 (and uint16) images only for apertures 3 and 5; larger ones need uint8,
# which would quantise the map to 256 levels and move the threshold. So median smoothing is 3 or 5.
MEDIAN_KSIZES = (3, 5)
# Quantile levels stored from normal pixels at export (`normal_pixel_quantiles`).
DEFAULT_LEVELS = (0.5, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99999)


def _finite(value: float | None) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value))


@dataclass(frozen=True)
class DefectsConfig:
    """The seed's `defects` block. Thresholds and scores are in the map's units (raw, or normalised
    when the bundle's map post-processing normalises).

    Pixel sizes are in original-image pixels, except `smooth_ksize`, which is in anomaly-map pixels
    (smoothing runs on the model-resolution map, before it is resized to the image).
    Every knob below `region_sort` is off by default, and then the output is what it was without it.
    """

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
    # Map smoothing before thresholding: "none", "gaussian" (any odd ksize >= 3, sigma from ksize) or
    # "median" (ksize 3 or 5). ksize in anomaly-map pixels; region scores are read from the smoothed map.
    smooth: str = "none"
    smooth_ksize: int = 0
    # Hysteresis: pixels above this low threshold are defects when their 8-connected group of
    # above-low pixels reaches above the pixel threshold somewhere. Must be below the pixel threshold.
    hysteresis_low: float | None = None
    # Regions separated by at most this many background pixels (8-neighbourhood, i.e. Chebyshev
    # distance between their nearest pixels <= merge_gap_px + 1) are reported as one region.
    merge_gap_px: int = 0
    # Shape filters on each (merged) region: area / bbox area, longer / shorter bbox side,
    # area / convex hull area (hull over the pixels' squares, so a filled rectangle has solidity 1).
    min_fill_ratio: float | None = None
    max_aspect_ratio: float | None = None
    min_solidity: float | None = None
    # Region refinement relative to each region's peak: of an (8-connected) region above the pixel
    # threshold t with peak value p, only pixels at or above t + f * (p - t) are kept. A blurred map spreads
    # a defect's response well beyond the defect; its edge lies near a fixed share of the way up the peak.
    region_peak_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.mask_format not in MASK_FORMATS:
            raise ValueError(f"mask_format {self.mask_format!r} is not one of {list(MASK_FORMATS)}")
        if self.pixel_threshold_strategy not in THRESHOLD_STRATEGIES:
            raise ValueError(
                f"pixel_threshold_strategy {self.pixel_threshold_strategy!r} is not one of {list(THRESHOLD_STRATEGIES)}"
            )
        if self.pixel_threshold_strategy == "fixed" and self.pixel_threshold is None:
            raise ValueError("pixel_threshold_strategy 'fixed' needs pixel_threshold")
        # A NaN compares false with every region score, so a NaN minimum would silently keep every region.
        for name in ("pixel_threshold", "min_score_max", "min_score_mean"):
            if not _finite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number or null, got {getattr(self, name)!r}")
        if self.region_sort not in REGION_SORT_KEYS:
            raise ValueError(f"region_sort {self.region_sort!r} is not one of {list(REGION_SORT_KEYS)}")
        if not 0.0 < self.pixel_normal_quantile < 1.0:
            raise ValueError(f"pixel_normal_quantile must be in (0, 1), got {self.pixel_normal_quantile}")
        for name in ("border_ignore_px", "min_area", "open_ksize", "close_ksize", "smooth_ksize", "merge_gap_px"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_regions is not None and self.max_regions < 1:
            raise ValueError(f"max_regions must be >= 1 or null, got {self.max_regions}")
        if self.roi_xyxy_norm is not None:
            x0, y0, x1, y1 = self.roi_xyxy_norm
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(f"roi_xyxy_norm must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {self.roi_xyxy_norm}")
        if self.smooth not in SMOOTH_MODES:
            raise ValueError(f"smooth {self.smooth!r} is not one of {list(SMOOTH_MODES)}")
        if self.smooth == "gaussian" and not (self.smooth_ksize >= 3 and self.smooth_ksize % 2 == 1):
            raise ValueError(f"smooth_ksize must be odd and >= 3 for gaussian smoothing, got {self.smooth_ksize}")
        if self.smooth == "median" and self.smooth_ksize not in MEDIAN_KSIZES:
            raise ValueError(
                f"smooth_ksize must be one of {list(MEDIAN_KSIZES)} for median smoothing (OpenCV's float median), "
                f"got {self.smooth_ksize}"
            )
        if self.hysteresis_low is not None:
            if not _finite(self.hysteresis_low):
                raise ValueError(f"hysteresis_low must be a finite number or null, got {self.hysteresis_low!r}")
            if (
                self.pixel_threshold_strategy == "fixed"
                and self.pixel_threshold is not None
                and not self.hysteresis_low < self.pixel_threshold
            ):
                raise ValueError(
                    f"hysteresis_low ({self.hysteresis_low}) must be below pixel_threshold ({self.pixel_threshold})"
                )
        for name in ("min_fill_ratio", "min_solidity"):
            value = getattr(self, name)
            if value is not None and not (_finite(value) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be in [0, 1] or null, got {value!r}")
        if self.max_aspect_ratio is not None and not (_finite(self.max_aspect_ratio) and self.max_aspect_ratio >= 1.0):
            raise ValueError(f"max_aspect_ratio must be >= 1 or null, got {self.max_aspect_ratio!r}")
        if self.region_peak_fraction is not None and not (
            _finite(self.region_peak_fraction) and 0.0 <= self.region_peak_fraction < 1.0
        ):
            raise ValueError(f"region_peak_fraction must be in [0, 1) or null, got {self.region_peak_fraction!r}")

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


def smooth_map(anomaly_map: np.ndarray, config: DefectsConfig) -> np.ndarray:
    """The float32 map smoothed as the config says (unchanged for smooth "none")."""
    if config.smooth == "none":
        return anomaly_map
    data = np.ascontiguousarray(anomaly_map, dtype=np.float32)
    k = config.smooth_ksize
    if config.smooth == "gaussian":
        return cv2.GaussianBlur(data, (k, k), 0)
    return cv2.medianBlur(data, k)


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


def _hysteresis(full: np.ndarray, low: float, high: float) -> np.ndarray:
    """uint8 mask of above-`low` pixels whose 8-connected above-`low` component has a pixel above `high`."""
    weak = (full > low).astype(np.uint8)
    count, labels = cv2.connectedComponents(weak, connectivity=8)
    seeded = np.zeros(count, dtype=bool)
    seeded[np.unique(labels[full > high])] = True
    seeded[0] = False
    return seeded[labels].astype(np.uint8)


def _refine_to_peaks(binary: np.ndarray, full: np.ndarray, threshold: float, fraction: float) -> np.ndarray:
    """Keeps, of each 8-connected region, the pixels at or above threshold + fraction * (its peak - threshold)."""
    count, labels = cv2.connectedComponents(binary, connectivity=8)
    if count <= 1:
        return binary
    peaks = np.full(count, -np.inf, dtype=np.float64)
    np.maximum.at(peaks, labels[binary > 0], full[binary > 0])
    peaks[0] = threshold  # the background (label 0) has no peak; its cut is set below
    cuts = threshold + fraction * (peaks - threshold)
    cuts[0] = np.inf
    return (binary.astype(bool) & (full >= cuts[labels])).astype(np.uint8)


def _group_labels(binary: np.ndarray, merge_gap_px: int) -> np.ndarray:
    """int32 label per foreground pixel (0 = background): its 8-connected component, or with a merge gap
    the component of the dilated mask it falls in. A square kernel of side gap + 1 grows every component
    by `gap` pixels in total per axis, so two components touch after dilation exactly when at most `gap`
    background pixels separate them."""
    if merge_gap_px:
        size = merge_gap_px + 1
        dilated = cv2.dilate(binary, np.ones((size, size), dtype=np.uint8))
        _, labels = cv2.connectedComponents(dilated, connectivity=8)
        labels[binary == 0] = 0
        return labels
    _, labels = cv2.connectedComponents(binary, connectivity=8)
    return labels


def _solidity(xs: np.ndarray, ys: np.ndarray, area: int) -> float:
    """Area over the area of the convex hull of the region's pixel squares (1 for < 3 pixels)."""
    if area < 3:
        return 1.0
    x0, y0 = int(xs.min()), int(ys.min())
    crop = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), dtype=bool)
    crop[ys - y0, xs - x0] = True
    rows = np.flatnonzero(crop.any(axis=1))
    first = crop[rows].argmax(axis=1)
    last = crop.shape[1] - 1 - crop[rows, ::-1].argmax(axis=1)
    # The corners of each row's outermost pixels span the same hull as all the pixels' corners.
    left, right = first + x0, last + x0 + 1
    top, bottom = rows + y0, rows + y0 + 1
    points = np.concatenate(
        [np.stack([left, top], 1), np.stack([left, bottom], 1), np.stack([right, top], 1), np.stack([right, bottom], 1)]
    ).astype(np.int32)
    hull_area = cv2.contourArea(cv2.convexHull(points))
    return float(area / hull_area) if hull_area > 0 else 1.0


def extract_regions(
    anomaly_map: np.ndarray, original_hw: tuple[int, int], pixel_threshold: float, config: DefectsConfig = DefectsConfig()
) -> tuple[np.ndarray, list[dict]]:
    """Mask (uint8 0/255, original size) and regions, in original image pixels.

    In order: the map is smoothed (`smooth`, at map resolution) and resized to the original size. A pixel
    is defective when its map value is strictly above the threshold (as an image is anomalous when its
    score is strictly above the image threshold) or, with `hysteresis_low`, above the low threshold and
    8-connected through above-low pixels to one above the threshold; and it lies in the allowed area
    (ROI minus border). Then opening, closing, hole filling, and the refinement of each region to its
    peak (`region_peak_fraction`). Components at most `merge_gap_px` apart
    become one region (the mask keeps their own pixels). Regions below `min_area`, `min_score_max`,
    `min_score_mean`, `min_fill_ratio` or `min_solidity`, or above `max_aspect_ratio`, are dropped (and
    cleared from the mask); the rest are sorted by `region_sort`, highest first, and cut to
    `max_regions`. Boxes are [x0, y0, x1, y1], x1/y1 exclusive. Scores are read from the smoothed map.
    """
    height, width = original_hw
    if config.hysteresis_low is not None and not config.hysteresis_low < pixel_threshold:
        raise ValueError(f"hysteresis_low ({config.hysteresis_low}) must be below the pixel threshold ({pixel_threshold})")
    full = map_to_image(smooth_map(np.asarray(anomaly_map, dtype=np.float32), config), height, width)
    if config.hysteresis_low is not None:
        above = _hysteresis(full, config.hysteresis_low, pixel_threshold)
    else:
        above = (full > pixel_threshold).astype(np.uint8)
    binary = above & _allowed_area(height, width, config)
    if config.open_ksize:
        binary = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _ellipse(config.open_ksize))
    if config.close_ksize:
        binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _ellipse(config.close_ksize))
    if config.fill_holes:
        binary = _fill_holes(binary)
    if config.region_peak_fraction is not None:
        binary = _refine_to_peaks(binary, full, pixel_threshold, config.region_peak_fraction)
    labels = _group_labels(binary, config.merge_gap_px)

    # Foreground pixels in raster order, grouped by label (a stable sort keeps raster order in a group).
    ys, xs = np.nonzero(labels)
    pixel_labels = labels[ys, xs]
    order = np.argsort(pixel_labels, kind="stable")
    ys, xs, pixel_labels = ys[order], xs[order], pixel_labels[order]
    unique, starts = np.unique(pixel_labels, return_index=True)
    ends = np.append(starts[1:], len(pixel_labels))

    regions = []
    for start, end in zip(starts, ends):
        rys, rxs = ys[start:end], xs[start:end]
        values = full[rys, rxs]
        area = int(end - start)
        score_max, score_mean = float(values.max()), float(values.mean())
        x0, y0, x1, y1 = int(rxs.min()), int(rys.min()), int(rxs.max()) + 1, int(rys.max()) + 1
        w, h = x1 - x0, y1 - y0
        if (
            area < config.min_area
            or (config.min_score_max is not None and score_max < config.min_score_max)
            or (config.min_score_mean is not None and score_mean < config.min_score_mean)
            or (config.min_fill_ratio is not None and area / (w * h) < config.min_fill_ratio)
            or (config.max_aspect_ratio is not None and max(w, h) / min(w, h) > config.max_aspect_ratio)
            or (config.min_solidity is not None and _solidity(rxs, rys, area) < config.min_solidity)
        ):
            binary[rys, rxs] = 0
            continue
        regions.append(
            {
                "bbox_xyxy": [x0, y0, x1, y1],
                "area": area,
                "centroid_xy": [round(float(rxs.mean()), 2), round(float(rys.mean()), 2)],
                "score_max": score_max,
                "score_mean": score_mean,
                "_pixels": (rys, rxs),
            }
        )
    regions.sort(key=lambda region: -region[config.region_sort])
    if config.max_regions is not None:
        for dropped in regions[config.max_regions :]:
            binary[dropped["_pixels"]] = 0
        regions = regions[: config.max_regions]
    for index, region in enumerate(regions):
        del region["_pixels"]
        region["id"] = index
    return binary * 255, regions


def normal_pixel_quantiles(values: np.ndarray, levels: Sequence[float] = DEFAULT_LEVELS) -> dict:
    """The quantile table stored in a bundle from normal images' map values: {"q": sorted levels,
    "values": the values at those levels} (numpy's linear quantiles; non-finite values are ignored)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[np.isfinite(data)]
    if data.size == 0:
        raise ValueError("normal_pixel_quantiles needs at least one finite value")
    qs = sorted({float(q) for q in levels})
    if not qs or not all(0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"levels must be a non-empty set of quantile levels in [0, 1], got {list(levels)}")
    # Non-decreasing by construction; the running max only guards against rounding in the interpolation.
    quantile_values = np.maximum.accumulate(np.quantile(data, qs))
    return {"q": qs, "values": [float(v) for v in quantile_values]}


def threshold_from_normal_quantiles(quantiles: dict, q: float) -> float:
    """The map value at quantile level `q`, linearly interpolated in a `normal_pixel_quantiles` table.
    ValueError when `q` is outside the stored levels or the table is malformed."""
    try:
        levels = np.asarray(quantiles["q"], dtype=np.float64)
        values = np.asarray(quantiles["values"], dtype=np.float64)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"quantile table must be {{'q': [...], 'values': [...]}}: {exc}") from exc
    if levels.ndim != 1 or levels.shape != values.shape or levels.size == 0:
        raise ValueError("quantile table needs equally long, non-empty 'q' and 'values' lists")
    if not (np.all(np.isfinite(levels)) and np.all(np.isfinite(values))):
        raise ValueError("quantile table holds non-finite numbers")
    if np.any(np.diff(levels) <= 0):
        raise ValueError("quantile table's 'q' must be strictly increasing")
    if not levels[0] <= q <= levels[-1]:
        raise ValueError(f"quantile {q} is outside the stored range [{levels[0]}, {levels[-1]}]")
    return float(np.interp(q, levels, values))
