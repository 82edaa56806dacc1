"""Tests for the synthetic MVTec-layout defect dataset used by `make demo`."""

from __future__ import annotations

import pathlib
import re
from dataclasses import replace

import cv2
import numpy as np
import pytest

from pyimgano.data.synthetic import DEFECT_TYPES, SyntheticSpec, generate_dataset, main

SMALL = SyntheticSpec(image_size=128, n_train=3, n_test_good=2, n_test_per_defect=4, seed=7)


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return generate_dataset(tmp_path_factory.mktemp("default"))


def _names(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _read_rgb(path: pathlib.Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert bgr is not None and bgr.ndim == 3 and bgr.shape[2] == 3, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _read_mask(path: pathlib.Path) -> np.ndarray:
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.ndim == 2 and mask.dtype == np.uint8, path
    return mask


def _all_files(category_dir: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(category_dir)): p.read_bytes() for p in sorted(category_dir.rglob("*")) if p.is_file()
    }


def test_layout_and_counts_match_spec(default_dataset: pathlib.Path) -> None:
    spec = SyntheticSpec()
    assert default_dataset.name == spec.category
    assert _names(default_dataset) == ["ground_truth", "test", "train"]
    assert _names(default_dataset / "train") == ["good"]
    assert _names(default_dataset / "test") == sorted(["good", *DEFECT_TYPES])
    assert _names(default_dataset / "ground_truth") == sorted(DEFECT_TYPES)

    assert _names(default_dataset / "train" / "good") == [f"{i:03d}.png" for i in range(spec.n_train)]
    assert _names(default_dataset / "test" / "good") == [f"{i:03d}.png" for i in range(spec.n_test_good)]
    for kind in DEFECT_TYPES:
        n = spec.n_test_per_defect
        assert _names(default_dataset / "test" / kind) == [f"{i:03d}.png" for i in range(n)]
        assert _names(default_dataset / "ground_truth" / kind) == [f"{i:03d}_mask.png" for i in range(n)]


def test_images_are_rgb_with_consistent_tint(default_dataset: pathlib.Path) -> None:
    size = SyntheticSpec().image_size
    for path in sorted((default_dataset / "train" / "good").glob("*.png"))[:5]:
        rgb = _read_rgb(path)
        assert rgb.shape == (size, size, 3) and rgb.dtype == np.uint8
        # A warm fabric tint: catches an RGB/BGR swap when writing.
        means = rgb.reshape(-1, 3).mean(axis=0)
        assert means[0] > means[1] > means[2]


def test_masks_are_binary_same_size_and_non_empty(default_dataset: pathlib.Path) -> None:
    for kind in DEFECT_TYPES:
        for image_path in sorted((default_dataset / "test" / kind).glob("*.png")):
            mask = _read_mask(default_dataset / "ground_truth" / kind / f"{image_path.stem}_mask.png")
            assert mask.shape == _read_rgb(image_path).shape[:2]
            assert set(np.unique(mask).tolist()) == {0, 255}


def test_good_images_have_no_masks(default_dataset: pathlib.Path) -> None:
    assert not (default_dataset / "ground_truth" / "good").exists()
    masks = list(default_dataset.rglob("*_mask.png"))
    assert len(masks) == len(DEFECT_TYPES) * SyntheticSpec().n_test_per_defect
    assert all(p.parent.parent.name == "ground_truth" and p.parent.name in DEFECT_TYPES for p in masks)


def test_defects_keep_a_margin_from_the_border(tmp_path: pathlib.Path) -> None:
    for spec in (SMALL, SyntheticSpec(image_size=256, n_train=0, n_test_good=0, n_test_per_defect=6, seed=3)):
        root = generate_dataset(tmp_path / str(spec.image_size), spec)
        border = max(2, spec.image_size // 64)
        for mask_path in root.glob("ground_truth/*/*_mask.png"):
            mask = _read_mask(mask_path)
            assert mask.shape == (spec.image_size, spec.image_size)
            assert mask.any(), mask_path
            assert not mask[:border].any() and not mask[-border:].any(), mask_path
            assert not mask[:, :border].any() and not mask[:, -border:].any(), mask_path


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: pathlib.Path) -> None:
    a = _all_files(generate_dataset(tmp_path / "a", SMALL))
    b = _all_files(generate_dataset(tmp_path / "b", SMALL))
    assert a == b

    c = _all_files(generate_dataset(tmp_path / "c", replace(SMALL, seed=SMALL.seed + 1)))
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.endswith(".png") and "_mask" not in name)


