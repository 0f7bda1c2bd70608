"""Adversarial examples: FGSM and PGD (L-infinity and L2) against our own networks.

Images are attacked in [0, 1] (the scale a perturbation budget ``eps`` is quoted in);
the network reads them standardized, so the chain rule adds a factor ``1 / MNIST_STD``.
The network is attacked in eval mode (BatchNorm running statistics, no dropout) and on
its logits, through the cross-entropy of each example (never through softmax outputs,
whose gradient vanishes once the network is confident).

The input gradient comes from one of two places, and a test proves them equal:

- ``grad="manual"``: our hand-written backward pass (``Sequential.backward``), on NumPy;
- ``grad="jax"``: ``jax.grad`` through our own forward pass on JAX arrays, compiled
  with ``jax.jit`` (the fast choice for many PGD steps).

Each example's loss is added, not averaged, so an example's gradient does not depend
on the rest of the batch: a batch gives the same adversarial examples as the examples
one by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scratchcnn.data.preprocess import MNIST_STD, standardize_unit
from scratchcnn.errors import ScratchCNNError
from scratchcnn.fast.cores import keep_freed_memory
from scratchcnn.inference import predict_logits
from scratchcnn.ops._xp import namespace
from scratchcnn.ops.losses import log_softmax

GRADS = ("jax", "manual")
NORMS = ("linf", "l2")


class AttackError(ScratchCNNError, ValueError):
    """An attack parameter is out of range."""


# --------------------------------------------------------------------------- gradients


def per_example_loss(logits, labels):
    """Cross-entropy of each example. logits: (N, K), labels: (N,) -> (N,)."""
    xp = namespace(logits)
    picked = xp.take_along_axis(log_softmax(logits), labels[:, None].astype("int32"), axis=1)
    return -picked[:, 0]


# --8<-- [start:loss_and_gradient_manual]
def loss_and_gradient_manual(model, params, state, x, labels):
    """(per-example losses (N,), d sum(losses) / dx (N, H, W, C)) by our backward pass.

    Written against the array namespace of x, so it also runs on JAX arrays under
    ``jax.jit`` (adversarial training compiles it into the training step).
    """
    xp = namespace(x)
    logits, _, caches = model.forward(params, state, standardize_unit(x), train=False)
    log_probs = log_softmax(logits)
    one_hot = (labels[:, None] == xp.arange(logits.shape[1])[None, :]).astype(logits.dtype)
    # d loss_i / d logits_i = softmax_i - target_i: each example's own loss, not the mean.
    # At the label that is p - 1, taken as expm1(log p) to avoid one more rounding. For a
    # confident network log p itself has lost most of its digits in float32 already
    # (lesson 9 measures it; writing the label entry as -sum of the other p_k keeps them).
    probs_minus_targets = xp.where(one_hot > 0, xp.expm1(log_probs), xp.exp(log_probs))
    dx_standardized, _ = model.backward(probs_minus_targets, caches)
    losses = -(log_probs * one_hot).sum(axis=1)
    return losses, dx_standardized / xp.asarray(MNIST_STD, dtype=x.dtype)


# --8<-- [end:loss_and_gradient_manual]


_JITTED: dict[tuple, Callable] = {}


# --8<-- [start:jax_grad]
def _jax_loss_and_gradient(model) -> Callable:
    """``jax.jit(jax.value_and_grad(...))`` of our forward pass, compiled once per network."""
    key = tuple(model.layers)  # layers are frozen dataclasses: a network's identity
    if key not in _JITTED:
        import jax

        def total_loss(x, params, state, labels):
            logits, _, _ = model.forward(params, state, standardize_unit(x), train=False)
            losses = per_example_loss(logits, labels)
            return losses.sum(), losses

        keep_freed_memory()  # XLA's CPU buffers come from malloc too (see fast/cores.py)
        _JITTED[key] = jax.jit(jax.value_and_grad(total_loss, has_aux=True))
    return _JITTED[key]


# --8<-- [end:jax_grad]


def loss_and_gradient(model, params, state, x, labels, grad: str = "jax"):
    """Per-example losses (N,) and the input gradient (N, H, W, C), as NumPy arrays."""
    if grad == "manual":
        return loss_and_gradient_manual(model, params, state, np.asarray(x), np.asarray(labels))
    if grad != "jax":
        raise AttackError(f"grad must be 'jax' or 'manual', got {grad!r}.")
    (_, losses), dx = _jax_loss_and_gradient(model)(
        np.asarray(x), params, state, np.asarray(labels).astype(np.int32)
    )
    return np.asarray(losses), np.asarray(dx)


def predict(model, params, state, x) -> np.ndarray:
    """Predicted labels (N,) of images x (N, H, W, 1) in [0, 1], in eval mode."""
    return predict_logits(model, params, state, np.asarray(x)[..., 0]).argmax(axis=1)


# --------------------------------------------------------------------------- FGSM


# --8<-- [start:fgsm]
def fgsm(
    model,
    params,
    state,
    x,
    y=None,
    eps: float = 0.1,
    *,
    grad: str = "jax",
    targeted: bool = False,
    clip: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps.

    x: (N, H, W, C) in [0, 1]; y: (N,) labels, or None to attack the network's own
    predictions (so the true label cannot leak into the attack). Untargeted: move up
    the loss of y; targeted: y are the targets, move down their loss.
    """
    _check_eps(eps)
    x = np.asarray(x)
    labels = predict(model, params, state, x) if y is None else np.asarray(y)
    _, g = loss_and_gradient(model, params, state, x, labels, grad)
    direction = -np.sign(g) if targeted else np.sign(g)
    return np.clip(x + eps * direction, *clip).astype(x.dtype)


