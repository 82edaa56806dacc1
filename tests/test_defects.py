"""Defect extraction on hand-built anomaly maps: every knob of the `defects` block, with exact outcomes.

numpy + OpenCV only (runs in the edge environment too).
"""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest

from pyimgano.runtime.defects import (
    DEFAULT_LEVELS,
    DefectsConfig,
    extract_regions,
    normal_pixel_quantiles,
    threshold_from_normal_quantiles,
)

pytestmark = pytest.mark.edge

T = 0.5  # the pixel threshold used throughout, unless a test says otherwise


def run(anomaly_map: np.ndarray, threshold: float = T, hw: tuple[int, int] | None = None, **knobs):
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    return extract_regions(anomaly_map, hw or anomaly_map.shape, threshold, DefectsConfig(**knobs))


def bboxes(regions: list[dict]) -> list[list[int]]:
    return [region["bbox_xyxy"] for region in regions]


def blank(height: int = 20, width: int = 20) -> np.ndarray:
    return np.zeros((height, width), dtype=np.float32)


# --- the basics -------------------------------------------------------------------------------------------


def test_one_blob_gives_exact_region_fields_and_a_0_255_mask():
    m = blank(10, 10)
    m[2:5, 3:7] = 1.0
    m[3, 4] = 2.0
    mask, regions = run(m)
    assert mask.dtype == np.uint8 and mask.shape == (10, 10)
    assert set(np.unique(mask)) == {0, 255}
    assert np.array_equal(mask > 0, m > T)
    assert len(regions) == 1
    region = regions[0]
    assert set(region) == {"bbox_xyxy", "area", "centroid_xy", "score_max", "score_mean", "id"}
    assert region["bbox_xyxy"] == [3, 2, 7, 5]  # x1/y1 exclusive
    assert region["area"] == 12
    assert region["centroid_xy"] == [4.5, 3.0]
    assert region["score_max"] == 2.0
    assert region["score_mean"] == pytest.approx(13.0 / 12.0)
    assert region["id"] == 0


def test_threshold_is_strict_and_input_map_is_untouched():
    m = blank(6, 6)
    m[1:3, 1:3] = T  # exactly at the threshold: not a defect
    m[4, 4] = T + 1e-3
    before = m.copy()
    mask, regions = run(m)
    assert bboxes(regions) == [[4, 4, 5, 5]]
    assert int((mask > 0).sum()) == 1
    assert np.array_equal(m, before)


def test_empty_map_gives_empty_mask_and_no_regions():
    mask, regions = run(blank(8, 9), merge_gap_px=2, min_solidity=0.5)
    assert regions == [] and mask.shape == (8, 9) and not mask.any()


def test_map_is_resized_to_the_original_size_and_boxes_scale():
    m = blank(10, 10)
    m[2:4, 3:6] = 1.0  # bbox [3, 2, 6, 4] at map resolution
    mask, regions = run(m, hw=(20, 20))
    assert mask.shape == (20, 20)
    # Bilinear 2x: the first/last upsampled pixel next to an edge reads 0.75 (in), the one outside 0.25 (out).
    assert bboxes(regions) == [[6, 4, 12, 8]]
    assert regions[0]["area"] == 24
    assert regions[0]["centroid_xy"] == [8.5, 5.5]
    assert regions[0]["score_max"] == 1.0


def test_non_square_upsampling_keeps_height_and_width_apart():
    m = blank(10, 10)
    m[2:4, 3:6] = 1.0
    mask, regions = run(m, hw=(10, 20))  # height unchanged, width doubled
    assert mask.shape == (10, 20)
    assert bboxes(regions) == [[6, 2, 12, 4]]
    assert regions[0]["area"] == 12


# --- existing knobs --------------------------------------------------------------------------------------


def test_roi_excludes_a_blob_outside_it():
    m = blank()
    m[2:6, 2:6] = 1.0  # left half
    m[12:16, 14:18] = 1.0  # right half
    _, both = run(m)
    assert len(both) == 2
    mask, regions = run(m, roi_xyxy_norm=(0.0, 0.0, 0.5, 1.0))
    assert bboxes(regions) == [[2, 2, 6, 6]]
    assert not mask[:, 10:].any()


