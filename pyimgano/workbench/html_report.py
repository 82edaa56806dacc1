"""report.html: a run drawn for the people who decide whether its model goes to the line (docs/REPORT.md).

One self-contained file: figures and overlays are base64 data URIs, the CSS is inline, there is no script and
nothing is fetched. Per category: metrics, the shipped threshold's rates on the test images (from the per-image
records), the thresholds with their provenance, ROC and precision-recall curves, the score histogram, a table
per defect type, timing, and galleries of the worst false rejects and misses with the overlays the line sees
(runtime.inference.overlay). Written by the training into the run before it is sealed
(`output.html_report`), and rebuilt from a finished run by `pyimgano-report`.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from pyimgano.config import WorkbenchConfig
from pyimgano.runtime.decision import decide
from pyimgano.runtime.images import ImageReadError, read_mask, read_rgb
from pyimgano.runtime.overlays import overlay, overlay_layout
from pyimgano.runtime.outputs import OutputError
from pyimgano.workbench import report_plots
from pyimgano.workbench.operating_point import clopper_pearson
from pyimgano.workbench.report_gallery import SCORE_TOLERANCE, Gallery, GalleryMap, galleries, load_maps, picked_indices
from pyimgano.workbench.run_directory import TOP_REPORT
from pyimgano.workbench.run_loader import RunError, load_run, read_json, run_context

REPORT_NAME = "report.html"
# Gallery overlays are photographs: JPEG at this quality is a sixth to a seventh of the PNG's size and keeps the
# banner text sharp enough to read.
JPEG_QUALITY = 90
# The ground-truth outline on gallery overlays (BGR): cyan, a colour the overlay uses for nothing else.
TRUTH_COLOUR = (255, 255, 0)


@dataclass(frozen=True)
class CategoryView:
    name: str
    report: dict  # categories/<name>/report.json
    records: list[dict]  # categories/<name>/per_image.jsonl


@dataclass(frozen=True)
class RunView:
    """What the report is drawn from. `run_dir` is where run-relative files are read (the staging folder while
    the training writes the run); `files` is the run's seal, None while the run is being written."""

    run_dir: Path
    top: dict
    config: WorkbenchConfig
    categories: tuple[CategoryView, ...]
    files: dict | None


def read_records(path: Path) -> list[dict]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return [json.loads(line) for line in lines if line.strip()]
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: not valid JSON lines ({exc})") from exc


def _records_path(run_dir: Path, name: str, report: dict) -> Path:
    if not report.get("per_image_jsonl"):
        raise RunError(f"{run_dir / 'categories' / name / 'report.json'}: the run kept no per-image records "
                       "(output.per_image_jsonl: false), which the report is drawn from")
    return run_dir / "categories" / name / report["per_image_jsonl"]


def staged_view(staging: Path, top: dict, config: WorkbenchConfig, reports: dict[str, dict]) -> RunView:
    """The run the training is writing, before it is sealed: its reports as written to disk (JSON types, as a
    rebuild reads them)."""
    written = {name: read_json(staging / "categories" / name / "report.json") for name in reports}
    categories = tuple(CategoryView(name, report, read_records(_records_path(staging, name, report)))
                       for name, report in written.items())
    return RunView(staging, top, config, categories, files=None)


def finished_view(run_dir: Path) -> RunView:
    """A finished run, every file the report reads checked against the run's seal."""
    top = read_json(run_dir / TOP_REPORT)
    categories, config = [], None
    for name in top.get("categories") or {}:  # in training order, as the training drew them
        config, _, report = load_run(run_dir, name)
        categories.append(CategoryView(name, report, read_records(_records_path(run_dir, name, report))))
    if config is None:
        raise RunError(f"{run_dir / TOP_REPORT}: the run holds no categories")
    return RunView(run_dir, top, config, tuple(categories), files=top["files"])


def write_report(view: RunView, out: Path, device: str = "auto") -> Path:
    """Writes the report to `out` whole (a temporary file beside it, then renamed) and returns `out`."""
    text = render(view, device)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, out)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutputError(f"{out}: write failed ({exc.strerror or exc})") from exc
    return out


# ------------------------------------------------------------------------------------------------ rendering

_e = html.escape


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name) or "category"


