"""Interval bound propagation: the bounds hold for every image in the box, and are exact
when the box is a point.

Soundness is checked the only way a bound can be: by images inside the box, random ones,
corners, and the adversarial images PGD finds, none of which may land outside the bounds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import models, robustness, verify
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.errors import InputError
from scratchcnn.layers import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool,
    ReLU,
    Sequential,
)
from scratchcnn.residual import basic_block

pytestmark = pytest.mark.lesson10

LAYERS = {
    "conv, stride 2, SAME": (Conv(5, 3, 2), (7, 7, 3)),
    "conv, VALID, no bias": (Conv(4, (3, 2), 1, "VALID", use_bias=False), (6, 5, 2)),
    "dense": (Dense(6), (11,)),
    "relu": (ReLU(), (5, 5, 3)),
    "max pool": (MaxPool(2), (6, 6, 2)),
    "max pool, SAME, stride 1": (MaxPool(3, 1, "SAME"), (5, 5, 2)),
    "avg pool, SAME": (AvgPool(3, 2, "SAME"), (5, 5, 2)),
    "global avg pool": (GlobalAvgPool(), (4, 4, 3)),
    "flatten": (Flatten(), (3, 3, 2)),
    "dropout (eval)": (Dropout(0.5), (4,)),
    "batch norm (eval), negative scales": (BatchNorm(), (4, 4, 3)),
    "residual, identity": (basic_block(3), (5, 5, 3)),
    "residual, projection": (basic_block(4, 2, project=True), (6, 6, 2)),
}


def random_weights(layer, in_shape, rng):
    """float64 params and state; batch norm gets scales of both signs and varied statistics."""
    one_layer = Sequential([layer])
    params, state = one_layer.init(rng, in_shape, np.float64)
    name = one_layer.names[0]
    params, state = params.get(name, {}), state.get(name, {})
    params, state = _randomize(params, rng), _randomize(state, rng)
    return params, state


def _randomize(tree, rng):
    """Every array of a (nested) params/state dict replaced by random values: batch norm's
    scale of both signs, its variance positive."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = _randomize(value, rng)
        elif key == "var":
            out[key] = rng.uniform(0.1, 2.0, value.shape)
        else:
            out[key] = rng.normal(0, 1, value.shape)
    return out


def points_in(box: verify.Box, rng, n: int) -> list[np.ndarray]:
    """n random points of the box, its two extreme corners, and n random corners."""
    inside = [box.lower + rng.uniform(0, 1, box.lower.shape) * (box.upper - box.lower)
              for _ in range(n)]  # fmt: skip
    corners = [np.where(rng.uniform(size=box.lower.shape) < 0.5, box.lower, box.upper)
               for _ in range(n)]  # fmt: skip
    return [box.lower, box.upper, *inside, *corners]


def assert_inside(values, box: verify.Box, tol: float = 1e-9) -> None:
    assert values.shape == box.lower.shape
    assert np.all(values >= box.lower - tol), (values - box.lower).min()
    assert np.all(values <= box.upper + tol), (box.upper - values).min()


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_output_lies_within_its_bounds(name):
    layer, in_shape = LAYERS[name]
    rng = np.random.default_rng(0)
    params, state = random_weights(layer, in_shape, rng)
    center = rng.normal(0, 1, (3, *in_shape))
    box = verify.from_center(center, rng.uniform(0, 0.5, center.shape))
    bounds = verify.layer_bounds(layer, params, state, box)
    assert np.all(bounds.lower <= bounds.upper)
    for x in points_in(box, rng, 30):
        out = layer.forward(params, state, x, train=False)[0]
        assert_inside(out, bounds)


@pytest.mark.parametrize("name", list(LAYERS))
def test_a_box_of_one_point_gives_that_points_output(name):
    layer, in_shape = LAYERS[name]
    rng = np.random.default_rng(1)
    params, state = random_weights(layer, in_shape, rng)
    x = rng.normal(0, 1, (2, *in_shape))
    bounds = verify.layer_bounds(layer, params, state, verify.Box(x, x))
    out = layer.forward(params, state, x, train=False)[0]
    np.testing.assert_allclose(bounds.lower, out, atol=1e-12)
    np.testing.assert_allclose(bounds.upper, out, atol=1e-12)


def margins64(model, params, state, x_unit, labels, eps):
    """margin_lower_bounds in float64, as ``verify.verified`` computes them."""
    return verify.margin_lower_bounds(model, verify.as_float64(params), verify.as_float64(state),
                                      x_unit.astype(np.float64), labels, eps)  # fmt: skip


