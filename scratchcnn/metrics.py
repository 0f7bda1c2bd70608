"""How good is a trained network? Accuracy, confusion matrix, per-class report, calibration.

Everything here is plain NumPy and works on a finished set of predictions, so it accepts
NumPy or JAX arrays alike (each function converts with ``np.asarray`` on entry) and
returns Python floats, NumPy arrays, or dicts of them.

Conventions, shared with scikit-learn so the numbers can be checked against it:

- ``confusion_matrix[i, j]`` counts examples whose *true* class is ``i`` and whose
  *predicted* class is ``j``: rows are truth, columns are predictions.
- ``classification_report`` returns the dict that
  ``sklearn.metrics.classification_report(..., output_dict=True, zero_division=0)``
  returns: a ratio whose denominator is zero (precision of a class never predicted, recall
  of a class never present) counts as 0.
- ``per_class_accuracy`` is the same recall, but a class with no examples gets NaN, not 0:
  "no evidence" and "always wrong" are different answers.

Calibration follows Guo et al. (2017), "On Calibration of Modern Neural Networks": the
confidence of a prediction is its largest softmax probability; predictions are grouped in
``n_bins`` equal-width confidence bins, and the expected calibration error (ECE) is the
average gap between accuracy and confidence, each bin weighted by its share of examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from scratchcnn.errors import InputError, ShapeError
from scratchcnn.files import to_jsonable
from scratchcnn.ops import losses
from scratchcnn.ops.losses import log_softmax

# The two summary rows of the report, and its overall accuracy entry (scikit-learn's keys).
SUMMARY_KEYS = ("accuracy", "macro avg", "weighted avg")

# ---------------------------------------------------------------------------------------
# Input checks. Each raises one sentence naming the input and the problem: ShapeError for
# a wrong shape or length, InputError for a wrong value (type, dtype, range, emptiness).
# ---------------------------------------------------------------------------------------


def _check_num_classes(num_classes) -> int:
    """A class count must be a positive integer."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int | np.integer):
        raise InputError(f"num_classes must be an integer, got {num_classes!r}.")
    if num_classes < 1:
        raise InputError(f"num_classes must be at least 1, got {num_classes}.")
    return int(num_classes)


def _as_class_indices(values, name: str) -> np.ndarray:
    """A non-empty 1-D array of integers (labels or predicted classes).

    values: (N,) -> (N,) int array. Floats are refused rather than rounded: a float here
    usually means logits or probabilities were passed where class indices belong.
    """
    array = np.asarray(values)
    if array.ndim != 1:
        raise ShapeError(f"{name} must be a 1-D array of class indices, got shape {array.shape}.")
    if array.size == 0:
        raise InputError(f"{name} is empty: metrics need at least one example.")
    if not np.issubdtype(array.dtype, np.integer):
        raise InputError(f"{name} must hold integer class indices, got dtype {array.dtype}.")
    return array


def _as_scores(values, name: str) -> np.ndarray:
    """A non-empty 2-D float array of per-class scores (logits or probabilities).

    values: (N, K) -> (N, K) float64. float64 because metrics are not speed-critical and
    a sum of 10,000 float32 values loses digits we would then print.
    """
    array = np.asarray(values)
    if array.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D array (N, K), got shape {array.shape}.")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {array.shape}): metrics need N, K >= 1.")
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise InputError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    return array.astype(np.float64)


