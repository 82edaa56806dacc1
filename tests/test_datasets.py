"""Tests for the custom folder layout and the JSONL manifest loaders, on the real defect data.

Layouts and manifests are built in tmp_path from the real files (images symlinked, masks copied so that
content checks mean something); tests that need the data skip cleanly where it is absent. No torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from conftest import DATA_ROOT, require_data
from pyimgano.data.custom import load_custom_split
from pyimgano.data.manifest import list_manifest_categories, load_manifest_split
from pyimgano.data.mvtec import load_split
from pyimgano.data.types import DatasetError, Sample

realdata = pytest.mark.realdata


def link(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        dst.symlink_to(src)
    except OSError:  # file systems without symlinks (some CI mounts): a copy is as good here
        shutil.copyfile(src, dst)
    return dst


def images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file())


# --------------------------------------------------------------------------- custom layout


def build_custom(source: Path, root: Path, masks: str = "ground_truth") -> Path:
    """piped_flr01 renamed into the custom layout: good -> normal, impurity -> anomaly."""
    for src_dir, dst_dir in (("train/good", "train/normal"), ("test/good", "test/normal"),
                             ("test/impurity", "test/anomaly")):
        for image in images(source / src_dir):
            link(image, root / dst_dir / image.name)
    for mask in images(source / "ground_truth" / "impurity"):
        if masks == "ground_truth":
            target = root / "ground_truth" / "anomaly" / mask.name
        else:  # the flat alternative: masks/<stem>.png
            target = root / "masks" / (mask.name.removesuffix("_mask.png") + ".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(mask, target)
    return root


@realdata
def test_custom_layout_matches_mvtec_split(tmp_path):
    source = require_data("piped_flr01")
    split = load_custom_split(build_custom(source, tmp_path / "flr"), "flr-custom")
    reference = load_split(DATA_ROOT, "piped_flr01")

    assert split.category == "flr-custom"
    normal_test = [s for s in split.test if s.truth == 0]
    anomalous = [s for s in split.test if s.truth == 1]
    assert (len(split.train), len(normal_test), len(anomalous)) == (32, 16, 48)
    assert all(s.truth == 0 and s.defect_type == "good" and s.mask_path is None for s in split.train)
    assert all(s.defect_type == "good" and s.mask_path is None for s in normal_test)
    assert all(s.defect_type == "anomaly" for s in anomalous)
    assert split.has_masks

    # The same samples as the MVTec loader reads, in the same order, up to the folder renaming.
    renamed = {"impurity": "anomaly", "good": "good"}
    for ours, theirs in zip(split.train + split.test, reference.train + reference.test, strict=True):
        assert ours.path.name == theirs.path.name
        assert ours.path.resolve() == theirs.path.resolve()
        assert (ours.truth, ours.defect_type) == (theirs.truth, renamed[theirs.defect_type])
        assert (ours.mask_path is None) == (theirs.mask_path is None)

    # Masks are copies, so equal bytes show each image got the mask of its own stem; the masks differ
    # from one another, so a mix-up would show.
    contents = set()
    for ours, theirs in zip(split.test, reference.test):
        if ours.truth == 1:
            assert ours.mask_path == tmp_path / "flr" / "ground_truth" / "anomaly" / f"{ours.path.stem}_mask.png"
            assert ours.mask_path.read_bytes() == theirs.mask_path.read_bytes()
            contents.add(ours.mask_path.read_bytes())
    assert len(contents) > 1


@realdata
def test_custom_flat_masks_folder_and_precedence(tmp_path):
    source = require_data("piped_flr01")
    root = build_custom(source, tmp_path / "flr", masks="flat")
    anomalies = images(root / "test" / "anomaly")
    # One image without any mask, one with both names present: ground_truth/ wins.
    (root / "masks" / f"{anomalies[0].stem}.png").unlink()
    both = anomalies[1].stem
    link(source / "ground_truth" / "impurity" / f"{anomalies[2].stem}_mask.png",
         root / "ground_truth" / "anomaly" / f"{both}_mask.png")

    masks = {s.path.stem: s.mask_path for s in load_custom_split(root, "flr").test if s.truth == 1}
    assert masks[anomalies[0].stem] is None
    assert masks[both] == root / "ground_truth" / "anomaly" / f"{both}_mask.png"
    for image in anomalies[2:]:
        assert masks[image.stem] == root / "masks" / f"{image.stem}.png"
        real = source / "ground_truth" / "impurity" / f"{image.stem}_mask.png"
        assert masks[image.stem].read_bytes() == real.read_bytes()


def test_custom_missing_folder_is_named(tmp_path):
    (tmp_path / "train" / "normal").mkdir(parents=True)
    (tmp_path / "test" / "normal").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"missing required folder.*test/anomaly") as info:
        load_custom_split(tmp_path, "x")
    assert "train/normal" not in str(info.value)
    with pytest.raises(DatasetError, match="is not a directory"):
        load_custom_split(tmp_path / "absent", "x")


def test_custom_empty_train_folder_is_named(tmp_path):
    for folder in ("train/normal", "test/normal", "test/anomaly"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "train" / "normal" / "notes.txt").write_text("not an image")
    with pytest.raises(DatasetError, match=r"train/normal holds no images"):
        load_custom_split(tmp_path, "x")


@realdata
def test_custom_on_an_mvtec_folder_says_so(tmp_path):
    source = require_data("piped_flr01")
    with pytest.raises(DatasetError, match=r"train/normal.*MVTec"):
        load_custom_split(source, "piped_flr01")


# --------------------------------------------------------------------------- manifest

CONTAMINATED = range(5)  # groups that also hold anomalous images, so they must land wholly in test


def number(path: Path) -> int:
    return int(re.findall(r"\d+", path.stem)[-1])


def magnetic_rows(manifest_dir: Path) -> list[dict]:
    """Every magnetic_tile image, no split, paths relative to the manifest's folder.

    Normal images share group_id = number % 50. Anomalous images join those groups only for the
    contaminated ones; the rest go ungrouped (nearly every group would otherwise hold a defect and
    nothing could be drawn into train).
    """
    source = require_data("magnetic_tile")
    rows = []
    for type_dir in [source / "train" / "good"] + sorted(p for p in (source / "test").iterdir() if p.is_dir()):
        for image in images(type_dir):
            row = {"image_path": os.path.relpath(image, manifest_dir), "category": "magnetic_tile"}
            group = number(image) % 50
            if type_dir.name == "good":
                row.update(label="normal", group_id=f"g{group}")
            else:
                mask = source / "ground_truth" / type_dir.name / f"{image.stem}_mask.png"
                row.update(label=1, mask_path=os.path.relpath(mask, manifest_dir))
                if group in CONTAMINATED:
                    row["group_id"] = f"g{group}"
            rows.append(row)
    return rows


def write_manifest(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def magnetic_manifest(tmp_path_factory) -> tuple[Path, dict[Path, dict]]:
    """The manifest and, per real image (resolved), its row."""
    manifest = tmp_path_factory.mktemp("manifest") / "nested" / "magnetic.jsonl"
    rows = magnetic_rows(manifest.parent)
    write_manifest(manifest, rows)
    by_image = {(manifest.parent / row["image_path"]).resolve(): row for row in rows}
    return manifest, by_image


def groups_of(samples: list[Sample], by_image: dict[Path, dict]) -> set[str]:
    return {by_image[s.path.resolve()].get("group_id", str(s.path.resolve())) for s in samples}


@realdata
def test_manifest_split_keeps_groups_whole(magnetic_manifest, tmp_path, monkeypatch):
    manifest, by_image = magnetic_manifest
    monkeypatch.chdir(tmp_path)  # paths must resolve against the manifest's folder, not the cwd
    split = load_manifest_split(manifest, "magnetic_tile", seed=0)

    assert len(split.train) + len(split.test) == 1340
    assert all(s.truth == 0 and s.defect_type == "good" for s in split.train)
    assert sum(s.truth for s in split.test) == 388
    assert all(s.defect_type == ("anomaly" if s.truth else "good") for s in split.test)

    train_groups, test_groups = groups_of(split.train, by_image), groups_of(split.test, by_image)
    assert not train_groups & test_groups
    assert {f"g{g}" for g in CONTAMINATED} <= test_groups
    drawn = {f"g{g}" for g in range(50)} - {f"g{g}" for g in CONTAMINATED}
    assert drawn & train_groups and drawn & test_groups  # the draw really sends groups both ways
    assert len(split.train) > 0.5 * 952  # of the 952 normal images, most go to train at 0.8


@realdata
def test_manifest_resolves_paths_against_its_folder(magnetic_manifest, monkeypatch):
    manifest, by_image = magnetic_manifest
    monkeypatch.chdir(manifest.parent.parent)
    split = load_manifest_split(Path("nested") / manifest.name, "magnetic_tile")
    for sample in split.train + split.test:
        assert sample.path.is_absolute() and sample.path.is_file()
        assert ".." not in sample.path.parts  # tidied for reports
        assert sample.path.resolve() in by_image
    anomalous = [s for s in split.test if s.truth == 1]
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in anomalous)
    for sample in anomalous:
        image = sample.path.resolve()
        assert sample.mask_path.resolve() == image.parents[2] / "ground_truth" / image.parent.name / f"{image.stem}_mask.png"
    assert all(s.mask_path is None for s in split.train)


@realdata
def test_manifest_keeps_dotdot_after_a_symlinked_folder(tmp_path):
    # <manifest dir>/link/../x.png is real/x.png to the OS, while a textual collapse would give ./x.png.
    source = require_data("piped_flr01")
    first, second = images(source / "train" / "good")[:2]
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "real" / "sub")
    shutil.copyfile(first, tmp_path / "real" / "x.png")
    shutil.copyfile(second, tmp_path / "x.png")
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"image_path": "link/../x.png", "category": "c", "split": "train"},
        {"image_path": "x.png", "category": "c", "split": "test", "label": 0},
    ])
    split = load_manifest_split(manifest, "c")
    assert split.train[0].path.read_bytes() == first.read_bytes()
    assert split.test[0].path == tmp_path / "x.png"


@realdata
def test_manifest_split_is_seeded(magnetic_manifest):
    manifest, _ = magnetic_manifest
    first = load_manifest_split(manifest, "magnetic_tile", seed=0)
    assert load_manifest_split(manifest, "magnetic_tile", seed=0) == first
    other = load_manifest_split(manifest, "magnetic_tile", seed=1)
    assert {s.path for s in other.train} != {s.path for s in first.train}


@realdata
def test_manifest_explicit_split_rows_are_respected(tmp_path):
    source = require_data("magnetic_tile")
    good = images(source / "train" / "good")[:6]
    defect = images(source / "test" / "crack")[0]
    rows = [
        {"image_path": str(good[0]), "category": "tile", "split": "train"},  # label may be left out on train
        {"image_path": str(good[1]), "category": "tile", "split": "test", "label": 0, "group_id": 7},
        {"image_path": str(good[2]), "category": "tile", "label": "normal", "group_id": "7"},  # follows its group
        {"image_path": str(good[3]), "category": "tile", "label": 0},
        {"image_path": str(good[4]), "category": "tile", "split": "train", "label": 0, "group_id": "a"},
        {"image_path": str(defect), "category": "tile", "label": "anomaly", "group_id": "a"},
        {"image_path": str(good[5]), "category": "other", "label": 0},
    ]
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    assert list_manifest_categories(manifest) == ["other", "tile"]

    # train_fraction 1.0: every freely drawn group would go to train, so any test row is there on purpose.
    split = load_manifest_split(manifest, "tile", train_fraction=1.0)
    assert [s.path for s in split.train] == [good[0], good[3], good[4]]
    assert [s.path for s in split.test] == [good[1], good[2], defect]
    assert split.test[2].mask_path is None  # no mask_path given: no mask

    split = load_manifest_split(manifest, "tile", train_fraction=0.0)
    assert [s.path for s in split.train] == [good[0], good[4]]


# --------------------------------------------------------------------------- manifest errors


def test_manifest_unknown_key_names_line_and_nearest_key(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"image_path": "a.png", "category": "c", "label": 0},
        "",
        {"image_path": "b.png", "category": "c", "lable": 1},
    ])
    with pytest.raises(DatasetError, match=r"line 3: unknown key 'lable' \(did you mean 'label'\?\)"):
        load_manifest_split(manifest, "c")
    write_manifest(manifest, [{"image_path": "a.png", "category": "c", "label": 0, "zzz": 1}])
    with pytest.raises(DatasetError, match=r"line 1: unknown key 'zzz' \(valid keys: image_path, category"):
        list_manifest_categories(manifest)


def test_manifest_invalid_json_names_line(tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"image_path": "a.png", "category": "c", "label": 0},
        "   ",
        {"image_path": "b.png", "category": "c", "label": 0},
        '{"image_path": "c.png", "category": "c",',
    ])
    with pytest.raises(DatasetError, match=rf"{re.escape(str(manifest))}, line 4: invalid JSON"):
        load_manifest_split(manifest, "c")
    write_manifest(manifest, ['["a.png", "c"]'])
    with pytest.raises(DatasetError, match="line 1: expected a JSON object, got list"):
        load_manifest_split(manifest, "c")


@pytest.mark.parametrize(("row", "message"), [
    ({"image_path": "a.png", "category": "c", "split": "train", "label": "anomaly"},
     r"line 2: a.png is labelled anomalous but split is \"train\""),
    ({"image_path": "a.png", "category": "c"}, r"line 2: label is required unless split is \"train\""),
    ({"image_path": "a.png", "category": "c", "label": True}, r"line 2: label must be 0, 1"),
    ({"image_path": "a.png", "category": "c", "label": "bad"}, r"line 2: label must be 0, 1"),
    ({"image_path": "a.png", "category": "c", "label": 0, "split": "val"}, r"line 2: split must be"),
    ({"category": "c", "label": 0}, r"line 2: missing required key 'image_path'"),
    ({"image_path": "a.png", "category": 3, "label": 0}, r"line 2: category must be a non-empty string"),
    ({"image_path": "a.png", "category": "c", "label": 0, "group_id": [1]}, r"line 2: group_id must be"),
])
def test_manifest_row_errors_name_the_line(tmp_path, row, message):
    manifest = write_manifest(tmp_path / "m.jsonl", [{"image_path": "ok.png", "category": "c", "label": 0}, row])
    with pytest.raises(DatasetError, match=message):
        load_manifest_split(manifest, "c")


@realdata
def test_manifest_missing_image_is_named(tmp_path):
    source = require_data("piped_flr01")
    real = images(source / "train" / "good")[0]
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"image_path": str(real), "category": "c", "split": "train"},
        {"image_path": "gone/missing.png", "category": "c", "label": 1, "split": "test"},
    ])
    with pytest.raises(DatasetError, match=r"line 2: image_path 'gone/missing.png' does not exist") as info:
        load_manifest_split(manifest, "c")
    assert str(tmp_path / "gone" / "missing.png") in str(info.value)

    write_manifest(manifest, [
        {"image_path": str(real), "category": "c", "split": "train"},
        {"image_path": str(real), "category": "c", "label": 1, "mask_path": "nomask.png"},
    ])
    with pytest.raises(DatasetError, match=r"line 2: mask_path 'nomask.png' does not exist"):
        load_manifest_split(manifest, "c")


@realdata
def test_manifest_category_needs_train_and_test_rows(tmp_path):
    source = require_data("piped_flr01")
    normal, defect = images(source / "train" / "good")[0], images(source / "test" / "impurity")[0]
    manifest = write_manifest(tmp_path / "m.jsonl", [
        {"image_path": str(normal), "category": "only-train", "split": "train"},
        {"image_path": str(defect), "category": "only-anomalies", "label": 1},
    ])
    with pytest.raises(DatasetError, match="category 'only-train' has no test rows"):
        load_manifest_split(manifest, "only-train")
    with pytest.raises(DatasetError, match="category 'only-anomalies' has no train rows"):
        load_manifest_split(manifest, "only-anomalies")
    with pytest.raises(DatasetError, match=r"no rows for category 'absent' \(categories: only-anomalies, only-train\)"):
        load_manifest_split(manifest, "absent")