def margins_of(model, params, state, x_unit, labels):
    """z_y - z_k of the network, in float64, (N, K)."""
    logits = model.forward(verify.as_float64(params), verify.as_float64(state),
                           standardize_unit(x_unit.astype(np.float64)), train=False)[0]  # fmt: skip
    return logits[np.arange(len(labels)), labels][:, None] - logits


def assert_margins_above(margins, lower, tol: float) -> None:
    """Every margin z_y - z_k at least its lower bound (k = y, where the bound is +inf and
    the margin 0, left out)."""
    off_label = np.isfinite(lower)
    assert np.all(margins[off_label] >= lower[off_label] - tol)


def test_at_eps_0_the_margins_are_the_networks_and_verified_means_correct(
    default_network, first_digits
):
    model, params, state = default_network
    x, y = first_digits
    lower = margins64(model, params, state, x, y, 0.0)
    exact = margins_of(model, params, state, x, y)
    off_label = np.arange(10)[None] != y[:, None]
    np.testing.assert_allclose(lower[off_label], exact[off_label], atol=1e-9)
    correct = robustness.attacks.predict(model, params, state, x) == y
    assert correct.mean() > 0.95
    np.testing.assert_array_equal(verify.verified(model, params, state, x, y, 0.0), correct)


@pytest.fixture(scope="module")
def defended_network():
    from scratchcnn.pretrained import load

    return load("defended")


def test_no_image_in_the_box_beats_the_margin_bounds_not_even_pgds(defended_network, first_digits):
    """The defended network (the one IBP verifies at small eps) at eps 0.01: random images
    of the box, its corners, and PGD's adversarial examples all keep every margin above
    its lower bound."""
    model, params, state = defended_network
    x, y = first_digits
    eps, rng = 0.01, np.random.default_rng(0)
    lower = margins64(model, params, state, x, y, eps)
    unit_box = verify.Box(np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1))
    pgd = robustness.AttackConfig("pgd", steps=20, step_size=eps / 4, loss="cw")
    adversarial = robustness.adversarial_examples(model, params, state, x, y, eps, pgd)
    for x_in_box in [*points_in(unit_box, rng, 5), adversarial]:
        assert_margins_above(margins_of(model, params, state, x_in_box, y), lower, 1e-6)
    assert 0.2 < verify.verified(model, params, state, x, y, eps).mean() < 1.0  # some, not all


def test_folding_the_last_layer_is_never_looser_than_bounding_each_logit(
    defended_network, first_digits
):
    model, params, state = defended_network
    x, y = first_digits
    eps = 0.005
    folded = margins64(model, params, state, x, y, eps)
    logits = verify.network_bounds(model, verify.as_float64(params), verify.as_float64(state),
                                   verify.input_box(x, eps))  # fmt: skip
    per_logit = logits.lower[np.arange(len(y)), y][:, None] - logits.upper
    off_label = np.arange(10)[None] != y[:, None]
    assert np.all(folded[off_label] >= per_logit[off_label] - 1e-9)
    assert np.mean(folded[off_label] > per_logit[off_label] + 1e-6) > 0.5  # and often tighter


def test_what_is_verified_at_a_larger_eps_is_verified_at_every_smaller_one(
    defended_network, first_digits
):
    model, params, state = defended_network
    x, y = first_digits
    sets = [verify.verified(model, params, state, x, y, eps) for eps in (0, 0.003, 0.006, 0.01)]
    for smaller, larger in zip(sets, sets[1:]):
        assert np.all(smaller | ~larger)  # larger implies smaller
    assert sets[0].sum() > sets[-1].sum()


def test_a_residual_network_is_bounded_too(first_digits):
    model = models.build("resnet")
    params, state = model.init(0)
    x, y = first_digits
    eps, rng = 1e-4, np.random.default_rng(0)
    lower = margins64(model, params, state, x[:20], y[:20], eps)
    unit_box = verify.Box(np.clip(x[:20] - eps, 0, 1), np.clip(x[:20] + eps, 0, 1))
    for x_in_box in points_in(unit_box, rng, 3):
        assert_margins_above(margins_of(model, params, state, x_in_box, y[:20]), lower, 1e-9)