def _check_same_length(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    """One label per example: both arrays must have the same first dimension."""
    if a.shape[0] != b.shape[0]:
        raise ShapeError(
            f"{name_a} and {name_b} must have the same length, got {a.shape[0]} and {b.shape[0]}."
        )


def _check_in_range(values: np.ndarray, num_classes: int, name: str) -> None:
    """Every class index must lie in [0, num_classes).

    Without this check ``np.bincount`` would silently grow the confusion matrix (too large
    an index) or raise a confusing error (a negative one).
    """
    low, high = values.min(), values.max()
    if low < 0 or high >= num_classes:
        raise InputError(f"{name} must lie in [0, {num_classes}), got values from {low} to {high}.")


def _check_probabilities(probs: np.ndarray) -> None:
    """Each row must be a probability distribution: entries in [0, 1] summing to 1.

    The tolerance allows for float32 rounding. The usual mistake this catches is passing
    logits to a function that needs ``softmax(logits)``.
    """
    # Written as "not all inside" so that NaN, which fails every comparison, is caught too.
    if not np.all((probs >= 0) & (probs <= 1)):
        raise InputError("probs must lie in [0, 1]; pass softmax(logits), not the logits.")
    worst = np.max(np.abs(probs.sum(axis=1) - 1))
    if worst > 1e-3:
        raise InputError(f"each row of probs must sum to 1, but one is off by {worst:.3g}.")


def _scores_and_labels(scores, labels, name: str = "logits") -> tuple[np.ndarray, np.ndarray]:
    """Validate a (N, K) score array and its (N,) labels together."""
    scores = _as_scores(scores, name)
    labels = _as_class_indices(labels, "labels")
    _check_same_length(scores, labels, name, "labels")
    _check_in_range(labels, scores.shape[1], "labels")
    return scores, labels


def _labels_and_preds(labels, preds, num_classes) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate true and predicted class indices against one class count."""
    num_classes = _check_num_classes(num_classes)
    labels = _as_class_indices(labels, "labels")
    preds = _as_class_indices(preds, "preds")
    _check_same_length(labels, preds, "labels", "preds")
    _check_in_range(labels, num_classes, "labels")
    _check_in_range(preds, num_classes, "preds")
    return labels, preds, num_classes


# ---------------------------------------------------------------------------------------
# Probabilities and accuracy
# ---------------------------------------------------------------------------------------


def softmax(logits) -> np.ndarray:
    """Class probabilities from logits, checked and computed in float64.

    logits: (N, K) -> probs: (N, K), each row summing to 1: the loss's own ``softmax``
    (``ops/losses.py``, max subtracted first, so large logits cannot overflow).
    """
    return losses.softmax(_as_scores(logits, "logits"))


def accuracy(logits_or_preds, labels) -> float:
    """Fraction of examples whose predicted class equals the label.

    logits_or_preds: (N, K) logits or probabilities (the prediction is the argmax), or
    (N,) integer predicted classes; labels: (N,) ints -> float in [0, 1].
    """
    scores = np.asarray(logits_or_preds)
    if scores.ndim == 2:
        scores, labels = _scores_and_labels(scores, labels, "logits_or_preds")
        preds = scores.argmax(axis=1)
    else:
        preds = _as_class_indices(scores, "logits_or_preds")
        labels = _as_class_indices(labels, "labels")
        _check_same_length(preds, labels, "logits_or_preds", "labels")
    return float(np.mean(preds == labels))


# ---------------------------------------------------------------------------------------
# Confusion matrix and the per-class report
# ---------------------------------------------------------------------------------------


# --8<-- [start:confusion_matrix]
def confusion_matrix(labels, preds, num_classes: int = 10) -> np.ndarray:
    """Counts of (true class, predicted class) pairs.

    labels, preds: (N,) ints in [0, K) -> (K, K) int64, ``C[i, j]`` = number of examples
    of true class ``i`` predicted as ``j``. The diagonal holds the correct predictions.
    """
    labels, preds, k = _labels_and_preds(labels, preds, num_classes)
    # Each pair (i, j) gets its own number i * K + j; counting those numbers and folding
    # the counts into K rows of K is the whole confusion matrix, without a Python loop.
    pair_ids = labels.astype(np.int64) * k + preds.astype(np.int64)
    return np.bincount(pair_ids, minlength=k * k).reshape(k, k).astype(np.int64)


# --8<-- [end:confusion_matrix]


def _ratio(numerator: np.ndarray, denominator: np.ndarray, if_zero: float) -> np.ndarray:
    """numerator / denominator elementwise, with ``if_zero`` where the denominator is 0."""
    numerator = numerator.astype(np.float64)
    out = np.full(numerator.shape, if_zero, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


def per_class_accuracy(labels, preds, num_classes: int = 10) -> np.ndarray:
    """Accuracy within each true class (that is, each class's recall).

    labels, preds: (N,) ints in [0, K) -> (K,) float64. A class with no examples in
    ``labels`` gets NaN: its accuracy is undefined, and 0 would read as "always wrong".
    """
    counts = confusion_matrix(labels, preds, num_classes)
    return _ratio(np.diag(counts), counts.sum(axis=1), if_zero=np.nan)


# --8<-- [start:precision_recall_f1]
def _precision_recall_f1(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from a (K, K) confusion matrix; 0 for 0/0.

    precision = TP / (TP + FP) (column sum), recall = TP / (TP + FN) (row sum), and
    F1 = 2 TP / (2 TP + FP + FN), the harmonic mean of the two written so that it is
    defined (0) even when precision or recall is 0/0, as scikit-learn computes it.
    """
    true_pos = np.diag(counts)
    predicted = counts.sum(axis=0)  # TP + FP
    actual = counts.sum(axis=1)  # TP + FN, the support
    precision = _ratio(true_pos, predicted, if_zero=0.0)
    recall = _ratio(true_pos, actual, if_zero=0.0)
    f1 = _ratio(2 * true_pos, predicted + actual, if_zero=0.0)
    return precision, recall, f1


# --8<-- [end:precision_recall_f1]


def _report_row(precision: float, recall: float, f1: float, support: int) -> dict:
    """One row of the report, with scikit-learn's key names."""
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1-score": float(f1),
        "support": int(support),
    }


def classification_report(labels, preds, num_classes: int = 10) -> dict:
    """Precision, recall, F1 and support per class, plus their averages and the accuracy.

    labels, preds: (N,) ints in [0, K) -> dict with keys ``"0"`` ... ``"K-1"`` (one row
    per class, even a class that never appears), ``"accuracy"`` (a float), and
    ``"macro avg"`` (plain mean over the K classes) and ``"weighted avg"`` (mean weighted
    by support). Each row is ``{"precision", "recall", "f1-score", "support"}``. Same
    numbers as ``sklearn.metrics.classification_report(labels, preds,
    labels=range(K), output_dict=True, zero_division=0)``.
    """
    counts = confusion_matrix(labels, preds, num_classes)
    precision, recall, f1 = _precision_recall_f1(counts)
    support = counts.sum(axis=1)
    total = int(support.sum())
    report = {
        str(c): _report_row(precision[c], recall[c], f1[c], support[c]) for c in range(len(counts))
    }
    report["accuracy"] = float(np.trace(counts) / total)
    report["macro avg"] = _report_row(precision.mean(), recall.mean(), f1.mean(), total)
    weights = support / total
    report["weighted avg"] = _report_row(precision @ weights, recall @ weights, f1 @ weights, total)
    return report


def format_report(report: dict, digits: int = 4) -> str:
    """The report as a fixed-width text table, laid out like scikit-learn's.

    report: the dict ``classification_report`` returns -> a multi-line string.
    """
    class_names = [key for key in report if key not in SUMMARY_KEYS]
    width = max(len("weighted avg"), *(len(name) for name in class_names))
    number = f"{{:>10.{digits}f}}"
    header = f"{'':>{width}}" + "".join(
        f"{h:>10}" for h in ("precision", "recall", "f1-score", "support")
    )

    def row(name: str, r: dict) -> str:
        values = [number.format(r[key]) for key in ("precision", "recall", "f1-score")]
        return f"{name:>{width}}" + "".join(values) + f"{r['support']:>10d}"

    lines = [header, ""]
    lines += [row(name, report[name]) for name in class_names]
    lines.append("")
    # Accuracy has no precision or recall: it sits in the F1 column, as in scikit-learn.
    total = report["macro avg"]["support"]
    accuracy_cell = number.format(report["accuracy"])
    lines.append(f"{'accuracy':>{width}}" + " " * 20 + accuracy_cell + f"{total:>10d}")
    lines += [row(name, report[name]) for name in ("macro avg", "weighted avg")]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------


class ReliabilityBins(NamedTuple):
    """Per-bin statistics of a reliability diagram; every field has shape (n_bins,).

    Bin ``b`` holds the predictions whose confidence lies in ``(lower[b], upper[b]]``
    (the first bin also holds confidence 0). ``accuracy`` and ``confidence`` are means
    over the bin and NaN for an empty bin, so a plot simply leaves those bars out.
    """

    lower: np.ndarray
    upper: np.ndarray
    count: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray


def _check_n_bins(n_bins) -> int:
    """The number of bins must be a positive integer."""
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise InputError(f"n_bins must be a positive integer, got {n_bins!r}.")
    return int(n_bins)


def _bin_index(confidences: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Which bin (lo, hi] each confidence falls in, from the n_bins + 1 bin edges.

    confidences: (N,) -> (N,) ints in [0, n_bins). Counting the inner edges strictly below
    a value puts a value equal to an edge in the bin *below* it, which makes bins closed
    on the right; 0 lands in bin 0. We compare against the very edges we report instead
    of computing ``ceil(c * n_bins) - 1``, whose rounding can disagree with them.
    """
    return np.searchsorted(edges[1:-1], confidences, side="left")


# --8<-- [start:reliability_bins]
def reliability_bins(probs, labels, n_bins: int = 15) -> ReliabilityBins:
    """Group predictions by confidence into equal-width bins; accuracy and mean confidence per bin.

    probs: (N, K) probabilities (``softmax(logits)``), labels: (N,) ints in [0, K).
    The confidence of an example is its largest probability; it is correct when that
    class is the label. Returns a ``ReliabilityBins`` of (n_bins,) arrays.
    """
    probs, labels = _scores_and_labels(probs, labels, "probs")
    _check_probabilities(probs)
    n_bins = _check_n_bins(n_bins)
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)

    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = _bin_index(confidences, edges)
    count = np.bincount(index, minlength=n_bins)
    # Sums per bin through bincount's weights, then means; 0/0 (empty bin) becomes NaN.
    accuracy_per_bin = _ratio(np.bincount(index, correct, n_bins), count, if_zero=np.nan)
    confidence_per_bin = _ratio(np.bincount(index, confidences, n_bins), count, if_zero=np.nan)
    return ReliabilityBins(edges[:-1], edges[1:], count, accuracy_per_bin, confidence_per_bin)


# --8<-- [end:reliability_bins]


# --8<-- [start:ece]
def _ece_from_bins(bins: ReliabilityBins) -> float:
    """ECE = sum over non-empty bins of |B_b| / N * |accuracy(B_b) - confidence(B_b)|."""
    filled = bins.count > 0
    weights = bins.count[filled] / bins.count.sum()
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(weights * gaps))


# --8<-- [end:ece]


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017) with equal-width confidence bins.

    probs: (N, K) probabilities, labels: (N,) ints in [0, K) -> float in [0, 1].
    0 means that, in every bin, the fraction of correct predictions equals the average
    confidence. Bins are ``(lo, hi]``, the first one including 0 (see ``reliability_bins``).
    """
    return _ece_from_bins(reliability_bins(probs, labels, n_bins))


# ---------------------------------------------------------------------------------------
# Mistakes and the whole evaluation
# ---------------------------------------------------------------------------------------


def misclassified(logits, labels, limit: int | None = None) -> list[dict]:
    """The wrongly classified examples, the most confidently wrong first.

    logits: (N, K), labels: (N,) ints in [0, K) -> list of
    ``{"index", "label", "prediction", "confidence"}`` where ``confidence`` is the softmax
    probability of the (wrong) predicted class. Ties keep dataset order. ``limit`` keeps
    only the first ``limit`` entries.
    """
    logits, labels = _scores_and_labels(logits, labels)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise InputError(f"limit must be None or a non-negative integer, got {limit!r}.")
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    confidences = probs.max(axis=1)
    wrong = np.flatnonzero(preds != labels)
    # A stable sort on the negated confidence: descending, and ties stay in index order.
    order = wrong[np.argsort(-confidences[wrong], kind="stable")][:limit]
    return [
        {
            "index": int(i),
            "label": int(labels[i]),
            "prediction": int(preds[i]),
            "confidence": float(confidences[i]),
        }
        for i in order
    ]


def mean_cross_entropy(logits, labels) -> float:
    """Mean softmax cross-entropy, -mean(log softmax(logits)[n, labels[n]]), in float64.

    logits: (N, K), labels: (N,) ints in [0, K) -> float.
    """
    logits, labels = _scores_and_labels(logits, labels)
    log_probs = log_softmax(logits)
    return float(-np.mean(log_probs[np.arange(len(labels)), labels]))


@dataclass(frozen=True)
class Evaluation:
    """Everything ``evaluate_logits`` measures on one set of predictions.

    per_class_accuracy: (K,) with NaN for an absent class; confusion_matrix: (K, K),
    rows true class, columns prediction; report: as ``classification_report``;
    reliability: the bins the ECE was computed from; misclassified: every mistake, the
    most confident first (as ``misclassified``).
    """

    num_examples: int
    accuracy: float
    loss: float
    ece: float
    per_class_accuracy: np.ndarray
    confusion_matrix: np.ndarray
    report: dict
    reliability: ReliabilityBins
    misclassified: list[dict]

    def to_json(self) -> dict:
        """A dict of lists, floats and ints that ``json.dumps`` accepts; NaN -> None."""
        return to_jsonable(
            {
                "num_examples": self.num_examples,
                "accuracy": self.accuracy,
                "loss": self.loss,
                "ece": self.ece,
                "per_class_accuracy": self.per_class_accuracy,
                "confusion_matrix": self.confusion_matrix,
                "report": self.report,
                "reliability": self.reliability._asdict(),
                "misclassified": self.misclassified,
            }
        )

    def format(self) -> str:
        """A readable summary: headline numbers, the confusion matrix, the report table."""
        headline = (
            f"accuracy {self.accuracy:.4f}   loss {self.loss:.4f}   "
            f"ECE {self.ece:.4f}   ({self.num_examples} examples)"
        )
        return "\n\n".join(
            [headline, format_confusion_matrix(self.confusion_matrix), format_report(self.report)]
        )


def format_confusion_matrix(counts) -> str:
    """A (K, K) confusion matrix as text, with the class numbers along both edges.

    Rows are the true class, columns the predicted one (the first line says so).
    """
    counts = np.asarray(counts)
    k = counts.shape[0]
    width = max(len(str(counts.max())), len(str(k - 1))) + 2
    corner = "true\\pred"
    label_width = max(len(corner), len(str(k - 1)))
    lines = ["confusion matrix (rows: true class, columns: predicted class)"]
    lines.append(f"{corner:>{label_width}}" + "".join(f"{j:>{width}}" for j in range(k)))
    lines += [
        f"{i:>{label_width}}" + "".join(f"{c:>{width}}" for c in row)
        for i, row in enumerate(counts.tolist())
    ]
    return "\n".join(lines)


def evaluate_logits(logits, labels, num_classes: int = 10, n_bins: int = 15) -> Evaluation:
    """Every metric of this module on one batch of logits (e.g. the whole test set).

    logits: (N, K) with K == num_classes, labels: (N,) ints in [0, K) -> ``Evaluation``.
    """
    num_classes = _check_num_classes(num_classes)
    logits, labels = _scores_and_labels(logits, labels)
    if logits.shape[1] != num_classes:
        raise ShapeError(f"logits have {logits.shape[1]} columns but num_classes is {num_classes}.")
    preds = logits.argmax(axis=1)
    bins = reliability_bins(softmax(logits), labels, n_bins)
    return Evaluation(
        num_examples=len(labels),
        accuracy=accuracy(preds, labels),
        loss=mean_cross_entropy(logits, labels),
        ece=_ece_from_bins(bins),
        per_class_accuracy=per_class_accuracy(labels, preds, num_classes),
        confusion_matrix=confusion_matrix(labels, preds, num_classes),
        report=classification_report(labels, preds, num_classes),
        reliability=bins,
        misclassified=misclassified(logits, labels),
    )
