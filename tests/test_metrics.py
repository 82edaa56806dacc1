"""Tests for pyimgano.metrics.

sklearn is the reference for the image-level metrics; tests that need it skip cleanly when
it is missing. AUPRO is checked against hand-computed curves and against a slow,
independent brute-force implementation written below.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from pyimgano import metrics
from pyimgano.metrics import (
    aupro,
    average_precision,
    pixel_roc_auc,
    precision_recall_f1,
    roc_auc,
)

TOL = 1e-12


def _sk_metrics():
    return pytest.importorskip("sklearn.metrics")


def _scored_labels(kind: str, seed: int, n: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Labels with a seed-dependent positive rate (both minority and majority positives)."""
    rng = np.random.default_rng(seed)
    positive_rate = (0.03, 0.5, 0.9)[seed % 3]
    labels = (rng.random(n) < positive_rate).astype(np.int64)
    labels[0], labels[1] = 0, 1  # both classes always present
    noise = rng.normal(size=n)
    if kind == "continuous":
        scores = noise + 0.8 * labels
    elif kind == "ties":
        scores = np.round(rng.random(n) * 0.6 + 0.3 * labels, 1)
    elif kind == "separated":
        scores = np.where(labels == 1, 10.0 + rng.random(n), rng.random(n))
    elif kind == "inverted":
        scores = np.where(labels == 1, rng.random(n), 10.0 + rng.random(n))
    else:
        raise AssertionError(kind)
    return labels, scores


KINDS = ["continuous", "ties", "separated", "inverted"]
SEEDS = [0, 1, 2, 3, 4, 5]


# --------------------------------------------------------------------------- roc_auc / AP


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_roc_auc_matches_sklearn(kind: str, seed: int) -> None:
    sk = _sk_metrics()
    labels, scores = _scored_labels(kind, seed)
    assert roc_auc(labels, scores) == pytest.approx(sk.roc_auc_score(labels, scores), abs=TOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_matches_sklearn(kind: str, seed: int) -> None:
    sk = _sk_metrics()
    labels, scores = _scored_labels(kind, seed)
    expected = sk.average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", SEEDS[:3])
def test_curves_match_sklearn_and_their_areas_are_the_metrics(kind: str, seed: int) -> None:
    """The report's ROC and precision-recall curves: sklearn's points, and the areas the report states."""
    sk = _sk_metrics()
    labels, scores = _scored_labels(kind, seed)
    fpr, tpr = metrics.roc_curve(labels, scores)
    sk_fpr, sk_tpr, _ = sk.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=TOL)
    np.testing.assert_allclose(tpr, sk_tpr, atol=TOL)
    assert float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2)) == pytest.approx(roc_auc(labels, scores), abs=1e-9)
    recall, precision = metrics.precision_recall_curve(labels, scores)
    sk_precision, sk_recall, _ = sk.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(recall, sk_recall[::-1], atol=TOL)
    np.testing.assert_allclose(precision, sk_precision[::-1], atol=TOL)
    assert float(np.sum(np.diff(recall) * precision[1:])) == pytest.approx(average_precision(labels, scores), abs=1e-9)


def test_curves_refuse_what_they_cannot_draw() -> None:
    with pytest.raises(ValueError, match="needs both classes"):
        metrics.roc_curve(np.zeros(4), np.arange(4.0))
    with pytest.raises(ValueError, match="at least one anomalous"):
        metrics.precision_recall_curve(np.zeros(4), np.arange(4.0))


def test_roc_auc_and_ap_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    # Pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3 of 4.
    assert roc_auc(labels, scores) == pytest.approx(0.75, abs=TOL)
    # Thresholds at the positives: 0.8 -> P=1, R=1/2; 0.35 -> P=2/3, R=1.
    assert average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=TOL)


def test_roc_auc_and_ap_ties_by_hand() -> None:
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.5, 0.5, 0.9, 0.1, 0.5])
    # Pos 0.9 beats all 3 negatives; pos 0.5 beats 0.1 and ties two -> 1 + 2 * 0.5 = 2.
    assert roc_auc(labels, scores) == pytest.approx(5 / 6, abs=TOL)
    # Threshold 0.9: P=1, R=1/2; threshold 0.5 (three samples enter together): P=2/4, R=1.
    assert average_precision(labels, scores) == pytest.approx(0.5 + 0.5 * 0.5, abs=TOL)


