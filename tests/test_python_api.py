"""The Python API: docs/PYTHON_API.md's examples run as written, and the Inspector gives the numbers
pyimgano-infer gives for the same images and bundle. Edge examples run in the torch-free environment too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import HAS_TORCH, PROJECT_ROOT
from pyimgano.runtime import Inspector
from pyimgano.runtime.images import ImageReadError

DOC = PROJECT_ROOT / "docs" / "PYTHON_API.md"
BLOCK = re.compile(r"<!-- example: (\w+) -->\n```python\n(.*?)```", re.S)


def examples(kind: str) -> list[str]:
    blocks = [code for tag, code in BLOCK.findall(DOC.read_text(encoding="utf-8")) if tag == kind]
    assert blocks, f"no {kind} examples in {DOC}"
    return blocks


@pytest.fixture()
def api_folder(edge_fixture, tmp_path) -> Path:
    """bundle.zip and images/ as the document describes them."""
    shutil.copy(edge_fixture["archive"], tmp_path / "bundle.zip")
    images = tmp_path / "images"
    images.mkdir()
    sources = sorted((edge_fixture["category_dir"] / "test").rglob("*.png"))[:3]
    for index, source in enumerate(sources):
        shutil.copy(source, images / f"{index:03d}.png")
    return tmp_path


def run_examples(kind: str, folder: Path) -> None:
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for code in examples(kind):
            exec(compile(code, f"{DOC.name}:{kind}", "exec"), {"__name__": "__doc_example__"})
    finally:
        os.chdir(cwd)


@pytest.mark.edge
def test_edge_examples_run_as_written(api_folder, capsys):
    run_examples("edge", api_folder)
    assert "normal_score_quantile" not in capsys.readouterr().err


@pytest.mark.edge
def test_inspector_equals_pyimgano_infer(edge_fixture, tmp_path):
    """Same bundle, same images: the same scores, labels and regions as the CLI's records."""
    paths = sorted((edge_fixture["category_dir"] / "test").rglob("*.png"))
    records_path = tmp_path / "records.jsonl"
    subprocess.run([sys.executable, "-m", "pyimgano.cli.infer", "--bundle", str(edge_fixture["archive"]),
                    "--input", str(edge_fixture["category_dir"] / "test"), "--save-jsonl", str(records_path),
                    "--defects", "--device", "cpu"], check=True, capture_output=True, timeout=600)
    records = {Path(r["input"]).resolve(): r for r in map(json.loads, records_path.read_text().splitlines())}
    inspector = Inspector(edge_fixture["archive"], device="cpu", defects=True)
    results = inspector.inspect(paths)
    assert len(results) == len(paths) == len(records)
    for path, result in zip(paths, results):
        record = records[path.resolve()]
        assert result.score == record["score"] and result.label == record["label"]
        assert result.regions == record["defects"]["regions"]
    assert {r.label for r in results} == {0, 1}


@pytest.mark.edge
def test_inspector_refuses_what_it_cannot_score(edge_fixture, tmp_path):
    inspector = Inspector(edge_fixture["archive"], device="cpu")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match="broken.png"):
        inspector.inspect(broken)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        inspector.inspect(np.zeros((64, 64), dtype=np.float32))


@pytest.mark.skipif(not HAS_TORCH, reason="the workbench examples need pyimgano[train]")
def test_workbench_examples_run_as_written(tmp_path):
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset

    generate_dataset(tmp_path / "data", SyntheticSpec(image_size=128, n_train=12, n_test_good=3, n_test_per_defect=3))
    run_examples("workbench", tmp_path)
    assert (tmp_path / "runs" / "api" / "report.json").is_file()
    assert list((tmp_path / "bundles").glob("*.zip"))