def _num(value, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_num(item, digits) for item in value) + "]"
    return _e(str(value))


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _rate(count: int, total: int) -> str:
    """`count of total = rate (95% CI low–high)`, the interval exact (Clopper-Pearson)."""
    if total == 0:
        return "– (none in the test split)"
    low, high = clopper_pearson(count, total)
    return f"{count} of {total} = {_pct(count / total)} (95% CI {_pct(low)}–{_pct(high)})"


def _table(rows: list[tuple], header: tuple | None = None, css: str = "") -> str:
    head = f"<thead><tr>{''.join(f'<th>{cell}</th>' for cell in header)}</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table class="{css}">{head}<tbody>{body}</tbody></table>'


def _pairs(pairs: list[tuple[str, str]]) -> str:
    return '<table class="pairs"><tbody>' + "".join(
        f"<tr><th>{_e(key)}</th><td>{value}</td></tr>" for key, value in pairs) + "</tbody></table>"


def _img(mime: str, data: bytes, alt: str, width: int, height: int) -> str:
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img src="{uri}" alt="{_e(alt)}" width="{width}" height="{height}">'


def _figure(png: bytes, alt: str) -> str:
    width, height = (int(round(v * report_plots.DPI)) for v in report_plots.SIZE_INCHES)
    return f'<figure class="plot">{_img("image/png", png, alt, width, height)}</figure>'


def _section(slug: str, key: str, title: str, body: str) -> str:
    return f'<section class="part" id="{slug}-{key}"><h3>{_e(title)}</h3>{body}</section>'


def _summary(cat: CategoryView) -> str:
    report = cat.report
    image, pixel = report["metrics"]["image"], report["metrics"]["pixel"] or {}
    model = report["model"]
    described = ", ".join(f"{_e(key)} {_num(value)}" for key, value in model.items()
                          if key not in ("name", "weights_sha256") and value is not None)
    counts = report["counts"]
    return _pairs([
        ("model", f"{_e(model['name'])} ({described})"),
        ("recipe", _e(str(report.get("recipe")))),
        ("images", f"{counts['fit']} fitted, {counts['holdout']} held out for calibration, {counts['test']} test"),
        ("image AUROC / AP", f"{_num(image.get('auroc'))} / {_num(image.get('ap'))}"),
        ("image precision / recall / F1 at the threshold",
         f"{_num(image['precision'])} / {_num(image['recall'])} / {_num(image['f1'])}"),
        ("pixel AUROC / AUPRO@0.3", f"{_num(pixel.get('auroc'))} / {_num(pixel.get('aupro_0.3'))}"
         + ("" if pixel else " (no ground-truth masks)")),
        ("trained", _e(str(report.get("timestamp_utc")))),
    ])


def _decision(cat: CategoryView) -> str:
    records, image = cat.records, cat.report["thresholds"]["image"]
    good = [r for r in records if r["truth"] == 0]
    defects = [r for r in records if r["truth"] == 1]
    rejected = sum(r["label"] for r in good)
    missed = sum(1 - r["label"] for r in defects)
    low, high = image["false_reject_rate_ci95"]
    measured = rejected / len(good) if good else None
    within = "" if measured is None else (
        " — the test rate lies inside it" if low <= measured <= high else
        ' — <strong class="warn">the test rate lies outside it</strong>')
    predicted = cat.report["decision"]["predicted_false_reject_rate"]
    return _pairs([
        ("image threshold", f"{_num(image['value'], 6)} (a part is a defect when its score is above it)"),
        ("false-reject rate on good test images", _rate(rejected, len(good))),
        ("miss rate on defect test images", _rate(missed, len(defects))),
        ("false-reject rate calibration predicts",
         f"{_pct(predicted)} (95% CI {_pct(low)}–{_pct(high)}){within}"),
    ])


def _threshold_pairs(record: dict) -> list[tuple[str, str]]:
    pairs = [
        ("value", _num(record["value"], 6)),
        ("method", _e(record["method"])),
        ("source", _e(record["source"])),
        ("target false-reject rate", _pct(record.get("target_false_reject_rate"))),
        ("normal values read", _num(record.get("count"))),
    ]
    if "false_reject_rate" in record:
        low, high = record["false_reject_rate_ci95"]
        pairs.append(("share of them above it", f"{_pct(record['false_reject_rate'])} (95% CI {_pct(low)}–{_pct(high)})"))
    if record.get("tail"):
        tail = record["tail"]
        pairs.append(("tail fit", f"{_e(tail['distribution'])}, {_e(tail['estimator'])}: u {_num(tail['threshold_u'])}, "
                                  f"scale {_num(tail['scale'])}, top {tail['exceedances']} of {tail['of']}"))
    if record.get("quantile") is not None:
        pairs.append(("quantile", _num(record["quantile"], 6)))
    if record.get("warning"):
        pairs.append(("warning", f'<strong class="warn">{_e(record["warning"])}</strong>'))
    return pairs