def test_roi_cuts_a_blob_straddling_its_edge():
    m = blank()
    m[4:8, 6:14] = 1.0
    _, regions = run(m, roi_xyxy_norm=(0.0, 0.0, 0.5, 1.0))  # x < 10 allowed
    assert bboxes(regions) == [[6, 4, 10, 8]] and regions[0]["area"] == 16


def test_border_ignore_clears_the_frame():
    m = np.ones((10, 10), dtype=np.float32)
    mask, regions = run(m, border_ignore_px=2)
    assert bboxes(regions) == [[2, 2, 8, 8]]
    assert regions[0]["area"] == 36
    assert not mask[:2].any() and not mask[-2:].any() and not mask[:, :2].any() and not mask[:, -2:].any()


def test_open_removes_a_one_pixel_speck():
    m = blank()
    m[3:8, 3:8] = 1.0
    m[15, 15] = 1.0
    _, plain = run(m)
    assert len(plain) == 2
    mask, regions = run(m, open_ksize=3)
    # Opening a 5x5 square with the 3x3 cross only rounds off its 4 corners.
    assert bboxes(regions) == [[3, 3, 8, 8]] and regions[0]["area"] == 21
    assert mask[15, 15] == 0


def test_close_bridges_a_one_pixel_gap():
    m = blank()
    m[5:8, 2:6] = 1.0
    m[5:8, 7:11] = 1.0  # column 6 empty between them
    _, plain = run(m)
    assert bboxes(plain) == [[2, 5, 6, 8], [7, 5, 11, 8]]
    mask, regions = run(m, close_ksize=3)
    assert bboxes(regions) == [[2, 5, 11, 8]]
    assert regions[0]["area"] == 25  # 24 plus the bridge pixel (6, 6) the cross closes
    assert mask[6, 6] == 255 and mask[5, 6] == 0


def test_fill_holes_fills_a_ring_centre():
    m = blank()
    m[5:12, 5:12] = 1.0
    m[7:10, 7:10] = 0.0
    _, plain = run(m)
    assert plain[0]["area"] == 40
    mask, regions = run(m, fill_holes=True)
    assert regions[0]["area"] == 49 and mask[8, 8] == 255
    assert regions[0]["score_mean"] == pytest.approx(40.0 / 49.0)  # filled pixels keep their map value


def test_min_area_drops_small_regions_and_clears_them():
    m = blank()
    m[1:3, 1:3] = 1.0  # area 4
    m[10:13, 10:13] = 1.0  # area 9
    mask, regions = run(m, min_area=5)
    assert [r["area"] for r in regions] == [9]
    assert not mask[1:3, 1:3].any()
    assert [r["area"] for r in run(m, min_area=4)[1]] == [4, 9]  # min_area is inclusive


def test_min_score_max_and_mean():
    m = blank()
    m[1:3, 1:3] = 0.6  # max 0.6, mean 0.6
    m[10:13, 10:13] = 0.55
    m[11, 11] = 0.95  # max 0.95, mean (8 * 0.55 + 0.95) / 9 = 0.5944
    _, by_max = run(m, min_score_max=0.9)
    assert bboxes(by_max) == [[10, 10, 13, 13]]
    mask, by_mean = run(m, min_score_mean=0.598)
    assert bboxes(by_mean) == [[1, 1, 3, 3]]
    assert not mask[10:13, 10:13].any()
    assert run(m, min_score_max=0.9, min_score_mean=0.598)[1] == []


def three_regions() -> np.ndarray:
    m = blank(30, 30)
    m[1:4, 1:4] = 1.0  # A: area 9, max 5, mean 13/9
    m[2, 2] = 5.0
    m[10:12, 10:12] = 3.0  # B: area 4, max 3, mean 3
    m[20:24, 20:24] = 2.0  # C: area 16, max 2, mean 2
    return m


@pytest.mark.parametrize(
    "key, order",
    [("score_max", ["A", "B", "C"]), ("score_mean", ["B", "C", "A"]), ("area", ["C", "A", "B"])],
)
def test_region_sort_and_max_regions(key, order):
    boxes = {"A": [1, 1, 4, 4], "B": [10, 10, 12, 12], "C": [20, 20, 24, 24]}
    m = three_regions()
    _, regions = run(m, region_sort=key)
    assert bboxes(regions) == [boxes[name] for name in order]
    assert [r["id"] for r in regions] == [0, 1, 2]
    mask, top = run(m, region_sort=key, max_regions=1)
    assert bboxes(top) == [boxes[order[0]]] and top[0]["id"] == 0
    x0, y0, x1, y1 = boxes[order[0]]
    assert int((mask > 0).sum()) == top[0]["area"] == int((mask[y0:y1, x0:x1] > 0).sum())


