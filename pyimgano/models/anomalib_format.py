"""What an anomalib 2.x Lightning checkpoint says about its model, torch-free: which model (PatchCore or
PaDiM), its timm backbone and layers, its image transform, its settings and where its tensors are.

Read through `torch_zip.TorchZip` (nothing in the file is executed), and refused, naming the reason, when
it is anything but a fitted anomalib PatchCore or PaDiM on a timm CNN backbone with a Resize + Normalize
pre-processor: the scoring graph built from it must compute what anomalib computes, so nothing is guessed.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pyimgano.models.torch_zip import TensorRef, TorchZip, TorchZipError

# The model's tensors in a Lightning state_dict sit under this prefix (the torch model, `AnomalibModule.model`).
MODEL_PREFIX = "model."
BACKBONE_PREFIX = "feature_extractor.feature_extractor."
BLUR_KERNEL = "anomaly_map_generator.blur.kernel"
# Lightning keys beside the model's own that carry no part of the scoring path.
OTHER_STATE_PREFIXES = ("post_processor.", "pre_processor.", "evaluator.", "visualizer.")
FITTED_FLAG = "_is_fitted"

# Per family: hyper-parameters that must be present, those that may be, and the model's own tensors besides
# the backbone's.
FAMILIES: dict[str, dict] = {
    "patchcore": {
        "required": {"backbone", "layers", "num_neighbors"},
        "optional": {"pre_trained", "coreset_sampling_ratio", "precision"},
        "tensors": {"memory_bank", BLUR_KERNEL},
    },
    "padim": {
        "required": {"backbone", "layers"},
        "optional": {"pre_trained", "n_features"},
        "tensors": {"idx", "gaussian.mean", "gaussian.inv_covariance", BLUR_KERNEL},
    },
}
# torchvision's interpolation names for Resize, as torch's interpolate modes.
RESIZE_MODES = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "nearest", "nearest-exact": "nearest-exact"}
_BACKBONE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")


class AnomalibCheckpointError(Exception):
    """An anomalib checkpoint that cannot be imported: not one, refused, or a model this import does not
    reproduce; the message names the file and the reason."""


@dataclass(frozen=True)
class ImageTransform:
    """anomalib's pre-processor as the graph applies it to [0, 1] images: Resize to `size` (torch
    interpolate `mode`, with `antialias`), then Normalize."""

    size: tuple[int, int]
    mode: str
    antialias: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class AnomalibModel:
    """Everything but the tensors' values: enough to build the scoring graph and to describe it."""

    family: str
    backbone: str
    layers: tuple[str | int, ...]
    transform: ImageTransform
    # PatchCore: num_neighbors (and coreset_sampling_ratio, as anomalib recorded it); PaDiM: n_features.
    settings: dict
    # anomalib's post-processor state in raw score units (its thresholds and normalisation bounds), as found.
    anomalib_thresholds: dict = field(default_factory=dict)
    lightning_version: str | None = None

    def to_json(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        data["transform"] = {**data["transform"], "size": list(self.transform.size), "mean": list(self.transform.mean),
                             "std": list(self.transform.std)}
        return data

    @classmethod
    def from_json(cls, data: dict) -> "AnomalibModel":
        transform = dict(data["transform"])
        return cls(
            family=data["family"], backbone=data["backbone"], layers=tuple(data["layers"]),
            transform=ImageTransform(size=tuple(transform["size"]), mode=transform["mode"],
                                     antialias=transform["antialias"], mean=tuple(transform["mean"]),
                                     std=tuple(transform["std"])),
            settings=dict(data["settings"]), anomalib_thresholds=dict(data.get("anomalib_thresholds") or {}),
            lightning_version=data.get("lightning_version"),
        )


@dataclass(frozen=True)
class AnomalibCheckpoint:
    """A checkpoint read and understood: the model record and where its tensors are (names without `model.`)."""

    path: Path
    model: AnomalibModel
    tensors: dict[str, TensorRef]
    archive: TorchZip

    def arrays(self) -> dict[str, np.ndarray]:
        try:
            return self.archive.arrays(self.tensors)
        except TorchZipError as exc:
            raise AnomalibCheckpointError(str(exc)) from exc


def read_checkpoint(path: str | Path) -> AnomalibCheckpoint:
    """Reads and checks an anomalib 2.x PatchCore or PaDiM checkpoint; raises AnomalibCheckpointError."""
    path = Path(path)
    try:
        archive = TorchZip(path)
    except TorchZipError as exc:
        raise AnomalibCheckpointError(str(exc)) from exc
    tree = archive.tree
    if not isinstance(tree, dict) or not isinstance(tree.get("state_dict"), dict):
        raise AnomalibCheckpointError(f"{path}: not a Lightning checkpoint (no state_dict)")
    hyper = tree.get("hyper_parameters")
    if not isinstance(hyper, dict):
        raise AnomalibCheckpointError(f"{path}: not an anomalib checkpoint (no hyper_parameters)")
    state = tree["state_dict"]
    tensors = _model_tensors(path, state)
    family = _family(path, hyper, tensors)
    settings = _settings(path, family, hyper, tensors)
    model = AnomalibModel(
        family=family,
        backbone=_backbone(path, hyper["backbone"]),
        layers=_layers(path, hyper["layers"]),
        transform=_transform(path, tree),
        settings=settings,
        anomalib_thresholds=_post_processor(archive, state),
        lightning_version=str(tree.get("pytorch-lightning_version")) if tree.get("pytorch-lightning_version") else None,
    )
    return AnomalibCheckpoint(path=path, model=model, tensors=tensors, archive=archive)


def _model_tensors(path: Path, state: dict) -> dict[str, TensorRef]:
    tensors = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, TensorRef):
            raise AnomalibCheckpointError(f"{path}: state_dict entry {key!r} is not a tensor")
        if key.startswith(MODEL_PREFIX):
            tensors[key[len(MODEL_PREFIX):]] = value
        elif key == FITTED_FLAG or key.startswith(OTHER_STATE_PREFIXES):
            continue
        else:
            raise AnomalibCheckpointError(f"{path}: unexpected state_dict entry {key!r} (not the model's, nor "
                                          f"anomalib's {FITTED_FLAG} or {', '.join(OTHER_STATE_PREFIXES)})")
    if FITTED_FLAG in state:
        flag = state[FITTED_FLAG]
        if flag.dtype != "bool" or flag.shape not in ((), (1,)):
            raise AnomalibCheckpointError(f"{path}: {FITTED_FLAG} is not a boolean flag")
    return tensors