def _thresholds(cat: CategoryView) -> str:
    thresholds, calibration = cat.report["thresholds"], cat.report["calibration"]
    folds = f", {calibration['folds']} folds" if calibration.get("folds") else ""
    table = cat.report["decision"].get("threshold_table") or []
    rows = [(_pct(row["target"]), _num(row["threshold"], 6), _e(row["method"]),
             f"{row['out_of_fold_rejected']} = {_pct(row['out_of_fold_rate'])}",
             f"{_pct(row['ci95'][0])}–{_pct(row['ci95'][1])}") for row in table]
    return (
        f"<p>Calibration: <b>{_e(calibration['strategy'])}</b>{folds}; target false-reject rate "
        f"{_pct(calibration['target_false_reject_rate'])}; {len(calibration.get('normal_scores') or [])} normal scores "
        "stored for re-deriving a threshold (pyimgano-export --target-false-reject-rate).</p>"
        '<div class="columns">'
        f"<div><h4>Image threshold</h4>{_pairs(_threshold_pairs(thresholds['image']))}</div>"
        f"<div><h4>Pixel threshold (masks, regions, overlay colours)</h4>{_pairs(_threshold_pairs(thresholds['pixel']))}</div>"
        "</div>"
        + (f"<h4>Other operating points (no refit)</h4>{_table(rows, ('target false-reject rate', 'threshold', 'method', 'normal scores above', '95% CI'))}"
           if rows else "")
    )


def _curves(cat: CategoryView, truth: np.ndarray, scores: np.ndarray, threshold: float) -> str:
    if truth.min() == truth.max():
        return "<p>ROC and precision-recall need both good and defect test images; this split has one kind.</p>"
    return ('<div class="plots">' + _figure(report_plots.roc_png(truth, scores, threshold), f"ROC curve of {cat.name}")
            + _figure(report_plots.pr_png(truth, scores, threshold), f"precision-recall curve of {cat.name}") + "</div>")


def _histogram(cat: CategoryView, truth: np.ndarray, scores: np.ndarray, threshold: float) -> str:
    calibration = np.asarray(cat.report["calibration"].get("normal_scores") or [], dtype=np.float64)
    png = report_plots.histogram_png(scores[truth == 0], scores[truth == 1], threshold, calibration)
    return ('<div class="plots">' + _figure(png, f"score histogram of {cat.name}") + "</div>"
            "<p>Green: good test images; red: defect test images; blue outline: the normal scores the threshold was "
            "read from; dashed line: the threshold. Good images right of it are false rejects, defects left of it "
            "(or on it) are misses.</p>")


def _defect_types(cat: CategoryView) -> str:
    by_type: dict[str, list[dict]] = {}
    for record in cat.records:
        if record["truth"] == 1:
            by_type.setdefault(str(record.get("defect_type")), []).append(record)
    if not by_type:
        return "<p>The test split has no defect images.</p>"

    def row(name: str, group: list[dict]) -> tuple:
        detected = sum(r["label"] for r in group)
        scores = [r["score"] for r in group]
        return (_e(name), len(group), detected, len(group) - detected, _pct((len(group) - detected) / len(group)),
                _num(float(np.mean(scores))), _num(float(np.min(scores))))

    rows = [row(name, group) for name, group in sorted(by_type.items())]
    if len(by_type) > 1:
        rows.append(tuple(f"<b>{cell}</b>" for cell in row("all defects", [r for g in by_type.values() for r in g])))
    return _table(rows, ("defect type", "images", "detected", "missed", "miss rate", "mean score", "lowest score"),
                  css="numbers")


