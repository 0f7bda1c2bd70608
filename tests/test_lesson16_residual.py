"""Lesson 16's claims: the plain network is the residual one without the additions, deep
enough (20+ layers); at initialization the plain stack's gradient grows many times on its
way down to the first layer, the residual one's far less. The gradients the lesson
measures by hand are checked against jax.grad of the same forward pass."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.layers import named_arrays
from scratchcnn.ops.losses import softmax_cross_entropy_forward

pytestmark = pytest.mark.lesson16


@pytest.fixture(scope="module")
def lesson(load_lesson):
    return load_lesson("16_residual_networks")


@pytest.fixture(scope="module")
def digits(mnist_test):
    """128 real test digits (N, 28, 28) in [0, 1] and their labels."""
    images, labels = mnist_test
    return images[:128] / np.float32(255), labels[:128].astype(np.int32)


def kernel_shapes(lesson, model):
    params, _ = model.init(0)
    arrays = named_arrays(params)
    return [arrays[path].shape for path in lesson.conv_kernels(params)]


def test_the_plain_network_is_the_residual_one_without_the_additions(lesson):
    blocks, widths = lesson.FULL["blocks"], lesson.FULL["widths"]
    plain = lesson.deep_network(blocks, widths, residual=False)
    residual = lesson.deep_network(blocks, widths, residual=True)
    shapes = kernel_shapes(lesson, plain)
    assert shapes == kernel_shapes(lesson, residual)  # the same convs, in the same order
    assert len(shapes) + 1 >= 20  # conv layers and the dense layer: a 20+ layer stack
    assert [layer.kind for layer in plain.layers].count("residual") == 0
    assert [layer.kind for layer in residual.layers].count("residual") == 3 * blocks
    # The same output for a batch: (N, 10) logits from both.
    x = np.zeros((2, 28, 28, 1), np.float32)
    for model in (plain, residual):
        params, state = model.init(0)
        assert model.forward(params, state, x, train=False)[0].shape == (2, 10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_gradient_grows_far_less_toward_the_input_with_shortcuts(lesson, digits, seed):
    """First conv's gradient norm over the last conv's: in the 32-layer plain stack the
    gradient grows on its way down (measured on these digits, seeds 0 to 5: 8 to 40
    times), with shortcuts far less (1.1 to 4.5 times; the plain ratio over the residual
    one: 3.5 to 16). Asked here: at least 2 times less."""
    x, y = digits
    share = {}
    for residual in (False, True):
        model = lesson.deep_network(lesson.FULL["blocks"], lesson.FULL["widths"], residual)
        norms = lesson.gradient_norms(model, *model.init(seed), x, y)
        share[residual] = norms[0] / norms[-1]
    assert share[False] > 2 * share[True], share


@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_the_gradient_norms_by_hand_equal_jax_grad(lesson, digits, residual):
    """The lesson's backward pass (hand-written) against jax.grad of the same forward
    pass on JAX arrays, in float64, on a small network of the same kind."""
    x, y = digits[0][:16].astype(np.float64), digits[1][:16]
    model = lesson.deep_network(1, (3, 4, 4), residual)
    params, state = model.init(0, dtype=np.float64)
    by_hand = lesson.gradient_norms(model, params, state, x, y)

    def loss(params):
        logits, _, _ = model.forward(params, state, standardize_unit(jnp.asarray(x)[..., None]),
                                     train=True)  # fmt: skip
        return softmax_cross_entropy_forward(logits, jnp.asarray(y))[0]

    grads = jax.grad(loss)(jax.tree.map(jnp.asarray, params))
    grads = named_arrays(grads)
    by_jax = [float(jnp.linalg.norm(grads[path])) for path in lesson.conv_kernels(params)]
    np.testing.assert_allclose(by_hand, by_jax, rtol=1e-8)
