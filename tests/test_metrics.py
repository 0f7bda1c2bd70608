"""Metrics: checked against scikit-learn, against hand-computed numbers, and against a
plain loop written here, so a mistake has to fool three independent references.
"""

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import sklearn.metrics as skm
from hypothesis import given
from hypothesis import strategies as st

from scratchcnn import metrics as M
from scratchcnn.errors import InputError, ShapeError

pytestmark = pytest.mark.lesson06


def random_case(seed: int, n: int, k: int, absent: bool):
    """Random logits (N, K) and labels; with ``absent``, class K-1 is never a label.

    The logits are biased toward the label so the predictions are neither all right nor
    all wrong, and predictions of the absent class remain possible (precision 0 there).
    """
    rng = np.random.default_rng(seed)
    label_classes = k - 1 if absent else k
    labels = rng.integers(0, label_classes, size=n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), labels] += rng.uniform(0, 2)
    return logits, labels


cases = st.tuples(st.integers(0, 2**32 - 1), st.integers(1, 60), st.integers(2, 6), st.booleans())


# --- accuracy, confusion matrix, report: against scikit-learn ----------------------------


@given(case=cases)
def test_accuracy_matches_sklearn(case):
    logits, labels = random_case(*case)
    expected = skm.accuracy_score(labels, logits.argmax(axis=1))
    assert M.accuracy(logits, labels) == pytest.approx(expected)
    assert M.accuracy(logits.argmax(axis=1), labels) == pytest.approx(expected)
    assert M.accuracy(M.softmax(logits), labels) == pytest.approx(expected)


def test_accuracy_accepts_jax_arrays():
    logits = jnp.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0]], dtype=jnp.float32)
    labels = jnp.array([0, 0, 0])
    assert M.accuracy(logits, labels) == pytest.approx(2 / 3)
    assert isinstance(M.accuracy(logits, labels), float)


@given(case=cases)
def test_confusion_matrix_matches_sklearn(case):
    logits, labels = random_case(*case)
    k = logits.shape[1]
    preds = logits.argmax(axis=1)
    ours = M.confusion_matrix(labels, preds, num_classes=k)
    assert ours.dtype == np.int64
    np.testing.assert_array_equal(ours, skm.confusion_matrix(labels, preds, labels=range(k)))


def test_confusion_matrix_rows_are_true_classes():
    # Two examples of class 0, both predicted as 2: that count belongs in row 0, column 2.
    counts = M.confusion_matrix([0, 0, 1], [2, 2, 1], num_classes=3)
    np.testing.assert_array_equal(counts, [[0, 0, 2], [0, 1, 0], [0, 0, 0]])


@given(case=cases)
def test_per_class_accuracy_is_recall_with_nan_for_absent_classes(case):
    logits, labels = random_case(*case)
    k = logits.shape[1]
    preds = logits.argmax(axis=1)
    expected = skm.recall_score(labels, preds, labels=range(k), average=None, zero_division=np.nan)
    ours = M.per_class_accuracy(labels, preds, num_classes=k)
    np.testing.assert_allclose(ours, expected)  # NaN must sit where sklearn's NaN sits
    absent = np.setdiff1d(np.arange(k), labels)
    assert np.isnan(ours[absent]).all() and not np.isnan(np.delete(ours, absent)).any()


def assert_reports_equal(ours: dict, theirs: dict):
    assert ours.keys() == theirs.keys()
    assert ours["accuracy"] == pytest.approx(theirs["accuracy"])
    for key, row in theirs.items():
        if key == "accuracy":
            continue
        assert ours[key].keys() == row.keys(), key
        for field, value in row.items():
            assert ours[key][field] == pytest.approx(value, abs=1e-12), (key, field)


@given(case=cases)
def test_classification_report_matches_sklearn(case):
    logits, labels = random_case(*case)
    k = logits.shape[1]
    preds = logits.argmax(axis=1)
    theirs = skm.classification_report(
        labels, preds, labels=list(range(k)), output_dict=True, zero_division=0
    )
    assert_reports_equal(M.classification_report(labels, preds, num_classes=k), theirs)


