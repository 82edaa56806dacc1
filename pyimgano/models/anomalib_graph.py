"""anomalib's PatchCore and PaDiM scoring, rebuilt as pyimgano scoring graphs from a model record and its
tensors (models/anomalib_format.py): uint8 NHWC images in, (scores [B], maps [B,H,W]) out, in anomalib's
raw units, written in ops that export to ONNX.

What anomalib 2.x computes (models/image/patchcore/torch_model.py, anomaly_map.py; padim/...), step by step:
- pre-processor: [0, 1] images resized (torchvision Resize on float tensors: torch interpolate, antialiased
  for bilinear and bicubic) to the model's size, then normalised;
- timm backbone (`features_only`) at the recorded layers;
- PatchCore: each layer 3x3 average-pooled (stride 1, padding 1), later layers bilinearly resized to the first
  layer's grid, concatenated; each patch's euclidean distance to its nearest memory-bank row; the image score
  is the worst patch's distance re-weighted by `1 - softmax(distances to the nearest row's num_neighbors
  nearest rows)[0]` (the paper's); the map is the patch grid upsampled (nearest) to the model's size and
  blurred with the checkpoint's Gaussian kernel (sigma 4, reflected borders);
- PaDiM: later layers resized (nearest) to the first layer's grid, concatenated, the recorded channel index
  kept; per-position Mahalanobis distance; the grid upsampled (bilinear) to the model's size and blurred; the
  image score is the map's maximum.

Every resize and the blur are linear maps along one axis at a time, so each is a fixed matrix here, found by
pushing an identity matrix through the very torch op anomalib uses: the input resize is `A_h @ x @ A_w^T`, and
upsampling + blur (+ the resize from the model's size to the bundle's input size, when they differ) fold into
one `L_h @ grid @ L_w^T` per map, 32x32 -> 256x256 in two small products instead of a 33x33 convolution over
the upsampled map. The nearest-neighbour search and the re-weighting are PatchCoreGraph's (models/patchcore.py).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pyimgano.models.anomalib_format import BACKBONE_PREFIX, BLUR_KERNEL, AnomalibCheckpointError, AnomalibModel
from pyimgano.models.maps import blur_matrix
from pyimgano.models.padim import mahalanobis
from pyimgano.models.patchcore import PatchCoreGraph

# A kernel counts as separable when its rank-1 approximation is this close, relative to its largest entry
# (kornia's float32 Gaussian, the outer product of two 1-D kernels, is within 1e-7).
SEPARABLE_RTOL = 1e-5
# Maps leave the model's size for the bundle's input size this way (an area-like average when shrinking).
OUTPUT_RESIZE = ("bilinear", True)


def resample_matrix(in_size: int, out_size: int, mode: str, antialias: bool) -> torch.Tensor:
    """[out_size, in_size] float64 M such that resizing one axis with `F.interpolate(mode, antialias)`
    is M @ x: the op applied to the identity, column by column."""
    # Two identical columns: torch's antialiased kernels mis-handle an axis of length 1, and 2 -> 2 is the identity.
    eye = torch.eye(in_size, dtype=torch.float64).reshape(in_size, 1, in_size, 1).expand(-1, -1, -1, 2).contiguous()
    extra = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    resized = F.interpolate(eye, size=(out_size, 2), mode=mode, antialias=antialias, **extra)
    return resized[:, 0, :, 0].t().contiguous()


def blur_factors(kernel: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-D blur kernel [1, 1, kh, kw] as its vertical and horizontal 1-D factors (refused unless separable)."""
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1) or kernel.shape[2] % 2 == 0 or kernel.shape[3] % 2 == 0:
        raise AnomalibCheckpointError(f"blur kernel of shape {kernel.shape} is not one odd-sized 2-D kernel")
    matrix = kernel[0, 0].astype(np.float64)
    u, s, vt = np.linalg.svd(matrix)
    vertical, horizontal = u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])
    if vertical.sum() < 0:
        vertical, horizontal = -vertical, -horizontal
    residual = np.abs(np.outer(vertical, horizontal) - matrix).max() / max(np.abs(matrix).max(), 1e-30)
    if residual > SEPARABLE_RTOL:
        raise AnomalibCheckpointError(f"blur kernel is not separable (rank-1 residual {residual:.2g})")
    return torch.from_numpy(vertical), torch.from_numpy(horizontal)


