"""The convolution of ``scratchcnn/ops/conv.py`` on NumPy arrays, made fast on a CPU.

The same maths (im2col + one matrix multiply), a cache-sized chunk of images at a time on
every core (``cores.py``), with im2col as one strided copy (``windows.py``), col2im a
kernel tap at a time, and results written in place. Lesson 13 measures each step.
"""

import numpy as np

from scratchcnn.fast.cores import for_each_chunk, images_per_chunk
from scratchcnn.fast.windows import extract_windows
from scratchcnn.ops._xp import total
from scratchcnn.ops.conv import ConvCache, conv_geometry, padded_size
from scratchcnn.ops.windows import crop_hw, pad_hw, window_taps


def window_rows(x_pad, geo):
    """im2col as a matrix: x_pad (n, Hp, Wp, C) -> (n*Ho*Wo, kh*kw*C), one row per window."""
    windows = extract_windows(x_pad, geo.window, geo.strides, geo.out_hw)
    return windows.reshape(-1, windows.shape[3] * windows.shape[4])


def chunk_size(x, geo) -> int:
    """Images of x (N, H, W, C) per chunk: as many as keep the chunk's window rows
    (Ho*Wo rows of kh*kw*C values per image) cache-sized."""
    (ho, wo), (kh, kw) = geo.out_hw, geo.window
    return images_per_chunk(ho * wo * kh * kw * x.shape[3], x.shape[0])


# --8<-- [start:conv_forward]
def conv2d_forward(x, kernel, bias=None, strides=1, padding="SAME"):
    """``ops.conv.conv2d_forward``, a cache-sized chunk of images at a time, on every core.

    Each chunk writes its matrix product straight into its slice of the output.
    """
    geo = conv_geometry(x.shape, kernel.shape, strides, padding)
    c_out = kernel.shape[3]
    out = np.empty((x.shape[0], *geo.out_hw, c_out), np.result_type(x, kernel))

    def chunk(batch):
        rows = window_rows(pad_hw(x[batch], geo.pads), geo)
        chunk_out = out[batch].reshape(rows.shape[0], c_out)  # a view: written in place
        np.matmul(rows, kernel.reshape(-1, c_out), out=chunk_out)
        if bias is not None:
            chunk_out += bias

    for_each_chunk(chunk, x.shape[0], chunk_size(x, geo))
    return out, ConvCache(x, kernel, geo, bias is not None)


# --8<-- [end:conv_forward]


def conv2d_backward(dout, cache, input_grad=True):
    """``ops.conv.conv2d_backward``, a chunk of images at a time, on every core.

    Each chunk adds its own share of the kernel and bias gradients; the shares are summed
    at the end. The input gradient is col2im, a kernel tap at a time.
    """
    x, kernel, geo = cache.x, cache.kernel, cache.geo
    dx = np.empty(x.shape, dout.dtype) if input_grad else None

    def chunk(batch):
        if input_grad:
            dx[batch] = input_grad_col2im(dout[batch], kernel, geo, padded_size(x, geo))
        kernel_share = kernel_grad(pad_hw(x[batch], geo.pads), dout[batch], geo)
        return kernel_share, total(dout[batch], (0, 1, 2))

    if x.shape[0]:
        shares = for_each_chunk(chunk, x.shape[0], chunk_size(x, geo))
    else:  # no images: zero gradients
        shares = [(np.zeros(kernel.shape, dout.dtype), np.zeros(kernel.shape[3], dout.dtype))]
    grads = {"kernel": total(np.stack([k for k, _ in shares]), 0)}  # float64 accumulation
    if cache.has_bias:
        grads["bias"] = total(np.stack([b for _, b in shares]), 0)
    return dx, grads


def kernel_grad(x_pad, dout, geo):
    """``ops.conv.kernel_grad`` of one chunk, with the fast im2col: rows.T @ dout.

    x_pad: (n, Hp, Wp, C), dout: (n, Ho, Wo, O) -> (kh, kw, C, O). ``conv2d_backward``
    adds the chunks' shares in float64, so the rounding error does not grow with the
    number of chunks: on a first layer of MNIST digits with BatchNorm after it (dout
    summing to ~0), 4e-7 of the largest entry in float32, as when each image's share was
    its own product.
    """
    shape = (*geo.window, x_pad.shape[3], dout.shape[3])
    rows = window_rows(x_pad, geo)
    return (rows.T @ dout.reshape(-1, shape[3])).reshape(shape)


def input_grad_col2im(dout, kernel, geo, padded_hw):
    """dx by col2im, one kernel tap at a time: dout (n, Ho, Wo, O) -> dx (n, H, W, C).

    The plain version multiplies once, into every window's gradient (n*Ho*Wo, kh*kw*C),
    then adds that matrix onto dx tap by tap, each tap a strided slice only C values
    wide: with C = 10 or 32, NumPy's overhead per run of C values costs more than the
    adding. Here each tap's share is its own contiguous product (n*Ho*Wo, C), added into
    its strided view of dx in runs of Wo*C values: kh*kw thin multiplies instead of one.
    """
    n, (ho, wo), (kh, kw), (c_in, c_out) = dout.shape[0], geo.out_hw, geo.window, kernel.shape[2:]
    dout_rows = dout.reshape(-1, c_out)
    dx_pad = np.zeros((n, *padded_hw, c_in), dout.dtype)
    dx_taps = window_taps(dx_pad, geo.window, geo.strides, geo.out_hw)
    for tap_kernel, dx_tap in zip(kernel.reshape(kh * kw, c_in, c_out), dx_taps):
        dx_tap += (dout_rows @ tap_kernel.T).reshape(n, ho, wo, c_in)
    return crop_hw(dx_pad, geo.pads)
