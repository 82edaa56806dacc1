"""The same bundle on ONNX Runtime CUDA (IOBinding) and CPU: labels, score agreement, images/s.

Needs torch (to make the bundle: PatchCore with random weights on the synthetic dataset, so no weights
file is needed) and onnxruntime-gpu. Prints JSON and writes it:

    python benchmarks/cuda_check.py --out cuda_check.json
    # issue 5's GPU target: wide_resnet50_2, 16,384-row bank, fp16 bundle, batch 32 >= 2,000 images/s
    python benchmarks/cuda_check.py --backbone wide_resnet50_2 --bank-rows 16384 --precision fp16 --out target.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def images_per_second(engine, batch: np.ndarray, repeats: int) -> float:
    engine.score_batch(batch)  # warm-up: kernels, arenas, cuDNN autotuning
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.score_batch(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def bound_images_per_second(session, output_names: list[str], batch: np.ndarray, repeats: int, resident: bool) -> float:
    """Like Engine.run on CUDA (uint8 up, outputs back), or with `resident` the input already on the GPU
    and the outputs left there: the graph alone, without the host transfers."""
    import onnxruntime as ort

    binding = session.io_binding()
    name = session.get_inputs()[0].name
    if resident:
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(batch, "cuda", 0))

    def once():
        if not resident:
            binding.bind_cpu_input(name, batch)
        for output in output_names:
            binding.bind_output(output, "cuda")
        session.run_with_iobinding(binding)
        if not resident:
            binding.copy_outputs_to_cpu()
        else:
            binding.synchronize_outputs()

    once()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        once()
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def explore(bundle, engine, repeats: int) -> dict:
    """Batch 32 through the same graph: graph alone (data resident on the GPU), and CUDA provider options."""
    import onnxruntime as ort

    from pyimgano.runtime.engine import CUDA_PROVIDER_OPTIONS, session_options

    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (32, bundle.context.steps.contract.height, bundle.context.steps.contract.width, 3), dtype=np.uint8)
    found = {"graph_only_resident_images_per_s_batch32": round(
        bound_images_per_second(engine.session, engine.output_names, data, repeats, resident=True), 1)}
    variants = {  # label: (CUDA provider options over the engine's, optimisers disabled)
        "engine_no_conv_activation_fusion": ({}, ["ConvActivationFusion"]),
        "exhaustive_conv_search": ({"cudnn_conv_algo_search": "EXHAUSTIVE"}, []),
    }
    for label, (provider_options, disabled) in variants.items():
        try:
            session = ort.InferenceSession(str(bundle.model_path), sess_options=session_options(), disabled_optimizers=disabled,
                                           providers=[("CUDAExecutionProvider", {**CUDA_PROVIDER_OPTIONS, **provider_options}),
                                                      "CPUExecutionProvider"])
            found[f"{label}_images_per_s_batch32"] = round(
                bound_images_per_second(session, engine.output_names, data, repeats, resident=False), 1)
            found[f"{label}_resident_images_per_s_batch32"] = round(
                bound_images_per_second(session, engine.output_names, data, repeats, resident=True), 1)
        except (RuntimeError, ValueError) as error:  # recorded: an option this build lacks is a finding
            found[f"{label}_error"] = str(error)[:300]
    return found


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="cuda_check.json")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--bank-rows", type=int, help="replace the fitted bank by this many rows (speed only)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    parser.add_argument("--no-cpu-speed", action="store_true", help="skip the CPU images/s (slow for fp16 WRN)")
    parser.add_argument("--explore", action="store_true", help="also: graph alone, CUDA provider options")
    args = parser.parse_args()

    from pyimgano.config import parse_config
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset
    from pyimgano.export.bundle_writer import FP16_PARITY_RTOL, PARITY_RTOL, export_bundle
    from pyimgano.export.variants import Variant
    from pyimgano.runtime import Engine, open_bundle
    from pyimgano.runtime.images import expand_inputs, read_rgb, to_contract
    from pyimgano.workbench.run import run_workbench

    scratch = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    generate_dataset(scratch / "data", SyntheticSpec(n_train=30, n_test_good=10, n_test_per_defect=10))
    config = parse_config({
        "seed": 0,
        "dataset": {"root": str(scratch / "data"), "category": "synthetic_texture"},
        "model": {"device": "cpu", "preset": "industrial-balanced", "pretrained": False, "backbone": args.backbone},
        "output": {"output_dir": str(scratch / "run")},
    })
    run_workbench(config)
    if args.bank_rows:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench import resize_bank

        resize_bank(scratch / "run", args.bank_rows)
    bundle_dir = export_bundle(scratch / "run", scratch / "bundles", variant=Variant(precision=args.precision)).bundle_dir
    bundle = open_bundle(bundle_dir)
    cpu, cuda = Engine(bundle, device="cpu"), Engine(bundle, device="cuda")
    assert cuda.device == "cuda", cuda.session.get_providers()

    paths = expand_inputs(str(scratch / "data" / "synthetic_texture" / "test"))
    batch = np.stack([to_contract(read_rgb(p), bundle.context.steps.contract) for p in paths])
    cpu_scores, cpu_maps = cpu.score_batch(batch)
    cuda_scores, cuda_maps = cuda.score_batch(batch)
    threshold = bundle.context.image_threshold
    result = {
        "images": len(batch),
        "labels_identical": bool(np.array_equal(cpu_scores > threshold, cuda_scores > threshold)),
        "max_rel_score_diff": float((np.abs(cuda_scores - cpu_scores) / np.abs(cpu_scores)).max()),
        "max_map_diff_rel_to_max": float(np.abs(cuda_maps - cpu_maps).max() / np.abs(cpu_maps).max()),
        "backbone": args.backbone,
        "precision": args.precision,
        "memory_bank_rows": args.bank_rows or bundle.manifest.model.details["memory_bank_rows"],
        "export_parity_vs_torch_fp32": bundle.manifest.parity.max_rel_score_diff,
        "providers": cuda.session.get_providers(),
    }
    rng = np.random.default_rng(0)
    for size in (1, 8, 32):
        data = rng.integers(0, 256, (size, bundle.context.steps.contract.height, bundle.context.steps.contract.width, 3), dtype=np.uint8)
        result[f"cuda_iobinding_images_per_s_batch{size}"] = round(images_per_second(cuda, data, args.repeats), 1)
        if not args.no_cpu_speed:
            result[f"cpu_images_per_s_batch{size}"] = round(images_per_second(cpu, data, max(3, args.repeats // 5)), 1)
    if args.explore:
        result.update(explore(bundle, cuda, args.repeats))
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    # CUDA against the CPU provider on the same graph (for fp16: both half precision, different kernels).
    ok = result["max_rel_score_diff"] <= (PARITY_RTOL if args.precision == "fp32" else FP16_PARITY_RTOL)
    ok = ok and (result["labels_identical"] or args.precision != "fp32")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
