"""The figures of report.html, drawn with matplotlib's Agg backend straight into PNG bytes.

Matplotlib because the figures are static pictures: the same records draw the same bytes, they need no
JavaScript, and a PNG embeds in the one self-contained file as a data URI (docs/REPORT.md). The Agg canvas is
used directly (no pyplot), so drawing leaves no global state behind in a training process.
"""

from __future__ import annotations

import io

import numpy as np

from pyimgano import metrics


class ReportExtraMissing(Exception):
    """matplotlib (the `report` extra) is not installed, and report.html was asked for."""


def require_matplotlib() -> None:
    """Refuses, naming the fix, where the figures cannot be drawn: checked before a training starts."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportExtraMissing("report.html needs matplotlib: pip install 'pyimgano[report]', or set "
                                 "output.html_report: false") from None


GOOD_COLOUR, DEFECT_COLOUR, THRESHOLD_COLOUR, CALIBRATION_COLOUR = "#2e7d32", "#c62828", "#212121", "#1565c0"
SIZE_INCHES, DPI = (4.8, 3.6), 100


def _figure():
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE_INCHES, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.grid(True, alpha=0.3)
    return figure, axes


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    # No "Software" entry: the bytes then depend on the records alone (and matplotlib's drawing).
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def roc_png(truth: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    """The ROC curve with the shipped threshold's operating point marked."""
    fpr, tpr = metrics.roc_curve(truth, scores)
    predicted = scores > threshold
    point = (predicted[truth == 0].mean(), predicted[truth == 1].mean())
    figure, axes = _figure()
    axes.plot(fpr, tpr, color=DEFECT_COLOUR, label=f"AUROC {metrics.roc_auc(truth, scores):.4f}")
    axes.plot([0, 1], [0, 1], color="#9e9e9e", linestyle=":", linewidth=1)
    axes.plot(*point, "o", color=THRESHOLD_COLOUR, label=f"threshold: FPR {point[0]:.3f}, TPR {point[1]:.3f}")
    axes.set(xlabel="false-positive rate (good images rejected)", ylabel="true-positive rate (defects found)",
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.02), title="ROC")
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def pr_png(truth: np.ndarray, scores: np.ndarray, threshold: float) -> bytes:
    """The precision-recall curve (anomalous = positive) with the shipped threshold's point marked."""
    recall, precision = metrics.precision_recall_curve(truth, scores)
    predicted = scores > threshold
    flagged = int(predicted.sum())
    point = (predicted[truth == 1].mean(), (predicted & (truth == 1)).sum() / flagged if flagged else 1.0)
    figure, axes = _figure()
    axes.step(recall, precision, where="post", color=DEFECT_COLOUR,
              label=f"AP {metrics.average_precision(truth, scores):.4f}")
    axes.plot(*point, "o", color=THRESHOLD_COLOUR, label=f"threshold: recall {point[0]:.3f}, precision {point[1]:.3f}")
    axes.set(xlabel="recall (defects found)", ylabel="precision (flagged that are defects)",
             xlim=(-0.02, 1.02), ylim=(-0.02, 1.05), title="Precision-recall")
    axes.legend(loc="lower left", fontsize=8)
    return _png(figure)


def histogram_png(good: np.ndarray, defects: np.ndarray, threshold: float, calibration: np.ndarray) -> bytes:
    """Test scores of good and defect images, the normal scores the threshold was read from (outline), and the
    threshold, with the rates it gives on the test images in the legend."""
    values = [v for v in (good, defects, calibration) if v.size]
    low = min(float(v.min()) for v in values + [np.array([threshold])])
    high = max(float(v.max()) for v in values + [np.array([threshold])])
    bins = np.linspace(low, high if high > low else low + 1.0, 31)
    figure, axes = _figure()
    if good.size:
        rejected = int((good > threshold).sum())
        axes.hist(good, bins=bins, color=GOOD_COLOUR, alpha=0.6,
                  label=f"test good ({good.size}): {rejected} rejected, {rejected / good.size:.1%}")
    if defects.size:
        missed = int((defects <= threshold).sum())
        axes.hist(defects, bins=bins, color=DEFECT_COLOUR, alpha=0.6,
                  label=f"test defects ({defects.size}): {missed} missed, {missed / defects.size:.1%}")
    if calibration.size:
        axes.hist(calibration, bins=bins, histtype="step", color=CALIBRATION_COLOUR, linewidth=1.5,
                  label=f"calibration good ({calibration.size})")
    axes.axvline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.5, label=f"threshold {threshold:.4g}")
    axes.set(xlabel="image score", ylabel="images", title="Score histogram")
    axes.legend(loc="best", fontsize=7)
    return _png(figure)
