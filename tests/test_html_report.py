"""report.html (docs/REPORT.md): written into a tiny run by the training, rebuilt by pyimgano-report, rendered
in headless Chromium; and the overlay it shares with pyimgano-infer --save-overlays."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import DATA_ROOT, require_data
from headless_chromium import Chromium, find_chromium
from pyimgano.cli.report import main as report_main
from pyimgano.cli.train import main as train_main
from pyimgano.runtime.decision import Decision
from pyimgano.runtime.exit_codes import ExitCode
from pyimgano.runtime.overlays import OVERLAY_MIN_SHORT_SIDE, overlay, overlay_layout

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

CATEGORY = "synthetic_texture"
SECTIONS = ("summary", "decision", "thresholds", "curves", "histogram", "defect-types", "timing", "false-rejects",
            "misses")


def train(folder: Path, dataset: dict, **sections) -> Path:
    config = {"dataset": {"resize": [128, 128], **dataset}, "model": {"device": "cpu", "preset": "industrial-fast"},
              "output": {"output_dir": str(folder / "run")}}
    for key, value in sections.items():
        config[key] = {**config.get(key, {}), **value}
    path = folder / "cfg.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(train_main, ["--config", str(path)])
    assert result.exit_code == ExitCode.OK, result.output
    return folder / "run"


@pytest.fixture(scope="module")
def dataset(synthetic_dataset) -> Path:
    return synthetic_dataset


@pytest.fixture(scope="module")
def run(tmp_path_factory, dataset) -> Path:
    return train(tmp_path_factory.mktemp("trained"), {"root": str(dataset), "category": CATEGORY})


def records_of(run: Path, category: str = CATEGORY) -> list[dict]:
    return [json.loads(line) for line in (run / "categories" / category / "per_image.jsonl").read_text().splitlines()]


class Page(HTMLParser):
    """The ids, <img> sources and references (href/src/link/script) of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.ids, self.images, self.references, self.tags = set(), [], [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        self.references += [value for key, value in attrs.items() if key in ("href", "src") and value]


def check_self_contained(text: str, categories: list[str], gallery_images: int) -> Page:
    page = Page(text)
    # No network: nothing refers outside the file (":" is not in base64, so data URIs cannot hide a URL).
    assert not re.search(r"(?i)(https?|ftp)://", text)
    assert "script" not in page.tags and "link" not in page.tags and "url(" not in text
    assert all(ref.startswith(("data:image/", "#")) for ref in page.references), page.references[:3]
    for category in categories:
        missing = [key for key in SECTIONS if f"{category}-{key}" not in page.ids]
        assert not missing, f"{category}: sections {missing} missing"
    overlays = [img for img in page.images if img.get("alt", "").startswith("overlay of")]
    assert len(overlays) == gallery_images
    return page


def test_the_training_writes_a_self_contained_report_inside_the_sealed_run(run):
    top = json.loads((run / "report.json").read_text())
    assert top["report_html"] == "report.html" and "report.html" in top["files"]
    text = (run / "report.html").read_text(encoding="utf-8")
    # 4 good and 8 defect test images: both galleries are full (4 each), nothing else was picked.
    check_self_contained(text, [CATEGORY], gallery_images=8)
    saved = sorted((run / "artifacts" / "maps" / CATEGORY / "gallery").glob("*.npy"))
    assert len(saved) == 8 and not list((run / "artifacts" / "maps" / CATEGORY).glob("*.npy"))
    # The rates it states are the per-image records' own.
    records = records_of(run)
    good = [r for r in records if r["truth"] == 0]
    rejected = sum(r["label"] for r in good)
    assert f"{rejected} of {len(good)} = {100 * rejected / len(good):.1f}%" in text
    for defect_type in ("scratch", "spot"):
        group = [r for r in records if r["defect_type"] == defect_type]
        detected = sum(r["label"] for r in group)
        row = f"<td>{defect_type}</td><td>{len(group)}</td><td>{detected}</td><td>{len(group) - detected}</td>"
        assert row in text
    # Provenance: the calibration method and source, and the confidence interval of the threshold's rate.
    image = json.loads((run / "categories" / CATEGORY / "report.json").read_text())["thresholds"]["image"]
    assert image["method"] in text and image["source"] in text
    assert f"(95% CI {100 * image['false_reject_rate_ci95'][0]:.1f}%–{100 * image['false_reject_rate_ci95'][1]:.1f}%)" in text


def test_pyimgano_report_rebuilds_it_byte_for_byte_and_refuses_a_changed_map(run, tmp_path):
    rebuilt = subprocess.run([sys.executable, "-m", "pyimgano.cli.report", str(run), "--out", str(tmp_path / "r.html")],
                             capture_output=True, text=True)
    assert rebuilt.returncode == ExitCode.OK, rebuilt.stderr
    assert (tmp_path / "r.html").read_bytes() == (run / "report.html").read_bytes()

    changed = tmp_path / "run"
    shutil.copytree(run, changed)
    [first, *_] = sorted((changed / "artifacts" / "maps" / CATEGORY / "gallery").glob("*.npy"))
    np.save(first, np.zeros((128, 128), dtype=np.float32))
    refused = CliRunner().invoke(report_main, [str(changed), "--out", str(tmp_path / "x.html")])
    assert refused.exit_code == ExitCode.DATA_ERROR
    assert "run refused" in refused.output and first.name in refused.output and "changed since" in refused.output
    assert not (tmp_path / "x.html").exists()


def test_a_run_without_saved_maps_gets_them_from_its_model(tmp_path, dataset):
    run = train(tmp_path, {"root": str(dataset), "category": CATEGORY}, output={"html_report": False})
    assert not (run / "report.html").exists() and not (run / "artifacts").exists()
    result = CliRunner().invoke(report_main, [str(run), "--device", "cpu"])
    assert result.exit_code == ExitCode.OK, result.output
    text = (run / "report.html").read_text(encoding="utf-8")
    check_self_contained(text, [CATEGORY], gallery_images=8)
    # Recomputed by the run's own model: every card says so, and none found a score other than the recorded one.
    assert text.count("map recomputed by the run's model") == 8 and "now scores" not in text


def test_without_matplotlib_or_per_image_records_the_report_is_refused_before_training(tmp_path, dataset, run):
    config = {"dataset": {"root": str(dataset), "category": CATEGORY, "resize": [64, 64]},
              "model": {"device": "cpu"}, "output": {"output_dir": str(tmp_path / "never")}}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    # matplotlib made unimportable in a real process (a None entry in sys.modules makes `import` raise).
    hide = "import sys; sys.modules['matplotlib'] = None; sys.argv[0] = '{0}'; from pyimgano.cli.{0} import main; main()"
    for script, args in (("train", ["--config", str(tmp_path / "cfg.json")]), ("report", [str(run), "--out",
                                                                                          str(tmp_path / "r.html")])):
        result = subprocess.run([sys.executable, "-c", hide.format(script), *args], capture_output=True, text=True)
        assert result.returncode == ExitCode.USAGE, result.stderr
        assert "report.html needs matplotlib: pip install 'pyimgano[report]'" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "never").exists() and not (tmp_path / "r.html").exists()

    config["output"]["per_image_jsonl"] = False
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    refused = CliRunner().invoke(train_main, ["--config", str(tmp_path / "cfg.json")])
    assert refused.exit_code == ExitCode.USAGE and "output.html_report" in refused.output


