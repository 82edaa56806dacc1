"""The image threshold at the operating point the user states: the share of good parts it may reject.

The threshold is read from out-of-fold scores of the training images (each scored by a model that never
saw it, workbench/cross_fit.py), so it sees what a new good part scores. Where there are enough of them
for the target (at least `EMPIRICAL_MIN_REJECTS` expected rejections) it is their empirical quantile;
below that the quantile is noise, and the threshold comes from a generalized Pareto tail (shape 0) fitted
to the highest scores (the peaks-over-threshold method of extreme value statistics), with a warning
naming how many good images the target needs. Either way the record says the rate the out-of-fold scores show at
the threshold and its exact (Clopper-Pearson) 95% confidence interval. numpy only: `pyimgano-export
--target-false-reject-rate` re-derives a threshold from the stored scores without a model.
"""

from __future__ import annotations

import math

import numpy as np

# Expected rejections among the out-of-fold scores below which the empirical quantile is not used.
EMPIRICAL_MIN_REJECTS = 10
# The tail fit uses the highest TAIL_FRACTION of the scores, and at least TAIL_MIN_EXCEEDANCES of them.
TAIL_FRACTION = 0.2
TAIL_MIN_EXCEEDANCES = 6
# Below this many scores no tail is fitted.
TAIL_MIN_SCORES = 4
CONFIDENCE = 0.95
# The rates of the report's threshold table.
TABLE_RATES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)


def _log_binom_cdf(k: int, n: int, p: float) -> float:
    """log P(X <= k) for X ~ Binomial(n, p), summed in log space (n up to 10^5 is fine)."""
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 0.0 if k >= n else -math.inf
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p) + (n - i) * math.log1p(-p)
             for i in range(k + 1)]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


def clopper_pearson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact two-sided confidence interval of a binomial rate with k successes in n trials."""
    if n < 1 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n >= 1, got k={k}, n={n}")
    alpha = (1.0 - confidence) / 2.0

    def solve(target_log: float, count: int) -> float:
        # P(X <= count; p) falls as p rises: bisect for the p where it equals exp(target_log).
        low, high = 0.0, 1.0
        for _ in range(80):
            middle = (low + high) / 2.0
            if _log_binom_cdf(count, n, middle) > target_log:
                low = middle
            else:
                high = middle
        return (low + high) / 2.0

    lower = 0.0 if k == 0 else solve(math.log1p(-alpha), k - 1)
    upper = 1.0 if k == n else solve(math.log(alpha), k)
    return lower, upper


def fit_tail(scores: np.ndarray) -> dict:
    """The excesses of the highest scores over `threshold_u`, fitted as a generalized Pareto tail of shape 0
    (exponential; its scale is the mean excess, the maximum-likelihood estimate).

    The shape is not estimated: an image score is a maximum over many patch distances, which puts it in
    the Gumbel domain of attraction, whose excesses are exponential; and a shape estimated from the few
    exceedances of a small sample is noise (a free shape gave a mean false-reject rate of 2.1% at a 1%
    target on 32 Gumbel scores, shape 0 gave 1.6%; tests/test_operating_point.py)."""
    values = np.sort(np.asarray(scores, dtype=np.float64))
    n = values.size
    exceedances = min(n - 1, max(TAIL_MIN_EXCEEDANCES, math.ceil(TAIL_FRACTION * n)))
    if exceedances < 3:
        raise ValueError(f"a tail fit needs at least 4 scores, got {n}")
    u = float(values[n - exceedances - 1])
    scale = max(float((values[n - exceedances:] - u).mean()), 1e-12)
    return {"distribution": "generalized_pareto", "estimator": "shape 0 (exponential), scale = mean excess",
            "threshold_u": u, "exceedances": int(exceedances), "of": int(n), "shape": 0.0, "scale": scale}


def tail_quantile(tail: dict, rate: float) -> float:
    """The score that the fitted tail says a share `rate` of good parts exceeds."""
    zeta = tail["exceedances"] / tail["of"]
    if rate >= zeta:
        raise ValueError(f"rate {rate} is not in the fitted tail (its top {zeta:.3g} of the scores)")
    shape, scale = tail["shape"], tail["scale"]
    if abs(shape) < 1e-9:
        return tail["threshold_u"] + scale * math.log(zeta / rate)
    return tail["threshold_u"] + scale / shape * ((zeta / rate) ** shape - 1.0)


def needed_count(rate: float) -> int:
    """Good images for which the empirical quantile at `rate` rests on EMPIRICAL_MIN_REJECTS rejections."""
    return math.ceil(EMPIRICAL_MIN_REJECTS / rate)


def rejected(scores: np.ndarray, threshold: float) -> int:
    """Good parts a threshold rejects: a part is anomalous when its score is strictly above it."""
    return int(np.count_nonzero(np.asarray(scores) > threshold))


def threshold_at(scores: np.ndarray, rate: float) -> tuple[float, str, dict | None]:
    """(threshold, method, tail fit or None) for a target false-reject rate on out-of-fold scores."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no out-of-fold scores to set a threshold on")
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{int(np.count_nonzero(~np.isfinite(values)))} out-of-fold scores are not finite")
    if not 0.0 < rate < 1.0:
        raise ValueError(f"target false-reject rate must be in (0, 1), got {rate}")
    empirical = float(np.quantile(values, 1.0 - rate))
    if values.size >= needed_count(rate):
        return empirical, "normal_score_quantile", None
    if values.size < TAIL_MIN_SCORES:
        # Too few to fit anything: the largest normal score, which rejects none of them.
        return float(values.max()), "normal_score_max", None
    tail = fit_tail(values)
    if rate >= tail["exceedances"] / tail["of"]:
        return empirical, "normal_score_quantile", None
    # Never a threshold that rejects more of the normal scores than the target allows (with fewer than 1 / rate
    # of them: none, so at least their maximum).
    allowed = math.floor(rate * values.size)
    floor = float(np.sort(values)[values.size - allowed - 1])
    return max(tail_quantile(tail, rate), empirical, floor), "normal_score_tail", tail


