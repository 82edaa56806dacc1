"""The operating point: thresholds set from out-of-fold normal scores at a stated false-reject rate.

Checked against references computed here: scipy's beta quantiles for the Clopper-Pearson interval, the
known quantiles of exponential and generalized Pareto samples for the tail fit, and the empirical rate
of fresh samples from the same distribution for the thresholds themselves.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pyimgano.workbench import operating_point as op

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("k, n", [(0, 32), (1, 32), (3, 100), (7, 714), (32, 32), (0, 5000)])
def test_clopper_pearson_matches_the_beta_quantiles(k, n):
    low, high = op.clopper_pearson(k, n)
    expected_low = stats.beta.ppf(0.025, k, n - k + 1) if k > 0 else 0.0
    expected_high = stats.beta.ppf(0.975, k + 1, n - k) if k < n else 1.0
    assert low == pytest.approx(expected_low, abs=1e-9) and high == pytest.approx(expected_high, abs=1e-9)


def test_clopper_pearson_refuses_impossible_counts():
    with pytest.raises(ValueError):
        op.clopper_pearson(5, 3)


def test_tail_fit_recovers_an_exponential_quantile():
    """5,000 exponential draws: the fitted tail's 1-in-1000 quantile within 5% of the distribution's own."""
    sample = np.random.default_rng(7).exponential(2.0, size=5000)
    tail = op.fit_tail(sample)
    assert tail["shape"] == 0.0 and tail["exceedances"] == 1000
    assert op.tail_quantile(tail, 0.001) == pytest.approx(2.0 * math.log(1000), rel=0.05)


def test_small_samples_extrapolate_a_tail_and_say_how_many_images_the_target_needs():
    scores = np.random.default_rng(0).normal(10.0, 1.0, size=32)
    record = op.operating_point(scores, 0.01, "32 normal images", summary={})
    assert record["method"] == "normal_score_tail" and record["tail"]["exceedances"] == 7
    assert "needs 1000" in record["warning"]
    # At least the largest normal score (fewer than 1 / rate scores: the target allows no rejection among them).
    assert record["value"] >= scores.max() and record["false_reject_rate"] == 0.0
    low, high = record["false_reject_rate_ci95"]
    assert low == 0.0 and high == pytest.approx(stats.beta.ppf(0.975, 1, 32))


@pytest.mark.parametrize("rate", [0.01, 0.05])
def test_large_samples_use_the_empirical_quantile(rate):
    scores = np.random.default_rng(1).gamma(4.0, size=op.needed_count(rate))
    record = op.operating_point(scores, rate, "normal images", summary={})
    assert record["method"] == "normal_score_quantile" and "warning" not in record and record["tail"] is None
    assert record["value"] == pytest.approx(np.quantile(scores, 1 - rate))
    assert abs(record["false_reject_rate"] - rate) <= 1.0 / len(scores)


@pytest.mark.parametrize("n, mean_at_most", [(32, 0.02), (100, 0.014), (300, 0.012), (2000, 0.012)])
def test_thresholds_reject_about_the_target_share_of_fresh_good_parts(n, mean_at_most):
    """Gumbel scores (the maximum of many patch distances): over 400 repetitions the threshold set on n scores
    rejects, of fresh scores from the same distribution, a median share near the 1% target and a mean share
    that the small-sample tail keeps below 2% (measured: 1.6% at n = 32, 1.1% at 100)."""
    rng = np.random.default_rng(n)
    rates = [1.0 - math.exp(-math.exp(-op.threshold_at(rng.gumbel(size=n), 0.01)[0])) for _ in range(400)]
    assert 0.007 <= float(np.median(rates)) <= 0.013 and float(np.mean(rates)) <= mean_at_most, (
        np.median(rates), np.mean(rates))


def test_non_finite_scores_and_rates_out_of_range_are_refused():
    with pytest.raises(ValueError, match="not finite"):
        op.threshold_at(np.array([1.0, np.nan, 2.0]), 0.01)
    with pytest.raises(ValueError, match="rate"):
        op.threshold_at(np.arange(10.0), 0.0)


def test_rate_table_is_monotone():
    scores = np.random.default_rng(2).gamma(3.0, size=500)
    table = op.rate_table(scores)
    thresholds = [row["threshold"] for row in table]
    assert [row["target"] for row in table] == list(op.TABLE_RATES)
    assert thresholds == sorted(thresholds, reverse=True)
