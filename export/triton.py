"""A bundle laid out as one model of a Triton Inference Server model repository (docs/TRITON.md).

    <repository>/<name>/config.pbtxt       Triton's model config, from the graph's own inputs and outputs
    <repository>/<name>/<version>/         the bundle's files, unchanged (it still opens with open_bundle)

`pyimgano-serve` serves the same folder (it reads the bundle in each version folder and ignores
config.pbtxt). Nothing here imports torch: a bundle exported elsewhere can be laid out on an edge host.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from pyimgano.export import pbtxt
from pyimgano.export.pbtxt import Enum
from pyimgano.runtime.bundle import Bundle, BundleError, open_bundle, read_manifest
from pyimgano.runtime.manifest import MANIFEST_NAME, Manifest

TRITON_CONFIG = "config.pbtxt"
# Triton skips version folders with leading zeros and reads the rest with stoll (so "2.staging" would be
# version 2); staging folders therefore start with a dot, which neither Triton nor pyimgano-serve reads.
VERSION_NAME = re.compile(r"[1-9][0-9]*")
INT64_MAX = 2**63 - 1
# Up to 32 images per graph run: on an H200 the PatchCore graph's throughput still rises from batch 8 to
# 32 (fp32 1,207 -> 1,429 images/s, fp16 1,511 -> 2,097; ../shared/gpu/README.md) and flattens after it,
# and a larger cap only costs memory when requests actually queue. Triton's ONNX Runtime backend runs the
# default execution order (it has no setting for the priority order the engine uses), in which a
# memory-bank search holds every (patches x bank chunk) block of the batch at once: lower the cap
# (--triton-max-batch-size) for a large bank on a small card.
DEFAULT_MAX_BATCH_SIZE = 32
# Batches the dynamic batcher aims for: 8 is where ORT on a CPU stops gaining, 32 the GPU's plateau.
PREFERRED_BATCH_SIZES = (8, 32)
# The longest a request waits for others to join its batch: below one batch-1 graph run on a GPU (about
# 3 ms for PatchCore at 256x256), and nothing against a CPU's tens of milliseconds per image.
MAX_QUEUE_DELAY_US = 2000
INSTANCE_KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# The CUDA provider settings the engine uses (runtime/engine.py CUDA_PROVIDER_OPTIONS), in Triton's form.
# use_tf32 goes through the "cuda" execution accelerator (Triton 24.07 and newer); cudnn_conv_algo_search
# must also be a model parameter: once a config has any `parameters`, the backend sets the search to
# EXHAUSTIVE unless that parameter says otherwise ("1" = HEURISTIC), overriding the accelerator's value.
CUDA_ACCELERATOR_PARAMETERS = {"use_tf32": "0"}
CUDNN_CONV_ALGO_SEARCH_HEURISTIC = "1"
ORT_TO_TRITON = {
    "tensor(bool)": "TYPE_BOOL", "tensor(uint8)": "TYPE_UINT8", "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32", "tensor(uint64)": "TYPE_UINT64", "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16", "tensor(int32)": "TYPE_INT32", "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16", "tensor(float)": "TYPE_FP32", "tensor(double)": "TYPE_FP64",
    "tensor(bfloat16)": "TYPE_BF16", "tensor(string)": "TYPE_STRING",
}
FLOAT_TYPES = ("TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_BF16")
CONFIG_HEADER = """\
Written by pyimgano-export --format triton (docs/TRITON.md); rewritten when a version is added.
Triton runs the scoring graph only. The client resizes images to the input size itself (OpenCV,
the interpolation in the manifest), and tiling, map post-processing and defect extraction happen only
in pyimgano-infer and pyimgano-serve; parameters.pyimgano_host_steps says which apply to this model.
The version folders hold the bundles; their manifest.json is authoritative (pyimgano_manifest is a copy)."""


class TritonRepositoryError(Exception):
    """The repository cannot take this bundle as asked (a version Triton cannot use, a version folder that
    exists, a model whose config.pbtxt describes other tensors); nothing was changed."""


@dataclass(frozen=True)
class TritonOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    # auto: GPU instances where the server has GPUs, else CPU (Triton's KIND_AUTO).
    instance_kind: str = "auto"
    max_queue_delay_us: int = MAX_QUEUE_DELAY_US

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise TritonRepositoryError(f"max_batch_size must be a positive integer, got {self.max_batch_size!r}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise TritonRepositoryError(f"instance kind {self.instance_kind!r} is not one of {list(INSTANCE_KINDS)}")
        if self.max_queue_delay_us < 0:
            raise TritonRepositoryError(f"max_queue_delay_us must be >= 0, got {self.max_queue_delay_us}")


@dataclass(frozen=True)
class Tensor:
    """One input or output as Triton sees it: dims without the batch dimension (-1 = variable), and the
    framework's own shape when it differs (`reshape`)."""

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None

    def to_config(self) -> dict:
        fields = {"name": self.name, "data_type": Enum(self.data_type), "dims": list(self.dims)}
        if self.reshape is not None:
            fields["reshape"] = {"shape": list(self.reshape)}
        return fields

    def describe(self) -> str:
        reshape = f" reshape {list(self.reshape)}" if self.reshape is not None else ""
        return f"{self.name} {self.data_type} dims {list(self.dims)}{reshape}"


