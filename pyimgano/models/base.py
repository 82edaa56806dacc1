"""The detector contract every registered model keeps, and what the rest of the product may ask of it.

scikit-learn's conventions: parameters stored in `__init__`, fitted state in attributes ending in `_`,
`fit` returns self, a clear error when used unfitted, one score direction (higher = more anomalous).
The exporter and the workbench ask `capabilities`, never a model's name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from pyimgano.models.registry import Capabilities


class NotFittedError(RuntimeError):
    pass


class GraphDetector(ABC):
    """Subclasses provide `params.batch_size`, `device`, `capabilities`, the fitted attribute's name and
    `graph()` (the module that is also exported), so scoring in the workbench and in the bundle run the
    very same forward."""

    # The model's registered capabilities (its ModelEntry's, in <model>_spec.py).
    capabilities: ClassVar[Capabilities] = Capabilities()
    # The attribute `fit` sets last: present = fitted.
    fitted_attribute: ClassVar[str]

    @abstractmethod
    def fit(self, images: np.ndarray, epochs: int | None = None, lr: float | None = None) -> "GraphDetector":
        """Fits on uint8 [N,H,W,3] normal images; returns self."""

    @abstractmethod
    def graph(self, precision: str = "fp32") -> torch.nn.Module:
        """The whole scoring path as one exportable module: uint8 NHWC in, (scores [B], maps [B,H,W]) out."""

    @abstractmethod
    def describe(self) -> dict:
        """JSON-ready description for reports and the bundle manifest's `model` block."""

    @abstractmethod
    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        """(arrays, JSON metadata) that `load_state` restores exactly; nothing pickled."""

    @abstractmethod
    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> "GraphDetector":
        """Restores `state()`'s output; returns self."""

    @property
    def trains(self) -> bool:
        return self.capabilities.trains

    @property
    def fitted(self) -> bool:
        return hasattr(self, self.fitted_attribute)

    def check_fitted(self, doing: str) -> None:
        if not self.fitted:
            raise NotFittedError(f"{type(self).__name__} is not fitted: cannot {doing}; call fit() or load a checkpoint first")

    def check_precision(self, precision: str) -> None:
        if precision not in self.capabilities.precisions:
            raise ValueError(f"precision {precision!r} is not one of {list(self.capabilities.precisions)} "
                             f"for {type(self).__name__}")

    def _batches(self, images: np.ndarray):
        for start in range(0, len(images), self.params.batch_size):
            yield torch.from_numpy(np.ascontiguousarray(images[start : start + self.params.batch_size])).to(self.device)

    @torch.no_grad()
    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], maps [N,H,W]) as float32 numpy arrays; higher = more anomalous."""
        graph = self.graph()
        scores, maps = [], []
        for batch in self._batches(images):
            batch_scores, batch_maps = graph(batch)
            scores.append(batch_scores.cpu().numpy())
            maps.append(batch_maps.cpu().numpy())
        return np.concatenate(scores).astype(np.float32), np.concatenate(maps).astype(np.float32)


@dataclass(frozen=True)
class Embedded:
    """Model inputs' features, extracted once: cross-fitted calibration fits and scores folds on subsets."""

    features: torch.Tensor  # [N, P, D] on the detector's device, P = height * width
    height: int
    width: int

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def take(self, rows: np.ndarray) -> "Embedded":
        index = torch.as_tensor(np.asarray(rows, dtype=np.int64), device=self.features.device)
        return Embedded(self.features.index_select(0, index), self.height, self.width)


class EmbeddingDetector(GraphDetector):
    """A detector whose fitted state is computed from backbone features alone (a bank, Gaussians), so it can
    be fitted and scored on features extracted once, and fitted from summaries of parts of them; its graph
    is the embedder followed by `score_features`."""

    @abstractmethod
    def embed_inputs(self, images: np.ndarray) -> Embedded:
        """Features of uint8 [N,H,W,3] model inputs."""

    def fit_embedded(self, embedded: Embedded) -> "EmbeddingDetector":
        """Fits on features (as one part); returns self."""
        return self.fit_summaries([self.summarise(embedded)])

    @abstractmethod
    def summarise(self, embedded: Embedded) -> object:
        """What fitting keeps of one part of the images' features, such that `fit_summaries` of the parts'
        summaries fits their union: cross-fitting summarises each fold once and assembles every fold model,
        and the shipped one, from the summaries (PaDiM: its sums, exactly; PatchCore: a coreset of the part
        at the model's ratio, a composable coreset)."""

    @abstractmethod
    def fit_summaries(self, summaries: list) -> "EmbeddingDetector":
        """Fits on the union of the summarised parts; returns self."""

    def fit(self, images: np.ndarray, epochs: int | None = None, lr: float | None = None) -> "EmbeddingDetector":
        return self.fit_embedded(self.embed_inputs(images))

    @torch.no_grad()
    def score_embedded(self, embedded: Embedded) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], maps [N,H,W]) of embedded inputs: what score_batch gives for the same inputs."""
        graph = self.graph()
        scores, maps = [], []
        for start in range(0, len(embedded), self.params.batch_size):
            part = embedded.features[start : start + self.params.batch_size]
            batch_scores, batch_maps = graph.score_features(part, embedded.height, embedded.width)
            scores.append(batch_scores.cpu().numpy())
            maps.append(batch_maps.cpu().numpy())
        return np.concatenate(scores).astype(np.float32), np.concatenate(maps).astype(np.float32)
