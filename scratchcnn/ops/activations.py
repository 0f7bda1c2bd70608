"""Element-wise activations and the reshape that joins convolutions to dense layers."""


# --8<-- [start:relu]
def relu_forward(x):
    """``max(x, 0)`` element-wise. x: any shape -> out: same shape.

    Written ``x * (x > 0)`` rather than ``maximum(x, 0)``: at exactly 0, ``jax.grad`` of
    ``maximum`` splits the slope (0.5), while the mask is a constant to ``jax.grad``, so
    the slope is 0, the one our backward pass and Flax use. Exact zeros are common on
    [0, 1] images.
    """
    return x * (x > 0), x


def relu_backward(dout, cache):
    """The gradient passes where the input was positive, and is zero elsewhere.

    At exactly 0 we use slope 0, as ``jax.nn.relu`` does, so parity holds there too.
    """
    x = cache
    return dout * (x > 0), {}


# --8<-- [end:relu]


def flatten_forward(x):
    """(N, H, W, C) -> (N, H*W*C), in NHWC order (the order Flax's ``reshape`` gives)."""
    return x.reshape(x.shape[0], -1), x.shape


def flatten_backward(dout, cache):
    """Undo the reshape: (N, H*W*C) -> (N, H, W, C)."""
    return dout.reshape(cache), {}