def test_roc_auc_accepts_bool_labels_and_int_scores() -> None:
    labels = np.array([False, True, False, True])
    scores = np.array([1, 3, 3, 2])
    # Pos 3: beats 1, ties 3 -> 1.5; pos 2: beats 1 -> 1. Total 2.5 of 4.
    assert roc_auc(labels, scores) == pytest.approx(0.625, abs=TOL)


def test_roc_auc_single_class_raises() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(5), np.arange(5.0))


def test_average_precision_without_positives_raises() -> None:
    with pytest.raises(ValueError, match="anomalous"):
        average_precision(np.zeros(5), np.arange(5.0))


def test_average_precision_all_positive_is_one() -> None:
    assert average_precision(np.ones(4), np.array([0.3, 0.1, 0.2, 0.2])) == 1.0


@pytest.mark.parametrize(
    ("labels", "scores", "match"),
    [
        (np.array([0, 1, 2]), np.array([0.1, 0.2, 0.3]), "only 0 and 1"),
        (np.array([0, 1, 1]), np.array([0.1, np.nan, 0.3]), "NaN or inf"),
        (np.array([0, 1, 1]), np.array([0.1, np.inf, 0.3]), "NaN or inf"),
        (np.array([0, 1]), np.array([0.1, 0.2, 0.3]), "differ in size"),
        (np.array(["a", "b"]), np.array([0.1, 0.2]), "dtype"),
    ],
)
def test_roc_auc_rejects_bad_input(labels, scores, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        roc_auc(labels, scores)


# --------------------------------------------------------------------------- precision/recall/f1


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("threshold", [-5.0, 0.3, 0.5, 0.7, 5.0])
def test_precision_recall_f1_matches_sklearn(seed: int, threshold: float) -> None:
    sk = _sk_metrics()
    labels, scores = _scored_labels("ties", seed)  # scores on a 0.1 grid: many equal 0.3/0.5/0.7
    predicted = (scores > threshold).astype(np.int64)
    tn, fp, fn, tp = sk.confusion_matrix(labels, predicted, labels=[0, 1]).ravel()
    precision, recall, f1, _ = sk.precision_recall_fscore_support(
        labels, predicted, average="binary", zero_division=0.0
    )
    result = precision_recall_f1(labels, scores, threshold)
    assert (result["tp"], result["fp"], result["fn"], result["tn"]) == (tp, fp, fn, tn)
    assert result["precision"] == pytest.approx(precision, abs=TOL)
    assert result["recall"] == pytest.approx(recall, abs=TOL)
    assert result["f1"] == pytest.approx(f1, abs=TOL)


def test_precision_recall_f1_score_equal_to_threshold_is_normal() -> None:
    labels = np.array([1, 1, 0, 0, 1])
    scores = np.array([0.5, 0.9, 0.5, 0.2, 0.1])
    result = precision_recall_f1(labels, scores, 0.5)
    # Only 0.9 is > 0.5: tp=1; the two 0.5s are predicted normal (fn=1 from label 1, tn from 0).
    assert result == {
        "precision": 1.0,
        "recall": pytest.approx(1 / 3, abs=TOL),
        "f1": pytest.approx(2 / (2 + 0 + 2), abs=TOL),
        "tp": 1,
        "fp": 0,
        "fn": 2,
        "tn": 2,
    }
    assert all(type(result[key]) is int for key in ("tp", "fp", "fn", "tn"))
    assert all(type(result[key]) is float for key in ("precision", "recall", "f1"))


def test_precision_recall_f1_zero_denominators_give_zero_not_nan() -> None:
    # Nothing predicted anomalous and nothing anomalous: every rate has a 0 denominator.
    result = precision_recall_f1(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]), 1.0)
    assert result == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "tp": 0, "fp": 0, "fn": 0, "tn": 4
    }


def test_precision_recall_f1_rejects_nan_threshold() -> None:
    with pytest.raises(ValueError, match="NaN"):
        precision_recall_f1(np.array([0, 1]), np.array([0.1, 0.2]), float("nan"))


# --------------------------------------------------------------------------- pixel_roc_auc


