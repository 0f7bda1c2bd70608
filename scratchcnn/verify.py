"""Interval bound propagation (IBP): a robust accuracy no attack can lower.

An attack that fails proves nothing: a stronger one might succeed. Its accuracy is an
*upper* bound on the true robust accuracy. A *lower* bound needs a proof that no image
in the eps-box around x changes the prediction. Interval arithmetic gives one: push the
whole box through the network, layer by layer, keeping for every activation an interval
[lower, upper] that contains its value for every image in the box.

- **Affine layers** (convolution, dense, batch norm in eval mode): write the interval as a
  center and a radius. The center goes through the layer as an image would, and the radius
  through the same layer with every weight replaced by its absolute value and no bias:
  ``|W (c + d) - W c| <= |W| |d|`` for every offset ``d`` with ``|d| <= r``.
- **Monotone layers** (ReLU, max and average pooling, flatten, dropout in eval mode):
  a larger input never gives a smaller output, so the bounds of the output are the layer
  applied to the lower and to the upper bound.
- **A residual block**: the bounds of a sum are the sums of the bounds.

The last dense layer is folded into the question asked (Gowal et al. 2018, "On the
Effectiveness of Interval Bound Propagation for Training Verifiably Robust Models"):
instead of bounding each logit and subtracting (which forgets that both logits move
together), bound each margin ``z_y - z_k`` directly, an affine function of the
penultimate activations. An image is *verified* when every margin's lower bound is
positive: no image in its box, adversarial or not, is misclassified.

``verified`` computes the bounds in float64: they bound the network computed in exact
arithmetic, which the float32 network follows to about 1e-6. The same functions run on
JAX arrays, so ``jax.grad`` can differentiate the bounds: ``ibp_loss`` trains a network
for them (Gowal et al.'s interval bound training).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.errors import InputError
from scratchcnn.layers import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    ReLU,
    Sequential,
    ops_for,
)
from scratchcnn.ops import batchnorm, dense
from scratchcnn.ops._xp import namespace
from scratchcnn.ops.losses import softmax_cross_entropy_forward
from scratchcnn.residual import Residual

MONOTONE = (ReLU, MaxPool, AvgPool, GlobalAvgPool, Flatten, Dropout)


class Box(NamedTuple):
    """Element-wise bounds: lower <= activation <= upper, same shape as the activation."""

    lower: np.ndarray
    upper: np.ndarray

    @property
    def center(self) -> np.ndarray:
        return (self.lower + self.upper) / 2

    @property
    def radius(self) -> np.ndarray:
        return (self.upper - self.lower) / 2


def from_center(center, radius) -> Box:
    return Box(center - radius, center + radius)


# --8<-- [start:input_box]
def input_box(x_unit, eps: float) -> Box:
    """The eps-box around images x_unit (N, 28, 28, 1) in [0, 1], clipped to [0, 1] and
    standardized as the network sees it (a positive scale: the order is kept). NumPy or
    JAX arrays, in their own dtype."""
    xp = namespace(x_unit)
    lower, upper = xp.clip(x_unit - eps, 0, 1), xp.clip(x_unit + eps, 0, 1)
    return Box(standardize_unit(lower), standardize_unit(upper))


# --8<-- [end:input_box]


# --8<-- [start:layer_bounds]
def layer_bounds(layer, params, state, box: Box) -> Box:
    """Bounds on a layer's output over every input in ``box`` (eval mode)."""
    if isinstance(layer, MONOTONE):
        return Box(*(layer.forward(params, state, b, train=False)[0] for b in box))
    if isinstance(layer, Conv):
        kernel, bias, convolve = (
            params["kernel"],
            params.get("bias"),
            ops_for(box.lower).conv2d_forward,
        )
        center, _ = convolve(box.center, kernel, bias, layer.strides, layer.padding)
        radius, _ = convolve(box.radius, abs(kernel), None, layer.strides, layer.padding)
        return from_center(center, radius)
    if isinstance(layer, Dense):
        center, _ = dense.dense_forward(box.center, params["kernel"], params.get("bias"))
        radius, _ = dense.dense_forward(box.radius, abs(params["kernel"]))
        return from_center(center, radius)
    if isinstance(layer, BatchNorm):  # eval mode: x * scale / std + shift, per channel
        center, _, _ = batchnorm.batchnorm_forward(box.center, params, state, train=False,
                                                   epsilon=layer.epsilon)  # fmt: skip
        slope = params["scale"] / (state["var"] + layer.epsilon) ** 0.5
        return from_center(center, box.radius * abs(slope))
    if isinstance(layer, Residual):
        b, s = (
            network_bounds(branch, params.get(name, {}), state.get(name, {}), box)
            for name, branch in layer.branches().items()
        )  # body, shortcut
        xp = namespace(b.lower)
        return Box(xp.maximum(b.lower + s.lower, 0), xp.maximum(b.upper + s.upper, 0))
    raise InputError(f"interval bounds are not written for {type(layer).__name__} layers.")