def _axis_blur(size: int, kernel: torch.Tensor) -> torch.Tensor:
    try:
        return blur_matrix(size, kernel).double()
    except ValueError as exc:
        raise AnomalibCheckpointError(f"blur kernel: {exc}") from exc


class ImageInput(nn.Module):
    """uint8 NHWC images -> normalised float NCHW at the model's size, as anomalib's pre-processor gives them."""

    def __init__(self, input_hw: tuple[int, int], model: AnomalibModel) -> None:
        super().__init__()
        transform = model.transform
        self.resize = tuple(input_hw) != tuple(transform.size)
        if self.resize:
            self.register_buffer("rows", resample_matrix(input_hw[0], transform.size[0], transform.mode,
                                                         transform.antialias).float())
            self.register_buffer("cols_t", resample_matrix(input_hw[1], transform.size[1], transform.mode,
                                                           transform.antialias).t().contiguous().float())
        self.register_buffer("mean", torch.tensor(transform.mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(transform.std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.resize:
            x = torch.matmul(torch.matmul(self.rows, x), self.cols_t)
        return (x - self.mean) / self.std


class LayerEmbedder(nn.Module):
    """uint8 NHWC -> (features [B, h*w, C], h, w): the backbone's layers on the first layer's grid, concatenated.

    `pool`: PatchCore's 3x3 average over each layer first; `mode`: how later layers reach the first's grid
    (PatchCore bilinear, PaDiM nearest); `channel_index`: PaDiM's kept channels, in the recorded order."""

    def __init__(self, image_input: ImageInput, backbone: nn.Module, layers: tuple, pool: bool, mode: str,
                 channel_index: torch.Tensor | None = None) -> None:
        super().__init__()
        self.image_input = image_input
        self.backbone = backbone
        self.layers = layers
        self.pool = pool
        self.mode = mode
        self.register_buffer("channel_index", channel_index if channel_index is not None else torch.empty(0, dtype=torch.long))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        outputs = self.backbone(self.image_input(images))
        # anomalib pairs timm's outputs with its layer names in the order given.
        features = dict(zip(self.layers, outputs))
        if self.pool:
            features = {layer: F.avg_pool2d(fmap, kernel_size=3, stride=1, padding=1) for layer, fmap in features.items()}
        first = features[self.layers[0]]
        height, width = int(first.shape[2]), int(first.shape[3])
        parts = [first]
        for layer in self.layers[1:]:
            extra = {"align_corners": False} if self.mode == "bilinear" else {}
            parts.append(F.interpolate(features[layer], size=(height, width), mode=self.mode, **extra))
        embedding = torch.cat(parts, dim=1)
        if self.channel_index.numel():
            embedding = embedding.index_select(1, self.channel_index)
        embedding = embedding.permute(0, 2, 3, 1).reshape(embedding.shape[0], height * width, embedding.shape[1])
        return embedding, height, width


class AnomalibMaps(nn.Module):
    """Patch grid [B, 1, h, w] -> map [B, H, W]: upsampling to the model's size and anomalib's blur (and the
    resize to the bundle's input size) as one matrix per axis."""

    def __init__(self, grid_hw: tuple[int, int], model_hw: tuple[int, int], output_hw: tuple[int, int],
                 upsample: str, kernel: np.ndarray) -> None:
        super().__init__()
        vertical, horizontal = blur_factors(kernel)
        to_model = [_axis_blur(model_hw[axis], factor) @ resample_matrix(grid_hw[axis], model_hw[axis], upsample, False)
                    for axis, factor in ((0, vertical), (1, horizontal))]
        self.resize = tuple(model_hw) != tuple(output_hw)
        to_output = [resample_matrix(model_hw[axis], output_hw[axis], *OUTPUT_RESIZE) if self.resize else None
                     for axis in (0, 1)]
        self.register_buffer("model_rows", to_model[0].float())
        self.register_buffer("model_cols_t", to_model[1].t().contiguous().float())
        if self.resize:
            self.register_buffer("out_rows", to_output[0].float())
            self.register_buffer("out_cols_t", to_output[1].t().contiguous().float())
        folded = [to_output[axis] @ to_model[axis] if self.resize else to_model[axis] for axis in (0, 1)]
        self.register_buffer("rows", folded[0].float())
        self.register_buffer("cols_t", folded[1].t().contiguous().float())

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """Maps at the bundle's input size."""
        return torch.matmul(torch.matmul(self.rows, grid[:, 0]), self.cols_t)

    def at_model_size(self, grid: torch.Tensor) -> torch.Tensor:
        """Maps at the model's size: what anomalib's anomaly map is."""
        return torch.matmul(torch.matmul(self.model_rows, grid[:, 0]), self.model_cols_t)

    def to_output(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.resize:
            return maps
        return torch.matmul(torch.matmul(self.out_rows, maps), self.out_cols_t)


class AnomalibPatchCoreGraph(PatchCoreGraph):
    """PatchCore's search and re-weighting (PatchCoreGraph) on anomalib's embedding, with anomalib's map."""

    def __init__(self, embedder: LayerEmbedder, memory_bank: torch.Tensor, num_neighbors: int,
                 input_hw: tuple[int, int], maps: AnomalibMaps) -> None:
        super().__init__(embedder, memory_bank, num_neighbors, input_hw)
        self.smooth = maps

    def anomalib_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B], maps at the model's size): anomalib's (pred_score, anomaly_map), before any resize to
        the bundle's input size."""
        features, scores, index, height, width = self.patch_scores(images)
        return self.image_scores(features, scores, index), self.smooth.at_model_size(scores.reshape(-1, 1, height, width))


class AnomalibPadimGraph(nn.Module):
    """anomalib's PaDiM: Mahalanobis distance per position; the score is the maximum of the map at the model's size."""

    def __init__(self, embedder: LayerEmbedder, mean: torch.Tensor, inv_cov: torch.Tensor, maps: AnomalibMaps) -> None:
        super().__init__()
        self.embedder = embedder
        self.register_buffer("gauss_mean", mean)
        self.register_buffer("inv_cov", inv_cov)
        self.maps = maps

    def _model_maps(self, features: torch.Tensor, height: int, width: int) -> torch.Tensor:
        distances = mahalanobis(features, self.gauss_mean, self.inv_cov)
        return self.maps.at_model_size(distances.reshape(-1, 1, height, width))

    def anomalib_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores [B], maps at the model's size): anomalib's (pred_score, anomaly_map)."""
        maps = self._model_maps(*self.embedder(images))
        return maps.reshape(maps.shape[0], -1).max(dim=1).values, maps

    def score_features(self, features: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        maps = self._model_maps(features, height, width)
        scores = maps.reshape(maps.shape[0], -1).max(dim=1).values
        return scores, self.maps.to_output(maps)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.score_features(*self.embedder(images))


def build_backbone(model: AnomalibModel, arrays: dict[str, np.ndarray]) -> tuple[nn.Module, list[int]]:
    """timm's `features_only` network for the record's backbone and layers, architecture only
    (pretrained=False: nothing is downloaded), with the checkpoint's weights; and its layers' channels."""
    try:
        import timm
    except ImportError:
        raise AnomalibCheckpointError("timm is needed to rebuild an anomalib backbone: pip install 'pyimgano[anomalib]'") from None
    try:
        probe = timm.create_model(model.backbone, pretrained=False, features_only=True, exportable=True)
    except (RuntimeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AnomalibCheckpointError(f"timm {timm.__version__} cannot build backbone {model.backbone!r} with "
                                      f"features_only ({exc})") from exc
    modules = [info["module"] for info in probe.feature_info.info]
    indices = []
    for layer in model.layers:
        if isinstance(layer, int):
            if not 0 <= layer < len(modules):
                raise AnomalibCheckpointError(f"backbone {model.backbone} has feature indices 0..{len(modules) - 1}, not {layer}")
            indices.append(layer)
        elif layer in modules:
            indices.append(modules.index(layer))
        else:
            raise AnomalibCheckpointError(f"backbone {model.backbone} has no feature layer {layer!r} (timm's: {modules})")
    network = timm.create_model(model.backbone, pretrained=False, features_only=True, exportable=True, out_indices=indices)
    weights = {name[len(BACKBONE_PREFIX):]: torch.from_numpy(value) for name, value in arrays.items()
               if name.startswith(BACKBONE_PREFIX)}
    expected = network.state_dict()
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    wrong = sorted(name for name in set(expected) & set(weights) if tuple(expected[name].shape) != tuple(weights[name].shape))
    if missing or unexpected or wrong:
        raise AnomalibCheckpointError(
            f"the checkpoint's backbone weights do not fit timm's {model.backbone} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}, other shapes {wrong[:3]}; {len(missing)}/{len(unexpected)}/{len(wrong)} in all)")
    network.load_state_dict(weights, strict=True)
    return network.eval(), list(network.feature_info.channels())


@torch.no_grad()
def build_graph(model: AnomalibModel, arrays: dict[str, np.ndarray], input_hw: tuple[int, int]) -> nn.Module:
    """The scoring graph of an anomalib model record and its tensors (names without `model.`), for uint8 inputs
    of `input_hw`; refuses (AnomalibCheckpointError) tensors that do not fit the architecture."""
    backbone, channels = build_backbone(model, arrays)
    image_input = ImageInput(input_hw, model)
    model_hw = tuple(model.transform.size)
    patchcore = model.family == "patchcore"
    index = None
    if not patchcore:
        index = torch.from_numpy(arrays["idx"].astype(np.int64))
        if index.min() < 0 or index.max() >= sum(channels) or len(torch.unique(index)) != len(index):
            raise AnomalibCheckpointError(f"PaDiM idx is not {len(index)} distinct channels of the backbone's {sum(channels)}")
    embedder = LayerEmbedder(image_input, backbone, model.layers, pool=patchcore,
                             mode="bilinear" if patchcore else "nearest", channel_index=index).eval()
    features, height, width = embedder(torch.zeros(1, *input_hw, 3, dtype=torch.uint8))
    maps = AnomalibMaps((height, width), model_hw, tuple(input_hw), "nearest" if patchcore else "bilinear",
                        arrays[BLUR_KERNEL])
    if patchcore:
        bank = torch.from_numpy(arrays["memory_bank"])
        if bank.shape[1] != features.shape[2]:
            raise AnomalibCheckpointError(f"memory_bank rows have {bank.shape[1]} values, the backbone's layers "
                                          f"{list(model.layers)} give {features.shape[2]}")
        return AnomalibPatchCoreGraph(embedder, bank, model.settings["num_neighbors"], tuple(input_hw), maps).eval()
    mean = torch.from_numpy(arrays["gaussian.mean"]).t().contiguous()  # anomalib: [C, positions]
    inv_cov = torch.from_numpy(arrays["gaussian.inv_covariance"])
    if mean.shape != (height * width, features.shape[2]):
        raise AnomalibCheckpointError(f"PaDiM statistics cover {mean.shape[0]} positions x {mean.shape[1]} channels, "
                                      f"the backbone gives {height}x{width} positions x {features.shape[2]} at "
                                      f"{model_hw[0]}x{model_hw[1]}")
    return AnomalibPadimGraph(embedder, mean, inv_cov, maps).eval()