def test_what_it_cannot_verify_is_refused_in_one_sentence(default_network, first_digits):
    model, params, state = default_network
    x, y = first_digits
    with pytest.raises(InputError, match="eps must be in"):
        verify.verified(model, params, state, x, y, 1.5)
    no_dense_end = Sequential([Flatten(), Dense(10), ReLU()])
    p, s = no_dense_end.init(0)
    with pytest.raises(InputError, match="Dense last layer"):
        verify.margin_lower_bounds(no_dense_end, p, s, x, y, 0.1)

    class Squash(Layer):  # a layer IBP has no rule for
        pass

    with pytest.raises(InputError, match="not written for Squash"):
        verify.layer_bounds(Squash(), {}, {}, verify.Box(x, x))
    with pytest.raises(InputError, match="without batch norm.*this one has BatchNorm"):
        verify.train_for_bounds(model, x, y, eps=0.1, epochs=1)


def test_cli_prints_the_verified_accuracy_and_refuses_bad_options(mnist_dir):
    result = run("verify", "defended", "--eps", "0,0.01", "--limit", "50",
                 "--data-dir", mnist_dir, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [r["eps"] for r in rows] == [0.0, 0.01]
    assert rows[0]["verified_accuracy"] > rows[1]["verified_accuracy"] > 0
    for args, phrase in (
        (("--eps", "1.5"), "--eps must be from 0 to 1"),
        (("--eps", "nan"), "--eps must be from 0 to 1"),
        (("--limit", "0"), "--limit must be from 1"),
    ):
        assert_one_line_error(run("verify", "defended", *args, "--data-dir", mnist_dir), phrase)
    assert_one_line_error(run("verify", "README.md", "--data-dir", mnist_dir), "not a checkpoint")


def test_the_bounds_on_jax_arrays_equal_numpys(first_digits):
    """The same functions on JAX arrays (what jax.grad differentiates in training)."""
    import jax
    import jax.numpy as jnp

    model = models.build("flax_cnn")
    params, state = model.init(0)
    x, y = first_digits[0][:16], first_digits[1][:16]
    numpy_bounds = verify.margin_lower_bounds(model, params, state, x, y, 0.05)
    jax_bounds = verify.margin_lower_bounds(model, jax.tree.map(jnp.asarray, params), state,
                                            jnp.asarray(x), jnp.asarray(y), 0.05)  # fmt: skip
    np.testing.assert_allclose(np.asarray(jax_bounds), numpy_bounds, rtol=1e-4, atol=1e-4)


def test_the_ibp_loss_is_the_clean_loss_at_kappa_1_and_grows_with_eps(first_digits):
    import jax.numpy as jnp

    from scratchcnn.inference import predict_logits
    from scratchcnn.ops.losses import softmax_cross_entropy_forward

    model = models.build("flax_cnn")
    params, _ = model.init(0)
    x_np, y_np = first_digits[0][:32], first_digits[1][:32]
    x, y = jnp.asarray(x_np), jnp.asarray(y_np)
    clean, _ = softmax_cross_entropy_forward(predict_logits(model, params, {}, x_np[..., 0]), y_np)
    assert float(verify.ibp_loss(model, params, x, y, 0.1, 1.0)) == pytest.approx(clean, rel=1e-5)
    losses = [float(verify.ibp_loss(model, params, x, y, eps, 0.5)) for eps in (0, 0.01, 0.1)]
    assert losses[0] < losses[1] < losses[2]


def test_the_schedule_starts_clean_and_ramps_to_the_final_eps():
    assert verify.ibp_schedule(0, 1000, 0.3) == (0.0, 1.0)
    assert verify.ibp_schedule(50, 1000, 0.3) == (0.0, 1.0)
    eps, kappa = verify.ibp_schedule(300, 1000, 0.3)
    assert eps == pytest.approx(0.15) and kappa == pytest.approx(0.75)
    assert verify.ibp_schedule(999, 1000, 0.3) == (0.3, 0.5)


@pytest.mark.slow
def test_training_for_the_bounds_makes_a_network_verifiable(
    mnist_train, first_digits, defended_network
):
    """Two epochs on 6,000 digits (186 steps, eps 0.1): the interval-trained network is
    verified on far more test digits at eps 0.05 than the shipped PGD-trained network
    (measured: 64% against 0%; a clean-trained flax_cnn of the same steps: 0%)."""
    images, labels = mnist_train
    x, y = (images[:6000] / np.float32(255))[..., None], labels[:6000].astype(np.int64)
    model = models.build("flax_cnn")
    params = verify.train_for_bounds(model, x, y, eps=0.1, epochs=2, batch_size=64,
                                     log=lambda s: None)  # fmt: skip
    trained = verify.verified_accuracy(model, params, {}, *first_digits, 0.05)
    pgd_trained = verify.verified_accuracy(*defended_network, *first_digits, 0.05)
    assert trained > pgd_trained + 0.3, (trained, pgd_trained)
