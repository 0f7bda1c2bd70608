"""APGD: the checkpoint schedule, the step-size rule, budget, range, a best loss that only
rises, early stopping, a targeted run that aims, and strength."""

from __future__ import annotations

import numpy as np
import pytest
from attack_checks import sizes

from scratchcnn import apgd as apgd_module
from scratchcnn import attacks
from scratchcnn.apgd import apgd, apgd_targeted, checkpoint_fractions, checkpoints, should_halve
from scratchcnn.attacks import AttackError, predict
from scratchcnn.inference import predict_logits

pytestmark = pytest.mark.lesson10

BATCH = 32  # one batch size for the invariant tests: jax.jit compiles once per shape


def stacked(history, key):
    """(iterations + 1, N): one row per history entry."""
    return np.array([entry[key] for entry in history])


# --------------------------------------------------------------------------- the schedule


def test_checkpoints_are_the_published_ones_for_100_steps():
    """p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (the gaps shrink by 0.03
    down to 0.06); AutoAttack's code checks after 22, 19, 16, 13, 10, 7, 6, 6 steps."""
    assert [float(p) for p in checkpoint_fractions()] == [
        0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99
    ]  # fmt: skip
    assert checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]
    assert checkpoints(1000)[1:3] == [220, 410]


def test_checkpoints_for_few_steps_are_distinct_and_in_range():
    for steps in (1, 5, 10, 37):
        marks = checkpoints(steps)
        assert marks == sorted(set(marks)) and marks[0] == 0 and marks[-1] <= steps


# --------------------------------------------------------------------------- the step-size rule


def climbs(losses):
    """(len - 1, 1) bool: whether each step raised the loss of this synthetic sequence."""
    losses = np.asarray(losses, dtype=float)
    return (losses[1:] > losses[:-1])[:, None]


def test_condition_1_halves_when_fewer_than_three_quarters_of_the_steps_climbed():
    """22 steps: 16 climbs < 0.75 * 22 = 16.5 halves, 17 climbs do not."""
    for n_up, expected in ((16, True), (17, False), (22, False), (0, True)):
        climbed = np.array([True] * n_up + [False] * (22 - n_up))[:, None]
        best_now, best_before = np.array([5.0]), np.array([1.0])  # f_max rose: no cond. 2
        assert should_halve(climbed, best_now, best_before, np.array([False]))[0] == expected


def test_condition_1_on_loss_sequences():
    rising = np.arange(23.0)  # every step climbs
    zigzag = np.tile([0.0, 1.0], 12)[:23]  # half the steps climb: the step overshoots
    assert not should_halve(climbs(rising), [22.0], [0.0], [False])[0]
    assert should_halve(climbs(zigzag), [1.0], [0.0], [False])[0]


def test_condition_2_halves_a_stalled_best_loss_unless_just_halved():
    climbed = np.ones((10, 3), bool)  # condition 1 never holds here
    best_now = np.array([2.0, 2.0, 2.5])
    best_before = np.array([2.0, 2.0, 2.0])
    halved_before = np.array([False, True, False])
    # stalled and eta unchanged: halve; stalled but eta just halved: wait; improved: keep.
    np.testing.assert_array_equal(
        should_halve(climbed, best_now, best_before, halved_before), [True, False, False]
    )


def test_step_size_only_halves_and_only_at_checkpoints(default_network, first_digits):
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    history = []
    apgd(*default_network, x, y, 0.05, steps=25, history=history)
    eta = stacked(history, "step_size")  # row k: after iteration k
    assert np.all(eta[0] == 0.1)
    changed = np.flatnonzero((eta[1:] != eta[:-1]).any(axis=1)) + 1
    assert set(changed) <= set(checkpoints(25)[1:])
    ratio = eta[1:] / eta[:-1]
    assert np.all((ratio == 1) | (ratio == 0.5))
    assert (eta[-1] < 0.1).any()  # the rule did fire on some example


# --------------------------------------------------------------------------- invariants


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("linf", 0.05), ("l2", 2.0)])
def test_budget_and_range(default_network, first_digits, norm, eps):
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    adv = apgd(*default_network, x, y, eps, norm=norm, steps=10)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert sizes(adv, x, norm).max() <= eps + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_best_loss_never_decreases(default_network, first_digits):
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    history = []
    apgd(*default_network, x, y, 0.1, steps=25, history=history)
    best = stacked(history, "best_loss")
    assert len(best) > 2
    assert np.all(np.diff(best, axis=0) >= 0)
    assert np.all(best >= stacked(history, "loss") - 1e-6)  # the best is the best seen


def test_an_example_already_wrong_is_left_alone(default_network, first_digits):
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH].copy()
    y[:5] = (y[:5] + 1) % 10  # the network's answers are now wrong for these five
    adv = apgd(*default_network, x, y, 0.3, steps=5)
    np.testing.assert_array_equal(adv[:5], x[:5])


