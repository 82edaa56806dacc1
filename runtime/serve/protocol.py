"""The Open Inference Protocol (KServe v2) over HTTP/REST: inference requests and responses as JSON, and
Triton's binary tensor data extension, both directions.

A body with binary tensors is the JSON header (its length in the `Inference-Header-Content-Length` header)
followed by each binary tensor's bytes in the order the tensors appear in the JSON, each tensor's size in
its `binary_data_size` parameter. Binary data is little-endian, row-major, unpadded; a BOOL element is one
byte (0 or 1); a BYTES element is a 4-byte little-endian unsigned length followed by that many bytes.
In JSON, `data` is the row-major contents, flat or nested; BYTES elements are strings.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from pyimgano.runtime.serve.errors import BadRequest

# Datatype names -> little-endian numpy dtypes; BYTES is handled as a list of bytes elements.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"), "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"), "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
DATATYPES = (*DTYPES, "BYTES")
HEADER_LENGTH = "Inference-Header-Content-Length"
# Input parameters of other Triton extensions this server does not implement: refused rather than ignored.
UNSUPPORTED_TENSOR_PARAMETERS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset",
                                 "classification")


@dataclass(frozen=True)
class InputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # A numpy array of `shape` for numeric datatypes; BYTES: the elements in row-major order.
    data: np.ndarray | tuple[bytes, ...]
    # BYTES elements given as JSON strings (UTF-8 encoded here) rather than as binary data.
    from_json: bool = False


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    # None: not said for this output; the request's `binary_data_output` decides.
    binary: bool | None = None


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: tuple[InputTensor, ...]
    # None: no `outputs` in the request (the model's default outputs).
    outputs: tuple[RequestedOutput, ...] | None
    parameters: dict


@dataclass(frozen=True)
class OutputTensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # A numpy array for numeric datatypes; BYTES: the elements, row-major.
    data: np.ndarray | tuple[bytes, ...]


def serialize_bytes(elements: tuple[bytes, ...] | list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def deserialize_bytes(buffer: memoryview, count: int, name: str) -> tuple[bytes, ...]:
    """`count` length-prefixed elements that fill `buffer` exactly."""
    elements, offset, size = [], 0, len(buffer)
    for index in range(count):
        if offset + 4 > size:
            raise BadRequest(f"input {name!r}: BYTES data ends inside the length of element {index} "
                             f"(shape has {count} elements)")
        (length,) = struct.unpack_from("<I", buffer, offset)
        offset += 4
        if offset + length > size:
            raise BadRequest(f"input {name!r}: BYTES element {index} states {length:,} bytes, but only "
                             f"{size - offset:,} remain")
        elements.append(bytes(buffer[offset : offset + length]))
        offset += length
    if offset != size:
        raise BadRequest(f"input {name!r}: {size - offset:,} bytes of BYTES data left after the {count} elements "
                         "its shape has")
    return tuple(elements)


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers, got {value!r}")
    return tuple(value)


def _flatten_strings(data: Any, name: str) -> list[bytes]:
    flat, stack = [], [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            flat.append(item.encode("utf-8"))
        else:
            raise BadRequest(f"input {name!r}: BYTES elements in JSON must be strings, got {type(item).__name__}")
    return flat


def _json_numbers(data: Any, datatype: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    dtype = DTYPES[datatype]
    try:
        values = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise BadRequest(f"input {name!r}: data is not a regular array ({exc})") from None
    if values.size == 0:
        values = values.astype(dtype)
    elif dtype.kind == "b":
        if values.dtype.kind != "b":
            raise BadRequest(f"input {name!r}: BOOL data must be true/false, got {values.dtype.name} values")
    elif dtype.kind in "iu":
        if values.dtype.kind not in "iu":
            raise BadRequest(f"input {name!r}: {datatype} data must be integers, got {values.dtype.name} values")
        info = np.iinfo(dtype)
        low, high = int(values.min()), int(values.max())
        if low < info.min or high > info.max:
            raise BadRequest(f"input {name!r}: {datatype} data must lie in [{info.min}, {info.max}], "
                             f"got values from {low} to {high}")
    elif values.dtype.kind not in "iuf":
        raise BadRequest(f"input {name!r}: {datatype} data must be numbers, got {values.dtype.name} values")
    count = math.prod(shape)
    if values.size != count:
        raise BadRequest(f"input {name!r}: shape {list(shape)} has {count:,} elements, data has {values.size:,}")
    return values.astype(dtype, copy=False).reshape(shape)


def _binary_tensor(raw: memoryview, datatype: str, shape: tuple[int, ...], name: str):
    count = math.prod(shape)
    if datatype == "BYTES":
        return deserialize_bytes(raw, count, name)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"input {name!r}: shape {list(shape)} of {datatype} is {count * dtype.itemsize:,} bytes, "
                         f"binary_data_size is {len(raw):,}")
    if dtype.kind == "b":
        values = np.frombuffer(raw, dtype=np.uint8)
        if values.size and values.max() > 1:
            raise BadRequest(f"input {name!r}: BOOL binary data must be bytes 0 or 1")
        return values.astype(np.bool_).reshape(shape)
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _tensor_parameters(value: Any, what: str) -> dict:
    parameters = _object(value, f"{what} parameters") if value is not None else {}
    for key in UNSUPPORTED_TENSOR_PARAMETERS:
        if key in parameters:
            raise BadRequest(f"{what}: parameter {key!r} (a Triton extension) is not supported by pyimgano-serve")
    return parameters


def parse_infer_request(body: bytes, header_length: int | None) -> InferRequest:
    """The request, every tensor checked against its shape and datatype; BadRequest naming what is wrong."""
    if header_length is not None and not 0 < header_length <= len(body):
        raise BadRequest(f"{HEADER_LENGTH} {header_length} does not fit a body of {len(body):,} bytes")
    header = body if header_length is None else body[:header_length]
    try:
        request = json.loads(header)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
        hint = f" (binary data needs the {HEADER_LENGTH} header)" if header_length is None else ""
        raise BadRequest(f"the request is not valid JSON: {exc}{hint}") from None
    request = _object(request, "the request")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("the request needs a non-empty `inputs` list")
    binary = memoryview(body)[header_length:] if header_length is not None else memoryview(b"")
    offset = 0
    tensors = []
    for index, item in enumerate(inputs):
        item = _object(item, f"inputs[{index}]")
        name = item.get("name")
        if not isinstance(name, str):
            raise BadRequest(f"inputs[{index}] needs a string `name`")
        datatype = item.get("datatype")
        if datatype not in DATATYPES:
            raise BadRequest(f"input {name!r}: datatype {datatype!r} is not one of {list(DATATYPES)}")
        shape = _shape(item.get("shape"), name)
        parameters = _tensor_parameters(item.get("parameters"), f"input {name!r}")
        size = parameters.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise BadRequest(f"input {name!r} has both `data` and binary_data_size")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise BadRequest(f"input {name!r}: binary_data_size must be a non-negative integer, got {size!r}")
            if offset + size > len(binary):
                raise BadRequest(f"input {name!r}: binary_data_size {size:,} runs past the end of the body "
                                 f"({len(binary) - offset:,} binary bytes left)")
            tensors.append(InputTensor(name, datatype, shape, _binary_tensor(binary[offset : offset + size], datatype,
                                                                             shape, name)))
            offset += size
        elif "data" in item:
            if datatype == "BYTES":
                elements = _flatten_strings(item["data"], name)
                if len(elements) != math.prod(shape):
                    raise BadRequest(f"input {name!r}: shape {list(shape)} has {math.prod(shape):,} elements, data "
                                     f"has {len(elements):,}")
                tensors.append(InputTensor(name, datatype, shape, tuple(elements), from_json=True))
            else:
                tensors.append(InputTensor(name, datatype, shape, _json_numbers(item["data"], datatype, shape, name)))
        else:
            raise BadRequest(f"input {name!r} has neither `data` nor a binary_data_size parameter")
    if offset != len(binary):
        raise BadRequest(f"{len(binary) - offset:,} bytes of binary data after the header that no input's "
                         "binary_data_size accounts for")
    outputs = request.get("outputs")
    requested = None
    if outputs is not None:
        if not isinstance(outputs, list):
            raise BadRequest("`outputs` must be a list")
        requested = []
        for index, item in enumerate(outputs):
            item = _object(item, f"outputs[{index}]")
            name = item.get("name")
            if not isinstance(name, str):
                raise BadRequest(f"outputs[{index}] needs a string `name`")
            parameters = _tensor_parameters(item.get("parameters"), f"output {name!r}")
            flag = parameters.get("binary_data")
            if flag is not None and not isinstance(flag, bool):
                raise BadRequest(f"output {name!r}: binary_data must be true or false, got {flag!r}")
            requested.append(RequestedOutput(name, flag))
        requested = tuple(requested)
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest(f"`id` must be a string, got {request_id!r}")
    parameters = _object(request.get("parameters", {}), "the request's parameters")
    return InferRequest(request_id, tuple(tensors), requested, parameters)


def _json_data(tensor: OutputTensor) -> list:
    if tensor.datatype == "BYTES":
        return [element.decode("utf-8") for element in tensor.data]
    return np.asarray(tensor.data).ravel().tolist()


def _binary_data(tensor: OutputTensor) -> bytes:
    if tensor.datatype == "BYTES":
        return serialize_bytes(tensor.data)
    return np.ascontiguousarray(tensor.data, dtype=DTYPES[tensor.datatype]).tobytes()


def encode_infer_response(model_name: str, model_version: str, request_id: str | None, outputs: list[OutputTensor],
                          binary: list[bool], parameters: dict | None = None) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when the body is all JSON)."""
    response: dict = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    entries, blobs = [], []
    for tensor, as_binary in zip(outputs, binary):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if as_binary:
            raw = _binary_data(tensor)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _json_data(tensor)
        entries.append(entry)
    response["outputs"] = entries
    header = json.dumps(response, allow_nan=False, separators=(",", ":")).encode("utf-8")
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
