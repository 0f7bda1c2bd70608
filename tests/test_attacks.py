"""FGSM and PGD: both input gradients agree, budgets hold, losses rise, batches decompose."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn import attacks, models, robustness
from scratchcnn.attacks import AttackError, fgsm, loss_and_gradient, pgd
from scratchcnn.gradcheck import relative_error
from scratchcnn.parity import randomized, untie


@pytest.fixture(scope="module")
def network(mnist_test):
    """bn_cnn with random weights and non-trivial BatchNorm statistics, and 8 real digits
    (untied: ``parity.untie`` says why)."""
    model = models.build("bn_cnn")
    params, state = model.init(0)
    state = randomized(state, np.random.default_rng(1))
    images, labels = mnist_test
    x = untie((images[:8] / np.float32(255))[..., None])
    return model, params, state, x, labels[:8].astype(np.int64)


@pytest.mark.lesson09
def test_jax_grad_equals_our_backward_pass(network):
    model, params, state, x, y = network
    loss_j, grad_j = loss_and_gradient(model, params, state, x, y, grad="jax")
    loss_m, grad_m = loss_and_gradient(model, params, state, x, y, grad="manual")
    assert relative_error(loss_j, loss_m) < 1e-5
    assert relative_error(grad_j, grad_m) < 1e-4
    assert grad_m.shape == x.shape


@pytest.mark.lesson09
def test_gradient_is_of_each_example_alone(network):
    """Summed, not averaged: one example's gradient is the same inside any batch."""
    model, params, state, x, y = network
    _, whole = loss_and_gradient(model, params, state, x, y, grad="manual")
    _, single = loss_and_gradient(model, params, state, x[2:3], y[2:3], grad="manual")
    assert relative_error(whole[2:3], single) < 1e-5


@pytest.mark.lesson09
@pytest.mark.parametrize("grad", ["jax", "manual"])
def test_fgsm_moves_every_pixel_by_eps_within_the_image_range(network, grad):
    model, params, state, x, y = network
    adv = fgsm(model, params, state, x, y, 0.1, grad=grad)
    assert adv.dtype == x.dtype and adv.min() >= 0 and adv.max() <= 1
    assert np.abs(adv - x).max() <= 0.1 + 1e-6
    loss_before, _ = loss_and_gradient(model, params, state, x, y)
    loss_after, _ = loss_and_gradient(model, params, state, adv, y)
    assert loss_after.sum() > loss_before.sum()


@pytest.mark.lesson09
def test_fgsm_both_gradients_give_the_same_images(network):
    model, params, state, x, y = network
    a = fgsm(model, params, state, x, y, 0.2, grad="jax")
    b = fgsm(model, params, state, x, y, 0.2, grad="manual")
    assert np.mean(a != b) < 1e-3  # a sign may flip where the gradient is ~0


@pytest.mark.lesson09
def test_fgsm_without_labels_attacks_the_prediction(network):
    model, params, state, x, _ = network
    predicted = attacks.predict(model, params, state, x)
    np.testing.assert_array_equal(
        fgsm(model, params, state, x, None, 0.1), fgsm(model, params, state, x, predicted, 0.1)
    )


