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


# Every method on NumPy; under jax.jit PGD and mixed (clean + FGSM), which hold FGSM's
# pieces (each compiled adversarial step costs about 25 CPU-seconds).
@pytest.mark.lesson11
@pytest.mark.parametrize(
    "method, backend",
    [("fgsm", "numpy"), ("pgd", "numpy"), ("mixed", "numpy"), ("pgd", "jax"), ("mixed", "jax")],
)
def test_adversarial_training_runs_on_both_backends(mnist_dir, backend, method):
    from scratchcnn.train import TrainConfig, train

    config = TrainConfig(model="lenet", epochs=1, train_limit=256, val_fraction=0.01,
                         test_limit=100, adversarial=method, adversarial_steps=2,
                         backend=backend)  # fmt: skip
    result = train(config, data_dir=mnist_dir, progress=False, log=lambda s: None)
    assert np.isfinite(result.history[0]["train_loss"])
    assert 0 <= result.history[0]["train_accuracy"] <= 1


# --------------------------------------------------------------------------- losses


def _random_logits(seed: int, n: int = 6, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """float64 logits (n, k) with distinct values (no ties in any max or sort) and labels."""
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (n, k)), rng.integers(0, k, n)


def _target_for(labels, k: int = 10) -> np.ndarray:
    return (labels + 3) % k


@pytest.mark.lesson09
@pytest.mark.parametrize("loss", attacks.LOSSES)
def test_hand_written_logit_gradient_matches_finite_differences(loss):
    loss_of, gradient_of = attacks.LOSS_FUNCTIONS[loss]
    logits, labels = _random_logits(0)
    target = _target_for(labels)
    numeric, h = np.zeros_like(logits), 1e-6
    for k in range(logits.shape[1]):  # central differences, one class at a time
        step = np.zeros_like(logits)
        step[:, k] = h
        up, down = loss_of(logits + step, labels, target), loss_of(logits - step, labels, target)
        numeric[:, k] = (up - down) / (2 * h)
    ours = gradient_of(logits, labels, target)
    assert ours.shape == logits.shape and ours.dtype == logits.dtype
    np.testing.assert_allclose(ours, numeric, atol=1e-8)  # h^2 error and 1e-16/h rounding


