"""The fast NumPy backend (``scratchcnn/fast/``) equals the plain whole-batch ops.

On NumPy arrays ``FastOps`` splits the batch into chunks and runs them on every core, and
takes NumPy-only shortcuts (a strided view for im2col, in-place col2im, ``maximum``
instead of ``where``). Here both run on the same NumPy arrays (float64), on batches big
enough to be cut into several chunks; test_conv.py and test_ops.py check both against
the loops, finite differences and Flax.
"""

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from scratchcnn.fast import FastOps, cores
from scratchcnn.fast import batchnorm as fast_batchnorm
from scratchcnn.fast import conv as fast_conv
from scratchcnn.fast import windows as fast_windows
from scratchcnn.gradcheck import relative_error
from scratchcnn.ops import PlainOps, windows
from scratchcnn.ops.conv import conv2d_naive_backward, conv2d_naive_forward

pytestmark = pytest.mark.lesson13

BATCH = 13


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of 1 to 7 images of the 13 (7 for a one-channel image), the last one short."""
    monkeypatch.setattr(cores, "WINDOW_VALUES_PER_CHUNK", 60000)


@pytest.mark.lesson03
@pytest.mark.parametrize(
    ("c_in", "c_out", "strides", "padding", "use_bias"),
    [(1, 8, 1, "SAME", True), (3, 6, 1, "SAME", False), (8, 4, 1, "SAME", True),
     (5, 5, 2, "VALID", True), (4, 6, (2, 1), ((1, 2), (0, 1)), False)],
    ids=["first layer", "more outputs", "fewer outputs", "strided", "odd padding"],
)  # fmt: skip
def test_chunked_conv_equals_whole_batch_and_loops(c_in, c_out, strides, padding, use_bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, c_in))
    k = rng.standard_normal((3, 3, c_in, c_out))
    b = rng.standard_normal(c_out) if use_bias else None
    out, cache = FastOps.conv2d_forward(x, k, b, strides, padding)
    assert fast_conv.chunk_size(x, cache.geo) < BATCH  # really chunked
    out_plain, cache_plain = PlainOps.conv2d_forward(x, k, b, strides, padding)
    naive_out, naive_cache = conv2d_naive_forward(x, k, b, strides, padding)
    assert relative_error(out, out_plain) <= 1e-12
    assert relative_error(out, naive_out) <= 1e-12
    dout = rng.standard_normal(out.shape)
    dx, grads = FastOps.conv2d_backward(dout, cache)
    dx_plain, grads_plain = PlainOps.conv2d_backward(dout, cache_plain)
    dx_naive, grads_naive = conv2d_naive_backward(dout, naive_cache)
    for fast, plain, loops in [(dx, dx_plain, dx_naive)] + [
        (grads[name], grads_plain[name], grads_naive[name]) for name in grads_naive
    ]:
        assert relative_error(fast, plain) <= 1e-12
        assert relative_error(fast, loops) <= 1e-12


def test_float32_first_layer_kernel_gradient_in_training_chunks(monkeypatch):
    """A first layer's kernel gradient in float32, in the chunks training uses (64 images
    per product): digit-like images (a constant standardized background) and an output
    gradient summing to 0 per channel, as BatchNorm after the layer makes it. The
    gradient is then a small difference of large sums, which float32 must keep."""
    monkeypatch.setattr(cores, "WINDOW_VALUES_PER_CHUNK", 4096 * 288)  # as in training
    rng = np.random.default_rng(3)
    x = np.where(rng.random((128, 28, 28, 1)) < 0.2, 2.8, -0.42)  # ink, background
    dout = rng.standard_normal((128, 28, 28, 32))
    dout -= dout.mean(axis=(0, 1, 2))
    k = rng.standard_normal((3, 3, 1, 32))
    exact = PlainOps.conv2d_backward(dout, PlainOps.conv2d_forward(x, k)[1], False)[1]["kernel"]
    x32, dout32, k32 = (a.astype(np.float32) for a in (x, dout, k))
    _, cache = FastOps.conv2d_forward(x32, k32)
    assert fast_conv.chunk_size(x32, cache.geo) == 64
    fast = FastOps.conv2d_backward(dout32, cache, input_grad=False)[1]["kernel"]
    assert np.abs(fast - exact).max() <= 2e-6 * np.abs(exact).max()


@pytest.mark.lesson04
@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [(2, None, "VALID"), (3, 2, "SAME"), ((2, 3), (1, 2), "VALID")],
    ids=["tiles", "overlapping", "rectangular"],
)
def test_fast_pooling_equals_plain_with_ties(window, strides, padding):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, (BATCH, 28, 28, 4)).astype(np.float64)  # many exact ties
    out, cache = FastOps.max_pool_forward(x, window, strides, padding)
    out_plain, cache_plain = PlainOps.max_pool_forward(x, window, strides, padding)
    np.testing.assert_array_equal(out, out_plain)
    dout = rng.standard_normal(out.shape)
    dx, _ = FastOps.max_pool_backward(dout, cache)
    np.testing.assert_array_equal(dx, PlainOps.max_pool_backward(dout, cache_plain)[0])
    assert np.count_nonzero(dx) <= dout.size  # one winner per window, ties or not
    avg, cache = FastOps.avg_pool_forward(x, window, strides, padding)
    avg_plain, cache_plain = PlainOps.avg_pool_forward(x, window, strides, padding)
    assert relative_error(avg, avg_plain) <= 1e-15
    dx, _ = FastOps.avg_pool_backward(dout, cache)
    assert relative_error(dx, PlainOps.avg_pool_backward(dout, cache_plain)[0]) <= 1e-15


def test_relu_split_per_core_equals_plain():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, 28, 28, 32))
    x[0, 0, 0, :4] = 0.0
    dout = rng.standard_normal(x.shape)
    out, cache = FastOps.relu_forward(x)
    out_plain, cache_plain = PlainOps.relu_forward(x)
    np.testing.assert_array_equal(out, out_plain)
    np.testing.assert_array_equal(
        FastOps.relu_backward(dout, cache)[0], PlainOps.relu_backward(dout, cache_plain)[0]
    )


@pytest.mark.lesson04
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("shape", "dtype", "tolerance"),
    [((BATCH, 28, 28, 8), np.float64, 1e-12), ((1000, 32), np.float64, 1e-12),
     ((BATCH, 28, 28, 8), np.float32, 1e-5), ((0, 5, 5, 4), np.float64, 0)],
    ids=["images", "vectors", "float32", "no images"],
)  # fmt: skip
def test_chunked_batchnorm_equals_plain(monkeypatch, train, shape, dtype, tolerance):
    """Wide rows (k pixels per row: 28 for "images", 8 for "vectors") in several chunks."""
    monkeypatch.setattr(fast_batchnorm, "ROWS_PER_CHUNK", 100)
    assert fast_batchnorm.wide_rows(np.zeros(shape))[1] > 1 or not np.prod(shape)
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(shape) * 3 + 2).astype(dtype)
    c = shape[-1]
    params = {"scale": rng.standard_normal(c), "bias": rng.standard_normal(c)}
    state = {"mean": rng.standard_normal(c), "var": rng.uniform(0.5, 2, c)}
    params, state = ({k: v.astype(dtype) for k, v in d.items()} for d in (params, state))
    with np.errstate(invalid="ignore", divide="ignore"):  # no images: NaN statistics
        out, new_state, cache = FastOps.batchnorm_forward(x, params, state, train=train)
        plain_out, plain_state, plain_cache = PlainOps.batchnorm_forward(
            x, params, state, train=train
        )
    assert out.dtype == plain_out.dtype == dtype and out.shape == shape
    if x.size:
        assert relative_error(out, plain_out) <= tolerance
    for name in state:
        np.testing.assert_allclose(new_state[name], plain_state[name], rtol=tolerance)
    dout = rng.standard_normal(shape).astype(dtype)
    dx, grads = FastOps.batchnorm_backward(dout, cache)
    with np.errstate(invalid="ignore"):
        plain_dx, plain_grads = PlainOps.batchnorm_backward(dout, plain_cache)
    assert dx.dtype == plain_dx.dtype == dtype and dx.shape == shape
    if x.size:
        assert relative_error(dx, plain_dx) <= 10 * tolerance
    for name in grads:
        np.testing.assert_allclose(grads[name], plain_grads[name], rtol=tolerance, atol=1e-12)


@pytest.mark.lesson03
@pytest.mark.parametrize("channels", [1, 32])
def test_strided_view_im2col_equals_stacked_taps(channels):
    x = np.random.default_rng(4).standard_normal((3, 11, 9, channels))
    for window, strides in [((3, 3), (1, 1)), ((2, 3), (2, 2))]:
        out_hw = tuple(
            windows.output_size(n, k, s, (0, 0)) for n, k, s in zip((11, 9), window, strides)
        )
        np.testing.assert_array_equal(
            fast_windows.extract_windows(x, window, strides, out_hw),
            windows.extract_windows(x, window, strides, out_hw),
        )


@pytest.mark.parametrize(
    ("window", "strides", "padded_hw"), [((2, 3), (2, 3), (8, 9)), ((3, 2), (2, 1), (9, 4))]
)
def test_in_place_col2im_equals_the_plain_one(window, strides, padded_hw):
    """Tiling windows (a reordering) and overlapping ones (adds in place)."""
    ho, wo = ((p - k) // s + 1 for p, k, s in zip(padded_hw, window, strides))
    dwindows = np.random.default_rng(5).standard_normal((2, ho, wo, window[0] * window[1], 5))
    np.testing.assert_allclose(
        fast_windows.scatter_windows(dwindows, padded_hw, window, strides),
        windows.scatter_windows(dwindows, padded_hw, window, strides),
        rtol=1e-15, atol=1e-15,
    )  # fmt: skip


def numpy_blas_threads() -> list[int]:
    """Threads of NumPy's own BLAS (SciPy or PyTorch may load others, which we leave be)."""
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]  # fmt: skip


def test_for_each_chunk_keeps_batch_order_and_restores_blas_threads():
    before = numpy_blas_threads()
    seen = cores.for_each_chunk(lambda part: (part.start, part.stop), 10, 3)
    assert seen == [(0, 3), (3, 6), (6, 9), (9, 10)]
    with FastOps.whole_pass():
        inside = numpy_blas_threads()
        assert cores.for_each_chunk(lambda part: part.stop - part.start, 4, 4) == [4]
    assert before and set(inside) == {1} and numpy_blas_threads() == before


def test_only_numpy_arrays_run_on_the_fast_backend():
    """JAX arrays (and jit's tracers) always take the plain ops; NumPy the chosen ones."""
    import jax.numpy as jnp

    from scratchcnn.layers import ops_for, use_ops

    assert ops_for(np.zeros(2)) is FastOps and ops_for(jnp.zeros(2)) is PlainOps
    with use_ops(PlainOps):
        assert ops_for(np.zeros(2)) is PlainOps
    with use_ops(FastOps):
        assert ops_for(jnp.zeros(2)) is PlainOps
    assert ops_for(np.zeros(2)) is FastOps