@dataclass(frozen=True)
class Signature:
    """What a client sends and receives; two versions of one model must have the same."""

    batched: bool
    inputs: tuple[Tensor, ...]
    outputs: tuple[Tensor, ...]

    def differences(self, other: "Signature") -> list[str]:
        found = []
        if self.batched != other.batched:
            found.append(f"batching {'on' if other.batched else 'off'} (max_batch_size), this bundle needs "
                         f"{'on' if self.batched else 'off'}")
        for kind, ours, theirs in (("input", self.inputs, other.inputs), ("output", self.outputs, other.outputs)):
            ours_by, theirs_by = {t.name: t for t in ours}, {t.name: t for t in theirs}
            for name in sorted(set(ours_by) | set(theirs_by)):
                if name not in theirs_by:
                    found.append(f"{kind} {name}: not in the existing config")
                elif name not in ours_by:
                    found.append(f"{kind} {name}: in the existing config, not in this bundle's graph")
                elif ours_by[name] != theirs_by[name]:
                    found.append(f"{kind} {theirs_by[name].describe()}, this bundle has {ours_by[name].describe()}")
        return found


@dataclass(frozen=True)
class TritonModel:
    """Where a bundle went: the model folder, its new version folder and the config written beside them."""

    name: str
    version: int
    model_dir: Path
    version_dir: Path
    config: Path
    signature: Signature
    # The version the config's policy (latest 1) serves, which its pyimgano_* parameters describe.
    served_version: int


def triton_version(text: str) -> int:
    """The bundle version as a Triton version folder: a positive integer without leading zeros."""
    if not isinstance(text, str) or not VERSION_NAME.fullmatch(text) or int(text) > INT64_MAX:
        raise TritonRepositoryError(
            f"bundle version {text!r} cannot be a Triton model version: Triton needs a positive integer without "
            "leading zeros (1, 2, 10), so --format triton needs --bundle-version like that")
    return int(text)


def _dims(shape: list, label: str, batched: bool) -> tuple[int, ...]:
    """A graph shape without its batch dimension; symbolic or unknown dimensions as -1."""
    if batched:
        if not shape or isinstance(shape[0], int):
            raise BundleError(f"model.onnx: {label} has shape {shape}, without the dynamic batch dimension the "
                              "manifest promises (onnx.dynamic_batch)")
        shape = shape[1:]
    return tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in shape)


def _expect(label: str, actual: tuple[int, ...], expected: tuple[int, ...]) -> None:
    if len(actual) != len(expected) or any(a not in (-1, e) for a, e in zip(actual, expected)):
        raise BundleError(f"model.onnx: {label} dims {list(actual)} do not match the manifest's {list(expected)}")


