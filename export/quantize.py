"""The int8 bundle for CPUs with 8-bit dot-product instructions (x86 AVX512-VNNI / AVX-VNNI, ARM dotprod).

Two rewrites of the exported fp32 graph, both measured in benchmarks/variants.py:
- The bank search: every nearest-neighbour chunk GEMM (||b||^2 - 2 q.b in fp32) becomes an integer GEMM
  (MatMulInteger) of the patch features, quantized per batch to uint8 (DynamicQuantizeLinear), against
  the chunk quantized per row to int8, rescaled to fp32. Norms, the minimum and everything after stay
  fp32; the fp32 rows stay in the file for the row lookups of the image-score reweighting.
- The backbone, unless it has grouped convolutions (see `quantizes_convolutions`): ONNX Runtime's
  static quantization of the convolutions (QDQ, int8 weights per output channel, uint8 activations with
  ranges calibrated on the run's held-out normal images), the first one excepted.
On CPUs without those instructions ONNX Runtime still runs the graph, but slower than fp32 and with
possible saturation in the uint8 x int8 products.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from pyimgano.models.patchcore import BANK_SEARCH_PREFIX

# Held-out images fed to the activation-range calibration; the calibrator keeps every intermediate
# tensor of every image in memory, so a few dozen are the practical limit.
CALIBRATION_IMAGES = 16


class QuantizeError(Exception):
    """The graph does not have the shape the int8 rewrite expects."""


def _is_search_gemm(node: onnx.NodeProto, initializers: dict, consumers: dict) -> bool:
    """A bank chunk GEMM of the nearest-neighbour search (not the anchor's neighbourhood, which feeds a
    concatenation for top-k and must rank exactly)."""
    if node.op_type != "Gemm" or not node.input[1].startswith(BANK_SEARCH_PREFIX) or node.input[1] not in initializers:
        return False
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attributes.get("transB") != 1 or attributes.get("alpha") != -2.0 or attributes.get("beta", 1.0) != 1.0:
        return False
    return all(c.op_type in ("ArgMin", "GatherElements") for c in consumers.get(node.output[0], []))


def quantize_bank_search(model: onnx.ModelProto) -> int:
    """Rewrites the search GEMMs in place (see the module docstring); returns how many."""
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    nodes, quantized_inputs, rewritten = [], set(), 0
    for node in graph.node:
        if not _is_search_gemm(node, initializers, consumers):
            nodes.append(node)
            continue
        queries, rows_name, sq_norms = node.input
        rows = numpy_helper.to_array(initializers[rows_name]).astype(np.float32)
        scale = np.maximum(np.abs(rows).max(axis=1), np.finfo(np.float32).tiny) / 127.0
        rows_int8 = np.clip(np.round(rows / scale[:, None]), -127, 127).astype(np.int8)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(rows_int8.T), f"{rows_name}.int8_t"))
        # -2 is folded into the per-row scale: partial = sq_norms + (q_int . b_int) * (q_scale * -2 b_scale).
        graph.initializer.append(numpy_helper.from_array((-2.0 * scale).astype(np.float32), f"{rows_name}.scale_m2"))
        if queries not in quantized_inputs:
            nodes.append(helper.make_node(
                "DynamicQuantizeLinear", [queries], [f"{queries}.u8", f"{queries}.scale", f"{queries}.zero"]
            ))
            quantized_inputs.add(queries)
        out = node.output[0]
        nodes += [
            helper.make_node("MatMulInteger", [f"{queries}.u8", f"{rows_name}.int8_t", f"{queries}.zero"], [f"{out}.i32"]),
            helper.make_node("Cast", [f"{out}.i32"], [f"{out}.f32"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{rows_name}.scale_m2", f"{queries}.scale"], [f"{out}.scale"]),
            helper.make_node("Mul", [f"{out}.f32", f"{out}.scale"], [f"{out}.dots"]),
            helper.make_node("Add", [f"{out}.dots", sq_norms], [out]),
        ]
        rewritten += 1
    if not rewritten:
        raise QuantizeError(f"no nearest-neighbour GEMM over {BANK_SEARCH_PREFIX}* initializers found to quantize")
    del graph.node[:]
    graph.node.extend(nodes)
    return rewritten


def _grouped(node: onnx.NodeProto) -> bool:
    return any(a.name == "group" and a.i > 1 for a in node.attribute)


def quantizes_convolutions(model: onnx.ModelProto) -> bool:
    """Backbones with grouped (depthwise) convolutions keep every convolution in fp32: int8 costs those
    layers the most accuracy, and the quantize/dequantize pairs around them cost more time than the int8
    pointwise layers save (mobilenet_v2, 1k-row bank, this 2-core CPU: 112 images/s fp32, 62 int8)."""
    return not any(node.op_type == "Conv" and _grouped(node) for node in model.graph.node)


def _convolutions_kept_fp32(model: onnx.ModelProto) -> list[str]:
    """The first convolution: raw pixels, 3 channels, little compute, and the largest error when
    quantized (measured on magnetic_tile: keeping it fp32 took the median image-score change from
    1.7% to 1.1% at the same speed)."""
    convolutions = [node.name for node in model.graph.node if node.op_type == "Conv"]
    return convolutions[:1]


class _Images(CalibrationDataReader):
    def __init__(self, input_name: str, images: np.ndarray):
        self._feeds = iter([{input_name: image[None]} for image in images])

    def get_next(self):
        return next(self._feeds, None)


def quantize_int8(onnx_path: Path, input_name: str, calibration: np.ndarray) -> dict:
    """Rewrites the fp32 graph at `onnx_path` into the int8 graph, in place; returns what was done."""
    model = onnx.load(str(onnx_path))
    search_gemms = quantize_bank_search(model)
    done = {"search_gemms_int8": search_gemms}
    if not quantizes_convolutions(model):
        onnx.save(model, str(onnx_path))
        return {**done, "convolutions": "fp32 (the backbone has grouped convolutions)"}
    with tempfile.TemporaryDirectory(prefix="pyimgano-int8-") as scratch:
        rewritten = Path(scratch) / "search_int8.onnx"
        prepared = Path(scratch) / "prepared.onnx"
        onnx.save(model, str(rewritten))
        # Folds batch norms into the convolutions and fixes shapes, as the quantizer expects; the
        # symbolic shape pass is skipped because the graph's data-dependent gathers defeat it.
        quant_pre_process(str(rewritten), str(prepared), skip_symbolic_shape=True)
        images = calibration[:CALIBRATION_IMAGES]
        kept_fp32 = _convolutions_kept_fp32(onnx.load(str(prepared)))
        quantize_static(
            str(prepared), str(onnx_path), _Images(input_name, images), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["Conv"], per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=kept_fp32,
        )
    return {**done, "convolutions": "int8 QDQ, per-channel weights, the first one fp32",
            "activation_calibration_images": int(len(images))}
