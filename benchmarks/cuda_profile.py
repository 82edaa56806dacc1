"""Where a bundle's graph spends its time on CUDA: node placement (CPU fallbacks) and ORT's per-op profile.

    python benchmarks/cuda_profile.py BUNDLE_MODEL.onnx --out DIR
"""
import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--out", default=".")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    ort.preload_dlls()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(args.out) / "ort_profile")
    options.optimized_model_filepath = str(Path(args.out) / "optimized.onnx")
    session = ort.InferenceSession(args.model, sess_options=options,
                                   providers=[("CUDAExecutionProvider", {"use_tf32": "0"}), "CPUExecutionProvider"])
    data = np.random.default_rng(0).integers(0, 256, (args.batch, 256, 256, 3), dtype=np.uint8)
    name = session.get_inputs()[0].name
    for _ in range(6):
        session.run(None, {name: data})
    profile = session.end_profiling()
    events = json.loads(Path(profile).read_text())
    per_op = collections.defaultdict(float)
    per_node = collections.defaultdict(float)
    provider_of = {}
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        provider = event["args"].get("provider", "?")
        per_op[(op, provider)] += event["dur"] / 6 / 1000.0
        per_node[(event["name"][: -len("_kernel_time")], op, provider)] += event["dur"] / 6 / 1000.0
        provider_of[event["name"]] = provider
    print("ms per run by op (provider):")
    for (op, provider), ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {op:28s} {provider:26s} {ms:8.3f}")
    print("top nodes:")
    for (node, op, provider), ms in sorted(per_node.items(), key=lambda kv: -kv[1])[:30]:
        print(f"  {node[:60]:60s} {op:18s} {provider[:4]} {ms:8.3f}")
    cpu_nodes = sorted({(n, o) for (n, o, p) in per_node if p.startswith("CPU")})
    print("CPU nodes:", cpu_nodes[:60])
    return 0


if __name__ == "__main__":
    sys.exit(main())
