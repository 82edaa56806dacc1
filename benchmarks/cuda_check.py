"""The same bundle on ONNX Runtime CUDA (IOBinding) and CPU: labels, score agreement, images/s.

Needs torch (to make the bundle: PatchCore with random mobilenet_v2 weights on the synthetic dataset,
so no weights file is needed) and onnxruntime-gpu. Prints a table and writes JSON:

    python benchmarks/cuda_check.py --out cuda_check.json
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
    engine.run(batch)  # warm-up: kernels, arenas, cuDNN autotuning
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        engine.run(batch)
        times.append(time.perf_counter() - started)
    return len(batch) / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="cuda_check.json")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    from pyimgano.config import parse_config
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset
    from pyimgano.export.bundle_writer import export_bundle
    from pyimgano.runtime import Engine, open_bundle
    from pyimgano.runtime.images import expand_inputs, read_rgb, to_contract
    from pyimgano.workbench.run import run_workbench

    scratch = Path(tempfile.mkdtemp(prefix="cuda-check-"))
    generate_dataset(scratch / "data", SyntheticSpec(n_train=30, n_test_good=10, n_test_per_defect=10))
    config = parse_config({
        "seed": 0,
        "dataset": {"root": str(scratch / "data"), "category": "synthetic_texture"},
        "model": {"device": "cpu", "preset": "industrial-balanced", "pretrained": False},
        "output": {"output_dir": str(scratch / "run")},
    })
    run_workbench(config)
    bundle_dir = export_bundle(scratch / "run", scratch / "bundles").bundle_dir
    bundle = open_bundle(bundle_dir)
    cpu, cuda = Engine(bundle, device="cpu"), Engine(bundle, device="cuda")
    assert cuda.device == "cuda", cuda.session.get_providers()

    paths = expand_inputs(str(scratch / "data" / "synthetic_texture" / "test"))
    batch = np.stack([to_contract(read_rgb(p), bundle.contract) for p in paths])
    cpu_scores, cpu_maps = cpu.run(batch)
    cuda_scores, cuda_maps = cuda.run(batch)
    threshold = bundle.image_threshold.value
    result = {
        "images": len(batch),
        "labels_identical": bool(np.array_equal(cpu_scores > threshold, cuda_scores > threshold)),
        "max_rel_score_diff": float((np.abs(cuda_scores - cpu_scores) / np.abs(cpu_scores)).max()),
        "max_map_diff_rel_to_max": float(np.abs(cuda_maps - cpu_maps).max() / np.abs(cpu_maps).max()),
        "memory_bank_rows": bundle.manifest["model"]["memory_bank_rows"],
        "providers": cuda.session.get_providers(),
    }
    rng = np.random.default_rng(0)
    for size in (1, 32):
        data = rng.integers(0, 256, (size, bundle.contract.height, bundle.contract.width, 3), dtype=np.uint8)
        result[f"cuda_iobinding_images_per_s_batch{size}"] = round(images_per_second(cuda, data, args.repeats), 1)
        result[f"cpu_images_per_s_batch{size}"] = round(images_per_second(cpu, data, max(3, args.repeats // 5)), 1)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = result["labels_identical"] and result["max_rel_score_diff"] <= 1e-3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