def test_report_with_a_class_never_labelled_nor_predicted():
    labels = np.array([0, 0, 1, 1, 1, 3])
    preds = np.array([0, 1, 1, 1, 3, 3])  # class 2 appears nowhere; 4 classes in all
    ours = M.classification_report(labels, preds, num_classes=4)
    theirs = skm.classification_report(
        labels, preds, labels=[0, 1, 2, 3], output_dict=True, zero_division=0
    )
    assert_reports_equal(ours, theirs)
    assert ours["2"] == {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    # The macro average counts the empty class as a zero, as sklearn does.
    p = [1.0, 2 / 3, 0.0, 0.5]
    assert ours["macro avg"]["precision"] == pytest.approx(np.mean(p))
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        labels, preds, labels=[0, 1, 2, 3], zero_division=0
    )
    fields = ("precision", "recall", "f1-score", "support")
    for field, expected in zip(fields, (precision, recall, f1, support)):
        np.testing.assert_allclose([ours[str(c)][field] for c in range(4)], expected)


def test_format_report_shows_every_row():
    report = M.classification_report([0, 1, 1, 2], [0, 1, 2, 2], num_classes=3)
    text = M.format_report(report)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    row_1 = next(line for line in lines if line.split()[:1] == ["1"])
    assert row_1.split() == ["1", "1.0000", "0.5000", "0.6667", "2"]
    acc = next(line for line in lines if "accuracy" in line)
    assert acc.split() == ["accuracy", "0.7500", "4"]
    assert any(line.startswith("weighted avg") for line in lines)
    # Fixed width: every table row is as wide as the header.
    assert {len(line) for line in lines if line} == {len(lines[0])}


# --- calibration -------------------------------------------------------------------------


def test_ece_hand_computed():
    # Edges 0, .2, .4, .6, .8, 1. Confidences and correctness:
    #   .9 right -> bin 4;  .7 wrong and .65 right -> bin 3;  .5 right -> bin 2.
    # ECE = 1/4 * |1 - .9| + 2/4 * |.5 - .675| + 1/4 * |1 - .5| = .025 + .0875 + .125
    probs = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1], [0.3, 0.65, 0.05], [0.5, 0.3, 0.2]])
    labels = np.array([0, 1, 1, 0])
    assert M.expected_calibration_error(probs, labels, n_bins=5) == pytest.approx(0.2375)
    bins = M.reliability_bins(probs, labels, n_bins=5)
    np.testing.assert_array_equal(bins.count, [0, 0, 1, 2, 1])
    np.testing.assert_allclose(bins.accuracy, [np.nan, np.nan, 1.0, 0.5, 1.0])
    np.testing.assert_allclose(bins.confidence, [np.nan, np.nan, 0.5, 0.675, 0.9])
    np.testing.assert_allclose(bins.lower, [0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(bins.upper, [0.2, 0.4, 0.6, 0.8, 1.0])


def test_bins_are_closed_on_the_right():
    # With 4 bins the edges 0, .25, .5, .75, 1 are exact in binary, so these confidences
    # sit exactly on an edge: each belongs to the bin it closes.
    probs = np.array([[0.5, 0.5], [0.75, 0.25], [1.0, 0.0]])
    bins = M.reliability_bins(probs, np.array([0, 0, 0]), n_bins=4)
    np.testing.assert_array_equal(bins.count, [0, 1, 1, 1])


def loop_ece(probs, labels, n_bins):
    """ECE the slow, obvious way: for each bin, walk over all examples."""
    n = len(labels)
    ece = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        in_bin = []
        for i in range(n):
            conf = max(probs[i])
            if lo < conf <= hi or (b == 0 and conf == 0):
                in_bin.append(i)
        if in_bin:
            acc = sum(int(np.argmax(probs[i]) == labels[i]) for i in in_bin) / len(in_bin)
            conf = sum(max(probs[i]) for i in in_bin) / len(in_bin)
            ece += len(in_bin) / n * abs(acc - conf)
    return ece


@given(case=cases, n_bins=st.integers(1, 20))
def test_ece_matches_a_plain_loop(case, n_bins):
    logits, labels = random_case(*case)
    probs = M.softmax(3 * logits)
    ours = M.expected_calibration_error(probs, labels, n_bins=n_bins)
    assert ours == pytest.approx(loop_ece(probs, labels, n_bins), abs=1e-12)


def synthetic_probs(confidences, k):
    """Rows whose largest probability (on class 0) is the given confidence."""
    confidences = np.asarray(confidences, dtype=np.float64)
    probs = np.repeat(((1 - confidences) / (k - 1))[:, None], k, axis=1)
    probs[:, 0] = confidences
    return probs


def test_perfectly_calibrated_predictions_have_zero_ece():
    # Ten examples at each confidence c, of which exactly 10 * c are right (label 0).
    k = 10
    confidences = np.repeat([0.2, 0.4, 0.6, 0.8, 1.0], 10)
    right = np.concatenate([np.arange(10) < 10 * c for c in (0.2, 0.4, 0.6, 0.8, 1.0)])
    labels = np.where(right, 0, 1)
    probs = synthetic_probs(confidences, k)
    assert M.expected_calibration_error(probs, labels, n_bins=15) == pytest.approx(0, abs=1e-12)
    # The same predictions, claimed with confidence 0.9, are overconfident: the gap shows.
    overconfident = synthetic_probs(np.full(50, 0.9), k)
    ece = M.expected_calibration_error(overconfident, labels, n_bins=15)
    assert ece == pytest.approx(0.9 - right.mean())


# --- softmax, loss, mistakes -------------------------------------------------------------


def test_softmax_is_stable_and_normalised():
    probs = M.softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]]))
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[1], 1 / 3)


