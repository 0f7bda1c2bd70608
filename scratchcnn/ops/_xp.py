"""Pick the array library (NumPy or jax.numpy) that an op should compute with.

Every op is written once against a namespace ``xp`` so the very same lines run on NumPy
arrays (fast on a CPU, easy to inspect) and on JAX arrays (so ``jax.grad`` can
differentiate our forward pass and ``jax.jit`` can compile our hand-written training step).
That is also why the ops never write into an array in place: JAX arrays are immutable.
"""

import sys

import numpy as np


def _is_jax_array(a) -> bool:
    # If JAX was never imported there can be no JAX arrays; checking sys.modules keeps
    # NumPy-only users from paying JAX's import time.
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(a, jax.Array)


def namespace(*arrays):
    """Return ``jax.numpy`` if any argument is a JAX array (or tracer), else ``numpy``."""
    if any(_is_jax_array(a) for a in arrays):
        return sys.modules["jax.numpy"]
    return np


def total(x, axis):
    """``sum(x, axis)``, accumulated precisely enough for gradient parity in float32.

    NumPy adds float32 values one after another when the reduced axes are not the
    contiguous last one (e.g. over (N, H, W) of an NHWC array), so the rounding error grows
    with the count: about 1e-5 relative over a batch of MNIST feature maps. Accumulating
    in float64 removes it. XLA already reduces accurately, so JAX arrays sum as they are.
    """
    if isinstance(x, np.ndarray) and x.dtype == np.float32:
        return np.sum(x, axis=axis, dtype=np.float64).astype(np.float32)
    return namespace(x).sum(x, axis=axis)


def average(x, axis):
    """``mean(x, axis)`` with the precise accumulation of ``total``."""
    axes = (axis,) if isinstance(axis, int) else axis
    count = 1
    for a in axes:
        count *= x.shape[a]
    return total(x, axis) / count
