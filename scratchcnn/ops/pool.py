"""Pooling: max, average and global average, over NHWC images.

Padding follows Flax's ``nnx.max_pool`` / ``nnx.avg_pool``: max pooling pads with -inf
(a padded cell never wins), average pooling pads with zeros and divides by the full
window size (Flax's default ``count_include_pad=True``).
"""

import numpy as np

from scratchcnn.ops._xp import average, namespace
from scratchcnn.ops.cores import for_each_chunk, images_per_chunk, on_halves
from scratchcnn.ops.windows import (
    as_pair,
    crop_hw,
    extract_windows,
    output_size,
    pad_hw,
    resolve_padding,
    scatter_windows,
    window_taps,
)


def pool_geometry(in_hw, window, strides, padding):
    """Window, strides, pads and output size (Ho, Wo) of a pooling of an (H, W) image."""
    window = as_pair(window, "window")
    strides = window if strides is None else as_pair(strides, "strides")
    pads = resolve_padding(padding, in_hw, window, strides)
    out_hw = tuple(output_size(n, k, s, p) for n, k, s, p in zip(in_hw, window, strides, pads))
    return window, strides, pads, out_hw


def _pool_windows(x, window, strides, padding, pad_value):
    """Gather the pooling windows. x: (N, H, W, C) -> (N, Ho, Wo, kh*kw, C), geometry."""
    window, strides, pads, out_hw = pool_geometry(x.shape[1:3], window, strides, padding)
    x_pad = pad_hw(x, pads, value=pad_value)
    geometry = (window, strides, pads, x_pad.shape[1:3])
    return extract_windows(x_pad, window, strides, out_hw), geometry


def _unpool(dwindows, geometry):
    """Send per-window gradients (N, Ho, Wo, kh*kw, C) back to the input (N, H, W, C)."""
    window, strides, pads, padded_hw = geometry
    return crop_hw(scatter_windows(dwindows, padded_hw, window, strides), pads)


# --8<-- [start:max_pool]
def max_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Largest value in each window. x: (N, H, W, C) -> (N, Ho, Wo, C).

    strides defaults to the window (non-overlapping windows). We walk over the kh*kw
    taps of the window (each tap is one strided slice of the padded input, for every
    window at once) and keep the largest value so far. A later tap replaces it only if
    strictly larger, so on ties (common on flat image background) the first maximum in
    row-major window order is kept: the cell XLA's gradient picks, and ``jax.grad`` of
    this forward pass sends the whole gradient there too, as ``max_pool_backward`` does.
    """
    window, strides, pads, out_hw = pool_geometry(x.shape[1:3], window, strides, padding)
    x_pad = pad_hw(x, pads, value=-float("inf"))
    geometry = (window, strides, pads, x_pad.shape[1:3])
    if not isinstance(x, np.ndarray):
        taps = window_taps(x_pad, window, strides, out_hw)
        best = taps[0]
        for tap in taps[1:]:
            # jax.grad of ``maximum`` would split a tie between both arguments.
            best = namespace(x).where(tap > best, tap, best)
        return best, (x_pad, best, geometry)
    # NumPy never differentiates: ``maximum`` gives the same values, ~10x faster than
    # its ``where``, on one part of the batch per core.
    best = np.empty((x.shape[0], *out_hw, x.shape[3]), x.dtype)

    def part(batch):
        taps, out = window_taps(x_pad[batch], window, strides, out_hw), best[batch]
        np.copyto(out, taps[0])
        for tap in taps[1:]:
            np.maximum(out, tap, out=out)

    on_halves(part, x)
    return best, (x_pad, best, geometry)


def max_pool_backward(dout, cache):
    """Only the first cell of each window that holds the maximum gets the gradient.

    dout: (N, Ho, Wo, C) -> dx: (N, H, W, C). On NumPy, a chunk of images per core.
    """
    x_pad, best, geometry = cache
    if not isinstance(dout, np.ndarray):
        return _max_pool_grad(dout, x_pad, best, geometry), {}
    (top, bottom), (left, right) = geometry[2]
    n, hp, wp, c = x_pad.shape
    dx = np.empty((n, hp - top - bottom, wp - left - right, c), dout.dtype)

    def chunk(batch):
        dx[batch] = _max_pool_grad(dout[batch], x_pad[batch], best[batch], geometry)

    for_each_chunk(chunk, n, images_per_chunk(hp * wp))
    return dx, {}


def _max_pool_grad(dout, x_pad, best, geometry):
    """Route dout (n, Ho, Wo, C) to the first maximum of each window -> dx (n, H, W, C)."""
    window, strides, pads, _ = geometry
    xp = namespace(dout, best)
    taken = xp.zeros(best.shape, dtype=bool)
    shares = []
    for tap in window_taps(x_pad, window, strides, best.shape[1:3]):
        first_max = (tap == best) & ~taken
        taken = taken | first_max
        shares.append(first_max * dout)
    if xp is not np:
        return _unpool(xp.stack(shares, axis=3), geometry)
    # NumPy: add each tap's share in place, straight into the input's layout.
    dx_pad = np.zeros_like(x_pad)
    for dx_tap, share in zip(window_taps(dx_pad, window, strides, best.shape[1:3]), shares):
        dx_tap += share
    return crop_hw(dx_pad, pads)


# --8<-- [end:max_pool]


# --8<-- [start:avg_pool]
def avg_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Mean of each window (padded cells count as zeros). x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    windows, geometry = _pool_windows(x, window, strides, padding, pad_value=0.0)
    xp = namespace(x)
    return xp.mean(windows, axis=3), (windows.shape, geometry)


def avg_pool_backward(dout, cache):
    """Every cell of a window gets an equal share, 1 / (kh*kw), of its gradient."""
    windows_shape, geometry = cache
    xp = namespace(dout)
    share = dout[:, :, :, None, :] / windows_shape[3]
    return _unpool(xp.broadcast_to(share, windows_shape), geometry), {}


# --8<-- [end:avg_pool]


def global_avg_pool_forward(x):
    """Mean over all pixels of each channel. x: (N, H, W, C) -> (N, C)."""
    return average(x, (1, 2)), x.shape


def global_avg_pool_backward(dout, cache):
    """Each of the H*W pixels gets dout / (H*W). dout: (N, C) -> (N, H, W, C)."""
    n, h, w, c = cache
    xp = namespace(dout)
    return xp.broadcast_to(dout[:, None, None, :] / (h * w), cache), {}
