"""A detector fitted on whole images (resized or tiled) and any batch scorer run over many images in
chunks, with the runtime's own scoring steps, so the workbench computes what the edge computes."""

from __future__ import annotations

from typing import Callable

import numpy as np

from pyimgano.config import TrainingConfig
from pyimgano.runtime.progress import track
from pyimgano.runtime.scoring import BatchScorer, MapSteps, model_inputs

# Model inputs per chunk: bounds host memory; the detector splits a chunk further by model.batch_size.
CHUNK = 64


def fit_detector(detector, images: list[np.ndarray], steps: MapSteps, training: TrainingConfig) -> None:
    """Fits on the images as the model sees them (an imported model came fitted: nothing to do)."""
    if detector.capabilities.imported:
        return
    fit_inputs(detector, np.concatenate([model_inputs(image, steps.contract, steps.tiling) for image in images]),
               training)


def fit_inputs(detector, batch: np.ndarray, training: TrainingConfig):
    """Fits on uint8 model inputs, with the run's epochs and learning rate for a model that trains (its
    ModelEntry.validate has refused a training switch that does not match what the model does); returns it."""
    if detector.capabilities.trains:
        return detector.fit(batch, epochs=training.epochs, lr=training.lr)
    return detector.fit(batch)


def training_report(detector) -> dict:
    """What training did, for the report."""
    if detector.capabilities.trains:
        return {"enabled": True, "applied": True, "epochs": detector.epochs_, "lr": detector.lr_}
    return {"enabled": False, "applied": False}


def predict_chunked(
    scorer: BatchScorer, steps: MapSteps, load: Callable[[slice], list[np.ndarray]], count: int, label: str = "scoring"
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Scores and post-processed maps of `count` images, asking `load` for them in chunks (so `paths` mode
    keeps only one chunk of decoded images in memory, and a terminal shows progress)."""
    scores, maps = [], []
    chunks = range(0, count, CHUNK)
    for start in track(chunks, label, len(chunks)):
        chunk_scores, chunk_maps = steps.score(scorer, load(slice(start, start + CHUNK)), CHUNK)
        scores.append(chunk_scores)
        maps.extend(chunk_maps)
    return np.concatenate(scores), maps
