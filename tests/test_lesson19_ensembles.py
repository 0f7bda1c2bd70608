"""Lesson 19's ensemble maths (scratchcnn/ensemble.py) on hand-made arrays.

Expected values are written out by hand or computed another way (a loop, a plain mean),
never by the function under test.
"""

import numpy as np
import pytest

from scratchcnn import ensemble
from scratchcnn.errors import ScratchCNNError

pytestmark = pytest.mark.lesson19


def hand_softmax(row):
    e = np.exp(np.asarray(row, dtype=np.float64) - max(row))
    return e / e.sum()


# Two members, two images, three classes.
LOGITS = np.array(
    [
        [[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]],
        [[0.0, 3.0, 0.0], [1.0, -2.0, 4.0]],
    ]
)


def test_mean_of_probabilities_is_the_mean_of_each_members_softmax():
    expected = [(hand_softmax(LOGITS[0, n]) + hand_softmax(LOGITS[1, n])) / 2 for n in range(2)]
    np.testing.assert_allclose(ensemble.mean_of_probabilities(LOGITS), expected, rtol=1e-12)


def test_weights_are_normalized_and_weigh_each_member():
    expected = [
        0.25 * hand_softmax(LOGITS[0, n]) + 0.75 * hand_softmax(LOGITS[1, n]) for n in range(2)
    ]
    got = ensemble.mean_of_probabilities(LOGITS, weights=[1, 3])
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    # All the weight on one member is that member alone.
    np.testing.assert_allclose(
        ensemble.mean_of_probabilities(LOGITS, [0, 2]),
        [hand_softmax(r) for r in LOGITS[1]],
        rtol=1e-12,
    )


def test_mean_of_logits_is_the_softmax_of_the_mean_logits():
    expected = [hand_softmax(0.25 * LOGITS[0, n] + 0.75 * LOGITS[1, n]) for n in range(2)]
    got = ensemble.softmax_of_mean_logits(LOGITS, weights=[1, 3])
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_the_two_averages_can_disagree():
    # Member 0 is extremely sure of class 1; members 1 and 2 mildly prefer class 0. The
    # probability average follows the two (class 0 gets (0 + 2 * 0.88) / 3 = 0.59); the
    # logit average follows the one (mean logits 4/3 for class 0, 20/3 for class 1).
    logits = np.array([[[0.0, 20.0]], [[2.0, 0.0]], [[2.0, 0.0]]])
    probs = ensemble.mean_of_probabilities(logits)[0]
    np.testing.assert_allclose(probs, (hand_softmax([0, 20]) + 2 * hand_softmax([2, 0])) / 3)
    assert probs.argmax() == 0
    assert ensemble.softmax_of_mean_logits(logits)[0].argmax() == 1


@pytest.mark.parametrize("weights", [[1, -1], [0, 0], [1, 2, 3]])
def test_bad_weights_are_refused_in_one_sentence(weights):
    with pytest.raises(ScratchCNNError):
        ensemble.mean_of_probabilities(LOGITS, weights)


def test_nll_and_error_rate_by_hand():
    probs = np.array([[0.5, 0.5, 0.0], [0.1, 0.2, 0.7], [0.9, 0.05, 0.05]])
    labels = np.array([1, 2, 1])
    assert ensemble.nll(probs, labels) == pytest.approx(
        -(np.log(0.5) + np.log(0.7) + np.log(0.05)) / 3
    )
    assert ensemble.error_rate(probs, labels) == pytest.approx(2 / 3)  # ties: the first


@pytest.mark.parametrize("true_temperature", [0.5, 1.0, 2.5])
def test_fitted_temperature_recovers_the_temperature_the_labels_were_drawn_with(true_temperature):
    # Labels drawn from softmax(z / T): the NLL's minimum is at T, up to sampling noise.
    rng = np.random.default_rng(0)
    z = 3 * rng.standard_normal((40_000, 10))
    p = np.exp(z / true_temperature)
    p /= p.sum(axis=1, keepdims=True)
    labels = (p.cumsum(axis=1) > rng.random((len(p), 1))).argmax(axis=1)
    assert ensemble.fit_temperature(z, labels) == pytest.approx(true_temperature, rel=0.05)


def test_fitted_temperature_is_the_minimum_of_a_fine_grid():
    rng = np.random.default_rng(1)
    z = 4 * rng.standard_normal((2_000, 10))
    labels = rng.integers(0, 10, 2_000)
    labels[:1_200] = z[:1_200].argmax(axis=1)  # 60% right: overconfident logits
    grid = np.geomspace(0.05, 20, 101)
    losses = [_nll_loop(z, labels, t) for t in grid]
    coarse = grid[int(np.argmin(losses))]
    fitted = ensemble.fit_temperature(z, labels)
    assert fitted == pytest.approx(coarse, rel=0.07)
    assert _nll_loop(z, labels, fitted) <= min(losses) + 1e-9


def _nll_loop(z, labels, temperature):
    """The NLL of softmax(z / T) one image at a time."""
    return -np.mean([np.log(hand_softmax(row / temperature)[y]) for row, y in zip(z, labels)])


def members_with_known_quality(rng, n=600):
    """Three members' probabilities on n images of 4 classes: right 90%, 70% and 40% of
    the time (independently), fairly confident when right or wrong."""
    labels = rng.integers(0, 4, n)
    members = []
    for accuracy in (0.7, 0.9, 0.4):
        predicted = np.where(rng.random(n) < accuracy, labels, (labels + rng.integers(1, 4, n)) % 4)
        probs = np.full((n, 4), 0.1)
        probs[np.arange(n), predicted] = 0.7
        members.append(probs)
    return np.array(members), labels


