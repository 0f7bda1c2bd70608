"""Fully connected (dense) layer: ``out = x @ kernel + bias``.

Shapes follow Flax's ``nnx.Linear``: ``x: (N, D_in)``, ``kernel: (D_in, D_out)``,
``bias: (D_out,)``.
"""

from scratchcnn.ops._xp import total


# --8<-- [start:dense]
def dense_forward(x, kernel, bias=None):
    """Affine map of a batch of vectors.

    x: (N, D_in), kernel: (D_in, D_out), bias: (D_out,) or None -> out: (N, D_out).
    The cache keeps the input and the kernel: the backward pass needs both.
    """
    out = x @ kernel
    if bias is not None:
        out = out + bias
    return out, (x, kernel, bias is not None)


def dense_backward(dout, cache):
    """Gradients of the dense layer.

    dout: (N, D_out) -> dx: (N, D_in), grads {"kernel": (D_in, D_out), "bias": (D_out,)}.
    Each output unit j adds ``x[:, i] * kernel[i, j]``, so the kernel's gradient is the
    outer product of inputs and output gradients summed over the batch.
    """
    x, kernel, has_bias = cache
    dx = dout @ kernel.T
    grads = {"kernel": x.T @ dout}
    if has_bias:
        grads["bias"] = total(dout, 0)
    return dx, grads


# --8<-- [end:dense]