# --8<-- [end:fgsm]


# --------------------------------------------------------------------------- PGD


# --8<-- [start:pgd]
def pgd(
    model,
    params,
    state,
    x,
    y=None,
    eps: float = 0.3,
    *,
    steps: int = 40,
    step_size: float = 0.01,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    rng: np.random.Generator | int | None = 0,
    grad: str = "jax",
    targeted: bool = False,
    clip: tuple[float, float] = (0.0, 1.0),
) -> np.ndarray:
    """Projected gradient descent (Madry et al. 2018): many small steps, each projected
    back onto the eps-ball around x (L-infinity or L2) and into the image range.

    With ``restarts > 1`` every restart begins at a new random point, and each example
    keeps its worst case: an example the attack fooled beats one it did not, and among
    equals the higher loss (lower, for a targeted attack) wins.
    """
    if norm not in NORMS:
        raise AttackError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    _check_eps(eps, norm)
    if not (steps >= 1 and restarts >= 1 and 0 < step_size < math.inf):  # NaN fails too
        raise AttackError(
            f"PGD needs steps >= 1, restarts >= 1 and step size > 0; got steps={steps}, "
            f"restarts={restarts}, step size={step_size}."
        )
    x = np.asarray(x)
    labels = predict(model, params, state, x) if y is None else np.asarray(y)
    rng = np.random.default_rng(rng)
    best, best_success, best_loss = x.copy(), None, None
    for _ in range(restarts):
        x_adv = _start(x, eps, norm, rng, clip) if random_start else x.copy()
        for _ in range(steps):
            _, g = loss_and_gradient(model, params, state, x_adv, labels, grad)
            x_adv = _ascend(x_adv, -g if targeted else g, step_size, norm)
            x_adv = np.clip(_project(x_adv, x, eps, norm), *clip).astype(x.dtype)
        loss, _ = loss_and_gradient(model, params, state, x_adv, labels, grad)
        success = (predict(model, params, state, x_adv) == labels) == targeted
        score = -loss if targeted else loss
        if best_success is None:
            best, best_success, best_loss = x_adv, success, score
            continue
        better = (success & ~best_success) | ((success == best_success) & (score > best_loss))
        best = np.where(better[:, None, None, None], x_adv, best)
        best_success, best_loss = best_success | success, np.where(better, score, best_loss)
    return best


# --8<-- [end:pgd]


def _check_eps(eps: float, norm: str = "linf") -> None:
    """L-infinity budgets are pixel changes in [0, 1]; an L2 budget is any length >= 0."""
    if norm == "linf" and not 0 <= eps <= 1:  # NaN is in no range
        raise AttackError(f"eps must be in [0, 1] for pixels in [0, 1] (L-infinity); got {eps}.")
    if not 0 <= eps < math.inf:
        raise AttackError(f"eps must be a finite length >= 0 (L2); got {eps}.")


