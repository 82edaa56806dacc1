"""The detector of an imported anomalib checkpoint: built fitted (its state is the checkpoint's), scored by
the graph models/anomalib_graph.py rebuilds from it.

A run keeps the imported state in its own checkpoint (the bank or the Gaussians) with the sha256 of the
anomalib file; loading a run back rebuilds from the anomalib file and refuses one whose digest or state
differs, as backbone detectors refuse other ImageNet weights (the run stays small: the backbone's weights
are the anomalib file's)."""

from __future__ import annotations

import numpy as np
import torch

from pyimgano.models.anomalib_checkpoint_spec import ANOMALIB_CHECKPOINT, NAME, AnomalibCheckpointParams
from pyimgano.models.anomalib_format import AnomalibCheckpointError
from pyimgano.models.anomalib_graph import build_graph
from pyimgano.models.base import GraphDetector
from pyimgano.runtime.bundle import sha256_file

# The fitted state a run records, per family (names as in the anomalib model, without `model.`).
FITTED_STATE = {"patchcore": ("memory_bank",), "padim": ("idx", "gaussian.mean", "gaussian.inv_covariance")}


class VisionAnomalibCheckpoint(GraphDetector):
    """Scores in anomalib's raw units (PatchCore: re-weighted nearest-neighbour distance; PaDiM: maximum of
    the Mahalanobis map); higher = more anomalous."""

    capabilities = ANOMALIB_CHECKPOINT.capabilities
    fitted_attribute = "graph_"

    def __init__(self, params: AnomalibCheckpointParams, device: torch.device):
        self.params = params
        self.device = device
        checkpoint = params.checkpoint
        self.model = checkpoint.model
        self.checkpoint_sha256 = sha256_file(checkpoint.path)
        arrays = checkpoint.arrays()
        self.fitted_state_ = {name: arrays[name] for name in FITTED_STATE[self.model.family]}
        try:
            graph = build_graph(self.model, arrays, params.input_hw)
        except AnomalibCheckpointError as exc:
            raise AnomalibCheckpointError(f"{checkpoint.path}: {exc}") from exc
        self.graph_ = graph.to(device).eval()

    def fit(self, images: np.ndarray, epochs: int | None = None, lr: float | None = None) -> "VisionAnomalibCheckpoint":
        raise NotImplementedError(f"{NAME} was fitted in anomalib; its state is read from model.checkpoint_path")

    def graph(self, precision: str = "fp32") -> torch.nn.Module:
        self.check_fitted("build its graph")
        self.check_precision(precision)
        return self.graph_

    @torch.no_grad()
    def anomalib_outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores [N], maps [N, h, w] at the checkpoint's own input size): what anomalib's torch model returns
        (pred_score, anomaly_map) for these images, before any resize to the bundle's input size."""
        scores, maps = [], []
        for batch in self._batches(images):
            batch_scores, batch_maps = self.graph_.anomalib_outputs(batch)
            scores.append(batch_scores.cpu().numpy())
            maps.append(batch_maps.cpu().numpy())
        return np.concatenate(scores).astype(np.float32), np.concatenate(maps).astype(np.float32)

    def describe(self) -> dict:
        model = self.model
        settings = dict(model.settings)
        if model.family == "patchcore":
            rows, width = self.fitted_state_["memory_bank"].shape
            fitted = {"memory_bank_rows": int(rows), "feature_dim": int(width)}
            units = "anomalib PatchCore raw score: re-weighted nearest-neighbour patch distance; higher = more anomalous"
        else:
            positions = self.fitted_state_["gaussian.mean"].shape[1]
            fitted = {"positions": int(positions)}
            units = "anomalib PaDiM raw score: maximum of the smoothed Mahalanobis map; higher = more anomalous"
        transform = model.transform
        return {
            "anomalib_model": model.family,
            "backbone": model.backbone,
            "layers": list(model.layers),
            **settings,
            **fitted,
            "model_input_hw": list(transform.size),
            "pre_processor": {"resize": transform.mode, "antialias": transform.antialias,
                              "mean": list(transform.mean), "std": list(transform.std)},
            "score_units": units,
            "imported_from": {
                "checkpoint": str(self.params.checkpoint.path),
                "sha256": self.checkpoint_sha256,
                "lightning_version": model.lightning_version,
                # anomalib's post-processor state (its own thresholds, raw units): reported, never used.
                "anomalib_post_processor": model.anomalib_thresholds,
            },
            "trained": False,
        }

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        self.check_fitted("save its state")
        return dict(self.fitted_state_), {"model": NAME, **self.describe()}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> "VisionAnomalibCheckpoint":
        if meta.get("model") != NAME:
            raise ValueError(f"checkpoint holds model {meta.get('model')!r}, not {NAME}")
        recorded = (meta.get("imported_from") or {}).get("sha256")
        if recorded != self.checkpoint_sha256:
            raise ValueError(f"the run imported an anomalib checkpoint with sha256 {recorded}, but "
                             f"{self.params.checkpoint.path} now has {self.checkpoint_sha256}")
        for name, value in self.fitted_state_.items():
            if name not in arrays or not np.array_equal(arrays[name], value):
                raise ValueError(f"the run's {name} is not the anomalib checkpoint's")
        return self
