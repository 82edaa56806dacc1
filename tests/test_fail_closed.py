"""Fail closed (issue 12): a number that cannot decide is refused, never turned into a verdict.

Each case is the probe's reproduction on a real bundle: a non-finite threshold written into the manifest,
a non-finite pixel threshold on the command line, a graph whose scores are NaN.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyimgano.runtime.bundle import MANIFEST_NAME, sha256_file
from pyimgano.runtime.exit_codes import ExitCode

INFER = [sys.executable, "-m", "pyimgano.cli.infer"]


def run_infer(*args) -> subprocess.CompletedProcess:
    return subprocess.run(INFER + [str(arg) for arg in args], capture_output=True, text=True, timeout=600)


@pytest.fixture()
def bundle_copy(edge_fixture, tmp_path) -> Path:
    target = tmp_path / edge_fixture["bundle_dir"].name
    shutil.copytree(edge_fixture["bundle_dir"], target)
    return target


@pytest.mark.edge
@pytest.mark.parametrize("kind", ["image", "pixel"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_threshold_is_refused_at_open(bundle_copy, edge_fixture, tmp_path, kind, value):
    """The probe's case: a NaN image threshold gave 0 of 64 anomalous, rc 0 and a bare NaN in the JSONL."""
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["thresholds"][kind]["value"] = value
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))  # json writes NaN / Infinity
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", bundle_copy, "--input", edge_fixture["category_dir"] / "test", "--save-jsonl", out)
    assert result.returncode == ExitCode.BUNDLE_REFUSED, result.stderr
    assert f"thresholds.{kind}" in result.stderr and "finite" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not out.read_text()


@pytest.mark.edge
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_non_finite_pixel_threshold_flag_is_a_usage_error(edge_fixture, value):
    result = run_infer("--bundle", edge_fixture["bundle_dir"], "--input", edge_fixture["category_dir"] / "test",
                       "--defects", "--pixel-threshold", value)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert "pixel_threshold" in result.stderr and "Traceback" not in result.stderr


def test_a_graph_that_emits_nan_gives_error_records_not_good_parts(bundle_copy, edge_fixture, tmp_path):
    """The probe's case: a graph emitting NaN scores labelled every image good. The bank is overwritten with
    NaN and the manifest's checksums updated, as someone who can write the bundle could (signing is what
    stops that); every record is then an error with no score, and the exit code says some inputs failed."""
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    path = bundle_copy / "model.onnx"
    model = onnx.load(str(path))
    [bank] = [init for init in model.graph.initializer if init.name.startswith("bank.rows_")][:1]
    bank.CopyFrom(numpy_helper.from_array(np.full(numpy_helper.to_array(bank).shape, np.nan, np.float32), bank.name))
    onnx.save(model, str(path))
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["files"]["model.onnx"] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", bundle_copy, "--input", edge_fixture["category_dir"] / "test" / "good",
                       "--save-jsonl", out)
    assert result.returncode == ExitCode.INPUT_ERRORS, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]  # strict JSON: no bare NaN
    assert records and all("score" not in r and "label" not in r and "non-finite" in r["error"] for r in records)
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["errors"] == len(records) and summary["anomalous"] == 0
