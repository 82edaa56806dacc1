"""What every dataset layout yields: samples with their ground truth, split per category."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyimgano.runtime.images import ImageReadError, InputContract, read_rgb, to_contract

GOOD = "good"


class DatasetError(Exception):
    """The dataset is missing, empty or holds an unreadable training image."""


@dataclass(frozen=True)
class Sample:
    path: Path
    # The ground truth: 1 = anomalous. (Records call the prediction `label`; this is `truth` there.)
    truth: int
    defect_type: str
    mask_path: Path | None


@dataclass(frozen=True)
class CategorySplit:
    category: str
    train: list[Sample]
    test: list[Sample]

    @property
    def has_masks(self) -> bool:
        return any(sample.mask_path is not None for sample in self.test)


def load_images(samples: list[Sample], contract: InputContract) -> np.ndarray:
    """uint8 [N,H,W,3] at the contract's size. A dataset image that cannot be read is an error, named."""
    out = np.empty((len(samples), contract.height, contract.width, 3), dtype=np.uint8)
    for i, sample in enumerate(samples):
        try:
            out[i] = to_contract(read_rgb(sample.path), contract)
        except ImageReadError as exc:
            raise DatasetError(f"{sample.path}: {exc}") from exc
    return out