def _timing(cat: CategoryView) -> str:
    timing, counts, calibration = cat.report["timing"], cat.report["counts"], cat.report["calibration"]
    fitted = (f"fitting on {counts['fit']} images and scoring them out of fold ({calibration['folds']} folds)"
              if calibration["strategy"] == "cross_fit" else
              f"fitting on {counts['fit']} images and scoring {counts['holdout']} held-out ones")
    return _pairs([
        ("fit and calibration", f"{_num(timing['fit_seconds'])} s ({fitted})"),
        ("evaluation", f"{_num(timing['eval_seconds'])} s for {counts['test']} test images, "
                       f"{_num(timing['eval_images_per_second'])} images/s"),
    ])


def _card(view: RunView, cat: CategoryView, index: int, found: GalleryMap | None, pixel_threshold: float) -> str:
    record = cat.records[index]
    path = Path(record["path"])
    verdict = "DEFECT" if record["label"] else "OK"
    caption = (f"<b>{_e(path.name)}</b> · {_e(str(record.get('defect_type')))} · {verdict} "
               f"{_num(record['score'])} (thr {_num(record['threshold'])})")
    try:
        image = read_rgb(path)
    except ImageReadError as exc:
        return f'<figure class="card"><div class="missing">{_e(str(exc))}</div><figcaption>{caption}</figcaption></figure>'
    if found is None:
        return (f'<figure class="card"><div class="missing">no map for {_e(str(path))}</div>'
                f"<figcaption>{caption}</figcaption></figure>")
    notes = []
    if found.recomputed_score is not None:
        notes.append("map recomputed by the run's model")
        if abs(found.recomputed_score - record["score"]) > SCORE_TOLERANCE * max(1.0, abs(record["score"])):
            notes.append(f'<strong class="warn">it now scores {_num(found.recomputed_score)}: the file changed '
                         "since the run scored it</strong>")
    decision = decide(record["score"], found.anomaly_map, image.shape[:2], record["threshold"], view.config.defects,
                      pixel_threshold)
    picture = overlay(image, found.anomaly_map, pixel_threshold, decision)
    if record.get("mask_path"):
        try:
            _outline_truth(picture, read_mask(Path(record["mask_path"]), *image.shape[:2]))
            notes.append("cyan outline: the ground-truth defect")
        except ImageReadError as exc:
            notes.append(f"ground truth not shown: {_e(str(exc))}")
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise OutputError(f"{path}: its overlay could not be encoded as JPEG")
    regions = f" · {len(decision.regions)} region(s)" if decision.regions else ""
    shown = _img("image/jpeg", encoded.tobytes(), f"overlay of {path.name}", picture.shape[1], picture.shape[0])
    return (f'<figure class="card">{shown}<figcaption>{caption}{regions}<br><span class="path">{_e(str(path))}</span>'
            + "".join(f"<br>{note}" for note in notes) + "</figcaption></figure>")


