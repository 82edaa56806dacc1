"""pyimgano-infer's defect and output flags, each checked on what it changes in the outputs.

Runs in-process through click's CliRunner on the synthetic edge bundle; marked `edge` (no torch needed).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from pyimgano.cli.infer import main
from pyimgano.runtime.defects import threshold_from_normal_quantiles
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.overlays import OVERLAY_MIN_SHORT_SIDE, overlay_layout

pytestmark = pytest.mark.edge
ROOT = Path(__file__).resolve().parents[1]


def run(edge_fixture, tmp_path: Path, *flags: str, inputs: str | None = None) -> tuple[list[dict], dict]:
    out = tmp_path / f"records-{abs(hash(flags))}.jsonl"
    summary = tmp_path / f"summary-{abs(hash(flags))}.json"
    source = inputs or str(edge_fixture["category_dir"] / "test" / "spot")
    result = CliRunner().invoke(main, ["--bundle", str(edge_fixture["bundle_dir"]), "--input", source,
                                       "--save-jsonl", str(out), "--summary-json", str(summary), *flags])
    assert result.exit_code in (ExitCode.OK, ExitCode.INPUT_ERRORS), result.output
    return [json.loads(line) for line in out.read_text().splitlines()], json.loads(summary.read_text())


def masks_of(records: list[dict]) -> list[np.ndarray]:
    return [cv2.imread(r["defects"]["mask_path"], cv2.IMREAD_GRAYSCALE) > 0 for r in records]


UNREFINED = ("--defect-region-peak-fraction", "0")


@pytest.fixture(scope="module")
def baseline(edge_fixture, tmp_path_factory):
    folder = tmp_path_factory.mktemp("baseline")
    # Morphology and filters are checked on unrefined regions (the peak refinement has its own test).
    records, _ = run(edge_fixture, folder, "--defects", "--save-masks", str(folder / "m"), *UNREFINED)
    assert sum(len(r["defects"]["regions"]) for r in records) > 0
    return records


def regions(records):
    return [region for record in records for region in record["defects"]["regions"]]


def test_records_and_summary_follow_the_published_schemas(edge_fixture, tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((edge_fixture["category_dir"] / "test" / "spot").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"not an image")
    records, summary = run(edge_fixture, tmp_path, "--defects", "--save-masks", str(tmp_path / "m"),
                           "--save-overlays", str(tmp_path / "o"), inputs=str(folder))
    record_schema = json.loads((ROOT / "docs" / "schemas" / "infer_record.schema.json").read_text())
    summary_schema = json.loads((ROOT / "docs" / "schemas" / "infer_summary.schema.json").read_text())
    for record in records:
        jsonschema.validate(record, record_schema)
    jsonschema.validate(summary, summary_schema)
    assert sum("error" in r for r in records) == 1 and summary["errors"] == 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": "x", "error": "bad", "score": 0.0}, record_schema)


def test_pixel_threshold_is_fixed(edge_fixture, tmp_path):
    records, _ = run(edge_fixture, tmp_path, "--defects", "--pixel-threshold", "123.5")
    assert {r["defects"]["pixel_threshold"] for r in records} == {123.5}
    assert regions(records) == []


def test_normal_pixel_quantile_strategy_reads_the_bundle_table(edge_fixture, tmp_path):
    manifest = json.loads((edge_fixture["bundle_dir"] / "manifest.json").read_text())
    table = manifest["thresholds"]["normal_pixel_quantiles"]
    records, _ = run(edge_fixture, tmp_path, "--defects", "--pixel-threshold-strategy", "normal_pixel_quantile",
                     "--pixel-normal-quantile", "0.99")
    expected = threshold_from_normal_quantiles(table, 0.99)
    assert {r["defects"]["pixel_threshold"] for r in records} == {expected}
    assert expected < manifest["thresholds"]["pixel"]["value"]  # the calibrated one is the 0.999 quantile


def test_mask_format_npy(edge_fixture, tmp_path):
    records, _ = run(edge_fixture, tmp_path, "--defects", "--mask-format", "npy", "--save-masks", str(tmp_path / "m"))
    for record in records:
        mask = np.load(record["defects"]["mask_path"])
        assert mask.dtype == bool and list(mask.shape) == record["image_size"]
        assert int(mask.sum()) == sum(r["area"] for r in record["defects"]["regions"])


def test_roi_keeps_regions_inside(edge_fixture, tmp_path, baseline):
    records, _ = run(edge_fixture, tmp_path, "--defects", "--roi-xyxy-norm", "0", "0", "0.5", "0.5")
    for record in records:
        height, width = record["image_size"]
        for region in record["defects"]["regions"]:
            x0, y0, x1, y1 = region["bbox_xyxy"]
            assert x1 <= width / 2 + 1 and y1 <= height / 2 + 1
    assert len(regions(records)) < len(regions(baseline))


def test_regions_refined_to_their_peaks_keep_a_subset_and_every_peak(edge_fixture, tmp_path, baseline):
    """The shipped refinement (the bundle's own defects block: 0.5) keeps, of each region, the pixels at least
    halfway from the pixel threshold to its peak: a subset of the unrefined mask holding every region's peak."""
    records, _ = run(edge_fixture, tmp_path, "--defects", "--save-masks", str(tmp_path / "m"))
    new, old = masks_of(records), masks_of(baseline)
    assert all((n & ~o).sum() == 0 for n, o in zip(new, old)) and sum(n.sum() for n in new) < sum(o.sum() for o in old)
    for record, unrefined in zip(records, baseline):
        assert {r["score_max"] for r in unrefined["defects"]["regions"]} <= {r["score_max"] for r in record["defects"]["regions"]}


@pytest.mark.parametrize(
    ("flags", "relation"),
    [
        (("--defect-border-ignore-px", "40"), "subset"),
        (("--defect-open-ksize", "7"), "subset"),
        (("--defect-close-ksize", "9"), "superset"),
        (("--defect-fill-holes",), "superset"),
        (("--defect-hysteresis-low", "-1e9"), "superset"),
        (("--defect-smooth", "median", "--defect-smooth-ksize", "5"), "different"),
        (("--defect-merge-gap-px", "40"), "same"),
    ],
)
def test_mask_flags(edge_fixture, tmp_path, baseline, flags, relation):
    records, _ = run(edge_fixture, tmp_path, "--defects", "--save-masks", str(tmp_path / "m"), *UNREFINED, *flags)
    new, old = masks_of(records), masks_of(baseline)
    if relation == "subset":
        assert all((n & ~o).sum() == 0 for n, o in zip(new, old)) and sum(n.sum() for n in new) < sum(o.sum() for o in old)
    elif relation == "superset":
        assert all((o & ~n).sum() == 0 for n, o in zip(new, old))
    elif relation == "different":
        assert any(not np.array_equal(n, o) for n, o in zip(new, old))
    else:  # merging changes regions, not pixels
        assert all(np.array_equal(n, o) for n, o in zip(new, old))
        assert len(regions(records)) <= len(regions(baseline))
    if flags[0] == "--defect-border-ignore-px":
        assert not any(m[:40].any() or m[-40:].any() or m[:, :40].any() or m[:, -40:].any() for m in new)


@pytest.mark.parametrize(
    ("flags", "keep"),
    [
        (("--defect-min-area", "200"), lambda r: r["area"] >= 200),
        (("--defect-min-score-max", "QMAX"), lambda r, v=None: True),
        (("--defect-min-fill-ratio", "0.5"),
         lambda r: r["area"] / ((r["bbox_xyxy"][2] - r["bbox_xyxy"][0]) * (r["bbox_xyxy"][3] - r["bbox_xyxy"][1])) >= 0.5),
        (("--defect-max-aspect-ratio", "2"),
         lambda r: max(r["bbox_xyxy"][2] - r["bbox_xyxy"][0], r["bbox_xyxy"][3] - r["bbox_xyxy"][1])
         / min(r["bbox_xyxy"][2] - r["bbox_xyxy"][0], r["bbox_xyxy"][3] - r["bbox_xyxy"][1]) <= 2),
        (("--defect-min-solidity", "0.9"), lambda r: True),
    ],
)
def test_region_filters(edge_fixture, tmp_path, baseline, flags, keep):
    if flags[1] == "QMAX":  # the median peak of the baseline regions: about half must go
        flags = (flags[0], str(float(np.median([r["score_max"] for r in regions(baseline)]))))
        keep = lambda r, v=float(flags[1]): r["score_max"] >= v  # noqa: E731
    records, _ = run(edge_fixture, tmp_path, "--defects", *UNREFINED, *flags)
    assert all(keep(region) for region in regions(records))
    assert len(regions(records)) <= len(regions(baseline))


def test_min_score_mean_and_max_regions_with_sort(edge_fixture, tmp_path, baseline):
    cut = float(np.median([r["score_mean"] for r in regions(baseline)]))
    records, _ = run(edge_fixture, tmp_path, "--defects", *UNREFINED, "--defect-min-score-mean", str(cut))
    assert all(r["score_mean"] >= cut for r in regions(records)) and len(regions(records)) < len(regions(baseline))
    records, _ = run(edge_fixture, tmp_path, "--defects", *UNREFINED, "--defect-max-regions", "1", "--defect-region-sort",
                     "area")
    for record, old in zip(records, baseline):
        assert len(record["defects"]["regions"]) <= 1
        if old["defects"]["regions"]:
            assert record["defects"]["regions"][0]["area"] == max(r["area"] for r in old["defects"]["regions"])


def test_explicit_flag_overrides_the_infer_config_block(edge_fixture, tmp_path, baseline):
    config = tmp_path / "infer_config.json"
    config.write_text(json.dumps({"defects": {"enabled": True, "min_area": 10**6}}))
    blocked, _ = run(edge_fixture, tmp_path, "--defects", "--infer-config", str(config))
    assert regions(blocked) == []
    overridden, _ = run(edge_fixture, tmp_path, "--defects", "--infer-config", str(config), "--defect-min-area", "0")
    assert len(regions(overridden)) == len(regions(baseline))


def test_regions_jsonl_and_overlays(edge_fixture, tmp_path, baseline):
    records, _ = run(edge_fixture, tmp_path, "--defects", "--defects-regions-jsonl", str(tmp_path / "regions.jsonl"),
                     "--save-overlays", str(tmp_path / "overlays"))
    lines = [json.loads(line) for line in (tmp_path / "regions.jsonl").read_text().splitlines()]
    assert len(lines) == len(regions(records)) and all({"input", "bbox_xyxy", "area"} <= set(line) for line in lines)
    for record in records:
        picture = cv2.imread(record["overlay_path"])
        # Upscaled for reading at the line, between a verdict banner and the colour legend (docs/REPORT.md).
        layout = overlay_layout(tuple(record["image_size"]))
        assert picture.shape == (layout.height, layout.width, 3)
        assert min(layout.width, layout.image_height) >= OVERLAY_MIN_SHORT_SIDE
        # Boxes: a pure green line inside a black outline, at the region's corner scaled to the picture.
        if record["defects"]["regions"]:
            x0, y0, _, _ = record["defects"]["regions"][0]["bbox_xyxy"]
            x, y = int(x0 * layout.scale), layout.banner + int(y0 * layout.scale)
            assert tuple(picture[y, x]) == (0, 255, 0)
            if x >= 2 and y >= layout.banner + 2:  # the outline just outside the corner, where it is in the image
                assert tuple(picture[y - 2, x - 2]) == (0, 0, 0)


def test_tiling_the_bundle_was_not_calibrated_for_is_refused(edge_fixture, tmp_path):
    """The issue's case: tiles 128 / stride 96 on a bundle calibrated on whole images marked 225 of 238 good
    images anomalous with no warning. Now it is refused by default, naming the flags and the bundle's setting."""
    result = CliRunner().invoke(main, ["--bundle", str(edge_fixture["bundle_dir"]), "--input",
                                       str(edge_fixture["category_dir"] / "test" / "good"), "--save-jsonl",
                                       str(tmp_path / "r.jsonl"), "--tile-size", "128", "--tile-stride", "96"])
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "--tile-size 128 --tile-stride 96" in result.output and "calibrated without tiling" in result.output
    assert not (tmp_path / "r.jsonl").exists() or not (tmp_path / "r.jsonl").read_text()


def test_uncalibrated_tiling_scores_and_says_so(edge_fixture, tmp_path):
    records, _ = run(edge_fixture, tmp_path, "--tile-size", "128", "--tile-stride", "96", "--tile-map-reduce", "hann",
                     "--uncalibrated-tiling")
    for record in records:
        assert record["map"]["shape"] == record["image_size"]  # tiled maps come back at the image's own size
        assert record["calibrated"] is False
    plain, _ = run(edge_fixture, tmp_path)
    assert all(p["map"]["shape"] == [256, 256] and "calibrated" not in p for p in plain)
    assert [r["score"] for r in records] != [p["score"] for p in plain]


def test_max_errors_and_stop_on_error(edge_fixture, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("a_broken.png", "b_broken.png", "c_broken.png"):
        (folder / name).write_bytes(b"junk")
    for path in sorted((edge_fixture["category_dir"] / "test" / "good").glob("*.png"))[:12]:
        (folder / f"z_{path.name}").write_bytes(path.read_bytes())
    records, summary = run(edge_fixture, tmp_path, "--batch-size", "2", "--max-errors", "2", inputs=str(folder))
    assert summary["stopped_early"] is True and summary["errors"] == 2 and len(records) == 2
    records, summary = run(edge_fixture, tmp_path, "--batch-size", "4", "--stop-on-error", inputs=str(folder))
    assert summary["stopped_early"] is True and summary["errors"] >= 1 and not any("score" in r for r in records)
    records, summary = run(edge_fixture, tmp_path, inputs=str(folder))
    assert summary["stopped_early"] is False and summary["errors"] == 3 and len(records) == 15


def test_defect_flags_need_defects(edge_fixture):
    result = CliRunner().invoke(main, ["--bundle", str(edge_fixture["bundle_dir"]), "--input",
                                       str(edge_fixture["category_dir"]), "--defect-min-area", "3"])
    assert result.exit_code == ExitCode.USAGE and "--defect-min-area need --defects" in result.output


def test_a_defect_across_a_tile_seam_is_one_region(edge_fixture, tmp_path):
    """1024x1024 texture (same scale as the 256-px training images once a 512 tile is resized to 256) with a
    dark spot centred on the seam at x = y = 512: tiles 512 / stride 384 with hann blending find it as one region."""
    from pyimgano.data.synthetic import SyntheticSpec, generate_dataset

    root = generate_dataset(tmp_path / "big", SyntheticSpec(image_size=1024, n_train=1, n_test_good=1, n_test_per_defect=1))
    image = cv2.imread(str(root / "test" / "good" / "000.png"))
    cv2.ellipse(image, (512, 512), (44, 30), 20, 0, 360, (40, 45, 60), -1)
    path = tmp_path / "seam.png"
    cv2.imwrite(str(path), image)
    records, _ = run(edge_fixture, tmp_path, "--tile-size", "512", "--tile-stride", "384", "--tile-map-reduce", "hann",
                     "--uncalibrated-tiling", "--defects", "--defect-min-area", "400", inputs=str(path))
    [record] = records
    assert record["label"] == 1
    hits = [r for r in record["defects"]["regions"]
            if r["bbox_xyxy"][0] <= 512 < r["bbox_xyxy"][2] and r["bbox_xyxy"][1] <= 512 < r["bbox_xyxy"][3]]
    assert len(hits) == 1
    x0, y0, x1, y1 = hits[0]["bbox_xyxy"]
    # The one region spans both sides of the seam in both directions.
    assert x0 < 512 - 20 and x1 > 512 + 20 and y0 < 512 - 10 and y1 > 512 + 10


def test_one_verdict_a_good_part_has_no_regions_and_the_summary_agrees(edge_fixture, tmp_path):
    """The issue's case: records that said OK while listing defect regions. Good and defect images together,
    with a pixel threshold low enough that good images' maps cross it too."""
    probe, _ = run(edge_fixture, tmp_path, "--batch-size", "4", inputs=str(edge_fixture["category_dir"] / "test" / "good"))
    low = str(float(np.quantile([r["map"]["max"] for r in probe], 0.5)))
    records, summary = run(edge_fixture, tmp_path, "--defects", "--pixel-threshold", low,
                           inputs=str(edge_fixture["category_dir"] / "test"))
    good = [r for r in records if r["label"] == 0]
    anomalous = [r for r in records if r["label"] == 1]
    assert good and anomalous
    assert all(r["defects"]["regions"] == [] and r["defects"]["located"] is None for r in good)
    assert all(r["defects"]["located"] is bool(r["defects"]["regions"]) for r in anomalous)
    assert summary["anomalous"] == len(anomalous)
    assert summary["anomalous_located"] == sum(r["defects"]["located"] for r in anomalous)