# --- validation and JSON ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "knobs, field",
    [
        ({"mask_format": "jpg"}, "mask_format"),
        ({"pixel_threshold_strategy": "otsu"}, "pixel_threshold_strategy"),
        ({"pixel_threshold_strategy": "fixed"}, "pixel_threshold"),
        ({"region_sort": "id"}, "region_sort"),
        ({"pixel_normal_quantile": 1.0}, "pixel_normal_quantile"),
        ({"min_area": -1}, "min_area"),
        ({"max_regions": 0}, "max_regions"),
        ({"roi_xyxy_norm": (0.5, 0.0, 0.4, 1.0)}, "roi_xyxy_norm"),
        ({"smooth": "bilateral"}, "smooth"),
        ({"smooth": "gaussian"}, "smooth_ksize"),
        ({"smooth": "gaussian", "smooth_ksize": 4}, "smooth_ksize"),
        ({"smooth": "median", "smooth_ksize": 7}, "smooth_ksize"),
        ({"smooth_ksize": -1}, "smooth_ksize"),
        ({"hysteresis_low": float("nan")}, "hysteresis_low"),
        ({"pixel_threshold_strategy": "fixed", "pixel_threshold": 0.5, "hysteresis_low": 0.5}, "hysteresis_low"),
        ({"merge_gap_px": -1}, "merge_gap_px"),
        ({"min_fill_ratio": 1.5}, "min_fill_ratio"),
        ({"max_aspect_ratio": 0.5}, "max_aspect_ratio"),
        ({"min_solidity": -0.1}, "min_solidity"),
    ],
)
def test_invalid_values_raise_naming_the_field(knobs, field):
    with pytest.raises(ValueError, match=field):
        DefectsConfig(**knobs)


def test_replace_validates_too():
    with pytest.raises(ValueError, match="smooth_ksize"):
        dataclasses.replace(DefectsConfig(), smooth="median", smooth_ksize=9)
    assert dataclasses.replace(DefectsConfig(), smooth="median", smooth_ksize=5).smooth_ksize == 5


def test_new_knobs_default_off_and_json_round_trips():
    defaults = DefectsConfig()
    assert (defaults.smooth, defaults.smooth_ksize, defaults.hysteresis_low, defaults.merge_gap_px) == ("none", 0, None, 0)
    assert (defaults.min_fill_ratio, defaults.max_aspect_ratio, defaults.min_solidity) == (None, None, None)
    partial = DefectsConfig.from_json({"enabled": True, "min_area": 3})
    assert partial == dataclasses.replace(defaults, enabled=True, min_area=3)
    full = DefectsConfig(
        enabled=True, roi_xyxy_norm=(0.1, 0.2, 0.9, 0.8), smooth="gaussian", smooth_ksize=5, hysteresis_low=0.2,
        merge_gap_px=3, min_fill_ratio=0.2, max_aspect_ratio=4.0, min_solidity=0.7,
    )
    data = json.loads(json.dumps(full.to_json()))
    assert data["roi_xyxy_norm"] == [0.1, 0.2, 0.9, 0.8] and data["merge_gap_px"] == 3 and data["smooth"] == "gaussian"
    assert DefectsConfig.from_json(data) == full


# --- smoothing -------------------------------------------------------------------------------------------


def hot_pixel_and_block() -> np.ndarray:
    m = blank(15, 15)
    m[2, 2] = 1.0  # isolated hot pixel
    m[6:11, 6:11] = 1.0  # 5x5 block
    return m


def test_plain_threshold_keeps_an_isolated_hot_pixel():
    _, regions = run(hot_pixel_and_block())
    assert bboxes(regions) == [[2, 2, 3, 3], [6, 6, 11, 11]]


def test_gaussian_smoothing_removes_an_isolated_hot_pixel():
    mask, regions = run(hot_pixel_and_block(), smooth="gaussian", smooth_ksize=3)
    # ksize 3, sigma 0 -> kernel [1/4, 1/2, 1/4]: the hot pixel peaks at 1/4; the block's corners read
    # 3/4 * 3/4 = 0.5625 (kept) and the pixels just outside it 1/4 * 1 (dropped).
    assert bboxes(regions) == [[6, 6, 11, 11]]
    assert regions[0]["area"] == 25
    assert regions[0]["score_max"] == pytest.approx(1.0)
    assert regions[0]["score_mean"] == pytest.approx((9 * 1.0 + 12 * 0.75 + 4 * 0.5625) / 25)  # smoothed values
    assert mask[2, 2] == 0


