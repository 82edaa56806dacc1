"""Image- and pixel-level metrics of a run's test split, and its per-image records."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pyimgano import metrics
from pyimgano.data.types import Sample
from pyimgano.workbench.operating_point import rate_table


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


def save_maps(folder: Path, samples: list[Sample], maps: list[np.ndarray], run_dir: Path,
              indices: list[int] | None = None) -> list[dict | None]:
    """Writes each test map (or those at `indices`) as float32 .npy; per sample, its per-image `map` entry
    (None where not written)."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = set(range(len(samples)) if indices is None else indices)
    entries: list[dict | None] = []
    for index, (sample, anomaly_map) in enumerate(zip(samples, maps)):
        if index not in chosen:
            entries.append(None)
            continue
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


def predicted_rate(image_threshold: dict) -> float:
    """The share of good parts the threshold is expected to reject: the target where it was extrapolated (the
    normal scores all lie below it, so their own share says nothing finer than its interval), else the
    share of the normal scores above it. Its 95% interval is the exact (Clopper-Pearson) one of that share,
    which is also the distribution-free interval of a threshold placed among n normal scores."""
    if image_threshold["method"] == "normal_score_quantile":
        return image_threshold["false_reject_rate"]
    return image_threshold["target_false_reject_rate"]


def decision_section(test: list[Sample], scores: np.ndarray, image_threshold: dict, normal_scores: np.ndarray) -> dict:
    """What the shipped threshold decides on the test split, against what calibration predicted: the rate of
    good parts rejected and of defects missed, the out-of-fold rate with its 95% interval, and a table of
    threshold against out-of-fold false-reject rate."""
    truth = np.array([sample.truth for sample in test])
    predicted = np.asarray(scores) > image_threshold["value"]
    good, defects = truth == 0, truth == 1
    rejected, missed = int(np.count_nonzero(predicted & good)), int(np.count_nonzero(~predicted & defects))
    low, high = image_threshold["false_reject_rate_ci95"]
    good_rate = rejected / int(good.sum()) if good.any() else None
    return {
        "threshold": image_threshold["value"],
        "method": image_threshold["method"],
        "target_false_reject_rate": image_threshold["target_false_reject_rate"],
        "predicted_false_reject_rate": predicted_rate(image_threshold),
        "predicted_false_reject_rate_ci95": [low, high],
        "test_good": int(good.sum()),
        "test_good_rejected": rejected,
        "test_false_reject_rate": good_rate,
        "test_false_reject_rate_within_ci95": None if good_rate is None else bool(low <= good_rate <= high),
        "test_defects": int(defects.sum()),
        "test_defects_missed": missed,
        "test_miss_rate": missed / int(defects.sum()) if defects.any() else None,
        "warning": image_threshold.get("warning"),
        "threshold_table": rate_table(normal_scores),
    }
