"""2-D convolution (cross-correlation, as every deep-learning library computes it).

Layout is Flax's: ``x: (N, H, W, C_in)`` (NHWC), ``kernel: (kh, kw, C_in, C_out)`` (HWIO),
``bias: (C_out,)``. Two versions compute the same thing:

- ``conv2d_naive_forward`` / ``conv2d_naive_backward``: loops over output pixels; the
  readable reference, NumPy only.
- ``conv2d_forward`` / ``conv2d_backward``: im2col + one matrix multiply; runs on NumPy
  and on ``jax.numpy``. Its input gradient is itself a convolution (of the stride-dilated
  output gradient with the flipped kernel), which is the lesson's punchline.

The tests prove the two equal, and both equal to Flax's ``nnx.Conv``.
"""

from typing import NamedTuple

import numpy as np

from scratchcnn.errors import ShapeError
from scratchcnn.ops._xp import total
from scratchcnn.ops.windows import (
    as_pair,
    crop_hw,
    dilate_hw,
    extract_windows,
    output_size,
    pad_hw,
    resolve_padding,
    scatter_windows,
)


class ConvGeometry(NamedTuple):
    """Everything about where the windows go, computed once per call."""

    window: tuple[int, int]  # (kh, kw)
    strides: tuple[int, int]  # (sh, sw)
    pads: tuple[tuple[int, int], tuple[int, int]]  # ((top, bottom), (left, right))
    out_hw: tuple[int, int]  # (Ho, Wo)


def conv_geometry(x_shape, kernel_shape, strides, padding) -> ConvGeometry:
    """Check that x (N, H, W, C) and kernel (kh, kw, C, O) fit, and place the windows."""
    if len(x_shape) != 4:
        raise ShapeError(f"conv2d expects x of shape (N, H, W, C), got {tuple(x_shape)}.")
    if len(kernel_shape) != 4:
        raise ShapeError(
            f"conv2d expects a kernel (kh, kw, C_in, C_out), got {tuple(kernel_shape)}."
        )
    if x_shape[3] != kernel_shape[2]:
        raise ShapeError(
            f"conv2d: x has {x_shape[3]} channels but the kernel expects {kernel_shape[2]}."
        )
    window = (int(kernel_shape[0]), int(kernel_shape[1]))
    strides = as_pair(strides, "strides")
    pads = resolve_padding(padding, x_shape[1:3], window, strides)
    out_hw = tuple(
        output_size(n, k, s, p) for n, k, s, p in zip(x_shape[1:3], window, strides, pads)
    )
    return ConvGeometry(window, strides, pads, out_hw)


# ----------------------------------------------------------------------------------------
# Fast version: im2col + one matrix multiply.
# ----------------------------------------------------------------------------------------


