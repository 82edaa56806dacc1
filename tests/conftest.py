"""Shared fixtures. Nothing here imports torch at module level: the edge environment has none."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = (PROJECT_ROOT / ".." / "shared" / "data" / "defects").resolve()
HAS_TORCH = importlib.util.find_spec("torch") is not None


def require_data(category: str) -> Path:
    """The real dataset's category folder, or a clean skip where ../shared/data is absent."""
    path = DATA_ROOT / category
    if not (path / "train" / "good").is_dir():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture(scope="session")
def edge_fixture(tmp_path_factory) -> dict:
    """A bundle trained on the synthetic dataset and the dataset itself.

    In the edge environment (no torch) `make test-edge` builds it with the workbench first and passes its
    location in PYIMGANO_EDGE_BUNDLE / PYIMGANO_EDGE_DATA; with torch present the fixture builds it here.
    """
    bundles = os.environ.get("PYIMGANO_EDGE_BUNDLE")
    data = os.environ.get("PYIMGANO_EDGE_DATA")
    if bundles and data:
        bundles, data = Path(bundles), Path(data)
    elif HAS_TORCH:
        from pyimgano.demo import main as demo

        out = tmp_path_factory.mktemp("edge-fixture")
        assert demo(["--out", str(out), "--quiet", "--device", "cpu"]) == 0
        bundles, data = out / "bundles", out / "data"
    else:
        pytest.skip("no edge bundle: set PYIMGANO_EDGE_BUNDLE/PYIMGANO_EDGE_DATA (make test-edge does)")
    [bundle_dir] = [p for p in bundles.iterdir() if p.is_dir() and not p.name.startswith(".")]
    [category_dir] = [p for p in data.iterdir() if p.is_dir()]
    return {
        "bundle_dir": bundle_dir,
        "archive": bundle_dir.with_name(bundle_dir.name + ".zip"),
        "category_dir": category_dir,
    }
