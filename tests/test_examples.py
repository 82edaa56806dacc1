"""examples/configs: one template per recipe, each one a valid config, and the seed's defects-ROI template run
for real on shared data through the deploy flow (train with --export-infer-config, infer with --defects)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import PROJECT_ROOT, require_data
from pyimgano.cli.train import main as train_main
from pyimgano.recipes import RECIPES

EXAMPLES = PROJECT_ROOT / "examples" / "configs"
TEMPLATES = sorted(EXAMPLES.glob("*.json"))


def test_every_runnable_recipe_has_a_template():
    recipes = {json.loads(path.read_text())["recipe"] for path in TEMPLATES}
    assert recipes == {recipe.name for recipe in RECIPES.values() if not recipe.placeholder}
    assert (EXAMPLES / "industrial_adapt_defects_roi.json").is_file()  # the name the seed gives


@pytest.mark.parametrize("template", TEMPLATES, ids=[path.stem for path in TEMPLATES])
def test_each_template_is_a_valid_config(template):
    result = CliRunner().invoke(train_main, ["--config", str(template), "--dry-run"])
    assert result.exit_code == 0, result.output
    # Every value the template writes is used as written (nothing silently replaced by recipe defaults).
    assert_used_as_written(json.loads(template.read_text()), json.loads(result.output), "")


def assert_used_as_written(written, resolved, path: str) -> None:
    if isinstance(written, dict):
        for key, value in written.items():
            assert_used_as_written(value, resolved[key], f"{path}.{key}".lstrip("."))
    else:
        assert written == resolved, path


@pytest.mark.realdata
def test_the_defects_roi_template_runs_the_deploy_flow_on_real_data(tmp_path):
    pytest.importorskip("torch")
    from pyimgano.cli.infer import main as infer_main

    root = require_data("piped_flr01").parent
    run = tmp_path / "run"
    result = CliRunner().invoke(train_main, [
        "--config", str(EXAMPLES / "industrial_adapt_defects_roi.json"), "--root", str(root),
        "--category", "piped_flr01", "--device", "cpu", "--output-dir", str(run), "--export-infer-config"])
    assert result.exit_code == 0, result.output
    report = json.loads((run / "categories" / "piped_flr01" / "report.json").read_text())
    assert report["metrics"]["image"]["auroc"] >= 0.95

    records_path, masks = tmp_path / "records.jsonl", tmp_path / "masks"
    inputs = root / "piped_flr01" / "test"
    result = CliRunner().invoke(infer_main, [
        "--from-run", str(run), "--infer-config", str(run / "artifacts" / "infer_config.json"), "--defects",
        "--input", str(inputs / "impurity"), "--save-jsonl", str(records_path), "--save-masks", str(masks)])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in records_path.read_text().splitlines()]
    flagged = [record for record in records if record["label"] == 1]
    assert len(flagged) >= 0.9 * len(records)
    # The template's ROI (the central 80% of the image) holds every region, and its masks are written.
    for record in flagged:
        height, width = record["image_size"]
        for region in record["defects"]["regions"]:
            x0, y0, x1, y1 = region["bbox_xyxy"]
            assert x0 >= 0.1 * width - 1 and y0 >= 0.1 * height - 1
            assert x1 <= 0.9 * width + 1 and y1 <= 0.9 * height + 1
        assert Path(record["defects"]["mask_path"]).stat().st_size > 0
    assert np.mean([record["defects"]["located"] for record in flagged]) >= 0.8
