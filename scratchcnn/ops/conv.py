"""2-D convolution (cross-correlation, as every deep-learning library computes it).

Layout is Flax's: ``x: (N, H, W, C_in)`` (NHWC), ``kernel: (kh, kw, C_in, C_out)`` (HWIO),
``bias: (C_out,)``. Two versions compute the same thing:

- ``conv2d_naive_forward`` / ``conv2d_naive_backward``: loops over output pixels; the
  readable reference, NumPy only.
- ``conv2d_forward`` / ``conv2d_backward``: im2col + one matrix multiply on the whole
  batch; runs on NumPy and on ``jax.numpy``. Its input gradient is col2im, the adjoint of
  im2col. The same numbers are a convolution of the stride-dilated output gradient with
  the flipped kernel, the lesson's punchline (``lessons/03_convolution.py`` computes
  them that way); under ``jax.jit`` col2im compiles to far faster code.

The tests prove the two equal, and both equal to Flax's ``nnx.Conv``. The fast NumPy
backend (``scratchcnn/fast/conv.py``) computes the same numbers a few images at a time
on every core.
"""

from typing import NamedTuple

import numpy as np

from scratchcnn.errors import ShapeError
from scratchcnn.ops._xp import total
from scratchcnn.ops.windows import (
    WindowGeometry,
    crop_hw,
    extract_windows,
    pad_hw,
    window_geometry,
    windows_to_image,
)

# A convolution's windows: the kernel's (kh, kw), moved by the strides.
ConvGeometry = WindowGeometry


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
    return window_geometry(x_shape[1:3], window, strides, padding)


def padded_size(x, geo):
    """(Hp, Wp): the spatial size of x once padded."""
    return tuple(size + lo + hi for size, (lo, hi) in zip(x.shape[1:3], geo.pads))


# ----------------------------------------------------------------------------------------
# im2col + one matrix multiply, on the whole batch.
# ----------------------------------------------------------------------------------------


class ConvCache(NamedTuple):
    """What the backward pass needs: the input, the kernel and the geometry."""

    x: object  # (N, H, W, C)
    kernel: object  # (kh, kw, C, O)
    geo: ConvGeometry
    has_bias: bool


# --8<-- [start:conv_forward]
def conv2d_forward(x, kernel, bias=None, strides=1, padding="SAME"):
    """Convolution as one matrix multiply.

    x: (N, H, W, C), kernel: (kh, kw, C, O), bias: (O,) or None -> out: (N, Ho, Wo, O).
    """
    geo = conv_geometry(x.shape, kernel.shape, strides, padding)
    out = convolve(pad_hw(x, geo.pads), kernel, geo)
    if bias is not None:
        out = out + bias
    return out, ConvCache(x, kernel, geo, bias is not None)


def convolve(x_pad, kernel, geo):
    """im2col, then one ``@``. x_pad: (N, Hp, Wp, C) -> (N, Ho, Wo, O), without bias.

    Every window becomes a row of length kh*kw*C; the HWIO kernel reshaped to
    (kh*kw*C, O) has its rows in the same order, so one product computes every pixel.
    """
    n, (ho, wo), c_out = x_pad.shape[0], geo.out_hw, kernel.shape[3]
    rows = window_rows(x_pad, geo)  # (N*Ho*Wo, kh*kw*C)
    out = rows @ kernel.reshape(-1, c_out)  # (N*Ho*Wo, O)
    return out.reshape(n, ho, wo, c_out)


def window_rows(x_pad, geo):
    """im2col as a matrix: x_pad (N, Hp, Wp, C) -> (N*Ho*Wo, kh*kw*C), one row per window."""
    windows = extract_windows(x_pad, geo.window, geo.strides, geo.out_hw)
    return windows.reshape(-1, windows.shape[3] * windows.shape[4])


# --8<-- [end:conv_forward]


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of the convolution.

    dout: (N, Ho, Wo, O) -> dx: (N, H, W, C), grads {"kernel": (kh, kw, C, O), "bias": (O,)}.

    - kernel: every window row times the output gradient of its pixel, summed: rows.T @ dout.
    - input: each window's gradient is its pixel's output gradient times the kernel, and
      the windows are added back onto the pixels they were cut from (col2im).

    ``input_grad=False`` skips dx (returned as None): the first layer's input is the
    data, whose gradient training never uses, and it is the most expensive one.
    """
    x, kernel, geo = cache.x, cache.kernel, cache.geo
    grads = {"kernel": kernel_grad(pad_hw(x, geo.pads), dout, geo)}
    if cache.has_bias:
        grads["bias"] = total(dout, (0, 1, 2))
    dx = input_grad_col2im(dout, kernel, geo, padded_size(x, geo)) if input_grad else None
    return dx, grads


# --8<-- [start:kernel_grad]
def kernel_grad(x_pad, dout, geo):
    """rows.T @ dout: (kh*kw*C, N*Ho*Wo) @ (N*Ho*Wo, O) -> (kh, kw, C, O).

    The rows are rebuilt from the padded input rather than kept from the forward pass:
    they are kh*kw times the input's size, and rebuilding them is cheaper than storing them.
    """
    shape = (*geo.window, x_pad.shape[3], dout.shape[3])
    rows = window_rows(x_pad, geo)
    return (rows.T @ dout.reshape(-1, shape[3])).reshape(shape)


# --8<-- [end:kernel_grad]


# --8<-- [start:input_grad_col2im]
def input_grad_col2im(dout, kernel, geo, padded_hw):
    """dx by col2im, the adjoint of im2col: dout (N, Ho, Wo, O) -> dx (N, H, W, C).

    The forward pass copied each window into a row and multiplied the rows by the kernel.
    Backwards, each output pixel's gradient times the transposed kernel is the gradient
    of its window (one matrix multiply), and ``windows_to_image`` adds every window back
    onto the pixels it was cut from; where windows overlap, their gradients add up.
    """
    n, (ho, wo), (kh, kw), (c_in, c_out) = dout.shape[0], geo.out_hw, geo.window, kernel.shape[2:]
    dwindows = dout.reshape(-1, c_out) @ kernel.reshape(-1, c_out).T  # (N*Ho*Wo, kh*kw*C)
    dwindows = dwindows.reshape(n, ho, wo, kh * kw, c_in)
    return windows_to_image(dwindows, geo, padded_hw)


# --8<-- [end:input_grad_col2im]


# ----------------------------------------------------------------------------------------
# Naive version: the definition, one output pixel at a time (NumPy only).
# ----------------------------------------------------------------------------------------


# --8<-- [start:conv_naive_forward]
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


# --8<-- [end:conv_naive_forward]


# --8<-- [start:conv_naive_backward]
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


# --8<-- [end:conv_naive_backward]
