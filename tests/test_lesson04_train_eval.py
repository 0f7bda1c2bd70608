"""Lesson 4: what train mode and eval mode change, for BatchNorm and dropout.

The lesson's claims, as tests: the running statistics follow the closed form of Flax's
update (momentum weighs the old value); train mode normalises with the batch's own
statistics, so an example's output depends on the rest of its batch, while eval mode
treats every example on its own and leaves the state alone; dropout is the identity in
eval mode and keeps the mean in train mode.
"""

import numpy as np
import pytest

from scratchcnn import layers as L
from scratchcnn.ops.batchnorm import batchnorm_forward

pytestmark = pytest.mark.lesson04


def bn_setup(seed=0, channels=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (8, 5, 5, channels))
    params = {"scale": rng.uniform(0.5, 1.5, channels), "bias": rng.standard_normal(channels)}
    state = {"mean": np.zeros(channels), "var": np.ones(channels)}
    return x, params, state


def test_running_statistics_follow_the_closed_form_of_flax_momentum():
    x, params, state = bn_setup()
    batch_mean = x.mean(axis=(0, 1, 2))
    batch_var = x.var(axis=(0, 1, 2))  # biased: divide by the count
    for _ in range(50):
        _, state, _ = batchnorm_forward(x, params, state, train=True)
    # r_t = m^t r_0 + (1 - m^t) batch, with m = 0.99 weighing the *old* value
    m_t = 0.99**50
    np.testing.assert_allclose(state["mean"], (1 - m_t) * batch_mean, rtol=1e-12)
    np.testing.assert_allclose(state["var"], m_t * 1.0 + (1 - m_t) * batch_var, rtol=1e-12)


def test_train_mode_normalises_with_the_batch_and_ignores_the_running_statistics():
    x, params, state = bn_setup()
    out, _, _ = batchnorm_forward(x, params, state, train=True)
    other_state = {"mean": np.full(3, 5.0), "var": np.full(3, 7.0)}
    out_other, _, _ = batchnorm_forward(x, params, other_state, train=True)
    np.testing.assert_array_equal(out, out_other)
    x_hat = (out - params["bias"]) / params["scale"]
    np.testing.assert_allclose(x_hat.mean(axis=(0, 1, 2)), 0, atol=1e-12)
    np.testing.assert_allclose(x_hat.var(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)) /
                               (x.var(axis=(0, 1, 2)) + 1e-5), rtol=1e-12)  # fmt: skip


def test_an_example_depends_on_its_batch_in_train_mode_only():
    x, params, state = bn_setup()
    state = {"mean": np.array([1.0, 2.0, 3.0]), "var": np.array([4.0, 5.0, 6.0])}
    x_b = x.copy()
    x_b[1:] = x_b[1:] * 2 + 1  # same first example, different companions
    train_a = batchnorm_forward(x, params, state, train=True)[0][0]
    train_b = batchnorm_forward(x_b, params, state, train=True)[0][0]
    assert np.abs(train_a - train_b).max() > 0.1
    eval_a, new_state, _ = batchnorm_forward(x, params, state, train=False)
    eval_b = batchnorm_forward(x_b, params, state, train=False)[0]
    np.testing.assert_array_equal(eval_a[0], eval_b[0])
    assert new_state is state  # eval mode changes nothing
    expected = (x[0] - state["mean"]) / np.sqrt(state["var"] + 1e-5) * params["scale"]
    np.testing.assert_allclose(eval_a[0], expected + params["bias"], rtol=1e-12)


def test_dropout_is_the_identity_in_eval_mode_and_keeps_the_mean_in_train_mode():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (400, 500))
    layer = L.Dropout(0.5)
    out, _, cache = layer.forward({}, {}, x, train=False)
    assert out is x and cache is None
    out, _, _ = layer.forward({}, {}, x, train=True, rng=rng)
    survivors = out != 0
    np.testing.assert_allclose(out[survivors], 2 * x[survivors], rtol=1e-15)
    # 200,000 units: the mean's relative standard error is about 0.3%.
    assert out.mean() == pytest.approx(x.mean(), rel=0.015)
