"""Lesson 8's claims: a saliency map is the same by hand and by jax.grad, it is the true
derivative of the loss (finite differences, float64), and running a network layer by layer
(to look at its feature maps) gives exactly what its forward pass gives."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn import models
from scratchcnn.attacks import loss_and_gradient
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.fast.cores import on_all_cores
from scratchcnn.gradcheck import relative_error
from scratchcnn.parity import randomized, untie

pytestmark = pytest.mark.lesson08


def network(name: str, dtype=np.float32):
    """A registered network with random weights and non-trivial BatchNorm statistics."""
    model = models.build(name)
    params, state = model.init(0, dtype=dtype)
    state = randomized(state, np.random.default_rng(1)) if state else state
    return model, params, state


@pytest.fixture(scope="module")
def digits(mnist_test):
    """Six real test digits in [0, 1], NHWC, untied (``parity.untie`` says why), labels."""
    images, labels = mnist_test
    return untie((images[:6] / np.float32(255))[..., None]), labels[:6].astype(np.int64)


@pytest.mark.parametrize("name", ["default", "lenet", "flax_cnn", "best"])
def test_saliency_by_hand_equals_jax_grad(name, digits):
    model, params, state = network(name)
    x, y = digits
    losses_m, grad_m = loss_and_gradient(model, params, state, x, y, grad="manual")
    losses_j, grad_j = loss_and_gradient(model, params, state, x, y, grad="jax")
    assert grad_m.shape == grad_j.shape == x.shape
    assert relative_error(losses_m, losses_j) < 1e-5
    assert relative_error(grad_m, grad_j) < 1e-4
    assert np.abs(grad_m).max() > 0  # a real map, not all zeros


@pytest.mark.parametrize("name", ["default", "flax_cnn"])
def test_saliency_is_the_derivative_of_the_loss(name, digits):
    """Directional derivatives along random unit directions, central differences, float64.

    The digits get a little noise first: on a flat background max-pool windows tie
    exactly, the max has no derivative there, and a finite difference measures neither
    side's slope.
    """
    model, params, state = network(name, np.float64)
    rng = np.random.default_rng(0)
    x = digits[0][:3].astype(np.float64) + rng.uniform(-0.01, 0.01, (3, 28, 28, 1))
    y = (digits[1][:3] + 1) % 10  # wrong labels: a large loss and a large gradient
    _, grad = loss_and_gradient(model, params, state, x, y, grad="manual")
    norm = np.sqrt((grad**2).sum())
    assert norm > 0
    h = 1e-6
    for _ in range(5):
        v = rng.standard_normal(x.shape)
        v /= np.sqrt((v**2).sum())
        plus, _ = loss_and_gradient(model, params, state, x + h * v, y, grad="manual")
        minus, _ = loss_and_gradient(model, params, state, x - h * v, y, grad="manual")
        numeric = (plus.sum() - minus.sum()) / (2 * h)
        assert abs(numeric - float((grad * v).sum())) <= 1e-7 * norm


def test_saliency_of_one_digit_ignores_the_others(digits):
    """Each example's map is its own: the same inside a batch as alone."""
    model, params, state = network("default")
    x, y = digits
    _, whole = loss_and_gradient(model, params, state, x, y, grad="manual")
    _, alone = loss_and_gradient(model, params, state, x[3:4], y[3:4], grad="manual")
    assert relative_error(whole[3:4], alone) < 1e-5


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_layer_by_layer_equals_the_forward_pass(name, digits):
    """The feature maps of lesson 8 come from running the layers one at a time."""
    model, params, state = network(name)
    x = standardize_unit(digits[0])
    logits, _, _ = model.forward(params, state, x, train=False)
    h = x
    with on_all_cores():  # as Sequential.forward runs them
        for layer_name, layer in zip(model.names, model.layers):
            h, _, _ = layer.forward(
                params.get(layer_name, {}), state.get(layer_name, {}), h, train=False
            )
    np.testing.assert_array_equal(h, logits)
