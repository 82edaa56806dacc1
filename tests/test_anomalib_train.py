"""vision_patchcore_anomalib / vision_padim_anomalib trained for real, through anomalib 2.7.0 installed from the
package registry into a fresh virtual environment (this interpreter keeps no anomalib: tests/test_anomalib.py
checks the refusal there), on the real piped_flr01 images (../shared/data/defects).

The fresh environment is chained to this interpreter's packages, so torch, timm and pyimgano are this
interpreter's own and only anomalib and its dependencies are installed. `python -m venv` run from inside a
venv makes an environment of the base interpreter, and `--system-site-packages` then chains to the base's
site-packages, not this venv's; so a .pth file in the new site-packages calls `site.addsitedir` on ours
(addsitedir, not a bare path line, so that our own .pth files, the editable install among them, are read too).

Measured, per model: `pyimgano-train --export-bundle` run in that environment exits 0, records anomalib 2.7.0
and the ImageNet weights' sha256, reaches image AUROC >= 0.95, its bundle's torch-vs-ONNX parity is recorded
within its tolerance, and pyimgano-infer run by this interpreter scores all 64 test images as the run did
(within 1e-5 relative, same labels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from conftest import DATA_ROOT, require_data
from pyimgano.runtime.exit_codes import ExitCode

pytest.importorskip("torch", reason="training through anomalib needs torch in the running interpreter")
pytest.importorskip("timm", reason="training through anomalib needs timm in the running interpreter")
pytestmark = [pytest.mark.realdata, pytest.mark.registry]

ANOMALIB = "2.7.0"
CATEGORY = "piped_flr01"
INPUT_HW = (128, 128)
TEST_IMAGES = 64
# ONNX Runtime against torch on the same fp32 graph (measured here: 2.6e-6 at most).
EDGE_RTOL = 1e-5


def run(command: list, cwd: Path, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def chain_to_this_interpreter(python: Path, cwd: Path) -> None:
    """Makes this interpreter's site-packages visible to the venv of `python`, after the venv's own."""
    ours = list(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    theirs = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd, 60)
    assert theirs.returncode == 0, theirs.stderr
    line = "import site; " + "; ".join(f"site.addsitedir({path!r})" for path in ours)
    Path(theirs.stdout.strip(), "_pyimgano_parent_site.pth").write_text(line + "\n")


@pytest.fixture(scope="session")
def anomalib_python(tmp_path_factory) -> Iterator[Path]:
    """A fresh venv's python, chained to this interpreter, with anomalib==2.7.0 installed from the registry
    (pip's default cache, so a rerun downloads nothing)."""
    from pyimgano.models.backbones import get_backbone_spec
    from pyimgano.models.features import hub_checkpoint_dir

    require_data(CATEGORY)
    weights = hub_checkpoint_dir() / get_backbone_spec("mobilenet_v2").weights_file
    if not weights.is_file():
        pytest.skip(f"ImageNet mobilenet_v2 weights not at {weights} (../shared/WEIGHTS.md)")
    root = tmp_path_factory.mktemp("venv-anomalib")
    venv = root / "venv"
    created = run([sys.executable, "-m", "venv", venv], root, 300)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    chain_to_this_interpreter(python, root)
    installed = run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", f"anomalib=={ANOMALIB}"],
                    root, 900)
    assert installed.returncode == 0, installed.stderr[-4000:]
    probe = run([python, "-c", "import importlib.metadata as m, torch, pyimgano; "
                               "print(m.version('anomalib'), torch.__file__, pyimgano.__file__)"], root, 300)
    assert probe.returncode == 0, probe.stderr[-4000:]
    import torch

    import pyimgano

    # anomalib came in; torch and pyimgano stayed this interpreter's (pip installed no torch of its own).
    assert probe.stdout.split() == [ANOMALIB, torch.__file__, pyimgano.__file__]
    yield python
    # About 300 MB; pytest keeps its last three base temporary folders.
    shutil.rmtree(venv)


def write_config(workdir: Path, name: str) -> Path:
    config = {
        "recipe": "industrial-adapt",
        "seed": 0,
        "dataset": {"name": "mvtec", "root": str(DATA_ROOT), "category": CATEGORY, "resize": list(INPUT_HW)},
        # industrial-fast: PatchCore keeps 1% of the patches (64 bank rows), PaDiM 50 channels.
        "model": {"name": name, "device": "cpu", "preset": "industrial-fast"},
        "calibration": {"strategy": "holdout"},
        "output": {"output_dir": str(workdir / "run")},
    }
    path = workdir / "config.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("name", ["vision_patchcore_anomalib", "vision_padim_anomalib"])
