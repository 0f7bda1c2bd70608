"""The NumPy fast paths equal the plain whole-batch code.

On NumPy arrays the convolution, pooling and ReLU split the batch into chunks and run
them on every core (``scratchcnn/ops/cores.py``), and take NumPy-only shortcuts
(a strided view for im2col, in-place col2im, ``maximum`` instead of ``where``). On JAX
arrays the same functions run the plain code on the whole batch. So comparing NumPy
against JAX (float64) compares the fast path against the plain one; the batches here are
big enough to be cut into several chunks, and test_conv.py compares both with the loops.
"""

import jax.numpy as jnp
import numpy as np
import pytest
from threadpoolctl import threadpool_info

from scratchcnn.gradcheck import relative_error
from scratchcnn.ops import activations, conv, cores, pool, windows
from scratchcnn.ops.conv import conv2d_naive_backward, conv2d_naive_forward

pytestmark = pytest.mark.lesson13

BATCH = 13


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Chunks of a few images (1 at 28x28, 8 at 13x13), the last one short."""
    monkeypatch.setattr(cores, "WINDOW_ROWS_PER_CHUNK", 1500)


def as_jax(*arrays):
    return [jnp.asarray(a) for a in arrays]


@pytest.mark.parametrize(
    ("c_in", "c_out", "strides", "padding", "use_bias"),
    [(1, 8, 1, "SAME", True), (3, 6, 1, "SAME", False), (8, 4, 1, "SAME", True),
     (5, 5, 2, "VALID", True), (4, 6, (2, 1), ((1, 2), (0, 1)), False)],
    ids=["first layer", "col2im", "flipped kernel", "strided", "odd padding"],
)  # fmt: skip
def test_chunked_conv_equals_whole_batch_and_loops(c_in, c_out, strides, padding, use_bias):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, c_in))
    k = rng.standard_normal((3, 3, c_in, c_out))
    b = rng.standard_normal(c_out) if use_bias else None
    out, cache = conv.conv2d_forward(x, k, b, strides, padding)
    assert cores.images_per_chunk(out.shape[1] * out.shape[2]) < BATCH  # really chunked
    out_jax, cache_jax = conv.conv2d_forward(*as_jax(x, k), None if b is None else jnp.asarray(b),
                                             strides, padding)  # fmt: skip
    assert relative_error(out, np.asarray(out_jax)) <= 1e-12
    dout = rng.standard_normal(out.shape)
    dx, grads = conv.conv2d_backward(dout, cache)
    dx_jax, grads_jax = conv.conv2d_backward(jnp.asarray(dout), cache_jax)
    naive_out, naive_cache = conv2d_naive_forward(x, k, b, strides, padding)
    dx_naive, grads_naive = conv2d_naive_backward(dout, naive_cache)
    assert relative_error(out, naive_out) <= 1e-12
    for ours, plain, loops in [(dx, dx_jax, dx_naive)] + [
        (grads[name], grads_jax[name], grads_naive[name]) for name in grads_naive
    ]:
        assert relative_error(ours, np.asarray(plain)) <= 1e-12
        assert relative_error(ours, loops) <= 1e-12


@pytest.mark.parametrize(
    ("window", "strides", "padding"),
    [(2, None, "VALID"), (3, 2, "SAME"), ((2, 3), (1, 2), "VALID")],
    ids=["tiles", "overlapping", "rectangular"],
)
def test_numpy_max_pool_equals_jax_path_with_ties(window, strides, padding):
    rng = np.random.default_rng(2)
    x = rng.integers(0, 3, (BATCH, 28, 28, 4)).astype(np.float64)  # many exact ties
    out, cache = pool.max_pool_forward(x, window, strides, padding)
    out_jax, cache_jax = pool.max_pool_forward(jnp.asarray(x), window, strides, padding)
    np.testing.assert_array_equal(out, out_jax)
    dout = rng.standard_normal(out.shape)
    dx, _ = pool.max_pool_backward(dout, cache)
    dx_jax, _ = pool.max_pool_backward(jnp.asarray(dout), cache_jax)
    np.testing.assert_array_equal(dx, dx_jax)
    assert np.count_nonzero(dx) <= dout.size  # one winner per window, ties or not


def test_numpy_relu_on_halves_equals_jax_path():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((BATCH, 28, 28, 32))
    x[0, 0, 0, :4] = 0.0
    dout = rng.standard_normal(x.shape)
    out, cache = activations.relu_forward(x)
    out_jax, cache_jax = activations.relu_forward(jnp.asarray(x))
    np.testing.assert_array_equal(out, out_jax)
    np.testing.assert_array_equal(
        activations.relu_backward(dout, cache)[0],
        activations.relu_backward(jnp.asarray(dout), cache_jax)[0],
    )


@pytest.mark.parametrize("channels", [1, 32])
def test_strided_view_im2col_equals_stacked_taps(channels):
    x = np.random.default_rng(4).standard_normal((3, 11, 9, channels))
    for window, strides in [((3, 3), (1, 1)), ((2, 3), (2, 2))]:
        out_hw = tuple(
            windows.output_size(n, k, s, (0, 0)) for n, k, s in zip((11, 9), window, strides)
        )
        stacked = np.stack(windows.window_taps(x, window, strides, out_hw), axis=3)
        np.testing.assert_array_equal(
            windows._extract_windows_numpy(x, window, strides, out_hw), stacked
        )


def test_tiled_scatter_equals_the_general_one():
    dwindows = np.random.default_rng(5).standard_normal((2, 4, 3, 6, 5))  # 2x3 windows
    tiled = windows.scatter_windows(dwindows, (8, 9), (2, 3), (2, 3))
    general = windows.scatter_windows(jnp.asarray(dwindows), (8, 9), (2, 3), (2, 3))
    np.testing.assert_array_equal(tiled, general)


def numpy_blas_threads() -> list[int]:
    """Threads of NumPy's own BLAS (SciPy or PyTorch may load others, which we leave be)."""
    return [lib["num_threads"] for lib in threadpool_info()
            if lib["user_api"] == "blas" and "numpy" in lib["filepath"]]  # fmt: skip


def test_for_each_chunk_keeps_batch_order_and_restores_blas_threads():
    before = numpy_blas_threads()
    seen = cores.for_each_chunk(lambda part: (part.start, part.stop), 10, 3)
    assert seen == [(0, 3), (3, 6), (6, 9), (9, 10)]
    with cores.on_all_cores():
        inside = numpy_blas_threads()
        assert cores.for_each_chunk(lambda part: part.stop - part.start, 4, 4) == [4]
    assert before and set(inside) == {1} and numpy_blas_threads() == before