def operating_point(scores: np.ndarray, rate: float, source: str, summary: dict) -> dict:
    """The image threshold record (runtime.manifest.Threshold) with its provenance: the target, the sample
    count, the rate the out-of-fold scores show at the threshold and its 95% interval, the tail fit, and a
    warning where the count is too small for the target."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    value, method, tail = threshold_at(values, rate)
    k, n = rejected(values, value), int(values.size)
    low, high = clopper_pearson(k, n)
    record = {
        "value": float(value),
        "method": method,
        "quantile": 1.0 - rate,
        "count": n,
        "score_summary": summary,
        "source": source,
        "target_false_reject_rate": rate,
        "false_reject_rate": k / n,
        "false_reject_rate_ci95": [low, high],
        "tail": tail,
    }
    if method == "normal_score_max":
        record["warning"] = (f"{n} good images are too few to estimate a false-reject rate of {rate:g} (that needs "
                             f"{needed_count(rate)}); the threshold is their highest score")
    elif tail is not None:
        record["warning"] = (
            f"{n} good images are too few for a false-reject rate of {rate:g} read directly "
            f"(that needs {needed_count(rate)}); the threshold extrapolates a generalized Pareto tail fitted "
            f"to the top {tail['exceedances']} scores"
        )
    return record


def rate_table(scores: np.ndarray, rates=TABLE_RATES) -> list[dict]:
    """Threshold against out-of-fold false-reject rate, for the report's decision section."""
    rows = []
    for rate in rates:
        value, method, _ = threshold_at(scores, rate)
        k, n = rejected(scores, value), len(scores)
        rows.append({"target": rate, "threshold": value, "method": method, "out_of_fold_rejected": k,
                     "out_of_fold_rate": k / n, "ci95": list(clopper_pearson(k, n))})
    return rows