@pytest.mark.lesson09
@pytest.mark.parametrize("loss", attacks.LOSSES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_hand_written_logit_gradient_equals_jax_grad_also_under_jit(loss, dtype):
    import jax
    import jax.numpy as jnp

    loss_of, gradient_of = attacks.LOSS_FUNCTIONS[loss]
    logits, labels = _random_logits(1, n=32)
    target = _target_for(labels)
    z, y, t = jnp.asarray(logits.astype(dtype)), jnp.asarray(labels), jnp.asarray(target)
    by_jax = jax.grad(lambda zz: loss_of(zz, y, t).sum())(z)
    jitted = jax.jit(gradient_of)(z, y, t)  # the hand-written one compiles, as training needs
    on_numpy = gradient_of(logits.astype(dtype), labels, target)
    tolerance = 1e-12 if dtype == np.float64 else 1e-6  # a few roundings of O(1) numbers
    assert on_numpy.dtype == dtype
    np.testing.assert_allclose(np.asarray(jitted), by_jax, atol=tolerance)
    np.testing.assert_allclose(on_numpy, by_jax, atol=tolerance)


def _naive_cross_entropy_gradient(logits, labels, target=None):
    """The old formula: softmax - one_hot, the label's entry as expm1(log p_y)."""
    log_p = np.asarray(attacks.log_softmax(logits))
    one_hot = labels[:, None] == np.arange(logits.shape[1])[None, :]
    return np.where(one_hot, np.expm1(log_p), np.exp(log_p))


@pytest.mark.lesson09
def test_cross_entropy_gradient_keeps_its_digits_where_the_network_is_sure():
    """Logits of a sure network (the label 8 to 25 above the rest): the label's entry
    p_y - 1 is 1e-11 to 1e-3, and float32 must still get it to its last few bits."""
    import jax
    import jax.numpy as jnp

    logits, labels = _random_logits(2, n=500)
    logits[np.arange(500), labels] += np.random.default_rng(3).uniform(8, 25, 500)
    z32 = logits.astype(np.float32)
    reference = attacks.cross_entropy_gradient(z32.astype(np.float64), labels)

    def worst_row(g):
        return max(relative_error(a, b) for a, b in zip(g, reference))

    assert worst_row(attacks.cross_entropy_gradient(z32, labels)) < 1e-5
    assert worst_row(_naive_cross_entropy_gradient(z32, labels)) > 0.5  # the cancellation
    by_jax = jax.grad(lambda z: attacks.per_example_loss(z, jnp.asarray(labels)).sum())
    assert worst_row(np.asarray(by_jax(jnp.asarray(z32)))) < 1e-5  # no cancellation either
    by_jax_nn = jax.grad(  # JAX's own log_softmax stops the gradient at its max: it cancels
        lambda z: -jnp.take_along_axis(jax.nn.log_softmax(z), labels[:, None], axis=1).sum()
    )
    assert worst_row(np.asarray(by_jax_nn(jnp.asarray(z32)))) > 0.5


@pytest.fixture(scope="module")
def default_network():
    """The shipped undefended default network (confident: most losses below 1e-4)."""
    from scratchcnn import pretrained

    return pretrained.load("default")


def _float64(tree):
    if isinstance(tree, dict):
        return {key: _float64(value) for key, value in tree.items()}
    return np.asarray(tree, dtype=np.float64)


@pytest.mark.lesson09
def test_exact_input_gradient_of_a_sure_network(default_network, mnist_test, monkeypatch):
    """On 100 untied test digits (no max-pool ties: parity.untie), both float32 paths are
    within 1e-3 of float64 on every image; the old label entry is not on many."""
    model, params, state = default_network
    images, labels = mnist_test
    x, y = untie((images[:100] / np.float32(255))[..., None]), labels[:100].astype(np.int64)
    _, reference = loss_and_gradient(
        model, _float64(params), _float64(state), x.astype(np.float64), y, grad="manual"
    )

    def images_off(grad):
        _, g = loss_and_gradient(model, params, state, x, y, grad=grad)
        return sum(relative_error(a, b) > 1e-3 for a, b in zip(g, reference))

    assert images_off("manual") == 0
    assert images_off("jax") == 0  # jax.grad does not cancel either (attacks says why)
    monkeypatch.setitem(
        attacks.LOSS_FUNCTIONS, "ce", (attacks.per_example_loss, _naive_cross_entropy_gradient)
    )
    assert images_off("manual") > 10  # 30 of these 100 with the old formula


@pytest.fixture(scope="module")
def small_network(network):
    """A conv + BatchNorm + max-pool + dense network small enough to compile in a second
    (each loss and dtype is a new jax.jit compilation), on the untied digits of network."""
    from scratchcnn.layers import BatchNorm, Conv, Dense, Flatten, MaxPool, ReLU, Sequential

    model = Sequential([Conv(4, 3), BatchNorm(), ReLU(), MaxPool(2), Flatten(), Dense(10)])
    params, state = model.init(0)
    return model, params, randomized(state, np.random.default_rng(1)), *network[3:]


@pytest.mark.lesson09
@pytest.mark.parametrize("loss", attacks.LOSSES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_both_input_gradients_agree_for_every_loss(small_network, loss, dtype):
    """float64: equal to rounding (1e-10). float32: the forward and backward passes round
    differently in NumPy and XLA, a few 1e-7 per layer, so 1e-4 as for the cross-entropy."""
    model, params, state, x, y = small_network
    if dtype == np.float64:
        params, state = _float64(params), _float64(state)
    x, target = x.astype(dtype), _target_for(y)
    loss_j, grad_j = loss_and_gradient(model, params, state, x, y, "jax", loss, target)
    loss_m, grad_m = loss_and_gradient(model, params, state, x, y, "manual", loss, target)
    tolerance = 1e-10 if dtype == np.float64 else 1e-4
    assert grad_m.dtype == dtype and grad_m.shape == x.shape
    assert relative_error(loss_j, loss_m) < tolerance
    assert relative_error(grad_j, grad_m) < tolerance


@pytest.mark.lesson09
@pytest.mark.parametrize("loss", ["cw", "dlr"])
def test_fgsm_climbs_the_loss_it_is_given(small_network, loss):
    model, params, state, x, y = small_network
    adv = fgsm(model, params, state, x, y, 0.05, loss=loss)
    before, _ = loss_and_gradient(model, params, state, x, y, loss=loss)
    after, _ = loss_and_gradient(model, params, state, adv, y, loss=loss)
    assert after.sum() > before.sum()


@pytest.mark.lesson10
def test_pgd_on_the_margin_loss_breaks_the_undefended_network(default_network, mnist_test):
    images, labels = mnist_test
    x, y = (images[:100] / np.float32(255))[..., None], labels[:100]
    kw = {"steps": 40, "step_size": 0.01, "loss": "cw", "grad": "manual"}  # manual: no jit
    adv = pgd(*default_network, x, y, 0.3, rng=0, **kw)
    assert np.abs(adv - x).max() <= 0.3 + 1e-6
    assert np.mean(attacks.predict(*default_network, adv) == y) <= 0.01


@pytest.mark.lesson10
def test_targeted_dlr_pgd_moves_towards_the_target(default_network, mnist_test):
    images, labels = mnist_test
    x, y = (images[:20] / np.float32(255))[..., None], labels[:20]
    kw = {"loss": "dlr_targeted", "target": _target_for(y), "grad": "manual"}
    adv = pgd(*default_network, x, y, 0.3, steps=20, step_size=0.03, rng=0, **kw)
    before, _ = loss_and_gradient(*default_network, x, y, **kw)
    after, _ = loss_and_gradient(*default_network, adv, y, **kw)
    assert (before < 0).all() and (after > 0).all()  # z_t below z_y, then above it


@pytest.mark.lesson10
@pytest.mark.parametrize(
    ("kwargs", "phrase"),
    [({"loss": "hinge"}, "loss must be one of"), ({"loss": "dlr_targeted"}, "needs target"),
     ({"loss": "dlr_targeted", "target": np.zeros(3)}, "needs target"),
     ({"loss": "dlr_targeted", "target": np.zeros(8), "targeted": True}, "targeted already")],
)  # fmt: skip
def test_bad_loss_parameters(network, kwargs, phrase):
    model, params, state, x, y = network
    for attack in (fgsm, pgd):
        with pytest.raises(AttackError, match=phrase):
            attack(model, params, state, x, y, 0.1, **kwargs)


def test_jitted_passes_over_chunks_equal_our_numpy_passes(mnist_test):
    """The jitted gradient and forward pass run a CPU batch in chunks of CPU_CHUNK images
    (fast/jit_chunks.py); 300 images (18 whole chunks and a padded one) give what our NumPy
    backward and forward give for the whole batch."""
    from scratchcnn.fast import jit_chunks
    from scratchcnn.inference import predict_logits

    model = models.build("bn_cnn")
    params, state = model.init(0)
    state = randomized(state, np.random.default_rng(1))
    images, labels = mnist_test
    n = 300
    assert n % jit_chunks.chunk_size() and n >= attacks.JIT_FROM
    x, y = untie((images[:n] / np.float32(255))[..., None]), labels[:n].astype(np.int64)
    loss_j, grad_j = loss_and_gradient(model, params, state, x, y, grad="jax")
    loss_m, grad_m = loss_and_gradient(model, params, state, x, y, grad="manual")
    assert relative_error(loss_j, loss_m) < 1e-5
    assert relative_error(grad_j, grad_m) < 1e-4
    logits = attacks.attack_logits(model, params, state, x)
    assert relative_error(logits, predict_logits(model, params, state, x[..., 0])) < 1e-5
    # The classes that come with jax.grad's gradient (APGD's test for success each step).
    *_, predicted = attacks.loss_gradient_and_prediction(model, params, state, x, y, "jax")
    np.testing.assert_array_equal(predicted, logits.argmax(axis=1))


def test_over_chunks_pads_the_last_chunk_and_keeps_tuples():
    import jax.numpy as jnp

    from scratchcnn.fast.jit_chunks import over_chunks

    a, b = jnp.arange(10.0), jnp.arange(20.0).reshape(10, 2)
    twice, total = over_chunks(lambda a, b: (2 * a, b.sum(axis=1)), a, b, chunk=4)
    np.testing.assert_array_equal(twice, 2 * np.arange(10.0))
    np.testing.assert_array_equal(total, np.arange(20.0).reshape(10, 2).sum(axis=1))
    assert over_chunks(lambda a: a + 1, a, chunk=None).shape == (10,)


def test_padded_batch_sizes_waste_little_and_are_few():
    sizes = {n: attacks.padded_size(n) for n in range(1, 5000)}
    assert all(n <= size <= max(n * 1.125, n + 1) for n, size in sizes.items())
    for k in range(4, 12):  # between two powers of two: at most 8 sizes to compile
        assert len({sizes[n] for n in range(2**k + 1, 2 ** (k + 1) + 1)}) <= 8