def _l2(v: np.ndarray) -> np.ndarray:
    """Per-example L2 norm of (N, H, W, C), shaped (N, 1, 1, 1) for broadcasting."""
    return np.sqrt((v.astype(np.float64) ** 2).sum(axis=(1, 2, 3), keepdims=True))


# --8<-- [start:ascend_project]
def _ascend(x_adv, g, step_size, norm):
    """One step uphill: the sign of g (L-infinity) or g scaled to length step_size (L2)."""
    if norm == "linf":
        return x_adv + step_size * np.sign(g)
    return x_adv + step_size * g / np.maximum(_l2(g), 1e-12)


def _project(x_adv, x, eps, norm):
    """The closest point to x_adv inside the eps-ball around x."""
    delta = x_adv - x
    if norm == "linf":
        return x + np.clip(delta, -eps, eps)
    return x + delta * np.minimum(1.0, eps / np.maximum(_l2(delta), 1e-12))


# --8<-- [end:ascend_project]


# --8<-- [start:start]
def _start(x, eps, norm, rng, clip):
    """A random point of the eps-ball (uniform per pixel for L-inf; in the L2 ball)."""
    if norm == "linf":
        delta = rng.uniform(-eps, eps, size=x.shape)
    else:
        direction = rng.standard_normal(x.shape)
        direction /= _l2(direction)
        radius = eps * rng.random((len(x), 1, 1, 1)) ** (1.0 / x[0].size)
        delta = direction * radius
    return np.clip(x + delta, *clip).astype(x.dtype)


# --8<-- [end:start]


# --------------------------------------------------------------------------- training


ADVERSARIAL = ("none", "fgsm", "pgd", "mixed")


# --8<-- [start:adversarial_training]
@dataclass(frozen=True)
class AdversarialTraining:
    """How training batches are attacked.

    - ``fgsm``: FGSM from a random start, step 1.25 * eps ("fast is better than free",
      Wong, Rice & Kolter 2020);
    - ``pgd``: ``steps`` PGD steps from a random start (Madry et al. 2018), each
      2.5 * eps / steps long (the step rule of MadryLab's ``robustness`` library,
      Engstrom et al. 2019; Madry et al.'s own MNIST training takes 40 steps of 0.01 at
      eps 0.3);
    - ``mixed``: each batch twice, clean and FGSM-attacked (what the seed projects did).
    """

    method: str
    eps: float = 0.3
    steps: int = 7

    @property
    def attack_steps(self) -> int:
        return self.steps if self.method == "pgd" else 1

    @property
    def step_size(self) -> float:
        return 2.5 * self.eps / self.steps if self.method == "pgd" else 1.25 * self.eps


# --8<-- [end:adversarial_training]


def uniform_noise(rng, shape, eps: float, dtype):
    """Uniform(-eps, eps) noise from a NumPy Generator or a JAX key."""
    if isinstance(rng, np.random.Generator):
        return rng.uniform(-eps, eps, shape).astype(dtype)
    import jax

    return jax.random.uniform(rng, shape, dtype, -eps, eps)


# --8<-- [start:attack_batch]
def attack_batch(model, params, state, x, labels, rng, config: AdversarialTraining):
    """Adversarial versions of a training batch x (N, H, W, C) in [0, 1].

    Uses our backward pass for the input gradient, so it runs on NumPy and inside the
    jitted JAX training step alike. The network is attacked in eval mode.
    """
    xp = namespace(x)
    delta = uniform_noise(rng, x.shape, config.eps, x.dtype)
    for _ in range(config.attack_steps):
        _, g = loss_and_gradient_manual(model, params, state, xp.clip(x + delta, 0, 1), labels)
        delta = xp.clip(delta + config.step_size * xp.sign(g), -config.eps, config.eps)
    return xp.clip(x + delta, 0, 1).astype(x.dtype)


# --8<-- [end:attack_batch]


# --8<-- [start:training_batch]
def training_batch(model, params, state, x, labels, rng, config: AdversarialTraining):
    """The batch the optimizer sees: adversarial, or clean + adversarial for "mixed"."""
    adversarial = attack_batch(model, params, state, x, labels, rng, config)
    if config.method != "mixed":
        return adversarial, labels
    xp = namespace(x)
    return xp.concatenate([x, adversarial]), xp.concatenate([labels, labels])


# --8<-- [end:training_batch]
