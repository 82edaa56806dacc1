"""The galleries of report.html: which test images they show, and the maps their overlays are drawn from.

The picks are read from the per-image records alone, so the training, which saves the picked images' maps into
the run (`artifacts/maps/<category>/gallery/`, referenced by their per-image records as `map`), and a later
`pyimgano-report`, which draws from those files, pick the same images. Saving a handful of maps at training
time, rather than recomputing them when the report is drawn, keeps the overlays exactly the maps the run
evaluated (sealed with the run), needs no model to rebuild a report, and is the only way at training time:
the run is not sealed yet, so it cannot be opened as a run. A run without them (trained with
`output.html_report: false`, or before this) has its picks' maps recomputed by its own model (`open_run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pyimgano.workbench.run_directory import verify

# Images per gallery: enough to see a pattern, few enough that the page stays a few MB.
GALLERY_SIZE = 4
# Recomputed scores may differ from the recorded ones by float noise (another device, batch size); beyond this
# the image is not the one the run scored, and the card says so.
SCORE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Gallery:
    key: str  # "false-rejects" or "misses"
    title: str
    note: str  # what the gallery holds, in words: which rule picked its images
    indices: tuple[int, ...]  # into the category's per-image records


def false_rejects(records: list[dict]) -> Gallery:
    """Good images judged anomalous, highest score first; where there is none, the highest-scoring good
    images (the nearest to being rejected)."""
    good = [i for i, record in enumerate(records) if record["truth"] == 0]
    rejected = [i for i in good if records[i]["label"] == 1]
    picked = sorted(rejected or good, key=lambda i: (-records[i]["score"], i))[:GALLERY_SIZE]
    if rejected:
        note = f"{len(rejected)} of {len(good)} good test images were rejected; the {len(picked)} highest-scoring:"
    elif good:
        note = f"no good test image was rejected; the {len(picked)} highest-scoring good images (nearest to it):"
    else:
        note = "the test split has no good images"
    return Gallery("false-rejects", "Worst false rejects", note, tuple(picked))


def misses(records: list[dict]) -> Gallery:
    """Defect images judged good, lowest score first; where there is none, the lowest-scoring defect images
    (the nearest to being missed)."""
    defects = [i for i, record in enumerate(records) if record["truth"] == 1]
    missed = [i for i in defects if records[i]["label"] == 0]
    picked = sorted(missed or defects, key=lambda i: (records[i]["score"], i))[:GALLERY_SIZE]
    if missed:
        note = f"{len(missed)} of {len(defects)} defect test images were missed; the {len(picked)} lowest-scoring:"
    elif defects:
        note = f"no defect test image was missed; the {len(picked)} lowest-scoring defect images (nearest to it):"
    else:
        note = "the test split has no defect images"
    return Gallery("misses", "Worst misses", note, tuple(picked))


def galleries(records: list[dict]) -> tuple[Gallery, Gallery]:
    return false_rejects(records), misses(records)


def picked_indices(records: list[dict]) -> list[int]:
    """Every image either gallery shows, in record order: whose maps the training saves."""
    return sorted({i for gallery in galleries(records) for i in gallery.indices})


@dataclass(frozen=True)
class GalleryMap:
    anomaly_map: np.ndarray
    # Set when the map was recomputed: the score the model gives the image now.
    recomputed_score: float | None = None


def load_maps(run_dir: Path, category: str, records: list[dict], indices: list[int], files: dict | None,
              device: str) -> dict[int, GalleryMap]:
    """The maps of the picked records: the saved ones (checked against the run's seal when `files` is given),
    the others recomputed through the run's model, all at once."""
    found: dict[int, GalleryMap] = {}
    saved = [i for i in indices if records[i].get("map")]
    if files is not None and saved:
        verify(run_dir, files, [records[i]["map"]["path"] for i in saved])
    for i in saved:
        found[i] = GalleryMap(np.load(run_dir / records[i]["map"]["path"]))
    missing = [i for i in indices if i not in found]
    if missing:
        found.update(_recompute(run_dir, category, records, missing, device))
    return found


def _recompute(run_dir: Path, category: str, records: list[dict], indices: list[int],
               device: str) -> dict[int, GalleryMap]:
    from pyimgano.runtime.images import ImageReadError, read_rgb
    from pyimgano.workbench.run_loader import open_run

    detector, context = open_run(run_dir, category, device)
    images, readable = [], []
    for i in indices:
        try:
            images.append(read_rgb(Path(records[i]["path"])))
        except ImageReadError:
            continue  # its card says it cannot be read; the others still get their maps
        readable.append(i)
    if not readable:
        return {}
    # Both galleries together: a batch of at most 2 * GALLERY_SIZE images.
    scores, maps = context.steps.score(detector, images, 2 * GALLERY_SIZE)
    return {i: GalleryMap(m, float(s)) for i, s, m in zip(readable, scores, maps)}
