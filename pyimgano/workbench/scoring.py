"""Fitting a detector on whole images (resized or tiled) and scoring them with the runtime's own code."""

from __future__ import annotations

from typing import Callable

import numpy as np

from pyimgano.runtime.progress import track
from pyimgano.runtime.images import InputContract
from pyimgano.runtime.scoring import model_inputs, score_images
from pyimgano.runtime.tiling import TilingConfig


class ImageScoring:
    def __init__(self, detector, contract: InputContract, tiling: TilingConfig | None, batch_size: int):
        self.detector = detector
        self.contract = contract
        self.tiling = tiling
        self.batch_size = batch_size

    def fit(self, images: list[np.ndarray], training) -> dict:
        """Calls fit with the training knobs where the model trains; says what happened, for the report."""
        batch = np.concatenate([model_inputs(image, self.contract, self.tiling) for image in images])
        if training.enabled and self.detector.trains:
            self.detector.fit(batch, epochs=training.epochs, lr=training.lr)
            return {"enabled": True, "applied": True, "epochs": training.epochs, "lr": training.lr}
        self.detector.fit(batch)
        if training.enabled:
            return {"enabled": True, "applied": False, "reason": f"{type(self.detector).__name__} does not train"}
        return {"enabled": False, "applied": False}

    def predict(
        self, load: Callable[[slice], list[np.ndarray]], count: int, label: str = "scoring"
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Scores `count` images, asking `load` for them in chunks of `batch_size` (so `paths` mode keeps
        only one chunk of decoded images in memory, and a terminal shows progress)."""
        scores, maps = [], []
        chunks = range(0, count, self.batch_size)
        for start in track(chunks, label, len(chunks)):
            chunk_scores, chunk_maps = score_images(
                self.detector.predict_maps, load(slice(start, start + self.batch_size)), self.contract, self.tiling,
                self.batch_size,
            )
            scores.append(chunk_scores)
            maps.extend(chunk_maps)
        return np.concatenate(scores), maps