def render(report: Path, tmp_path: Path) -> tuple[np.ndarray, object]:
    binary = find_chromium()
    if binary is None:
        pytest.skip("Debian's chromium is not installed (`make test` installs it: apt-get install chromium)")
    with Chromium(binary) as browser:
        visit = browser.visit(report.resolve().as_uri())
    (tmp_path / "screenshot.png").write_bytes(visit.screenshot_png)
    return cv2.imdecode(np.frombuffer(visit.screenshot_png, np.uint8), cv2.IMREAD_COLOR), visit


def check_rendering(report: Path, tmp_path: Path, expected_images: int) -> np.ndarray:
    shot, visit = render(report, tmp_path)
    assert visit.console_errors == []
    assert set(visit.requests) - {report.resolve().as_uri()} <= {u for u in visit.requests if u.startswith("data:")}
    assert len(visit.images) == expected_images
    assert all(img["complete"] and img["naturalWidth"] > 0 and img["naturalHeight"] > 0 for img in visit.images), \
        [img["alt"] for img in visit.images if not img["naturalWidth"]]
    # The whole page was captured, and it is a picture, not a blank: strong variation and many colours.
    assert shot.shape[0] == visit.content_size[1] and shot.shape[0] > 2000
    assert float(shot.astype(np.float32).std()) > 30.0
    quantised = (shot // 16).astype(np.int32)
    packed = (quantised[..., 0] << 8) | (quantised[..., 1] << 4) | quantised[..., 2]
    assert len(np.unique(packed)) > 200
    # The overlays' banners arrived: the red DEFECT and green OK backgrounds (BGR) are on the page.
    for colour in ((40, 40, 200), (60, 130, 40)):
        assert (np.abs(shot.astype(np.int16) - np.array(colour, np.int16)).sum(axis=-1) < 30).sum() > 1000
    return shot


def test_the_report_renders_in_headless_chromium(run, tmp_path):
    # 3 figures (ROC, PR, histogram) and 8 overlays.
    check_rendering(run / "report.html", tmp_path, expected_images=11)


def test_overlay_colours_only_what_is_above_the_pixel_threshold_and_writes_the_verdict(run):
    """On a defect image and its map from the run: normal areas are the image upscaled, every pixel above the
    pixel threshold is tinted, and the banner says DEFECT or OK."""
    records = records_of(run)
    record = next(r for r in records if r["truth"] == 1 and r.get("map"))
    anomaly_map = np.load(run / record["map"]["path"])
    from pyimgano.runtime.images import read_rgb

    image = read_rgb(Path(record["path"]))
    thresholds = json.loads((run / "categories" / CATEGORY / "report.json").read_text())["thresholds"]
    pixel, threshold = thresholds["pixel"]["value"], thresholds["image"]["value"]
    defect = overlay(image, anomaly_map, pixel, Decision(record["score"], 1, threshold))
    layout = overlay_layout(image.shape[:2])
    assert defect.shape == (layout.height, layout.width, 3) and layout.image_height >= OVERLAY_MIN_SHORT_SIDE

    size = (layout.width, layout.image_height)
    expected = cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_CUBIC)
    above = cv2.resize(anomaly_map, size, interpolation=cv2.INTER_LINEAR) > pixel
    shown = defect[layout.image_rows]
    assert 0.01 < above.mean() < 0.5  # a defect: some of the picture, not all of it
    assert np.array_equal(shown[~above], expected[~above])
    changed = np.any(shown[above] != expected[above], axis=-1)
    assert changed.mean() > 0.99
    # Tinted towards red: the red channel rises, blue falls where coloured.
    assert shown[above][:, 2].astype(int).mean() > expected[above][:, 2].astype(int).mean()
    assert shown[above][:, 0].astype(int).mean() < expected[above][:, 0].astype(int).mean()

    good = overlay(image, anomaly_map, pixel, Decision(1.0, 0, threshold))
    banner = slice(0, layout.banner)
    assert np.array_equal(good[layout.image_rows], shown)  # the verdict changes the banner only
    assert np.any(good[banner] != defect[banner], axis=-1).mean() > 0.5
    assert defect[banner][..., 2].mean() > defect[banner][..., 1].mean()  # red banner
    assert good[banner][..., 1].mean() > good[banner][..., 2].mean()  # green banner
    # The two texts differ too, not only the background: the white pixels are not in the same places.
    assert not np.array_equal(defect[banner].min(axis=-1) > 200, good[banner].min(axis=-1) > 200)
    # The legend shows the colour scale: the ramp's yellow and red, below the image.
    legend = defect[layout.banner + layout.image_height:].reshape(-1, 3).astype(int)
    for colour in ((0, 255, 255), (0, 0, 255)):
        assert (np.abs(legend - colour).sum(axis=-1) < 40).any()


@pytest.mark.realdata
def test_report_of_a_real_run_renders(tmp_path):
    """magnetic_tile: grayscale images of varied sizes and five defect types, on a 60/60 subset."""
    require_data("magnetic_tile")
    run = train(tmp_path, {"root": str(DATA_ROOT), "category": "magnetic_tile", "limit_train": 60,
                           "limit_test": 60})
    text = (run / "report.html").read_text(encoding="utf-8")
    records = records_of(run, "magnetic_tile")
    good = sum(r["truth"] == 0 for r in records)
    shown = min(4, good) + min(4, len(records) - good)
    check_self_contained(text, ["magnetic_tile"], gallery_images=shown)
    types = {r["defect_type"] for r in records if r["truth"] == 1}
    assert len(types) >= 3 and all(f"<td>{name}</td>" in text for name in types)
    check_rendering(run / "report.html", tmp_path, expected_images=3 + shown)
