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
from pyimgano.runtime.engine import session_options
from pyimgano.runtime.images import read_rgb
from pyimgano.runtime.scoring import BatchScorer, MapSteps
from pyimgano.workbench.calibration import calibrate


class VariantError(Exception):
    """The variant does not apply to this run (e.g. a bank size the bank cannot give)."""


@dataclass(frozen=True)
class Variant:
    """How a bundle departs from the run's model: the graph precision, and optionally a smaller bank."""

    precision: str = "fp32"
    bank_rows: int | None = None

    def suffix(self) -> str:
        parts = [self.precision] if self.precision != "fp32" else []
        return "-".join(parts + ([f"bank{self.bank_rows}"] if self.bank_rows else []))


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


def recalibrate(scorer: BatchScorer, config: WorkbenchConfig, report: dict, how: str) -> dict:
    """The report with thresholds and normalisation statistics calibrated again on the run's held-out
    images, scored by `scorer` (a variant's scores differ from the run's, so its thresholds must too)."""
    holdout = [Path(path) for path in report["calibration_images"]]
    steps = MapSteps(input_contract(config), config.adaptation.tiling, config.adaptation.postprocess)
    source = f"{len(holdout)} held-out train/good images of {report['category']}, {how}"
    calibration = calibrate(scorer, steps, lambda part: [read_rgb(path) for path in holdout[part]], len(holdout),
                            config, source)
    post = report["map_postprocess"]
    stats = calibration.steps.normalization.to_json() if calibration.steps.normalization else None
    return {**report, "thresholds": calibration.thresholds, "map_postprocess": {**post, "stats": stats} if post else None}


def reduce_bank(detector, config: WorkbenchConfig, report: dict, rows: int) -> dict:
    """Shrinks the detector's bank to `rows` rows; returns the report with the new bank size. A smaller
    bank raises every distance, so the bundle must be recalibrated (`recalibrate`) before it ships."""
    if not detector.capabilities.reducible_bank:
        raise VariantError(f"--bank-rows applies to memory-bank models; {config.model.name} has none")
    fitted_rows = int(report["model"]["memory_bank_rows"])
    try:
        detector.reduce_bank(rows)
    except ValueError as exc:
        raise VariantError(f"--bank-rows {rows}: {exc}") from exc
    model = {**report["model"], "memory_bank_rows": rows, "memory_bank_fitted_rows": fitted_rows,
             "memory_bank_selection": "greedy k-center coreset of the fitted bank, at export"}
    return {**report, "model": model}
