"""The generated reference docs match the code they describe."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_are_current():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr



@pytest.mark.edge
def test_industrial_inference_describes_every_defects_key():
    import dataclasses

    from pyimgano.runtime.defects import DefectsConfig

    text = (ROOT / "docs" / "INDUSTRIAL_INFERENCE.md").read_text(encoding="utf-8")
    described = {line.split("`")[1] for line in text.splitlines() if line.startswith("| `")}
    assert described == {field.name for field in dataclasses.fields(DefectsConfig)}
