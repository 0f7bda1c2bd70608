"""Every op and layer: finite differences, forward == Flax, backward == jax.vjp(Flax).

Hypothesis draws the shapes, kernel sizes, strides and paddings, odd sizes included;
``opcheck.check_all`` runs the three checks on each draw. Ops with a fast NumPy version
(convolution, pooling, ReLU, batch norm) are checked in both versions, plain and fast.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from opcheck import BOTH_OPS, check_all

from scratchcnn import layers as L
from scratchcnn.errors import InputError, ShapeError
from scratchcnn.gradcheck import numerical_gradient, relative_error
from scratchcnn.ops import PlainOps
from scratchcnn.ops.dropout import channel_dropout_forward, dropout_forward
from scratchcnn.ops.losses import (
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from scratchcnn.ops.windows import output_size, resolve_padding

sizes = st.integers(1, 7)
channels = st.integers(1, 3)
pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))
paddings = st.one_of(
    st.sampled_from(["SAME", "VALID"]),
    st.integers(0, 2),
    st.tuples(
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ),
)


def fits(in_hw, window, strides, padding) -> bool:
    """True when at least one window fits in the padded input."""
    pads = resolve_padding(padding, in_hw, window, strides)
    return all(n + p[0] + p[1] >= k for n, k, p in zip(in_hw, window, pads))


@pytest.mark.slow
@pytest.mark.lesson03
@pytest.mark.parametrize(**BOTH_OPS)
@given(
    h=sizes, w=sizes, c_in=channels, c_out=channels,
    kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), strides=pairs,
    padding=paddings, use_bias=st.booleans(), batch=st.integers(1, 2),
)  # fmt: skip
def test_conv(ops, h, w, c_in, c_out, kernel, strides, padding, use_bias, batch):
    assume(fits((h, w), kernel, strides, padding))
    layer = L.Conv(c_out, kernel, strides, padding, use_bias)
    check_all(layer, (h, w, c_in), batch=batch, ops=ops)


@pytest.mark.slow
@pytest.mark.lesson02
@given(
    batch=st.integers(1, 4), d_in=st.integers(1, 9), d_out=st.integers(1, 6), use_bias=st.booleans()
)
def test_dense(batch, d_in, d_out, use_bias):
    check_all(L.Dense(d_out, use_bias), (d_in,), batch=batch)


@pytest.mark.slow
@pytest.mark.lesson04
@pytest.mark.parametrize(**BOTH_OPS)
@given(
    kind=st.sampled_from([L.MaxPool, L.AvgPool]), h=sizes, w=sizes, c=channels,
    window=pairs, strides=st.one_of(st.none(), pairs),
    padding=st.one_of(st.sampled_from(["SAME", "VALID"]), st.integers(0, 2)),
)  # fmt: skip
def test_pool(ops, kind, h, w, c, window, strides, padding):
    assume(fits((h, w), window, strides or window, padding))
    # A window made only of -inf padding has no maximum (Flax returns -inf there too).
    assume(not isinstance(padding, int) or padding < min(window))
    check_all(kind(window, strides, padding), (h, w, c), ops=ops)


@pytest.mark.slow
@pytest.mark.lesson02
@pytest.mark.lesson04
@pytest.mark.parametrize(**BOTH_OPS)
@given(shape=st.tuples(sizes, sizes, channels))
def test_relu_flatten_global_avg_pool(ops, shape):
    for layer in (L.ReLU(), L.Flatten(), L.GlobalAvgPool()):
        check_all(layer, shape, ops=ops)


@pytest.mark.slow
@pytest.mark.lesson04
@given(
    shape=st.one_of(st.tuples(st.integers(1, 6)), st.tuples(sizes, sizes, channels)),
    batch=st.integers(3, 5), train=st.booleans(),  # 2 examples make x_hat = +-1: no gradient
)  # fmt: skip
@pytest.mark.parametrize(**BOTH_OPS)
def test_batchnorm(ops, shape, batch, train):
    check_all(L.BatchNorm(), shape, batch=batch, train=train, ops=ops)


@pytest.mark.lesson04
@given(
    rate=st.sampled_from([0.0, 0.1, 0.5, 0.9]), channelwise=st.booleans(),
    shape=st.tuples(sizes, sizes, channels), train=st.booleans(), seed=st.integers(0, 99),
)  # fmt: skip
def test_dropout(rate, channelwise, shape, train, seed):
    layer = L.ChannelDropout(rate) if channelwise else L.Dropout(rate)
    check_all(layer, shape, train=train, seed=seed)


@pytest.mark.slow
@pytest.mark.lesson02
@given(
    batch=st.integers(1, 5), classes=st.integers(2, 10),
    smoothing=st.sampled_from([0.0, 0.1, 0.3]), seed=st.integers(0, 99),
)  # fmt: skip
def test_softmax_cross_entropy(batch, classes, smoothing, seed):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((batch, classes))
    labels = rng.integers(0, classes, batch)
    loss, cache = softmax_cross_entropy_forward(logits, labels, smoothing)
    dlogits, _ = softmax_cross_entropy_backward(1.0, cache)

    def f(z):
        return float(softmax_cross_entropy_forward(z, labels, smoothing)[0])

    assert relative_error(dlogits, numerical_gradient(f, logits.copy())) <= 1e-7
    for dtype, tol in ((np.float32, 1e-5), (np.float64, 1e-10)):
        z = logits.astype(dtype)
        ours, cache = softmax_cross_entropy_forward(z, labels, smoothing)

        def optax_loss(zz, dtype=dtype):
            targets = optax.smooth_labels(jax.nn.one_hot(labels, classes, dtype=dtype), smoothing)
            return optax.softmax_cross_entropy(zz, targets).mean()

        theirs, grad = jax.value_and_grad(optax_loss)(jnp.asarray(z))
        assert relative_error(ours, theirs) <= tol
        assert relative_error(softmax_cross_entropy_backward(1.0, cache)[0], grad) <= tol


@pytest.mark.lesson02
def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0, -1000.0], [-1e4, 1e4, 0.0]])
    loss, cache = softmax_cross_entropy_forward(logits, np.array([0, 0]))
    dlogits, _ = softmax_cross_entropy_backward(1.0, cache)
    assert np.isfinite(loss) and np.isfinite(dlogits).all()
    assert loss == pytest.approx(1e4, rel=1e-12)  # example 2 is 2e4 nats off, example 1 ~0


@pytest.mark.lesson02
def test_softmax_is_stable_and_its_rows_sum_to_one():
    probs = softmax(np.array([[1000.0, 0.0, -1000.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(probs, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)
    jax_probs = softmax(jnp.asarray([[3.0, -1.0, 0.5]]))
    np.testing.assert_allclose(jax_probs, jax.nn.softmax(jnp.asarray([[3.0, -1.0, 0.5]])))


@pytest.mark.lesson04
def test_dropout_numpy_generator_and_jax_key_are_explicit_and_repeatable():
    x = np.ones((4, 5, 6, 8))
    for rng_a, rng_b in (
        (np.random.default_rng(3), np.random.default_rng(3)),
        (jax.random.key(3), jax.random.key(3)),
    ):
        a, _ = dropout_forward(x, 0.5, rng_a)
        b, _ = dropout_forward(x, 0.5, rng_b)
        np.testing.assert_array_equal(a, b)
        assert set(np.unique(np.asarray(a))) <= {0.0, 2.0}  # inverted: survivors are x / keep
    out, _ = channel_dropout_forward(x, 0.5, np.random.default_rng(0))
    pixels = np.asarray(out).reshape(4, 30, 8)  # (image, pixel, channel)
    assert (pixels == pixels[:, :1]).all()  # one decision per (image, channel)
    assert 0 < (pixels[:, 0] > 0).mean() < 1


@pytest.mark.lesson04
def test_dropout_keeps_about_one_minus_rate():
    out, _ = dropout_forward(np.ones(100_000), 0.3, np.random.default_rng(0))
    assert abs((out > 0).mean() - 0.7) < 0.01
    assert out.mean() == pytest.approx(1.0, abs=0.02)  # inverted dropout keeps the mean


@pytest.mark.lesson03
@pytest.mark.parametrize(
    ("layer", "in_shape", "message"),
    [
        (L.Conv(4, 5, padding="VALID"), (3, 3, 1), "larger than the padded input"),
        (L.Conv(4, 3, padding="FULL"), (8, 8, 1), "padding must be"),
        (L.Conv(4, 3, padding=-1), (8, 8, 1), "non-negative"),
        (L.Conv(4, 0), (8, 8, 1), "kernel_size must be a positive int"),
        (L.MaxPool(2, strides=0), (8, 8, 1), "strides must be a positive int"),
    ],
)
def test_bad_layer_configurations_raise_one_clear_error(layer, in_shape, message):
    with pytest.raises(ShapeError, match=message):
        L.Sequential([layer]).init(0, in_shape)


@pytest.mark.lesson03
@pytest.mark.parametrize(**BOTH_OPS)
def test_conv_rejects_a_channel_mismatch(ops):
    with pytest.raises(ShapeError, match="3 channels but the kernel expects 2"):
        ops.conv2d_forward(np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 2, 4)))


@pytest.mark.lesson04
def test_dropout_rate_outside_0_1_is_rejected():
    with pytest.raises(InputError, match="rate must be in"):
        dropout_forward(np.ones(3), 1.5, np.random.default_rng(0))


@pytest.mark.lesson03
@pytest.mark.parametrize(
    ("size", "window", "stride"), [(28, 3, 1), (7, 2, 2), (9, 3, 2), (5, 5, 3)]
)
def test_same_padding_matches_lax(size, window, stride):
    ours = resolve_padding("SAME", (size, size), (window, window), (stride, stride))
    theirs = jax.lax.padtype_to_pads((size, size), (window, window), (stride, stride), "SAME")
    assert [tuple(p) for p in theirs] == list(ours)
    assert output_size(size, window, stride, ours[0]) == -(-size // stride)


@pytest.mark.lesson04
@pytest.mark.parametrize(**BOTH_OPS)
def test_max_pool_ties_go_to_the_same_cell_as_in_flax_and_jax_grad(ops):
    """Flat regions tie exactly; all three gradients must pick the first maximum."""
    from flax import nnx

    x = np.zeros((2, 6, 6, 3))
    x[0, 0:2, 0:2, 0] = 1.0  # one window of four tied ones; every other window ties at 0
    dout = np.random.default_rng(0).standard_normal((2, 3, 3, 3))
    out, cache = ops.max_pool_forward(x, 2)
    dx, _ = ops.max_pool_backward(dout, cache)
    _, vjp = jax.vjp(lambda xx: nnx.max_pool(xx, (2, 2), (2, 2), "VALID"), jnp.asarray(x))
    np.testing.assert_array_equal(dx, vjp(jnp.asarray(dout))[0])
    # jax.grad differentiates the plain forward pass (the only one that runs under JAX).
    plain_max_pool = PlainOps.max_pool_forward
    through_plain = jax.grad(lambda xx: jnp.sum(plain_max_pool(xx, 2)[0] * dout))(jnp.asarray(x))
    np.testing.assert_array_equal(dx, through_plain)


@pytest.mark.lesson02
def test_loss_rejects_labels_out_of_range_or_of_the_wrong_shape():
    logits = np.zeros((2, 3))
    with pytest.raises(InputError, match=r"labels must lie in \[0, 3\), got values from 0 to 10"):
        softmax_cross_entropy_forward(logits, np.array([0, 10]))
    with pytest.raises(InputError, match="labels must be integers, got dtype float64"):
        softmax_cross_entropy_forward(logits, np.array([0.0, 1.0]))
    with pytest.raises(ShapeError, match="labels must be 2 integers"):
        softmax_cross_entropy_forward(logits, np.array([0, 1, 2]))


@pytest.mark.lesson02
def test_numerical_gradient_refuses_arrays_it_cannot_nudge_in_place():
    f = lambda a: float((a**2).sum())  # noqa: E731
    for bad in (np.arange(6.0).reshape(2, 3).T, np.ones(3, np.float32), jnp.ones(3)):
        with pytest.raises(TypeError, match="C-contiguous float64"):
            numerical_gradient(f, bad)


@pytest.mark.lesson03
def test_numpy_integers_are_accepted_as_sizes_and_bools_are_not():
    from scratchcnn.ops.windows import as_pair

    assert as_pair(np.int64(3), "window") == (3, 3)
    assert as_pair((np.int64(2), 2), "window") == (2, 2)
    with pytest.raises(ShapeError):
        as_pair(True, "window")


@pytest.mark.lesson04
def test_a_numpy_generator_cannot_drive_dropout_on_jax_arrays():
    with pytest.raises(TypeError, match="needs a JAX key"):
        dropout_forward(jnp.ones(4), 0.5, np.random.default_rng(0))
    with pytest.raises(InputError, match="rate must be in"):
        L.Dropout(1.5)
