"""Fail closed (issue 12): a number that cannot decide is refused, never turned into a verdict.

Each case is the probe's reproduction on a real bundle: a non-finite threshold written into the manifest,
a non-finite pixel threshold on the command line, a graph whose scores are NaN.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import start_long_infer
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
    # The Python API makes the same refusal: no verdict for a non-finite output.
    from pyimgano.runtime import Inspector
    from pyimgano.runtime.decision import NoDecision

    good = sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[0]
    with pytest.raises(NoDecision, match="non-finite"):
        Inspector(bundle_copy, device="cpu").inspect(good)


@pytest.mark.parametrize("section, key, value", [("dataset", "category", "../../../x"),
                                                 ("training", "checkpoint_name", "../../evil.npz"),
                                                 ("training", "checkpoint_name", "/tmp/evil.npz"),
                                                 ("dataset", "category", "..")])
def test_names_that_would_write_outside_the_run_directory_are_refused(tmp_path, section, key, value):
    """The probe's case: `category: "../../../x"` and `checkpoint_name: "../../evil.npz"` wrote outside the run."""
    from pyimgano.config import ConfigError, parse_config

    data = {"dataset": {"root": str(tmp_path), "category": "good_name"}, section: {key: value}}
    if section == "dataset":
        data["dataset"] = {"root": str(tmp_path), "category": value}
    with pytest.raises(ConfigError, match=f"{section}.{key}: .* must be a plain name"):
        parse_config(data)


@pytest.mark.edge
def test_an_image_beyond_the_pixel_limit_is_an_error_record_and_the_run_goes_on(edge_fixture, tmp_path):
    """The probe's case: one 40000x40000 PNG (1.5 MB on disk) raised an uncaught cv2.error that aborted the run
    with 0 records for its whole batch. Its header is refused before decoding; the others are scored."""
    import struct
    import zlib

    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[:3]:
        shutil.copy(path, folder / path.name)
    header = struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(header)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    (folder / "a_huge.png").write_bytes(png + b"\x00" * 1024)
    goods = sorted(folder.glob("0*.png"))
    big = folder / "b_big.png"  # a good image with 1 MB after its end: larger than the limit set below
    big.write_bytes(goods[0].read_bytes() + b"\x00" * 2**20)
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", edge_fixture["bundle_dir"], "--input", folder, "--save-jsonl", out,
                       "--batch-size", "8", "--max-image-bytes", str(max(p.stat().st_size for p in goods)))
    assert result.returncode == ExitCode.INPUT_ERRORS, result.stderr
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert "40000x40000 pixels exceeds the limit" in records["a_huge.png"]["error"]
    assert "bytes exceeds the limit" in records["b_big.png"]["error"] and "score" not in records["b_big.png"]
    # The others, in the same batch, are scored.
    assert len(goods) == 3 and all("score" in records[p.name] for p in goods)


@pytest.mark.edge
def test_a_zip_bomb_is_refused_before_extraction(edge_fixture, tmp_path):
    """The probe's case: a 6 MB archive holding a 4 GB member was extracted into the temp dir before any check."""
    import zipfile

    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as handle:
        handle.write(edge_fixture["bundle_dir"] / MANIFEST_NAME, f"x/{MANIFEST_NAME}")
        with handle.open("x/model.onnx", "w") as member:
            for _ in range(200):
                member.write(b"\0" * 2**20)
    assert bomb.stat().st_size < 2**20
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run([*INFER, "--bundle", str(bomb), "--input", str(edge_fixture["category_dir"] / "test")],
                            capture_output=True, text=True, timeout=600, env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == ExitCode.BUNDLE_REFUSED, result.stderr
    assert "zip bomb" in result.stderr and "Traceback" not in result.stderr
    assert list(scratch.glob("pyimgano-bundle-*")) == []


@pytest.mark.edge
def test_extraction_folders_are_removed_after_sigterm_and_after_a_killed_run(edge_fixture, tmp_path):
    """The probe's case: SIGKILL or SIGTERM of a .zip run left pyimgano-bundle-* folders behind."""
    import signal

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    orphan = scratch / "pyimgano-bundle-999999999-left"  # a killed run's: no such process
    (orphan / "x").mkdir(parents=True)
    process, _ = start_long_infer(edge_fixture["archive"], edge_fixture, tmp_path, images=300,
                                  env={**os.environ, "TMPDIR": str(scratch)})
    assert not orphan.exists()  # removed when the archive was opened
    assert [p.name.split("-")[2] for p in scratch.glob("pyimgano-bundle-*")] == [str(process.pid)]
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == ExitCode.TERMINATED, stderr
    assert list(scratch.glob("pyimgano-bundle-*")) == []


@pytest.mark.edge
def test_a_tiling_that_would_cut_an_image_into_too_many_tiles_is_an_error_record(bundle_copy, edge_fixture, tmp_path):
    """The probe's case: a manifest tiling of tile 32 / stride 1 drove one 512x512 image to 3.6 GB and OOM."""
    from pyimgano.runtime.tiling import TilingConfig

    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    manifest["tiling"] = TilingConfig(tile_size=32, stride=1).to_json()
    (bundle_copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    [image] = sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[:1]
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", bundle_copy, "--input", image, "--save-jsonl", out)
    assert result.returncode == ExitCode.INPUT_ERRORS, result.stderr
    [record] = map(json.loads, out.read_text().splitlines())
    assert "tiles, more than 4,096" in record["error"] and "score" not in record