@pytest.mark.parametrize("objective", [ensemble.nll, ensemble.error_rate])
def test_greedy_picks_the_best_member_first_and_never_gets_worse(objective):
    probs, labels = members_with_known_quality(np.random.default_rng(2))
    singles = [objective(p, labels) for p in probs]
    picks, curve = ensemble.greedy_selection(probs, labels, objective)
    assert picks[0] == int(np.argmin(singles)) == 1
    assert curve[0] == pytest.approx(min(singles))
    assert all(later < earlier for earlier, later in zip(curve, curve[1:]))
    # Each point of the curve is the objective of the mean of the members picked so far.
    for k in range(1, len(picks) + 1):
        mean = probs[picks[:k]].mean(axis=0)
        assert curve[k - 1] == pytest.approx(objective(mean, labels))


def test_greedy_weights_count_the_picks():
    np.testing.assert_allclose(ensemble.weights_from_picks([0, 2, 0], 3), [2 / 3, 0, 1 / 3])


def test_greedy_leaves_out_a_member_that_only_adds_noise():
    rng = np.random.default_rng(3)
    probs, labels = members_with_known_quality(rng, n=2_000)
    noise = rng.dirichlet(np.ones(4), size=2_000)[None]  # knows nothing about the labels
    picks, _ = ensemble.greedy_selection(np.concatenate([probs, noise]), labels)
    assert 3 not in picks


def test_rules_choose_on_validation_only():
    # The same validation data with two very different test sets: whatever the test
    # images say, the chosen ensemble is the same; only its test predictions differ.
    rng = np.random.default_rng(4)
    val_logits = 3 * rng.standard_normal((3, 500, 10))
    val_labels = val_logits[1].argmax(axis=1)  # member 1 is perfect on validation
    val_labels[:100] = rng.integers(0, 10, 100)
    test_a = 3 * rng.standard_normal((3, 200, 10))
    test_b = -test_a  # member 1's test answers become its worst guesses
    for rule in (
        ensemble.best_member,
        ensemble.temperature_scaled,
        ensemble.greedy(ensemble.nll),
        ensemble.greedy(ensemble.error_rate),
    ):
        chosen_a, probs_a = ensemble.choose_and_test(rule, val_logits, val_labels, test_a)
        chosen_b, probs_b = ensemble.choose_and_test(rule, val_logits, val_labels, test_b)
        np.testing.assert_array_equal(chosen_a.weights, chosen_b.weights)
        np.testing.assert_array_equal(chosen_a.temperatures, chosen_b.temperatures)
        assert probs_a["test"].shape == (200, 10)
        assert not np.allclose(probs_a["test"], probs_b["test"])
    assert ensemble.best_member(val_logits, val_labels).weights.tolist() == [0, 1, 0]


def test_cross_validation_of_a_rule_without_choices_is_the_mean_of_its_fold_scores():
    # An equal average chooses nothing, so its held-out score on each fold is simply the
    # equal average's NLL on that fold, computed here by a plain loop. 53 images make the
    # folds unequal (11, 11, 11, 10, 10), so scoring all images at once would not match.
    rng = np.random.default_rng(5)
    logits, labels = rng.standard_normal((3, 53, 4)), rng.integers(0, 4, 53)
    order = np.random.default_rng(0).permutation(53)
    by_hand = [
        -np.mean([np.log(np.mean([hand_softmax(m[i]) for m in logits], axis=0)[labels[i]])
                  for i in fold])
        for fold in np.array_split(order, 5)
    ]  # fmt: skip
    got = ensemble.cross_validated(ensemble.equal_probabilities, logits, labels)
    assert got == pytest.approx(np.mean(by_hand), rel=1e-12)


def test_cross_validation_never_lets_a_rule_see_the_images_it_is_scored_on():
    seen = []

    def recording_rule(logits, labels):
        seen.append(set(labels.tolist()))
        return ensemble.equal_probabilities(logits, labels)

    labels = np.arange(40)  # every image its own label: what a rule saw is readable
    ensemble.cross_validated(recording_rule, np.zeros((2, 40, 40)), labels, folds=4)
    assert len(seen) == 4 and all(len(s) == 30 for s in seen)
    assert set.union(*seen) == set(range(40))
    assert set.intersection(*seen) == set()  # 4 folds: each image held out exactly once


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_flatters_itself_on_the_images_it_chose_on(seed):
    # Members that know nothing about the labels: on the images it chose on, greedy finds
    # a weighting that beats chance (NLL ln 4 for 4 classes); held out, it does worse.
    rng = np.random.default_rng(seed)
    logits, labels = 2 * rng.standard_normal((6, 200, 4)), rng.integers(0, 4, 200)
    rule = ensemble.greedy(ensemble.nll)
    in_sample = ensemble.nll(rule(logits, labels).predict(logits), labels)
    held_out = ensemble.cross_validated(rule, logits, labels)
    assert in_sample < np.log(4) and in_sample < held_out


def test_sign_test_by_hand_and_against_scipy():
    assert ensemble.sign_test(0, 5) == pytest.approx(2 / 32)  # 5 heads of 5, both tails
    assert ensemble.sign_test(1, 1) == 1.0
    assert ensemble.sign_test(0, 0) == 1.0
    scipy_stats = pytest.importorskip("scipy.stats")
    for fixed, broken in [(13, 5), (3, 2), (30, 12)]:
        expected = scipy_stats.binomtest(fixed, fixed + broken, 0.5).pvalue
        assert ensemble.sign_test(fixed, broken) == pytest.approx(expected)
