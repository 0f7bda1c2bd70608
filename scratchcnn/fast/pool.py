"""Max and average pooling of ``scratchcnn/ops/pool.py`` on NumPy arrays, made fast.

Max pooling takes ``maximum`` in place (NumPy never differentiates, so ties need no
``where``; it is ~10x faster), one part of the batch per core, and routes its gradient in
chunks, adding each tap's share in place (writing it, where the windows tile the image).
Average pooling uses the faster im2col/col2im.
"""

import numpy as np

from scratchcnn.fast.cores import for_each_chunk, images_per_chunk, split_per_core
from scratchcnn.fast.windows import extract_windows, scatter_windows
from scratchcnn.ops.pool import pool_geometry
from scratchcnn.ops.windows import crop_hw, pad_hw, window_taps


def max_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Largest value in each window. x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    geo = pool_geometry(x.shape[1:3], window, strides, padding)
    x_pad = pad_hw(x, geo.pads, value=-float("inf"))
    best = np.empty((x.shape[0], *geo.out_hw, x.shape[3]), x.dtype)

    def part(batch):
        taps, out = window_taps(x_pad[batch], geo.window, geo.strides, geo.out_hw), best[batch]
        np.copyto(out, taps[0])
        for tap in taps[1:]:
            np.maximum(out, tap, out=out)

    split_per_core(part, x)
    return best, (x_pad, best, geo)


def max_pool_backward(dout, cache):
    """The first maximum of each window gets the gradient. dout: (N, Ho, Wo, C) -> dx."""
    x_pad, best, geo = cache
    (top, bottom), (left, right) = geo.pads
    n, hp, wp, c = x_pad.shape
    dx = np.empty((n, hp - top - bottom, wp - left - right, c), dout.dtype)

    def chunk(batch):
        dx[batch] = route_to_first_max(dout[batch], x_pad[batch], best[batch], geo)

    for_each_chunk(chunk, n, images_per_chunk(hp * wp * c, n))
    return dx, {}


def route_to_first_max(dout, x_pad, best, geo):
    """dout (n, Ho, Wo, C) -> dx (n, H, W, C), each tap's share written in place.

    When the windows tile the image (2x2 pooling with stride 2 on even sizes), every
    input cell belongs to exactly one window: each tap writes its cells once, with no
    zeroing and no adding.
    """
    (kh, kw), (ho, wo) = geo.window, geo.out_hw
    tiles = geo.strides == geo.window and x_pad.shape[1:3] == (ho * kh, wo * kw)
    taken = np.zeros(best.shape, dtype=bool)
    dx_pad = (np.empty_like if tiles else np.zeros_like)(x_pad, dtype=dout.dtype)
    taps = window_taps(x_pad, geo.window, geo.strides, geo.out_hw)
    dx_taps = window_taps(dx_pad, geo.window, geo.strides, geo.out_hw)
    for tap, dx_tap in zip(taps, dx_taps):
        first_max = tap == best
        np.greater(first_max, taken, out=first_max)  # and not taken by an earlier tap
        taken |= first_max
        if tiles:
            np.multiply(first_max, dout, out=dx_tap)
        else:
            dx_tap += first_max * dout
    return crop_hw(dx_pad, geo.pads)


def avg_pool_forward(x, window=2, strides=None, padding="VALID"):
    """Mean of each window (padded cells count as zeros). x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    geo = pool_geometry(x.shape[1:3], window, strides, padding)
    x_pad = pad_hw(x, geo.pads)
    windows = extract_windows(x_pad, geo.window, geo.strides, geo.out_hw)
    return windows.mean(axis=3), (x_pad.shape[1:3], geo)


def avg_pool_backward(dout, cache):
    """Every cell of a window gets 1 / (kh*kw) of its gradient."""
    padded_hw, geo = cache
    (kh, kw), (n, ho, wo, c) = geo.window, dout.shape
    dwindows = np.broadcast_to(dout[:, :, :, None, :] / (kh * kw), (n, ho, wo, kh * kw, c))
    scattered = scatter_windows(dwindows, padded_hw, geo.window, geo.strides)
    return crop_hw(scattered, geo.pads), {}
