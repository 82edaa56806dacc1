"""Tests for pyimgano.runtime.images: decoding, the input contract, masks and input expansion.

Real image files are written with OpenCV into tmp_path. No torch: this module is part of the edge runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from pyimgano.runtime.images import (
    IMAGE_SUFFIXES,
    ImageReadError,
    InputContract,
    expand_inputs,
    read_mask,
    read_rgb,
    to_contract,
)

pytestmark = pytest.mark.edge


def write(path: Path, array: np.ndarray, params: list[int] | None = None) -> Path:
    ok = cv2.imwrite(str(path), array, params or [])
    assert ok, f"cv2.imwrite failed for {path}"
    return path


# --------------------------------------------------------------------------- read_rgb: decoding


def test_bgr_png_reads_back_as_rgb(tmp_path):
    bgr = np.zeros((5, 7, 3), np.uint8)
    bgr[1, 2] = (0, 0, 255)  # pure red, written in OpenCV's BGR order
    bgr[3, 4] = (255, 0, 0)  # pure blue
    bgr[4, 6] = (10, 20, 30)
    path = write(tmp_path / "color.png", bgr)

    rgb = read_rgb(path)

    assert rgb.dtype == np.uint8
    assert rgb.shape == (5, 7, 3)
    assert tuple(rgb[1, 2]) == (255, 0, 0)
    assert tuple(rgb[3, 4]) == (0, 0, 255)
    assert tuple(rgb[4, 6]) == (30, 20, 10)
    np.testing.assert_array_equal(rgb, bgr[:, :, ::-1])


def test_read_rgb_accepts_str_path_and_non_ascii_name(tmp_path):
    bgr = np.full((3, 4, 3), (1, 2, 3), np.uint8)
    path = tmp_path / "pièce_défaut_画像.png"
    ok, encoded = cv2.imencode(".png", bgr)
    assert ok
    encoded.tofile(str(path))
    rgb = read_rgb(str(path))
    assert rgb.shape == (3, 4, 3)
    assert np.all(rgb == np.array([3, 2, 1], np.uint8))


def test_grayscale_png_becomes_three_equal_channels(tmp_path):
    gray = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    path = write(tmp_path / "gray.png", gray)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2  # the file really is single-channel

    rgb = read_rgb(path)

    assert rgb.dtype == np.uint8
    assert rgb.shape == (4, 6, 3)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], gray)


def test_rgba_png_drops_alpha_without_premultiplying(tmp_path):
    bgra = np.zeros((4, 4, 4), np.uint8)
    bgra[..., 3] = 255
    bgra[0, 0] = (0, 0, 255, 128)  # half-transparent red
    bgra[2, 3] = (255, 0, 0, 0)  # fully transparent blue
    path = write(tmp_path / "rgba.png", bgra)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (4, 4, 4)

    rgb = read_rgb(path)

    assert rgb.dtype == np.uint8
    assert rgb.shape == (4, 4, 3)
    assert tuple(rgb[0, 0]) == (255, 0, 0)
    assert tuple(rgb[2, 3]) == (0, 0, 255)
    assert tuple(rgb[1, 1]) == (0, 0, 0)


def test_16bit_grayscale_png_is_scaled_to_8bit(tmp_path):
    gray16 = np.zeros((2, 3), np.uint16)
    gray16[0, 0] = 65535
    gray16[0, 1] = 256 * 10
    gray16[0, 2] = 256 * 128
    gray16[1, 0] = 0
    gray16[1, 1] = 255  # below one 8-bit step
    gray16[1, 2] = 256 * 255
    path = write(tmp_path / "gray16.png", gray16)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).dtype == np.uint16

    rgb = read_rgb(path)

    assert rgb.dtype == np.uint8
    assert rgb.shape == (2, 3, 3)
    expected = np.array([[255, 10, 128], [0, 0, 255]], np.uint8)
    for channel in range(3):
        np.testing.assert_array_equal(rgb[:, :, channel], expected)


def test_16bit_color_png_is_scaled_and_reordered(tmp_path):
    bgr16 = np.zeros((2, 2, 3), np.uint16)
    bgr16[0, 0] = (256 * 3, 256 * 2, 65535)
    path = write(tmp_path / "color16.png", bgr16)
    rgb = read_rgb(path)
    assert rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (255, 2, 3)
    assert tuple(rgb[1, 1]) == (0, 0, 0)


def test_grayscale_jpeg(tmp_path):
    gray = np.full((16, 24), 128, np.uint8)
    path = write(tmp_path / "gray.jpg", gray, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 2

    rgb = read_rgb(path)

    assert rgb.dtype == np.uint8
    assert rgb.shape == (16, 24, 3)
    np.testing.assert_array_equal(rgb[:, :, 0], rgb[:, :, 1])
    np.testing.assert_array_equal(rgb[:, :, 0], rgb[:, :, 2])
    assert np.abs(rgb.astype(int) - 128).max() <= 1


def test_bmp_with_upper_case_suffix(tmp_path):
    bgr = np.zeros((3, 3, 3), np.uint8)
    bgr[1, 1] = (0, 255, 0)
    path = write(tmp_path / "IMG.BMP", bgr)
    rgb = read_rgb(path)
    assert tuple(rgb[1, 1]) == (0, 255, 0)
    assert rgb.sum() == 255


# --------------------------------------------------------------------------- read_rgb: errors


def test_text_file_renamed_png_is_not_decodable(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("this is not an image\n", encoding="utf-8")
    with pytest.raises(ImageReadError) as info:
        read_rgb(path)
    assert str(info.value) == "not a decodable image (OpenCV could not decode it)"


def test_truncated_png_is_not_decodable(tmp_path):
    ok, encoded = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    assert ok
    path = tmp_path / "truncated.png"
    path.write_bytes(encoded.tobytes()[:20])
    with pytest.raises(ImageReadError, match="not a decodable image"):
        read_rgb(path)


def test_empty_file_is_reported_as_empty(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError) as info:
        read_rgb(path)
    assert str(info.value) == "file is empty"


def test_missing_path(tmp_path):
    with pytest.raises(ImageReadError) as info:
        read_rgb(tmp_path / "missing.png")
    assert str(info.value) == "cannot read file: No such file or directory"


def test_directory(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageReadError) as info:
        read_rgb(folder)
    assert str(info.value) == "cannot read file: Is a directory"


# --------------------------------------------------------------------------- to_contract


def test_to_contract_resizes_height_then_width():
    image = np.zeros((100, 300, 3), np.uint8)
    out = to_contract(image, InputContract(height=64, width=32))
    assert out.shape == (64, 32, 3)
    assert out.dtype == np.uint8

    out = to_contract(image, InputContract(height=32, width=64))
    assert out.shape == (32, 64, 3)


def test_to_contract_keeps_orientation_of_content():
    # Top half red, bottom half blue; left/right identical. After resizing to a tall contract the
    # top rows must still be red and the bottom rows blue (no transpose).
    image = np.zeros((100, 300, 3), np.uint8)
    image[:50] = (255, 0, 0)
    image[50:] = (0, 0, 255)
    out = to_contract(image, InputContract(height=64, width=32, resize_interpolation="nearest"))
    assert out.shape == (64, 32, 3)
    assert np.all(out[:32] == (255, 0, 0))
    assert np.all(out[32:] == (0, 0, 255))


@pytest.mark.parametrize("interpolation", ["linear", "area", "nearest"])
def test_to_contract_constant_image_stays_constant(interpolation):
    image = np.full((100, 300, 3), (7, 77, 177), np.uint8)
    out = to_contract(image, InputContract(height=64, width=32, resize_interpolation=interpolation))
    assert out.shape == (64, 32, 3)
    assert np.all(out == np.array([7, 77, 177], np.uint8))


def test_to_contract_same_size_returns_same_values():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8)
    out = to_contract(image, InputContract(height=64, width=32))
    assert out.shape == (64, 32, 3)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)


def test_to_contract_same_size_view_becomes_contiguous():
    rng = np.random.default_rng(1)
    big = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    view = big[:, ::2]  # 64x32, not C-contiguous
    assert not view.flags["C_CONTIGUOUS"]
    out = to_contract(view, InputContract(height=64, width=32))
    assert out.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(out, view)


def test_to_contract_linear_matches_opencv_resize():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, size=(100, 300, 3), dtype=np.uint8)
    out = to_contract(image, InputContract(height=64, width=32))
    np.testing.assert_array_equal(out, cv2.resize(image, (32, 64), interpolation=cv2.INTER_LINEAR))


def test_invalid_interpolation_raises_value_error():
    with pytest.raises(ValueError) as info:
        InputContract(height=64, width=32, resize_interpolation="cubic")
    assert str(info.value) == "resize_interpolation 'cubic' is not one of ['area', 'linear', 'nearest']"


# --------------------------------------------------------------------------- InputContract JSON


def test_input_contract_defaults():
    contract = InputContract(height=224, width=320)
    assert contract.to_json() == {
        "height": 224,
        "width": 320,
        "resize_interpolation": "linear",
        "channel_order": "RGB",
        "layout": "NHWC",
        "dtype": "uint8",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
    }


@pytest.mark.parametrize(
    "contract",
    [
        InputContract(height=256, width=256),
        InputContract(height=64, width=32, resize_interpolation="area", mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0)),
    ],
)
def test_input_contract_json_round_trip(contract):
    assert InputContract.from_json(contract.to_json()) == contract
    # Through real JSON text too: tuples become lists and must come back as tuples.
    text = json.dumps(contract.to_json())
    back = InputContract.from_json(json.loads(text))
    assert back == contract
    assert type(back.mean) is tuple and type(back.std) is tuple
    assert hash(back) == hash(contract)


def test_input_contract_from_json_rejects_bad_interpolation():
    data = InputContract(height=8, width=8).to_json()
    data["resize_interpolation"] = "bicubic"
    with pytest.raises(ValueError, match="'bicubic'"):
        InputContract.from_json(data)


# --------------------------------------------------------------------------- read_mask


def test_read_mask_nonzero_is_true_at_native_size(tmp_path):
    mask = np.zeros((6, 8), np.uint8)
    mask[1, 1] = 1
    mask[2, 5] = 7
    mask[4, 7] = 255
    path = write(tmp_path / "mask.png", mask)
    out = read_mask(path, 6, 8)
    assert out.dtype == np.bool_
    assert out.shape == (6, 8)
    np.testing.assert_array_equal(out, mask > 0)
    assert int(out.sum()) == 3


def test_read_mask_downscale_uses_nearest(tmp_path):
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 40:80] = 255
    path = write(tmp_path / "mask.png", mask)
    out = read_mask(path, 50, 50)
    expected = np.zeros((50, 50), bool)
    expected[10:30, 20:40] = True
    assert out.dtype == np.bool_
    np.testing.assert_array_equal(out, expected)


def test_read_mask_upscale_block_stays_crisp(tmp_path):
    mask = np.zeros((10, 10), np.uint8)
    mask[3, 3] = 255
    path = write(tmp_path / "dot.png", mask)
    out = read_mask(path, 40, 40)
    expected = np.zeros((40, 40), bool)
    expected[12:16, 12:16] = True
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize(("height", "width"), [(37, 53), (73, 131), (200, 300)])
def test_read_mask_non_integer_scale_is_nearest_not_blurred(tmp_path, height, width):
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 40:80] = 255
    path = write(tmp_path / "mask.png", mask)
    out = read_mask(path, height, width)
    assert out.shape == (height, width)
    # Nearest neighbour: each output pixel takes the source pixel at floor(i * src / dst).
    ys = np.minimum(np.floor(np.arange(height) * (100 / height)).astype(int), 99)
    xs = np.minimum(np.floor(np.arange(width) * (100 / width)).astype(int), 99)
    np.testing.assert_array_equal(out, mask[ys][:, xs] > 0)
    # The defect stays a solid rectangle: the True region equals its own bounding box.
    rows = np.flatnonzero(out.any(axis=1))
    cols = np.flatnonzero(out.any(axis=0))
    assert out[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
    assert int(out.sum()) == (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1)


def test_read_mask_low_value_edge_not_grown_by_interpolation(tmp_path):
    # With linear interpolation a 1-pixel-wide line of value 1 would smear into neighbours (>0).
    mask = np.zeros((9, 9), np.uint8)
    mask[:, 4] = 1
    path = write(tmp_path / "line.png", mask)
    out = read_mask(path, 18, 18)
    expected = np.zeros((18, 18), bool)
    expected[:, 8:10] = True
    np.testing.assert_array_equal(out, expected)


def test_read_mask_not_decodable(tmp_path):
    path = tmp_path / "mask.png"
    path.write_text("nope", encoding="utf-8")
    with pytest.raises(ImageReadError) as info:
        read_mask(path, 4, 4)
    assert str(info.value) == f"mask {path} is empty or not a decodable image"


def test_read_mask_16bit_small_nonzero_is_defect(tmp_path):
    mask = np.zeros((4, 4), np.uint16)
    mask[1, 1] = 1
    mask[2, 2] = 300
    path = write(tmp_path / "mask16.png", mask)
    out = read_mask(path, 4, 4)
    np.testing.assert_array_equal(out, mask > 0)


def test_read_mask_empty_file_raises_image_read_error(tmp_path):
    path = tmp_path / "empty_mask.png"
    path.write_bytes(b"")
    with pytest.raises(ImageReadError):
        read_mask(path, 4, 4)


# --------------------------------------------------------------------------- expand_inputs


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "inputs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "b.png").write_bytes(b"x")
    (root / "a.jpg").write_bytes(b"x")
    (root / "C.PNG").write_bytes(b"x")
    (root / "notes.txt").write_text("x")
    (root / "scores.npy").write_bytes(b"x")
    (root / "sub" / "z.bmp").write_bytes(b"x")
    (root / "sub" / "m.tif").write_bytes(b"x")
    (root / "sub" / "deeper" / "k.webp").write_bytes(b"x")
    (root / "sub" / "deeper" / "readme.md").write_text("x")
    (root / "looks_like.png").mkdir()  # a folder with an image suffix is not an input
    return root


def test_expand_single_file_kept_whatever_suffix(tree):
    for name in ("notes.txt", "b.png"):
        assert expand_inputs(str(tree / name)) == [tree / name]


def test_expand_folder_returns_image_files_recursively_sorted(tree):
    got = expand_inputs(str(tree))
    expected = [
        tree / "C.PNG",
        tree / "a.jpg",
        tree / "b.png",
        tree / "sub" / "deeper" / "k.webp",
        tree / "sub" / "m.tif",
        tree / "sub" / "z.bmp",
    ]
    assert got == expected
    assert got == sorted(got)
    assert all(p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES for p in got)


def test_expand_glob_pattern(tree):
    assert expand_inputs(str(tree / "*.png")) == [tree / "b.png"]
    assert expand_inputs(str(tree / "**" / "*.bmp")) == [tree / "sub" / "z.bmp"]
    everything = expand_inputs(str(tree / "**" / "*"))
    assert everything == expand_inputs(str(tree))


def test_expand_glob_keeps_only_image_suffixes(tree):
    assert expand_inputs(str(tree / "*.txt")) == []
    assert expand_inputs(str(tree / "*")) == [tree / "C.PNG", tree / "a.jpg", tree / "b.png"]


def test_expand_no_match_is_empty(tmp_path):
    assert expand_inputs(str(tmp_path / "nothing" / "*.png")) == []
    assert expand_inputs(str(tmp_path / "missing.png")) == []
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert expand_inputs(str(empty)) == []
