"""The Square attack: budget, range, a best loss that only falls, queries only, and strength."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from attack_checks import sizes

from scratchcnn import attacks, square
from scratchcnn.attacks import AttackError, predict
from scratchcnn.inference import predict_logits
from scratchcnn.square import margin_and_loss, p_selection, square_attack, square_side

pytestmark = pytest.mark.lesson10


# --------------------------------------------------------------------------- schedule


def test_p_schedule_halves_at_the_published_iterations():
    """The reference's p_selection, for 10,000 queries: p_init up to iteration 10, then
    halved after 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000."""
    expected = {0: 1, 10: 1, 11: 2, 50: 2, 51: 4, 200: 4, 201: 8, 500: 8, 501: 16,
                1000: 16, 1001: 32, 2000: 32, 2001: 64, 4000: 64, 4001: 128,
                6000: 128, 6001: 256, 8000: 256, 8001: 512, 9999: 512}  # fmt: skip
    for i, divisor in expected.items():
        assert p_selection(0.8, i, 10_000) == 0.8 / divisor, i


def test_p_schedule_is_rescaled_to_the_budget():
    """1,000 queries run the same schedule ten times faster (the reference's rescaling)."""
    assert p_selection(0.8, 1, 1000) == 0.8  # iteration 10 of 10,000
    assert p_selection(0.8, 2, 1000) == 0.4  # iteration 20
    assert p_selection(0.8, 801, 1000) == 0.8 / 512
    assert p_selection(0.8, 5, 5000) == 0.8 and p_selection(0.8, 6, 5000) == 0.4


def test_square_side_on_mnist():
    assert square_side(0.8, 28, 28) == 25  # round(sqrt(0.8 * 784)) = round(25.04)
    assert square_side(0.8 / 512, 28, 28) == 1
    assert square_side(1.0, 28, 28) == 28


# --------------------------------------------------------------------------- invariants


def test_stripes_start_sits_on_the_corners_of_the_box(default_network, first_digits):
    """One query: the vertical stripes, every pixel moved by exactly +-eps (or clipped),
    one sign per column."""
    x, y = first_digits[0][:8], first_digits[1][:8]
    adv, used = square_attack(*default_network, x, y, 0.3, queries=1, rng=0)
    delta = adv.astype(np.float64) - x
    clipped = (adv == 0) | (adv == 1)
    assert np.all(clipped | np.isclose(np.abs(delta), 0.3, atol=1e-6))
    column_signs = np.sign(np.where(clipped, 0, delta))  # (N, H, W, 1)
    assert (column_signs.max(axis=1) * column_signs.min(axis=1) >= 0).all()  # no column mixes
    np.testing.assert_array_equal(used, 1)


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.3), ("l2", 2.0)])
def test_budget_range_and_dtype(default_network, first_digits, norm, eps):
    x, y = first_digits[0][:8], first_digits[1][:8]
    adv, used = square_attack(*default_network, x, y, eps, norm=norm, queries=30, rng=0)
    assert adv.shape == x.shape and adv.dtype == np.float32
    assert adv.min() >= 0 and adv.max() <= 1
    assert (sizes(adv, x, norm) <= eps + 1e-5).all()
    assert ((used >= 1) & (used <= 30)).all()


def test_linf_pixels_stay_on_the_corners(default_network, first_digits):
    """Every change the L-inf attack makes is to x +- eps: the pixels stay at corners."""
    x, y = first_digits[0][:8], first_digits[1][:8]
    adv, _ = square_attack(*default_network, x, y, 0.1, queries=40, rng=0)
    delta = adv.astype(np.float64) - x
    assert np.all((adv == 0) | (adv == 1) | np.isclose(np.abs(delta), 0.1, atol=1e-6))


def test_every_linf_candidate_is_a_new_image(first_digits):
    """A window that is at its sign already gets the other one: no query is wasted on an
    image the network has seen (the reference redraws the sign until it changes)."""
    x = first_digits[0][:50]
    rng = np.random.default_rng(0)
    x_best = square._stripes(x, 0.3, rng)
    for s in (1, 2, 25):
        candidates = square._linf_candidates(x, x_best, 0.3, s, rng)
        assert (candidates != x_best).any(axis=(1, 2, 3)).all()


@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.1), ("l2", 1.0)])
def test_best_loss_never_rises_and_matches_the_images(default_network, first_digits, norm, eps):
    """The best loss only falls, query after query; the last one is the returned images'."""
    x, y = first_digits[0][:6], first_digits[1][:6]
    history = []
    adv, used = square_attack(*default_network, x, y, eps, norm=norm, queries=25, history=history)
    losses = np.array(history)  # (queries run, N)
    assert len(losses) == used.max() and (np.diff(losses, axis=0) <= 0).all()
    assert (losses[-1] < losses[0]).any()  # and the search did find something
    _, final = margin_and_loss(predict_logits(*default_network, adv[..., 0]), y, targeted=False)
    np.testing.assert_allclose(final, losses[-1], atol=1e-4)


