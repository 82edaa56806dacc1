"""ONNX Runtime session options for the engine, chosen by measurement.

Builds PatchCore bundles (random weights; speed and memory do not depend on them) and runs the same
batch under each setting in a fresh child process (so that peak RSS is the setting's own): graph
optimisation level, intra-op threads, execution mode, execution order, memory pattern and arena.
Prints ms/image and peak RSS per setting and writes JSON (default benchmarks/results/session_options.json).

    .venv/bin/python benchmarks/session_options.py            # mobilenet_v2 51k rows and wide_resnet50_2 10k rows, batch 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the bundle builders are shared with make bench)

SETTINGS = {
    "engine (all, priority order)": {"level": "all", "order": "priority"},
    "level basic": {"level": "basic", "order": "priority"},
    "level extended": {"level": "extended", "order": "priority"},
    "default order": {"level": "all", "order": "default"},
    "default order, no memory pattern": {"level": "all", "order": "default", "mem_pattern": False},
    "no cpu arena": {"level": "all", "order": "priority", "arena": False},
    "1 intra-op thread": {"level": "all", "order": "priority", "threads": 1},
    "parallel execution mode": {"level": "all", "order": "priority", "parallel": True},
}
REPEATS = 5


def measure(model: str, batch: int, setting: dict) -> dict:
    """Child-process body: one session with `setting`, median ms/image over REPEATS runs, peak RSS."""
    import onnxruntime as ort

    levels = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    options = ort.SessionOptions()
    options.graph_optimization_level = levels[setting["level"]]
    if setting["order"] == "priority":
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if "threads" in setting:
        options.intra_op_num_threads = setting["threads"]
    if setting.get("parallel"):
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    options.enable_mem_pattern = setting.get("mem_pattern", True)
    options.enable_cpu_mem_arena = setting.get("arena", True)
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    images = np.random.default_rng(0).integers(0, 256, (batch, 256, 256, 3), dtype=np.uint8)
    session.run(None, {"images": images})
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        session.run(None, {"images": images})
        times.append(time.perf_counter() - started)
    return {"ms_per_image": round(1000 * statistics.median(times) / batch, 2),
            "peak_rss_mib": round(bench.peak_rss_kib() / 1024, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/session_options.json")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "SETTING_JSON"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], args.batch, json.loads(args.child[1]))))
        return 0

    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset
    from pyimgano.export.bundle_writer import export_bundle

    work = Path(tempfile.mkdtemp(prefix="pyimgano-session-options-"))
    generate_dataset(work / "data", SyntheticSpec(n_train=20, n_test_good=4, n_test_per_defect=4))
    result = {"batch": args.batch, "repeats": REPEATS, "rows": []}
    for backbone, rows in (("mobilenet_v2", 51200), ("wide_resnet50_2", 10240)):
        run_dir = bench.make_run(work, backbone)
        bench.resize_bank(run_dir, rows)
        model = export_bundle(run_dir, work / "bundles", name=f"{backbone}-{rows}").bundle_dir / "model.onnx"
        for name, setting in SETTINGS.items():
            command = [sys.executable, __file__, "--batch", str(args.batch), "--child", str(model), json.dumps(setting)]
            child = subprocess.run(command, capture_output=True, text=True, check=True)
            measured = json.loads(child.stdout.strip().splitlines()[-1])
            result["rows"].append({"backbone": backbone, "bank_rows": rows, "setting": name, **setting, **measured})
            print(f"{backbone:16s} {rows:6d}  {name:34s} {measured['ms_per_image']:9.2f} ms/image "
                  f"{measured['peak_rss_mib']:8.0f} MiB", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
