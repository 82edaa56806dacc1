"""The typed bundle manifest: the whole file parsed strictly at open, older 1.x bundles still open.

tests/golden/manifest-1.0-patchcore.json is what the 1.0 writer produced (the demo's bundle, kept
verbatim): every 1.x runtime must keep reading it. Marked `edge`: no torch needed.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyimgano.runtime.bundle import BundleError, open_bundle
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.manifest import (
    FORMAT_VERSION,
    MANIFEST_NAME,
    Manifest,
    ManifestError,
    manifest_to_json,
    parse_manifest,
    permitted_keys,
    required_keys,
)

pytestmark = pytest.mark.edge

GOLDEN = Path(__file__).parent / "golden" / "manifest-1.0-patchcore.json"


def golden() -> dict:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_the_golden_1_0_manifest_parses_and_round_trips():
    manifest = parse_manifest(golden())
    assert manifest.format_version == "1.0"
    assert manifest.thresholds.image.value == pytest.approx(1.152438998222351)
    assert manifest.thresholds.normal_pixel_quantiles.q[-1] == 0.99999
    assert manifest.input.height == manifest.input.width == 256
    assert manifest.model.backbone == "mobilenet_v2" and manifest.model.details["memory_bank_rows"] == 492
    assert manifest.defects.min_area == 0 and manifest.tiling is None
    # Written back, the 1.0 file gains only the optional keys later minors added, each at its default.
    written, original = flatten(manifest_to_json(manifest)), flatten(golden())
    added = {key: written[key] for key in set(written) - set(original)}
    assert {key: written[key] for key in original} == original
    threshold_keys = ("target_false_reject_rate", "false_reject_rate", "false_reject_rate_ci95", "tail", "warning")
    assert added == {**{f"thresholds.{kind}.{key}": None for kind in ("image", "pixel") for key in threshold_keys},
                     "defects.region_peak_fraction": None}
    assert parse_manifest(manifest_to_json(manifest)) == manifest


def flatten(data: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and value and key not in ("files",):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


@pytest.mark.parametrize(
    "where, misspelt, nearest",
    [
        (("defects",), "min_aera", "defects.min_area"),
        ((), "tresholds", "thresholds"),
        (("thresholds", "image"), "sorce", "thresholds.image.source"),
        (("input",), "heigth", "input.height"),
        (("parity",), "max_rel_score_dif", "parity.max_rel_score_diff"),
        (("onnx",), "opst", "onnx.opset"),
    ],
)
def test_a_misspelt_key_anywhere_is_refused_naming_its_path_and_the_nearest_key(where, misspelt, nearest):
    data = golden()
    section = data
    for key in where:
        section = section[key]
    section[misspelt] = 3
    with pytest.raises(ManifestError) as info:
        parse_manifest(data)
    message = str(info.value)
    assert f"'{'.'.join(where + (misspelt,))}'" in message and f"did you mean '{nearest}'" in message


@pytest.mark.parametrize("dotted", ["thresholds.image.value", "input", "files", "onnx.file", "parity.images"])
def test_a_missing_required_key_is_refused_by_name(dotted):
    data = golden()
    *parents, last = dotted.split(".")
    section = data
    for key in parents:
        section = section[key]
    del section[last]
    with pytest.raises(ManifestError, match=dotted.replace(".", r"\.")):
        parse_manifest(data)


def test_optional_keys_may_be_absent():
    """Required and optional are separate: a bundle without the optional keys still opens."""
    data = golden()
    del data["thresholds"]["normal_pixel_quantiles"]
    del data["map_postprocess"]["in_graph"]
    for key in ("rtol", "reference", "enforced"):
        del data["parity"][key]
    manifest = parse_manifest(data)
    assert manifest.thresholds.normal_pixel_quantiles is None and manifest.parity.enforced is True
    assert "tiling" in required_keys(Manifest) and required_keys(Manifest) <= permitted_keys(Manifest)


def test_wrong_types_are_refused_naming_the_path():
    data = golden()
    data["defects"]["min_area"] = "3"
    with pytest.raises(ManifestError, match=r"defects\.min_area: expected integer"):
        parse_manifest(data)
    data = golden()
    data["thresholds"]["pixel"]["value"] = True
    with pytest.raises(ManifestError, match=r"thresholds\.pixel\.value: expected number"):
        parse_manifest(data)


@pytest.mark.parametrize("version, opens", [("1.0", True), ("1.1", True), ("1.2", False), ("0.9", False), ("2.0", False),
                                             ("1", False)])
def test_format_versions(version, opens):
    """This runtime reads 1.0 up to its own minor; a newer minor's optional keys could not be checked."""
    assert FORMAT_VERSION == "1.1"
    data = copy.deepcopy(golden())
    data["format_version"] = version
    if opens:
        parse_manifest(data)
    else:
        with pytest.raises(ManifestError, match="format_version"):
            parse_manifest(data)


def test_a_hand_edited_misspelling_is_refused_at_open_with_exit_3(edge_fixture, tmp_path):
    """The issue's case: `"defects": {"min_aera": 3}` used to open, then fail later with a TypeError."""
    bundle = tmp_path / edge_fixture["bundle_dir"].name
    shutil.copytree(edge_fixture["bundle_dir"], bundle)
    manifest_path = bundle / MANIFEST_NAME
    data = json.loads(manifest_path.read_text())
    data["defects"]["min_aera"] = 3
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(BundleError, match=r"defects\.min_aera"):
        open_bundle(bundle)
    out = tmp_path / "out.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "pyimgano.cli.infer", "--bundle", str(bundle), "--input", str(edge_fixture["category_dir"]),
         "--save-jsonl", str(out), "--defects"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == ExitCode.BUNDLE_REFUSED
    assert "defects.min_aera" in result.stderr and "did you mean 'defects.min_area'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists() or out.read_text() == ""