def test_a_fooled_example_stops_where_it_was_fooled(default_network, first_digits, monkeypatch):
    """Early stop: the returned image of a fooled example is misclassified, and from the
    iteration it is done every point the attack evaluates for it is that same image."""
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    evaluated = []  # the images (N, H, W, 1) of every loss-and-gradient call, in order

    def spy(model, params, state, points, *args):
        evaluated.append(np.array(points))
        return attacks.loss_gradient_and_prediction(model, params, state, points, *args)

    monkeypatch.setattr(apgd_module, "loss_gradient_and_prediction", spy)
    history = []
    adv = apgd(*default_network, x, y, 0.1, steps=15, history=history)
    done = stacked(history, "done")  # entry k: after call k (call 0 is the start)
    assert len(evaluated) == len(done)
    fooled = done[-1]
    assert 0 < fooled.sum() < BATCH  # some fooled, some not: both cases are tested
    assert np.all(predict(*default_network, adv[fooled]) != y[fooled])
    for i in np.flatnonzero(fooled):
        for points in evaluated[done[:, i].argmax() :]:
            np.testing.assert_array_equal(points[i], adv[i])


def test_same_rng_same_images(default_network, first_digits):
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    a = apgd(*default_network, x, y, 0.1, steps=3, rng=7)
    np.testing.assert_array_equal(a, apgd(*default_network, x, y, 0.1, steps=3, rng=7))


def test_targeted_run_moves_z_t_above_z_y_more_than_the_untargeted(default_network, first_digits):
    """Towards the runner-up class t of each clean image, APGD-T (one target) raises
    z_t - z_y more than APGD-CE does, on average."""
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    t = np.argsort(-predict_logits(*default_network, x[..., 0]), axis=1)[:, 1]

    def gap(images):
        z = predict_logits(*default_network, images[..., 0])
        rows = np.arange(len(z))
        return z[rows, t] - z[rows, y]

    targeted = apgd_targeted(*default_network, x, y, 0.1, targets=1, steps=15)
    untargeted = apgd(*default_network, x, y, 0.1, steps=15)
    assert gap(targeted).mean() > gap(untargeted).mean() > gap(x).mean()


def test_apgd_targeted_tries_the_next_target_on_the_survivors(default_network, first_digits):
    """More targets can only fool more examples (each run starts from the survivors)."""
    x, y = first_digits[0][:BATCH], first_digits[1][:BATCH]
    history_1, history_3 = [], []
    one = apgd_targeted(*default_network, x, y, 0.05, targets=1, steps=5, history=history_1)
    three = apgd_targeted(*default_network, x, y, 0.05, targets=3, steps=5, history=history_3)
    assert (predict(*default_network, three) == y).sum() <= (
        predict(*default_network, one) == y
    ).sum()
    assert len(history_3) > len(history_1)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [
        ({"eps": 1.5}, "eps must be in [0, 1]"),
        ({"steps": 0}, "steps >= 1"),
        ({"norm": "l1"}, "norm must be"),
        ({"loss": "hinge"}, "loss must be one of"),
        ({"loss": "dlr_targeted"}, "needs target="),
    ],
)
def test_bad_parameters(default_network, first_digits, kwargs, phrase):
    x, y = first_digits[0][:4], first_digits[1][:4]
    with pytest.raises(AttackError, match=phrase.replace("[", r"\[")):
        apgd(*default_network, x, y, **{"eps": 0.1, **kwargs})


@pytest.mark.parametrize("attack", [apgd, apgd_targeted])
def test_no_images_gives_no_images(default_network, attack):
    x = np.zeros((0, 28, 28, 1), np.float32)
    assert attack(*default_network, x, np.zeros(0, np.int64), 0.1, steps=3).shape == x.shape


@pytest.mark.parametrize("attack", [apgd, apgd_targeted])
@pytest.mark.parametrize("y", [np.zeros(3, np.int64), np.zeros(4, np.float32)])
def test_labels_one_integer_per_image(default_network, first_digits, attack, y):
    with pytest.raises(AttackError, match="one integer label per image"):
        attack(*default_network, first_digits[0][:4], y, 0.1, steps=3)


@pytest.mark.parametrize("targets", [0, 10, 2.5])
def test_bad_number_of_targets(default_network, first_digits, targets):
    x, y = first_digits[0][:4], first_digits[1][:4]
    with pytest.raises(AttackError, match="targets must be an integer from 1 to 9"):
        apgd_targeted(*default_network, x, y, 0.1, targets=targets)


# --------------------------------------------------------------------------- strength


def test_apgd_ce_breaks_the_undefended_network_at_eps_03(default_network, first_digits):
    """100 real test digits, eps 0.3, 100 steps: at most 1% survive (we measured 0%)."""
    x, y = first_digits
    adv = apgd(*default_network, x, y, 0.3, steps=100)
    assert (predict(*default_network, adv) == y).mean() <= 0.01


@pytest.mark.slow
def test_apgd_t_breaks_the_undefended_network_at_eps_03(default_network, first_digits):
    x, y = first_digits
    adv = apgd_targeted(*default_network, x, y, 0.3, steps=100)
    assert (predict(*default_network, adv) == y).mean() <= 0.01
    assert sizes(adv, x, "linf").max() <= 0.3 + 1e-6


@pytest.mark.slow
def test_apgd_ce_not_weaker_than_pgd_40_at_eps_01(default_network, first_digits):
    """Where the network is partly robust: APGD-CE (100 steps, no step size to tune)
    against PGD-40 with Madry et al.'s step 0.01."""
    x, y = first_digits
    robust_apgd = (
        predict(*default_network, apgd(*default_network, x, y, 0.1, steps=100)) == y
    ).mean()
    pgd = attacks.pgd(*default_network, x, y, 0.1, steps=40, step_size=0.01, rng=0)
    assert robust_apgd <= (predict(*default_network, pgd) == y).mean()
