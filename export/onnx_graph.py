"""torch scoring graph -> ONNX file with a dynamic batch, and the torch-vs-ONNX parity measurement."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from pyimgano.runtime.engine import session_options

OPSET = 17
INPUT_NAME = "images"
SCORE_NAME = "scores"
MAP_NAME = "maps"
PARITY_BATCH = 16


def export_graph(graph: torch.nn.Module, height: int, width: int, path: Path) -> None:
    example = torch.zeros(2, height, width, 3, dtype=torch.uint8)
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of dynamo; it handles this graph's
        # data-dependent gathers with a dynamic batch, which is what we need, so its notice is noise here.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        # Shapes read during tracing are constants by design: the input size is fixed by the contract.
        warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            graph,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[SCORE_NAME, MAP_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, SCORE_NAME: {0: "batch"}, MAP_NAME: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )


def measure_parity(graph: torch.nn.Module, onnx_path: Path, images: np.ndarray, threshold: float) -> dict:
    """Scores and maps of the same uint8 images through torch and ONNX Runtime (CPU), compared."""
    session = ort.InferenceSession(str(onnx_path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    torch_parts, onnx_parts = [], []
    # Batches bound the (patches x bank chunk) distance blocks on both sides.
    for start in range(0, len(images), PARITY_BATCH):
        batch = images[start : start + PARITY_BATCH]
        with torch.no_grad():
            torch_parts.append([t.float().numpy() for t in graph(torch.from_numpy(batch))])
        onnx_parts.append(session.run([SCORE_NAME, MAP_NAME], {INPUT_NAME: batch}))
    torch_scores, torch_maps = (np.concatenate(part) for part in zip(*torch_parts))
    onnx_scores, onnx_maps = (np.concatenate(part) for part in zip(*onnx_parts))
    score_scale = np.maximum(np.abs(torch_scores), 1e-6)
    map_scale = max(float(np.abs(torch_maps).max()), 1e-6)
    return {
        "images": int(len(images)),
        "max_abs_score_diff": float(np.abs(onnx_scores - torch_scores).max()),
        "max_rel_score_diff": float((np.abs(onnx_scores - torch_scores) / score_scale).max()),
        "max_abs_map_diff": float(np.abs(onnx_maps - torch_maps).max()),
        "max_map_diff_rel_to_map_max": float(np.abs(onnx_maps - torch_maps).max() / map_scale),
        "labels_identical": bool(np.array_equal(onnx_scores > threshold, torch_scores > threshold)),
        "onnxruntime": ort.__version__,
        "torch": torch.__version__,
    }
