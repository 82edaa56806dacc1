"""Dataset kinds by `dataset.name`: where each finds its categories and its train/test split."""

from __future__ import annotations

from pathlib import Path

from pyimgano.config import DatasetConfig
from pyimgano.data.custom import load_custom_split
from pyimgano.data.manifest import list_manifest_categories, load_manifest_split
from pyimgano.data.mvtec import list_categories, load_split
from pyimgano.data.types import CategorySplit


def list_dataset_categories(dataset: DatasetConfig) -> list[str]:
    if dataset.name == "mvtec":
        return list_categories(dataset.root)
    if dataset.name == "manifest":
        return list_manifest_categories(dataset.root)
    # A custom root holds one category; its name is only a label for reports.
    return [Path(dataset.root).name]


def load_dataset_split(dataset: DatasetConfig, category: str, seed: int) -> CategorySplit:
    if dataset.name == "mvtec":
        return load_split(dataset.root, category)
    if dataset.name == "manifest":
        return load_manifest_split(dataset.root, category, seed=seed)
    return load_custom_split(dataset.root, category)
