"""Tests for pyimgano.runtime.tiling: tile placement, cutting, map blending and score reduction.

No torch: this module is part of the edge runtime. No 4K image is allocated; tile counts are computed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyimgano.runtime.tiling import (
    MAP_REDUCE,
    SCORE_REDUCE,
    TileGrid,
    TilingConfig,
    blend_maps,
    cut_tiles,
    make_grid,
    reduce_scores,
    tile_origins,
)

pytestmark = pytest.mark.edge


def linear_tile_maps(grid: TileGrid, model_size: int) -> tuple[np.ndarray, np.ndarray]:
    """f(y, x) = y + 2x sampled per tile at model resolution, and f over the whole image.

    Model pixel i of a tile covers tile pixels [i*s, (i+1)*s) with s = tile / model_size; its centre is
    at y0 + (i + 0.5) * s - 0.5 in image pixel coordinates (the convention of cv2.INTER_LINEAR).
    """
    scale = grid.tile_size / model_size
    centres = (np.arange(model_size) + 0.5) * scale - 0.5
    maps = []
    for y0, x0, _, _ in grid.boxes:
        ys, xs = np.meshgrid(y0 + centres, x0 + centres, indexing="ij")
        maps.append(ys + 2.0 * xs)
    height, width = grid.image_hw
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack(maps).astype(np.float32), (ys + 2.0 * xs).astype(np.float32)


def seam_columns(grid: TileGrid) -> list[int]:
    """Image columns where some tile begins or ends, excluding the image's own borders."""
    width = grid.image_hw[1]
    edges = {x0 for _, x0, _, _ in grid.boxes} | {x1 - 1 for _, _, _, x1 in grid.boxes}
    return sorted(edges - {0, width - 1})


# --------------------------------------------------------------------------- tile_origins and grids


@pytest.mark.parametrize(
    ("length", "tile", "stride", "expected"),
    [
        (1000, 512, 384, [0, 384, 488]),
        (512, 512, 384, [0]),
        (300, 512, 384, [0]),
        (896, 512, 384, [0, 384]),  # length - tile is a multiple of stride: no duplicate last tile
        (1024, 512, 512, [0, 512]),  # stride == tile: no overlap
        (1000, 512, 512, [0, 488]),
        (513, 512, 100, [0, 1]),
        (100, 32, 32, [0, 32, 64, 68]),
    ],
)
def test_tile_origins_by_hand(length, tile, stride, expected):
    assert tile_origins(length, tile, stride) == expected


@pytest.mark.parametrize(("length", "tile", "stride"), [(0, 512, 384), (100, 0, 1), (100, 64, 0), (100, 64, 65)])
def test_tile_origins_rejects_bad_arguments(length, tile, stride):
    with pytest.raises(ValueError):
        tile_origins(length, tile, stride)


def test_every_pixel_is_covered_for_random_sizes():
    rng = np.random.default_rng(2024)
    for _ in range(50):
        height, width = (int(v) for v in rng.integers(1, 1500, size=2))
        tile = int(rng.integers(32, 600))
        stride = int(rng.integers(1, tile + 1)) if rng.random() < 0.2 else int(rng.integers(tile // 2, tile + 1))
        grid = make_grid((height, width), TilingConfig(tile_size=tile, stride=stride))
        case = f"H={height} W={width} tile={tile} stride={stride}"

        coverage = np.zeros((height, width), np.int32)
        for y0, x0, y1, x1 in grid.boxes:
            assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width, case
            assert (y1 - y0, x1 - x0) == (min(tile, height), min(tile, width)), case
            coverage[y0:y1, x0:x1] += 1
        assert coverage.min() >= 1, case

        ys, xs = tile_origins(height, tile, stride), tile_origins(width, tile, stride)
        assert len(grid.boxes) == len(ys) * len(xs), case
        for origins, length in ((ys, height), (xs, width)):
            steps = np.diff(origins)
            assert origins[0] == 0 and (steps > 0).all() and (steps <= stride).all(), case
            assert origins[-1] == max(0, length - tile), case  # flush with the end, never overhanging


def test_4k_grid_has_eleven_by_eleven_tiles():
    grid = make_grid((4096, 4096), TilingConfig(tile_size=512, stride=384))
    assert len(grid.boxes) == 121
    assert grid.boxes[0] == (0, 0, 512, 512)
    assert grid.boxes[-1] == (3584, 3584, 4096, 4096)
    # Non-square 2K: ceil((2448 - 512) / 384) + 1 = 7 columns, ceil((2048 - 512) / 384) + 1 = 5 rows.
    assert len(make_grid((2048, 2448), TilingConfig(tile_size=512, stride=384)).boxes) == 5 * 7


# --------------------------------------------------------------------------- cut_tiles


def test_cut_tiles_reproduces_the_exact_pixels_of_each_box():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(700, 1000, 3), dtype=np.uint8)
    grid = make_grid(image.shape[:2], TilingConfig(tile_size=256, stride=200))
    tiles = cut_tiles(image, grid)
    assert tiles.shape == (len(grid.boxes), 256, 256, 3) and tiles.dtype == np.uint8
    for tile, (y0, x0, y1, x1) in zip(tiles, grid.boxes):
        assert np.array_equal(tile, image[y0:y1, x0:x1])


def test_cut_tiles_pads_an_image_smaller_than_the_tile_by_reflection():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, size=(100, 700, 3), dtype=np.uint8)
    grid = make_grid(image.shape[:2], TilingConfig(tile_size=512, stride=384))
    tiles = cut_tiles(image, grid)
    assert tiles.shape == (2, 512, 512, 3)

    # numpy's "reflect" is OpenCV's BORDER_REFLECT_101 (edge pixel not repeated), here reflected 5 times over.
    padded = np.pad(image, ((0, 412), (0, 0), (0, 0)), mode="reflect")
    for tile, (y0, x0, y1, x1) in zip(tiles, grid.boxes):
        assert (y0, y1) == (0, 100)
        assert np.array_equal(tile[:100], image[:, x0:x1])
        assert np.array_equal(tile, padded[:, x0 : x0 + 512])


