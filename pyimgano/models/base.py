"""What every detector shares: uint8 batches onto the device, and scoring through its exportable graph."""

from __future__ import annotations

import numpy as np
import torch


class NotFittedError(RuntimeError):
    pass


class GraphDetector:
    """Subclasses provide `params.batch_size`, `device` and `graph()` (the module that is also exported),
    so scoring in the workbench and in the bundle run the very same forward."""

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
