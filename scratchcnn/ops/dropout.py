"""Inverted dropout and channel (2-D) dropout.

At train time each unit is kept with probability ``keep = 1 - rate`` and the kept ones are
divided by ``keep``, so the expected output equals the input and eval mode is simply the
identity. The mask comes from an explicit generator, never from hidden global state:

- a ``numpy.random.Generator``: ``mask = rng.random(shape) < keep``;
- a JAX PRNG key: ``mask = jax.random.bernoulli(key, keep, shape)``, the very call Flax's
  ``nnx.Dropout`` makes, so the same key gives Flax and us the same mask.
"""

import numpy as np

from scratchcnn.errors import InputError
from scratchcnn.ops._xp import namespace


# --8<-- [start:dropout]
def dropout_mask(rng, keep, shape):
    """Boolean keep-mask of ``shape`` drawn from a NumPy Generator or a JAX key."""
    if isinstance(rng, np.random.Generator):
        return rng.random(shape) < keep
    import jax  # only reached with a JAX key, so JAX is already imported

    return jax.random.bernoulli(rng, keep, shape)


def dropout_forward(x, rate, rng, broadcast_dims=()):
    """Zero each unit with probability ``rate``; scale survivors by 1 / (1 - rate).

    x: any shape. broadcast_dims: axes that share one mask value, e.g. (1, 2) on NHWC
    drops whole channels (see ``channel_dropout_forward``).
    """
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"dropout rate must be in [0, 1], got {rate}.")
    xp = namespace(x)
    if rate == 0.0:
        return x, None
    if isinstance(rng, np.random.Generator) and xp is not np:
        # Under jax.jit a NumPy draw would happen once, at trace time, and be frozen.
        raise TypeError("dropout on JAX arrays needs a JAX key, not a numpy Generator.")
    keep = 1.0 - rate
    mask_shape = tuple(1 if d in broadcast_dims else n for d, n in enumerate(x.shape))
    mask = xp.broadcast_to(xp.asarray(dropout_mask(rng, keep, mask_shape)), x.shape)
    if rate == 1.0:
        return xp.zeros_like(x), (mask, keep)
    return xp.where(mask, x / keep, 0), (mask, keep)


def dropout_backward(dout, cache):
    """The gradient flows through kept units, scaled the same way."""
    if cache is None:
        return dout, {}
    mask, keep = cache
    xp = namespace(dout, mask)
    if keep == 0.0:
        return xp.zeros_like(dout), {}
    return xp.where(mask, dout / keep, 0), {}


# --8<-- [end:dropout]


def channel_dropout_forward(x, rate, rng):
    """Drop whole feature maps (PyTorch's ``Dropout2d``). x: (N, H, W, C).

    Neighbouring pixels are strongly correlated, so dropping single pixels barely
    regularises a conv layer; dropping a channel for the whole image does.
    """
    return dropout_forward(x, rate, rng, broadcast_dims=(1, 2))


channel_dropout_backward = dropout_backward
