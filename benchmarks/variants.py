"""Bundle variants against the fp32 bundle on real data: quality change and CPU speed, in one run.

Trains PatchCore (mobilenet_v2, ImageNet weights, 256x256, 2% coreset: as tests/test_realdata.py) on a
category of ../shared/data/defects, or reuses --run, then exports the fp32 bundle, the fp16 bundle
(meant for CUDA), the int8 bundle (meant for CPUs with VNNI), reduced-bank bundles (1/2 and 1/4 of the
fitted rows, thresholds recalibrated) and int8 with half the bank, and scores every test image through the ONNX Runtime engine on the CPU. Prints image AUROC, pixel
AUROC, AUPRO, the change against fp32, images/s, bundle size, and writes JSON
(default benchmarks/results/variants_<category>.json).

    .venv/bin/python benchmarks/variants.py --category magnetic_tile
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pyimgano.config import parse_config
from pyimgano.data.sources import load_dataset_split
from pyimgano.export.bundle_writer import export_bundle
from pyimgano.export.variants import Variant
from pyimgano.runtime import Engine, open_bundle
from pyimgano.workbench.evaluation import evaluate
from pyimgano.workbench.run import run_workbench
from pyimgano.workbench.run_loader import load_run
from pyimgano.workbench.samples import partition, read_images, read_masks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "defects"
CHUNK = 32


def train(root: Path, category: str, coreset: float, out: Path) -> Path:
    config = parse_config({
        "recipe": "industrial-adapt", "seed": 0,
        "dataset": {"name": "mvtec", "root": str(root), "category": category, "resize": [256, 256]},
        "model": {"name": "vision_patchcore", "device": "cpu", "preset": "industrial-balanced",
                  "backbone": "mobilenet_v2", "pretrained": True, "coreset_ratio": coreset},
        # The variants are recalibrated on held-out normal images, which a cross-fitted run has none of.
        "calibration": {"strategy": "holdout"},
        "output": {"output_dir": str(out)},
    })
    run_workbench(config)
    return out


def measure(bundle_dir: Path, samples) -> dict:
    engine = Engine(open_bundle(bundle_dir), device="cpu")
    scores, maps = [], []
    started = time.perf_counter()
    for start in range(0, len(samples), CHUNK):
        images = read_images(samples[start : start + CHUNK])
        chunk_scores, chunk_maps = engine.context.steps.score(engine, images, batch_size=8)
        scores.append(chunk_scores)
        maps.extend(chunk_maps)
    seconds = time.perf_counter() - started
    all_scores = np.concatenate(scores)
    metrics = evaluate(samples, all_scores, maps, read_masks(samples, maps), engine.context.image_threshold)
    manifest = engine.bundle.manifest
    return {
        "bundle": bundle_dir.name,
        "precision": manifest.precision,
        "bank_rows": manifest.model.details["memory_bank_rows"],
        "image_auroc": round(metrics["image"]["auroc"], 4),
        "pixel_auroc": round(metrics["pixel"]["auroc"], 4) if metrics["pixel"] else None,
        "aupro": round(metrics["pixel"]["aupro_0.3"], 4) if metrics["pixel"] else None,
        "f1_at_threshold": round(metrics["image"]["f1"], 4),
        "images_per_second_cpu": round(len(samples) / seconds, 1),
        "model_mib": round((bundle_dir / "model.onnx").stat().st_size / 2**20, 2),
        "parity_max_rel_score_diff": manifest.parity.max_rel_score_diff,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--category", default="magnetic_tile")
    parser.add_argument("--coreset", type=float, default=0.02)
    parser.add_argument("--run", type=Path, help="reuse this run directory instead of training")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pyimgano-variants-"))
    run_dir = args.run or train(args.data, args.category, args.coreset, work / "run")
    config, category, report = load_run(run_dir, None)
    samples = partition(load_dataset_split(config.dataset, category, config.seed), config).test
    fitted = report["model"]["memory_bank_rows"]
    variants = [Variant(), Variant(precision="fp16"), Variant(precision="int8"), Variant(bank_rows=fitted // 2),
                Variant(bank_rows=fitted // 4), Variant(precision="int8", bank_rows=fitted // 2)]
    rows = []
    for variant in variants:
        exported = export_bundle(run_dir, work / "bundles", variant=variant)
        rows.append(measure(exported.bundle_dir, samples))
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]
    for row in rows:
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            row[f"{key}_change"] = round(row[key] - base[key], 4) if row[key] is not None else None
        row["speed_vs_fp32"] = round(row["images_per_second_cpu"] / base["images_per_second_cpu"], 2)
    header = f"{'bundle':48s} {'bank':>6s} {'image AUROC':>16s} {'pixel AUROC':>16s} {'AUPRO':>16s} {'img/s':>7s} {'x fp32':>6s} {'MiB':>7s}"
    print(f"{category}: {len(samples)} test images, CPU engine, batch 8\n{header}")
    for r in rows:
        print(f"{r['bundle']:48s} {r['bank_rows']:6d} {r['image_auroc']:.4f} ({r['image_auroc_change']:+.4f}) "
              f"{r['pixel_auroc']:.4f} ({r['pixel_auroc_change']:+.4f}) {r['aupro']:.4f} ({r['aupro_change']:+.4f}) "
              f"{r['images_per_second_cpu']:7.1f} {r['speed_vs_fp32']:6.2f} {r['model_mib']:7.2f}")
    out = args.out or Path(f"benchmarks/results/variants_{category}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"category": category, "test_images": len(samples), "fitted_bank_rows": fitted,
                               "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
