"""anomalib checkpoints imported (`vision_anomalib_checkpoint`), against a real anomalib 2.7 PatchCore
checkpoint (../shared/anomalib/piped_flr01: anomalib's raw scores and maps for all 64 test images) on the
real images (../shared/data/defects); skips where either is absent.

Measured: the bundle's scores and maps equal anomalib's, the workbench run exports a bundle that passes
parity and scores on the edge as the run did; a checkpoint naming any other pickled global is refused
before anything in it runs (a marker its code would write stays absent). PaDiM, for which no anomalib
checkpoint exists here, is checked on a checkpoint in anomalib's layout written below and against
anomalib's PaDiM scoring transcribed from its source (models/image/padim/torch_model.py, anomaly_map.py).
"""

from __future__ import annotations

import collections
import csv
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DATA_ROOT, PROJECT_ROOT, require_data
from pyimgano.cli.train import main as train_main
from pyimgano.runtime.exit_codes import ExitCode

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytestmark = pytest.mark.realdata

import torch.nn.functional as F  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

FIXTURE = (PROJECT_ROOT / ".." / "shared" / "anomalib" / "piped_flr01").resolve()
CHECKPOINT = FIXTURE / "model.ckpt"
CATEGORY = "piped_flr01"
# The PIPED images are 128x128: the bundle takes them as they are and resizes to the checkpoint's 256x256
# inside the graph, in float, as anomalib's pre-processor does (a uint8 resize on the host would not).
INPUT_HW = (128, 128)
SCRIPTS = Path(sys.executable).parent
EDGE_PYTHON = PROJECT_ROOT / ".venv-edge" / "bin" / "python"


def require_fixture() -> Path:
    require_data(CATEGORY)
    if not CHECKPOINT.is_file():
        pytest.skip(f"anomalib fixture not available at {FIXTURE}")
    return CHECKPOINT