def test_median_smoothing_removes_an_isolated_hot_pixel():
    _, regions = run(hot_pixel_and_block(), smooth="median", smooth_ksize=3)
    # A 3x3 median drops the hot pixel and the block's 4 corners (4 of 9 neighbours set).
    assert bboxes(regions) == [[6, 6, 11, 11]]
    assert regions[0]["area"] == 21
    _, five = run(hot_pixel_and_block(), smooth="median", smooth_ksize=5)
    assert five[0]["area"] == 25 - 4 * 3  # 5x5 median: each corner loses its 3-pixel corner triangle


def test_smoothing_runs_at_map_resolution_before_the_resize():
    m = blank(8, 8)
    m[1, 1] = 1.0
    m[4:8, 4:8] = 1.0
    _, plain = run(m, hw=(32, 32))
    assert len(plain) == 2  # upsampled 4x the hot pixel is a blob a 3x3 median at image size would keep
    _, regions = run(m, hw=(32, 32), smooth="median", smooth_ksize=3)
    assert len(regions) == 1 and regions[0]["bbox_xyxy"][0] >= 16


# --- hysteresis ------------------------------------------------------------------------------------------


def core_tail_island() -> np.ndarray:
    m = blank(12, 20)
    m[4:7, 2:5] = 0.9  # strong core
    m[5, 5:10] = 0.4  # weak tail attached to it
    m[6, 10] = 0.4  # diagonal step: still 8-connected
    m[9:11, 14:17] = 0.4  # weak island
    return m


def test_plain_threshold_sees_only_the_core():
    _, regions = run(core_tail_island(), threshold=0.8)
    assert bboxes(regions) == [[2, 4, 5, 7]] and regions[0]["area"] == 9


def test_hysteresis_keeps_the_weak_tail_and_drops_the_weak_island():
    mask, regions = run(core_tail_island(), threshold=0.8, hysteresis_low=0.3)
    assert bboxes(regions) == [[2, 4, 11, 7]]
    assert regions[0]["area"] == 9 + 5 + 1
    assert regions[0]["score_max"] == pytest.approx(0.9)
    assert regions[0]["score_mean"] == pytest.approx((9 * 0.9 + 6 * 0.4) / 15)
    assert not mask[9:11, 14:17].any()


def test_hysteresis_low_above_the_island_and_tail_changes_nothing():
    _, regions = run(core_tail_island(), threshold=0.8, hysteresis_low=0.5)
    assert bboxes(regions) == [[2, 4, 5, 7]]


def test_hysteresis_low_must_be_below_the_threshold_at_call_time():
    with pytest.raises(ValueError, match="hysteresis_low"):
        run(core_tail_island(), threshold=0.3, hysteresis_low=0.3)


# --- merging ---------------------------------------------------------------------------------------------


def two_blobs(gap: int) -> np.ndarray:
    m = blank(12, 20)
    m[4:8, 2:6] = 0.6
    m[4:8, 6 + gap : 10 + gap] = 1.0
    return m


@pytest.mark.parametrize("merge_gap_px, count", [(0, 2), (1, 2), (2, 2), (3, 1), (5, 1)])
def test_merge_joins_blobs_at_most_gap_pixels_apart(merge_gap_px, count):
    _, regions = run(two_blobs(3), merge_gap_px=merge_gap_px)
    assert len(regions) == count


def test_merged_region_stats_are_over_the_union_and_the_mask_is_not_dilated():
    m = two_blobs(3)
    mask, regions = run(m, merge_gap_px=3)
    assert len(regions) == 1
    region = regions[0]
    assert region["bbox_xyxy"] == [2, 4, 13, 8]
    assert region["area"] == 16 + 16
    assert region["centroid_xy"] == [7.0, 5.5]  # x: (3.5 * 16 + 10.5 * 16) / 32
    assert region["score_max"] == 1.0
    assert region["score_mean"] == pytest.approx(0.8)
    assert np.array_equal(mask > 0, m > T)


