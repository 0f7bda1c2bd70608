"""2-D convolution (cross-correlation, as every deep-learning library computes it).

Layout is Flax's: ``x: (N, H, W, C_in)`` (NHWC), ``kernel: (kh, kw, C_in, C_out)`` (HWIO),
``bias: (C_out,)``. Two versions compute the same thing:

- ``conv2d_naive_forward`` / ``conv2d_naive_backward``: loops over output pixels; the
  readable reference, NumPy only.
- ``conv2d_forward`` / ``conv2d_backward``: im2col + one matrix multiply; runs on NumPy
  and on ``jax.numpy``. Its input gradient is itself a convolution (of the stride-dilated
  output gradient with the flipped kernel), which is the lesson's punchline. On NumPy it
  works through the batch a cache-sized chunk of images at a time, on every core
  (``cores.py``): the same maths, about 2x faster than the whole batch at once.

The tests prove the two equal, and both equal to Flax's ``nnx.Conv``.
"""

from typing import NamedTuple

import numpy as np

from scratchcnn.errors import ShapeError
from scratchcnn.ops._xp import total
from scratchcnn.ops.cores import for_each_chunk, images_per_chunk
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
    Every window becomes a row of length kh*kw*C; the HWIO kernel reshaped to
    (kh*kw*C, O) matches that row order, so one ``@`` computes every output pixel.
    On NumPy the batch goes through in cache-sized chunks, one thread per core
    (``cores.py``); jax.jit gets the whole batch and schedules it itself.
    """
    geo = conv_geometry(x.shape, kernel.shape, strides, padding)
    cache = ConvCache(x, kernel, geo, bias is not None)
    if not isinstance(x, np.ndarray):
        return _conv_windows(pad_hw(x, geo.pads), kernel, bias, geo), cache
    c_out = kernel.shape[3]
    out = np.empty((x.shape[0], *geo.out_hw, c_out), np.result_type(x, kernel))

    def chunk(batch):
        rows = _window_rows(pad_hw(x[batch], geo.pads), geo)
        chunk_out = out[batch].reshape(rows.shape[0], c_out)  # a view: written in place
        np.matmul(rows, kernel.reshape(-1, c_out), out=chunk_out)
        if bias is not None:
            chunk_out += bias

    for_each_chunk(chunk, x.shape[0], images_per_chunk(geo.out_hw[0] * geo.out_hw[1]))
    return out, cache


# --8<-- [end:conv_forward]


def _conv_windows(x_pad, kernel, bias, geo):
    """im2col, matmul, bias. x_pad: (n, Hp, Wp, C) -> (n, Ho, Wo, O)."""
    n, (ho, wo), c_out = x_pad.shape[0], geo.out_hw, kernel.shape[3]
    out = (_window_rows(x_pad, geo) @ kernel.reshape(-1, c_out)).reshape(n, ho, wo, c_out)
    return out if bias is None else out + bias


def _window_rows(x_pad, geo):
    """im2col as a matrix: x_pad (n, Hp, Wp, C) -> (n*Ho*Wo, kh*kw*C), one row per window."""
    windows = extract_windows(x_pad, geo.window, geo.strides, geo.out_hw)
    return windows.reshape(-1, windows.shape[3] * windows.shape[4])


def conv2d_backward(dout, cache, input_grad=True):
    """Gradients of the convolution.

    dout: (N, Ho, Wo, O) -> dx: (N, H, W, C), grads {"kernel": (kh, kw, C, O), "bias": (O,)}.

    - kernel: every window row times the output gradient of its pixel, summed: rows.T @ dout.
    - input: dx is itself a convolution: of the stride-dilated output gradient with the
      flipped kernel. NumPy has a second route to the same numbers, col2im: each output
      pixel's gradient times the kernel is the gradient of its window, and the windows are
      added back in place (which JAX arrays cannot do).

    ``input_grad=False`` skips dx (returned as None): the first layer's input is the
    data, whose gradient training never uses, and it is the most expensive one.
    """
    if isinstance(dout, np.ndarray):
        return _conv2d_backward_numpy(dout, cache, input_grad)
    x, kernel, geo = cache.x, cache.kernel, cache.geo
    grads = {"kernel": _kernel_grad(pad_hw(x, geo.pads), dout, geo)}
    if cache.has_bias:
        grads["bias"] = total(dout, (0, 1, 2))
    dx = _input_grad_flipped_kernel(dout, kernel, geo, _padded_hw(x, geo)) if input_grad else None
    return dx, grads


def _conv2d_backward_numpy(dout, cache, input_grad):
    """``conv2d_backward`` a chunk of images at a time, on every core.

    Each chunk adds its own share of the kernel and bias gradients; the shares are summed
    at the end. The input gradient takes the cheaper route: col2im moves kh*kw*C_in values
    per pixel, the flipped-kernel convolution kh*kw*C_out.
    """
    x, kernel, geo = cache.x, cache.kernel, cache.geo
    route = _input_grad_col2im if kernel.shape[2] < kernel.shape[3] else _input_grad_flipped_kernel
    dx = np.empty(x.shape, dout.dtype) if input_grad else None

    def chunk(batch):
        if input_grad:
            dx[batch] = route(dout[batch], kernel, geo, _padded_hw(x, geo))
        kernel_share = _kernel_grad(pad_hw(x[batch], geo.pads), dout[batch], geo)
        return kernel_share, total(dout[batch], (0, 1, 2))

    shares = for_each_chunk(chunk, x.shape[0], images_per_chunk(geo.out_hw[0] * geo.out_hw[1]))
    grads = {"kernel": total(np.stack([k for k, _ in shares]), 0)}  # float64 accumulation
    if cache.has_bias:
        grads["bias"] = total(np.stack([b for _, b in shares]), 0)
    return dx, grads


def _padded_hw(x, geo):
    """(Hp, Wp): the spatial size of x once padded."""
    return tuple(size + lo + hi for size, (lo, hi) in zip(x.shape[1:3], geo.pads))


# --8<-- [start:kernel_grad]
def _kernel_grad(x_pad, dout, geo):
    """rows.T @ dout: (kh*kw*C, n*Ho*Wo) @ (n*Ho*Wo, O) -> (kh, kw, C, O).

    The rows are rebuilt from the padded input rather than kept from the forward pass:
    they are kh*kw times the input's size, and rebuilding them is cheaper than storing them.
    """
    shape = (*geo.window, x_pad.shape[3], dout.shape[3])
    rows, dout = _window_rows(x_pad, geo), dout.reshape(-1, shape[3])
    if isinstance(rows, np.ndarray):
        # One product per image, added in float64 (``total``): a first layer sees raw
        # images with a constant background and, with BatchNorm after it, dout sums to
        # ~0, so the kernel gradient is a small difference of large sums; one long
        # float32 accumulation over the batch loses ~1e-5 of it.
        n = x_pad.shape[0]
        per_image = rows.reshape(n, -1, rows.shape[1]).transpose(0, 2, 1) @ dout.reshape(
            n, -1, shape[3]
        )
        return total(per_image, 0).reshape(shape)
    return (rows.T @ dout).reshape(shape)


# --8<-- [end:kernel_grad]


def _input_grad_col2im(dout, kernel, geo, padded_hw):
    """dx by col2im: dout (n, Ho, Wo, O) -> dx (n, H, W, C). NumPy only (adds in place).

    Each output pixel's gradient times the kernel gives the gradient of its window
    (one matrix multiply); ``scatter_windows`` adds the windows back onto the pixels.
    """
    n, (ho, wo), (kh, kw), (c_in, c_out) = dout.shape[0], geo.out_hw, geo.window, kernel.shape[2:]
    dwindows = dout.reshape(-1, c_out) @ kernel.reshape(-1, c_out).T  # (n*Ho*Wo, kh*kw*C)
    dwindows = dwindows.reshape(n, ho, wo, kh * kw, c_in)
    return crop_hw(scatter_windows(dwindows, padded_hw, geo.window, geo.strides), geo.pads)


# --8<-- [start:input_grad_flipped_kernel]
def _input_grad_flipped_kernel(dout, kernel, geo, padded_hw):
    """dx as a 'full' convolution of the dilated output gradient with the flipped kernel."""
    (kh, kw), (sh, sw), pads, (ho, wo) = geo
    padded_h, padded_w = padded_hw
    # Rows/columns the last window never reached (when the stride does not divide evenly)
    # get zero gradient: extra padding at the bottom/right produces them.
    unreached_h = padded_h - ((ho - 1) * sh + kh)
    unreached_w = padded_w - ((wo - 1) * sw + kw)
    spread = pad_hw(
        dilate_hw(dout, (sh, sw)),
        ((kh - 1, kh - 1 + unreached_h), (kw - 1, kw - 1 + unreached_w)),
    )
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, O, C)
    stride_1_valid = ConvGeometry((kh, kw), (1, 1), ((0, 0), (0, 0)), padded_hw)
    return crop_hw(_conv_windows(spread, flipped, None, stride_1_valid), pads)


# --8<-- [end:input_grad_flipped_kernel]


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
