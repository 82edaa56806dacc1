"""Cross-fitted calibration: every train/good image gets an out-of-fold score and map from a model fitted
without it, and the shipped model is fitted on all of them. No image is spent only on calibration, and
the scores the thresholds are read from are what a new good part scores.

Models that score from extracted features (EmbeddingDetector: PatchCore, PaDiM) embed every image once
and summarise each fold's features once (PaDiM: its sums; PatchCore: a coreset of the fold's patches at
the model's ratio); each fold's model is assembled from the other folds' summaries and scores its own
fold's features, and the shipped model from all of them. For PatchCore that makes the shipped bank a
composable coreset (the union of the folds' coresets) rather than one greedy pass over all patches: the
same number of rows, each fold's patches covered as its own coreset covers them, for a k-th of the
selection cost (one pass over all patches costs the square of their count). Other models (the
autoencoder) are fitted once per fold on the other folds' images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from pyimgano.config import TrainingConfig
from pyimgano.models.base import EmbeddingDetector, GraphDetector
from pyimgano.runtime.progress import track
from pyimgano.runtime.scoring import MapSteps, combine, model_inputs
from pyimgano.workbench.image_scoring import fit_inputs


@dataclass(frozen=True)
class OutOfFold:
    scores: np.ndarray  # [N] image scores, each from the fold model that did not see the image
    maps: list[np.ndarray]  # raw maps (before the map post-processing), one per image
    fold_of: np.ndarray  # [N] the fold each image was held out in


def assign_folds(count: int, folds: int, seed: int) -> np.ndarray:
    """Seeded, balanced fold numbers for `count` images."""
    if not 2 <= folds <= count:
        raise ValueError(f"cross-fitting needs 2 <= folds <= images, got {folds} folds for {count} images")
    order = np.random.default_rng(seed).permutation(count)
    fold_of = np.empty(count, dtype=np.int64)
    fold_of[order] = np.arange(count) % folds
    return fold_of


def cross_fit(
    detector: GraphDetector, images: list[np.ndarray], steps: MapSteps, folds: int, seed: int, training: TrainingConfig
) -> OutOfFold:
    """Out-of-fold scores and raw maps of `images`; `detector` ends fitted on all of them."""
    inputs = [model_inputs(image, steps.contract, steps.tiling) for image in images]
    owner = np.repeat(np.arange(len(images)), [len(part) for part in inputs])
    flat = np.concatenate(inputs)
    fold_of = assign_folds(len(images), folds, seed)
    input_fold = fold_of[owner]
    input_scores = np.empty(len(flat), dtype=np.float32)
    input_maps = np.empty((len(flat), *flat.shape[1:3]), dtype=np.float32)
    embedded = detector.embed_inputs(flat) if isinstance(detector, EmbeddingDetector) else None
    summaries = ([detector.summarise(embedded.take(np.flatnonzero(input_fold == fold))) for fold in range(folds)]
                 if embedded is not None else None)
    for fold in track(range(folds), "cross-fit folds", folds):
        held = np.flatnonzero(input_fold == fold)
        # A shallow copy shares the (frozen) backbone; fitting sets the copy's own fitted state.
        model = copy.copy(detector)
        if embedded is not None:
            model.fit_summaries([summary for other, summary in enumerate(summaries) if other != fold])
            scores, maps = model.score_embedded(embedded.take(held))
        else:
            fit_inputs(model, flat[input_fold != fold], training)
            scores, maps = model.score_batch(flat[held])
        input_scores[held], input_maps[held] = scores, maps
    if embedded is not None:
        detector.fit_summaries(summaries)
    else:
        fit_inputs(detector, flat, training)
    scores, maps = [], []
    for index, image in enumerate(images):
        rows = owner == index
        score, anomaly_map = combine(image.shape[:2], input_scores[rows], input_maps[rows], steps.tiling)
        scores.append(score)
        maps.append(anomaly_map)
    return OutOfFold(np.asarray(scores, dtype=np.float32), maps, fold_of)