def graph_signature(bundle: Bundle) -> Signature:
    """The signature read from the ONNX graph itself (not from the manifest), checked against the manifest."""
    manifest = bundle.manifest
    options = ort.SessionOptions()
    # Only the inputs and outputs are read: an unoptimised session of a 300 MB graph loads in a fraction.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(bundle.model_path), sess_options=options, providers=["CPUExecutionProvider"])
    batched = manifest.onnx.dynamic_batch
    if not batched:
        raise BundleError("model.onnx: the manifest says the graph has no dynamic batch (onnx.dynamic_batch "
                          "false); Triton's dynamic batching needs one")
    graph_inputs = session.get_inputs()
    if [i.name for i in graph_inputs] != [manifest.onnx.input]:
        raise BundleError(f"model.onnx: inputs {[i.name for i in graph_inputs]}, the manifest says "
                          f"[{manifest.onnx.input!r}]")
    contract = manifest.input
    [image] = graph_inputs
    image_type = ORT_TO_TRITON.get(image.type)
    if image_type != "TYPE_" + contract.dtype.upper():
        raise BundleError(f"model.onnx: input {image.name} is {image.type}, the manifest says {contract.dtype}")
    image_dims = _dims(image.shape, f"input {image.name}", batched)
    _expect(f"input {image.name}", image_dims, (contract.height, contract.width, 3))
    outputs_by_name = {o.name: o for o in session.get_outputs()}
    tensors = []
    for role, name, expected in (("score", manifest.outputs.score, ()),
                                 ("map", manifest.outputs.map, tuple(manifest.outputs.map_shape))):
        if name not in outputs_by_name:
            raise BundleError(f"model.onnx: no output {name!r} (manifest outputs.{role}); the graph has "
                              f"{sorted(outputs_by_name)}")
        output = outputs_by_name[name]
        data_type = ORT_TO_TRITON.get(output.type)
        if data_type not in FLOAT_TYPES:
            raise BundleError(f"model.onnx: output {name} is {output.type}, not a floating-point tensor")
        # Outputs are compared exactly by Triton's ONNX Runtime backend: a symbolic dimension stays -1.
        dims = _dims(output.shape, f"output {name}", batched)
        if role == "map":
            _expect(f"output {name}", dims, expected)
            tensors.append(Tensor(name, data_type, dims))
        elif dims == ():
            # [batch] leaves no dims, which Triton refuses for a batched tensor: declared [1] and reshaped to
            # the graph's [] (what Triton's own auto-complete writes), so clients receive [B, 1].
            tensors.append(Tensor(name, data_type, (1,), reshape=()))
        elif dims == (1,):
            tensors.append(Tensor(name, data_type, (1,)))
        else:
            raise BundleError(f"model.onnx: score output {name} has shape {output.shape}, not one score per image")
    return Signature(batched, (Tensor(image.name, image_type, (contract.height, contract.width, 3)),), tuple(tensors))


def _tensor_from_config(fields: dict, path: Path) -> Tensor:
    def one(key, default=None):
        values = fields.get(key, [])
        return values[-1] if values else default

    name, data_type = one("name"), one("data_type")
    if not isinstance(name, str) or not isinstance(data_type, str):
        raise TritonRepositoryError(f"{path}: an input or output without a name and data_type")
    reshape = one("reshape")
    return Tensor(name, str(data_type), tuple(fields.get("dims", [])),
                  tuple(reshape.get("shape", [])) if isinstance(reshape, dict) else None)


