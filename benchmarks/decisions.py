"""The decisions a line receives, measured on real data: good parts rejected and defects missed at the
shipped image threshold, the threshold's predicted rate against the measured one, and defect masks
(mean IoU, median predicted/true area, good images with a region) for candidate mask methods.

    python benchmarks/decisions.py                       # the 12 PIPED categories and magnetic_tile
    python benchmarks/decisions.py --categories piped_flr01 --strategies cross_fit,holdout

Each category is trained through the workbench (mobilenet_v2, industrial-balanced, 256x256, maps
saved); the mask candidates are computed from the saved test maps with the runtime's own extraction.
Prints a table per data set and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from pyimgano.config import parse_config
from pyimgano.runtime.defects import DefectsConfig, extract_regions
from pyimgano.runtime.images import read_mask, read_rgb
from pyimgano.workbench.evaluation import predicted_rate
from pyimgano.workbench.operating_point import threshold_at

PROJECT = Path(__file__).resolve().parent.parent
DATA = PROJECT.parent / "shared" / "data" / "defects"
PIPED = [f"piped_{name}" for name in ("bdp01", "bft01", "brg01", "brg02", "brg03", "btn01", "flr01", "flr02",
                                      "fvn01", "fvn02", "gla01", "zpb01")]
# (name, pixel threshold source, region peak fraction). "normal_pixel_q0.999": the seed's quantile of all
# normal pixels; "normal_map_max": the level at most the target share of good images reach anywhere (each
# normal image's map maximum at the image threshold's operating point), what calibration ships.
CANDIDATES = (
    ("normal_pixel_q0.999", "pixel_quantile", None),
    ("normal_pixel_q0.999+peak0.5", "pixel_quantile", 0.5),
    ("normal_map_max", "map_max", None),
    ("normal_map_max+peak0.5 (shipped)", "map_max", 0.5),
)


def train(category: str, strategy: str, work: Path, folds: int, reuse: bool = False) -> Path:
    """`strategy` is cross_fit, cross_fit:K (K folds) or holdout."""
    from pyimgano.workbench.run import run_workbench

    out = work / f"{category}-{strategy.replace(':', '')}"
    if reuse and (out / "categories" / category / "report.json").is_file():
        return out / "categories" / category
    strategy, _, k = strategy.partition(":")
    folds = int(k) if k else folds
    config = parse_config({
        "dataset": {"name": "mvtec", "root": str(DATA), "category": category, "resize": [256, 256]},
        "model": {"name": "vision_patchcore", "device": "cpu", "preset": "industrial-balanced",
                  "backbone": "mobilenet_v2", "pretrained": True},
        "calibration": {"strategy": strategy, "folds": folds},
        "adaptation": {"save_maps": True},
        "output": {"output_dir": str(out)},
    })
    run_workbench(config)
    return out / "categories" / category


def masks(category_dir: Path, run_dir: Path) -> dict:
    report = json.loads((category_dir / "report.json").read_text())
    records = [json.loads(line) for line in (category_dir / "per_image.jsonl").read_text().splitlines()]
    table = report["thresholds"]["normal_pixel_quantiles"]
    rate = report["thresholds"]["image"]["target_false_reject_rate"]
    thresholds = {
        "pixel_quantile": table["values"][table["q"].index(0.999)],
        "map_max": threshold_at(np.asarray(report["calibration"]["normal_map_max"]), rate)[0],
    }
    image_threshold = report["thresholds"]["image"]["value"]
    results = {name: {"iou": [], "area_ratio": [], "detected_iou": [], "detected_area_ratio": [],
                      "good_with_region": 0, "good": 0} for name, _, _ in CANDIDATES}
    for record in records:
        anomaly_map = np.load(run_dir / record["map"]["path"])
        height, width = read_rgb(record["path"]).shape[:2]
        truth = read_mask(record["mask_path"], height, width) if record["mask_path"] else np.zeros((height, width), bool)
        for name, source, fraction in CANDIDATES:
            mask, regions = extract_regions(anomaly_map, (height, width), thresholds[source],
                                            DefectsConfig(region_peak_fraction=fraction))
            predicted = mask > 0
            entry = results[name]
            if record["truth"] == 0:
                entry["good"] += 1
                entry["good_with_region"] += int(bool(regions))
            elif truth.any():
                iou = np.count_nonzero(predicted & truth) / np.count_nonzero(predicted | truth)
                ratio = np.count_nonzero(predicted) / np.count_nonzero(truth)
                entry["iou"].append(iou)
                entry["area_ratio"].append(ratio)
                # What a line sees: regions only for the parts the image threshold rejects (one verdict).
                if record["score"] > image_threshold:
                    entry["detected_iou"].append(iou)
                    entry["detected_area_ratio"].append(ratio)
    return {"thresholds": thresholds, "pixel_auroc": report["metrics"]["pixel"]["auroc"], "candidates": results}


def summarise(entries: list[dict]) -> dict:
    def pooled(key: str) -> list[float]:
        return [v for entry in entries for v in entry[key]]

    def statistic(values: list[float], how) -> float | None:
        return float(how(values)) if values else None

    return {"mean_iou": statistic(pooled("iou"), np.mean), "median_area_ratio": statistic(pooled("area_ratio"), np.median),
            "defect_images": len(pooled("iou")),
            "detected_mean_iou": statistic(pooled("detected_iou"), np.mean),
            "detected_median_area_ratio": statistic(pooled("detected_area_ratio"), np.median),
            "detected_defect_images": len(pooled("detected_iou")),
            "good_with_region": sum(entry["good_with_region"] for entry in entries),
            "good": sum(entry["good"] for entry in entries)}


def decision_pool(decisions: list[dict]) -> dict:
    """Pooled over a data set's categories: the measured rates, and the predicted rate and interval as the
    mean of the categories' own (each category has its own threshold)."""
    good = sum(d["test_good"] for d in decisions)
    rejected = sum(d["test_good_rejected"] for d in decisions)
    defects = sum(d["test_defects"] for d in decisions)
    missed = sum(d["test_defects_missed"] for d in decisions)
    predicted = float(np.mean([d["predicted_false_reject_rate"] for d in decisions]))
    low = float(np.mean([d["predicted_false_reject_rate_ci95"][0] for d in decisions]))
    high = float(np.mean([d["predicted_false_reject_rate_ci95"][1] for d in decisions]))
    inside = [d["test_false_reject_rate_within_ci95"] for d in decisions]
    return {"test_good": good, "rejected": rejected, "false_reject_rate": rejected / good, "defects": defects,
            "missed": missed, "miss_rate": missed / defects, "predicted_false_reject_rate": predicted,
            "predicted_ci95": [low, high], "measured_within_ci95": bool(low <= rejected / good <= high),
            "categories_measured_within_their_ci95": f"{sum(inside)} of {len(inside)}"}


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:.3f}{unit}" if not unit else f"{value:.2f}{unit}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--categories", default=",".join(PIPED + ["magnetic_tile"]))
    parser.add_argument("--strategies", default="cross_fit", help="comma-separated: cross_fit, cross_fit:K, holdout")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--reuse", action="store_true", help="read runs already in --work instead of training again")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pyimgano-decisions"))
    parser.add_argument("--out", type=Path, default=PROJECT / "benchmarks" / "results" / "decisions.json")
    args = parser.parse_args()
    rows: dict[str, dict] = {}
    for strategy in args.strategies.split(","):
        for category in args.categories.split(","):
            started = time.perf_counter()
            category_dir = train(category, strategy, args.work, args.folds, args.reuse)
            report = json.loads((category_dir / "report.json").read_text())
            decision = report["decision"]
            image = report["thresholds"]["image"]
            row = {
                "strategy": strategy,
                "fit_seconds": report["timing"]["fit_seconds"],
                "wall_seconds": round(time.perf_counter() - started, 1),
                "image_auroc": report["metrics"]["image"].get("auroc"),
                "decision": {**{k: v for k, v in decision.items() if k != "threshold_table"},
                             "predicted_false_reject_rate": predicted_rate(image)},
                "masks": masks(category_dir, category_dir.parent.parent),
            }
            rows[f"{category}/{strategy}"] = row
            d = row["decision"]
            print(f"{category:14s} {strategy:9s} fit {row['fit_seconds']:7.1f} s  AUROC {row['image_auroc']:.3f}  "
                  f"good rejected {d['test_good_rejected']}/{d['test_good']}  missed {d['test_defects_missed']}/"
                  f"{d['test_defects']}  predicted {d['predicted_false_reject_rate']:.3f} "
                  f"[{d['predicted_false_reject_rate_ci95'][0]:.3f}, {d['predicted_false_reject_rate_ci95'][1]:.3f}] "
                  f"{d['method']}", flush=True)
    sets = {"piped": [c for c in args.categories.split(",") if c.startswith("piped_")],
            "magnetic_tile": [c for c in args.categories.split(",") if c == "magnetic_tile"]}
    summary = {}
    for strategy in args.strategies.split(","):
        for data_set, categories in sets.items():
            chosen = [rows[f"{c}/{strategy}"] for c in categories]
            if not chosen:
                continue
            summary[f"{data_set}/{strategy}"] = {
                "decisions": decision_pool([r["decision"] for r in chosen]),
                "masks": {name: summarise([r["masks"]["candidates"][name] for r in chosen]) for name, _, _ in CANDIDATES},
                "masks_per_category": {c: {name: summarise([rows[f"{c}/{strategy}"]["masks"]["candidates"][name]])
                                           for name, _, _ in CANDIDATES} for c in categories},
                "decisions_per_category": {c: rows[f"{c}/{strategy}"]["decision"] for c in categories},
                "pixel_auroc": {c: rows[f"{c}/{strategy}"]["masks"]["pixel_auroc"] for c in categories},
                "fit_seconds": {c: rows[f"{c}/{strategy}"]["fit_seconds"] for c in categories},
            }
    print()
    for key, entry in summary.items():
        d = entry["decisions"]
        print(f"{key}: good rejected {d['rejected']}/{d['test_good']} ({d['false_reject_rate']:.3%}), missed "
              f"{d['missed']}/{d['defects']} ({d['miss_rate']:.3%}); predicted {d['predicted_false_reject_rate']:.3%} "
              f"95% [{d['predicted_ci95'][0]:.3%}, {d['predicted_ci95'][1]:.3%}] (categories' mean), measured inside: "
              f"{d['measured_within_ci95']}; categories inside their own: {d['categories_measured_within_their_ci95']}")
        print(f"  {'mask method':34s} {'all defect images':>24s} {'rejected defect images':>26s} {'good w/ region':>15s}")
        print(f"  {'':34s} {'mean IoU':>10s} {'median area':>13s} {'mean IoU':>12s} {'median area':>13s}")
        for name, m in entry["masks"].items():
            print(f"  {name:34s} {m['mean_iou']:10.3f} {m['median_area_ratio']:12.2f}x {fmt(m['detected_mean_iou']):>12s} "
                  f"{fmt(m['detected_median_area_ratio'], 'x'):>13s} {m['good_with_region']:>7d}/{m['good']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