# --8<-- [end:layer_bounds]


def network_bounds(model: Sequential, params, state, box: Box) -> Box:
    """Push ``box`` through every layer of ``model``; returns the bounds of its output."""
    for name, layer in zip(model.names, model.layers):
        box = layer_bounds(layer, params.get(name, {}), state.get(name, {}), box)
    return box


def as_float64(tree):
    """params/state with every array in float64: the bounds are computed in float64."""
    if isinstance(tree, dict):
        return {key: as_float64(value) for key, value in tree.items()}
    return np.asarray(tree, np.float64)


# --8<-- [start:margin_bounds]
def margin_lower_bounds(model: Sequential, params, state, x_unit, labels, eps: float):
    """Lower bounds on the margins z_y - z_k over the eps-box: (N, K), +inf at k = y.

    The last layer must be Dense (every registered network ends with one): its margins
    are affine in the penultimate activations h, ``(w_y - w_k) . h + (b_y - b_k)``, so
    their lowest value over h's box is ``(w_y - w_k) . center - |w_y - w_k| . radius``.
    Computed in the dtype of x_unit and params (NumPy or JAX arrays).
    """
    last = model.layers[-1]
    if not isinstance(last, Dense):
        raise InputError(f"verification needs a Dense last layer, not {type(last).__name__}.")
    xp = namespace(x_unit)
    body = Sequential(model.layers[:-1])  # same layer names: the last layer comes last
    h = network_bounds(body, params, state, input_box(x_unit, eps))
    kernel, bias = params[model.names[-1]]["kernel"], params[model.names[-1]].get("bias")
    w_diff = kernel[:, labels].T[:, :, None] - kernel[None]  # (N, D, K): w_y - w_k
    margins = xp.einsum("nd,ndk->nk", h.center, w_diff)
    margins = margins - xp.einsum("nd,ndk->nk", h.radius, abs(w_diff))
    if bias is not None:
        margins = margins + (bias[labels][:, None] - bias[None])
    is_label = xp.arange(kernel.shape[1])[None] == labels[:, None]
    return xp.where(is_label, xp.inf, margins)


# --8<-- [end:margin_bounds]


def verified(model, params, state, x_unit, labels, eps: float, batch_size: int = 250):
    """(N,) bool: True where IBP proves every image in the eps-box is classified as its
    label. x_unit: (N, 28, 28, 1) in [0, 1]; labels: (N,). Batches keep memory flat."""
    if not 0 <= eps <= 1:
        raise InputError(f"eps must be in [0, 1], got {eps}.")
    labels, x_unit = np.asarray(labels, np.int64), np.asarray(x_unit, np.float64)
    params, state = as_float64(params), as_float64(state)
    out = [
        margin_lower_bounds(model, params, state, x_unit[i : i + batch_size],
                            labels[i : i + batch_size], eps).min(axis=1) > 0
        for i in range(0, len(labels), batch_size)
    ]  # fmt: skip
    return np.concatenate(out) if out else np.zeros(0, bool)