def config_signature(path: Path) -> Signature:
    """The signature an existing config.pbtxt describes (which a person may have edited)."""
    try:
        fields = pbtxt.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, pbtxt.PbtxtError) as exc:
        raise TritonRepositoryError(f"{path}: cannot read the existing model config ({exc})") from exc
    platform = (fields.get("platform") or [""])[-1]
    backend = (fields.get("backend") or [""])[-1]
    if platform not in ("", "onnxruntime_onnx") or backend not in ("", "onnxruntime") or not (platform or backend):
        raise TritonRepositoryError(f"{path}: the model there is not an ONNX Runtime model (platform {platform!r}, "
                                    f"backend {backend!r}); refusing to add a pyimgano version to it")
    batch = (fields.get("max_batch_size") or [0])[-1]
    return Signature(
        batched=isinstance(batch, int) and batch > 0,
        inputs=tuple(_tensor_from_config(f, path) for f in fields.get("input", []) if isinstance(f, dict)),
        outputs=tuple(_tensor_from_config(f, path) for f in fields.get("output", []) if isinstance(f, dict)),
    )


def host_steps(manifest: Manifest) -> str:
    """What a Triton client must do itself, and what only pyimgano applies, for this model's bundle."""
    contract = manifest.input
    steps = [f"client: RGB uint8 images resized to {contract.height}x{contract.width} (OpenCV "
             f"{contract.resize_interpolation}; layout {contract.layout})"]
    tiling = manifest.tiling
    if tiling is None:
        steps.append("tiling: none (the graph's score is the image score pyimgano thresholds)")
    else:
        steps.append(f"tiling: tile_size {tiling.tile_size}, stride {tiling.stride}, score_reduce "
                     f"{tiling.score_reduce}, map_reduce {tiling.map_reduce} on the host: one graph score is one "
                     "tile's, not the image score the thresholds judge")
    post = manifest.map_postprocess.config
    steps.append("map post-processing on the host: none" if post is None else
                 "map post-processing on the host (pyimgano only): " + json.dumps(dataclasses.asdict(post), sort_keys=True))
    steps.append("defect extraction: pyimgano only")
    return "; ".join(steps)


def config_fields(name: str, signature: Signature, options: TritonOptions, served: Manifest,
                  served_manifest_json: dict) -> dict:
    preferred = sorted({min(size, options.max_batch_size) for size in PREFERRED_BATCH_SIZES})
    fields = {
        "name": name,
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "default_model_filename": served.onnx.file,
        "max_batch_size": options.max_batch_size,
        "version_policy": {"latest": {"num_versions": 1}},
        "input": [tensor.to_config() for tensor in signature.inputs],
        "output": [tensor.to_config() for tensor in signature.outputs],
        "dynamic_batching": {"preferred_batch_size": preferred,
                             "max_queue_delay_microseconds": options.max_queue_delay_us},
        "instance_group": [{"kind": Enum(INSTANCE_KINDS[options.instance_kind]), "count": 1}],
    }
    if options.instance_kind != "cpu":
        fields["optimization"] = {"execution_accelerators": {"gpu_execution_accelerator": [
            {"name": "cuda", "parameters": [{"key": k, "value": v} for k, v in CUDA_ACCELERATOR_PARAMETERS.items()]}
        ]}}
    parameters = {
        "pyimgano_bundle": f"{served.name}-{served.version}",
        "pyimgano_image_threshold": repr(served.thresholds.image.value),
        "pyimgano_pixel_threshold": repr(served.thresholds.pixel.value),
        "pyimgano_host_steps": host_steps(served),
        "pyimgano_manifest": json.dumps(served_manifest_json, separators=(",", ":")),
    }
    if options.instance_kind != "cpu":
        parameters["cudnn_conv_algo_search"] = CUDNN_CONV_ALGO_SEARCH_HEURISTIC
    fields["parameters"] = [{"key": key, "value": {"string_value": value}} for key, value in parameters.items()]
    return fields


def _version_folders(model_dir: Path) -> dict[int, Path]:
    if not model_dir.is_dir():
        return {}
    return {int(p.name): p for p in model_dir.iterdir() if p.is_dir() and VERSION_NAME.fullmatch(p.name)}


