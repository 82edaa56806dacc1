"""The `industrial-adapt` loop for one run: per category fit, calibrate, evaluate, write artifacts."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from pyimgano.config import WorkbenchConfig, input_contract, to_json
from pyimgano.data.sources import list_dataset_categories, load_dataset_split
from pyimgano.models.registry import get_model
from pyimgano.runtime.scoring import MapSteps
from pyimgano.workbench import artifacts, checkpoint, html_report
from pyimgano.workbench.calibration import calibrate, score_normal
from pyimgano.workbench.cross_fit import cross_fit
from pyimgano.workbench.devices import resolve_device
from pyimgano.workbench.evaluation import decision_section, evaluate, per_image_records, save_maps
from pyimgano.workbench.image_scoring import fit_detector, predict_chunked, training_report
from pyimgano.workbench.report_gallery import picked_indices
from pyimgano.workbench.report_plots import require_matplotlib
from pyimgano.workbench.run_directory import TOP_REPORT, seal, staged_run
from pyimgano.workbench.run_loader import infer_config
from pyimgano.workbench.samples import image_loader, partition, read_images, read_masks

log = logging.getLogger(__name__)


def run_category(config: WorkbenchConfig, category: str, run_dir: Path, device: torch.device) -> dict:
    split = load_dataset_split(config.dataset, category, config.seed)
    parts = partition(split, config)
    steps = MapSteps(input_contract(config), config.adaptation.tiling, config.adaptation.postprocess)
    detector = get_model(config.model.name).build(config.model, steps.contract, config.seed, device)
    mode = config.dataset.input_mode

    if detector.capabilities.imported:
        # Its bank came with the checkpoint: scores of the images it was fitted on sit below those of unseen good
        # parts, and a threshold read from them rejects good parts (docs/MODELS.md, anomalib checkpoints).
        log.warning("%s: %s is imported, fitted elsewhere; its thresholds are read from the %d train/good images, "
                    "which must be good images the checkpoint was not fitted on", category, config.model.name,
                    len(parts.holdout), extra={"category": category, "calibration_images": len(parts.holdout)})
    else:
        log.info("%s: fitting %s on %d normal images (%s calibration), %d test images", category, config.model.name,
                 len(parts.fit), config.calibration.strategy, len(parts.test),
                 extra={"category": category, "fit_images": len(parts.fit), "test_images": len(parts.test)})
    # Fitting and scoring the normal images thresholds are read from: the cost of a calibrated model.
    started = time.perf_counter()
    cross_fitted = config.calibration.strategy == "cross_fit"
    if cross_fitted:
        folds = config.calibration.folds
        oof = cross_fit(detector, read_images(parts.fit), steps, folds, config.seed, config.training)
        normal_scores, normal_maps = oof.scores, oof.maps
        source = f"out-of-fold scores of all {len(parts.fit)} train/good images of {category} ({folds} folds)"
    else:
        fit_detector(detector, read_images(parts.fit), steps, config.training)
        normal_scores, normal_maps = score_normal(detector, steps, image_loader(parts.holdout, mode), len(parts.holdout))
        source = f"{len(parts.holdout)} held-out train/good images of {category}"
    fit_seconds = time.perf_counter() - started
    calibration = calibrate(normal_scores, normal_maps, steps, config, source)
    del normal_maps
    thresholds, steps = calibration.thresholds, calibration.steps
    log.info("%s: fitted and calibrated in %.1f s; image threshold %.6g (%s)", category, fit_seconds,
             thresholds["image"]["value"], thresholds["image"]["method"],
             extra={"category": category, "fit_seconds": round(fit_seconds, 3), "image_threshold": thresholds["image"]["value"]})

    started = time.perf_counter()
    scores, maps = predict_chunked(detector, steps, image_loader(parts.test, mode), len(parts.test), "evaluation")
    eval_seconds = time.perf_counter() - started
    threshold = thresholds["image"]["value"]
    results = evaluate(parts.test, scores, maps, read_masks(parts.test, maps), threshold)
    log.info("%s: evaluated %d test images in %.1f s, image AUROC %s", category, len(parts.test), eval_seconds,
             results["image"].get("auroc"), extra={"category": category, "image_auroc": results["image"].get("auroc")})

    category_dir = run_dir / "categories" / category
    checkpoint_path = run_dir / "checkpoints" / category / config.training.checkpoint_name
    saved_maps = (
        save_maps(run_dir / "artifacts" / "maps" / category, parts.test, maps, run_dir)
        if config.adaptation.save_maps and config.output.save_run else [None] * len(parts.test)
    )
    per_image = per_image_records(category, parts.test, scores, maps, threshold, saved_maps)
    if config.output.save_run and config.output.html_report and not config.adaptation.save_maps:
        # The maps of the images report.html's galleries show, and only those (workbench/report_gallery.py).
        gallery = save_maps(run_dir / "artifacts" / "maps" / category / "gallery", parts.test, maps, run_dir,
                            picked_indices(per_image))
        for record, entry in zip(per_image, gallery):
            if entry:
                record["map"] = entry
    postprocess, stats, tiling = steps.postprocess, steps.normalization, steps.tiling
    report = {
        **artifacts.report_header(),
        "category": category,
        "recipe": config.recipe,
        "model": {"name": config.model.name, **detector.describe()},
        "training": training_report(detector),
        "counts": {"fit": len(parts.fit), "holdout": len(parts.holdout), "test": len(parts.test)},
        "thresholds": thresholds,
        "map_postprocess": {"config": postprocess.to_json(), "stats": stats.to_json() if stats else None}
        if postprocess else None,
        "tiling": tiling.to_json() if tiling else None,
        "metrics": results,
        "decision": decision_section(parts.test, scores, thresholds["image"], calibration.normal_scores),
        "calibration": {
            "strategy": config.calibration.strategy,
            "folds": config.calibration.folds if cross_fitted else None,
            "target_false_reject_rate": thresholds["image"]["target_false_reject_rate"],
            **calibration.stored(),
        },
        "timing": {
            "fit_seconds": round(fit_seconds, 3),
            "eval_seconds": round(eval_seconds, 3),
            "eval_images_per_second": round(len(parts.test) / eval_seconds, 3),
        },
        # The normal images the thresholds were read from (cross-fitting: every train image).
        "calibration_images": [str(sample.path) for sample in (parts.fit if cross_fitted else parts.holdout)],
        "checkpoint": str(checkpoint_path.relative_to(run_dir)),
        "per_image_jsonl": "per_image.jsonl" if config.output.per_image_jsonl else None,
    }
    if config.output.save_run:
        checkpoint.save(checkpoint_path, detector)
        artifacts.write_json(category_dir / "report.json", report)
        if config.output.per_image_jsonl:
            artifacts.write_jsonl(category_dir / "per_image.jsonl", per_image)
    return report


def run_workbench(config: WorkbenchConfig, export_infer_config: bool = False) -> dict:
    """Runs every requested category and writes the run directory. Returns the top-level report.

    The run is written into a staging folder and moved into place only once every category finished, so a
    failed or interrupted re-train leaves the previous run whole; a second writer of the same directory is
    refused."""
    get_model(config.model.name).validate(config)  # before anything is written
    if config.output.save_run and config.output.html_report:
        require_matplotlib()
    device = resolve_device(config.model.device)
    categories = (
        list_dataset_categories(config.dataset) if config.dataset.category == "all" else [config.dataset.category]
    )
    run_dir = Path(config.output.output_dir)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    if not config.output.save_run:
        return _top_report(config, run_dir, device, _run_categories(config, categories, run_dir, device))
    with staged_run(run_dir) as staging:
        artifacts.write_json(staging / "config.json", to_json(config))
        artifacts.write_json(staging / "environment.json", artifacts.environment(str(device)))
        reports = _run_categories(config, categories, staging, device)
        top = _top_report(config, run_dir, device, reports)
        if export_infer_config:
            artifacts.write_json(staging / "artifacts" / "infer_config.json", infer_config(config, reports))
            top["infer_config"] = "artifacts/infer_config.json"
        if config.output.html_report:
            html_report.write_report(html_report.staged_view(staging, top, config, reports),
                                     staging / html_report.REPORT_NAME)
            top["report_html"] = html_report.REPORT_NAME
        # What belongs to this run, for the exporter to check before it trusts a checkpoint beside a report.
        top["files"] = seal(staging)
        artifacts.write_json(staging / TOP_REPORT, top)
    log.info("run written to %s", run_dir, extra={"run_dir": str(run_dir)})
    return top


def _run_categories(config: WorkbenchConfig, categories: list[str], run_dir: Path, device) -> dict[str, dict]:
    return {category: run_category(config, category, run_dir, device) for category in categories}


def _top_report(config: WorkbenchConfig, run_dir: Path, device, reports: dict[str, dict]) -> dict:
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
    return {
        **artifacts.report_header(),
        "recipe": config.recipe,
        "run_dir": str(run_dir),
        "device": str(device),
        "categories": summary,
    }
