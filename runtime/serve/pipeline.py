"""What one inference request goes through around the session: its input tensor becomes whole RGB images
(raw UINT8 as given, or encoded images decoded as pyimgano-infer decodes files), and the scores and maps
of its share of a batch become the output tensors, with the decision (runtime/decision.py) and the
defect regions pyimgano-infer --defects writes. Both halves run on worker threads, so the decoding of one
request overlaps the session run of another.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from pyimgano.runtime import strict
from pyimgano.runtime.decision import NoDecision, decide
from pyimgano.runtime.images import ImageLimits, ImageReadError, decode_rgb, header_size
from pyimgano.runtime.serve.batcher import Scored
from pyimgano.runtime.serve.errors import BadRequest, ModelFailure, TooLarge
from pyimgano.runtime.serve.protocol import InferRequest, InputTensor, OutputTensor, parse_infer_request
from pyimgano.runtime.serve.registry import ServedVersion
from pyimgano.runtime.tiling import too_many_tiles

PLATFORM = "pyimgano_onnx"
IMAGE_BYTES_INPUT = "image_bytes"
# Output name -> datatype; score and label come back unless the request names its outputs.
OUTPUT_DATATYPES = {"score": "FP32", "label": "INT32", "anomaly_map": "FP32", "defects": "BYTES"}
DEFAULT_OUTPUTS = ("score", "label")
# Request parameters: what this server reads, and Triton's own that tritonclient may send.
REQUEST_PARAMETERS = {"anomaly_map": bool, "defects": bool, "binary_data_output": bool, "timeout": int, "priority": int}
SEQUENCE_PARAMETERS = ("sequence_id", "sequence_start", "sequence_end")


@dataclass(frozen=True)
class Job:
    """A request checked and decoded: its images, and what to answer with."""

    request_id: str | None
    images: list[np.ndarray]
    outputs: tuple[str, ...]
    binary: tuple[bool, ...]
    # The request's own `timeout` parameter (tritonclient's, in microseconds) as seconds; None = not given.
    timeout_s: float | None


def _parameters(request: InferRequest) -> dict:
    parameters = request.parameters
    for key in SEQUENCE_PARAMETERS:
        if key in parameters:
            raise BadRequest(f"parameter {key!r}: sequence batching is not supported (each request stands alone)")
    for key, value in parameters.items():
        if key not in REQUEST_PARAMETERS:
            nearest = strict.nearest_key(key, REQUEST_PARAMETERS)
            raise BadRequest(f"unknown request parameter {key!r}" + (f"; did you mean {nearest!r}?" if nearest else ""))
        expected = REQUEST_PARAMETERS[key]
        if expected is bool and not isinstance(value, bool):
            raise BadRequest(f"parameter {key!r} must be true or false, got {value!r}")
        if expected is int and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise BadRequest(f"parameter {key!r} must be a non-negative integer, got {value!r}")
    return parameters


def _outputs(request: InferRequest, parameters: dict) -> tuple[tuple[str, ...], tuple[bool, ...]]:
    """The outputs named in `outputs` (score and label without it), plus anomaly_map / defects when their
    parameter is true; each binary as its own `binary_data` says, else as `binary_data_output`."""
    default_binary = parameters.get("binary_data_output", False)
    requested = request.outputs if request.outputs is not None else ()
    names, binary = [], []
    for output in requested:
        if output.name not in OUTPUT_DATATYPES:
            raise BadRequest(f"unknown output {output.name!r}; this model has {list(OUTPUT_DATATYPES)}")
        if output.name in names:
            raise BadRequest(f"output {output.name!r} is requested twice")
        names.append(output.name)
        binary.append(default_binary if output.binary is None else output.binary)
    if request.outputs is None:
        names, binary = list(DEFAULT_OUTPUTS), [default_binary] * len(DEFAULT_OUTPUTS)
    for name in ("anomaly_map", "defects"):
        if parameters.get(name) and name not in names:
            names.append(name)
            binary.append(default_binary)
    return tuple(names), tuple(binary)


def _check_pixels(height: int, width: int, limits: ImageLimits, what: str) -> None:
    if height * width > limits.max_pixels:
        raise TooLarge(f"{what}: {width}x{height} pixels exceeds the limit of {limits.max_pixels:,} "
                       "(--max-image-pixels)")


def _raw_images(tensor: InputTensor, limits: ImageLimits) -> list[np.ndarray]:
    if tensor.datatype != "UINT8":
        raise BadRequest(f"input {tensor.name!r} must be UINT8 [B,H,W,3] RGB, got {tensor.datatype}")
    shape = tensor.shape
    if len(shape) != 4 or shape[3] != 3 or 0 in shape:
        raise BadRequest(f"input {tensor.name!r} must have shape [B,H,W,3] (RGB, B, H, W >= 1), got {list(shape)}")
    _check_pixels(shape[1], shape[2], limits, f"input {tensor.name!r}")
    return list(tensor.data)


def _encoded_images(tensor: InputTensor, limits: ImageLimits) -> list[np.ndarray]:
    if tensor.datatype != "BYTES":
        raise BadRequest(f"input {IMAGE_BYTES_INPUT!r} must be BYTES [B] (encoded images), got {tensor.datatype}")
    if not (len(tensor.shape) == 1 or (len(tensor.shape) == 2 and tensor.shape[1] == 1)) or tensor.shape[0] < 1:
        raise BadRequest(f"input {IMAGE_BYTES_INPUT!r} must have shape [B] or [B,1] with B >= 1, "
                         f"got {list(tensor.shape)}")
    images = []
    for index, element in enumerate(tensor.data):
        what = f"{IMAGE_BYTES_INPUT}[{index}]"
        if tensor.from_json:
            # A JSON string cannot hold arbitrary bytes: encoded images in JSON are base64.
            try:
                element = base64.b64decode(element, validate=True)
            except binascii.Error:
                raise BadRequest(f"{what}: not base64 (in JSON, image bytes are base64 strings; binary data carries "
                                 "them as they are)") from None
        if len(element) > limits.max_bytes:
            raise TooLarge(f"{what}: image of {len(element):,} bytes exceeds the limit of {limits.max_bytes:,} "
                           "(--max-image-bytes)")
        stated = header_size(element[: 2**20])
        if stated is not None:
            _check_pixels(*stated, limits, what)
        try:
            images.append(decode_rgb(element, limits))
        except ImageReadError as exc:
            raise BadRequest(f"{what}: {exc}") from None
    return images


def prepare(body: bytes, header_length: int | None, served: ServedVersion, limits: ImageLimits) -> Job:
    """The request parsed, checked against the version it goes to, and its images decoded."""
    request = parse_infer_request(body, header_length)
    parameters = _parameters(request)
    outputs, binary = _outputs(request, parameters)
    if "defects" in outputs and served.defects_problem:
        raise BadRequest(f"defects: {served.defects_problem}")
    if len(request.inputs) != 1:
        raise BadRequest(f"give exactly one input ({served.input_name!r} or {IMAGE_BYTES_INPUT!r}), got "
                         f"{len(request.inputs)}")
    [tensor] = request.inputs
    if tensor.name == served.input_name:
        images = _raw_images(tensor, limits)
    elif tensor.name == IMAGE_BYTES_INPUT:
        images = _encoded_images(tensor, limits)
    else:
        raise BadRequest(f"unknown input {tensor.name!r}: give {served.input_name!r} (UINT8 [B,H,W,3], RGB) or "
                         f"{IMAGE_BYTES_INPUT!r} (BYTES [B], encoded images)")
    tiling = served.context.steps.tiling
    if tiling is not None:
        for index, image in enumerate(images):
            problem = too_many_tiles(image.shape[:2], tiling)
            if problem:
                raise BadRequest(f"image {index}: {problem}")
        if "anomaly_map" in outputs and len({image.shape[:2] for image in images}) > 1:
            raise BadRequest("anomaly_map of a tiling bundle is at each image's own size: give images of one size "
                             "per request to get it as one [B,H,W] tensor")
    timeout = parameters.get("timeout")
    return Job(request.id, images, outputs, binary, timeout / 1e6 if timeout else None)


def respond(job: Job, scored: Scored, served: ServedVersion) -> tuple[list[OutputTensor], dict, int]:
    """(output tensors in the order asked, response parameters, anomalous count): each image decided as
    pyimgano-infer decides it, regions extracted only when asked."""
    context = served.context
    with_defects = "defects" in job.outputs
    decisions = []
    for index, (score, anomaly_map, image) in enumerate(zip(scored.scores, scored.maps, job.images)):
        try:
            decisions.append(decide(float(score), anomaly_map, image.shape[:2], context.image_threshold,
                                    served.defects if with_defects else None, served.pixel_threshold))
        except NoDecision as exc:
            raise ModelFailure(f"image {index}: {exc}") from None
    count = len(decisions)
    tensors = []
    for name in job.outputs:
        if name == "score":
            data = np.array([d.score for d in decisions], np.float32)
        elif name == "label":
            data = np.array([d.label for d in decisions], np.int32)
        elif name == "anomaly_map":
            data = np.stack(scored.maps).astype(np.float32, copy=False)
        else:
            data = tuple(json.dumps({"image_size": [int(image.shape[0]), int(image.shape[1])],
                                     "pixel_threshold": d.pixel_threshold, "located": d.located,
                                     "regions": d.regions}, allow_nan=False).encode("utf-8")
                         for d, image in zip(decisions, job.images))
        shape = data.shape if isinstance(data, np.ndarray) else (count,)
        tensors.append(OutputTensor(name, OUTPUT_DATATYPES[name], shape, data))
    parameters = {"threshold": context.image_threshold}
    if with_defects:
        parameters["pixel_threshold"] = served.pixel_threshold
    return tensors, parameters, sum(d.label for d in decisions)


def metadata(served: ServedVersion, versions: list[str]) -> dict:
    """The protocol's model metadata, with the bundle's contract and thresholds as parameters."""
    context = served.context
    contract, tiling = context.steps.contract, context.steps.tiling
    manifest = served.bundle.manifest
    map_shape = [-1, -1, -1] if tiling is not None else [-1, *manifest.outputs.map_shape]
    return {
        "name": served.model,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [
            {"name": served.input_name, "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
            {"name": IMAGE_BYTES_INPUT, "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [
            {"name": "score", "datatype": "FP32", "shape": [-1]},
            {"name": "label", "datatype": "INT32", "shape": [-1]},
            {"name": "anomaly_map", "datatype": "FP32", "shape": map_shape},
            {"name": "defects", "datatype": "BYTES", "shape": [-1]},
        ],
        "parameters": {
            "bundle": context.name,
            "version": served.label,
            "family": context.model.family,
            "category": context.model.category,
            "input_height": contract.height,
            "input_width": contract.width,
            "tiling": tiling.to_json() if tiling is not None else None,
            "image_threshold": context.image_threshold,
            "pixel_threshold": served.pixel_threshold,
            "origin": served.origin,
        },
    }