def test_pixel_roc_auc_matches_sklearn_on_mixed_shapes() -> None:
    sk = _sk_metrics()
    rng = np.random.default_rng(7)
    shapes = [(8, 9), (5, 13), (16, 4)]
    masks = [
        (rng.random(shapes[0]) < 0.2),  # bool
        np.where(rng.random(shapes[1]) < 0.3, 255, 0).astype(np.uint8),  # 0/255 uint8
        (rng.random(shapes[2]) < 0.1),
    ]
    maps = [np.round(rng.random(shape) + 0.5 * (mask > 0), 2) for shape, mask in zip(shapes, masks)]
    labels = np.concatenate([(mask > 0).ravel() for mask in masks]).astype(np.int64)
    scores = np.concatenate([score_map.ravel() for score_map in maps])
    assert pixel_roc_auc(masks, maps) == pytest.approx(sk.roc_auc_score(labels, scores), abs=TOL)


def test_pixel_roc_auc_by_hand() -> None:
    masks = [np.array([[255, 0]], dtype=np.uint8), np.array([[0], [1]], dtype=bool)]
    maps = [np.array([[0.9, 0.2]]), np.array([[0.5], [0.1]])]
    # Defects 0.9, 0.1 vs normals 0.2, 0.5: 0.9 beats both, 0.1 beats none -> 2 / 4.
    assert pixel_roc_auc(masks, maps) == pytest.approx(0.5, abs=TOL)


def test_pixel_roc_auc_shape_mismatch_names_index() -> None:
    masks = [np.zeros((4, 4), bool), np.zeros((4, 5), bool)]
    maps = [np.zeros((4, 4)), np.zeros((5, 4))]
    with pytest.raises(ValueError, match=r"pair 1: mask shape \(4, 5\) != map shape \(5, 4\)"):
        pixel_roc_auc(masks, maps)


def test_pixel_roc_auc_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="2 masks but 1 maps"):
        pixel_roc_auc([np.zeros((2, 2)), np.zeros((2, 2))], [np.zeros((2, 2))])


# --------------------------------------------------------------------------- AUPRO by hand


def _two_region_case() -> tuple[np.ndarray, np.ndarray]:
    """2x7 image: region A = row 0, cols 0-2 (size 3); region B = (1, 6) (size 1); 10 normals.

    Scores: A = 0.9, 0.5, 0.2; B = 0.7; normals 0.8, 0.6, 0.4, 0.3 and six 0.0.

    Predicted anomalous: score > t. Going down the thresholds:
        t >= 0.9       FPR 0    PRO 0
        t = 0.8        FPR 0    PRO (1/3 + 0) / 2 = 1/6     (A's 0.9)
        t = 0.7        FPR 0.1  PRO 1/6                     (normal 0.8)
        t = 0.6        FPR 0.1  PRO (1/3 + 1) / 2 = 2/3     (B's 0.7)
        t = 0.5        FPR 0.2  PRO 2/3                     (normal 0.6)
        t = 0.4        FPR 0.2  PRO (2/3 + 1) / 2 = 5/6     (A's 0.5)
        t = 0.3        FPR 0.3  PRO 5/6                     (normal 0.4)
        t = 0.2        FPR 0.4  PRO 5/6                     (normal 0.3)
        t = 0.0        FPR 0.4  PRO 1                       (A's 0.2)
        t < 0.0        FPR 1    PRO 1                       (six normal 0.0)
    Area on [0, 0.3]: 0.1 * 1/6 + 0.1 * 2/3 + 0.1 * 5/6 = 1/6  -> / 0.3 = 5/9.
    Area on [0, 1]:   1/6 + 0.1 * 5/6 + 0.6 * 1 = 51/60        -> 0.85.
    Area on [0, 0.35]: 1/6 + 0.05 * 5/6 = 5/24                 -> / 0.35 = 25/42.
    """
    mask = np.zeros((2, 7), dtype=bool)
    mask[0, 0:3] = True
    mask[1, 6] = True
    scores = np.zeros((2, 7))
    scores[0, 0:3] = [0.9, 0.5, 0.2]
    scores[1, 6] = 0.7
    scores[0, 3:7] = [0.8, 0.6, 0.4, 0.3]
    return mask, scores


