"""Checkpoints as `.npz` arrays (loaded with allow_pickle=False) plus a JSON sidecar: nothing to unpickle.

The backbone's ImageNet weights are not copied in (runs stay small); the sidecar records their
sha256 and loading refuses a checkpoint whose backbone weights differ from the ones found now.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pyimgano.workbench.artifacts import write_json, write_npz

ARRAYS_FILE = "state.npz"
META_FILE = "state.json"


class CheckpointError(Exception):
    pass


def save(folder: Path, detector) -> dict[str, Path]:
    arrays, meta = detector.state()
    write_npz(folder / ARRAYS_FILE, **arrays)
    write_json(folder / META_FILE, meta)
    return {"arrays": folder / ARRAYS_FILE, "meta": folder / META_FILE}


def load_into(detector, folder: Path):
    """Loads a checkpoint folder into a freshly built detector of the same configuration."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        with np.load(folder / ARRAYS_FILE, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint in {folder}: {exc}") from exc
    try:
        return detector.load_state(arrays, meta)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {folder} does not fit this model: {exc}") from exc
