"""PatchCore / PaDiM fitted through anomalib's own torch models, then scored by the graph an imported
checkpoint gets (models/anomalib_graph.py), so a model fitted here and one fitted in anomalib score alike.

Fitting follows anomalib 2.x's Lightning modules without Lightning: the torch model (built with
`pre_trained=False`, its backbone then given local ImageNet weights: models/anomalib_train_weights.py) in
training mode collects each batch's embedding (the images normalised as its pre-processor does; their size
is the run's input size, so its Resize is the identity), then PatchCore subsamples its coreset and PaDiM
fits its Gaussians. The fitted model's state_dict is the same record an anomalib checkpoint holds; the run
keeps all of it (backbone weights included), so loading a run back reads no weights file (the config is
still resolved as for training, so anomalib must be installed).
"""

from __future__ import annotations

import numpy as np
import torch

from pyimgano.config import ConfigError
from pyimgano.models.anomalib_format import AnomalibModel, ImageTransform
from pyimgano.models.anomalib_graph import ImageInput, build_graph
from pyimgano.models.anomalib_train_spec import PATCHCORE_ANOMALIB, AnomalibTrainParams, require_anomalib
from pyimgano.models.anomalib_train_weights import load_backbone_weights
from pyimgano.models.base import GraphDetector

NAMES = {"patchcore": "vision_patchcore_anomalib", "padim": "vision_padim_anomalib"}


def check_backbone(params: AnomalibTrainParams, name: str) -> None:
    """Refuses, as config errors and before anything is written, what anomalib would get wrong later: a
    backbone timm cannot build with features_only (a traceback from timm), a layer timm does not list (anomalib
    drops it with a log warning, then fails on a KeyError), a transformer (anomalib takes another path the
    graph does not reproduce), or PaDiM n_features beyond the layers' channels."""
    import timm

    if "vit" in params.backbone.lower():
        raise ConfigError(f"model.backbone: {params.backbone!r} is a transformer; {name} takes timm CNN backbones "
                          "(features_only)")
    try:
        probe = timm.create_model(params.backbone, pretrained=False, features_only=True, exportable=True)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise ConfigError(f"model.backbone: timm {timm.__version__} cannot build {params.backbone!r} with "
                          f"features_only ({exc})") from exc
    modules = [info["module"] for info in probe.feature_info.info]
    unknown = [layer for layer in params.layers if layer not in modules]
    if unknown:
        raise ConfigError(f"model.layers: {unknown} are not feature layers of timm's {params.backbone} (it lists "
                          f"{modules})")
    channels = sum(probe.feature_info.channels()[modules.index(layer)] for layer in params.layers)
    if params.n_features is not None and params.n_features > channels:
        raise ConfigError(f"model.n_features: {params.n_features} is more than the {channels} channels of "
                          f"{params.backbone} {list(params.layers)}")


class VisionAnomalibTrained(GraphDetector):
    """Scores in anomalib's raw units; higher = more anomalous."""

    # Both registrations (PatchCore, PaDiM) have these capabilities.
    capabilities = PATCHCORE_ANOMALIB.capabilities
    fitted_attribute = "graph_"

    def __init__(self, params: AnomalibTrainParams, device: torch.device):
        self.params = params
        self.device = device
        self.name = NAMES[params.family]
        check_backbone(params, self.name)

    def _record(self) -> AnomalibModel:
        params = self.params
        if params.family == "patchcore":
            settings = {"num_neighbors": params.num_neighbors, "coreset_sampling_ratio": params.coreset_ratio}
        else:
            settings = {"n_features": params.n_features}
        return AnomalibModel(
            family=params.family, backbone=params.backbone, layers=params.layers,
            transform=ImageTransform(size=params.input_hw, mode="bilinear", antialias=True, mean=params.mean,
                                     std=params.std),
            settings=settings,
        )

    def _torch_model(self) -> torch.nn.Module:
        params = self.params
        if params.family == "patchcore":
            from anomalib.models.image.patchcore.torch_model import PatchcoreModel

            return PatchcoreModel(layers=list(params.layers), backbone=params.backbone, pre_trained=False,
                                  num_neighbors=params.num_neighbors)
        from anomalib.models.image.padim.torch_model import PadimModel

        return PadimModel(backbone=params.backbone, layers=list(params.layers), pre_trained=False,
                          n_features=params.n_features)

    @torch.no_grad()
    def fit(self, images: np.ndarray, epochs: int | None = None, lr: float | None = None) -> "VisionAnomalibTrained":
        self.anomalib_version_ = require_anomalib(self.name)
        record = self._record()
        # Seeded: PaDiM draws its channel subset and PatchCore's coreset its first centre.
        torch.manual_seed(self.params.seed)
        network = self._torch_model()
        self.weights_sha256_ = None
        if self.params.pretrained:
            self.weights_sha256_ = load_backbone_weights(network.feature_extractor.feature_extractor,
                                                         self.params.backbone, self.params.weights_path)
        network = network.to(self.device).train()
        normalise = ImageInput(self.params.input_hw, record).to(self.device)
        # In training mode both models return each batch's embedding (and keep it: PatchCore in embedding_store).
        embeddings = [network(normalise(batch)) for batch in self._batches(images)]
        if self.params.family == "patchcore":
            network.subsample_embedding(self.params.coreset_ratio)
        else:
            # What the Lightning module's fit does, without depending on where a version keeps the embeddings.
            network.gaussian.fit(torch.vstack(embeddings))
        del embeddings
        arrays = {name: value.detach().cpu().numpy() for name, value in network.state_dict().items()}
        return self._assemble(record, arrays)

    def _assemble(self, record: AnomalibModel, arrays: dict[str, np.ndarray]) -> "VisionAnomalibTrained":
        self.record_ = record
        self.arrays_ = arrays
        self.graph_ = build_graph(record, arrays, self.params.input_hw).to(self.device).eval()
        return self

    def graph(self, precision: str = "fp32") -> torch.nn.Module:
        self.check_fitted("build its graph")
        self.check_precision(precision)
        return self.graph_

    def describe(self) -> dict:
        params = self.params
        return {
            "anomalib_model": params.family,
            "backbone": params.backbone,
            "layers": list(params.layers),
            **self._record().settings,
            **self._fitted_sizes(),
            "pretrained": params.pretrained,
            "weights_sha256": getattr(self, "weights_sha256_", None),
            "anomalib_version": getattr(self, "anomalib_version_", None),
            "score_units": "anomalib raw score; higher = more anomalous",
            "trained": False,
        }

    def _fitted_sizes(self) -> dict:
        arrays = getattr(self, "arrays_", None)
        if arrays is None:
            return {}
        if self.params.family == "patchcore":
            rows, width = arrays["memory_bank"].shape
            return {"memory_bank_rows": int(rows), "feature_dim": int(width)}
        return {"positions": int(arrays["gaussian.mean"].shape[1])}

    def state(self) -> tuple[dict[str, np.ndarray], dict]:
        self.check_fitted("save its state")
        return dict(self.arrays_), {"model": self.name, "anomalib": self.record_.to_json(), **self.describe()}

    def load_state(self, arrays: dict[str, np.ndarray], meta: dict) -> "VisionAnomalibTrained":
        if meta.get("model") != self.name:
            raise ValueError(f"checkpoint holds model {meta.get('model')!r}, not {self.name}")
        self.anomalib_version_ = meta.get("anomalib_version")
        self.weights_sha256_ = meta.get("weights_sha256")
        return self._assemble(AnomalibModel.from_json(meta["anomalib"]), arrays)
