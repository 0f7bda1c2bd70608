"""Pooling: max, average and global average, over NHWC images.

Padding follows Flax's ``nnx.max_pool`` / ``nnx.avg_pool``: max pooling pads with -inf
(a padded cell never wins), average pooling pads with zeros and divides by the full
window size (Flax's default ``count_include_pad=True``). Every function runs on NumPy
and on JAX arrays; ``scratchcnn/fast/pool.py`` is the fast NumPy version.
"""

from scratchcnn.ops._xp import average, namespace
from scratchcnn.ops.windows import (
    WindowGeometry,
    extract_windows,
    pad_hw,
    window_geometry,
    window_taps,
    windows_to_image,
)

# A pooling's windows are placed as a convolution's are.
PoolGeometry = WindowGeometry


def pool_geometry(in_hw, window, strides, padding) -> PoolGeometry:
    """Window, strides (default: the window), pads and output size of pooling an (H, W) image."""
    return window_geometry(in_hw, window, window if strides is None else strides, padding)


# --8<-- [start:max_pool]
def max_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Largest value in each window. x: (N, H, W, C) -> (N, Ho, Wo, C).

    We walk over the kh*kw taps of the window (each tap is one strided slice of the
    padded input, for every window at once) and keep the largest value so far. A later
    tap replaces it only if strictly larger, so on ties the first maximum in row-major
    window order is kept: the cell XLA's gradient picks, and ``jax.grad`` of this
    forward pass sends the whole gradient there too, as ``max_pool_backward`` does.
    The cache keeps *which* tap won: under ``jax.jit``, XLA may recompute the input in
    the backward pass with different rounding, and comparing values for equality there
    would then find no maximum at all.
    """
    geo = pool_geometry(x.shape[1:3], window, strides, padding)
    x_pad = pad_hw(x, geo.pads, value=-float("inf"))
    taps = window_taps(x_pad, geo.window, geo.strides, geo.out_hw)
    xp = namespace(x)
    best, winner = taps[0], xp.zeros(taps[0].shape, dtype=xp.int32)
    for index, tap in enumerate(taps[1:], start=1):
        larger = tap > best  # strictly: ``maximum`` would split ties
        best = xp.where(larger, tap, best)
        winner = xp.where(larger, index, winner)
    return best, (winner, x_pad.shape[1:3], geo)


def max_pool_backward(dout, cache):
    """Only the cell that won each window (its first maximum) gets the gradient.

    dout: (N, Ho, Wo, C) -> dx: (N, H, W, C).
    """
    winner, padded_hw, geo = cache
    xp = namespace(dout)
    shares = [(winner == index) * dout for index in range(geo.window[0] * geo.window[1])]
    return windows_to_image(xp.stack(shares, axis=3), geo, padded_hw), {}


# --8<-- [end:max_pool]


# --8<-- [start:avg_pool]
def avg_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Mean of each window (padded cells count as zeros). x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    geo = pool_geometry(x.shape[1:3], window, strides, padding)
    x_pad = pad_hw(x, geo.pads)
    windows = extract_windows(x_pad, geo.window, geo.strides, geo.out_hw)
    return namespace(x).mean(windows, axis=3), (x_pad.shape[1:3], geo)


def avg_pool_backward(dout, cache):
    """Every cell of a window gets an equal share, 1 / (kh*kw), of its gradient."""
    padded_hw, geo = cache
    (kh, kw), (n, ho, wo, c) = geo.window, dout.shape
    share = dout[:, :, :, None, :] / (kh * kw)
    dwindows = namespace(dout).broadcast_to(share, (n, ho, wo, kh * kw, c))
    return windows_to_image(dwindows, geo, padded_hw), {}


# --8<-- [end:avg_pool]


def global_avg_pool_forward(x):
    """Mean over all pixels of each channel. x: (N, H, W, C) -> (N, C)."""
    return average(x, (1, 2)), x.shape


def global_avg_pool_backward(dout, cache):
    """Each of the H*W pixels gets dout / (H*W). dout: (N, C) -> (N, H, W, C)."""
    n, h, w, c = cache
    xp = namespace(dout)
    return xp.broadcast_to(dout[:, None, None, :] / (h * w), cache), {}
