"""pyimgano-train / pyimgano-export through click's CliRunner: exit codes and messages users see."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyimgano.cli.train import main as train_main
from pyimgano.export.cli import main as export_main
from pyimgano.runtime.exit_codes import ExitCode

torch = pytest.importorskip("torch")


def write_config(tmp_path: Path, **sections) -> Path:
    config = {
        "dataset": {"root": str(tmp_path / "data"), "category": "synthetic_texture"},
        "model": {"device": "cpu"},
        "output": {"output_dir": str(tmp_path / "run")},
    }
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root, SyntheticSpec(n_train=12, n_test_good=4, n_test_per_defect=4, image_size=128))
    generate_dataset(root, SyntheticSpec(category="second_texture", n_train=12, n_test_good=4, n_test_per_defect=4,
                                         image_size=128, seed=1))
    return root


def test_unknown_key_names_the_nearest_key(tmp_path):
    path = write_config(tmp_path, model={"coreset_ration": 0.1})
    result = CliRunner().invoke(train_main, ["--config", str(path)])
    assert result.exit_code == ExitCode.USAGE
    assert "unknown key 'model.coreset_ration'" in result.output
    assert "did you mean 'model.coreset_ratio'" in result.output


def test_cuda_without_a_gpu_is_a_clear_usage_error(tmp_path, small_dataset):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    path = write_config(tmp_path, dataset={"root": str(small_dataset)})
    result = CliRunner().invoke(train_main, ["--config", str(path), "--device", "cuda"])
    assert result.exit_code == ExitCode.USAGE
    assert "model.device: 'cuda' was requested but torch sees no CUDA device" in result.output
    assert not (tmp_path / "run").exists()


def test_missing_category_is_a_data_error_listing_the_categories(tmp_path, small_dataset):
    path = write_config(tmp_path, dataset={"root": str(small_dataset), "category": "bottle"})
    result = CliRunner().invoke(train_main, ["--config", str(path)])
    assert result.exit_code == ExitCode.DATA_ERROR
    assert "second_texture, synthetic_texture" in result.output


def test_missing_weights_name_the_file_and_folder(tmp_path, small_dataset, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch-home"))
    path = write_config(tmp_path, dataset={"root": str(small_dataset)}, model={"backbone": "resnet18"})
    result = CliRunner().invoke(train_main, ["--config", str(path)])
    assert result.exit_code == ExitCode.DATA_ERROR
    assert f"resnet18-f37072fd.pth in {tmp_path / 'empty-torch-home' / 'hub' / 'checkpoints'}" in result.output


def test_all_categories_grayscale_and_mixed_sizes_then_export_by_category(tmp_path, small_dataset):
    """`category: all` trains every category; grayscale and odd-sized images mix with RGB 128x128 ones."""
    import cv2

    train = small_dataset / "second_texture" / "train" / "good"
    first = sorted(train.glob("*.png"))[0]
    image = cv2.imread(str(first))
    cv2.imwrite(str(train / "gray_odd.png"), cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (97, 150)))
    path = write_config(tmp_path, dataset={"root": str(small_dataset), "category": "all", "resize": [64, 64]},
                        model={"preset": "industrial-fast"})
    result = CliRunner().invoke(train_main, ["--config", str(path)])
    assert result.exit_code == ExitCode.OK, result.output
    top = json.loads((tmp_path / "run" / "report.json").read_text())
    assert sorted(top["categories"]) == ["second_texture", "synthetic_texture"]
    second = json.loads((tmp_path / "run" / "categories" / "second_texture" / "report.json").read_text())
    assert second["counts"]["fit"] + second["counts"]["holdout"] == 13
    # Both categories are easy: each detector must rank every defect above every good image or nearly so.
    for row in top["categories"].values():
        assert row["image_auroc"] >= 0.9

    ambiguous = CliRunner().invoke(export_main, ["--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "b")])
    assert ambiguous.exit_code == ExitCode.DATA_ERROR
    assert "pass --category" in ambiguous.output
    exported = CliRunner().invoke(export_main, ["--from-run", str(tmp_path / "run"), "--category", "second_texture",
                                                "--out", str(tmp_path / "b")])
    assert exported.exit_code == ExitCode.OK, exported.output
    manifest = json.loads((tmp_path / "b" / "patchcore-mobilenet_v2-second_texture-1" / "manifest.json").read_text())
    assert manifest["input"]["height"] == 64 and manifest["model"]["category"] == "second_texture"
    assert manifest["parity"]["max_rel_score_diff"] <= 1e-3


def test_same_config_same_scores(tmp_path, small_dataset):
    """Seeded runs are reproducible: the same config twice gives identical per-image scores."""
    scores = []
    for name in ("a", "b"):
        path = write_config(tmp_path / name if (tmp_path / name).mkdir() is None else tmp_path,
                            dataset={"root": str(small_dataset), "resize": [64, 64]},
                            output={"output_dir": str(tmp_path / name / "run")})
        assert CliRunner().invoke(train_main, ["--config", str(path)]).exit_code == ExitCode.OK
        per_image = tmp_path / name / "run" / "categories" / "synthetic_texture" / "per_image.jsonl"
        scores.append([json.loads(line)["score"] for line in per_image.read_text().splitlines()])
    assert scores[0] == scores[1]


def test_export_variants_through_the_cli(tmp_path, small_dataset):
    """--precision and --bank-rows: what a user sees for a good request and for each refusal."""
    path = write_config(tmp_path, dataset={"root": str(small_dataset), "resize": [64, 64]},
                        model={"preset": "industrial-fast"}, calibration={"strategy": "holdout"})
    assert CliRunner().invoke(train_main, ["--config", str(path)]).exit_code == ExitCode.OK
    run = tmp_path / "run"
    rows = json.loads((run / "categories" / "synthetic_texture" / "report.json").read_text())["model"]["memory_bank_rows"]

    exported = CliRunner().invoke(export_main, ["--from-run", str(run), "--out", str(tmp_path / "b"),
                                                "--precision", "int8", "--bank-rows", str(rows // 2)])
    assert exported.exit_code == ExitCode.OK, exported.output
    bundle = tmp_path / "b" / f"patchcore-mobilenet_v2-synthetic_texture-int8-bank{rows // 2}-1"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["model"]["memory_bank_rows"] == rows // 2
    assert manifest["thresholds"]["image"]["source"].endswith("with the int8 graph")

    too_many = CliRunner().invoke(export_main, ["--from-run", str(run), "--out", str(tmp_path / "c"),
                                                "--bank-rows", str(rows)])
    assert too_many.exit_code == ExitCode.DATA_ERROR
    assert f"--bank-rows {rows}: a reduced bank needs between 1 and {rows - 1} rows" in too_many.output
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())

    unknown = CliRunner().invoke(export_main, ["--from-run", str(run), "--out", str(tmp_path / "d"), "--precision", "fp8"])
    assert unknown.exit_code == ExitCode.USAGE and "'fp8' is not one of 'fp32', 'fp16', 'int8'" in unknown.output


def test_variants_that_recalibrate_are_refused_from_a_cross_fitted_run(tmp_path, small_dataset):
    """Every train image of a cross-fitted run is in its model: nothing is left to recalibrate a variant on."""
    path = write_config(tmp_path, dataset={"root": str(small_dataset), "resize": [64, 64]},
                        model={"preset": "industrial-fast"})
    assert CliRunner().invoke(train_main, ["--config", str(path)]).exit_code == ExitCode.OK
    for flags in (["--precision", "int8"], ["--bank-rows", "10"]):
        result = CliRunner().invoke(export_main, ["--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "b"),
                                                  *flags])
        assert result.exit_code == ExitCode.DATA_ERROR, result.output
        assert 'train with calibration.strategy "holdout"' in result.output and "Traceback" not in result.output
        assert not (tmp_path / "b").exists()
    # A variant whose scores do not move exports as usual.
    result = CliRunner().invoke(export_main, ["--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "b"),
                                              "--precision", "fp16"])
    assert result.exit_code == ExitCode.OK, result.output


def test_precision_variants_are_patchcore_only(tmp_path, small_dataset):
    path = write_config(tmp_path, dataset={"root": str(small_dataset), "resize": [64, 64]},
                        model={"name": "vision_padim", "n_features": 50})
    assert CliRunner().invoke(train_main, ["--config", str(path)]).exit_code == ExitCode.OK
    for flags, message in ((["--precision", "fp16"], "precision fp16 is not one vision_padim exports"),
                           (["--bank-rows", "10"], "--bank-rows applies to memory-bank models")):
        result = CliRunner().invoke(export_main, ["--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "b"), *flags])
        assert result.exit_code == ExitCode.DATA_ERROR and message in result.output, result.output
