"""Evaluation metrics for anomaly detection, image level and pixel level.

Conventions shared by every function in this module:

* a higher score means more anomalous;
* label 1 (or True) means anomalous, 0 (or False) means normal;
* a ground-truth mask marks a defect wherever it is > 0, so bool masks and 0/255 uint8
  masks both work;
* a sample or pixel is predicted anomalous when ``score > threshold`` (strictly greater).

Everything is plain numpy, with OpenCV for connected-component labelling in :func:`aupro`.
No sklearn, scipy or torch is needed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

__all__ = [
    "roc_auc",
    "average_precision",
    "precision_recall_f1",
    "roc_curve",
    "precision_recall_curve",
    "pixel_roc_auc",
    "aupro",
]

# aupro: with num_thresholds=None, the exact curve (every distinct score is a threshold) is
# used while there are at most this many distinct scores...
AUPRO_EXACT_MAX_DISTINCT = 10_000
# ...and above that, this many thresholds spaced evenly in FPR over [0, fpr_limit].
AUPRO_DEFAULT_NUM_THRESHOLDS = 5_000


# --------------------------------------------------------------------------- input checks


def _binary_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Flatten ``labels`` to a bool array; only bool or numeric 0/1 values are accepted."""
    array = np.asarray(labels)
    if array.dtype == np.bool_:
        return array.ravel()
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be bool or numeric 0/1, got dtype {array.dtype}")
    flat = array.ravel()
    positive = flat == 1
    if not np.all(positive | (flat == 0)):
        raise ValueError(f"{name} must contain only 0 and 1 (1 = anomalous)")
    return positive