def test_cut_tiles_pads_both_dimensions_and_one_channel_images():
    image = np.arange(40 * 50, dtype=np.uint8).reshape(40, 50, 1)
    grid = make_grid((40, 50), TilingConfig(tile_size=64, stride=64))
    tiles = cut_tiles(image, grid)
    assert tiles.shape == (1, 64, 64, 1)
    assert np.array_equal(tiles[0], np.pad(image, ((0, 24), (0, 14), (0, 0)), mode="reflect"))


def test_cut_tiles_rejects_an_image_of_another_size():
    grid = make_grid((100, 100), TilingConfig(tile_size=64, stride=32))
    with pytest.raises(ValueError, match="image"):
        cut_tiles(np.zeros((100, 101, 3), np.uint8), grid)


# --------------------------------------------------------------------------- blend_maps


@pytest.mark.parametrize("reduce", MAP_REDUCE)
@pytest.mark.parametrize(("image_hw", "tile", "stride"), [((700, 1000), 256, 200), ((90, 300), 128, 96)])
def test_constant_tile_maps_blend_to_that_constant(reduce, image_hw, tile, stride):
    config = TilingConfig(tile_size=tile, stride=stride, map_reduce=reduce)
    grid = make_grid(image_hw, config)
    tile_maps = np.full((len(grid.boxes), 64, 64), 0.37, np.float32)  # model resolution != tile size
    out = blend_maps(tile_maps, grid, config)
    assert out.shape == image_hw and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.37, rtol=1e-6)


@pytest.mark.parametrize("reduce", MAP_REDUCE)
def test_a_global_linear_function_at_tile_resolution_is_reconstructed_exactly(reduce):
    config = TilingConfig(tile_size=128, stride=96, map_reduce=reduce)
    grid = make_grid((300, 450), config)
    tile_maps, expected = linear_tile_maps(grid, model_size=128)
    out = blend_maps(tile_maps, grid, config)
    # A tile pasted one pixel off would show an error of 1 (rows) or 2 (columns) along the seams.
    assert np.abs(out - expected).max() < 1e-3
    assert np.abs(out - expected)[:, seam_columns(grid)].max() < 1e-3


def test_hann_hides_the_seams_of_low_resolution_tile_maps_better_than_mean():
    tile, model_size = 128, 32
    grid = make_grid((300, 450), TilingConfig(tile_size=tile, stride=96))
    tile_maps, expected = linear_tile_maps(grid, model_size)
    seams = seam_columns(grid)
    # Bilinear upsampling is exact for a linear function except within half a model pixel of a tile
    # edge, where OpenCV clamps: up to (scale/2 - 0.5) * (|dy| + |dx|) = 1.5 * 3 = 4.5.
    clamp_bound = (tile / model_size / 2 - 0.5) * 3.0
    errors = {}
    for reduce in ("mean", "hann"):
        config = TilingConfig(tile_size=tile, stride=96, map_reduce=reduce)
        error = np.abs(blend_maps(tile_maps, grid, config) - expected)
        assert error.max() <= clamp_bound + 1e-3
        # Away from the image border, seam pixels see an interior tile as well, which pulls the error down.
        errors[reduce] = error[2:-2, seams].max()
    assert errors["mean"] <= clamp_bound / 2 + 1e-3
    assert errors["hann"] < errors["mean"] / 3


