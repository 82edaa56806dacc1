"""The ONNX Runtime session over a bundle's scoring graph."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from pyimgano.runtime.bundle import Bundle

DEVICES = ("auto", "cpu", "cuda")
CUDA_PROVIDER_OPTIONS = {
    # TF32 matmuls/convolutions move scores by ~3e-3 relative (measured on an H200); the bundle's
    # contract is 1e-3 against the exported model, so full fp32.
    "use_tf32": "0",
    # cuDNN's heuristic choice, not ORT's default exhaustive search: on an H200 (onnxruntime-gpu 1.31,
    # cuDNN 9) the exhaustive search picked a non-tensor-core implicit GEMM for wide_resnet50_2's fp16
    # 3x3 convolutions, half of the graph's GPU time; the fp16 16k-row bundle at batch 32 went from
    # 1,124 to 2,445 images/s (benchmarks/cuda_check.py --explore).
    "cudnn_conv_algo_search": "HEURISTIC",
}


class EngineError(Exception):
    """The engine cannot run as asked (e.g. CUDA requested where ONNX Runtime has no CUDA provider)."""


def select_providers(device: str) -> list:
    available = ort.get_available_providers()
    if device not in DEVICES:
        raise EngineError(f"device {device!r} is not one of {list(DEVICES)}")
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", CUDA_PROVIDER_OPTIONS), "CPUExecutionProvider"]
    if device == "cuda":
        raise EngineError(
            "device 'cuda' requested but this ONNX Runtime has no CUDAExecutionProvider "
            f"(available: {available}); install pyimgano[gpu] (onnxruntime-gpu) or use --device cpu"
        )
    return ["CPUExecutionProvider"]


def session_options(intra_op_threads: int | None = None) -> ort.SessionOptions:
    """How every session over a bundle graph runs: the engine's, and the exporter's parity and int8
    calibration sessions (benchmarks/session_options.py has the measurements behind these settings)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The bank's chunk GEMMs all depend only on the patch features, so the default order may run them
    # all before any minimum and hold every (patches x chunk) block at once: 3.6 GiB peak for a
    # 51k-row bank at batch 8, against 0.5 GiB in priority order, at the same speed.
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    return options


class Engine:
    """Runs uint8 NHWC batches through the bundle's graph: (scores [B], maps [B,H,W]) as float32."""

    def __init__(self, bundle: Bundle, device: str = "auto", intra_op_threads: int | None = None):
        self.bundle = bundle
        options = session_options(intra_op_threads)
        self.providers = select_providers(device)
        if self.providers[0] != "CPUExecutionProvider" and hasattr(ort, "preload_dlls"):
            # Loads the CUDA/cuDNN libraries that pip wheels (e.g. torch's) put on the machine.
            ort.preload_dlls()
        self.session = ort.InferenceSession(str(bundle.model_path), sess_options=options, providers=self.providers)
        # What the session actually got (ORT falls back to the CPU silently), read once, not per batch.
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        outputs = bundle.manifest.outputs
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [outputs.score, outputs.map]
        self.context = bundle.context

    def score_batch(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        contract = self.context.steps.contract
        expected = (contract.height, contract.width, 3)
        if batch.dtype != np.uint8 or batch.ndim != 4 or batch.shape[1:] != expected:
            raise EngineError(f"batch must be uint8 [B,{expected[0]},{expected[1]},3], got {batch.dtype} {batch.shape}")
        if self.device == "cuda":
            return self._run_bound(batch)
        scores, maps = self.session.run(self.output_names, {self.input_name: batch})
        return scores.astype(np.float32, copy=False), maps.astype(np.float32, copy=False)

    def _run_bound(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """CUDA with IOBinding: the uint8 batch goes up once, the outputs are allocated on the device and
        only the small score vector and the maps come back; nothing else crosses to the host."""
        binding = self.session.io_binding()
        binding.bind_cpu_input(self.input_name, batch)
        for name in self.output_names:
            binding.bind_output(name, "cuda")
        self.session.run_with_iobinding(binding)
        scores, maps = binding.copy_outputs_to_cpu()
        return scores.astype(np.float32, copy=False), maps.astype(np.float32, copy=False)