def test_train_and_test_good_are_different_draws(default_dataset: pathlib.Path) -> None:
    train = {p.read_bytes() for p in (default_dataset / "train" / "good").glob("*.png")}
    test = {p.read_bytes() for p in (default_dataset / "test" / "good").glob("*.png")}
    assert len(train) == SyntheticSpec().n_train
    assert not train & test


def test_refuses_to_write_into_non_empty_folder(tmp_path: pathlib.Path) -> None:
    category_dir = tmp_path / SMALL.category
    category_dir.mkdir()
    (category_dir / "keep.txt").write_text("precious")

    with pytest.raises(FileExistsError, match=re.escape(str(category_dir))):
        generate_dataset(tmp_path, SMALL)
    assert _names(category_dir) == ["keep.txt"]

    generate_dataset(tmp_path, SMALL, overwrite=True)
    assert (category_dir / "keep.txt").read_text() == "precious"
    assert len(list((category_dir / "train" / "good").glob("*.png"))) == SMALL.n_train


def test_overwrite_drops_stale_images(tmp_path: pathlib.Path) -> None:
    generate_dataset(tmp_path, replace(SMALL, n_train=6))
    root = generate_dataset(tmp_path, SMALL, overwrite=True)
    assert len(list((root / "train" / "good").glob("*.png"))) == SMALL.n_train


def test_empty_existing_folder_is_accepted(tmp_path: pathlib.Path) -> None:
    (tmp_path / SMALL.category).mkdir()
    assert generate_dataset(tmp_path, SMALL) == tmp_path / SMALL.category


@pytest.mark.parametrize("bad", [{"category": "../escape"}, {"category": ""}, {"image_size": 8}, {"n_train": -1}])
def test_rejects_invalid_spec(tmp_path: pathlib.Path, bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        generate_dataset(tmp_path, replace(SMALL, **bad))


def _residual(rgb: np.ndarray, kernel: int) -> np.ndarray:
    """|image - local median background|, averaged over channels."""
    background = cv2.medianBlur(rgb, kernel)
    return np.abs(rgb.astype(np.float32) - background.astype(np.float32)).mean(axis=2)


def test_defects_stand_out_from_the_texture(default_dataset: pathlib.Path) -> None:
    # Kernel wider than the largest spot, so the median is the fabric, not the defect.
    kernel = 61
    for kind in DEFECT_TYPES:
        for i in range(5):
            rgb = _read_rgb(default_dataset / "test" / kind / f"{i:03d}.png")
            mask = _read_mask(default_dataset / "ground_truth" / kind / f"{i:03d}_mask.png") > 0
            residual = _residual(rgb, kernel)
            inside, outside = residual[mask].mean(), residual[~mask].mean()
            assert inside > 2.0 * outside, (kind, i, inside, outside)


def test_good_test_images_look_like_train(default_dataset: pathlib.Path) -> None:
    # Same distribution: texture residual energy of test/good sits inside the train range.
    def energy(path: pathlib.Path) -> float:
        return float(_residual(_read_rgb(path), 61).mean())

    train = [energy(p) for p in sorted((default_dataset / "train" / "good").glob("*.png"))]
    lo, hi = min(train), max(train)
    slack = 0.1 * (hi - lo) + 0.05
    for path in sorted((default_dataset / "test" / "good").glob("*.png")):
        assert lo - slack <= energy(path) <= hi + slack, path


def test_cli_writes_and_prints_path(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--out", str(tmp_path), "--category", "cli_cat", "--size", "64", "--n-train", "2", "--seed", "5"]
    argv += ["--n-test-good", "1", "--n-test-per-defect", "1"]
    assert main(argv) == 0
    expected = tmp_path / "cli_cat"
    assert capsys.readouterr().out.strip() == str(expected)
    assert len(list((expected / "train" / "good").glob("*.png"))) == 2
    assert _read_rgb(expected / "test" / "scratch" / "000.png").shape == (64, 64, 3)

    with pytest.raises(FileExistsError):
        main(argv)
    assert main([*argv, "--overwrite"]) == 0
