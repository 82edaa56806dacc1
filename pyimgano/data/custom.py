"""A one-category folder layout for data that was never arranged the MVTec way.

    <root>/train/normal/*                          (required)
    <root>/test/normal/*                           (required)
    <root>/test/anomaly/*                          (required)
    <root>/ground_truth/anomaly/<stem>_mask.png    (optional: the MVTec mask naming)
    <root>/masks/<stem>.png                        (optional: a flat mask folder, same stem as the image)

A mask is looked up for each test/anomaly image under both names; where both exist the
ground_truth/anomaly one wins, so a layout converted from MVTec keeps the masks it came with.
Non-zero mask pixels are defect. The root holds a single category; its name is only a label.
"""

from __future__ import annotations

from pathlib import Path

from pyimgano.data.types import GOOD, CategorySplit, DatasetError, Sample
from pyimgano.runtime.images import IMAGE_SUFFIXES

NORMAL = "normal"
ANOMALY = "anomaly"
REQUIRED_FOLDERS = (Path("train") / NORMAL, Path("test") / NORMAL, Path("test") / ANOMALY)


def _images_in(folder: Path) -> list[Path]:
    # Sorted so that a split is reproducible whatever order the file system lists.
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _check_layout(root: Path) -> None:
    if not root.is_dir():
        raise DatasetError(f"custom dataset root {root} is not a directory")
    missing = [str(root / folder) for folder in REQUIRED_FOLDERS if not (root / folder).is_dir()]
    if not missing:
        return
    # An MVTec root passed here by mistake is common enough to name the other loader.
    mvtec = (root / "train" / GOOD).is_dir()
    hint = f" ({root} has train/{GOOD}: it looks like an MVTec category folder)" if mvtec else ""
    raise DatasetError(f"custom layout: missing required folder(s) {', '.join(missing)}{hint}")


def find_mask(root: Path, image: Path) -> Path | None:
    """The mask of an anomalous test image, under either supported name, or None."""
    for candidate in (root / "ground_truth" / ANOMALY / f"{image.stem}_mask.png", root / "masks" / f"{image.stem}.png"):
        if candidate.is_file():
            return candidate
    return None


def load_custom_split(root: str | Path, category: str) -> CategorySplit:
    """Normal images are labelled 0 / "good", anomalous ones 1 / "anomaly" (the same names as MVTec's good)."""
    root = Path(root)
    _check_layout(root)
    train = [Sample(path, 0, GOOD, None) for path in _images_in(root / "train" / NORMAL)]
    if not train:
        raise DatasetError(f"{root / 'train' / NORMAL} holds no images (suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})")
    test = [Sample(path, 0, GOOD, None) for path in _images_in(root / "test" / NORMAL)]
    test += [Sample(path, 1, ANOMALY, find_mask(root, path)) for path in _images_in(root / "test" / ANOMALY)]
    if not test:
        raise DatasetError(f"{root / 'test' / NORMAL} and {root / 'test' / ANOMALY} hold no images")
    return CategorySplit(category, train, test)
