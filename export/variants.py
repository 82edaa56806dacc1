"""What a bundle variant changes before export: a smaller bank (a coreset of the fitted one), and the
recalibration that a variant whose scores move needs (on the run's held-out images, scored by the
variant itself: the reduced-bank torch model, or the exported int8 graph)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pyimgano.config import WorkbenchConfig, input_contract
from pyimgano.export.onnx_graph import INPUT_NAME, MAP_NAME, SCORE_NAME
from pyimgano.models.registry import get_model
from pyimgano.runtime.engine import session_options
from pyimgano.runtime.images import read_rgb
from pyimgano.runtime.scoring import BatchScorer, MapSteps
from pyimgano.workbench.calibration import calibrate, image_threshold, pixel_threshold, score_normal


class VariantError(Exception):
    """The variant does not apply to this run (e.g. a bank size the bank cannot give)."""


@dataclass(frozen=True)
class Variant:
    """How a bundle departs from the run's model: the graph precision, and optionally a smaller bank."""

    precision: str = "fp32"
    bank_rows: int | None = None
    # Another operating point than the run's: the image threshold re-derived from its stored normal scores.
    false_reject_rate: float | None = None

    def suffix(self) -> str:
        parts = [self.precision] if self.precision != "fp32" else []
        parts += [f"bank{self.bank_rows}"] if self.bank_rows else []
        return "-".join(parts + ([f"frr{self.false_reject_rate:g}"] if self.false_reject_rate else []))


class OnnxScorer:
    """An exported graph as a batch scorer, so that an int8 graph's thresholds are calibrated on its own
    scores (before the bundle around it exists)."""

    batch_size = 8

    def __init__(self, onnx_path: Path):
        self.session = ort.InferenceSession(str(onnx_path), sess_options=session_options(), providers=["CPUExecutionProvider"])

    def score_batch(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = [self.session.run([SCORE_NAME, MAP_NAME], {INPUT_NAME: images[start : start + self.batch_size]})
                 for start in range(0, len(images), self.batch_size)]
        return tuple(np.concatenate(outputs).astype(np.float32) for outputs in zip(*parts))


def check_variant(variant: Variant, config: WorkbenchConfig) -> None:
    """Refuses, before anything is built, a variant this run cannot give: a precision or a bank reduction the
    model does not have, or a variant whose scores move (int8, a reduced bank), which is recalibrated on
    held-out normal images, from a cross-fitted run, which has none (every train image is in the model)."""
    capabilities = get_model(config.model.name).capabilities
    if variant.precision not in capabilities.precisions:
        raise VariantError(f"precision {variant.precision} is not one {config.model.name} exports "
                           f"(it exports {list(capabilities.precisions)})")
    if variant.bank_rows and not capabilities.reducible_bank:
        raise VariantError(f"--bank-rows applies to memory-bank models; {config.model.name} has none")
    moves = variant.precision == "int8" or variant.bank_rows
    if moves and config.calibration.strategy != "holdout":
        raise VariantError(f"{variant.suffix()}: this variant's thresholds are recalibrated on held-out normal "
                           f"images, and this run cross-fitted (calibration.strategy {config.calibration.strategy}, "
                           "every train image is in the model); train with calibration.strategy \"holdout\" to "
                           "export it")


def recalibrate(scorer: BatchScorer, config: WorkbenchConfig, report: dict, how: str) -> dict:
    """The report with thresholds and normalisation statistics calibrated again on the run's held-out
    images, scored by `scorer` (a variant's scores differ from the run's, so its thresholds must too)."""
    holdout = [Path(path) for path in report["calibration_images"]]
    steps = MapSteps(input_contract(config), config.adaptation.tiling, config.adaptation.postprocess)
    source = f"{len(holdout)} held-out train/good images of {report['category']}, {how}"
    scores, maps = score_normal(scorer, steps, lambda part: [read_rgb(path) for path in holdout[part]], len(holdout))
    calibration = calibrate(scores, maps, steps, config, source)
    post = report["map_postprocess"]
    stats = calibration.steps.normalization.to_json() if calibration.steps.normalization else None
    return {**report, "thresholds": calibration.thresholds, "map_postprocess": {**post, "stats": stats} if post else None,
            "calibration": {**report["calibration"], **calibration.stored()}}


def at_operating_point(report: dict, rate: float) -> dict:
    """The report with its thresholds re-derived at another false-reject rate from the normal scores and
    map maxima the run stored (no refit: the model and its maps are unchanged)."""
    scores = np.asarray(report["calibration"]["normal_scores"], dtype=np.float64)
    source = f"{report['thresholds']['image']['source']}; re-derived at export for rate {rate:g}"
    thresholds = {**report["thresholds"], "image": image_threshold(scores, rate, source)}
    if report["thresholds"]["pixel"]["method"].startswith("normal_map_max"):
        # The pixel threshold is set at the same operating point: it moves with it.
        map_max = np.asarray(report["calibration"]["normal_map_max"], dtype=np.float64)
        thresholds["pixel"] = pixel_threshold(map_max, rate, source)
    return {**report, "thresholds": thresholds,
            "calibration": {**report["calibration"], "target_false_reject_rate": rate}}


def reduce_bank(detector, report: dict, rows: int) -> dict:
    """Shrinks the detector's bank to `rows` rows; returns the report with the new bank size. A smaller
    bank raises every distance, so the bundle must be recalibrated (`recalibrate`) before it ships."""
    fitted_rows = int(report["model"]["memory_bank_rows"])
    try:
        detector.reduce_bank(rows)
    except ValueError as exc:
        raise VariantError(f"--bank-rows {rows}: {exc}") from exc
    model = {**report["model"], "memory_bank_rows": rows, "memory_bank_fitted_rows": fitted_rows,
             "memory_bank_selection": "greedy k-center coreset of the fitted bank, at export"}
    return {**report, "model": model}