def _outline_truth(picture: np.ndarray, mask: np.ndarray) -> None:
    """Draws the ground-truth mask's outline on an overlay's image area, dark under bright like its boxes: where
    the defect is, whatever the model said (a miss shows no colour there)."""
    layout = overlay_layout(mask.shape)
    scaled = cv2.resize(mask.astype(np.uint8), (layout.width, layout.image_height), interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(scaled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    area = picture[layout.image_rows]
    line = max(1, round(layout.width / 256))
    cv2.drawContours(area, contours, -1, (0, 0, 0), line + 2, cv2.LINE_AA)
    cv2.drawContours(area, contours, -1, TRUTH_COLOUR, line, cv2.LINE_AA)


def _gallery(view: RunView, cat: CategoryView, gallery: Gallery, found: dict[int, GalleryMap],
             pixel_threshold: float) -> str:
    cards = "".join(_card(view, cat, index, found.get(index), pixel_threshold) for index in gallery.indices)
    return f'<p>{_e(gallery.note)}</p><div class="gallery">{cards}</div>'


def _category(view: RunView, cat: CategoryView, device: str) -> str:
    slug = _slug(cat.name)
    truth = np.array([r["truth"] for r in cat.records], dtype=np.int64)
    scores = np.array([r["score"] for r in cat.records], dtype=np.float64)
    threshold = float(cat.report["thresholds"]["image"]["value"])
    context = run_context(f"run:{view.top.get('run_dir')}:{cat.name}", view.config, cat.report)
    pixel_threshold = context.pixel_threshold_for(view.config.defects)
    found = load_maps(view.run_dir, cat.name, cat.records, picked_indices(cat.records), view.files, device)
    false_rejects, misses = galleries(cat.records)
    parts = [
        _section(slug, "summary", "Summary", _summary(cat)),
        _section(slug, "decision", "Rates at the shipped threshold", _decision(cat)),
        _section(slug, "thresholds", "Thresholds and where they come from", _thresholds(cat)),
        _section(slug, "curves", "ROC and precision-recall", _curves(cat, truth, scores, threshold)),
        _section(slug, "histogram", "Score histogram", _histogram(cat, truth, scores, threshold)),
        _section(slug, "defect-types", "Per defect type", _defect_types(cat)),
        _section(slug, "timing", "Timing", _timing(cat)),
        _section(slug, false_rejects.key, false_rejects.title,
                 _gallery(view, cat, false_rejects, found, pixel_threshold)),
        _section(slug, misses.key, misses.title, _gallery(view, cat, misses, found, pixel_threshold)),
    ]
    return f'<section class="category" id="cat-{slug}"><h2>Category {_e(cat.name)}</h2>{"".join(parts)}</section>'


def _overview(view: RunView) -> str:
    rows = []
    for cat in view.categories:
        decision = cat.report["decision"]
        image, pixel = cat.report["metrics"]["image"], cat.report["metrics"]["pixel"] or {}
        rows.append((f'<a href="#cat-{_slug(cat.name)}">{_e(cat.name)}</a>', _num(image.get("auroc")),
                     _num(pixel.get("auroc")), _num(image["f1"]), _pct(decision["test_false_reject_rate"]),
                     _pct(decision["test_miss_rate"]), _num(decision["threshold"], 6)))
    top = view.top
    return (f"<p>Run <code>{_e(str(top.get('run_dir')))}</code> · recipe {_e(str(top.get('recipe')))} · device "
            f"{_e(str(top.get('device')))} · trained {_e(str(top.get('timestamp_utc')))} · pyimgano "
            f"{_e(str(top.get('pyimgano_version')))}</p>"
            + _table(rows, ("category", "image AUROC", "pixel AUROC", "image F1", "false-reject rate (test good)",
                            "miss rate (test defects)", "image threshold"), css="numbers"))


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#212121;
background:#f5f5f5;line-height:1.4}
header,main,footer{max-width:1280px;margin:0 auto;padding:0 16px}
header{padding-top:16px}
h1{margin:8px 0}
h2{margin:0 0 8px;padding:8px 0;border-bottom:2px solid #424242}
h3{margin:0 0 8px;font-size:1.1em}
h4{margin:8px 0 4px}
.category{background:#fff;border-radius:6px;padding:16px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.15)}
.part{margin:16px 0}
table{border-collapse:collapse;margin:4px 0;font-size:.92em}
th,td{border:1px solid #e0e0e0;padding:3px 8px;text-align:left;vertical-align:top}
thead th{background:#eeeeee}
table.pairs th{background:#fafafa;font-weight:600;white-space:nowrap}
table.numbers td{text-align:right}
table.numbers td:first-child{text-align:left}
.columns{display:flex;flex-wrap:wrap;gap:16px}
.columns>div{flex:1 1 480px}
.plots,.gallery{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}
.plot img{border:1px solid #e0e0e0;max-width:100%;height:auto}
.card{box-sizing:border-box;width:calc(25% - 9px);min-width:220px;background:#fafafa;border:1px solid #e0e0e0;border-radius:4px;padding:6px}
.card img{width:100%;height:auto;display:block}
.card figcaption{font-size:.85em;margin-top:4px}
.path{color:#757575;font-size:.9em;overflow-wrap:anywhere}
.missing{background:#ffebee;color:#b71c1c;padding:24px 8px;text-align:center}
.warn{color:#b71c1c}
code{background:#eeeeee;padding:0 4px}
"""


def render(view: RunView, device: str = "auto") -> str:
    categories = "".join(_category(view, cat, device) for cat in view.categories)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>pyimgano run report: {_e(str(view.top.get('run_dir')))}</title><style>{_CSS}</style></head><body>"
        f"<header><h1>Run report</h1>{_overview(view)}</header><main>{categories}</main>"
        "<footer><p>How to read this report, and what the overlay colours mean: docs/REPORT.md in pyimgano. "
        "Rebuild it with <code>pyimgano-report RUN</code>.</p></footer></body></html>\n"
    )
