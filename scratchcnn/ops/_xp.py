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
