"""The overlay picture for people at the line: what `pyimgano-infer --save-overlays` writes and the run report
(report.html) shows. docs/REPORT.md says how to read it."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pyimgano.runtime.decision import Decision

# Overlays are drawn at least this tall or wide on their short side, so that their text is readable on a
# small (e.g. 128 px) model-size image; larger images keep their size.
OVERLAY_MIN_SHORT_SIDE = 384
# The colour scale runs from the pixel threshold (yellow, most transparent) to the threshold plus half its
# magnitude (red, most opaque): the same colour means the same map level on every image of a bundle.
OVERLAY_SCALE_SPAN = 0.5
OVERLAY_ALPHA = (0.35, 0.8)
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_WHITE, _BLACK, _BOX = (255, 255, 255), (0, 0, 0), (0, 255, 0)
_VERDICT_BACKGROUND = {1: (40, 40, 200), 0: (60, 130, 40)}  # BGR: red for DEFECT, green for OK
_LEGEND_BACKGROUND, _BELOW_THRESHOLD = (48, 48, 48), (128, 128, 128)


@dataclass(frozen=True)
class OverlayLayout:
    """Where things are on an overlay: a verdict banner on top, the (upscaled) image, a legend strip below."""

    scale: float  # display pixels per image pixel
    width: int
    image_height: int
    banner: int  # rows of the verdict banner above the image
    legend: int  # rows of the colour legend below it

    @property
    def height(self) -> int:
        return self.banner + self.image_height + self.legend

    @property
    def image_rows(self) -> slice:
        return slice(self.banner, self.banner + self.image_height)


def overlay_layout(image_hw: tuple[int, int]) -> OverlayLayout:
    height, width = image_hw
    scale = max(1.0, OVERLAY_MIN_SHORT_SIDE / min(height, width))
    shown_width = int(round(width * scale))
    return OverlayLayout(scale=scale, width=shown_width, image_height=int(round(height * scale)),
                         banner=max(40, round(0.1 * shown_width)), legend=max(48, round(0.125 * shown_width)))


def colour_scale_top(pixel_threshold: float) -> float:
    """The map level drawn fully red: the pixel threshold plus OVERLAY_SCALE_SPAN of its magnitude."""
    return pixel_threshold + OVERLAY_SCALE_SPAN * (abs(pixel_threshold) or 1.0)


def _ramp(fraction: np.ndarray) -> np.ndarray:
    """BGR colours from yellow (0) to red (1), float32 [..., 3]."""
    fraction = np.asarray(fraction, dtype=np.float32)
    return np.stack([np.zeros_like(fraction), 255.0 * (1.0 - fraction), np.full_like(fraction, 255.0)], axis=-1)


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def _text_size(text: str, height_px: int) -> tuple[float, int, int]:
    """(font scale, thickness, width in pixels) of `text` drawn about `height_px` tall."""
    scale = height_px / cv2.getTextSize("Ag", _FONT, 1.0, 1)[0][1]
    thickness = max(1, round(scale * 1.6))
    return scale, thickness, cv2.getTextSize(text, _FONT, scale, thickness)[0][0]


def _text(canvas: np.ndarray, text: str, x: int, baseline: int, height_px: int) -> None:
    scale, thickness, _ = _text_size(text, height_px)
    cv2.putText(canvas, text, (x, baseline), _FONT, scale, _WHITE, thickness, cv2.LINE_AA)


def _verdict_banner(canvas: np.ndarray, decision: Decision) -> None:
    canvas[:] = _VERDICT_BACKGROUND[decision.label]
    word = "DEFECT" if decision.label else "OK"
    rows, pad = canvas.shape[0], max(6, canvas.shape[0] // 5)
    _text(canvas, f"{word} {_fmt(decision.score)} (thr {_fmt(decision.threshold)})", pad, rows - pad, rows - 2 * pad)


def _legend(canvas: np.ndarray, pixel_threshold: float) -> None:
    """A bar: grey for map levels at or below the pixel threshold ("normal": the image is left as it is),
    then the yellow-to-red ramp up to colour_scale_top; the threshold marked by a white tick."""
    canvas[:] = _LEGEND_BACKGROUND
    rows, width = canvas.shape[:2]
    pad = max(5, rows // 8)
    text_px = max(10, rows // 4)
    bar_bottom = rows - pad
    bar_top = bar_bottom - max(8, rows // 4)
    left, right = pad, width - pad
    tick = left + (right - left) * 3 // 10
    canvas[bar_top:bar_bottom, left:tick] = _BELOW_THRESHOLD
    canvas[bar_top:bar_bottom, tick:right] = _ramp(np.linspace(0.0, 1.0, right - tick))[None].astype(np.uint8)
    baseline = bar_top - pad - 2
    cv2.line(canvas, (tick, baseline - text_px), (tick, bar_bottom - 1), _WHITE, max(2, rows // 20))
    top_label, threshold_label = f"{_fmt(colour_scale_top(pixel_threshold))}+", f"thr {_fmt(pixel_threshold)}"
    top_width = _text_size(top_label, text_px)[2]
    threshold_width = _text_size(threshold_label, text_px)[2]
    _text(canvas, "normal", left, baseline, text_px)
    _text(canvas, threshold_label, min(tick + pad, right - top_width - threshold_width - pad), baseline, text_px)
    _text(canvas, top_label, right - top_width, baseline, text_px)


def _box(canvas: np.ndarray, region: dict, scale: float, line: int) -> None:
    """A region box that stays visible on any colour: a dark outline around a bright inner line."""
    x0, y0, x1, y1 = region["bbox_xyxy"]
    corners = ((int(x0 * scale), int(y0 * scale)), (int(round(x1 * scale)) - 1, int(round(y1 * scale)) - 1))
    cv2.rectangle(canvas, *corners, _BLACK, line + 4)
    cv2.rectangle(canvas, *corners, _BOX, line)


def overlay(image: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float, decision: Decision) -> np.ndarray:
    """BGR picture for people at the line (docs/REPORT.md): the verdict and score written on a banner, the image
    upscaled to at least OVERLAY_MIN_SHORT_SIDE on its short side with only the pixels whose map value is above
    the pixel threshold coloured (yellow just above it to red at colour_scale_top, more opaque as the value
    grows; everything else is the image as it is), the decision's region boxes, and the colour scale below."""
    layout = overlay_layout(image.shape[:2])
    size = (layout.width, layout.image_height)
    shown = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_CUBIC)
    heat = cv2.resize(np.asarray(anomaly_map, dtype=np.float32), size, interpolation=cv2.INTER_LINEAR)
    above = heat > pixel_threshold
    top = colour_scale_top(pixel_threshold)
    fraction = np.clip((heat[above] - pixel_threshold) / (top - pixel_threshold), 0.0, 1.0)
    low, high = OVERLAY_ALPHA
    alpha = (low + (high - low) * fraction)[:, None]
    blended = (1.0 - alpha) * shown[above].astype(np.float32) + alpha * _ramp(fraction)
    shown[above] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    line = max(1, round(layout.width / 256))
    for region in decision.regions or []:
        _box(shown, region, layout.scale, line)
    picture = np.empty((layout.height, layout.width, 3), dtype=np.uint8)
    _verdict_banner(picture[: layout.banner], decision)
    picture[layout.image_rows] = shown
    _legend(picture[layout.banner + layout.image_height :], pixel_threshold)
    return picture