def test_never_asks_for_a_gradient(default_network, first_digits, monkeypatch):
    """Queries only: every gradient this library can compute raises here, and each query
    of an example is counted once."""

    def forbidden(*args, **kwargs):
        raise AssertionError("the Square attack asked for a gradient")

    model = default_network[0]
    gradients = ["loss_and_gradient", "loss_gradient_and_prediction", "loss_and_gradient_manual"]
    for module, name in [*((attacks, name) for name in gradients),
                         (jax, "grad"), (jax, "value_and_grad"), (jax, "vjp"),
                         (type(model), "backward")]:  # fmt: skip
        monkeypatch.setattr(module, name, forbidden)
    seen = []

    def counting(model, params, state, images):
        seen.append(len(images))
        return attacks.attack_logits(model, params, state, images)

    monkeypatch.setattr(square, "attack_logits", counting)
    x, y = first_digits[0][:4], first_digits[1][:4]
    for norm, eps in [("linf", 0.1), ("l2", 1.0)]:
        seen.clear()
        _, used = square_attack(*default_network, x, y, eps, norm=norm, queries=10)
        assert sum(seen) == len(x) + used.sum()  # the clean look, then the counted queries


def test_same_rng_same_images(default_network, first_digits):
    x, y = first_digits[0][:4], first_digits[1][:4]
    a, used_a = square_attack(*default_network, x, y, 0.1, queries=15, rng=3)
    b, used_b = square_attack(*default_network, x, y, 0.1, queries=15, rng=3)
    c, _ = square_attack(*default_network, x, y, 0.1, queries=15, rng=4)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(used_a, used_b)
    assert not np.array_equal(a, c)


def test_an_example_already_wrong_is_left_alone(default_network, first_digits):
    x, y = first_digits[0][:4], first_digits[1][:4].copy()
    y[[1, 3]] = (predict(*default_network, x[[1, 3]]) + 1) % 10  # labels the network gets "wrong"
    adv, used = square_attack(*default_network, x, y, 0.3, queries=20)
    np.testing.assert_array_equal(adv[[1, 3]], x[[1, 3]])
    np.testing.assert_array_equal(used[[1, 3]], 0)
    assert (used[[0, 2]] >= 1).all() and not np.array_equal(adv[[0, 2]], x[[0, 2]])


def test_targeted_attack_moves_towards_its_target(default_network, first_digits):
    x, y = first_digits[0][:8], first_digits[1][:8]
    targets = (y + 1) % 10
    adv, _ = square_attack(*default_network, x, targets, 0.3, queries=200, targeted=True, rng=0)
    _, before = margin_and_loss(predict_logits(*default_network, x[..., 0]), targets, targeted=True)
    _, after = margin_and_loss(
        predict_logits(*default_network, adv[..., 0]), targets, targeted=True
    )
    assert (after < before).all()
    assert np.mean(predict(*default_network, adv) == targets) >= 0.5


def test_no_images_gives_no_images(default_network, first_digits):
    adv, used = square_attack(
        *default_network, first_digits[0][:0], first_digits[1][:0], 0.3, queries=5
    )
    assert adv.shape == (0, 28, 28, 1) and used.shape == (0,)


@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"eps": 1.5}, "eps"), ({"eps": float("nan")}, "eps"), ({"norm": "l1"}, "norm"),
     ({"queries": 0}, "query budget"), ({"queries": 2.5}, "query budget"),
     ({"p_init": 0.0}, "p_init"), ({"targeted": True, "y": None}, "targets"),
     ({"y": np.array([3])}, "one class"), ({"y": np.array([3, 10])}, "one class")],
)  # fmt: skip
def test_bad_parameters(default_network, first_digits, kwargs, phrase):
    x, y = first_digits[0][:2], first_digits[1][:2]
    with pytest.raises(AttackError, match=phrase):
        square_attack(*default_network, x, **{"y": y, "eps": 0.3, "queries": 3, **kwargs})


# --------------------------------------------------------------------------- strength


def test_undefended_network_falls_to_zero_at_eps_03(default_network, first_digits):
    """The default network, 100 real test digits, eps 0.3, 1,000 queries: every digit is
    fooled (measured: mean 28 queries, the hardest 261)."""
    x, y = first_digits
    assert np.mean(predict(*default_network, x) == y) == 1.0
    adv, used = square_attack(*default_network, x, y, 0.3, queries=1000, rng=0)
    assert np.mean(predict(*default_network, adv) == y) == 0.0
    assert (sizes(adv, x, "linf") <= 0.3 + 1e-6).all() and used.max() < 1000


def test_l2_attack_fools_most_digits(default_network, first_digits):
    """L2 at eps 3, 40 digits, 200 queries: measured 27.5% left (mean 63 queries)."""
    x, y = first_digits[0][:40], first_digits[1][:40]
    adv, _ = square_attack(*default_network, x, y, 3.0, norm="l2", queries=200, rng=0)
    assert np.mean(predict(*default_network, adv) == y) <= 0.4