def test_trained_through_anomalib_exports_a_bundle_that_scores_alike_on_the_edge(anomalib_python, tmp_path, name):
    from pyimgano.models.backbones import get_backbone_spec

    trained = run([anomalib_python, "-m", "pyimgano.cli.train", "--quiet", "--config", write_config(tmp_path, name),
                   "--export-bundle", tmp_path / "bundles"], tmp_path, 600)
    assert trained.returncode == ExitCode.OK, trained.stderr[-4000:]
    category_dir = tmp_path / "run" / "categories" / CATEGORY
    report = json.loads((category_dir / "report.json").read_text())
    assert report["model"]["name"] == name and report["model"]["anomalib_version"] == ANOMALIB
    # The backbone had torchvision's ImageNet mobilenet_v2 file (timm's mobilenetv2_100), not random weights.
    assert report["model"]["weights_sha256"].startswith(get_backbone_spec("mobilenet_v2").sha256_prefix)
    assert report["counts"]["test"] == TEST_IMAGES
    auroc = report["metrics"]["image"]["auroc"]

    [archive] = (tmp_path / "bundles").glob("*.zip")
    manifest = json.loads((archive.with_suffix("") / "manifest.json").read_text())
    parity = manifest["parity"]
    assert manifest["model"]["name"] == name
    assert parity["enforced"] and parity["labels_identical"] and parity["images"] > 0
    assert parity["max_rel_score_diff"] <= parity["rtol"]

    records_path = tmp_path / "records.jsonl"
    inferred = run([sys.executable, "-m", "pyimgano.cli.infer", "--quiet", "--bundle", archive, "--input",
                    DATA_ROOT / CATEGORY / "test", "--save-jsonl", records_path], tmp_path, 300)
    assert inferred.returncode == ExitCode.OK, inferred.stderr[-4000:]
    records = {os.path.realpath(r["input"]): r for r in map(json.loads, records_path.read_text().splitlines())}
    per_image = [json.loads(line) for line in (category_dir / "per_image.jsonl").read_text().splitlines()]
    assert len(records) == len(per_image) == TEST_IMAGES
    relative = np.array([abs(records[os.path.realpath(r["path"])]["score"] - r["score"]) / abs(r["score"])
                         for r in per_image])
    print(f"\n{name}: image AUROC {auroc:.4f}, pixel AUROC {report['metrics']['pixel']['auroc']:.4f}, parity "
          f"{parity['max_rel_score_diff']:.2e}, edge vs run max relative score difference {relative.max():.2e}")
    assert auroc >= 0.95
    assert relative.max() <= EDGE_RTOL
    assert all(records[os.path.realpath(r["path"])]["label"] == r["label"] for r in per_image)


def test_what_anomalib_would_get_wrong_is_refused_before_anything_is_written(anomalib_python, tmp_path):
    """A layer timm does not list (anomalib would drop it with a log warning, then fail on a KeyError): exit 2
    naming timm's layers. No ImageNet weights file (timm would try to download one, a minute of retries and a
    traceback here): exit 5 naming the file and the folder. Neither leaves a run directory."""
    config = json.loads(write_config(tmp_path, "vision_patchcore_anomalib").read_text())
    config["model"]["layers"] = ["blocks.2", "blocks.9"]
    bad_layer = tmp_path / "bad_layer.json"
    bad_layer.write_text(json.dumps(config))
    refused = run([anomalib_python, "-m", "pyimgano.cli.train", "--quiet", "--config", bad_layer], tmp_path, 300)
    assert refused.returncode == ExitCode.USAGE, refused.stderr[-4000:]
    assert ("config error: model.layers: ['blocks.9'] are not feature layers of timm's mobilenetv2_100 (it lists "
            "['blocks.0', 'blocks.1', 'blocks.2', 'blocks.4', 'blocks.6'])") in refused.stderr

    empty_hub = tmp_path / "torch-home"
    no_weights = run([anomalib_python, "-m", "pyimgano.cli.train", "--quiet", "--config",
                      write_config(tmp_path, "vision_padim_anomalib")], tmp_path, 300,
                     env={**os.environ, "TORCH_HOME": str(empty_hub)})
    assert no_weights.returncode == ExitCode.DATA_ERROR, no_weights.stderr[-4000:]
    assert (f"error: timm's mobilenetv2_100 is torchvision's mobilenet_v2: pretrained mobilenet_v2 weights not found: "
            f"expected the file mobilenet_v2-b0353104.pth in {empty_hub / 'hub' / 'checkpoints'}") in no_weights.stderr
    assert "Traceback" not in refused.stderr + no_weights.stderr
    assert not (tmp_path / "run").exists()
