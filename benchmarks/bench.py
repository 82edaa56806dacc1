"""`make bench`: the edge engine against the machine's floor, in one run, as ratios.

For mobilenet_v2 and wide_resnet50_2 PatchCore bundles (random weights: speed does not depend on them)
with memory banks of about 1k, 10k and 50k rows, at 256x256, batch 1 and 8:
  - pyimgano-infer's stages (decode, preprocess, graph, defects) in ms/image and end-to-end images/s,
    session load time and peak RSS, measured in a child process that never imports torch;
  - the torch eager model on the same batch (ratio ORT / torch), and the int8 bundle of the same run
    (pyimgano-export --precision int8) against it;
  - the graph's FLOPs per image (torch's FlopCounterMode) against this machine's numpy sgemm rate;
  - bundle size on disk; one 2048x2048 image tiled (512 / stride 384);
  - with --train: fit + coreset time for 700 images (mobilenet_v2, 10%).
Prints a table and writes JSON (default benchmarks/results/bench.json).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

BANKS = (1024, 10240, 51200)
BATCHES = (1, 8)
IMAGES = 32


def sgemm_gflops(size: int = 2048, repeats: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times) / 1e9


def peak_rss_kib() -> int:
    """This process's own peak RSS. Not getrusage: on Linux its ru_maxrss survives exec, so a child would
    report the parent's (torch-laden) peak; VmHWM belongs to the new address space."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def measure_edge(bundle: str, images: str, batch: int, tile: bool) -> dict:
    """Child-process body: only the runtime is imported here."""
    from pyimgano.runtime import Engine, open_bundle
    from pyimgano.runtime.images import expand_inputs
    from pyimgano.runtime.inference import InferOptions, run_inference
    from pyimgano.runtime.tiling import TilingConfig

    started = time.perf_counter()
    engine = Engine(open_bundle(bundle), device="cpu")
    load_seconds = time.perf_counter() - started
    paths = expand_inputs(images)
    tiling = TilingConfig(tile_size=512, stride=384, map_reduce="hann") if tile else None
    options = InferOptions(batch_size=batch)
    context = engine.context.with_tiling(tiling) if tiling else engine.context
    run_inference(engine, context, paths[:batch], options, lambda record: None)  # warm-up
    summary = run_inference(engine, context, paths, options, lambda record: None).to_json()
    return {
        "session_load_s": round(load_seconds, 3),
        "images_per_second": summary["images_per_second"],
        "stage_ms_per_image": summary["stage_ms_per_image"],
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
        "torch_imported": "torch" in sys.modules,
    }


def edge_child(bundle: Path, images: Path, batch: int, tile: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", str(bundle), str(images), str(batch)] + (["--tile"] if tile else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def torch_eager_ms(graph, batch: np.ndarray, repeats: int = 3) -> float:
    import torch

    with torch.no_grad():
        tensor = torch.from_numpy(batch)
        graph(tensor)
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            graph(tensor)
            times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times) / len(batch)


