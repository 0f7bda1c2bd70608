"""Batch norm of ``scratchcnn/ops/batchnorm.py`` on NumPy arrays, made fast.

The plain op is about ten whole-array passes (``x - mean``, ``** 2``, ``* inv_std``,
``* scale``, ``+ bias``, and the same again backwards), each reading and writing 13 MB
for the default network's first layer at batch 128: memory traffic, not arithmetic, is
its cost (BatchNorm took 45% of the parts of that network's NumPy step in the profile
before this file, ``benchmarks/profile_step.py``). Here the rows of the batch (one per
pixel, C values each) are cut into cache-sized chunks, one thread per core, and each
chunk does all of a pass's element-wise work while it is in cache:

- forward: a pass for the mean, one for the variance (still two passes over x: one
  pass of sums and sums of squares cancels badly in float32), one writing the output;
- backward: a pass for the two sums (the gradients of bias and scale), one writing dx.

Two more savings: x_hat is not kept for the backward pass (recomputing it from x chunk
by chunk costs less than writing it out and reading it back), and the rows are made
wider (``wide_rows``) so that NumPy's element-wise loops run long. The arithmetic is
the plain op's, regrouped, so the results agree to rounding.
"""

import numpy as np

from scratchcnn.fast.cores import for_each_chunk

ROWS_PER_CHUNK = 512  # rows of ~256 values: 512 KB of float32
WIDE = 256  # values per row, at least


def wide_rows(x):
    """x: (..., C) as (M / k, k * C): k consecutive pixels per row, and k.

    NumPy broadcasts a per-channel (C,) vector over rows of C values with an inner loop
    C long; at C = 32 its per-row overhead makes ``x - mean`` markedly slower than with
    rows of 512 values. So k pixels form one row (k the largest divisor of the pixel count up
    to WIDE / C) and the per-channel vectors are tiled k times (``np.tile(v, k)``): the
    same arithmetic, longer loops.
    """
    channels = x.shape[-1]
    pixels = x.size // channels
    k = max(1, WIDE // channels)
    while pixels % k:
        k -= 1
    return x.reshape(pixels // k, k * channels), k


def channel_sums(rows, k, *parts_to_sum):
    """For each ``f`` in ``parts_to_sum``, the per-channel sum of ``f(row_slice)``.

    rows: (M / k, k * C) from ``wide_rows``; each ``f`` returns a (m, k * C) array for
    its slice of rows, all of them while the chunk is in cache. Returns one (C,) float64
    array per ``f``. A chunk is summed as ``ones @ part``: BLAS adds the columns of a
    row-major array several times faster than ``part.sum(axis=0)``; the chunks' sums are
    added in float64, so float32 rounding never builds up over more than one chunk.
    """

    def chunk_sums(part):
        ones = np.ones(part.stop - part.start, rows.dtype)
        return [(ones @ f(part)).astype(np.float64) for f in parts_to_sum]

    totals = [np.zeros(rows.shape[1])] * len(parts_to_sum)  # an empty batch has no chunks
    for sums in for_each_row_chunk(chunk_sums, rows):
        totals = [total + chunk_sum for total, chunk_sum in zip(totals, sums)]
    return [total.reshape(k, -1).sum(axis=0) for total in totals]


def for_each_row_chunk(work, rows) -> list:
    """``work(row_slice)`` on cache-sized slices of ``rows``, on every core."""
    return for_each_chunk(work, len(rows), max(1, min(ROWS_PER_CHUNK, len(rows))))


def batchnorm_forward(x, params, state, *, train, momentum=0.99, epsilon=1e-5):
    """Normalise each channel, then scale and shift it; as the plain op.

    x: (..., C); params {"scale", "bias"}: (C,); state {"mean", "var"}: (C,).
    Returns out (same shape as x), the new state, and the cache.
    """
    rows, k = wide_rows(x)
    count, dtype = x.size // x.shape[-1], x.dtype
    if train:
        (total,) = channel_sums(rows, k, lambda part: rows[part])
        mean = total.astype(dtype) / count
        wide_mean = np.tile(mean, k)
        (squares,) = channel_sums(rows, k, lambda part: np.square(rows[part] - wide_mean))
        var = squares.astype(dtype) / count
        new_state = {
            "mean": momentum * state["mean"] + (1 - momentum) * mean,
            "var": momentum * state["var"] + (1 - momentum) * var,
        }
    else:
        mean, var = state["mean"], state["var"]
        wide_mean, new_state = np.tile(mean, k), state
    inv_std = 1 / np.sqrt(var + epsilon)
    gain, bias = np.tile(inv_std * params["scale"], k), np.tile(params["bias"], k)
    out = np.empty(rows.shape, np.result_type(rows, gain, bias))  # the plain op's dtype

    def normalise(part):
        chunk = out[part]
        np.subtract(rows[part], wide_mean, out=chunk)
        chunk *= gain
        chunk += bias

    for_each_row_chunk(normalise, rows)
    cache = (rows, k, wide_mean, inv_std, params["scale"], train)
    return out.reshape(x.shape), new_state, cache


def batchnorm_backward(dout, cache):
    """Gradients of batch norm; as the plain op.

    dout: (..., C) -> dx (same shape), grads {"scale": (C,), "bias": (C,)}.
    With ``x_hat = (x - mean) * inv_std``, ``mean(dx_hat) = scale * dbias / M`` and
    ``mean(dx_hat * x_hat) = scale * dscale / M``: the two sums that give the
    parameters' gradients also give dx's corrections, so dx is
    ``scale * inv_std * dout - inv_std * mean(dx_hat)
    - (x - mean) * inv_std**2 * mean(dx_hat * x_hat)``.
    """
    rows, k, wide_mean, inv_std, scale, train = cache
    douts = dout.reshape(rows.shape)
    dtype = np.result_type(dout, rows, inv_std, scale)  # the plain op's dtype
    if not rows.size:  # no images: the plain op's sums over nothing, zeros
        return np.zeros(dout.shape, dtype), {"scale": np.zeros_like(scale, dtype),
                                             "bias": np.zeros_like(scale, dtype)}  # fmt: skip
    count = dout.size // dout.shape[-1]
    dbias, centred_dot = channel_sums(
        rows, k, lambda part: douts[part], lambda part: douts[part] * (rows[part] - wide_mean)
    )
    dbias, dscale = dbias.astype(dtype), (centred_dot * inv_std).astype(dtype)
    gain = np.tile(scale * inv_std, k)
    shift = np.tile(inv_std * scale * dbias / count, k)
    slope = np.tile(inv_std * inv_std * scale * dscale / count, k)
    dx = np.empty(douts.shape, dtype)

    def input_grad(part):
        chunk = dx[part]
        np.multiply(douts[part], gain, out=chunk)
        if train:
            centred = rows[part] - wide_mean
            centred *= slope
            chunk -= centred
            chunk -= shift

    for_each_row_chunk(input_grad, rows)
    return dx.reshape(dout.shape), {"scale": dscale, "bias": dbias}