def conv2d_forward(x, kernel, bias=None, strides=1, padding="SAME"):
    """Convolution as one matrix multiply.

    x: (N, H, W, C), kernel: (kh, kw, C, O), bias: (O,) or None -> out: (N, Ho, Wo, O).
    Every window becomes a row of length kh*kw*C; the HWIO kernel reshaped to
    (kh*kw*C, O) matches that row order, so one ``@`` computes every output pixel.
    """
    geo = conv_geometry(x.shape, kernel.shape, strides, padding)
    n, (ho, wo), c_out = x.shape[0], geo.out_hw, kernel.shape[3]
    windows = extract_windows(pad_hw(x, geo.pads), geo.window, geo.strides, geo.out_hw)
    rows = windows.reshape(n * ho * wo, -1)  # (N*Ho*Wo, kh*kw*C)
    out = (rows @ kernel.reshape(-1, c_out)).reshape(n, ho, wo, c_out)
    if bias is not None:
        out = out + bias
    return out, (x.shape, rows, kernel, geo, bias is not None)


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of the convolution.

    dout: (N, Ho, Wo, O) -> dx: (N, H, W, C), grads {"kernel": (kh, kw, C, O), "bias": (O,)}.

    - kernel: every window row times the output gradient of its pixel, summed: rows.T @ dout.
    - input: pixel (a, b) touched output (i, j) through kernel tap (a - i*s, b - j*s).
      Spread dout back onto the stride-1 grid (dilate), pad by kh-1 / kw-1, and run a
      plain stride-1 convolution with the kernel flipped in space and in/out swapped.

    ``input_grad=False`` skips dx (returned as None): the first layer's input is the
    data, whose gradient training never uses, and it is the most expensive one.
    """
    x_shape, rows, kernel, geo, has_bias = cache
    c_out = kernel.shape[3]
    grads = {"kernel": (rows.T @ dout.reshape(-1, c_out)).reshape(kernel.shape)}
    if has_bias:
        grads["bias"] = total(dout, (0, 1, 2))
    if not input_grad:
        return None, grads
    if isinstance(dout, np.ndarray) and kernel.shape[2] < c_out:
        return _conv2d_input_grad_col2im(dout, kernel, geo, x_shape), grads
    return _conv2d_input_grad(dout, kernel, geo, x_shape), grads


def _conv2d_input_grad_col2im(dout, kernel, geo, x_shape):
    """dx the other way round: each output pixel's gradient times the kernel gives the
    gradient of its window (one matrix multiply), and col2im adds the windows back.

    Same numbers as the flipped-kernel convolution; cheaper when C_in < C_out, since the
    windows then hold kh*kw*C_in values per pixel instead of kh*kw*C_out. NumPy only:
    col2im adds in place.
    """
    n, (ho, wo), (kh, kw) = x_shape[0], geo.out_hw, geo.window
    c_in, c_out = kernel.shape[2], kernel.shape[3]
    dwindows = dout.reshape(-1, c_out) @ kernel.reshape(-1, c_out).T  # (N*Ho*Wo, kh*kw*C)
    padded_hw = tuple(size + lo + hi for size, (lo, hi) in zip(x_shape[1:3], geo.pads))
    dx_padded = scatter_windows(
        dwindows.reshape(n, ho, wo, kh * kw, c_in), padded_hw, geo.window, geo.strides
    )
    return crop_hw(dx_padded, geo.pads)


def _conv2d_input_grad(dout, kernel, geo, x_shape):
    """dx as a 'full' convolution of the dilated output gradient with the flipped kernel."""
    (kh, kw), (sh, sw), pads, (ho, wo) = geo
    padded_h = x_shape[1] + pads[0][0] + pads[0][1]
    padded_w = x_shape[2] + pads[1][0] + pads[1][1]
    # Rows/columns the last window never reached (when the stride does not divide evenly)
    # get zero gradient: extra padding at the bottom/right produces them.
    unreached_h = padded_h - ((ho - 1) * sh + kh)
    unreached_w = padded_w - ((wo - 1) * sw + kw)
    spread = pad_hw(
        dilate_hw(dout, (sh, sw)),
        ((kh - 1, kh - 1 + unreached_h), (kw - 1, kw - 1 + unreached_w)),
    )
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, O, C)
    dx_padded, _ = conv2d_forward(spread, flipped, None, strides=1, padding="VALID")
    return crop_hw(dx_padded, pads)


# ----------------------------------------------------------------------------------------
# Naive version: the definition, one output pixel at a time (NumPy only).
# ----------------------------------------------------------------------------------------


def conv2d_naive_forward(x, kernel, bias=None, strides=1, padding="SAME"):
    """The definition: one output pixel at a time.

    out[n, i, j, o] = sum over (di, dj, c) of x_pad[n, i*sh+di, j*sw+dj, c] * kernel[di, dj, c, o]

    x: (N, H, W, C), kernel: (kh, kw, C, O) -> out: (N, Ho, Wo, O).
    """
    x, kernel = np.asarray(x), np.asarray(kernel)
    geo = conv_geometry(x.shape, kernel.shape, strides, padding)
    (kh, kw), (sh, sw), (ho, wo) = geo.window, geo.strides, geo.out_hw
    x_pad = pad_hw(x, geo.pads)
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]), dtype=np.result_type(x, kernel))
    for i in range(ho):
        for j in range(wo):
            patch = x_pad[:, i * sh : i * sh + kh, j * sw : j * sw + kw, :]  # (N, kh, kw, C)
            out[:, i, j, :] = np.tensordot(patch, kernel, axes=3)
    if bias is not None:
        out += np.asarray(bias)
    return out, (x_pad, kernel, geo, bias is not None)


def conv2d_naive_backward(dout, cache):
    """Each output pixel sends its gradient back to the window it was computed from."""
    x_pad, kernel, geo, has_bias = cache
    dout = np.asarray(dout)
    (kh, kw), (sh, sw), (ho, wo) = geo.window, geo.strides, geo.out_hw
    dx_pad = np.zeros_like(x_pad)
    dkernel = np.zeros_like(kernel)
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * sh, i * sh + kh), slice(j * sw, j * sw + kw)
            g = dout[:, i, j, :]  # (N, O)
            dkernel += np.tensordot(x_pad[:, rows, cols, :], g, axes=([0], [0]))
            dx_pad[:, rows, cols, :] += np.tensordot(g, kernel, axes=([1], [3]))
    grads = {"kernel": dkernel}
    if has_bias:
        grads["bias"] = dout.sum(axis=(0, 1, 2))
    return crop_hw(dx_pad, geo.pads), grads