def graph_gflop(graph, height: int, width: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph(torch.zeros(1, height, width, 3, dtype=torch.uint8))
    return counter.get_total_flops() / 1e9


def make_run(work: Path, backbone: str) -> Path:
    from pyimgano.config import parse_config
    from pyimgano.workbench.run import run_workbench

    config = parse_config({
        "dataset": {"root": str(work / "data"), "category": "synthetic_texture"},
        "model": {"device": "cpu", "backbone": backbone, "pretrained": False, "coreset_ratio": 0.05},
        "output": {"output_dir": str(work / f"run-{backbone}")},
    })
    run_workbench(config)
    return work / f"run-{backbone}"


def resize_bank(run_dir: Path, rows: int) -> None:
    """Replaces the run's memory bank by `rows` rows drawn from it (with a little noise): speed only."""
    report = json.loads((run_dir / "categories" / "synthetic_texture" / "report.json").read_text())
    path = run_dir / report["checkpoint"]
    with np.load(path) as data:
        bank = data["memory_bank"]
    rng = np.random.default_rng(rows)
    picked = bank[rng.integers(0, len(bank), rows)]
    picked = picked + rng.normal(0, 0.01 * float(bank.std()), picked.shape).astype(np.float32)
    np.savez(path, memory_bank=picked.astype(np.float32))


def bundle_mib(bundle_dir: Path) -> float:
    return sum(path.stat().st_size for path in bundle_dir.iterdir()) / 2**20


def train_timing(work: Path) -> dict:
    import torch

    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset
    from pyimgano.models.coreset import greedy_coreset, rows_for_ratio, screen_pays_off
    from pyimgano.models.patchcore import VisionPatchCore
    from pyimgano.models.patchcore_spec import PatchCoreParams
    from pyimgano.runtime.images import InputContract, expand_inputs, read_rgb, to_contract

    root = generate_dataset(work / "train700", SyntheticSpec(n_train=700, n_test_good=1, n_test_per_defect=1))
    contract = InputContract(256, 256)
    images = np.stack([to_contract(read_rgb(p), contract) for p in expand_inputs(str(root / "train" / "good"))])
    params = PatchCoreParams(backbone="mobilenet_v2", layers=("features.6", "features.13"), coreset_ratio=0.1,
                             num_neighbors=9, embed_dim=1024, pretrained=False, weights_path=None,
                             input_hw=(256, 256), mean=contract.mean, std=contract.std, seed=0, batch_size=16)
    detector = VisionPatchCore(params, torch.device("cpu"))
    started = time.perf_counter()
    features = detector.embed(images)
    embed_s = time.perf_counter() - started
    started = time.perf_counter()
    screen = screen_pays_off(features.device)  # what greedy_coreset decides by default, recorded
    greedy_coreset(features, rows_for_ratio(len(features), 0.1), 0, screen=screen)
    coreset_s = time.perf_counter() - started
    return {"images": len(images), "patches": int(features.shape[0]), "embed_s": round(embed_s, 1),
            "coreset_10pct_s": round(coreset_s, 1), "coreset_bfloat16_screen": screen,
            "fit_total_s": round(embed_s + coreset_s, 1)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/bench.json")
    parser.add_argument("--train", action="store_true", help="also time fit + coreset on 700 images (minutes)")
    parser.add_argument("--backbones", default="mobilenet_v2,wide_resnet50_2")
    parser.add_argument("--child", nargs=3, metavar=("BUNDLE", "IMAGES", "BATCH"))
    parser.add_argument("--tile", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure_edge(args.child[0], args.child[1], int(args.child[2]), args.tile)))
        return 0

    import cv2

    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset
    from pyimgano.export.bundle_writer import export_bundle
    from pyimgano.export.variants import Variant
    from pyimgano.workbench.run_loader import open_run

    work = Path(tempfile.mkdtemp(prefix="pyimgano-bench-"))
    generate_dataset(work / "data", SyntheticSpec(n_train=20, n_test_good=4, n_test_per_defect=4))
    inputs = work / "inputs"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for index in range(IMAGES):
        cv2.imwrite(str(inputs / f"{index:03d}.png"), rng.integers(0, 256, (256, 256, 3), dtype=np.uint8))
    big = work / "big"
    big.mkdir()
    cv2.imwrite(str(big / "2048.png"), rng.integers(0, 256, (2048, 2048, 3), dtype=np.uint8))

    result = {"machine": {"cpu_count": os.cpu_count(), "sgemm_gflops": round(sgemm_gflops(), 1)}, "rows": []}
    batch8 = rng.integers(0, 256, (8, 256, 256, 3), dtype=np.uint8)
    for backbone in args.backbones.split(","):
        run_dir = make_run(work, backbone)
        for rows in BANKS:
            resize_bank(run_dir, rows)
            exported = export_bundle(run_dir, work / "bundles", name=f"bench-{backbone}-{rows}")
            # Random weights give int8 activation ranges that mean nothing: speed only, parity not enforced
            # (benchmarks/variants.py measures what int8 costs on real data).
            int8 = export_bundle(run_dir, work / "bundles", name=f"bench-{backbone}-{rows}-int8",
                                 variant=Variant(precision="int8"), enforce_parity=False)
            detector, _ = open_run(run_dir, device="cpu")
            graph = detector.graph()
            gflop = graph_gflop(graph, 256, 256)
            size_mib = bundle_mib(exported.bundle_dir)
            for batch in BATCHES:
                edge = edge_child(exported.bundle_dir, inputs, batch)
                edge_int8 = edge_child(int8.bundle_dir, inputs, batch)
                torch_ms = torch_eager_ms(graph, batch8[:batch])
                graph_ms = edge["stage_ms_per_image"]["graph"]
                int8_graph_ms = edge_int8["stage_ms_per_image"]["graph"]
                total_ms = 1000 / edge["images_per_second"]
                result["rows"].append({
                    "backbone": backbone, "bank_rows": rows, "batch": batch, **edge,
                    "bundle_mib": round(size_mib, 1), "graph_gflop_per_image": round(gflop, 2),
                    "torch_eager_ms_per_image": round(torch_ms, 2),
                    "ort_over_torch_speedup": round(torch_ms / graph_ms, 2),
                    "graph_fraction_of_sgemm": round(gflop / (graph_ms / 1000) / result["machine"]["sgemm_gflops"], 3),
                    # How close torch eager already is to the floor bounds the ORT/torch ratio reachable in fp32.
                    "torch_fraction_of_sgemm": round(gflop / (torch_ms / 1000) / result["machine"]["sgemm_gflops"], 3),
                    "outside_graph_share": round(1 - graph_ms / total_ms, 3),
                    "int8": {"images_per_second": edge_int8["images_per_second"], "graph_ms_per_image": int8_graph_ms,
                             "peak_rss_mib": edge_int8["peak_rss_mib"],
                             "bundle_mib": round(bundle_mib(int8.bundle_dir), 1)},
                    "int8_over_torch_speedup": round(torch_ms / int8_graph_ms, 2),
                })
            if backbone == "mobilenet_v2" and rows == 10240:
                result["tiled_2048"] = edge_child(exported.bundle_dir, big, 8, tile=True)
    if args.train:
        result["train_700"] = train_timing(work)

    header = ("backbone", "bank", "batch", "img/s", "decode", "prep", "graph", "defects", "torch ms", "ORT x",
              "GFLOP", "of sgemm", "torch of sgemm", "outside", "RSS MiB", "load s", "MiB", "int8 img/s", "int8 x")
    rows = [header] + [
        (r["backbone"], str(r["bank_rows"]), str(r["batch"]), f"{r['images_per_second']:.1f}",
         *(f"{r['stage_ms_per_image'][k]:.2f}" for k in ("decode", "preprocess", "graph", "defects")),
         f"{r['torch_eager_ms_per_image']:.1f}", f"{r['ort_over_torch_speedup']:.2f}", f"{r['graph_gflop_per_image']:.2f}",
         f"{100 * r['graph_fraction_of_sgemm']:.0f}%", f"{100 * r['torch_fraction_of_sgemm']:.0f}%",
         f"{100 * r['outside_graph_share']:.0f}%", f"{r['peak_rss_mib']:.0f}",
         f"{r['session_load_s']:.2f}", f"{r['bundle_mib']:.1f}", f"{r['int8']['images_per_second']:.1f}",
         f"{r['int8_over_torch_speedup']:.2f}")
        for r in result["rows"]
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print(f"sgemm: {result['machine']['sgemm_gflops']} GFLOP/s on {result['machine']['cpu_count']} cores")
    print("\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows))
    if "tiled_2048" in result:
        print(f"2048x2048 tiled (mobilenet_v2, 10k bank): {json.dumps(result['tiled_2048'])}")
    if "train_700" in result:
        print(f"fit + coreset, 700 images: {json.dumps(result['train_700'])}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