def _family(path: Path, hyper: dict, tensors: dict[str, TensorRef]) -> str:
    own = {name for name in tensors if not name.startswith(BACKBONE_PREFIX)}
    for family, spec in FAMILIES.items():
        if own == spec["tensors"] and spec["required"] <= set(hyper) <= spec["required"] | spec["optional"]:
            if not any(name.startswith(BACKBONE_PREFIX) for name in tensors):
                raise AnomalibCheckpointError(f"{path}: the {family} checkpoint holds no backbone weights")
            return family
    raise AnomalibCheckpointError(
        f"{path}: not an anomalib PatchCore or PaDiM checkpoint this import reproduces (model tensors "
        f"{sorted(own)}, hyper_parameters {sorted(hyper)}); supported: "
        + "; ".join(f"{family}: tensors {sorted(spec['tensors'])}, hyper_parameters {sorted(spec['required'])}"
                    f" (+ {sorted(spec['optional'])})" for family, spec in FAMILIES.items())
    )


def _settings(path: Path, family: str, hyper: dict, tensors: dict[str, TensorRef]) -> dict:
    for name, ref in tensors.items():
        if ref.dtype not in ("float32", "int64", "bool") and not name.startswith(BACKBONE_PREFIX):
            raise AnomalibCheckpointError(f"{path}: {name} is {ref.dtype}; only float32 anomalib models are imported")
    if family == "patchcore":
        precision = hyper.get("precision", "float32")
        if precision != "float32":
            raise AnomalibCheckpointError(f"{path}: PatchCore precision {precision!r}; only float32 models are imported")
        neighbors = hyper["num_neighbors"]
        if type(neighbors) is not int or neighbors < 1:
            raise AnomalibCheckpointError(f"{path}: num_neighbors {neighbors!r} is not a positive integer")
        bank = tensors["memory_bank"]
        if len(bank.shape) != 2 or bank.shape[0] < 1 or bank.dtype != "float32":
            raise AnomalibCheckpointError(f"{path}: memory_bank {bank.shape} {bank.dtype} is not a fitted float32 "
                                          "bank (anomalib saved it before fitting?)")
        ratio = hyper.get("coreset_sampling_ratio")
        return {"num_neighbors": neighbors, "coreset_sampling_ratio": ratio if isinstance(ratio, (int, float)) else None}
    index, mean, inv_cov = tensors["idx"], tensors["gaussian.mean"], tensors["gaussian.inv_covariance"]
    if len(index.shape) != 1 or index.dtype != "int64" or len(mean.shape) != 2 or len(inv_cov.shape) != 3:
        raise AnomalibCheckpointError(f"{path}: PaDiM idx {index.shape} / mean {mean.shape} / inv_covariance "
                                      f"{inv_cov.shape} are not a fitted model's")
    dim, positions = mean.shape
    if index.shape[0] != dim or inv_cov.shape != (positions, dim, dim):
        raise AnomalibCheckpointError(f"{path}: PaDiM idx {index.shape}, mean {mean.shape} and inv_covariance "
                                      f"{inv_cov.shape} do not fit together")
    return {"n_features": int(dim)}


def _backbone(path: Path, backbone) -> str:
    if not isinstance(backbone, str) or not _BACKBONE_NAME.fullmatch(backbone):
        raise AnomalibCheckpointError(f"{path}: backbone {backbone!r:.80} is not a timm model name (a custom "
                                      "nn.Module backbone cannot be rebuilt without running its code)")
    if "vit" in backbone.lower():
        raise AnomalibCheckpointError(f"{path}: backbone {backbone!r} is a transformer; only timm CNN backbones "
                                      "(features_only) are imported")
    return backbone


