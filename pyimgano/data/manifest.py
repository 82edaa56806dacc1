"""A JSONL manifest: one image per line, for data that lives in no particular folder layout.

    {"image_path": "imgs/0001.png", "category": "tile", "split": "test", "label": "anomaly",
     "mask_path": "masks/0001.png", "group_id": "part-17"}

image_path, category   required
split                  "train" | "test"; optional
label                  0 | 1 | "normal" | "anomaly"; required unless split is "train" (train rows must be normal)
mask_path              optional; non-zero pixels = defect
group_id               optional string or integer; rows that share it (e.g. shots of one physical part)
                       are never divided between train and test by the draw below

Relative paths resolve against the manifest file's folder, so a manifest moves with its images.

Rows without a split are assigned per group, from a seeded hash of the group: a group with any
anomalous row goes to test; one whose explicit rows all sit on one side follows them; any other
group goes to train with probability train_fraction. Hashing each group (rather than drawing in file
order) keeps a group's side stable when rows are reordered or other groups are added.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pyimgano.data.types import GOOD, CategorySplit, DatasetError, Sample

ANOMALY = "anomaly"
TRAIN, TEST = "train", "test"
KEYS = ("image_path", "category", "split", "label", "mask_path", "group_id")
LABELS = {0: 0, 1: 1, "normal": 0, "anomaly": 1}


@dataclass(frozen=True)
class Row:
    line: int
    image_path: str
    category: str
    split: str | None
    label: int | None
    mask_path: str | None
    group: str  # group_id, or the image itself for a row without one


def _where(manifest: Path, line: int) -> str:
    return f"{manifest}, line {line}"


def _check_keys(row: dict, manifest: Path, line: int) -> None:
    for key in row:
        if key in KEYS:
            continue
        close = difflib.get_close_matches(key, KEYS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(KEYS)}"
        raise DatasetError(f"{_where(manifest, line)}: unknown key {key!r} ({hint})")


def _text(row: dict, key: str, manifest: Path, line: int, required: bool) -> str | None:
    value = row.get(key)
    if value is None:
        if required:
            raise DatasetError(f"{_where(manifest, line)}: missing required key {key!r}")
        return None
    if not isinstance(value, str) or not value:
        raise DatasetError(f"{_where(manifest, line)}: {key} must be a non-empty string, got {value!r}")
    return value


def _label(row: dict, manifest: Path, line: int) -> int | None:
    value = row.get("label")
    if value is None:
        return None
    # bool is an int in Python; true/false would silently read as 1/0, so refuse it.
    if isinstance(value, bool) or not isinstance(value, (int, str)) or value not in LABELS:
        raise DatasetError(f"{_where(manifest, line)}: label must be 0, 1, \"normal\" or \"anomaly\", got {value!r}")
    return LABELS[value]


def _group(row: dict, image_path: str, manifest: Path, line: int) -> str:
    value = row.get("group_id")
    if value is None:
        # Prefixes keep an ungrouped image from colliding with a group_id that happens to equal its path.
        return f"image:{image_path}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise DatasetError(f"{_where(manifest, line)}: group_id must be a string or an integer, got {value!r}")
    # 7 and "7" name the same group: manifests written by different tools disagree on the type.
    return f"group:{value}"


def _parse_row(row: object, manifest: Path, line: int) -> Row:
    if not isinstance(row, dict):
        raise DatasetError(f"{_where(manifest, line)}: expected a JSON object, got {type(row).__name__}")
    _check_keys(row, manifest, line)
    image_path = _text(row, "image_path", manifest, line, required=True)
    category = _text(row, "category", manifest, line, required=True)
    if category in (".", "..") or "/" in category or "\\" in category:
        # It names the run's categories/<category>/ folder: a path would write outside the run.
        raise DatasetError(f"{_where(manifest, line)}: category {category!r} must be a plain name, not a path")
    split = _text(row, "split", manifest, line, required=False)
    if split not in (None, TRAIN, TEST):
        raise DatasetError(f"{_where(manifest, line)}: split must be \"train\" or \"test\", got {split!r}")
    label = _label(row, manifest, line)
    if split == TRAIN and label == 1:
        raise DatasetError(f"{_where(manifest, line)}: {image_path} is labelled anomalous but split is \"train\" "
                           "(training images must be normal)")
    if label is None and split != TRAIN:
        # A row without a split may be drawn into test, where its label is needed.
        raise DatasetError(f"{_where(manifest, line)}: label is required unless split is \"train\"")
    mask_path = _text(row, "mask_path", manifest, line, required=False)
    return Row(line, image_path, category, split, label, mask_path, _group(row, image_path, manifest, line))


def read_manifest(path: str | Path) -> list[Row]:
    """Every row, checked against the schema (not yet against the file system)."""
    manifest = Path(path)
    try:
        # utf-8-sig: a byte-order mark, as some Windows editors write, would otherwise break line 1.
        text = manifest.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DatasetError(f"manifest {manifest} cannot be read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"manifest {manifest} is not UTF-8 text (byte {exc.start})") from exc
    rows = []
    # split("\n"), not splitlines(): JSON strings may hold U+2028 etc., which splitlines() breaks on,
    # and the line numbers in errors must be those an editor shows.
    for line, raw in enumerate(text.split("\n"), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{_where(manifest, line)}: invalid JSON ({exc.msg}, column {exc.colno})") from exc
        rows.append(_parse_row(row, manifest, line))
    if not rows:
        raise DatasetError(f"manifest {manifest} holds no rows")
    return rows


def list_manifest_categories(path: str | Path) -> list[str]:
    return sorted({row.category for row in read_manifest(path)})


def _draw(seed: int, category: str, group: str) -> float:
    # sha256, not hash(): Python salts str hashes per process, and the split must repeat across runs.
    digest = hashlib.sha256(f"{seed}\0{category}\0{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _group_sides(rows: list[Row], category: str, seed: int, train_fraction: float) -> dict[str, str]:
    members: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        members[row.group].append(row)
    sides = {}
    for group, group_rows in members.items():
        explicit = {row.split for row in group_rows if row.split is not None}
        if any(row.label == 1 for row in group_rows):
            sides[group] = TEST
        elif len(explicit) == 1:
            sides[group] = explicit.pop()
        else:
            sides[group] = TRAIN if _draw(seed, category, group) < train_fraction else TEST
    return sides


def _tidy(path: Path) -> Path:
    # Reports show these paths, and "../.." runs are noise there; but collapsing ".." after a symlinked
    # folder can name another file, so the short form is kept only where it is the same file.
    short = Path(os.path.normpath(path))
    return short if short.is_file() and os.path.samefile(short, path) else path


def _resolve(base: Path, value: str, key: str, manifest: Path, line: int) -> Path:
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise DatasetError(f"{_where(manifest, line)}: {key} {value!r} {problem} ({path})")
    return _tidy(path)


def _sample(row: Row, base: Path, manifest: Path) -> Sample:
    image = _resolve(base, row.image_path, "image_path", manifest, row.line)
    mask = _resolve(base, row.mask_path, "mask_path", manifest, row.line) if row.mask_path is not None else None
    anomalous = row.label == 1
    return Sample(image, int(anomalous), ANOMALY if anomalous else GOOD, mask)


def load_manifest_split(path: str | Path, category: str, seed: int = 0, train_fraction: float = 0.8) -> CategorySplit:
    """The category's rows as a split; explicit splits are kept and the rest drawn (see the module doc)."""
    if not 0.0 <= train_fraction <= 1.0:
        raise ValueError(f"train_fraction must lie in [0, 1], got {train_fraction}")
    manifest = Path(path).absolute()
    all_rows = read_manifest(manifest)
    rows = [row for row in all_rows if row.category == category]
    if not rows:
        known = ", ".join(sorted({row.category for row in all_rows}))
        raise DatasetError(f"manifest {manifest} has no rows for category {category!r} (categories: {known})")
    sides = _group_sides(rows, category, seed, train_fraction)
    train: list[Sample] = []
    test: list[Sample] = []
    for row in rows:
        side = row.split or sides[row.group]
        (train if side == TRAIN else test).append(_sample(row, manifest.parent, manifest))
    for side, samples in ((TRAIN, train), (TEST, test)):
        if not samples:
            raise DatasetError(f"manifest {manifest}: category {category!r} has no {side} rows "
                               f"({len(rows)} rows, seed {seed}, train_fraction {train_fraction})")
    return CategorySplit(category, train, test)
