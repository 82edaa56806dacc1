"""Recipes, discovery flags and adaptation knobs of the workbench, on real data (piped_flr01).

Each recipe run goes through the console scripts; the tests assert what the run measured and wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_ROOT, PROJECT_ROOT, require_data
from pyimgano.metrics import roc_auc
from pyimgano.runtime.exit_codes import ExitCode

pytest.importorskip("torch")
SCRIPTS = Path(sys.executable).parent
CATEGORY = "piped_flr01"


def train(*args, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([SCRIPTS / "pyimgano-train", *map(str, args)], capture_output=True, text=True)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def infer(*args) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPTS / "pyimgano-infer", *map(str, args)], capture_output=True, text=True)


def records(path: Path) -> dict[Path, dict]:
    return {Path(r["input"]).resolve(): r for r in map(json.loads, path.read_text().splitlines())}


def write_config(folder: Path, **top) -> Path:
    config = {
        "dataset": {"name": "mvtec", "root": str(DATA_ROOT), "category": CATEGORY, "resize": [128, 128]},
        "model": {"device": "cpu", "preset": "industrial-fast"},
        "output": {"output_dir": str(folder / "run")},
        **top,
    }
    path = folder / "config.json"
    path.write_text(json.dumps(config))
    return path


def test_list_recipes_and_recipe_info_json():
    listed = json.loads(train("--list-recipes", "--json").stdout)
    assert [r["name"] for r in listed] == [
        "industrial-adapt", "industrial-adapt-highres", "industrial-adapt-fp40", "micro-finetune-autoencoder",
        "anomalib-train",
    ]
    info = json.loads(train("--recipe-info", "industrial-adapt-highres", "--json").stdout)
    assert info["defaults"]["adaptation"]["tiling"] == {"tile_size": 512, "stride": 384, "map_reduce": "hann",
                                                        "score_reduce": "max"}
    shipped = json.loads((PROJECT_ROOT / "docs" / "config.schema.json").read_text())
    assert info["config_schema"] == shipped
    unknown = train("--recipe-info", "industrial-adapt-hires", check=False)
    assert unknown.returncode == ExitCode.USAGE and "did you mean 'industrial-adapt-highres'" in unknown.stderr


def test_schema_accepts_the_seed_config_and_refuses_unknown_keys():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((PROJECT_ROOT / "docs" / "config.schema.json").read_text())
    seed = {
        "recipe": "industrial-adapt", "seed": 123,
        "dataset": {"name": "mvtec", "root": "/data", "category": "bottle", "resize": [256, 256], "input_mode": "paths"},
        "model": {"name": "vision_patchcore", "device": "cuda", "preset": "industrial-balanced", "pretrained": True,
                  "contamination": 0.1},
        "output": {"output_dir": "runs/my_run", "save_run": True, "per_image_jsonl": True},
        "adaptation": {"save_maps": True, "tiling": {"tile_size": 512, "stride": 384, "score_reduce": "max",
                                                     "score_topk": 0.1, "map_reduce": "hann"},
                       "postprocess": {"normalize": True, "normalize_method": "percentile",
                                       "percentile_range": [1.0, 99.0], "gaussian_sigma": 1.0,
                                       "morph_open_ksize": 3, "morph_close_ksize": 3}},
        "defects": {"enabled": True, "pixel_threshold": 0.5, "pixel_threshold_strategy": "fixed",
                    "pixel_normal_quantile": 0.999, "mask_format": "png", "roi_xyxy_norm": [0.1, 0.1, 0.9, 0.9],
                    "min_area": 0, "min_score_max": None, "min_score_mean": None, "open_ksize": 0, "close_ksize": 0,
                    "fill_holes": False, "max_regions": None},
        "training": {"enabled": True, "epochs": 5, "lr": 0.001, "checkpoint_name": "model.pt"},
    }
    jsonschema.validate(seed, schema)
    seed["adaptation"]["tiling"]["tile_sise"] = 512
    with pytest.raises(jsonschema.ValidationError, match="tile_sise"):
        jsonschema.validate(seed, schema)


def test_dry_run_applies_recipe_defaults_only_where_unset(tmp_path):
    path = write_config(tmp_path, recipe="industrial-adapt-highres",
                        adaptation={"tiling": {"tile_size": 256, "stride": 256}})
    resolved = json.loads(train("--config", path, "--dry-run").stdout)
    assert resolved["adaptation"]["tiling"] == {"tile_size": 256, "stride": 256, "score_reduce": "max",
                                                "score_topk": 0.1, "map_reduce": "hann"}
    assert resolved["adaptation"]["postprocess"]["normalize_method"] == "percentile"
    assert resolved["adaptation"]["save_maps"] is True
    assert not (tmp_path / "run").exists()


def test_yaml_dry_run_with_overrides(tmp_path):
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump({"dataset": {"root": "/nowhere", "category": "x"}}))
    resolved = json.loads(train("--config", path, "--dry-run", "--root", DATA_ROOT, "--category", CATEGORY,
                                "--device", "cpu", "--output-dir", tmp_path / "o").stdout)
    assert resolved["dataset"]["root"] == str(DATA_ROOT) and resolved["dataset"]["category"] == CATEGORY
    assert resolved["model"]["device"] == "cpu" and resolved["output"]["output_dir"] == str(tmp_path / "o")


def test_anomalib_placeholder_exits_with_its_own_code(tmp_path):
    result = train("--config", write_config(tmp_path, recipe="anomalib-train"), check=False)
    assert result.returncode == ExitCode.RECIPE_PLACEHOLDER
    assert "placeholder" in result.stderr and "anomalib" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def highres_run(tmp_path_factory):
    """The highres recipe on 128x128 images with 64-pixel tiles (3x3 tiles per image), exported."""
    require_data(CATEGORY)
    folder = tmp_path_factory.mktemp("highres")
    path = write_config(folder, recipe="industrial-adapt-highres", dataset={
        "name": "mvtec", "root": str(DATA_ROOT), "category": CATEGORY, "resize": [128, 128]},
        adaptation={"tiling": {"tile_size": 64, "stride": 32}})
    train("--config", path, "--export-bundle", folder / "bundles")
    return folder


def test_highres_tiles_saves_maps_and_normalises_with_normal_statistics(highres_run):
    run = highres_run / "run"
    report = json.loads((run / "categories" / CATEGORY / "report.json").read_text())
    assert report["tiling"]["tile_size"] == 64 and report["tiling"]["map_reduce"] == "hann"
    stats = report["map_postprocess"]["stats"]
    assert stats["method"] == "percentile" and stats["low"] < stats["high"]
    assert report["metrics"]["image"]["auroc"] >= 0.95
    per_image = [json.loads(line) for line in (run / "categories" / CATEGORY / "per_image.jsonl").read_text().splitlines()]
    # Normalised with the held-out normal pixels' 1st..99th percentiles: normal images' maps sit near [0, 1].
    good_max = [r["map_max"] for r in per_image if r["truth"] == 0]
    bad_max = [r["map_max"] for r in per_image if r["truth"] == 1]
    assert np.median(good_max) < np.median(bad_max)
    for record in per_image[:5]:
        saved = np.load(run / record["map"]["path"])
        assert list(saved.shape) == record["map"]["shape"] == [128, 128]  # original size, tiled
        assert saved.dtype == np.float32 and record["map"]["dtype"] == "float32"
        assert float(saved.max()) == pytest.approx(record["map_max"])


def test_tiled_bundle_reproduces_the_workbench_and_from_run_agrees(highres_run, tmp_path):
    """Tiling and map normalisation run on the host at the edge: the bundle scores as the workbench did."""
    [archive] = (highres_run / "bundles").glob("*.zip")
    manifest = json.loads(next((highres_run / "bundles").glob("*/manifest.json")).read_text())
    assert manifest["tiling"]["tile_size"] == 64 and manifest["map_postprocess"]["stats"]["method"] == "percentile"
    test_dir = DATA_ROOT / CATEGORY / "test"
    edge = infer("--bundle", archive, "--input", test_dir, "--save-jsonl", tmp_path / "edge.jsonl")
    server = infer("--from-run", highres_run / "run", "--input", test_dir, "--save-jsonl", tmp_path / "server.jsonl")
    assert edge.returncode == 0, edge.stderr
    assert server.returncode == 0, server.stderr
    edge_records, server_records = records(tmp_path / "edge.jsonl"), records(tmp_path / "server.jsonl")
    per_image = {Path(r["path"]).resolve(): r for r in map(json.loads, (
        highres_run / "run" / "categories" / CATEGORY / "per_image.jsonl").read_text().splitlines())}
    assert set(edge_records) == set(server_records) == set(per_image)
    for path, record in per_image.items():
        assert edge_records[path]["score"] == pytest.approx(record["score"], rel=1e-3)
        assert server_records[path]["score"] == pytest.approx(record["score"], rel=1e-5)
        assert edge_records[path]["label"] == server_records[path]["label"] == record["label"]
        assert edge_records[path]["map"]["max"] == pytest.approx(record["map_max"], rel=1e-3, abs=1e-3)


@pytest.fixture(scope="module")
def fp40_run(tmp_path_factory):
    require_data(CATEGORY)
    folder = tmp_path_factory.mktemp("fp40")
    train("--config", write_config(folder, recipe="industrial-adapt-fp40"), "--export-infer-config",
          "--export-bundle", folder / "bundles")
    return folder


def test_fp40_exports_the_defects_block_and_infer_applies_it(fp40_run, tmp_path):
    exported = json.loads((fp40_run / "run" / "artifacts" / "infer_config.json").read_text())
    defects = exported["defects"]
    assert defects["enabled"] is True and defects["min_area"] == 32 and defects["max_regions"] == 10
    assert exported["categories"][CATEGORY]["pixel_threshold"] > 0
    [archive] = (fp40_run / "bundles").glob("*.zip")
    result = infer("--bundle", archive, "--input", DATA_ROOT / CATEGORY / "test" / "impurity", "--defects",
                   "--infer-config", fp40_run / "run" / "artifacts" / "infer_config.json",
                   "--save-jsonl", tmp_path / "r.jsonl", "--save-masks", tmp_path / "masks")
    assert result.returncode == 0, result.stderr
    found, found_area = 0, 0
    for record in records(tmp_path / "r.jsonl").values():
        regions = record["defects"]["regions"]
        found += len(regions)
        found_area += sum(region["area"] for region in regions)
        assert len(regions) <= 10
        assert all(region["area"] >= 32 for region in regions)
        mask = np.asarray(__import__("cv2").imread(record["defects"]["mask_path"], 0))
        border = 4
        assert not mask[:border].any() and not mask[-border:].any() and not mask[:, :border].any() and not mask[:, -border:].any()
    assert found > 0
    # The same images with a plain defects block (no ROI, border, morphology, filters or peak refinement) mark
    # more of each image: the fp40 defaults really were applied above.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"defects": {"enabled": True}}))
    loose = infer("--bundle", archive, "--input", DATA_ROOT / CATEGORY / "test" / "impurity", "--defects",
                  "--infer-config", plain, "--save-jsonl", tmp_path / "loose.jsonl")
    assert loose.returncode == 0, loose.stderr
    loose_areas = [r["area"] for rec in records(tmp_path / "loose.jsonl").values() for r in rec["defects"]["regions"]]
    assert sum(loose_areas) > found_area


def test_custom_and_manifest_datasets_train(tmp_path):
    source = require_data(CATEGORY)
    custom = tmp_path / "custom"
    for src, dst in (("train/good", "train/normal"), ("test/good", "test/normal"), ("test/impurity", "test/anomaly"),
                     ("ground_truth/impurity", "ground_truth/anomaly")):
        shutil.copytree(source / src, custom / dst)
    run = train("--config", write_config(tmp_path, dataset={"name": "custom", "root": str(custom),
                                                             "category": "paper", "resize": [128, 128]}))
    report = json.loads((tmp_path / "run" / "categories" / "paper" / "report.json").read_text())
    assert report["metrics"]["image"]["auroc"] >= 0.95 and report["metrics"]["pixel"]["auroc"] >= 0.9, run.stdout

    manifest = tmp_path / "m" / "manifest.jsonl"
    manifest.parent.mkdir()
    lines = []
    for path in sorted((source / "train" / "good").iterdir()):
        lines.append({"image_path": str(path), "category": "paper", "split": "train", "label": 0})
    for path in sorted((source / "test").rglob("*.png")):
        label = 0 if path.parent.name == "good" else 1
        mask = source / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        lines.append({"image_path": str(path), "category": "paper", "split": "test", "label": label,
                      **({"mask_path": str(mask)} if label else {})})
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    folder = tmp_path / "mrun"
    folder.mkdir()
    train("--config", write_config(folder, dataset={"name": "manifest", "root": str(manifest), "category": "all",
                                                     "resize": [128, 128]}))
    manifest_report = json.loads((folder / "run" / "categories" / "paper" / "report.json").read_text())
    assert manifest_report["counts"]["test"] == 64
    assert manifest_report["metrics"]["image"]["auroc"] == pytest.approx(report["metrics"]["image"]["auroc"], abs=0.02)


def test_list_models_and_model_info():
    models = {m["name"]: m for m in json.loads(train("--list-models", "--json").stdout)}
    assert set(models) == {"vision_patchcore", "vision_padim", "vision_autoencoder", "vision_anomalib_checkpoint",
                           "vision_patchcore_anomalib", "vision_padim_anomalib"}
    assert models["vision_autoencoder"]["trains"] is True and models["vision_patchcore"]["trains"] is False
    info = json.loads(train("--model-info", "vision_patchcore", "--json").stdout)
    assert info["presets"]["industrial-fast"]["coreset_ratio"] == 0.01


def test_micro_finetune_autoencoder_trains_and_writes_its_checkpoint(tmp_path):
    require_data(CATEGORY)
    path = write_config(tmp_path, recipe="micro-finetune-autoencoder",
                        dataset={"name": "mvtec", "root": str(DATA_ROOT), "category": CATEGORY, "resize": [64, 64]},
                        model={"device": "cpu"},
                        training={"epochs": 3, "lr": 0.001, "checkpoint_name": "ae.npz"})
    train("--config", path)
    report = json.loads((tmp_path / "run" / "categories" / CATEGORY / "report.json").read_text())
    assert report["model"]["name"] == "vision_autoencoder"
    assert report["training"] == {"enabled": True, "applied": True, "epochs": 3, "lr": 0.001}
    losses = report["model"]["train_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert report["checkpoint"] == f"checkpoints/{CATEGORY}/ae.npz"
    assert (tmp_path / "run" / report["checkpoint"]).is_file()
    assert report["metrics"]["image"]["auroc"] >= 0.9


@pytest.mark.parametrize("dry_run", [False, True])
@pytest.mark.parametrize("model, training, fragment", [
    ({}, {"enabled": True, "epochs": 3}, "training.enabled: vision_patchcore does not train"),
    ({"name": "vision_autoencoder"}, {"enabled": False}, "training.enabled: vision_autoencoder trains"),
    ({"n_features": 7}, {}, "model.n_features: vision_patchcore does not use it"),
    ({"name": "vision_padim", "coreset_ratio": 0.1}, {}, "model.coreset_ratio: vision_padim does not use it"),
    ({"name": "vision_autoencoder", "layers": ["x"]}, {}, "model.layers: vision_autoencoder does not use it"),
    ({"preset": "industrial-magic"}, {}, "model.preset"),
    ({"backbone": "vgg16"}, {}, "model.backbone"),
])
def test_a_knob_the_model_does_not_use_is_refused_before_anything_is_written(tmp_path, model, training, fragment,
                                                                             dry_run):
    """The issue's cases: knobs that were parsed and then silently ignored, and a wrong preset or backbone
    that --dry-run accepted and the real run refused."""
    path = write_config(tmp_path, model={"device": "cpu", **model}, training=training, dataset={
        "name": "mvtec", "root": str(tmp_path / "nowhere"), "category": CATEGORY, "resize": [64, 64]})
    result = train("--config", path, *(["--dry-run"] if dry_run else []), check=False)
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


TORCH_FREE_DRY_RUN = """
import sys
from pyimgano.cli.train import program
from pyimgano.cli.errors import classify
try:
    program(config_path=sys.argv[1], root=None, category=None, device=None, output_dir=None, dry_run=True,
            export_infer_config=False, export_dir=None, sign_key=None, show_recipes=False, recipe_name=None,
            show_models=False, model_name=None, as_json=False)
    outcome = "ok"
