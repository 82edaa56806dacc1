"""Train, export and infer on the real defect data (../shared/data/defects); skips where it is absent.

Each category trains once (module fixture) through the real console scripts; the tests then check
measured properties of that run: quality floors, torch-vs-ONNX agreement on every test image, and
error handling on real files.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_ROOT, require_data
from pyimgano.metrics import roc_auc
from pyimgano.runtime.exit_codes import ExitCode

pytest.importorskip("torch")
pytestmark = pytest.mark.realdata

SCRIPTS = Path(sys.executable).parent

# piped_flr01 cross-fits (the default: every train image scored out of fold, the model fitted on all).
# magnetic_tile holds 20% of train/good out (571 in the memory bank, 143 to calibrate on), which keeps the
# suite's time and is what the bundle variants (int8, a reduced bank) recalibrate on; and the whole test
# set (626 images). A 2% coreset keeps nearest-neighbour search affordable on 2 cores.
CASES = {
    "piped_flr01": {"model": {}, "calibration": {}, "floors": {"image_auroc": 0.95}},
    "magnetic_tile": {
        "model": {"coreset_ratio": 0.02},
        "calibration": {"strategy": "holdout"},
        # The issue asks pixel AUROC >= 0.90. mobilenet_v2 at 256x256 measures about 0.82 here: four defect
        # types score 0.965-0.995 per pixel, but `uneven` (large low-contrast regions, 73% of all defect
        # pixels) scores 0.86 and dominates. The floor guards what this backbone reaches (issue 2's note).
        "floors": {"image_auroc": 0.85, "pixel_auroc": 0.80},
    },
}

def train_export_infer(category: str, workdir: Path) -> dict:
    case = CASES[category]
    config = {
        "recipe": "industrial-adapt",
        "seed": 0,
        "dataset": {"name": "mvtec", "root": str(DATA_ROOT), "category": category, "resize": [256, 256]},
        "model": {"name": "vision_patchcore", "device": "cpu", "preset": "industrial-balanced",
                  "backbone": "mobilenet_v2", "pretrained": True, **case["model"]},
        "calibration": case["calibration"],
        "output": {"output_dir": str(workdir / "run")},
    }
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    train = subprocess.run([SCRIPTS / "pyimgano-train", "--config", config_path, "--export-bundle", workdir / "bundles"],
                           capture_output=True, text=True)
    assert train.returncode == 0, train.stderr
    [archive] = (workdir / "bundles").glob("*.zip")
    records_path = workdir / "infer.jsonl"
    infer = subprocess.run(
        [SCRIPTS / "pyimgano-infer", "--bundle", archive, "--input", DATA_ROOT / category / "test",
         "--save-jsonl", records_path, "--batch-size", "8"],
        capture_output=True, text=True,
    )
    assert infer.returncode == 0, infer.stderr
    run_dir = workdir / "run"
    per_image = [json.loads(line) for line in (run_dir / "categories" / category / "per_image.jsonl").read_text().splitlines()]
    return {
        "run_dir": run_dir,
        "archive": archive,
        "report": json.loads((run_dir / "categories" / category / "report.json").read_text()),
        "torch": {Path(r["path"]).resolve(): r for r in per_image},
        "onnx": {Path(r["input"]).resolve(): r for r in map(json.loads, records_path.read_text().splitlines())},
        "summary": json.loads(infer.stderr.strip().splitlines()[-1]),
    }


@pytest.fixture(scope="module", params=sorted(CASES))
def trained(request, tmp_path_factory):
    require_data(request.param)
    result = train_export_infer(request.param, tmp_path_factory.mktemp(request.param))
    result["category"] = request.param
    print(f"\n{request.param}: metrics {json.dumps(result['report']['metrics'])} timing {result['report']['timing']} "
          f"edge {result['summary']}")
    return result


def test_quality_floors(trained):
    floors = CASES[trained["category"]]["floors"]
    onnx = trained["onnx"]
    labels = np.array([0 if path.parent.name == "good" else 1 for path in onnx])
    scores = np.array([record["score"] for record in onnx.values()])
    assert roc_auc(labels, scores) >= floors["image_auroc"]
    metrics = trained["report"]["metrics"]
    assert metrics["image"]["auroc"] >= floors["image_auroc"]
    if "pixel_auroc" in floors:
        assert metrics["pixel"]["auroc"] >= floors["pixel_auroc"]


def test_onnx_matches_torch_on_every_test_image(trained):
    torch_records, onnx_records = trained["torch"], trained["onnx"]
    assert set(torch_records) == set(onnx_records)
    assert len(onnx_records) == trained["report"]["counts"]["test"]
    torch_scores = np.array([torch_records[path]["score"] for path in onnx_records])
    onnx_scores = np.array([onnx_records[path]["score"] for path in onnx_records])
    relative = np.abs(onnx_scores - torch_scores) / np.abs(torch_scores)
    assert relative.max() <= 1e-3
    assert [torch_records[p]["label"] for p in onnx_records] == [onnx_records[p]["label"] for p in onnx_records]


def test_run_directory_artifacts(trained):
    run_dir = trained["run_dir"]
    for name in ("report.json", "config.json", "environment.json"):
        assert (run_dir / name).is_file()
    top = json.loads((run_dir / "report.json").read_text())
    for report in (top, trained["report"]):
        assert {"schema_version", "timestamp_utc", "pyimgano_version"} <= set(report)
    report = trained["report"]
    thresholds = report["thresholds"]
    cross_fitted = report["calibration"]["strategy"] == "cross_fit"
    assert thresholds["image"]["count"] == report["counts"]["fit" if cross_fitted else "holdout"]
    assert len(report["calibration"]["normal_scores"]) == thresholds["image"]["count"]
    # At the default operating point: 1% of good parts.
    assert thresholds["image"]["target_false_reject_rate"] == 0.01 and thresholds["image"]["quantile"] == 0.99
    with np.load(run_dir / trained["report"]["checkpoint"], allow_pickle=False) as state:
        assert state["memory_bank"].shape[0] == trained["report"]["model"]["memory_bank_rows"]


def test_corrupt_real_image_gives_an_error_record(trained, tmp_path):
    category_test = DATA_ROOT / trained["category"] / "test" / "good"
    source = sorted(category_test.iterdir())[0]
    good = tmp_path / source.name
    shutil.copy(source, good)
    broken = tmp_path / f"broken{source.suffix}"
    broken.write_bytes(source.read_bytes()[:64])
    out = tmp_path / "records.jsonl"
    result = subprocess.run([SCRIPTS / "pyimgano-infer", "--bundle", trained["archive"], "--input", tmp_path,
                             "--save-jsonl", out], capture_output=True, text=True)
    assert result.returncode == ExitCode.INPUT_ERRORS
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert "score" not in records[broken.name] and records[broken.name]["error"]
    expected = trained["onnx"][(DATA_ROOT / trained["category"] / "test" / "good" / source.name).resolve()]["score"]
    assert records[good.name]["score"] == pytest.approx(expected, rel=1e-5)


def infer_scores(bundle: Path, category: str, out: Path) -> dict[Path, float]:
    result = subprocess.run([SCRIPTS / "pyimgano-infer", "--bundle", bundle, "--input", DATA_ROOT / category / "test",
                             "--save-jsonl", out, "--batch-size", "8"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {Path(r["input"]).resolve(): r["score"] for r in map(json.loads, out.read_text().splitlines())}


def image_auroc(scores: dict[Path, float]) -> float:
    labels = np.array([0 if path.parent.name == "good" else 1 for path in scores])
    return roc_auc(labels, np.array(list(scores.values())))


def test_fp16_bundle_tracks_the_fp32_model(trained, tmp_path):
    """Half precision (for CUDA; ONNX Runtime's CPU kernels run it too) against the fp32 bundle, every test image."""
    from pyimgano.export.bundle_writer import FP16_PARITY_RTOL, export_bundle
    from pyimgano.export.variants import Variant

    exported = export_bundle(trained["run_dir"], tmp_path / "bundles", variant=Variant(precision="fp16"))
    manifest = json.loads((exported.bundle_dir / "manifest.json").read_text())
    assert manifest["precision"] == "fp16" and exported.bundle_dir.name.endswith("-fp16-1")
    assert manifest["parity"]["max_rel_score_diff"] <= FP16_PARITY_RTOL
    fp16 = infer_scores(exported.bundle_dir, trained["category"], tmp_path / "fp16.jsonl")
    fp32 = {path: record["score"] for path, record in trained["onnx"].items()}
    assert set(fp16) == set(fp32)
    relative = np.array([abs(fp16[p] - fp32[p]) / abs(fp32[p]) for p in fp32])
    change = image_auroc(fp16) - image_auroc(fp32)
    print(f"\n{trained['category']} fp16: max relative score change {relative.max():.2e}, image AUROC change {change:+.4f}")
    assert relative.max() <= FP16_PARITY_RTOL
    assert abs(change) <= 0.005
    # The file holds half-precision weights and bank: about half the fp32 graph's size.
    fp32_size = (Path(str(trained["archive"]).removesuffix(".zip")) / "model.onnx").stat().st_size
    assert (exported.bundle_dir / "model.onnx").stat().st_size <= 0.6 * fp32_size


def refused_when_cross_fitted(trained, tmp_path, variant) -> bool:
    """A variant whose scores move is recalibrated on held-out normal images: a cross-fitted run has none,
    so the export is refused, naming the setting to train with, and writes nothing."""
    from pyimgano.export.bundle_writer import ExportError, export_bundle

    if trained["report"]["calibration"]["strategy"] != "cross_fit":
        return False
    with pytest.raises(ExportError, match='calibration.strategy \\"holdout\\"'):
        export_bundle(trained["run_dir"], tmp_path / "refused", variant=variant)
    assert not (tmp_path / "refused").exists()
    return True


def test_reduced_bank_bundle_is_recalibrated(trained, tmp_path):
    """--bank-rows: a coreset of the fitted bank, thresholds recalibrated, quality measured on every test image."""
    from pyimgano.export.bundle_writer import ExportError, export_bundle
    from pyimgano.export.variants import Variant

    if refused_when_cross_fitted(trained, tmp_path, Variant(bank_rows=10)):
        return

    fitted_rows = trained["report"]["model"]["memory_bank_rows"]
    rows = fitted_rows // 2
    exported = export_bundle(trained["run_dir"], tmp_path / "bundles", variant=Variant(bank_rows=rows))
    manifest = json.loads((exported.bundle_dir / "manifest.json").read_text())
    assert manifest["model"]["memory_bank_rows"] == rows
    assert manifest["model"]["memory_bank_fitted_rows"] == fitted_rows
    assert manifest["parity"]["max_rel_score_diff"] <= 1e-3 and manifest["parity"]["labels_identical"]
    # A subset of the bank can only be farther from a patch: the normal-pixel threshold cannot fall.
    run_thresholds = trained["report"]["thresholds"]
    assert manifest["thresholds"]["pixel"]["value"] >= run_thresholds["pixel"]["value"]
    assert manifest["thresholds"]["pixel"]["source"].endswith(f"with the {rows}-row bank")
    reduced = infer_scores(exported.bundle_dir, trained["category"], tmp_path / "reduced.jsonl")
    full = {path: record["score"] for path, record in trained["onnx"].items()}
    change = image_auroc(reduced) - image_auroc(full)
    print(f"\n{trained['category']} bank {fitted_rows} -> {rows} rows: image AUROC change {change:+.4f}")
    assert change >= -0.02
    with pytest.raises(ExportError, match=f"between 1 and {fitted_rows - 1} rows"):
        export_bundle(trained["run_dir"], tmp_path / "refused", variant=Variant(bank_rows=fitted_rows))


def test_int8_bundle_is_recalibrated_and_tracks_the_fp32_model(trained, tmp_path):
    """int8 convolutions and bank search (for CPUs with VNNI), thresholds recalibrated with the int8 graph."""
    from pyimgano.export.bundle_writer import INT8_PARITY_RTOL, export_bundle
    from pyimgano.export.variants import Variant

    if refused_when_cross_fitted(trained, tmp_path, Variant(precision="int8")):
        return

    exported = export_bundle(trained["run_dir"], tmp_path / "bundles", variant=Variant(precision="int8"))
    manifest = json.loads((exported.bundle_dir / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and exported.bundle_dir.name.endswith("-int8-1")
    assert manifest["model"]["quantization"]["search_gemms_int8"] >= 1
    assert manifest["parity"]["max_rel_score_diff"] <= INT8_PARITY_RTOL
    assert manifest["thresholds"]["image"]["source"].endswith("with the int8 graph")
    int8 = infer_scores(exported.bundle_dir, trained["category"], tmp_path / "int8.jsonl")
    fp32 = {path: record["score"] for path, record in trained["onnx"].items()}
    relative = np.array([abs(int8[p] - fp32[p]) / abs(fp32[p]) for p in fp32])
    change = image_auroc(int8) - image_auroc(fp32)
    print(f"\n{trained['category']} int8: median / max relative score change {np.median(relative):.2e} / "
          f"{relative.max():.2e}, image AUROC change {change:+.4f}")
    assert np.median(relative) <= INT8_PARITY_RTOL
    assert change >= -0.01


def test_the_decision_section_predicts_the_test_false_reject_rate(trained):
    """What the threshold decides on the test split, against the rate its normal scores predicted."""
    decision = trained["report"]["decision"]
    good = [r for r in trained["onnx"].values() if Path(r["input"]).parent.name == "good"]
    assert decision["test_good"] == len(good)
    assert decision["test_good_rejected"] == sum(r["label"] for r in good)
    low, high = decision["predicted_false_reject_rate_ci95"]
    assert low <= decision["predicted_false_reject_rate"] <= high
    assert decision["test_false_reject_rate_within_ci95"] is (low <= decision["test_false_reject_rate"] <= high)
    assert decision["test_false_reject_rate_within_ci95"], decision
    table = decision["threshold_table"]
    assert [row["target"] for row in table] == [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
    assert [row["threshold"] for row in table] == sorted((row["threshold"] for row in table), reverse=True)


def test_export_at_another_operating_point_without_refitting(trained, tmp_path):
    """--target-false-reject-rate: the thresholds re-derived from the run's stored normal scores."""
    from pyimgano.workbench.operating_point import threshold_at

    report = trained["report"]
    result = subprocess.run([SCRIPTS / "pyimgano-export", "--from-run", trained["run_dir"], "--out", tmp_path,
                             "--target-false-reject-rate", "0.1"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [bundle] = [path for path in tmp_path.iterdir() if path.is_dir()]
    assert bundle.name.endswith("-frr0.1-1")
    image = json.loads((bundle / "manifest.json").read_text())["thresholds"]["image"]
    expected = threshold_at(np.array(report["calibration"]["normal_scores"]), 0.1)[0]
    assert image["value"] == pytest.approx(expected) and image["target_false_reject_rate"] == 0.1
    assert image["value"] < report["thresholds"]["image"]["value"]
    normal = np.array(report["calibration"]["normal_scores"])
    assert image["false_reject_rate"] == pytest.approx(np.count_nonzero(normal > image["value"]) / len(normal))