def test_two_overlapping_constant_tiles_blend_by_hand():
    tile = 64
    config = TilingConfig(tile_size=tile, stride=48)
    grid = make_grid((64, 112), config)
    assert grid.boxes == [(0, 0, 64, 64), (0, 48, 64, 112)]
    tile_maps = np.stack([np.full((16, 16), 1.0, np.float32), np.full((16, 16), 3.0, np.float32)])
    left, overlap, right = slice(0, 48), slice(48, 64), slice(64, 112)

    out = {reduce: blend_maps(tile_maps, grid, TilingConfig(tile, 48, map_reduce=reduce)) for reduce in MAP_REDUCE}

    for reduce in MAP_REDUCE:
        np.testing.assert_allclose(out[reduce][:, left], 1.0, rtol=1e-6)
        np.testing.assert_allclose(out[reduce][:, right], 3.0, rtol=1e-6)
    np.testing.assert_allclose(out["max"][:, overlap], 3.0, rtol=1e-6)
    np.testing.assert_allclose(out["mean"][:, overlap], 2.0, rtol=1e-6)

    # Hann: weights along x are the 1-D window at each tile's own x offset (the y factor cancels).
    window = np.hanning(tile + 2)[1:-1]
    w_first, w_second = window[48:64], window[0:16]
    expected = (w_first * 1.0 + w_second * 3.0) / (w_first + w_second)
    np.testing.assert_allclose(out["hann"][:, overlap], np.broadcast_to(expected, (64, 16)), rtol=1e-5)
    assert expected[0] < 1.1 and expected[-1] > 2.9  # fades from one tile to the other, no step


def test_hann_edge_weights_are_small_but_not_zero():
    # An image corner is seen by one tile only, at its weakest weight; zero would divide 0 by 0.
    config = TilingConfig(tile_size=64, stride=32, map_reduce="hann")
    grid = make_grid((64, 64), config)
    out = blend_maps(np.full((1, 8, 8), 5.0, np.float32), grid, config)
    assert np.isfinite(out).all()
    assert 0.0 < np.hanning(66)[1] < 0.01


def test_blend_crops_the_padding_of_a_small_image():
    config = TilingConfig(tile_size=64, stride=64, map_reduce="mean")
    grid = make_grid((40, 50), config)
    tile_map = np.arange(64 * 64, dtype=np.float32).reshape(1, 64, 64)
    out = blend_maps(tile_map, grid, config)
    assert out.shape == (40, 50)
    np.testing.assert_array_equal(out, tile_map[0, :40, :50])


def test_blend_rejects_a_tile_count_that_does_not_match_the_grid():
    config = TilingConfig(tile_size=64, stride=32)
    grid = make_grid((100, 100), config)
    with pytest.raises(ValueError, match="tile_maps"):
        blend_maps(np.zeros((len(grid.boxes) - 1, 8, 8), np.float32), grid, config)


# --------------------------------------------------------------------------- reduce_scores


@pytest.mark.parametrize(
    ("reduce", "topk", "expected"),
    [
        ("max", 0.1, 5.0),
        ("mean", 0.1, 3.0),
        ("topk_mean", 0.4, 4.5),  # ceil(0.4 * 5) = 2 -> mean(5, 4)
        ("topk_mean", 0.1, 5.0),  # ceil(0.5) = 1
        ("topk_mean", 0.5, 4.0),  # ceil(2.5) = 3 -> mean(5, 4, 3)
        ("topk_mean", 1.0, 3.0),
    ],
)
def test_reduce_scores_by_hand(reduce, topk, expected):
    scores = np.array([1.0, 5.0, 3.0, 2.0, 4.0])
    config = TilingConfig(tile_size=64, stride=32, score_reduce=reduce, score_topk=topk)
    assert reduce_scores(scores, config) == pytest.approx(expected)


def test_topk_count_is_not_inflated_by_float_rounding():
    # 0.07 * 100 is 7.000000000000001 in binary floating point; the top 7 of 0..99 average 96, the top 8 95.5.
    assert 0.07 * 100 > 7
    config = TilingConfig(tile_size=64, stride=32, score_reduce="topk_mean", score_topk=0.07)
    assert reduce_scores(np.arange(100.0), config) == pytest.approx(96.0)


def test_reduce_scores_rejects_no_tiles():
    with pytest.raises(ValueError, match="empty"):
        reduce_scores(np.array([]), TilingConfig(tile_size=64, stride=32))


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"tile_size": 31}, "tile_size"),
        ({"tile_size": 64.0}, "tile_size"),
        ({"stride": 0}, "stride"),
        ({"stride": 65}, "stride"),
        ({"score_reduce": "median"}, "score_reduce"),
        ({"score_topk": 0.0}, "score_topk"),
        ({"score_topk": 1.5}, "score_topk"),
        ({"map_reduce": "gauss"}, "map_reduce"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    fields = {"tile_size": 64, "stride": 32} | kwargs
    with pytest.raises(ValueError, match=field):
        TilingConfig(**fields)


def test_every_reduce_constant_is_accepted_and_json_round_trips():
    for score_reduce in SCORE_REDUCE:
        for map_reduce in MAP_REDUCE:
            config = TilingConfig(512, 384, score_reduce=score_reduce, score_topk=0.25, map_reduce=map_reduce)
            assert TilingConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    assert TilingConfig(tile_size=32, stride=32).map_reduce == "hann"