def test_loss_matches_optax():
    logits, labels = random_case(0, 40, 10, True)
    expected = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), labels)
    ev = M.evaluate_logits(logits, labels)
    assert ev.loss == pytest.approx(float(np.mean(expected)), rel=1e-12)
    # Huge logits must not overflow: log-softmax with the max subtracted first.
    assert M.mean_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1])) == pytest.approx(1000)


def test_misclassified_most_confident_first():
    logits = np.log(
        np.array(
            [
                [0.7, 0.2, 0.1],  # label 1: wrong at .7
                [0.1, 0.8, 0.1],  # label 1: right, left out
                [0.1, 0.1, 0.8],  # label 0: wrong at .8
                [0.6, 0.3, 0.1],  # label 2: wrong at .6
                [0.1, 0.1, 0.8],  # label 1: wrong at .8, a tie: dataset order kept
            ]
        )
    )
    labels = np.array([1, 1, 0, 2, 1])
    found = M.misclassified(logits, labels)
    assert [m["index"] for m in found] == [2, 4, 0, 3]
    assert found[0] == {"index": 2, "label": 0, "prediction": 2, "confidence": pytest.approx(0.8)}
    assert [type(v) for v in found[0].values()] == [int, int, int, float]
    assert [m["index"] for m in M.misclassified(logits, labels, limit=2)] == [2, 4]
    assert M.misclassified(logits, labels, limit=0) == []


# --- the whole evaluation ----------------------------------------------------------------


def test_evaluation_bundles_the_same_numbers():
    logits, labels = random_case(7, 50, 10, absent=True)
    ev = M.evaluate_logits(jnp.asarray(logits, dtype=jnp.float32), jnp.asarray(labels))
    preds = logits.argmax(axis=1)
    assert ev.num_examples == 50
    assert ev.accuracy == pytest.approx(skm.accuracy_score(labels, preds))
    np.testing.assert_array_equal(ev.confusion_matrix, skm.confusion_matrix(labels, preds))
    assert ev.ece == pytest.approx(loop_ece(M.softmax(logits), labels, 15), abs=1e-6)
    assert len(ev.misclassified) == int(np.sum(preds != labels))


