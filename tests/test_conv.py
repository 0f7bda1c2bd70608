"""The im2col convolution, plain and fast, equals the naive loop definition, forward and
backward."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from opcheck import BOTH_OPS
from test_ops import fits, paddings, pairs

from scratchcnn.gradcheck import relative_error
from scratchcnn.ops.conv import conv2d_naive_backward, conv2d_naive_forward

pytestmark = pytest.mark.lesson03


@pytest.mark.parametrize(**BOTH_OPS)
@given(
    h=st.integers(1, 9), w=st.integers(1, 9), c_in=st.integers(1, 4), c_out=st.integers(1, 4),
    kernel=st.tuples(st.integers(1, 5), st.integers(1, 5)), strides=pairs, padding=paddings,
    use_bias=st.booleans(), seed=st.integers(0, 99),
)  # fmt: skip
def test_im2col_conv_equals_naive_loops(
    ops, h, w, c_in, c_out, kernel, strides, padding, use_bias, seed
):
    assume(fits((h, w), kernel, strides, padding))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, c_in))
    k = rng.standard_normal((*kernel, c_in, c_out))
    b = rng.standard_normal(c_out) if use_bias else None
    out, cache = ops.conv2d_forward(x, k, b, strides, padding)
    naive, naive_cache = conv2d_naive_forward(x, k, b, strides, padding)
    assert out.shape == naive.shape
    assert relative_error(out, naive) <= 1e-12
    dout = rng.standard_normal(out.shape)
    dx, grads = ops.conv2d_backward(dout, cache)
    dx_naive, grads_naive = conv2d_naive_backward(dout, naive_cache)
    assert dx.shape == x.shape
    assert relative_error(dx, dx_naive) <= 1e-12
    assert grads.keys() == grads_naive.keys()
    for name in grads:
        assert relative_error(grads[name], grads_naive[name]) <= 1e-12


@pytest.mark.parametrize(**BOTH_OPS)
def test_conv_float32_stays_float32(ops):
    x = np.ones((1, 6, 6, 2), np.float32)
    k = np.ones((3, 3, 2, 4), np.float32)
    out, cache = ops.conv2d_forward(x, k, np.zeros(4, np.float32))
    dx, grads = ops.conv2d_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == grads["kernel"].dtype == grads["bias"].dtype == np.float32


@pytest.mark.parametrize(**BOTH_OPS)
@pytest.mark.parametrize(
    ("c_in", "c_out", "strides", "padding"),
    [(1, 8, 1, "SAME"), (2, 5, 2, ((1, 2), (0, 1))), (6, 3, 1, "SAME"), (4, 4, (2, 1), 1)],
    ids=["first layer", "strided, odd padding", "fewer outputs", "uneven strides"],
)
def test_col2im_input_gradient_equals_naive_loops(ops, c_in, c_out, strides, padding):
    """col2im: the plain ops scatter every window at once, the fast backend a kernel tap
    at a time."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9, 8, c_in))
    k = rng.standard_normal((3, 3, c_in, c_out))
    out, cache = ops.conv2d_forward(x, k, None, strides, padding)
    _, naive_cache = conv2d_naive_forward(x, k, None, strides, padding)
    dout = rng.standard_normal(out.shape)
    dx, _ = ops.conv2d_backward(dout, cache)
    dx_naive, _ = conv2d_naive_backward(dout, naive_cache)
    assert relative_error(dx, dx_naive) <= 1e-12
    skipped, grads = ops.conv2d_backward(dout, cache, input_grad=False)
    assert skipped is None and grads["kernel"].shape == k.shape