def _served_manifest(folder: Path) -> tuple[Manifest, dict]:
    """The manifest of an existing version folder (the bundle's own files, or its one bundle folder)."""
    candidates = [folder / MANIFEST_NAME, *sorted(folder.glob(f"*/{MANIFEST_NAME}"))]
    for path in candidates:
        if path.is_file():
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise TritonRepositoryError(f"{path}: not a readable manifest ({exc})") from exc
            try:
                return read_manifest(data), data
            except BundleError as exc:
                raise TritonRepositoryError(f"{path}: {exc}") from exc
    raise TritonRepositoryError(f"{folder}: the version the config serves holds no pyimgano bundle "
                                f"({MANIFEST_NAME}); its config.pbtxt parameters cannot be written")


def _check_model_name(name: str) -> None:
    # Both servers skip hidden folders, and a name with a separator would not be one folder.
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise TritonRepositoryError(f"bundle name {name!r} cannot be a model folder name")


def _copy_bundle(source: Path, target: Path) -> None:
    """Every file of the bundle, byte for byte, at the same relative paths."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_dir():
            (target / relative).mkdir(parents=True, exist_ok=True)
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target / relative)


def write_triton_model(bundle_path: Path, repository: Path, options: TritonOptions = TritonOptions()) -> TritonModel:
    """Adds the bundle (a directory or .zip) to the repository as version `manifest.version` of model
    `manifest.name`; refuses a non-integer version, an existing version folder, and a model whose
    config.pbtxt describes other tensors. The version folder appears whole (staged, then renamed), then
    config.pbtxt is replaced whole."""
    bundle = open_bundle(bundle_path)
    manifest = bundle.manifest
    version = triton_version(manifest.version)
    _check_model_name(manifest.name)
    signature = graph_signature(bundle)
    repository = Path(repository)
    model_dir = repository / manifest.name
    version_dir = model_dir / str(version)
    config_path = model_dir / TRITON_CONFIG
    if version_dir.exists() or version_dir.is_symlink():
        raise TritonRepositoryError(f"{version_dir}: version {version} of model {manifest.name} already exists; "
                                    "export with another --bundle-version (Triton serves the highest) or remove it")
    if config_path.is_file():
        differences = signature.differences(config_signature(config_path))
        if differences:
            raise TritonRepositoryError(f"{config_path}: the existing model has another signature ("
                                        + "; ".join(differences) + "); export under another name or repository")
    elif _version_folders(model_dir):
        raise TritonRepositoryError(f"{model_dir}: holds version folders but no {TRITON_CONFIG}; not a model "
                                    "this exporter wrote, refusing to add to it")
    created_model_dir = not model_dir.exists()
    try:
        model_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TritonRepositoryError(f"{model_dir}: cannot create the model folder ({exc.strerror or exc})") from exc
    staging = model_dir / f".{version}.staging-{os.getpid()}"
    published = False
    try:
        if staging.exists():
            shutil.rmtree(staging)
        _copy_bundle(bundle.root, staging)
        open_bundle(staging)  # the copy verifies as the original did, before anything is published
        try:
            os.rename(staging, version_dir)
        except OSError as exc:  # created meanwhile by someone else
            raise TritonRepositoryError(f"{version_dir}: could not be created ({exc.strerror or exc})") from exc
        published = True
        served_version = max(_version_folders(model_dir))
        if served_version == version:
            served, served_json = manifest, json.loads((bundle.root / MANIFEST_NAME).read_text(encoding="utf-8"))
        else:
            served, served_json = _served_manifest(model_dir / str(served_version))
        text = pbtxt.render(config_fields(manifest.name, signature, options, served, served_json), CONFIG_HEADER)
        temporary = model_dir / f".{TRITON_CONFIG}.{os.getpid()}.tmp"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, config_path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
        if not published and created_model_dir and model_dir.is_dir() and not any(model_dir.iterdir()):
            model_dir.rmdir()
    return TritonModel(manifest.name, version, model_dir, version_dir, config_path, signature, served_version)