def test_to_json_round_trips_and_turns_nan_into_none():
    logits, labels = random_case(3, 30, 10, absent=True)  # class 9 absent -> NaN accuracy
    data = M.evaluate_logits(logits, labels).to_json()
    text = json.dumps(data, allow_nan=False)  # raises on NaN or on a NumPy scalar
    assert json.loads(text) == data
    assert data["per_class_accuracy"][9] is None
    assert data["confusion_matrix"][0] == M.confusion_matrix(labels, logits.argmax(1))[0].tolist()
    assert set(data) >= {"accuracy", "loss", "ece", "report", "misclassified"}


def test_format_shows_headline_matrix_and_report():
    logits, labels = random_case(5, 30, 3, absent=False)
    ev = M.evaluate_logits(logits, labels, num_classes=3)
    text = ev.format()
    assert f"accuracy {ev.accuracy:.4f}" in text and f"loss {ev.loss:.4f}" in text
    assert f"ECE {ev.ece:.4f}" in text
    lines = text.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("true\\pred"))
    assert header.split()[1:] == ["0", "1", "2"]
    row_0 = lines[lines.index(header) + 1].split()
    assert row_0 == ["0", *map(str, ev.confusion_matrix[0])]
    assert M.format_report(ev.report) in text


# --- bad inputs --------------------------------------------------------------------------

good_logits = np.zeros((3, 4))
good_labels = np.array([0, 1, 3])

bad_calls = {
    "lengths differ": (lambda: M.accuracy(good_logits, [0, 1]), "same length", ShapeError),
    "preds lengths differ": (lambda: M.confusion_matrix([0, 1], [0], 4), "same length", ShapeError),
    "label too large": (lambda: M.confusion_matrix([0, 4], [0, 1], 4), r"\[0, 4\)", InputError),
    "negative label": (lambda: M.per_class_accuracy([-1, 0], [0, 0], 4), r"\[0, 4\)", InputError),
    "pred too large": (lambda: M.classification_report([0, 1], [0, 9], 4), "preds", InputError),
    "label beyond logits": (
        lambda: M.evaluate_logits(good_logits, [0, 1, 4], 4),
        "labels",
        InputError,
    ),
    "logits 1-D float": (lambda: M.misclassified(np.zeros(3), good_labels), "2-D", ShapeError),
    "logits 3-D": (lambda: M.softmax(np.zeros((2, 3, 4))), "2-D", ShapeError),
    "probs 3-D": (
        lambda: M.expected_calibration_error(np.zeros((3, 4, 1)), good_labels),
        "2-D",
        ShapeError,
    ),
    "empty": (lambda: M.accuracy(np.zeros((0, 4)), np.array([], dtype=int)), "empty", InputError),
    "empty labels": (lambda: M.confusion_matrix([], [], 4), "empty", InputError),
    "float labels": (lambda: M.accuracy(good_logits, [0.0, 1.0, 3.0]), "integer", InputError),
    "float preds": (
        lambda: M.accuracy(np.array([0.2, 0.1, 0.7]), good_labels),
        "integer",
        InputError,
    ),
    "columns != num_classes": (
        lambda: M.evaluate_logits(good_logits, good_labels),
        "columns",
        ShapeError,
    ),
    "logits as probs": (
        lambda: M.expected_calibration_error(np.full((3, 4), 2.0), good_labels),
        "softmax",
        InputError,
    ),
    "rows not summing to 1": (
        lambda: M.reliability_bins(np.full((3, 4), 0.5), good_labels),
        "sum to 1",
        InputError,
    ),
    "zero bins": (
        lambda: M.reliability_bins(np.full((3, 4), 0.25), good_labels, 0),
        "n_bins",
        InputError,
    ),
    "bad limit": (lambda: M.misclassified(good_logits, good_labels, limit=-1), "limit", InputError),
    "bad num_classes": (
        lambda: M.confusion_matrix([0], [0], num_classes=0),
        "num_classes",
        InputError,
    ),
}


@pytest.mark.parametrize("name", bad_calls)
def test_bad_inputs_raise_one_clear_error(name):
    """ShapeError for a wrong shape or length, InputError for a wrong value."""
    call, pattern, error = bad_calls[name]
    with pytest.raises(error, match=pattern) as info:
        call()
    message = str(info.value)
    assert message.endswith(".") and message.count(". ") == 0  # one sentence
