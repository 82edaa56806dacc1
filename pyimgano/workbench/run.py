"""The `industrial-adapt` loop for one run: per category fit, calibrate, evaluate, write artifacts."""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from pyimgano import metrics
from pyimgano.config import ConfigError, WorkbenchConfig, to_json
from pyimgano.data.mvtec import CategorySplit, DatasetError, Sample
from pyimgano.data.sources import list_dataset_categories, load_dataset_split
from pyimgano.models.registry import get_model
from pyimgano.runtime.images import ImageReadError, InputContract, read_mask, read_rgb
from pyimgano.runtime.postprocess import apply_postprocess
from pyimgano.workbench import artifacts, checkpoint
from pyimgano.workbench.calibration import calibrate
from pyimgano.workbench.scoring import ImageScoring


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device: 'cuda' was requested but torch sees no CUDA device; use 'cpu' or 'auto'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def input_contract(config: WorkbenchConfig) -> InputContract:
    height, width = config.dataset.resize
    return InputContract(height=height, width=width)


@dataclass
class Partition:
    fit: list[Sample]
    holdout: list[Sample]
    test: list[Sample]


def partition(split: CategorySplit, config: WorkbenchConfig) -> Partition:
    """Seeded shuffle of train/good into the memory-bank part and the calibration holdout."""
    rng = random.Random(config.seed)
    train = list(split.train)
    rng.shuffle(train)
    if config.dataset.limit_train is not None:
        train = train[: config.dataset.limit_train]
    if len(train) < 2:
        raise ConfigError(f"{split.category}: at least 2 train/good images are needed (one to fit, one to calibrate)")
    holdout_count = min(len(train) - 1, max(1, math.ceil(len(train) * config.calibration.holdout_fraction)))
    test = list(split.test)
    if config.dataset.limit_test is not None:
        test = sorted(rng.sample(test, min(config.dataset.limit_test, len(test))), key=lambda s: str(s.path))
    return Partition(fit=train[holdout_count:], holdout=train[:holdout_count], test=test)


def read_images(samples: list[Sample]) -> list[np.ndarray]:
    """Original-size RGB images. A dataset image that cannot be read is an error, named."""
    images = []
    for sample in samples:
        try:
            images.append(read_rgb(sample.path))
        except ImageReadError as exc:
            raise DatasetError(f"{sample.path}: {exc}") from exc
    return images


def image_loader(samples: list[Sample], input_mode: str) -> Callable[[slice], list[np.ndarray]]:
    """`numpy`: decode every image once, up front; `paths`: decode each chunk when it is scored."""
    if input_mode == "numpy":
        decoded = read_images(samples)
        return lambda part: decoded[part]
    return lambda part: read_images(samples[part])


def read_masks(samples: list[Sample], maps: list[np.ndarray]) -> list[np.ndarray]:
    """Ground truth at each map's own size; good images (and defect images without a mask) all-normal."""
    masks = []
    for sample, anomaly_map in zip(samples, maps):
        if sample.mask_path is None:
            masks.append(np.zeros(anomaly_map.shape, dtype=bool))
            continue
        try:
            masks.append(read_mask(sample.mask_path, *anomaly_map.shape))
        except ImageReadError as exc:
            raise DatasetError(str(exc)) from exc
    return masks


def evaluate(test: list[Sample], scores: np.ndarray, maps: list[np.ndarray], masks: list[np.ndarray], threshold: float) -> dict:
    labels = np.array([sample.label for sample in test])
    result: dict = {"image": {}, "pixel": None}
    if labels.min() != labels.max():
        result["image"]["auroc"] = metrics.roc_auc(labels, scores)
        result["image"]["ap"] = metrics.average_precision(labels, scores)
    result["image"].update(metrics.precision_recall_f1(labels, scores, threshold))
    # Defect images without a mask file cannot be scored per pixel; leave them out rather than call them normal.
    usable = [i for i, sample in enumerate(test) if sample.label == 0 or sample.mask_path is not None]
    if any(test[i].mask_path is not None for i in usable):
        pixel_masks = [masks[i] for i in usable]
        pixel_maps = [maps[i] for i in usable]
        result["pixel"] = {
            "auroc": metrics.pixel_roc_auc(pixel_masks, pixel_maps),
            "aupro_0.3": metrics.aupro(pixel_masks, pixel_maps, fpr_limit=0.3),
            "images": len(usable),
        }
    return result


def save_maps(folder: Path, samples: list[Sample], maps: list[np.ndarray], run_dir: Path) -> list[dict]:
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for index, (sample, anomaly_map) in enumerate(zip(samples, maps)):
        path = folder / f"{index:05d}_{sample.path.stem}.npy"
        np.save(path, anomaly_map.astype(np.float32))
        entries.append({"path": str(path.relative_to(run_dir)), "shape": list(anomaly_map.shape), "dtype": "float32"})
    return entries


