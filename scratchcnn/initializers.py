r"""How to draw a layer's first weights: the scale of a normal distribution, by rule.

Every rule here draws a kernel from $N(0, \sigma^2)$ and differs only in $\sigma$. What
sets $\sigma$ is the variance argument of lesson 15: one output of a convolution (or a
dense layer) sums ``fan_in`` products $w \cdot x$, so

    Var(y) = fan_in * Var(w) * E[x**2]

and the backward pass sums ``fan_out`` products $w \cdot \partial y$, so
``Var(dx) = fan_out * Var(w) * Var(dy)``. A rule keeps one of them at 1:

- ``lecun``: Var(w) = 1 / fan_in, forward variance kept when E[x**2] = Var(y) (no ReLU);
- ``he``: Var(w) = 2 / fan_in, the same after a ReLU, which halves E[x**2];
- ``glorot``: Var(w) = 2 / (fan_in + fan_out), the compromise between forward and backward;
- ``naive`` (N(0, 1)) and ``small`` (std 0.01) ignore the fans, the lesson's bad examples.

The layers themselves draw Flax's default (``layers.lecun_normal``, a *truncated* normal
with variance 1 / fan_in, kept so our networks equal their Flax twins); these plain
normals are for experiments on initialization (``reinitialize``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

# A rule: (fan_in, fan_out) -> the standard deviation of the kernel's entries.
Rule = Callable[[int, int], float]


# --8<-- [start:fans]
def fans(shape) -> tuple[int, int]:
    """(fan_in, fan_out) of a kernel: a conv's (kh, kw, c_in, c_out) or a dense (d_in, d_out).

    fan_in: the inputs each output sums over (kh * kw * c_in); fan_out: the outputs each
    input feeds (kh * kw * c_out), the sum of the backward pass.
    """
    *window, c_in, c_out = shape
    taps = math.prod(window)  # 1 for a dense kernel
    return taps * c_in, taps * c_out


# --8<-- [end:fans]


# --8<-- [start:rules]
def naive(fan_in: int, fan_out: int) -> float:
    """N(0, 1) whatever the layer: every layer multiplies the variance by about fan_in."""
    return 1.0


def small(fan_in: int, fan_out: int) -> float:
    """A fixed std of 0.01: every layer multiplies the variance by fan_in * 1e-4, far below 1."""
    return 0.01


def lecun(fan_in: int, fan_out: int) -> float:
    """Var(w) = 1 / fan_in: keeps the forward variance of a layer without a ReLU."""
    return math.sqrt(1.0 / fan_in)


def he(fan_in: int, fan_out: int) -> float:
    """Var(w) = 2 / fan_in: keeps the forward variance through a ReLU (He et al., 2015)."""
    return math.sqrt(2.0 / fan_in)


def glorot(fan_in: int, fan_out: int) -> float:
    """Var(w) = 2 / (fan_in + fan_out): between forward and backward (Glorot & Bengio, 2010)."""
    return math.sqrt(2.0 / (fan_in + fan_out))


# --8<-- [end:rules]

RULES: dict[str, Rule] = {
    "naive": naive,
    "small": small,
    "lecun": lecun,
    "he": he,
    "glorot": glorot,
}


def normal_kernel(rule: Rule, rng: np.random.Generator, shape, dtype=np.float32) -> np.ndarray:
    """A kernel of ``shape`` drawn from N(0, rule(fan_in, fan_out) ** 2)."""
    std = rule(*fans(shape))
    return (rng.standard_normal(shape) * std).astype(dtype)


def reinitialize(params: dict, rule: Rule, seed: int) -> dict:
    """A copy of a network's params with every kernel (``ndim > 1``) redrawn by ``rule``.

    Biases and BatchNorm parameters (1-d) are kept as they are (zeros, ones).
    """
    rng = np.random.default_rng(seed)

    def redraw(tree):
        if isinstance(tree, dict):
            return {key: redraw(value) for key, value in tree.items()}
        if tree.ndim > 1:
            return normal_kernel(rule, rng, tree.shape, tree.dtype)
        return tree.copy()

    return redraw(params)
