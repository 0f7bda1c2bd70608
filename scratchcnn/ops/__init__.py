"""The ops: forward/backward pairs, each written once for NumPy and jax.numpy arrays.

Every op is a pair ``op_forward(...) -> (out, cache)`` and
``op_backward(dout, cache) -> (dx, grads)``, with Flax's names and layouts:

- ``dense.py``, ``activations.py`` (ReLU, flatten), ``losses.py`` (softmax cross-entropy);
- ``conv.py``: the loops of the definition and im2col with one matrix multiply;
- ``windows.py``: padding, im2col and col2im, shared by convolution and pooling;
- ``pool.py``, ``batchnorm.py``, ``dropout.py``;
- ``_xp.py``: picks NumPy or jax.numpy for the arrays at hand.

Convolution, pooling, ReLU and batch norm also have a fast NumPy version (``scratchcnn/fast/``). The
layers call those ops through an object with the names below, and ``layers.ops_for``
decides, in one place, which object that is.
"""

from contextlib import nullcontext

from scratchcnn.ops import activations, batchnorm, conv, pool


class PlainOps:
    """The ops that have a fast twin, as written in this package: whole-batch, for NumPy
    and JAX arrays alike (``jax.jit`` traces these)."""

    name = "plain"
    relu_forward = staticmethod(activations.relu_forward)
    relu_backward = staticmethod(activations.relu_backward)
    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward = staticmethod(conv.conv2d_backward)
    max_pool_forward = staticmethod(pool.max_pool_forward)
    max_pool_backward = staticmethod(pool.max_pool_backward)
    avg_pool_forward = staticmethod(pool.avg_pool_forward)
    avg_pool_backward = staticmethod(pool.avg_pool_backward)
    batchnorm_forward = staticmethod(batchnorm.batchnorm_forward)
    batchnorm_backward = staticmethod(batchnorm.batchnorm_backward)

    @staticmethod
    def whole_pass():
        """What to set up around a whole forward or backward pass: nothing."""
        return nullcontext()