@pytest.mark.lesson10
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_respects_the_budget_and_raises_the_loss(network, norm):
    model, params, state, x, y = network
    eps = 0.3 if norm == "linf" else 2.0
    adv = pgd(model, params, state, x, y, eps, steps=5, step_size=eps / 4, norm=norm,
              restarts=2, rng=0)  # fmt: skip
    delta = (adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1
    loss_before, _ = loss_and_gradient(model, params, state, x, y)
    loss_after, _ = loss_and_gradient(model, params, state, adv, y)
    assert loss_after.mean() > loss_before.mean()


@pytest.mark.lesson09
@pytest.mark.lesson10
def test_one_pgd_step_without_random_start_is_fgsm(network):
    model, params, state, x, y = network
    one = pgd(model, params, state, x, y, 0.1, steps=1, step_size=0.1, random_start=False)
    np.testing.assert_array_equal(one, fgsm(model, params, state, x, y, 0.1))


@pytest.mark.lesson10
def test_pgd_batch_equals_examples_one_by_one(network):
    model, params, state, x, y = network
    kw = {"steps": 3, "step_size": 0.05, "random_start": False, "grad": "manual"}
    batch = pgd(model, params, state, x[:3], y[:3], 0.2, **kw)
    for i in range(3):
        alone = pgd(model, params, state, x[i : i + 1], y[i : i + 1], 0.2, **kw)
        np.testing.assert_allclose(batch[i : i + 1], alone, atol=1e-6)


@pytest.mark.lesson10
def test_attacking_no_images_gives_no_images(network):
    model, params, state, x, y = network
    for attack in robustness.ATTACKS:
        config = robustness.AttackConfig(attack, steps=2)
        none = robustness.adversarial_examples(model, params, state, x[:0], y[:0], 0.1, config)
        assert none.shape == (0, *x.shape[1:])


@pytest.mark.lesson10
def test_targeted_pgd_lowers_the_target_loss(network):
    model, params, state, x, _ = network
    target = np.full(len(x), 3)
    before, _ = loss_and_gradient(model, params, state, x, target)
    adv = pgd(model, params, state, x, target, 0.3, steps=5, step_size=0.1, targeted=True)
    after, _ = loss_and_gradient(model, params, state, adv, target)
    assert after.mean() < before.mean()


@pytest.mark.lesson10
@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"eps": 1.5}, "eps"), ({"norm": "l1"}, "norm"), ({"steps": 0}, "steps"),
     ({"grad": "torch"}, "grad")],
)  # fmt: skip
def test_bad_attack_parameters(network, kwargs, phrase):
    model, params, state, x, y = network
    with pytest.raises(AttackError, match=phrase):
        pgd(model, params, state, x, y, **{"eps": 0.1, "steps": 1, **kwargs})


# --------------------------------------------------------------------------- training


@pytest.mark.lesson11
def test_training_attack_is_the_same_on_numpy_and_under_jit(network, monkeypatch):
    """With the random start fixed, the NumPy and jitted attacks give the same batch."""
    import jax

    monkeypatch.setattr(
        attacks, "uniform_noise", lambda rng, shape, eps, dtype: np.zeros(shape, dtype)
    )
    model, params, state, x, y = network
    config = attacks.AdversarialTraining("pgd", eps=0.3, steps=3)
    ours = attacks.attack_batch(model, params, state, x, y, None, config)
    jitted = jax.jit(lambda xx: attacks.attack_batch(model, params, state, xx, y, None, config))
    assert np.mean(np.asarray(jitted(x)) != ours) < 1e-3  # a sign may flip at ~0 gradient
    assert np.abs(ours - x).max() <= 0.3 + 1e-6 and ours.min() >= 0 and ours.max() <= 1


@pytest.mark.lesson11
def test_mixed_training_batch_is_clean_plus_adversarial(network):
    model, params, state, x, y = network
    config = attacks.AdversarialTraining("mixed", eps=0.1)
    xb, yb = attacks.training_batch(model, params, state, x, y, np.random.default_rng(0), config)
    assert len(xb) == 2 * len(x)
    np.testing.assert_array_equal(xb[: len(x)], x)
    np.testing.assert_array_equal(yb, np.concatenate([y, y]))


@pytest.mark.lesson11
@pytest.mark.parametrize("backend", ["numpy", "jax"])
@pytest.mark.parametrize("method", ["fgsm", "pgd", "mixed"])
def test_adversarial_training_runs_on_both_backends(mnist_dir, backend, method):
    from scratchcnn.train import TrainConfig, train

    config = TrainConfig(model="lenet", epochs=1, train_limit=256, val_fraction=0.01,
                         test_limit=100, adversarial=method, adversarial_steps=2,
                         backend=backend)  # fmt: skip
    result = train(config, data_dir=mnist_dir, progress=False, log=lambda s: None)
    assert np.isfinite(result.history[0]["train_loss"])
    assert 0 <= result.history[0]["train_accuracy"] <= 1