except Exception as exc:
    outcome = classify(exc)[0].name
print(outcome, sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "torchvision")))
"""


@pytest.mark.parametrize("model, outcome", [({"name": "vision_padim"}, "ok"), ({"name": "vision_autoencoder"}, "USAGE"),
                                            ({"backbone": "vgg16"}, "USAGE"), ({"name": "nope"}, "USAGE")])
def test_dry_run_resolves_the_model_without_importing_torch(tmp_path, model, outcome):
    """--dry-run validates model, knobs, preset and backbone from the models' torch-free registrations."""
    path = write_config(tmp_path, model={"device": "cpu", **model})
    result = subprocess.run([sys.executable, "-c", TORCH_FREE_DRY_RUN, path], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == f"{outcome} []", result.stdout


def test_padim_exports_and_infers(tmp_path):
    require_data(CATEGORY)
    path = write_config(tmp_path, model={"name": "vision_padim", "device": "cpu"})
    train("--config", path, "--export-bundle", tmp_path / "bundles")
    [archive] = (tmp_path / "bundles").glob("*.zip")
    assert archive.name == f"padim-mobilenet_v2-{CATEGORY}-1.zip"
    result = infer("--bundle", archive, "--input", DATA_ROOT / CATEGORY / "test", "--save-jsonl", tmp_path / "r.jsonl")
    assert result.returncode == 0, result.stderr
    found = records(tmp_path / "r.jsonl")
    labels = [0 if p.parent.name == "good" else 1 for p in found]
    assert roc_auc(np.array(labels), np.array([r["score"] for r in found.values()])) >= 0.95


def test_limits_seed_and_input_modes_give_identical_scores(tmp_path):
    """Same config, same scores; `numpy` (decode up front) and `paths` (decode per chunk) agree exactly."""
    require_data(CATEGORY)
    scores = {}
    for name, mode in (("a", "paths"), ("b", "paths"), ("c", "numpy")):
        folder = tmp_path / name
        folder.mkdir()
        train("--config", write_config(folder, seed=7, dataset={
            "name": "mvtec", "root": str(DATA_ROOT), "category": CATEGORY, "resize": [64, 64],
            "limit_train": 20, "limit_test": 30, "input_mode": mode}))
        report = json.loads((folder / "run" / "categories" / CATEGORY / "report.json").read_text())
        assert report["counts"] == {"fit": 20, "holdout": 0, "test": 30}  # cross-fitted: every train image fits
        per_image = (folder / "run" / "categories" / CATEGORY / "per_image.jsonl").read_text().splitlines()
        scores[name] = [(r["path"], r["score"]) for r in map(json.loads, per_image)]
    assert scores["a"] == scores["b"] == scores["c"]