@pytest.mark.parametrize(("fpr_limit", "expected"), [(0.3, 5 / 9), (1.0, 0.85), (0.35, 25 / 42)])
def test_aupro_two_regions_by_hand(fpr_limit: float, expected: float) -> None:
    mask, scores = _two_region_case()
    assert aupro([mask], [scores], fpr_limit=fpr_limit) == pytest.approx(expected, abs=TOL)
    # 0/255 uint8 masks and float32 maps give the same curve.
    mask_u8 = mask.astype(np.uint8) * 255
    result = aupro([mask_u8], [scores.astype(np.float32)], fpr_limit=fpr_limit)
    assert result == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize(("fpr_limit", "expected"), [(0.3, 5 / 9), (1.0, 0.85)])
def test_aupro_two_regions_split_over_images(fpr_limit: float, expected: float) -> None:
    # Same pixels as the hand case, spread over three images of different shapes: FPR is
    # pooled over all images' normal pixels and PRO averaged over all images' regions.
    first = (np.array([[1, 1, 1, 0]], bool), np.array([[0.9, 0.5, 0.2, 0.8]]))
    second = (np.array([[0, 0], [0, 1]], bool), np.array([[0.6, 0.4], [0.3, 0.7]]))
    third = (np.zeros((2, 3), bool), np.zeros((2, 3)))
    masks, maps = zip(first, second, third)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=TOL)


def test_aupro_regions_do_not_join_across_images() -> None:
    # Bottom row of image 0 and top row of image 1 would touch if the images were stacked;
    # they must stay two regions. Region 1 (size 2) fully above all normals, region 2 (size 1)
    # below all normals: PRO = 1/2 for every FPR < 1 -> 0.5. One joined region would give 2/3.
    masks = [np.array([[0, 0], [1, 1]], bool), np.array([[1, 0], [0, 0]], bool)]
    maps = [np.array([[0.5, 0.5], [0.9, 0.9]]), np.array([[0.1, 0.5], [0.5, 0.5]])]
    assert aupro(masks, maps, fpr_limit=0.3) == pytest.approx(0.5, abs=TOL)


@pytest.mark.parametrize(("fpr_limit", "expected"), [(0.3, 0.3), (1.0, 0.75)])
def test_aupro_interpolates_at_fpr_limit(fpr_limit: float, expected: float) -> None:
    # 1x6: one region (cols 0-1); all four scores 0.5 tie, two normals at 0.0.
    # t >= 0.5: (0, 0); 0 <= t < 0.5: two of four normals and the whole region -> (0.5, 1);
    # t < 0: (1, 1). Straight line (0,0)-(0.5,1): PRO(0.3) = 0.6, area 0.3 * 0.6 / 2 = 0.09
    # -> / 0.3 = 0.3. On [0, 1]: 0.5 * 1 / 2 + 0.5 * 1 = 0.75.
    mask = np.array([[1, 1, 0, 0, 0, 0]], bool)
    scores = np.array([[0.5, 0.5, 0.5, 0.5, 0.0, 0.0]])
    assert aupro([mask], [scores], fpr_limit=fpr_limit) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("fpr_limit", [0.01, 0.3, 1.0])
def test_aupro_perfect_detector_is_one(fpr_limit: float) -> None:
    rng = np.random.default_rng(3)
    masks = [rng.random((12, 10)) < 0.15 for _ in range(3)]
    maps = [np.where(mask, 1.0 + rng.random(mask.shape), rng.random(mask.shape)) for mask in masks]
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(1.0, abs=TOL)


@pytest.mark.parametrize("fpr_limit", [0.01, 0.3, 1.0])
def test_aupro_inverted_detector_is_zero(fpr_limit: float) -> None:
    rng = np.random.default_rng(4)
    masks = [rng.random((12, 10)) < 0.15 for _ in range(3)]
    maps = [np.where(mask, rng.random(mask.shape), 1.0 + rng.random(mask.shape)) for mask in masks]
    # PRO stays 0 until every normal pixel is above the threshold, i.e. FPR = 1.
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(0.0, abs=TOL)


@pytest.mark.parametrize("fpr_limit", [0.3, 1.0])
def test_aupro_averages_over_regions_not_pixels(fpr_limit: float) -> None:
    # A 4x5 region (20 px) scored above every normal pixel, a 1-px region scored below every
    # normal pixel. Mean over regions: PRO = (1 + 0) / 2 for all FPR < 1 -> 0.5.
    # Pixel-weighted it would be 20/21.
    mask = np.zeros((8, 10), bool)
    mask[0:4, 0:5] = True
    mask[7, 9] = True
    scores = np.full(mask.shape, 0.5)
    scores[0:4, 0:5] = 0.9
    scores[7, 9] = 0.1
    assert aupro([mask], [scores], fpr_limit=fpr_limit) == pytest.approx(0.5, abs=TOL)


