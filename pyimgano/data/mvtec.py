"""The MVTec AD folder layout, for any category name.

    <root>/<category>/train/good/*
    <root>/<category>/test/good/*
    <root>/<category>/test/<defect_type>/*
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png   (optional; non-zero = defect)
"""

from __future__ import annotations

from pathlib import Path

from pyimgano.data.types import GOOD, CategorySplit, DatasetError, Sample
from pyimgano.runtime.images import IMAGE_SUFFIXES

def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def list_categories(root: str | Path) -> list[str]:
    """Every folder under root that has train/good."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset.root {root} is not a directory")
    categories = sorted(p.name for p in root.iterdir() if (p / "train" / GOOD).is_dir())
    if not categories:
        raise DatasetError(f"no category with train/{GOOD} under {root}")
    return categories


def load_split(root: str | Path, category: str) -> CategorySplit:
    base = Path(root) / category
    train_dir = base / "train" / GOOD
    test_dir = base / "test"
    if not train_dir.is_dir():
        known = ", ".join(list_categories(root)) if Path(root).is_dir() else "none"
        raise DatasetError(f"{train_dir} does not exist (categories under {root}: {known})")
    train = [Sample(path, 0, GOOD, None) for path in _images_in(train_dir)]
    if not train:
        raise DatasetError(f"{train_dir} holds no images")
    test: list[Sample] = []
    if test_dir.is_dir():
        for type_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
            defect_type = type_dir.name
            for path in _images_in(type_dir):
                if defect_type == GOOD:
                    test.append(Sample(path, 0, GOOD, None))
                    continue
                mask = base / "ground_truth" / defect_type / f"{path.stem}_mask.png"
                test.append(Sample(path, 1, defect_type, mask if mask.is_file() else None))
    if not test:
        raise DatasetError(f"{test_dir} holds no test images")
    return CategorySplit(category, train, test)
