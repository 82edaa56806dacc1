"""Image- and pixel-level metrics of a run's test split, and its per-image records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyimgano import metrics
from pyimgano.data.types import Sample


def evaluate(test: list[Sample], scores: np.ndarray, maps: list[np.ndarray], masks: list[np.ndarray], threshold: float) -> dict:
    truth = np.array([sample.truth for sample in test])
    result: dict = {"image": {}, "pixel": None}
    if truth.min() != truth.max():
        result["image"]["auroc"] = metrics.roc_auc(truth, scores)
        result["image"]["ap"] = metrics.average_precision(truth, scores)
    result["image"].update(metrics.precision_recall_f1(truth, scores, threshold))
    # Defect images without a mask file cannot be scored per pixel; leave them out rather than call them normal.
    usable = [i for i, sample in enumerate(test) if sample.truth == 0 or sample.mask_path is not None]
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


def per_image_records(
    category: str, test: list[Sample], scores: np.ndarray, maps: list[np.ndarray], threshold: float,
    saved_maps: list[dict | None],
) -> list[dict]:
    """per_image.jsonl: `label` is the prediction (as in edge records), `truth` the ground truth."""
    return [
        {
            "path": str(sample.path),
            "category": category,
            "truth": sample.truth,
            "defect_type": sample.defect_type,
            "mask_path": str(sample.mask_path) if sample.mask_path else None,
            "score": float(score),
            "threshold": threshold,
            "label": int(score > threshold),
            "map_max": float(anomaly_map.max()),
            **({"map": saved} if saved else {}),
        }
        for sample, score, anomaly_map, saved in zip(test, scores, maps, saved_maps)
    ]
