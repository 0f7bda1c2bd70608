"""Sliding windows: the geometry that convolution and pooling share.

A convolution and a pooling layer both look at small windows of an NHWC image, moved by
a stride over a (possibly padded) input. This file answers three questions once:

- how much padding ``"SAME"``, ``"VALID"`` or an integer means (exactly as ``jax.lax``);
- ``extract_windows``: gather every window into one array (the famous *im2col*);
- ``scatter_windows``: the adjoint of ``extract_windows``: add per-window gradients back
  to the pixels they came from (*col2im*). Overlapping windows add up.

Both run on NumPy and on JAX arrays; ``scratchcnn/fast/windows.py`` has NumPy-only
versions that copy faster and add in place.
"""

import numbers
from typing import NamedTuple

from scratchcnn.errors import ShapeError
from scratchcnn.ops._xp import namespace


class WindowGeometry(NamedTuple):
    """Where the windows of a convolution or a pooling go, computed once per call."""

    window: tuple[int, int]  # (kh, kw)
    strides: tuple[int, int]  # (sh, sw)
    pads: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
    out_hw: tuple[int, int]  # (Ho, Wo)


def window_geometry(in_hw, window, strides, padding) -> WindowGeometry:
    """Place (kh, kw) windows moved by ``strides`` over an (H, W) image padded as asked."""
    window, strides = as_pair(window, "window"), as_pair(strides, "strides")
    pads = resolve_padding(padding, in_hw, window, strides)
    out_hw = tuple(output_size(n, k, s, p) for n, k, s, p in zip(in_hw, window, strides, pads))
    return WindowGeometry(window, strides, pads, out_hw)


def as_pair(value, what: str) -> tuple[int, int]:
    """Turn ``3`` into ``(3, 3)`` and check ``(kh, kw)``-style pairs are positive ints."""

    def positive_int(v) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1

    pair = (value, value) if isinstance(value, numbers.Integral) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(positive_int(v) for v in pair):
        raise ShapeError(f"{what} must be a positive int or a pair of them, got {value!r}.")
    return tuple(int(v) for v in pair)


def same_padding(size: int, window: int, stride: int) -> tuple[int, int]:
    """Padding that makes ``out = ceil(size / stride)``; the odd pixel goes at the end.

    This is ``jax.lax.padtype_to_pads`` for ``"SAME"``, which Flax uses.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + window - size, 0)
    return total // 2, total - total // 2


def resolve_padding(padding, in_hw, window, strides) -> tuple[tuple[int, int], ...]:
    """Padding as ``((top, bottom), (left, right))``.

    padding: ``"SAME"``, ``"VALID"``, an int ``p`` (p on every side), or explicit pairs
    ``((top, bottom), (left, right))``.
    """
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0))
        if mode == "SAME":
            return tuple(same_padding(n, k, s) for n, k, s in zip(in_hw, window, strides))
        raise ShapeError(f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}.")
    if isinstance(padding, int):
        pads = ((padding, padding), (padding, padding))
    else:
        try:
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            raise ShapeError(
                f"padding must be 'SAME', 'VALID', an int or pairs, got {padding!r}."
            ) from None
    if len(pads) != 2 or any(p < 0 for pair in pads for p in pair):
        raise ShapeError(f"padding must be two non-negative (low, high) pairs, got {padding!r}.")
    return pads


# --8<-- [start:output_size]
def output_size(size: int, window: int, stride: int, pad: tuple[int, int]) -> int:
    """Number of window positions along one axis: ``(size + pads - window) // stride + 1``."""
    span = size + pad[0] + pad[1] - window
    if span < 0:
        raise ShapeError(
            f"window {window} is larger than the padded input ({size} + {pad[0]} + {pad[1]})."
        )
    return span // stride + 1


# --8<-- [end:output_size]


def pad_hw(x, pads, value=0.0):
    """Pad the two spatial axes of x: (N, H, W, C) -> (N, H + top + bottom, W + l + r, C)."""
    if pads == ((0, 0), (0, 0)):
        return x
    xp = namespace(x)
    return xp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


# --8<-- [start:window_taps]
def window_taps(x_padded, window, strides, out_hw):
    """Tap (di, dj) of every window at once: kh*kw strided slices, each (N, Ho, Wo, C).

    ``taps[di*kw + dj][n, i, j, c] == x_padded[n, i*sh + di, j*sw + dj, c]``: one strided
    slice per offset instead of Ho*Wo window copies.
    """
    (kh, kw), (sh, sw), (ho, wo) = window, strides, out_hw
    return [
        x_padded[:, di : di + sh * (ho - 1) + 1 : sh, dj : dj + sw * (wo - 1) + 1 : sw, :]
        for di in range(kh)
        for dj in range(kw)
    ]


# --8<-- [end:window_taps]


# --8<-- [start:extract_windows]
def extract_windows(x_padded, window, strides, out_hw):
    """im2col: every window of x, stacked.

    x_padded: (N, Hp, Wp, C) -> windows: (N, Ho, Wo, kh*kw, C), where
    ``windows[n, i, j, di*kw + dj, c] == x_padded[n, i*sh + di, j*sw + dj, c]``.
    """
    xp = namespace(x_padded)
    return xp.stack(window_taps(x_padded, window, strides, out_hw), axis=3)


# --8<-- [end:extract_windows]


# --8<-- [start:dilate_hw]
def dilate_hw(x, strides):
    """Insert ``stride - 1`` zeros between neighbouring pixels.

    x: (N, H, W, C) -> (N, (H-1)*sh + 1, (W-1)*sw + 1, C). Written with pad + reshape
    rather than an indexed write so it also works on immutable JAX arrays.
    """
    sh, sw = strides
    if (sh, sw) == (1, 1):
        return x
    xp = namespace(x)
    n, h, w, c = x.shape
    spread = xp.pad(
        x[:, :, None, :, None, :], ((0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1), (0, 0))
    )
    return spread.reshape(n, h * sh, w * sw, c)[:, : (h - 1) * sh + 1, : (w - 1) * sw + 1, :]


# --8<-- [end:dilate_hw]


def scatter_windows(dwindows, padded_hw, window, strides):
    """col2im, the adjoint of ``extract_windows``: add each window's values back to its pixels.

    dwindows: (N, Ho, Wo, kh*kw, C) -> (N, Hp, Wp, C). Offset (di, dj) of every window
    lands on the strided grid starting at (di, dj). JAX arrays cannot be added into in
    place, so each offset's grid is dilated and padded to full size, and the grids summed.
    """
    (kh, kw), (hp, wp) = window, padded_hw
    total = 0
    for k in range(kh * kw):
        di, dj = divmod(k, kw)
        grid = dilate_hw(dwindows[:, :, :, k, :], strides)
        placed = pad_hw(grid, ((di, hp - di - grid.shape[1]), (dj, wp - dj - grid.shape[2])))
        total = total + placed
    return total


def windows_to_image(dwindows, geo, padded_hw):
    """Per-window gradients (N, Ho, Wo, kh*kw, C) back onto the input (N, H, W, C): every
    window added back where it was cut from (``scatter_windows``), the padding cropped.
    The backward pass of convolution and of pooling alike."""
    return crop_hw(scatter_windows(dwindows, padded_hw, geo.window, geo.strides), geo.pads)


def crop_hw(x, pads):
    """Remove padding: the inverse of ``pad_hw`` for gradients."""
    (top, bottom), (left, right) = pads
    return x[:, top : x.shape[1] - bottom, left : x.shape[2] - right, :]
