"""Pooling: max, average and global average, over NHWC images.

Padding follows Flax's ``nnx.max_pool`` / ``nnx.avg_pool``: max pooling pads with -inf
(a padded cell never wins), average pooling pads with zeros and divides by the full
window size (Flax's default ``count_include_pad=True``).
"""

from scratchcnn.ops._xp import average, namespace
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


def max_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Largest value in each window. x: (N, H, W, C) -> (N, Ho, Wo, C).

    strides defaults to the window (non-overlapping windows). We walk over the kh*kw
    taps of the window (each tap is one strided slice of the padded input, for every
    window at once), keep the largest value so far and remember which tap gave it. A
    later tap wins only if it is strictly larger, so on ties (common on flat image
    background) the first maximum in row-major window order wins: the same cell XLA's
    gradient picks, and ``jax.grad`` of this forward pass sends the whole gradient
    there too, exactly like ``max_pool_backward``.
    """
    window, strides, pads, out_hw = pool_geometry(x.shape[1:3], window, strides, padding)
    xp = namespace(x)
    x_pad = pad_hw(x, pads, value=-float("inf"))
    taps = window_taps(x_pad, window, strides, out_hw)
    best, winner = taps[0], xp.zeros(taps[0].shape, dtype=xp.int32)
    for k, tap in enumerate(taps[1:], start=1):
        better = tap > best
        best = xp.where(better, tap, best)
        winner = xp.where(better, k, winner)
    return best, (winner, (window, strides, pads, x_pad.shape[1:3]))


def max_pool_backward(dout, cache):
    """Only the winner of each window gets the gradient."""
    winner, geometry = cache
    xp = namespace(dout, winner)
    (kh, kw) = geometry[0]
    taps = xp.arange(kh * kw).reshape(1, 1, 1, -1, 1)
    dwindows = xp.where(winner[:, :, :, None, :] == taps, dout[:, :, :, None, :], 0)
    return _unpool(dwindows, geometry), {}


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


def global_avg_pool_forward(x):
    """Mean over all pixels of each channel. x: (N, H, W, C) -> (N, C)."""
    return average(x, (1, 2)), x.shape


def global_avg_pool_backward(dout, cache):
    """Each of the H*W pixels gets dout / (H*W). dout: (N, C) -> (N, H, W, C)."""
    n, h, w, c = cache
    xp = namespace(dout)
    return xp.broadcast_to(dout[:, None, None, :] / (h * w), cache), {}