def test_aupro_uses_8_connectivity() -> None:
    # (0,0)-(0,1) and (1,2) touch only diagonally: one region of 3 with 8-connectivity.
    # (0,0), (0,1) above all normals, (1,2) below: PRO = 2/3 (4-connectivity would give 1/2).
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = mask[0, 1] = mask[1, 2] = True
    scores = np.full(mask.shape, 0.5)
    scores[0, 0] = scores[0, 1] = 0.9
    scores[1, 2] = 0.1
    assert aupro([mask], [scores], fpr_limit=0.3) == pytest.approx(2 / 3, abs=TOL)


# --------------------------------------------------------------------------- AUPRO brute force


def _bfs_regions(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """8-connected regions by plain breadth-first search."""
    height, width = mask.shape
    seen = np.zeros(mask.shape, bool)
    regions = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, region = deque([start]), []
        while queue:
            row, col = queue.popleft()
            region.append((row, col))
            for d_row in (-1, 0, 1):
                for d_col in (-1, 0, 1):
                    r, c = row + d_row, col + d_col
                    if 0 <= r < height and 0 <= c < width and mask[r, c] and not seen[r, c]:
                        seen[r, c] = True
                        queue.append((r, c))
        regions.append(region)
    return regions


def _brute_force_aupro(masks, maps, fpr_limit: float) -> float:
    """Every distinct score as a threshold, one region at a time; slow but obviously right."""
    masks = [np.asarray(mask) > 0 for mask in masks]
    maps = [np.asarray(score_map, dtype=np.float64) for score_map in maps]
    regions = [
        np.array([score_map[pixel] for pixel in region])
        for mask, score_map in zip(masks, maps)
        for region in _bfs_regions(mask)
    ]
    normal = np.concatenate([score_map[~mask] for mask, score_map in zip(masks, maps)])
    distinct = sorted({float(v) for score_map in maps for v in score_map.ravel()}, reverse=True)
    points = []
    for t in [np.inf, *distinct, -np.inf]:
        fpr = np.count_nonzero(normal > t) / normal.size
        pro = sum(np.count_nonzero(region > t) / region.size for region in regions) / len(regions)
        points.append((fpr, pro))
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 >= fpr_limit:
            break
        if x1 > fpr_limit:
            y1 = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0)
            x1 = fpr_limit
        area += (x1 - x0) * (y0 + y1) / 2
    return area / fpr_limit


def _random_images(seed: int, ties: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    shapes = [(6, 7), (5, 4), (8, 8)]
    masks = [rng.random(shape) < 0.3 for shape in shapes]
    masks[0][0, 0], masks[0][5, 6] = True, False  # at least one defect and one normal pixel
    maps = [rng.random(shape) + 0.4 * mask for shape, mask in zip(shapes, masks)]
    if ties:
        maps = [np.round(score_map, 1) for score_map in maps]
    return masks, maps


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed: int, ties: bool, fpr_limit: float) -> None:
    masks, maps = _random_images(seed, ties)
    expected = _brute_force_aupro(masks, maps, fpr_limit)
    assert aupro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=TOL)


def test_brute_force_reference_reproduces_hand_case() -> None:
    # Guards the reference itself against the hand-computed curve above.
    mask, scores = _two_region_case()
    assert _brute_force_aupro([mask], [scores], 0.3) == pytest.approx(5 / 9, abs=TOL)
    assert _brute_force_aupro([mask], [scores], 1.0) == pytest.approx(0.85, abs=TOL)


# --------------------------------------------------------------------------- AUPRO thresholds


