"""Lesson 15: initialization rules and decoupled weight decay.

The expected values come from the variance argument and from the optimizers' formulas,
written out here, never from the lesson's output.
"""

import math

import numpy as np
import pytest

from scratchcnn import initializers, optim
from scratchcnn.layers import Conv, ReLU

pytestmark = pytest.mark.lesson15


def test_fans_of_a_conv_and_a_dense_kernel():
    assert initializers.fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)
    assert initializers.fans((5, 5, 1, 8)) == (25, 200)
    assert initializers.fans((100, 10)) == (100, 10)


@pytest.mark.parametrize(
    "rule, variance",
    [
        ("naive", lambda fan_in, fan_out: 1.0),
        ("small", lambda fan_in, fan_out: 1e-4),
        ("lecun", lambda fan_in, fan_out: 1 / fan_in),
        ("he", lambda fan_in, fan_out: 2 / fan_in),
        ("glorot", lambda fan_in, fan_out: 2 / (fan_in + fan_out)),
    ],
)
def test_a_drawn_kernel_has_the_variance_of_its_formula(rule, variance):
    shape = (3, 3, 64, 32)  # fan_in 576, fan_out 288: Glorot differs from LeCun
    kernel = initializers.normal_kernel(
        initializers.RULES[rule], np.random.default_rng(0), shape, np.float64
    )
    # 18,432 draws: the sample variance is within 5% of the true one (about 5 sigma).
    assert kernel.var() == pytest.approx(variance(576, 288), rel=0.05)
    assert abs(kernel.mean()) < 5 * math.sqrt(variance(576, 288) / kernel.size)


def test_reinitialize_redraws_kernels_and_keeps_biases():
    params = {"conv1": {"kernel": np.ones((3, 3, 1, 4), np.float32), "bias": np.zeros(4)}}
    fresh = initializers.reinitialize(params, initializers.he, seed=0)
    assert fresh["conv1"]["kernel"].dtype == np.float32
    assert fresh["conv1"]["kernel"].shape == (3, 3, 1, 4)
    assert not np.allclose(fresh["conv1"]["kernel"], 1.0)
    np.testing.assert_array_equal(fresh["conv1"]["bias"], params["conv1"]["bias"])
    np.testing.assert_array_equal(params["conv1"]["kernel"], 1.0)  # the input is untouched


def relu_stack_stds(rule, depth=20, width=64, seed=0):
    """Std of each conv's output (before ReLU) in a depth-layer 3x3 ReLU stack.

    VALID padding, so that every output sums exactly fan_in inputs, the assumption of the
    variance argument (SAME's zero padding feeds border pixels fewer).
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 2 * depth + 4, 2 * depth + 4, width)).astype(np.float32)
    conv, relu, stds = Conv(width, padding="VALID"), ReLU(), []
    for _ in range(depth):
        kernel = initializers.normal_kernel(rule, rng, (3, 3, width, width))
        params = {"kernel": kernel, "bias": np.zeros(width, np.float32)}
        y, _, _ = conv.forward(params, {}, x, train=True)
        stds.append(float(np.std(y, dtype=np.float64)))
        x, _, _ = relu.forward({}, {}, y, train=True)
    return np.array(stds)


def test_he_keeps_the_scale_through_20_relu_convs_and_naive_and_small_do_not():
    fan_in = 3 * 3 * 64
    he = relu_stack_stds(initializers.he)
    assert np.all((he / he[0] > 0.5) & (he / he[0] < 2))
    # Each layer multiplies the std by sqrt(fan_in * Var(w) / 2): the ReLU halves E[x^2].
    for rule, std in [(initializers.naive, 1.0), (initializers.small, 0.01)]:
        stds = relu_stack_stds(rule)
        predicted = math.sqrt(fan_in * std**2 / 2) ** (len(stds) - 1)  # 12**19 or 0.12**19
        assert abs(math.log(stds[-1] / stds[0] / predicted)) < math.log(2)


def test_lecun_loses_half_the_variance_at_every_relu():
    stds = relu_stack_stds(initializers.lecun)
    ratio = stds[-1] / stds[0]
    predicted = math.sqrt(0.5) ** (len(stds) - 1)  # about 1.4e-3 after 19 ReLUs
    assert predicted / 2 < ratio < predicted * 2


def one_kernel(values):
    """A (1, n) kernel: weight decay applies to arrays with ndim > 1 only."""
    return {"w": np.array([values], dtype=np.float64)}


def test_l2_in_adam_pulls_an_unused_weight_at_lr_per_step_whatever_its_strength():
    """The loss ignores this weight (gradient 0). L2 puts wd * w into the gradient, and
    Adam divides every gradient by its own running size: the step is about lr whatever wd.
    AdamW shrinks it by the factor (1 - lr * wd) at every step."""
    lr, steps = 0.01, 50
    zero = one_kernel([0.0])
    finals = {}
    for wd in (1e-3, 1e-1):
        for cls in (optim.Adam, optim.AdamW):
            optimizer = cls(lr, weight_decay=wd)
            params = one_kernel([1.0])
            state = optimizer.init(params)
            for _ in range(steps):
                params, state = optimizer.update(zero, state, params)
            finals[cls.__name__, wd] = float(params["w"][0, 0])
    # L2: m / sqrt(v) of a gradient wd * w is about 1 however small wd is (a little less:
    # v remembers the larger w of earlier steps), so 50 steps of about 0.01.
    assert finals["Adam", 1e-3] == pytest.approx(1 - steps * lr, abs=0.05)
    assert finals["Adam", 1e-3] == pytest.approx(finals["Adam", 1e-1], abs=1e-4)  # eps aside
    for wd in (1e-3, 1e-1):
        assert finals["AdamW", wd] == pytest.approx((1 - lr * wd) ** steps, rel=1e-12)


def test_l2_in_adam_hardly_decays_a_weight_with_a_large_gradient_and_adamw_does():
    """One first step of Adam moves every weight by lr * sign(g): the decay wd * w hidden
    in a large gradient is divided away. AdamW adds lr * wd * w on top, for every weight."""
    lr, wd = 0.01, 0.1
    grads, params = one_kernel([100.0, -100.0]), one_kernel([1.0, 1.0])
    l2 = optim.Adam(lr, weight_decay=wd)
    adamw = optim.AdamW(lr, weight_decay=wd)
    plain = optim.Adam(lr)
    moved = {}
    for name, opt in [("l2", l2), ("adamw", adamw), ("plain", plain)]:
        new, _ = opt.update(grads, opt.init(params), params)
        moved[name] = params["w"][0] - new["w"][0]
    np.testing.assert_allclose(moved["plain"], [lr, -lr], rtol=1e-6)
    np.testing.assert_allclose(moved["l2"], moved["plain"], rtol=1e-6)  # decay invisible
    np.testing.assert_allclose(moved["adamw"], moved["plain"] + lr * wd * 1.0, rtol=1e-6)