def _finite_scores(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    """Flatten ``scores`` to a real numeric array; NaN and inf are rejected."""
    array = np.asarray(scores)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    elif not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must be real numbers, got dtype {array.dtype}")
    flat = array.ravel()
    # A NaN would sort to the end and silently count as the most anomalous score.
    if np.issubdtype(flat.dtype, np.floating) and not np.isfinite(flat).all():
        raise ValueError(f"{name} contain NaN or inf")
    return flat


def _split_by_label(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return (anomalous scores, normal scores), both 1-D, after validating both inputs."""
    positive = _binary_labels(labels)
    flat = _finite_scores(scores)
    if positive.size != flat.size:
        raise ValueError(f"labels and scores differ in size: {positive.size} != {flat.size}")
    return flat[positive], flat[~positive]


def _paired_arrays(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], caller: str
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Pair each mask (as bool, defect where > 0) with its score map, checking shapes."""
    if len(masks) != len(maps):
        raise ValueError(f"{caller}: got {len(masks)} masks but {len(maps)} maps")
    if len(masks) == 0:
        raise ValueError(f"{caller}: no masks given")
    pairs = []
    for index, (mask, score_map) in enumerate(zip(masks, maps)):
        mask = np.asarray(mask)
        score_map = np.asarray(score_map)
        if mask.shape != score_map.shape:
            raise ValueError(
                f"{caller}: pair {index}: mask shape {mask.shape} != map shape {score_map.shape}"
            )
        pairs.append((mask > 0, score_map))
    return pairs


def _ratio(numerator: int, denominator: int) -> float:
    """numerator / denominator, defined as 0.0 when the denominator is 0 (never NaN)."""
    return numerator / denominator if denominator else 0.0


# --------------------------------------------------------------------------- image level


def _sum_ranks(reference_sorted: np.ndarray, queries: np.ndarray) -> int:
    """Sum over queries q of #(reference < q) + #(reference <= q)."""
    below = np.searchsorted(reference_sorted, queries, side="left").sum(dtype=np.int64)
    not_above = np.searchsorted(reference_sorted, queries, side="right").sum(dtype=np.int64)
    return int(below) + int(not_above)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; equal to ``sklearn.metrics.roc_auc_score``, ties included.

    Computed as the Mann-Whitney statistic: P(anomalous score > normal score) plus half of
    P(equal). Any array shapes are accepted as long as the sizes match; ``labels`` must be
    bool or 0/1 (1 = anomalous). O(n log n), fine for tens of millions of pixels.

    Raises:
        ValueError: only one class is present, labels are not 0/1, or scores are not finite.
    """
    positive, negative = _split_by_label(labels, scores)
    if positive.size == 0 or negative.size == 0:
        raise ValueError(
            "roc_auc needs both classes; got "
            f"{positive.size} anomalous and {negative.size} normal samples"
        )
    n_pairs = positive.size * negative.size
    # Summing both searchsorted sides gives 2U as an exact integer, so ties need no
    # average ranks and no float error builds up over millions of samples. The larger class
    # is the sorted reference and the smaller one the (sorted, cache-friendly) queries,
    # which keeps the int64 index arrays small for pixel data with few defect pixels.
    if positive.size <= negative.size:
        twice_u = _sum_ranks(np.sort(negative), np.sort(positive))
    else:
        # Counting from the normal side: #(pos > n) = P - #(pos <= n), likewise for >=.
        twice_u = 2 * n_pairs - _sum_ranks(np.sort(positive), np.sort(negative))
    return twice_u / (2 * n_pairs)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision; equal to ``sklearn.metrics.average_precision_score``.

    Step-wise and not interpolated: sum over distinct thresholds of
    (recall gain) * precision, where samples with equal scores enter together.

    Raises:
        ValueError: there is no anomalous sample, labels are not 0/1, or scores are not finite.
    """
    positive, negative = _split_by_label(labels, scores)
    if positive.size == 0:
        raise ValueError("average_precision needs at least one anomalous (label 1) sample")
    positive_desc = np.sort(positive)[::-1]
    negative_sorted = np.sort(negative)
    # Recall only grows at thresholds equal to an anomalous score, so those are the only
    # thresholds that contribute; take the last position of each run of equal scores.
    run_ends = np.flatnonzero(
        np.concatenate([positive_desc[1:] != positive_desc[:-1], [True]])
    )
    true_pos = run_ends + 1
    false_pos = negative.size - np.searchsorted(negative_sorted, positive_desc[run_ends], "left")
    precision = true_pos / (true_pos + false_pos)
    recall_gain = np.diff(true_pos, prepend=0) / positive.size
    return float(np.sum(recall_gain * precision))


def precision_recall_f1(
    labels: np.ndarray, scores: np.ndarray, threshold: float
) -> dict[str, float | int]:
    """Confusion counts and rates for the prediction ``score > threshold``.

    Returns a dict with int counts ``tp``, ``fp``, ``fn``, ``tn`` and float rates
    ``precision``, ``recall``, ``f1``. A rate whose denominator is zero is 0.0, never NaN;
    f1 is 2tp / (2tp + fp + fn).

    Raises:
        ValueError: threshold is NaN, labels are not 0/1, scores are not finite, or sizes differ.
    """
    if math.isnan(threshold):
        raise ValueError("threshold is NaN")
    positive = _binary_labels(labels)
    flat = _finite_scores(scores)
    if positive.size != flat.size:
        raise ValueError(f"labels and scores differ in size: {positive.size} != {flat.size}")
    predicted = flat > threshold
    tp = int(np.count_nonzero(predicted & positive))
    fp = int(np.count_nonzero(predicted)) - tp
    fn = int(np.count_nonzero(positive)) - tp
    tn = positive.size - tp - fp - fn
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def _cumulative_counts(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(true positives, false positives) of ``score >= t`` at each distinct score t, highest first, and the
    class sizes. Samples with equal scores enter together."""
    positive = _binary_labels(labels)
    flat = _finite_scores(scores)
    if positive.size != flat.size:
        raise ValueError(f"labels and scores differ in size: {positive.size} != {flat.size}")
    order = np.argsort(-flat, kind="mergesort")
    ordered = flat[order]
    run_ends = np.flatnonzero(np.concatenate([ordered[1:] != ordered[:-1], [True]]))
    true_pos = np.cumsum(positive[order])[run_ends]
    false_pos = run_ends + 1 - true_pos
    return true_pos, false_pos, int(positive.sum()), int(positive.size - positive.sum())


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rate, true-positive rate) at every distinct threshold, from (0, 0) to (1, 1); the
    points of ``sklearn.metrics.roc_curve(drop_intermediate=False)``. Its trapezoid area is :func:`roc_auc`.

    Raises:
        ValueError: only one class is present, labels are not 0/1, or scores are not finite.
    """
    true_pos, false_pos, positives, negatives = _cumulative_counts(labels, scores)
    if positives == 0 or negatives == 0:
        raise ValueError(f"roc_curve needs both classes; got {positives} anomalous and {negatives} normal samples")
    return (np.concatenate([[0.0], false_pos / negatives]), np.concatenate([[0.0], true_pos / positives]))


def precision_recall_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) at every distinct threshold, recall rising, starting at (0, 1); the points of
    ``sklearn.metrics.precision_recall_curve`` in reverse. The step sum of precision over the recall gains
    is :func:`average_precision`.

    Raises:
        ValueError: there is no anomalous sample, labels are not 0/1, or scores are not finite.
    """
    true_pos, false_pos, positives, _ = _cumulative_counts(labels, scores)
    if positives == 0:
        raise ValueError("precision_recall_curve needs at least one anomalous (label 1) sample")
    return (np.concatenate([[0.0], true_pos / positives]),
            np.concatenate([[1.0], true_pos / (true_pos + false_pos)]))


# --------------------------------------------------------------------------- pixel level


def pixel_roc_auc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC AUC over all pixels of all images pooled together.

    ``masks[i]`` (defect where > 0) and ``maps[i]`` must have the same shape; shapes may
    differ from one pair to the next.

    Raises:
        ValueError: the lists differ in length or are empty, a pair's shapes differ (the
            message names its index), or the pooled pixels hold only one class.
    """
    pairs = _paired_arrays(masks, maps, "pixel_roc_auc")
    labels = np.concatenate([mask.ravel() for mask, _ in pairs])
    scores = np.concatenate([score_map.ravel() for _, score_map in pairs])
    return roc_auc(labels, scores)


def _connected_components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """8-connected components of a 2-D bool mask.

    Returns (number of components, int32 labels) with 0 for background and 1..count for
    the components, in no particular order.
    """
    count, labels = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    return int(count) - 1, labels


def _count_distinct_sorted(values: np.ndarray) -> int:
    if values.size == 0:
        return 0
    return 1 + int(np.count_nonzero(values[1:] != values[:-1]))


def _fpr_spaced_thresholds(
    normal_sorted: np.ndarray, fpr_limit: float, num_thresholds: int
) -> np.ndarray:
    """Thresholds at normal-score quantiles whose FPRs are evenly spaced over [0, fpr_limit].

    Only that FPR range is integrated. The curve is monotone in both coordinates, so each
    trapezoid step errs by at most its bounding box; with FPR steps of about
    fpr_limit / (num_thresholds - 1) the normalised area is off by at most about
    1 / (num_thresholds - 1), whatever the defect scores look like. One threshold beyond
    the limit is added so that the curve can be interpolated at exactly fpr_limit.
    """
    n = normal_sorted.size
    levels = np.linspace(0.0, fpr_limit, num_thresholds)
    # At most `allowed_above` normal pixels score above normal_sorted[n - 1 - allowed_above].
    allowed_above = np.minimum(np.ceil(levels * n).astype(np.int64), n - 1)
    thresholds = normal_sorted[n - 1 - allowed_above]
    # The next lower normal score: at least ceil(fpr_limit * n) + 1 normal pixels score
    # above it, so its FPR is past the limit. If there is none, the (1, 1) end point is.
    below_last = np.searchsorted(normal_sorted, thresholds[-1], side="left")
    if below_last > 0:
        thresholds = np.append(thresholds, normal_sorted[below_last - 1])
    return np.unique(thresholds)[::-1]


def _aupro_thresholds(
    normal_sorted: np.ndarray,
    defect_sorted: np.ndarray,
    fpr_limit: float,
    num_thresholds: int | None,
) -> np.ndarray:
    """Descending thresholds: every distinct score when few enough, else FPR-spaced ones."""
    max_exact = AUPRO_EXACT_MAX_DISTINCT if num_thresholds is None else num_thresholds
    # Cheap counts first: the union has at least as many distinct values as either part.
    if (
        _count_distinct_sorted(normal_sorted) <= max_exact
        and _count_distinct_sorted(defect_sorted) <= max_exact
    ):
        distinct = np.union1d(normal_sorted, defect_sorted)
        if distinct.size <= max_exact:
            return distinct[::-1]
    count = AUPRO_DEFAULT_NUM_THRESHOLDS if num_thresholds is None else num_thresholds
    return _fpr_spaced_thresholds(normal_sorted, fpr_limit, count)


def _normalized_partial_area(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under pro(fpr) on [0, fpr_limit], divided by fpr_limit.

    ``fpr`` and ``pro`` are both non-decreasing, start at (0, 0) and end at (1, 1).
    """
    inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:inside], pro[:inside]
    if x[-1] < fpr_limit:
        # The curve ends at FPR 1 >= fpr_limit, so the next point exists and lies strictly
        # beyond the limit: interpolate linearly between the two.
        x0, x1, y0, y1 = fpr[inside - 1], fpr[inside], pro[inside - 1], pro[inside]
        y_at_limit = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
        x, y = np.append(x, fpr_limit), np.append(y, y_at_limit)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]))) / 2.0
    return area / fpr_limit


def aupro(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the per-region-overlap curve (MVTec AD "AUPRO"), in [0, 1].

    For a threshold t, a pixel is predicted anomalous when its score > t, and

    * FPR(t) = (normal pixels, mask == 0, of all images, with score > t) / (all normal pixels);
    * PRO(t) = mean over all ground-truth regions of (region pixels with score > t) /
      (region size), where a region is an 8-connected component of one image's mask.
      Every region weighs the same, whatever its size.

    The curve PRO(FPR), completed with (0, 0) above the highest score and (1, 1) below the
    lowest, is integrated with the trapezoid rule from FPR 0 to ``fpr_limit`` (interpolated
    linearly at exactly ``fpr_limit``) and divided by ``fpr_limit``.

    Thresholds: every distinct score (the exact curve) when there are at most
    ``num_thresholds`` of them, otherwise ``num_thresholds`` thresholds taken at normal-score
    quantiles so that their FPRs are evenly spaced over [0, fpr_limit] (error at most about
    1 / (num_thresholds - 1)). ``num_thresholds=None`` means exact up to
    ``AUPRO_EXACT_MAX_DISTINCT`` (10 000) distinct scores, else ``AUPRO_DEFAULT_NUM_THRESHOLDS``
    (5 000) spaced thresholds.

    Args:
        masks: 2-D HxW ground truth per image, defect where > 0 (bool or 0/255 uint8).
        maps: 2-D float HxW anomaly maps, each the shape of its mask; shapes may differ
            from one image to the next.
        fpr_limit: upper end of the integrated FPR range, in (0, 1].
        num_thresholds: see above; at least 2 when given.

    Raises:
        ValueError: no defect region or no normal pixel in any mask, a pair's shapes differ
            or are not 2-D (the message names the index), bad ``fpr_limit`` or
            ``num_thresholds``, or scores that are not finite.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if num_thresholds is not None and (
        isinstance(num_thresholds, bool)
        or not isinstance(num_thresholds, (int, np.integer))
        or num_thresholds < 2
    ):
        raise ValueError(f"num_thresholds must be None or an int >= 2, got {num_thresholds!r}")
    pairs = _paired_arrays(masks, maps, "aupro")
    for index, (mask, _) in enumerate(pairs):
        if mask.ndim != 2:
            raise ValueError(
                f"aupro: pair {index}: expected 2-D HxW arrays, got shape {mask.shape}"
            )
    # One dtype for normal and defect scores keeps searchsorted from casting whole arrays.
    dtype = np.result_type(*(score_map.dtype for _, score_map in pairs))
    if not np.issubdtype(dtype, np.floating):
        dtype = np.dtype(np.float64)

    normal_parts, defect_parts, weight_parts = [], [], []
    n_regions = 0
    for mask, score_map in pairs:
        normal_parts.append(score_map[~mask])
        if not mask.any():
            continue
        count, labels = _connected_components(mask)
        region = labels[mask]
        sizes = np.bincount(region, minlength=count + 1)
        defect_parts.append(score_map[mask])
        # Each pixel carries 1 / (its region's size): summing the weights of the pixels
        # above t gives sum over regions of the overlap fraction, with no per-region loop.
        weight_parts.append(1.0 / sizes[region])
        n_regions += count
    if n_regions == 0:
        raise ValueError("aupro: no defect region in any mask")
    normal = _finite_scores(np.concatenate(normal_parts, dtype=dtype), "maps")
    if normal.size == 0:
        raise ValueError("aupro: no normal pixel in any mask")
    defect = _finite_scores(np.concatenate(defect_parts, dtype=dtype), "maps")
    weights = np.concatenate(weight_parts)

    normal.sort()
    order = np.argsort(defect, kind="stable")
    defect_sorted = defect[order]
    # weight_above[i] = total weight of defect_sorted[i:]. Summed from the top, so the
    # high-score end, which decides the curve near FPR 0, carries no cancellation error.
    weight_above = np.append(np.cumsum(weights[order][::-1])[::-1], 0.0)

    thresholds = _aupro_thresholds(normal, defect_sorted, fpr_limit, num_thresholds)
    false_pos = normal.size - np.searchsorted(normal, thresholds, side="right")
    fpr = false_pos / normal.size
    pro = weight_above[np.searchsorted(defect_sorted, thresholds, side="right")] / n_regions
    fpr = np.concatenate([[0.0], fpr, [1.0]])
    pro = np.concatenate([[0.0], pro, [1.0]])
    return _normalized_partial_area(fpr, pro, fpr_limit)