def run_category(config: WorkbenchConfig, category: str, run_dir: Path, device: torch.device) -> dict:
    contract = input_contract(config)
    split = load_dataset_split(config.dataset, category, config.seed)
    parts = partition(split, config)
    entry = get_model(config.model.name)
    detector = entry.build(config.model, contract, config.seed, device)
    tiling = config.adaptation.tiling
    # Batches of 64 model inputs bound host memory; the detector splits them further by model.batch_size.
    scoring = ImageScoring(detector, contract, tiling, batch_size=64)

    started = time.perf_counter()
    training = scoring.fit(read_images(parts.fit), config.training)
    fit_seconds = time.perf_counter() - started

    postprocess = config.adaptation.postprocess
    mode = config.dataset.input_mode
    source = f"{len(parts.holdout)} held-out train/good images of {category}"
    calibration = calibrate(scoring, image_loader(parts.holdout, mode), len(parts.holdout), config, source)
    thresholds, stats = calibration.thresholds, calibration.normalization

    started = time.perf_counter()
    scores, maps = scoring.predict(image_loader(parts.test, mode), len(parts.test), "evaluation")
    if postprocess:
        maps = [apply_postprocess(m, postprocess, stats) for m in maps]
    eval_seconds = time.perf_counter() - started
    threshold = thresholds["image"]["value"]
    results = evaluate(parts.test, scores, maps, read_masks(parts.test, maps), threshold)

    category_dir = run_dir / "categories" / category
    checkpoint_path = run_dir / "checkpoints" / category / config.training.checkpoint_name
    saved_maps = (
        save_maps(run_dir / "artifacts" / "maps" / category, parts.test, maps, run_dir)
        if config.adaptation.save_maps and config.output.save_run else [None] * len(parts.test)
    )
    per_image = [
        {
            "path": str(sample.path),
            "category": category,
            "label": sample.label,
            "defect_type": sample.defect_type,
            "mask_path": str(sample.mask_path) if sample.mask_path else None,
            "score": float(score),
            "threshold": threshold,
            "predicted": int(score > threshold),
            "map_max": float(anomaly_map.max()),
            **({"map": saved} if saved else {}),
        }
        for sample, score, anomaly_map, saved in zip(parts.test, scores, maps, saved_maps)
    ]
    report = {
        **artifacts.report_header(),
        "category": category,
        "recipe": config.recipe,
        "model": {"name": config.model.name, **detector.describe()},
        "training": training,
        "counts": {"fit": len(parts.fit), "holdout": len(parts.holdout), "test": len(parts.test)},
        "thresholds": thresholds,
        "map_postprocess": {"config": postprocess.to_json(), "stats": stats.to_json() if stats else None}
        if postprocess else None,
        "tiling": tiling.to_json() if tiling else None,
        "metrics": results,
        "timing": {
            "fit_seconds": round(fit_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "eval_images_per_second": round(len(parts.test) / eval_seconds, 3),
        },
        "calibration_images": [str(sample.path) for sample in parts.holdout],
        "checkpoint": str(checkpoint_path.relative_to(run_dir)),
        "per_image_jsonl": "per_image.jsonl" if config.output.per_image_jsonl else None,
    }
    if config.output.save_run:
        checkpoint.save(checkpoint_path, detector)
        artifacts.write_json(category_dir / "report.json", report)
        if config.output.per_image_jsonl:
            artifacts.write_jsonl(category_dir / "per_image.jsonl", per_image)
    return report


def infer_config(config: WorkbenchConfig, reports: dict[str, dict]) -> dict:
    """artifacts/infer_config.json: what deployment-style inference needs from this run."""
    resolved = to_json(config)
    return {
        **artifacts.report_header(),
        "model": resolved["model"],
        "input": input_contract(config).to_json(),
        "adaptation": resolved["adaptation"],
        "defects": config.defects.to_json(),
        "categories": {
            category: {
                "threshold": report["thresholds"]["image"]["value"],
                "pixel_threshold": report["thresholds"]["pixel"]["value"],
                "map_postprocess": report["map_postprocess"],
                "checkpoint": report["checkpoint"],
            }
            for category, report in reports.items()
        },
    }


def run_workbench(config: WorkbenchConfig, export_infer_config: bool = False) -> dict:
    """Runs every requested category and writes the run directory. Returns the top-level report."""
    device = resolve_device(config.model.device)
    categories = (
        list_dataset_categories(config.dataset) if config.dataset.category == "all" else [config.dataset.category]
    )
    run_dir = Path(config.output.output_dir)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if config.output.save_run:
        artifacts.write_json(run_dir / "config.json", to_json(config))
        artifacts.write_json(run_dir / "environment.json", artifacts.environment(str(device)))
    reports = {category: run_category(config, category, run_dir, device) for category in categories}
    summary = {
        category: {
            "image_auroc": report["metrics"]["image"].get("auroc"),
            "pixel_auroc": (report["metrics"]["pixel"] or {}).get("auroc"),
            "pixel_aupro_0.3": (report["metrics"]["pixel"] or {}).get("aupro_0.3"),
            "image_f1": report["metrics"]["image"]["f1"],
            "fit_seconds": report["timing"]["fit_seconds"],
            "eval_images_per_second": report["timing"]["eval_images_per_second"],
            "report": f"categories/{category}/report.json",
        }
        for category, report in reports.items()
    }
    top = {
        **artifacts.report_header(),
        "recipe": config.recipe,
        "run_dir": str(run_dir),
        "device": str(device),
        "categories": summary,
    }
    if config.output.save_run:
        if export_infer_config:
            artifacts.write_json(run_dir / "artifacts" / "infer_config.json", infer_config(config, reports))
            top["infer_config"] = "artifacts/infer_config.json"
        artifacts.write_json(run_dir / "report.json", top)
    return top
