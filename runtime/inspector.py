"""The edge side's Python API: open a bundle once, inspect images (a path, an array or a list of either),
get each part's score, decision, anomaly map and defect regions. torch-free; the numbers are the ones
`pyimgano-infer` writes for the same image and bundle, computed by the same steps."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from pyimgano.runtime import strict
from pyimgano.runtime.bundle import open_bundle
from pyimgano.runtime.context import ScoringContext
from pyimgano.runtime.decision import decide
from pyimgano.runtime.defects import DefectsConfig
from pyimgano.runtime.engine import Engine
from pyimgano.runtime.images import ImageReadError, read_rgb
from pyimgano.runtime.signing import Origin

ImageLike = Union[str, os.PathLike, np.ndarray]


@dataclass(frozen=True)
class Inspection:
    """One image's outcome. `label` 1 = anomalous (score strictly above `threshold`). `map` is the
    post-processed anomaly map at the model's resolution (tiled: the image's). `mask` (uint8 0/255) and
    `regions` (boxes in original image pixels) are there when the inspector extracts defects."""

    score: float
    label: int
    threshold: float
    map: np.ndarray
    image_size: tuple[int, int]
    regions: list[dict] | None = None
    mask: np.ndarray | None = None
    pixel_threshold: float | None = None


class Inspector:
    """`Inspector("bundle.zip")`: a verified bundle on ONNX Runtime.

    `defects=True` extracts regions with the bundle's own defect defaults; a DefectsConfig (or a dict of
    its keys over the bundle's defaults) chooses other settings. Bad settings raise ValueError here, at
    construction, not at the first image. `trusted_keys` (a file or folder of Ed25519 public keys) opens
    only a bundle one of them signed; `inspector.origin` says whether and by which key it was verified.
    """

    def __init__(self, bundle: str | os.PathLike, device: str = "auto", threads: int | None = None,
                 defects: bool | DefectsConfig | dict = False, batch_size: int = 8,
                 trusted_keys: str | os.PathLike | None = None):
        self.engine = Engine(open_bundle(bundle, trusted_keys=trusted_keys), device=device, intra_op_threads=threads)
        self.batch_size = batch_size
        self.defects = self._defects(defects)
        self.pixel_threshold = self.context.pixel_threshold_for(self.defects) if self.defects else None

    def _defects(self, defects: bool | DefectsConfig | dict) -> DefectsConfig | None:
        if defects is False or defects is None:
            return None
        if defects is True:
            return dataclasses.replace(self.context.defects, enabled=True)
        if isinstance(defects, DefectsConfig):
            return defects
        # Strictly, as the manifest: a misspelt key is refused with the nearest valid one.
        return strict.parse(DefectsConfig, {**self.context.defects.to_json(), "enabled": True, **defects}, "defects")

    @property
    def context(self) -> ScoringContext:
        return self.engine.context

    @property
    def origin(self) -> Origin:
        return self.engine.bundle.origin

    def inspect(self, images: ImageLike | Sequence[ImageLike]) -> Inspection | list[Inspection]:
        """One image (path or uint8 HxWx3 RGB array) -> one Inspection; a list -> a list, in order.
        An unreadable path raises ImageReadError naming it; nothing is scored as normal in its place."""
        if isinstance(images, (str, os.PathLike)) or (isinstance(images, np.ndarray) and images.ndim == 3):
            return self._inspect([images])[0]
        return self._inspect(list(images))

    def _inspect(self, items: list[ImageLike]) -> list[Inspection]:
        images = [_read(item) if isinstance(item, (str, os.PathLike)) else _checked(item) for item in items]
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            scores, maps = self.context.steps.score(self.engine, chunk, self.batch_size)
            results += [self._decide(float(score), anomaly_map, image.shape[:2])
                        for score, anomaly_map, image in zip(scores, maps, chunk)]
        return results

    def _decide(self, score: float, anomaly_map: np.ndarray, hw: tuple[int, int]) -> Inspection:
        decision = decide(score, anomaly_map, hw, self.context.image_threshold, self.defects, self.pixel_threshold)
        return Inspection(score=decision.score, label=decision.label, threshold=decision.threshold, map=anomaly_map,
                          image_size=(int(hw[0]), int(hw[1])), regions=decision.regions, mask=decision.mask,
                          pixel_threshold=decision.pixel_threshold)


def _read(path: str | os.PathLike) -> np.ndarray:
    try:
        return read_rgb(path)
    except ImageReadError as exc:
        raise ImageReadError(f"{os.fspath(path)}: {exc}") from exc


def _checked(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"an image array must be uint8 HxWx3 RGB, got {getattr(image, 'dtype', type(image))} "
                         f"{getattr(image, 'shape', '')}")
    return image


