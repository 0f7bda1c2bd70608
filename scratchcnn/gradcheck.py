"""Finite-difference gradient checking (cs231n's ``gradient_check.py``, in small pieces).

A hand-written backward pass is only trustworthy once it agrees with the definition of
the derivative. Nudge one input by ``+eps`` and ``-eps``, see how much a scalar changes,
divide by ``2 eps``: that is the central difference, accurate to O(eps^2). Run in float64;
in float32 the rounding error of f swamps the difference.
"""

import numpy as np


# --8<-- [start:numerical_gradient]
def numerical_gradient(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar function ``f`` at ``x`` (any shape).

    ``f`` is called 2 * x.size times and must read the very array ``x`` (it is nudged in
    place and restored after each nudge), so ``x`` must be a writeable, contiguous float64
    NumPy array: in float32 a 1e-6 nudge is mostly lost to rounding.
    """
    if not (
        isinstance(x, np.ndarray)
        and x.dtype == np.float64
        and x.flags.c_contiguous
        and x.flags.writeable
    ):
        raise TypeError("numerical_gradient needs a writeable, C-contiguous float64 ndarray.")
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x, flat_grad = x.reshape(-1), grad.reshape(-1)  # views: writes go into x / grad
    for i in range(flat_x.size):
        original = flat_x[i]
        flat_x[i] = original + eps
        f_plus = f(x)
        flat_x[i] = original - eps
        f_minus = f(x)
        flat_x[i] = original
        flat_grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


# --8<-- [end:numerical_gradient]


# --8<-- [start:relative_error]
def relative_error(a, b) -> float:
    """Largest absolute difference, relative to the largest magnitude of either array.

    Element-wise relative error blows up on entries that are zero in both; dividing by the
    largest magnitude keeps the measure meaningful for every element (at the price of
    judging small entries against the largest one).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return float(np.abs(a - b).max(initial=0.0) / scale) if scale > 0 else 0.0


# --8<-- [end:relative_error]
