"""Batch normalisation, with Flax's conventions (``nnx.BatchNorm``).

- Statistics are taken over every axis but the last (channels): (N, H, W) for images,
  N for vectors.
- Train mode normalises with the batch mean and the *biased* batch variance (divide by
  the count, not count - 1) and updates the running statistics as
  ``running = momentum * running + (1 - momentum) * batch`` with ``momentum = 0.99``.
  Note the direction: momentum weighs the *old* value (PyTorch's 0.1 weighs the new one).
- Eval mode normalises with the running statistics and changes nothing.
- ``epsilon = 1e-5`` is added to the variance before the square root.

Because it carries state, the forward pass returns ``(out, new_state, cache)``.
"""

from scratchcnn.ops._xp import average, namespace, total


# --8<-- [start:batchnorm_forward]
def batchnorm_forward(x, params, state, *, train, momentum=0.99, epsilon=1e-5):
    """Normalise each channel, then scale and shift it.

    x: (..., C); params {"scale": (C,), "bias": (C,)}; state {"mean": (C,), "var": (C,)}.
    Returns out (same shape as x), the new state, and the cache.
    """
    xp = namespace(x)
    axes = tuple(range(x.ndim - 1))
    if train:
        mean = average(x, axes)
        var = average((x - mean) ** 2, axes)  # biased, two-pass: stable in float32
        new_state = {
            "mean": momentum * state["mean"] + (1 - momentum) * mean,
            "var": momentum * state["var"] + (1 - momentum) * var,
        }
    else:
        mean, var = state["mean"], state["var"]
        new_state = state
    inv_std = 1 / xp.sqrt(var + epsilon)
    x_hat = (x - mean) * inv_std
    out = x_hat * params["scale"] + params["bias"]
    return out, new_state, (x_hat, inv_std, params["scale"], train)


# --8<-- [end:batchnorm_forward]


# --8<-- [start:batchnorm_backward]
def batchnorm_backward(dout, cache):
    """Gradients of batch norm.

    dout: (..., C) -> dx (same shape), grads {"scale": (C,), "bias": (C,)}.
    In train mode the mean and variance depend on every x in the batch, so each dx
    gets two correction terms (cs231n's compact form):
    ``dx = inv_std * (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat))``.
    In eval mode they are constants and dx is just ``dx_hat * inv_std``.
    """
    x_hat, inv_std, scale, train = cache
    axes = tuple(range(dout.ndim - 1))
    grads = {"scale": total(dout * x_hat, axes), "bias": total(dout, axes)}
    dx_hat = dout * scale
    if train:
        dx_hat = dx_hat - average(dx_hat, axes) - x_hat * average(dx_hat * x_hat, axes)
    return dx_hat * inv_std, grads


# --8<-- [end:batchnorm_backward]