def test_merge_bridges_a_diagonal_gap():
    m = blank(20, 20)
    m[2:5, 2:5] = 1.0
    m[8:11, 8:11] = 1.0  # 3 background pixels between them along both axes
    assert len(run(m, merge_gap_px=2)[1]) == 2
    assert [r["area"] for r in run(m, merge_gap_px=3)[1]] == [18]


def test_a_defect_split_by_a_thin_gap_is_one_region_and_passes_filters_as_one():
    m = blank(10, 20)
    m[3:5, 2:6] = 1.0
    m[3:5, 7:11] = 1.0  # a crack broken by one column: two areas of 8
    assert run(m, min_area=10)[1] == []
    _, regions = run(m, merge_gap_px=1, min_area=10)
    assert bboxes(regions) == [[2, 3, 11, 5]] and regions[0]["area"] == 16


# --- shape filters ---------------------------------------------------------------------------------------


def test_fill_ratio_drops_a_thin_diagonal_line():
    m = blank(20, 20)
    for i in range(10):
        m[2 + i, 2 + i] = 1.0  # area 10 in a 10x10 box: fill 0.1
    m[14:18, 14:18] = 1.0  # fill 1
    _, plain = run(m)
    assert len(plain) == 2
    mask, regions = run(m, min_fill_ratio=0.3)
    assert bboxes(regions) == [[14, 14, 18, 18]]
    assert not mask[:12, :12].any()
    assert len(run(m, min_fill_ratio=0.1)[1]) == 2  # inclusive bound


def test_aspect_ratio_drops_a_long_thin_bar():
    m = blank(20, 20)
    m[2:4, 2:14] = 1.0  # 12 x 2: aspect 6
    m[10:14, 10:16] = 1.0  # 6 x 4: aspect 1.5
    m[15:19, 2:3] = 1.0  # 1 x 4 vertical: aspect 4
    mask, regions = run(m, max_aspect_ratio=3.0)
    assert bboxes(regions) == [[10, 10, 16, 14]]
    assert not mask[2:4].any()
    assert len(run(m, max_aspect_ratio=4.0)[1]) == 2  # inclusive bound: the 1 x 4 bar stays
    assert len(run(m, max_aspect_ratio=6.0)[1]) == 3


def test_solidity_drops_an_l_and_a_ring_but_keeps_a_disc_and_a_rectangle():
    m = blank(60, 60)
    m[2:22, 2:6] = 1.0  # L: vertical arm 20 x 4 ...
    m[18:22, 6:22] = 1.0  # ... horizontal arm 16 x 4; area 144, hull 272 -> solidity 0.53
    m[30:41, 2:13] = 1.0  # ring: 11 x 11 with a 1-pixel wall, area 40, hull 121 -> 0.33
    m[31:40, 3:12] = 0.0
    disc = np.zeros((60, 60), np.uint8)
    cv2.circle(disc, (45, 12), 7, 1, -1)
    m[disc > 0] = 1.0
    m[40:50, 30:52] = 1.0  # filled rectangle: solidity exactly 1
    _, plain = run(m)
    assert len(plain) == 4
    mask, regions = run(m, min_solidity=0.8)
    assert sorted(bboxes(regions)) == [[30, 40, 52, 50], [38, 5, 53, 20]]
    assert not mask[2:22, 2:22].any() and not mask[30:41, 2:13].any()
    # The L's solidity is 144 / 272 = 0.529: kept at 0.52, dropped at 0.54.
    assert [2, 2, 22, 22] in bboxes(run(m, min_solidity=0.52)[1])
    assert [2, 2, 22, 22] not in bboxes(run(m, min_solidity=0.54)[1])
    assert bboxes(run(m, min_solidity=1.0)[1]) == [[30, 40, 52, 50]]


def test_solidity_is_one_for_tiny_regions():
    m = blank(10, 10)
    m[2, 2] = 1.0  # one pixel
    m[6, 6] = m[7, 7] = 1.0  # two diagonal pixels
    _, regions = run(m, min_solidity=1.0)
    assert [r["area"] for r in regions] == [1, 2]