@pytest.fixture(scope="module")
def anomalib_reference() -> dict:
    """anomalib's raw image scores and 256x256 maps, by absolute image path, in the CSV's order."""
    require_fixture()
    with open(FIXTURE / "anomalib_scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    with np.load(FIXTURE / "anomalib_maps.npz", allow_pickle=False) as data:
        maps = {str(name): data["maps"][index].astype(np.float32) for index, name in enumerate(data["images"])}
    paths = [(DATA_ROOT / row["image"]).resolve() for row in rows]
    return {
        "paths": paths,
        "scores": np.array([float(row["raw_pred_score"]) for row in rows]),
        "labels": np.array([int(row["label"]) for row in rows]),
        "maps": np.stack([maps[row["image"]] for row in rows]),
    }


def build(checkpoint: Path, input_hw=INPUT_HW):
    from pyimgano.config import ModelConfig
    from pyimgano.models.registry import get_model
    from pyimgano.runtime.images import InputContract

    config = ModelConfig(name="vision_anomalib_checkpoint", checkpoint_path=str(checkpoint), device="cpu")
    return get_model(config.name).build(config, InputContract(*input_hw), 0, torch.device("cpu"))


def read_images(paths) -> np.ndarray:
    from pyimgano.runtime.images import read_rgb

    return np.stack([read_rgb(path) for path in paths])


def relative_map_error(maps: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per image: the largest absolute difference relative to the reference map's maximum."""
    return np.abs(maps - reference).reshape(len(maps), -1).max(axis=1) / reference.reshape(len(maps), -1).max(axis=1)


def write_config(tmp_path: Path, **model) -> Path:
    config = {
        "recipe": "industrial-adapt",
        "seed": 0,
        "dataset": {"name": "mvtec", "root": str(DATA_ROOT), "category": CATEGORY, "resize": list(INPUT_HW),
                    "limit_train": 8, "limit_test": 16},
        "model": {"name": "vision_anomalib_checkpoint", "device": "cpu", "checkpoint_path": str(CHECKPOINT), **model},
        "calibration": {"strategy": "holdout"},
        "adaptation": {"save_maps": True},
        "output": {"output_dir": str(tmp_path / "run")},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def dry_run(tmp_path: Path, **model):
    return CliRunner().invoke(train_main, ["--config", str(write_config(tmp_path, **model)), "--dry-run"])


# --------------------------------------------------------------------------- agreement with anomalib


@pytest.mark.parametrize("mode,antialias", [("bilinear", True), ("bilinear", False), ("bicubic", True),
                                            ("nearest", False)])
def test_resize_matrices_are_torchs_interpolate(mode, antialias):
    """The graph's resizes are matrices found by pushing the identity through F.interpolate: equal to the 2-D op,
    up and down, on non-square sizes."""
    from pyimgano.models.anomalib_graph import resample_matrix

    for (h, w), (out_h, out_w) in (((128, 96), (256, 200)), ((256, 256), (128, 100)), ((32, 32), (256, 256))):
        x = torch.rand(2, 3, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        extra = {"align_corners": False} if mode != "nearest" else {}
        expected = F.interpolate(x, size=(out_h, out_w), mode=mode, antialias=antialias, **extra)
        got = resample_matrix(h, out_h, mode, antialias) @ x @ resample_matrix(w, out_w, mode, antialias).t()
        assert (got - expected).abs().max() <= 1e-12


def test_map_matrices_are_anomalibs_upsampling_and_blur():
    """anomalib's PatchCore map (F.interpolate nearest, then the checkpoint's 33x33 kernel with reflected borders)
    against the folded matrices, on a random grid."""
    from pyimgano.models.anomalib_format import read_checkpoint
    from pyimgano.models.anomalib_graph import AnomalibMaps

    kernel = read_checkpoint(require_fixture()).arrays()["anomaly_map_generator.blur.kernel"]
    grid = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = F.conv2d(F.pad(F.interpolate(grid, size=(256, 256)), (16, 16, 16, 16), mode="reflect"),
                        torch.from_numpy(kernel))[:, 0]
    maps = AnomalibMaps((32, 32), (256, 256), (256, 256), "nearest", kernel)
    assert (maps(grid) - expected).abs().max() / expected.abs().max() <= 1e-5
    assert (maps.at_model_size(grid) - expected).abs().max() / expected.abs().max() <= 1e-5


def test_import_reproduces_anomalib_at_its_own_resolution(anomalib_reference):
    """Scores and maps at the checkpoint's 256x256, where anomalib's maps are: no resize in between."""
    detector = build(require_fixture())
    chosen = np.r_[0:4, 16:20]  # four good, four impurity
    scores, maps = detector.anomalib_outputs(read_images([anomalib_reference["paths"][i] for i in chosen]))
    reference = anomalib_reference["scores"][chosen]
    assert maps.shape == (len(chosen), 256, 256)
    score_error = np.abs(scores - reference) / reference
    map_error = relative_map_error(maps, anomalib_reference["maps"][chosen])
    print(f"\nat 256x256: max relative score difference {score_error.max():.2e}, map {map_error.max():.2e}")
    assert score_error.max() <= 1e-3
    # anomalib's maps are stored as float16 (relative rounding 4.9e-4): the bound is the file's precision.
    assert map_error.max() <= 1e-3


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One workbench run with the checkpoint and --export-bundle (pyimgano-train, a real process)."""
    require_fixture()
    workdir = tmp_path_factory.mktemp("anomalib-run")
    config = write_config(workdir)
    result = subprocess.run([SCRIPTS / "pyimgano-train", "--config", config, "--export-bundle", workdir / "bundles"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    [archive] = (workdir / "bundles").glob("*.zip")
    category_dir = workdir / "run" / "categories" / CATEGORY
    return {
        "workdir": workdir,
        "archive": archive,
        "manifest": json.loads((archive.with_suffix("") / "manifest.json").read_text()),
        "report": json.loads((category_dir / "report.json").read_text()),
        "per_image": {Path(r["path"]).resolve(): r
                      for r in map(json.loads, (category_dir / "per_image.jsonl").read_text().splitlines())},
    }


def test_bundle_reproduces_anomalib_on_every_test_image(trained, anomalib_reference):
    """The exported bundle (ONNX Runtime, torch-free) on all 64 test images against anomalib's raw outputs.
    Maps are compared at the bundle's 128x128: anomalib's 256x256 maps are brought there by the operator the
    graph itself ends with (antialiased bilinear, a fixed linear map), so both sides are the same quantity."""
    from pyimgano.models.anomalib_graph import OUTPUT_RESIZE, resample_matrix
    from pyimgano.runtime import Inspector

    inspected = Inspector(trained["archive"], device="cpu").inspect(anomalib_reference["paths"])
    scores = np.array([result.score for result in inspected])
    reference = anomalib_reference["scores"]
    score_error = np.abs(scores - reference) / reference
    rho = spearmanr(scores, reference).statistic
    rows = resample_matrix(256, INPUT_HW[0], *OUTPUT_RESIZE).numpy()
    cols = resample_matrix(256, INPUT_HW[1], *OUTPUT_RESIZE).numpy()
    reference_maps = rows @ anomalib_reference["maps"].astype(np.float64) @ cols.T
    map_error = relative_map_error(np.stack([result.map for result in inspected]), reference_maps)
    print(f"\nbundle vs anomalib, {len(scores)} images: Spearman {rho:.6f}, max relative score difference "
          f"{score_error.max():.2e}, map {map_error.max():.2e}")
    assert rho >= 0.999
    assert score_error.max() <= 1e-3
    assert map_error.max() <= 1e-3
    # The run's own (torch) scores of its test images agree likewise.
    by_path = dict(zip(anomalib_reference["paths"], reference))
    run_error = [abs(r["score"] - by_path[path]) / by_path[path] for path, r in trained["per_image"].items()]
    assert len(run_error) == 16 and max(run_error) <= 1e-3


def test_run_calibrates_exports_and_infers_on_the_edge(trained, tmp_path):
    report, manifest = trained["report"], trained["manifest"]
    # Nothing fitted here: every train/good image (8 of them, limit_train) calibrated the thresholds.
    assert report["counts"] == {"fit": 0, "holdout": 8, "test": 16}
    assert report["calibration"]["strategy"] == "holdout" and report["thresholds"]["image"]["count"] == 8
    assert report["model"]["imported_from"]["sha256"] == manifest["model"]["imported_from"]["sha256"]
    assert manifest["model"]["anomalib_model"] == "patchcore" and manifest["model"]["memory_bank_rows"] == 3276
    parity = manifest["parity"]
    assert parity["max_rel_score_diff"] <= 1e-3 and parity["labels_identical"] and parity["images"] == 16

    # pyimgano-infer from the edge install (no torch), where there is one.
    python = EDGE_PYTHON if EDGE_PYTHON.is_file() else Path(sys.executable)
    records_path = tmp_path / "records.jsonl"
    result = subprocess.run([python, "-m", "pyimgano.cli.infer", "--bundle", trained["archive"], "--input",
                             DATA_ROOT / CATEGORY / "test", "--save-jsonl", records_path, "--batch-size", "8"],
                            capture_output=True, text=True)
    assert result.returncode == ExitCode.OK, result.stderr
    records = {Path(r["input"]).resolve(): r for r in map(json.loads, records_path.read_text().splitlines())}
    assert len(records) == 64
    run = trained["per_image"]
    relative = np.array([abs(records[path]["score"] - r["score"]) / r["score"] for path, r in run.items()])
    print(f"\nedge ({python.parent.parent.name}) vs workbench: max relative score difference {relative.max():.2e}")
    assert relative.max() <= 1e-5
    assert all(records[path]["label"] == r["label"] for path, r in run.items())


# --------------------------------------------------------------------------- refusals


def _leave_marker(path: str) -> None:
    Path(path).write_text("the checkpoint's code ran")


class MarkerDict(collections.OrderedDict):
    """A state_dict whose unpickling would call _leave_marker: code the file chooses."""

    marker = ""

    def __reduce__(self):
        return (_leave_marker, (self.marker,))


def test_a_checkpoint_with_another_pickled_global_is_refused_unexecuted(tmp_path):
    require_fixture()
    marker = tmp_path / "marker.txt"
    state = MarkerDict()
    state.marker = str(marker)
    hostile = tmp_path / "hostile.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": "mobilenetv2_100"}}, hostile)

    result = dry_run(tmp_path, checkpoint_path=str(hostile))
    assert result.exit_code == ExitCode.DATA_ERROR
    assert (f"checkpoint refused: {hostile}: the checkpoint pickles the global {__name__}._leave_marker, which is "
            "not allow-listed") in result.output
    assert "it was not imported or executed" in result.output
    assert not marker.exists() and not (tmp_path / "run").exists()
    # The file is live: an unrestricted load runs its code (which is why nothing else may load it).
    torch.load(hostile, weights_only=False)
    assert marker.read_text() == "the checkpoint's code ran"


def test_files_that_are_not_anomalib_checkpoints_are_refused(tmp_path):
    require_fixture()
    image = sorted((DATA_ROOT / CATEGORY / "test" / "good").iterdir())[0]
    bundle_like = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle_like, "w") as archive:
        archive.writestr("bundle/manifest.json", "{}")
    other_model = tmp_path / "other.ckpt"
    torch.save({"state_dict": collections.OrderedDict(
        {"model.encoder.weight": torch.zeros(2, 2)}), "hyper_parameters": {"backbone": "resnet18"}}, other_model)
    cases = {
        image: "not a torch checkpoint (not a zip archive",
        bundle_like: "not a torch checkpoint (no single <archive>/data.pkl in the zip)",
        other_model: "not an anomalib PatchCore or PaDiM checkpoint this import reproduces",
        tmp_path / "missing.ckpt": "missing.ckpt: no such file",
    }
    for path, message in cases.items():
        result = dry_run(tmp_path, checkpoint_path=str(path))
        assert result.exit_code == ExitCode.DATA_ERROR, (path, result.output)
        assert message in result.output and result.output.startswith("checkpoint refused: "), result.output


def rewritten(path: Path, **hyper) -> Path:
    """The fixture checkpoint saved again (torch.save) with some hyper-parameters changed."""
    from pyimgano.models.anomalib_format import read_checkpoint

    source = read_checkpoint(require_fixture())
    tree = source.archive.tree
    state = collections.OrderedDict(
        (name, torch.from_numpy(value)) for name, value in source.archive.arrays(dict(tree["state_dict"])).items())
    hyper_parameters = {**{k: str(v) if k == "precision" else v for k, v in tree["hyper_parameters"].items()}, **hyper}
    torch.save({"state_dict": state, "hyper_parameters": hyper_parameters,
                "anomalib_pre_processor_config": tree["anomalib_pre_processor_config"]}, path)
    return path


def test_unsupported_backbones_are_refused(tmp_path):
    vit = rewritten(tmp_path / "vit.ckpt", backbone="vit_small_patch16_224")
    result = dry_run(tmp_path, checkpoint_path=str(vit))
    assert result.exit_code == ExitCode.DATA_ERROR
    assert "backbone 'vit_small_patch16_224' is a transformer; only timm CNN backbones" in result.output
    # Another CNN under the same weights: found when timm builds it, before the run directory exists.
    resnet = rewritten(tmp_path / "resnet.ckpt", backbone="resnet18", layers=["layer2", "layer3"])
    result = CliRunner().invoke(train_main, ["--config", str(write_config(tmp_path, checkpoint_path=str(resnet)))])
    assert result.exit_code == ExitCode.DATA_ERROR
    assert f"checkpoint refused: {resnet}: the checkpoint's backbone weights do not fit timm's resnet18" in result.output
    assert not (tmp_path / "run").exists()


def test_config_refusals_before_anything_is_written(tmp_path):
    require_fixture()
    missing = CliRunner().invoke(train_main, ["--config", str(write_config(tmp_path, checkpoint_path=None)), "--dry-run"])
    assert missing.exit_code == ExitCode.USAGE and "model.checkpoint_path: vision_anomalib_checkpoint imports" in missing.output
    config = json.loads(write_config(tmp_path).read_text())
    config["calibration"] = {"strategy": "cross_fit"}
    path = tmp_path / "cross_fit.json"
    path.write_text(json.dumps(config))
    cross_fit = CliRunner().invoke(train_main, ["--config", str(path)])
    assert cross_fit.exit_code == ExitCode.USAGE
    assert "calibration.strategy: cross_fit refits the model on folds" in cross_fit.output
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", ["vision_patchcore_anomalib", "vision_padim_anomalib"])
def test_training_through_anomalib_names_the_package_where_it_is_missing(tmp_path, name):
    import importlib.util

    if importlib.util.find_spec("anomalib") is not None:
        pytest.skip("anomalib is installed here")
    config = json.loads(write_config(tmp_path).read_text())
    config["model"] = {"name": name, "device": "cpu"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    for flags in (["--dry-run"], []):
        result = CliRunner().invoke(train_main, ["--config", str(path), *flags])
        assert result.exit_code == ExitCode.USAGE
        assert f"config error: model.name: {name} trains through anomalib, which is not installed: pip install " \
               "anomalib" in result.output
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- PaDiM


def anomalib_padim_reference(backbone, layers, index, mean, inv_cov, kernel, images: np.ndarray):
    """anomalib 2.x PaDiM's inference, transcribed: pre-processor Resize(256, antialias) + Normalize, timm
    features, later layers resized nearest, idx kept, Mahalanobis, bilinear to 256, blur, score = max."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    x = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        features = dict(zip(layers, backbone(x)))
        embedding = features[layers[0]]
        for layer in layers[1:]:
            embedding = torch.cat((embedding, F.interpolate(features[layer], size=embedding.shape[-2:], mode="nearest")), 1)
        embedding = torch.index_select(embedding, 1, index)
        if mean is None:
            return embedding
        batch, channel, height, width = embedding.shape
        delta = (embedding.reshape(batch, channel, height * width) - mean).permute(2, 0, 1)
        distances = (torch.matmul(delta, inv_cov) * delta).sum(2).permute(1, 0).reshape(batch, 1, height, width)
        maps = F.interpolate(distances.clamp(0).sqrt(), size=(256, 256), mode="bilinear", align_corners=False)
        maps = F.conv2d(F.pad(maps, (16, 16, 16, 16), mode="reflect"), kernel)
    return torch.amax(maps, dim=(-2, -1))[:, 0].numpy(), maps[:, 0].numpy()


def test_padim_checkpoint_in_anomalibs_layout(tmp_path):
    """A PaDiM checkpoint as anomalib 2.7 writes one (the fixture's backbone weights, Gaussians fitted as
    anomalib's MultiVariateGaussian fits them), imported, scored as anomalib's PaDiM scores, and exported."""
    import timm

    from pyimgano.export.onnx_graph import export_graph, measure_parity
    from pyimgano.models.anomalib_format import read_checkpoint

    source = read_checkpoint(require_fixture())
    arrays = {name: torch.from_numpy(value) for name, value in source.arrays().items()}
    layers = ["blocks.2", "blocks.4", "blocks.6"]  # strides 8, 16, 32: two layers resized to the first's grid
    backbone = timm.create_model("mobilenetv2_100", pretrained=False, features_only=True, exportable=True,
                                 out_indices=[2, 3, 4])
    prefix = "feature_extractor.feature_extractor."
    backbone.load_state_dict({k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)})
    backbone.eval()
    index = torch.randperm(32 + 96 + 320, generator=torch.Generator().manual_seed(0))[:48]
    train = read_images(sorted((DATA_ROOT / CATEGORY / "train" / "good").iterdir())[:8])
    embedding = anomalib_padim_reference(backbone, layers, index, None, None, None, train)
    batch, channel, height, width = embedding.shape
    vectors = embedding.reshape(batch, channel, height * width).double()
    mean = vectors.mean(dim=0)
    centred = vectors - mean
    covariance = torch.einsum("bip,bjp->pij", centred, centred) / (batch - 1) + 0.01 * torch.eye(channel).double()
    inv_cov = torch.linalg.inv(covariance + 1e-5 * torch.eye(channel).double()).float()
    mean = mean.float()
    kernel = arrays["anomaly_map_generator.blur.kernel"]
    state = collections.OrderedDict({f"model.{prefix}{k}": v for k, v in backbone.state_dict().items()})
    state.update({"model.idx": index, "model.gaussian.mean": mean, "model.gaussian.inv_covariance": inv_cov,
                  "model.anomaly_map_generator.blur.kernel": kernel, "_is_fitted": torch.tensor([True])})
    tree = source.archive.tree
    padim = tmp_path / "padim.ckpt"
    torch.save({"state_dict": state, "pytorch-lightning_version": "2.6.6",
                "hyper_parameters": {"backbone": "mobilenetv2_100", "layers": layers, "pre_trained": False,
                                     "n_features": 48},
                "anomalib_pre_processor_config": tree["anomalib_pre_processor_config"]}, padim)

    detector = build(padim)
    assert detector.describe()["anomalib_model"] == "padim"
    paths = [sorted((DATA_ROOT / CATEGORY / "test" / kind).iterdir())[0] for kind in ("good", "impurity")]
    images = read_images(paths)
    reference_scores, reference_maps = anomalib_padim_reference(backbone, layers, index, mean, inv_cov, kernel, images)
    scores, maps = detector.anomalib_outputs(images)
    assert reference_scores[1] > reference_scores[0]
    assert (np.abs(scores - reference_scores) / reference_scores).max() <= 1e-4
    assert relative_map_error(maps, reference_maps).max() <= 1e-4
    onnx_path = tmp_path / "padim.onnx"
    export_graph(detector.graph(), *INPUT_HW, onnx_path)
    parity = measure_parity(detector.graph(), onnx_path, images, float(scores.mean()))
    assert parity["max_rel_score_diff"] <= 1e-3 and parity["labels_identical"]
