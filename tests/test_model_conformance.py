"""One conformance test over every registered model, on real images (../shared/data/defects/piped_flr01):
the contract models/base.py declares, measured, not assumed."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from conftest import require_data

pytest.importorskip("torch")

import torch  # noqa: E402

from pyimgano.config import ModelConfig  # noqa: E402
from pyimgano.data.mvtec import load_split  # noqa: E402
from pyimgano.data.types import load_images  # noqa: E402
from pyimgano.export.onnx_graph import export_graph, measure_parity  # noqa: E402
from pyimgano.metrics import roc_auc  # noqa: E402
from pyimgano.models import registry  # noqa: E402
from pyimgano.models.base import GraphDetector, NotFittedError  # noqa: E402
from pyimgano.runtime.images import InputContract  # noqa: E402
from pyimgano.workbench import checkpoint  # noqa: E402

CATEGORY = "piped_flr01"
CONTRACT = InputContract(height=64, width=64)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def images():
    root = require_data(CATEGORY).parent
    split = load_split(root, CATEGORY)
    test = [s for s in split.test if s.truth == 0][:6] + [s for s in split.test if s.truth == 1][:6]
    return load_images(split.train[:24], CONTRACT), load_images(test, CONTRACT), np.array([s.truth for s in test])


def fitted(entry, train: np.ndarray) -> GraphDetector:
    detector = entry.build(ModelConfig(name=entry.name, preset="industrial-fast", batch_size=8), CONTRACT, 0, CPU)
    kwargs = {"epochs": 3, "lr": 1e-3} if entry.trains else {}
    assert detector.fit(train, **kwargs) is detector  # fit returns self
    return detector


def conformance_cases() -> list:
    """Every registered model, but imported ones (built fitted from another library's checkpoint: they have no
    `fit`; tests/test_anomalib.py checks them), skipped where a package it requires is not installed."""
    cases = []
    for entry in registry.list_models():
        if entry.capabilities.imported:
            continue
        missing = [package for package in entry.requires if importlib.util.find_spec(package) is None]
        marks = [pytest.mark.skip(reason=f"needs {', '.join(missing)}")] if missing else []
        cases.append(pytest.param(entry.name, marks=marks))
    return cases


@pytest.mark.parametrize("name", conformance_cases())
def test_every_registered_model_keeps_the_contract(name, images, tmp_path):
    entry = registry.get_model(name)
    train, test, truth = images
    fresh = entry.build(ModelConfig(name=name, preset="industrial-fast", batch_size=8), CONTRACT, 0, CPU)
    assert isinstance(fresh, GraphDetector) and not fresh.fitted
    with pytest.raises(NotFittedError, match="not fitted"):
        fresh.graph()
    with pytest.raises(NotFittedError):
        fresh.state()

    detector = fitted(entry, train)
    scores, maps = detector.score_batch(test)
    assert scores.shape == (len(test),) and maps.shape == (len(test), 64, 64)
    # Higher = more anomalous, on real defects.
    auroc = roc_auc(truth, scores)
    print(f"{name}: AUROC {auroc:.3f} on {len(test)} real images")
    assert auroc > 0.75

    # State round trip: a new detector loaded from the checkpoint scores identically.
    path = checkpoint.save(tmp_path / "model.npz", detector)
    reloaded = checkpoint.load_into(entry.build(ModelConfig(name=name, preset="industrial-fast", batch_size=8),
                                                CONTRACT, 0, CPU), path)
    np.testing.assert_array_equal(reloaded.score_batch(test)[0], scores)

    # Graph vs ONNX Runtime: the exported graph is the scoring path.
    onnx_path = tmp_path / "model.onnx"
    export_graph(detector.graph(), 64, 64, onnx_path)
    parity = measure_parity(detector.graph(), onnx_path, test, float(np.median(scores)))
    assert parity["max_rel_score_diff"] <= 1e-3 and parity["labels_identical"]
