"""The edge runtime on a real bundle, in whatever environment runs it (also the torch-free one).

Marked `edge`: `make test-edge` runs these again where only the base dependencies are installed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from pyimgano.runtime.bundle import MANIFEST_NAME, BundleError, open_bundle, sha256_file
from pyimgano.runtime.exit_codes import ExitCode

pytestmark = pytest.mark.edge

INFER = [sys.executable, "-m", "pyimgano.cli.infer"]


def run_infer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(INFER + list(args), capture_output=True, text=True, timeout=600)


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture()
def bundle_copy(edge_fixture, tmp_path) -> Path:
    target = tmp_path / edge_fixture["bundle_dir"].name
    shutil.copytree(edge_fixture["bundle_dir"], target)
    return target


def test_torch_is_absent_in_the_edge_environment():
    if os.environ.get("PYIMGANO_EXPECT_NO_TORCH") != "1":
        pytest.skip("only meaningful in the base-only environment (make test-edge)")
    with pytest.raises(ImportError):
        __import__("torch")


def test_infer_never_imports_torch(edge_fixture, tmp_path):
    """Runs the whole CLI in a fresh interpreter and inspects sys.modules at exit."""
    image = next((edge_fixture["category_dir"] / "test").rglob("*.png"))
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['pyimgano-infer', '--bundle', {str(edge_fixture['archive'])!r}, '--input', {str(image)!r},"
        f" '--save-jsonl', {str(tmp_path / 'o.jsonl')!r}, '--defects']\n"
        "try:\n    runpy.run_module('pyimgano.cli.infer', run_name='__main__')\n"
        "except SystemExit as exc:\n    code = exc.code\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.stdout.split() == ["NO-TORCH", "0"], result.stderr


def test_scores_match_the_workbench_and_labels_separate(edge_fixture, tmp_path):
    """Every test image through the archive: same scores as the torch run recorded, and AUROC 1 on synthetic."""
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", str(edge_fixture["archive"]), "--input", str(edge_fixture["category_dir"] / "test"),
                       "--save-jsonl", str(out), "--batch-size", "4")
    assert result.returncode == ExitCode.OK, result.stderr
    records = {Path(r["input"]).resolve(): r for r in read_records(out)}
    manifest = json.loads((edge_fixture["bundle_dir"] / MANIFEST_NAME).read_text())
    assert manifest["parity"]["max_rel_score_diff"] <= 1e-3
    good = [r["score"] for p, r in records.items() if p.parent.name == "good"]
    bad = [r["score"] for p, r in records.items() if p.parent.name != "good"]
    assert len(good) > 0 and len(bad) > 0
    # The synthetic defects are unmistakable: every defect image outscores every good one.
    assert min(bad) > max(good)
    for record in records.values():
        assert record["label"] == int(record["score"] > record["threshold"])
        assert record["threshold"] == manifest["thresholds"]["image"]["value"]


def test_batch_size_does_not_change_scores(edge_fixture, tmp_path):
    folder = edge_fixture["category_dir"] / "test" / "good"
    scores = {}
    for batch in ("1", "5"):
        out = tmp_path / f"b{batch}.jsonl"
        assert run_infer("--bundle", str(edge_fixture["bundle_dir"]), "--input", str(folder),
                         "--save-jsonl", str(out), "--batch-size", batch).returncode == 0
        scores[batch] = np.array([r["score"] for r in read_records(out)])
    np.testing.assert_allclose(scores["1"], scores["5"], rtol=1e-5)


def test_unreadable_inputs_get_error_records_and_the_rest_are_scored(edge_fixture, tmp_path):
    images = sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[:3]
    folder = tmp_path / "inputs"
    folder.mkdir()
    for image in images:
        shutil.copy(image, folder / image.name)
    (folder / "broken.png").write_bytes(b"this is not a png")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", str(edge_fixture["bundle_dir"]), "--input", str(folder), "--save-jsonl", str(out))
    assert result.returncode == ExitCode.INPUT_ERRORS
    records = {Path(r["input"]).name: r for r in read_records(out)}
    assert set(records) == {image.name for image in images} | {"broken.png", "empty.jpg"}
    for name in ("broken.png", "empty.jpg"):
        assert "score" not in records[name] and "label" not in records[name]
        assert records[name]["error"]
    assert "not a decodable image" in records["broken.png"]["error"]
    for image in images:
        assert isinstance(records[image.name]["score"], float)
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    assert summary["errors"] == 2 and summary["images"] == 5


def test_a_changed_byte_is_refused_naming_the_file(bundle_copy):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"^model\.onnx: sha256"):
        open_bundle(bundle_copy)
    result = run_infer("--bundle", str(bundle_copy), "--input", str(bundle_copy), "--save-jsonl", str(bundle_copy / "o"))
    assert result.returncode == ExitCode.BUNDLE_REFUSED
    assert "model.onnx" in result.stderr


def test_infer_config_change_is_refused(bundle_copy):
    config = bundle_copy / "infer_config.json"
    config.write_text(config.read_text().replace('"threshold"', '"threshold" ', 1))
    with pytest.raises(BundleError, match=r"^infer_config\.json: size"):
        open_bundle(bundle_copy)


def test_unsupported_format_version_is_refused(bundle_copy):
    manifest_path = bundle_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["format_version"] = "2.0"
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format_version '2.0' is not supported"):
        open_bundle(bundle_copy)


def test_manifest_schema_and_recorded_checksums(edge_fixture):
    """Required keys only, and every derived value recomputed from the files themselves."""
    bundle_dir = edge_fixture["bundle_dir"]
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text())
    from pyimgano.runtime.manifest import Manifest, Threshold, manifest_to_json, permitted_keys, required_keys

    assert required_keys(Manifest) <= set(manifest) <= permitted_keys(Manifest)
    assert set(manifest["files"]) == {"model.onnx", "infer_config.json"}
    for name, entry in manifest["files"].items():
        assert entry == {"sha256": sha256_file(bundle_dir / name), "size": (bundle_dir / name).stat().st_size}
    for kind in ("image", "pixel"):
        threshold = manifest["thresholds"][kind]
        assert set(threshold) == permitted_keys(Threshold)
        summary = threshold["score_summary"]
        # Read from the normal images' scores (map maxima for the pixel threshold): within their range, or
        # above their maximum where a tail is extrapolated.
        assert summary["min"] <= threshold["value"]
        assert threshold["value"] <= summary["max"] or threshold["method"].endswith("_tail")
        assert threshold["target_false_reject_rate"] == 0.01
    thresholds = manifest["thresholds"]
    assert thresholds["pixel"]["method"].startswith("normal_map_max")
    assert thresholds["pixel"]["count"] == thresholds["image"]["count"]
    infer_config = json.loads((bundle_dir / "infer_config.json").read_text())
    # The run's artifacts/infer_config.json schema, with the bundle's one category.
    [(category, entry)] = infer_config["categories"].items()
    assert category == manifest["model"]["category"]
    assert entry["threshold"] == manifest["thresholds"]["image"]["value"]
    assert entry["pixel_threshold"] == manifest["thresholds"]["pixel"]["value"]
    assert entry["model"] == manifest["model"]
    assert infer_config["defects"] == manifest["defects"] and infer_config["input"] == manifest["input"]
    assert manifest["defects"]["pixel_threshold_strategy"] == "calibrated"
    bundle = open_bundle(edge_fixture["archive"])
    assert manifest_to_json(bundle.manifest) == manifest


def test_defect_regions_and_masks_are_in_original_pixels(edge_fixture, tmp_path):
    """A defect image resized to an odd size: mask and boxes follow the original size and overlap the truth."""
    category = edge_fixture["category_dir"]
    image_path = sorted((category / "test" / "spot").glob("*.png"))[0]
    truth = cv2.imread(str(category / "ground_truth" / "spot" / f"{image_path.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
    odd = tmp_path / "odd.png"
    cv2.imwrite(str(odd), cv2.resize(cv2.imread(str(image_path)), (300, 200)))
    truth = cv2.resize(truth, (300, 200), interpolation=cv2.INTER_NEAREST) > 0
    out = tmp_path / "records.jsonl"
    result = run_infer("--bundle", str(edge_fixture["bundle_dir"]), "--input", str(odd), "--save-jsonl", str(out),
                       "--defects", "--save-masks", str(tmp_path / "masks"))
    assert result.returncode == 0, result.stderr
    [record] = read_records(out)
    assert record["image_size"] == [200, 300]
    defects = record["defects"]
    mask = cv2.imread(defects["mask_path"], cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (200, 300) and set(np.unique(mask)) <= {0, 255}
    assert defects["regions"], "a spot defect image must yield at least one region"
    predicted = mask > 0
    assert sum(r["area"] for r in defects["regions"]) == int(predicted.sum())
    for region in defects["regions"]:
        x0, y0, x1, y1 = region["bbox_xyxy"]
        assert 0 <= x0 < x1 <= 300 and 0 <= y0 < y1 <= 200
        assert region["score_max"] >= region["score_mean"] > defects["pixel_threshold"]
    # The found pixels cover most of the true defect (the synthetic spot is plainly visible).
    assert (predicted & truth).sum() / truth.sum() > 0.5


def test_cuda_request_without_cuda_provider_is_a_usage_error(edge_fixture):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this ONNX Runtime has CUDA")
    result = run_infer("--bundle", str(edge_fixture["bundle_dir"]), "--input", str(edge_fixture["category_dir"]),
                       "--device", "cuda")
    assert result.returncode == ExitCode.USAGE
    assert "CUDAExecutionProvider" in result.stderr


def test_no_matching_input_is_a_usage_error(edge_fixture, tmp_path):
    result = run_infer("--bundle", str(edge_fixture["bundle_dir"]), "--input", str(tmp_path / "*.png"))
    assert result.returncode == ExitCode.USAGE
    assert "no images found" in result.stderr


@pytest.mark.parametrize("case", ["uniform", "constant", "small", "ascending", "descending", "three_levels", "normal_1k"])
def test_high_quantile_equals_numpys(case):
    """The record's map p99 takes a shortcut (a pivot from a strided sample); it must give numpy's answer."""
    from pyimgano.runtime.inference import high_quantile

    rng = np.random.default_rng(0)
    values = {
        "uniform": lambda: rng.random((256, 256), dtype=np.float32),
        "constant": lambda: np.zeros((256, 256), np.float32),
        "small": lambda: rng.random(100, dtype=np.float32),  # below the sampling size: plain np.quantile
        "ascending": lambda: np.sort(rng.random(70000)).astype(np.float32),  # the sample misses the top
        "descending": lambda: np.sort(rng.random(70000))[::-1].astype(np.float32).copy(),
        "three_levels": lambda: rng.integers(0, 3, (300, 300)).astype(np.float32),  # ties at the pivot
        "normal_1k": lambda: rng.standard_normal((1024, 1024)).astype(np.float32),
    }[case]()
    for q in (0.9, 0.99, 0.999):
        assert high_quantile(values, q) == pytest.approx(float(np.quantile(values, q)), rel=1e-6, abs=1e-12)
