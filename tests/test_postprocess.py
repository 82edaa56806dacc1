"""Tests for pyimgano.runtime.postprocess: smoothing, grey morphology and normal-calibrated normalisation.

References are computed here directly with numpy/OpenCV calls. No torch: this module is part of the edge runtime.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from pyimgano.runtime.postprocess import (
    NORMALIZE_METHODS,
    NormalizationStats,
    PostprocessConfig,
    apply_batch,
    apply_postprocess,
    calibrate_normalization,
)

pytestmark = pytest.mark.edge


def normal_maps(seed: int = 0, count: int = 6, shape: tuple[int, int] = (40, 56)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.gamma(2.0, 0.5, size=(count, *shape)).astype(np.float32)


def blur_reference(anomaly_map: np.ndarray, sigma: float) -> np.ndarray:
    ksize = 2 * math.ceil(3 * sigma) + 1
    return cv2.GaussianBlur(
        anomaly_map.astype(np.float32), (ksize, ksize), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
    )


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("low_high", [(1.0, 99.0), (0.0, 100.0), (5.0, 95.0)])
def test_percentile_stats_equal_numpy_percentile_over_smoothed_normal_maps(low_high):
    maps = normal_maps()
    config = PostprocessConfig(
        normalize=True, normalize_method="percentile", percentile_range=low_high, gaussian_sigma=1.5
    )
    stats = calibrate_normalization(maps, config)

    smoothed = np.stack([blur_reference(m, 1.5) for m in maps])
    expected_low, expected_high = np.percentile(smoothed, low_high)
    assert stats.method == "percentile"
    assert stats.low == pytest.approx(expected_low, rel=1e-6)
    assert stats.high == pytest.approx(expected_high, rel=1e-6)
    assert stats.count == maps.size
    # The blur must have been applied first: raw-map percentiles are measurably wider.
    raw_low, raw_high = np.percentile(maps, low_high)
    assert raw_high - raw_low > 1.2 * (stats.high - stats.low)


def test_minmax_stats_equal_global_min_and_max_over_smoothed_normal_maps():
    maps = normal_maps(seed=1)
    config = PostprocessConfig(normalize=True, normalize_method="minmax", gaussian_sigma=1.0, morph_open_ksize=3)
    stats = calibrate_normalization(maps, config)

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    smoothed = np.stack([cv2.morphologyEx(blur_reference(m, 1.0), cv2.MORPH_OPEN, kernel) for m in maps])
    assert stats.method == "minmax"
    assert stats.low == pytest.approx(float(smoothed.min()), rel=1e-6)
    assert stats.high == pytest.approx(float(smoothed.max()), rel=1e-6)
    assert stats.count == maps.size
    assert stats.high < float(maps.max())  # opening and blur both lower the peak


@pytest.mark.parametrize(
    "config", [PostprocessConfig(normalize=False), PostprocessConfig(normalize=True, normalize_method="none")]
)
def test_no_stats_when_the_config_does_not_normalise(config):
    assert calibrate_normalization(normal_maps(), config) is None
    anomaly_map = normal_maps(count=1)[0]
    np.testing.assert_array_equal(apply_postprocess(anomaly_map, config, None), anomaly_map)


def test_normal_maps_of_different_sizes_are_pooled_pixel_by_pixel():
    # Tiled images keep their own size, so calibration takes a sequence and weighs every pixel once.
    small, large = normal_maps(seed=2, count=1, shape=(16, 24))[0], normal_maps(seed=3, count=1, shape=(48, 64))[0]
    config = PostprocessConfig(normalize=True, normalize_method="percentile", percentile_range=(10.0, 90.0))
    stats = calibrate_normalization([small, large], config)
    pooled = np.concatenate([small.ravel(), large.ravel()])
    expected_low, expected_high = np.percentile(pooled, (10.0, 90.0))
    assert stats.count == small.size + large.size
    assert stats.low == pytest.approx(expected_low, rel=1e-6)
    assert stats.high == pytest.approx(expected_high, rel=1e-6)


def test_constant_normal_maps_cannot_be_calibrated():
    config = PostprocessConfig(normalize=True, normalize_method="minmax")
    with pytest.raises(ValueError, match="high <= low"):
        calibrate_normalization(np.full((3, 8, 8), 0.5, np.float32), config)


def test_calibration_rejects_non_finite_maps_and_wrong_rank():
    config = PostprocessConfig(normalize=True)
    maps = normal_maps()
    maps[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        calibrate_normalization(maps, config)
    with pytest.raises(ValueError, match="normal_maps"):
        calibrate_normalization(normal_maps()[0], config)  # one (H, W) map, not a sequence of them
    with pytest.raises(ValueError, match="normal_maps"):
        calibrate_normalization([], config)


# --------------------------------------------------------------------------- normalisation


def test_two_test_images_share_one_affine_map_unlike_per_image_minmax():
    config = PostprocessConfig(normalize=True, normalize_method="percentile")
    stats = calibrate_normalization(normal_maps(), config)
    rng = np.random.default_rng(7)
    quiet = rng.uniform(0.0, 1.0, (32, 32)).astype(np.float32)
    defective = rng.uniform(0.0, 1.0, (32, 32)).astype(np.float32)
    defective[10:14, 10:14] = 9.0  # far above anything seen on normal maps
    quiet[5, 5] = defective[5, 5] = 0.75  # the same raw value at the same pixel in both images

    out_quiet = apply_postprocess(quiet, config, stats)
    out_defective = apply_postprocess(defective, config, stats)

    assert out_quiet[5, 5] == out_defective[5, 5]
    scale = stats.high - stats.low
    np.testing.assert_allclose(out_quiet, (quiet - stats.low) / scale, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out_defective, (defective - stats.low) / scale, rtol=1e-5, atol=1e-6)

    # Per-image min-max, the thing this module exists to avoid, maps the same raw value differently.
    def per_image(m: np.ndarray) -> np.ndarray:
        return (m - m.min()) / (m.max() - m.min())

    assert abs(per_image(quiet)[5, 5] - per_image(defective)[5, 5]) > 0.3


def test_normalisation_is_not_clipped_and_preserves_ordering():
    config = PostprocessConfig(normalize=True, normalize_method="minmax")
    stats = NormalizationStats(method="minmax", low=1.0, high=3.0, count=100)
    anomaly_map = np.array([[-1.0, 1.0, 2.0], [3.0, 5.0, 11.0]], np.float32)

    out = apply_postprocess(anomaly_map, config, stats)

    np.testing.assert_allclose(out, [[-1.0, 0.0, 0.5], [1.0, 2.0, 5.0]], rtol=1e-6)
    assert out.min() < 0.0 and out.max() > 1.0
    assert np.array_equal(np.argsort(out, axis=None), np.argsort(anomaly_map, axis=None))


def test_missing_stats_raise_and_say_they_come_from_normal_images():
    config = PostprocessConfig(normalize=True)
    with pytest.raises(ValueError, match="calibrated on normal images"):
        apply_postprocess(normal_maps(count=1)[0], config, None)
    with pytest.raises(ValueError, match="calibrated on normal images"):
        apply_batch(np.zeros((0, 4, 4), np.float32), config, None)


def test_stats_of_another_method_are_refused():
    config = PostprocessConfig(normalize=True, normalize_method="percentile")
    stats = NormalizationStats(method="minmax", low=0.0, high=1.0, count=10)
    with pytest.raises(ValueError, match="does not match normalize_method"):
        apply_postprocess(np.zeros((4, 4), np.float32), config, stats)


# --------------------------------------------------------------------------- smoothing and morphology


@pytest.mark.parametrize("sigma", [0.8, 2.0])
def test_gaussian_equals_opencv_reference(sigma):
    anomaly_map = normal_maps(seed=3, count=1)[0].astype(np.float64)
    out = apply_postprocess(anomaly_map, PostprocessConfig(gaussian_sigma=sigma), None)
    np.testing.assert_allclose(out, blur_reference(anomaly_map, sigma), rtol=1e-6, atol=1e-6)


def test_gaussian_spreads_an_impulse_over_plus_minus_three_sigma_and_keeps_its_mass():
    impulse = np.zeros((41, 41), np.float32)
    impulse[20, 20] = 1.0
    out = apply_postprocess(impulse, PostprocessConfig(gaussian_sigma=2.0), None)
    assert out.sum() == pytest.approx(1.0, abs=1e-5)
    support = np.argwhere(out > 0)
    assert support.min() == 20 - 6 and support.max() == 20 + 6  # ksize 13 for sigma 2
    assert out[20, 20] == out.max()


def test_opening_removes_a_single_pixel_spike_but_keeps_a_blob():
    anomaly_map = np.zeros((20, 20), np.float32)
    anomaly_map[3, 3] = 10.0
    anomaly_map[10:15, 10:15] = 4.0
    out = apply_postprocess(anomaly_map, PostprocessConfig(morph_open_ksize=3), None)
    assert out[3, 3] == 0.0
    assert out[2:5, 2:5].max() == 0.0
    assert out[11:14, 11:14].min() == 4.0  # the interior of a 5x5 blob survives a 3x3 opening


def test_closing_fills_a_one_pixel_hole_but_not_a_large_one():
    anomaly_map = np.ones((20, 20), np.float32)
    anomaly_map[4, 4] = 0.0
    anomaly_map[10:17, 10:17] = 0.0
    out = apply_postprocess(anomaly_map, PostprocessConfig(morph_close_ksize=3), None)
    assert out[4, 4] == 1.0
    assert out[12:15, 12:15].max() == 0.0


def test_opening_runs_before_closing():
    # A 3x3 ring: opening first erases it (nothing survives the erosion); closing first would fill the
    # hole into a solid block whose core then survives the opening.
    anomaly_map = np.zeros((11, 11), np.float32)
    anomaly_map[4:7, 4:7] = 5.0
    anomaly_map[5, 5] = 0.0
    out = apply_postprocess(anomaly_map, PostprocessConfig(morph_open_ksize=3, morph_close_ksize=3), None)
    assert out.max() == 0.0

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    close_then_open = cv2.morphologyEx(cv2.morphologyEx(anomaly_map, cv2.MORPH_CLOSE, kernel), cv2.MORPH_OPEN, kernel)
    assert close_then_open[5, 5] == 5.0  # the other order really does differ


def test_output_is_float32_same_shape_and_input_untouched():
    anomaly_map = normal_maps(seed=4, count=1)[0].astype(np.float64)
    before = anomaly_map.copy()
    config = PostprocessConfig(normalize=True, gaussian_sigma=1.0, morph_open_ksize=3, morph_close_ksize=5)
    stats = calibrate_normalization(normal_maps(), config)
    out = apply_postprocess(anomaly_map, config, stats)
    assert out.dtype == np.float32 and out.shape == anomaly_map.shape
    np.testing.assert_array_equal(anomaly_map, before)

    # With every step off the result must still be a copy, or the caller could corrupt the input.
    passthrough = normal_maps(count=1)[0]
    out = apply_postprocess(passthrough, PostprocessConfig(), None)
    out += 1.0
    np.testing.assert_array_equal(passthrough, normal_maps(count=1)[0])


def test_apply_batch_equals_per_map_application():
    config = PostprocessConfig(normalize=True, normalize_method="minmax", gaussian_sigma=1.2, morph_close_ksize=3)
    stats = calibrate_normalization(normal_maps(), config)
    maps = normal_maps(seed=9, count=4)
    out = apply_batch(maps, config, stats)
    assert out.shape == maps.shape and out.dtype == np.float32
    for index in range(len(maps)):
        np.testing.assert_array_equal(out[index], apply_postprocess(maps[index], config, stats))


# --------------------------------------------------------------------------- validation and JSON


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"normalize_method": "zscore"}, "normalize_method"),
        ({"percentile_range": (99.0, 1.0)}, "percentile_range"),
        ({"percentile_range": (50.0, 50.0)}, "percentile_range"),
        ({"percentile_range": (-1.0, 99.0)}, "percentile_range"),
        ({"percentile_range": (1.0, 100.5)}, "percentile_range"),
        ({"percentile_range": (1.0, 50.0, 99.0)}, "percentile_range"),
        ({"gaussian_sigma": -0.5}, "gaussian_sigma"),
        ({"gaussian_sigma": float("nan")}, "gaussian_sigma"),
        ({"morph_open_ksize": 4}, "morph_open_ksize"),
        ({"morph_open_ksize": 1}, "morph_open_ksize"),
        ({"morph_close_ksize": 2}, "morph_close_ksize"),
        ({"morph_close_ksize": -3}, "morph_close_ksize"),
        ({"morph_close_ksize": 3.0}, "morph_close_ksize"),
    ],
)
def test_config_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        PostprocessConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "none"}, "method"),
        ({"low": 2.0, "high": 2.0}, "high must be > low"),
        ({"low": float("inf")}, "finite"),
        ({"count": 0}, "count"),
    ],
)
def test_stats_validation(kwargs, field):
    fields = {"method": "percentile", "low": 0.0, "high": 1.0, "count": 10} | kwargs
    with pytest.raises(ValueError, match=field):
        NormalizationStats(**fields)


def test_every_method_constant_is_accepted():
    for method in NORMALIZE_METHODS:
        assert PostprocessConfig(normalize_method=method).normalize_method == method


def test_json_round_trips():
    config = PostprocessConfig(
        normalize=True, normalize_method="minmax", percentile_range=(2.5, 97.5), gaussian_sigma=1.25,
        morph_open_ksize=3, morph_close_ksize=5,
    )
    config_back = PostprocessConfig.from_json(json.loads(json.dumps(config.to_json())))
    assert config_back == config
    assert isinstance(config_back.percentile_range, tuple)
    assert PostprocessConfig.from_json({}) == PostprocessConfig()

    stats = calibrate_normalization(normal_maps(), config)
    stats_back = NormalizationStats.from_json(json.loads(json.dumps(stats.to_json())))
    assert stats_back == stats
    anomaly_map = normal_maps(seed=5, count=1)[0]
    np.testing.assert_array_equal(
        apply_postprocess(anomaly_map, config_back, stats_back), apply_postprocess(anomaly_map, config, stats)
    )