def verified_accuracy(model, params, state, x_unit, labels, eps: float) -> float:
    """The fraction of images verified at eps: a lower bound on the robust accuracy."""
    return float(verified(model, params, state, x_unit, labels, eps).mean())


# --8<-- [start:ibp_loss]
def ibp_loss(model, params, x_unit, labels, eps: float, kappa: float):
    """Interval bound training's loss (Gowal et al. 2018), for a network without batch
    norm or dropout: kappa * cross-entropy of the clean logits + (1 - kappa) *
    cross-entropy of the worst-case logits, whose entry k is the upper bound of
    z_k - z_y over the eps-box (0 at k = y): the loss is small only when every margin's
    lower bound is large. Differentiate it with ``jax.grad`` (JAX arrays).
    """
    xp = namespace(x_unit)
    clean, _, _ = model.forward(params, {}, standardize_unit(x_unit), train=False)
    worst = -margin_lower_bounds(model, params, {}, x_unit, labels, eps)
    worst = xp.where(xp.isinf(worst), 0.0, worst)  # -inf at the label: z_y - z_y = 0
    clean_loss, _ = softmax_cross_entropy_forward(clean, labels)
    worst_loss, _ = softmax_cross_entropy_forward(worst, labels)
    return kappa * clean_loss + (1 - kappa) * worst_loss


def ibp_schedule(step: int, total_steps: int, eps: float) -> tuple[float, float]:
    """(eps, kappa) for a step: clean training for the first 5% of the steps, then eps
    growing linearly from 0 to its final value and kappa from 1 to 0.5 over the next half,
    then both held. A box at full size from the start stops the network learning at all."""
    warmup, ramp = 0.05 * total_steps, 0.5 * total_steps
    fraction = min(max(step - warmup, 0) / ramp, 1.0)
    return eps * fraction, 1.0 - 0.5 * fraction


# --8<-- [end:ibp_loss]


# --8<-- [start:train_for_bounds]
def train_for_bounds(model, x_unit, labels, *, eps: float, epochs: int, batch_size: int = 128,
                     lr: float = 1e-3, seed: int = 0, log=print):  # fmt: skip
    """Train ``model`` (no batch norm, no dropout) on ``ibp_loss`` with ``ibp_schedule``,
    Adam, jitted; the gradient of the bounds by ``jax.grad`` through our own layers.

    x_unit: (N, 28, 28, 1) in [0, 1], labels: (N,). Returns the params as NumPy arrays.
    """
    import jax

    from scratchcnn import optim

    unsupported = [type(layer).__name__ for layer in model.layers
                   if isinstance(layer, BatchNorm | Dropout | Residual)]  # fmt: skip
    if unsupported:
        raise InputError("interval bound training takes a network without batch norm, "
                         f"dropout or residual blocks; this one has {unsupported[0]}.")  # fmt: skip
    optimizer = optim.Adam(lr)
    params, _ = model.init(seed)
    opt_state = optimizer.init(params)

    @jax.jit
    def step(params, opt_state, x, y, eps, kappa):
        loss, grads = jax.value_and_grad(ibp_loss, argnums=1)(model, params, x, y, eps, kappa)
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, opt_state, loss

    rng, steps_per_epoch = np.random.default_rng(seed), len(labels) // batch_size
    total, done = epochs * steps_per_epoch, 0
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        for i in range(steps_per_epoch):
            batch = order[i * batch_size : (i + 1) * batch_size]
            eps_now, kappa = ibp_schedule(done, total, eps)
            params, opt_state, loss = step(params, opt_state, x_unit[batch], labels[batch],
                                           eps_now, kappa)  # fmt: skip
            done += 1
        log(f"epoch {epoch + 1}/{epochs}: loss {float(loss):.3f} at eps {eps_now:.3f}")
    return jax.tree.map(np.asarray, params)


# --8<-- [end:train_for_bounds]