def _large_images(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """More than 10 000 distinct continuous scores, with blob-shaped regions."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for _ in range(5):
        mask = np.zeros((48, 48), bool)
        for _ in range(6):
            row, col = rng.integers(0, 44, size=2)
            height, width = rng.integers(1, 6, size=2)
            mask[row : row + height, col : col + width] = True
        masks.append(mask)
        maps.append(rng.random(mask.shape) + 0.7 * mask * rng.random(mask.shape))
    return masks, maps


@pytest.mark.parametrize("num_thresholds", [50, 200, 1000])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3])
def test_aupro_spaced_thresholds_within_error_bound(num_thresholds: int, fpr_limit: float) -> None:
    masks, maps = _large_images(0)
    exact = aupro(masks, maps, fpr_limit=fpr_limit, num_thresholds=10**9)
    approx = aupro(masks, maps, fpr_limit=fpr_limit, num_thresholds=num_thresholds)
    # Documented bound: about 1 / (num_thresholds - 1), plus one normal pixel's FPR step.
    normal_count = sum(np.count_nonzero(~mask) for mask in masks)
    bound = 1 / (num_thresholds - 1) + 1 / (fpr_limit * normal_count)
    assert abs(approx - exact) <= bound
    assert 0.0 < approx < 1.0


def _step_case() -> tuple[np.ndarray, np.ndarray]:
    """100x201 image: 20 000 distinct normal scores (k + 0.5) / 20000 in columns 0-199, and
    one region (column 200, 100 px) all scored 0.975.

    500 normals score above 0.975, so the curve is (0, 0) -> (0.025, 0), then the region
    enters together with the 501st normal: (0.02505, 1), then flat at 1. Area on [0, 0.05]:
    0.00005 * 0.5 + 0.02495 * 1 = 0.025 -> / 0.05 = 0.5 exactly.
    """
    rng = np.random.default_rng(9)
    scores = np.empty((100, 201))
    scores[:, :200] = rng.permutation((np.arange(20000) + 0.5) / 20000).reshape(100, 200)
    scores[:, 200] = 0.975
    mask = np.zeros(scores.shape, bool)
    mask[:, 200] = True
    return mask, scores


@pytest.mark.parametrize("num_thresholds", [50, 200, 1000, None])
def test_aupro_spaced_thresholds_resolve_a_step_inside_the_range(num_thresholds) -> None:
    # The PRO step sits mid-range; thresholds spaced over [0, fpr_limit] keep the error
    # under the documented bound, where thresholds spread over all of [0, 1] would not.
    mask, scores = _step_case()
    exact = aupro([mask], [scores], fpr_limit=0.05, num_thresholds=10**9)
    assert exact == pytest.approx(0.5, abs=TOL)
    count = metrics.AUPRO_DEFAULT_NUM_THRESHOLDS if num_thresholds is None else num_thresholds
    approx = aupro([mask], [scores], fpr_limit=0.05, num_thresholds=num_thresholds)
    assert abs(approx - 0.5) <= 1 / (count - 1) + 1 / (0.05 * 20000)


def test_aupro_spaced_thresholds_step_past_a_tie_at_the_limit() -> None:
    # 1x11: normals 0.9 (1 px), 0.5 (4 px), 0.1 (5 px); a 1-px region scored 0.5.
    # Exact curve: (0, 0), (0.1, 0) for 0.5 <= t < 0.9, then the tie enters at once:
    # (0.5, 1), then (1, 1). PRO(0.3) = 0.5 -> area 0.2 * 0.5 / 2 = 0.05 -> / 0.3 = 1/6.
    # 3 distinct scores > num_thresholds=2 forces spaced thresholds, whose last one (0.5,
    # FPR 0.1) falls short of the limit; the next lower normal score (0.1) must be added, or
    # the curve would be interpolated towards (1, 1) instead of (0.5, 1).
    scores = np.array([[0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1, 0.5]])
    mask = np.zeros(scores.shape, bool)
    mask[0, 10] = True
    assert aupro([mask], [scores], fpr_limit=0.3) == pytest.approx(1 / 6, abs=TOL)
    assert aupro([mask], [scores], fpr_limit=0.3, num_thresholds=2) == pytest.approx(1 / 6, abs=TOL)


def test_aupro_default_switches_to_spaced_thresholds_above_10000_distinct() -> None:
    masks, maps = _large_images(1)
    distinct = np.unique(np.concatenate([score_map.ravel() for score_map in maps])).size
    assert distinct > metrics.AUPRO_EXACT_MAX_DISTINCT
    exact = aupro(masks, maps, num_thresholds=10**9)
    default = aupro(masks, maps)
    spaced = aupro(masks, maps, num_thresholds=metrics.AUPRO_DEFAULT_NUM_THRESHOLDS)
    assert default == spaced
    assert abs(default - exact) <= 2 / metrics.AUPRO_DEFAULT_NUM_THRESHOLDS


def test_aupro_few_distinct_values_are_exact_even_with_small_num_thresholds() -> None:
    # 11 distinct scores <= 20 thresholds, so the exact curve is used.
    masks, maps = _random_images(5, ties=True)
    expected = _brute_force_aupro(masks, maps, 0.3)
    assert aupro(masks, maps, fpr_limit=0.3, num_thresholds=20) == pytest.approx(expected, abs=TOL)


# --------------------------------------------------------------------------- AUPRO errors


def test_aupro_without_defects_raises() -> None:
    with pytest.raises(ValueError, match="no defect region"):
        aupro([np.zeros((3, 3), bool)], [np.zeros((3, 3))])


def test_aupro_without_normal_pixels_raises() -> None:
    with pytest.raises(ValueError, match="no normal pixel"):
        aupro([np.ones((3, 3), bool)], [np.zeros((3, 3))])


def test_aupro_shape_mismatch_names_index() -> None:
    masks = [np.ones((3, 3), bool), np.ones((3, 3), bool)]
    maps = [np.zeros((3, 3)), np.zeros((3, 4))]
    with pytest.raises(ValueError, match="pair 1"):
        aupro(masks, maps)


def test_aupro_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="pair 0: expected 2-D"):
        aupro([np.ones((2, 3, 3), bool)], [np.zeros((2, 3, 3))])


@pytest.mark.parametrize("fpr_limit", [0.0, -0.1, 1.5, float("nan")])
def test_aupro_rejects_bad_fpr_limit(fpr_limit: float) -> None:
    mask, scores = _two_region_case()
    with pytest.raises(ValueError, match="fpr_limit"):
        aupro([mask], [scores], fpr_limit=fpr_limit)


@pytest.mark.parametrize("num_thresholds", [1, 0, 2.5, True])
def test_aupro_rejects_bad_num_thresholds(num_thresholds) -> None:
    mask, scores = _two_region_case()
    with pytest.raises(ValueError, match="num_thresholds"):
        aupro([mask], [scores], num_thresholds=num_thresholds)


def test_aupro_rejects_nan_scores() -> None:
    mask, scores = _two_region_case()
    scores[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aupro([mask], [scores])


# --------------------------------------------------------------------------- labelling


def _same_partition(labels_a: np.ndarray, labels_b: np.ndarray) -> bool:
    """True when two labellings group the pixels identically (ids may differ)."""
    pairs = np.unique(np.stack([labels_a.ravel(), labels_b.ravel()]), axis=1)
    return (
        np.unique(pairs[0]).size == pairs.shape[1] and np.unique(pairs[1]).size == pairs.shape[1]
    )


def _bfs_labels(mask: np.ndarray) -> tuple[int, np.ndarray]:
    regions = _bfs_regions(mask)
    labels = np.zeros(mask.shape, np.int32)
    for index, region in enumerate(regions, start=1):
        for pixel in region:
            labels[pixel] = index
    return len(regions), labels


def _spiral(size: int) -> np.ndarray:
    """A one-pixel-wide spiral: one long region whose ids zigzag, many hooking rounds."""
    mask = np.zeros((size, size), bool)
    top, left, bottom, right = 0, 0, size - 1, size - 1
    while top <= bottom and left <= right:
        mask[top, left : right + 1] = True
        mask[top : bottom + 1, right] = True
        mask[bottom, left : right + 1] = True
        mask[top + 2 : bottom + 1, left] = True
        top, left, bottom, right = top + 2, left + 2, bottom - 2, right - 2
        if top <= bottom:
            mask[top - 1, left] = True
    return mask


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("density", [0.2, 0.45, 0.7])
def test_labeller_matches_bfs(seed: int, density: float) -> None:
    mask = np.random.default_rng(seed).random((23, 31)) < density
    count, labels = metrics._connected_components(mask)
    expected_count, expected_labels = _bfs_labels(mask)
    assert count == expected_count
    assert _same_partition(labels, expected_labels)


@pytest.mark.parametrize(
    "mask",
    [_spiral(21), np.zeros((4, 5), bool), np.ones((4, 5), bool), np.eye(6, dtype=bool)[::-1]],
    ids=["spiral", "empty", "full", "anti-diagonal"],
)
def test_labeller_shapes(mask: np.ndarray) -> None:
    count, labels = metrics._connected_components(mask)
    expected_count, expected_labels = _bfs_labels(mask)
    assert count == expected_count
    assert _same_partition(labels, expected_labels)


