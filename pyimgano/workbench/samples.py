"""A category's samples split for one run, and their images and masks read from disk."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable

import numpy as np

from pyimgano.config import ConfigError, WorkbenchConfig
from pyimgano.data.types import CategorySplit, DatasetError, Sample
from pyimgano.models.registry import get_model
from pyimgano.runtime.images import ImageReadError, read_mask, read_rgb


@dataclass
class Partition:
    fit: list[Sample]
    holdout: list[Sample]
    test: list[Sample]


def partition(split: CategorySplit, config: WorkbenchConfig) -> Partition:
    """Seeded shuffle of train/good into the part the model fits and the calibration holdout (empty when
    cross-fitting, where every train image is both; all of train/good for an imported model, which fits
    nothing here)."""
    rng = random.Random(config.seed)
    train = list(split.train)
    rng.shuffle(train)
    if config.dataset.limit_train is not None:
        train = train[: config.dataset.limit_train]
    if config.calibration.strategy == "cross_fit":
        folds = config.calibration.folds
        if len(train) < folds:
            raise ConfigError(f"{split.category}: calibration.folds {folds} needs at least {folds} train/good images, "
                              f"found {len(train)}")
        holdout_count = 0
    elif get_model(config.model.name).capabilities.imported:
        if not train:
            raise ConfigError(f"{split.category}: no train/good images to calibrate the imported model on")
        holdout_count = len(train)
    else:
        if len(train) < 2:
            raise ConfigError(f"{split.category}: at least 2 train/good images are needed (one to fit, one to calibrate)")
        holdout_count = min(len(train) - 1, max(1, math.ceil(len(train) * config.calibration.holdout_fraction)))
    test = list(split.test)
    if config.dataset.limit_test is not None:
        test = sorted(rng.sample(test, min(config.dataset.limit_test, len(test))), key=lambda s: str(s.path))
    return Partition(fit=train[holdout_count:], holdout=train[:holdout_count], test=test)


def read_images(samples: list[Sample]) -> list[np.ndarray]:
    """Original-size RGB images. A dataset image that cannot be read is an error, named."""
    images = []
    for sample in samples:
        try:
            images.append(read_rgb(sample.path))
        except ImageReadError as exc:
            raise DatasetError(f"{sample.path}: {exc}") from exc
    return images


def image_loader(samples: list[Sample], input_mode: str) -> Callable[[slice], list[np.ndarray]]:
    """`numpy`: decode every image once, up front; `paths`: decode each chunk when it is scored."""
    if input_mode == "numpy":
        decoded = read_images(samples)
        return lambda part: decoded[part]
    return lambda part: read_images(samples[part])


def read_masks(samples: list[Sample], maps: list[np.ndarray]) -> list[np.ndarray]:
    """Ground truth at each map's own size; good images (and defect images without a mask) all-normal."""
    masks = []
    for sample, anomaly_map in zip(samples, maps):
        if sample.mask_path is None:
            masks.append(np.zeros(anomaly_map.shape, dtype=bool))
            continue
        try:
            masks.append(read_mask(sample.mask_path, *anomaly_map.shape))
        except ImageReadError as exc:
            raise DatasetError(str(exc)) from exc
    return masks
