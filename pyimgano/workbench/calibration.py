"""Thresholds calibrated on held-out normal images, each recorded with its provenance.

Images whose patches are in the memory bank score near zero and would set a threshold far too low,
so both thresholds come from train/good images kept out of the bank.
"""

from __future__ import annotations

import numpy as np


def score_summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64).ravel()
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "std": float(values.std()),
        "p50": float(np.quantile(values, 0.5)),
        "p99": float(np.quantile(values, 0.99)),
    }


def quantile_threshold(values: np.ndarray, quantile: float, method: str, source: str) -> dict:
    """The threshold record the run report and the bundle manifest carry (keys as runtime.bundle.THRESHOLD_KEYS)."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError(f"cannot calibrate {method}: no values from {source}")
    return {
        "value": float(np.quantile(values, quantile)),
        "method": method,
        "quantile": float(quantile),
        "count": int(values.size),
        "score_summary": score_summary(values),
        "source": source,
    }
