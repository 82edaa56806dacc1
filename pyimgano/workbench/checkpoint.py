"""Checkpoints as `.npz` arrays (loaded with allow_pickle=False) plus a JSON sidecar: nothing to unpickle.

The backbone's ImageNet weights are not copied in (runs stay small); the sidecar records their
sha256 and loading refuses a checkpoint whose backbone weights differ from the ones found now.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pyimgano.workbench.artifacts import write_json, write_npz

class CheckpointError(Exception):
    pass


def save(path: Path, detector) -> Path:
    """Writes `path` (.npz arrays) and `path` with a .json suffix (metadata); returns `path`."""
    arrays, meta = detector.state()
    write_npz(path, **arrays)
    write_json(path.with_suffix(".json"), meta)
    return path


def load_into(detector, path: Path):
    """Loads a checkpoint written by `save` into a freshly built detector of the same configuration."""
    try:
        meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    try:
        return detector.load_state(arrays, meta)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model: {exc}") from exc