def test_shape_filters_apply_to_the_merged_region():
    m = blank(12, 30)
    m[4:8, 2:6] = 1.0
    m[4:8, 8:12] = 1.0
    m[4:8, 14:18] = 1.0  # three 4x4 squares, 2 px apart: alone aspect 1, merged 16 x 4 = aspect 4
    assert len(run(m, max_aspect_ratio=3.0)[1]) == 3
    assert run(m, merge_gap_px=2, max_aspect_ratio=3.0)[1] == []
    _, merged = run(m, merge_gap_px=2, max_aspect_ratio=4.0, min_fill_ratio=0.75)
    assert bboxes(merged) == [[2, 4, 18, 8]] and merged[0]["area"] == 48  # fill 48 / 64 = 0.75


def test_all_knobs_together_in_order():
    m = blank(30, 40)
    m[2, 35] = 1.0  # hot pixel: the 3x3 median removes it
    m[10:16, 5:11] = 0.9  # strong core
    m[12:15, 11:14] = 0.45  # weak tail, kept by hysteresis
    m[11:16, 16:20] = 0.9  # a second blob 2 px after the tail: merged
    m[25:28, 2:38] = 0.9  # long bar: dropped by the aspect ratio
    m[20:22, 30:32] = 0.9  # 2x2 speck: the median erases it too
    kwargs = dict(threshold=0.6, smooth="median", smooth_ksize=3, hysteresis_low=0.3, max_aspect_ratio=5.0)
    _, unmerged = run(m, **kwargs)
    assert bboxes(unmerged) == [[5, 10, 14, 16], [16, 11, 20, 16]]
    mask, regions = run(m, merge_gap_px=3, min_area=40, **kwargs)
    # The 3x3 median takes the rectangles' free corners: core 36 - 3 ((15, 10) touches the tail and reads 0.45),
    # tail 9 - 2, blob 20 - 4; and (11, 11), in the core/tail notch, gains 0.45 (5 of its 9 neighbours set).
    assert bboxes(regions) == [[5, 10, 20, 16]]
    assert regions[0]["area"] == 33 + 7 + 1 + 16
    assert not mask[25:28].any() and mask[2, 35] == 0 and not mask[20:22, 30:32].any()


# --- normal pixel quantiles ------------------------------------------------------------------------------


def test_quantile_table_matches_numpy_and_round_trips_through_json():
    values = np.random.default_rng(0).gamma(2.0, 1.0, size=200_000).astype(np.float32)
    table = json.loads(json.dumps(normal_pixel_quantiles(values)))
    assert table["q"] == sorted(DEFAULT_LEVELS)
    assert len(DEFAULT_LEVELS) == 11 and 0.5 in DEFAULT_LEVELS and 0.99999 in DEFAULT_LEVELS
    expected = np.quantile(values.astype(np.float64), table["q"])
    np.testing.assert_allclose(table["values"], expected, rtol=1e-12)
    for q, v in zip(table["q"], table["values"]):
        assert threshold_from_normal_quantiles(table, q) == pytest.approx(v, rel=1e-12)
    # Between stored levels: linear interpolation of the neighbours.
    mid = threshold_from_normal_quantiles(table, 0.9975)
    lo, hi = table["values"][table["q"].index(0.995)], table["values"][table["q"].index(0.998)]
    assert mid == pytest.approx(lo + (hi - lo) * (0.9975 - 0.995) / (0.998 - 0.995))
    assert lo < mid < hi
    assert mid == pytest.approx(float(np.quantile(values, 0.9975)), rel=0.01)


def test_quantile_table_custom_levels_and_errors():
    values = np.arange(101, dtype=np.float32)  # quantile q is exactly 100 q
    table = normal_pixel_quantiles(values, levels=[0.9, 0.5, 0.9, 0.99])
    assert table == {"q": [0.5, 0.9, 0.99], "values": [50.0, 90.0, 99.0]}
    assert threshold_from_normal_quantiles(table, 0.7) == pytest.approx(70.0)
    assert threshold_from_normal_quantiles(table, 0.95) == pytest.approx(90.0 + 9.0 * 0.05 / 0.09)
    for q in (0.4, 0.995):
        with pytest.raises(ValueError, match="outside"):
            threshold_from_normal_quantiles(table, q)
    with pytest.raises(ValueError):
        threshold_from_normal_quantiles({"q": [0.5, 0.9]}, 0.7)
    with pytest.raises(ValueError):
        threshold_from_normal_quantiles({"q": [0.9, 0.5], "values": [1.0, 2.0]}, 0.7)
    with pytest.raises(ValueError):
        normal_pixel_quantiles(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        normal_pixel_quantiles(values, levels=[1.5])