def _layers(path: Path, layers) -> tuple[str | int, ...]:
    if (not isinstance(layers, (list, tuple)) or not layers
            or not all(isinstance(layer, str) or type(layer) is int for layer in layers)):
        raise AnomalibCheckpointError(f"{path}: layers {layers!r:.80} are not a list of layer names")
    return tuple(layers)


def _floats(values, count: int) -> tuple[float, ...] | None:
    if isinstance(values, (list, tuple)) and len(values) == count and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        return tuple(float(v) for v in values)
    return None


def _transform(path: Path, tree: dict) -> ImageTransform:
    """anomalib 2.7 writes its pre-processor's transform as a jsonargparse config (class_path, init_args)."""
    enabled = tree.get("anomalib_components_enabled")
    if isinstance(enabled, dict) and enabled.get("pre_processor") is False:
        raise AnomalibCheckpointError(f"{path}: anomalib's pre-processor was disabled: the image transform the "
                                      "model was fitted with is not recorded")
    config = tree.get("anomalib_pre_processor_config")
    transform = config.get("transform") if isinstance(config, dict) else None
    if not isinstance(transform, dict):
        raise AnomalibCheckpointError(f"{path}: no anomalib_pre_processor_config.transform: the image transform "
                                      "is not recorded (anomalib 2.7 writes it)")
    steps = [transform]
    if transform.get("class_path") == "torchvision.transforms.v2.Compose":
        steps = (transform.get("init_args") or {}).get("transforms")
        if not isinstance(steps, list):
            raise AnomalibCheckpointError(f"{path}: the pre-processor's Compose lists no transforms")
    resize = normalize = None
    for step in steps:
        kind = step.get("class_path") if isinstance(step, dict) else None
        args = step.get("init_args") if isinstance(step, dict) else None
        if not isinstance(args, dict):
            raise AnomalibCheckpointError(f"{path}: pre-processor step {step!r:.80} has no init_args")
        if kind == "torchvision.transforms.v2.Resize" and resize is None and normalize is None:
            resize = args
        elif kind == "torchvision.transforms.v2.Normalize" and normalize is None:
            normalize = args
        else:
            raise AnomalibCheckpointError(f"{path}: pre-processor step {kind!r} is not imported (supported: "
                                          "torchvision.transforms.v2 Resize, then Normalize)")
    if resize is None or normalize is None:
        raise AnomalibCheckpointError(f"{path}: the pre-processor must Resize and Normalize; it has "
                                      f"{[step.get('class_path') for step in steps]}")
    size = resize.get("size")
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(type(side) is int and side >= 32 for side in size)):
        raise AnomalibCheckpointError(f"{path}: Resize size {size!r} is not [height, width] of at least 32 pixels "
                                      "(a single side keeps the aspect ratio, so the model's input size would vary)")
    mode = RESIZE_MODES.get(str(resize.get("interpolation", "bilinear")).lower())
    if mode is None:
        raise AnomalibCheckpointError(f"{path}: Resize interpolation {resize.get('interpolation')!r} is not one of "
                                      f"{sorted(RESIZE_MODES)}")
    if resize.get("max_size") is not None:
        raise AnomalibCheckpointError(f"{path}: Resize max_size {resize.get('max_size')!r} is not imported")
    antialias = resize.get("antialias", True)
    if not isinstance(antialias, bool):
        raise AnomalibCheckpointError(f"{path}: Resize antialias {antialias!r} is not a boolean")
    mean, std = _floats(normalize.get("mean"), 3), _floats(normalize.get("std"), 3)
    if mean is None or std is None or min(std) <= 0:
        raise AnomalibCheckpointError(f"{path}: Normalize mean {normalize.get('mean')!r} / std "
                                      f"{normalize.get('std')!r} are not three numbers each (std positive)")
    return ImageTransform(size=(size[0], size[1]), mode=mode, antialias=antialias and mode in ("bilinear", "bicubic"),
                          mean=mean, std=std)


def _post_processor(archive: TorchZip, state: dict) -> dict[str, float]:
    """anomalib's own thresholds and normalisation bounds (raw units), kept for the report; never used to decide."""
    names = {"_image_threshold": "image_threshold", "_pixel_threshold": "pixel_threshold", "image_min": "image_min",
             "image_max": "image_max", "pixel_min": "pixel_min", "pixel_max": "pixel_max"}
    refs = {label: state.get(f"post_processor.{name}") for name, label in names.items()}
    refs = {label: ref for label, ref in refs.items()
            if isinstance(ref, TensorRef) and ref.shape in ((), (1,)) and ref.dtype == "float32"}
    try:
        values = {label: float(value.reshape(-1)[0]) for label, value in archive.arrays(refs).items()}
    except TorchZipError as exc:
        raise AnomalibCheckpointError(str(exc)) from exc
    return {label: value for label, value in values.items() if math.isfinite(value)}
