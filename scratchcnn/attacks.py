"""Adversarial examples: FGSM and PGD (L-infinity and L2) against our own networks.

Images are attacked in [0, 1] (the scale a perturbation budget ``eps`` is quoted in);
the network reads them standardized, so the chain rule adds a factor ``1 / MNIST_STD``.
The network is attacked in eval mode (BatchNorm running statistics, no dropout) and on
its logits, through a loss of each example (never through softmax outputs, whose
gradient vanishes once the network is confident): the cross-entropy, Carlini & Wagner's
margin, or Croce & Hein's DLR loss, untargeted or targeted (``LOSSES``).

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
from scratchcnn.fast.jit_chunks import chunk_size, eval_in_chunks, over_chunks
from scratchcnn.inference import as_unit_images, check_finite_outputs, predict_logits
from scratchcnn.ops._xp import namespace
from scratchcnn.ops.losses import log_softmax

GRADS = ("jax", "manual")
NORMS = ("linf", "l2")
LOSSES = ("ce", "cw", "dlr", "dlr_targeted")


class AttackError(ScratchCNNError, ValueError):
    """An attack parameter is out of range."""


# --------------------------------------------------------------------------- losses
#
# Each loss an attack can climb, per example: logits (N, K), labels (N,), and for the
# targeted DLR loss a target class per example (N,). Each is written twice: the loss in
# array code (what ``jax.grad`` differentiates on the "jax" path), and its gradient with
# respect to the logits by hand (what our backward pass starts from on the "manual" path).


def _one_hot(classes, logits):
    """(N, K) in the logits' dtype: 1 at each example's class in ``classes`` (N,), else 0."""
    xp = namespace(logits)
    hits = classes[:, None].astype("int32") == xp.arange(logits.shape[1])[None, :]
    return hits.astype(logits.dtype)


def _pick(logits, classes):
    """z[i, classes[i]] of each example: (N, K), (N,) -> (N,)."""
    xp = namespace(logits)
    return xp.take_along_axis(logits, classes[:, None].astype("int32"), axis=1)[:, 0]


def per_example_loss(logits, labels, target=None):
    """Cross-entropy of each example. logits: (N, K), labels: (N,) -> (N,).

    ``jax.grad`` of it keeps the label's entry exact only because our log_softmax lets the
    gradient through the max it subtracts (``loss_and_gradient`` says why);
    ``jax.nn.log_softmax`` stops it there, and its gradient cancels (lesson 9).
    """
    return -_pick(log_softmax(logits), labels)


# --8<-- [start:cross_entropy_gradient]
def cross_entropy_gradient(logits, labels, target=None):
    """d per_example_loss / d logits (N, K): softmax minus one-hot, p - e_y, exactly.

    For k != y the entry is p_k, accurate to float precision. At the label it is
    p_y - 1, which we never compute: when the network is sure, p_y is within 2^-24 of 1
    and p_y - 1 in float32 keeps none of its digits (lesson 9 measures it). Since the
    p_k sum to 1, p_y - 1 = -sum_{k != y} p_k: a sum of small positive numbers, each exact.
    """
    xp = namespace(logits)
    one_hot = _one_hot(labels, logits)
    others = xp.where(one_hot > 0, 0, xp.exp(log_softmax(logits)))  # p_k, and 0 at the label
    return others - one_hot * others.sum(axis=1, keepdims=True)


# --8<-- [end:cross_entropy_gradient]


# --8<-- [start:margin_losses]
def margin_loss(logits, labels, target=None):
    """Carlini & Wagner's margin (2017): max_{k != y} z_k - z_y, (N,). Positive exactly
    when the image is misclassified, and it does not saturate as the cross-entropy does."""
    xp = namespace(logits)
    others = xp.where(_one_hot(labels, logits) > 0, -xp.inf, logits)
    return xp.max(others, axis=1) - _pick(logits, labels)


def _descending(logits):
    """The logits of each example sorted from the largest down: (N, K)."""
    return namespace(logits).sort(logits, axis=1)[:, ::-1]


def dlr_loss(logits, labels, target=None):
    """Croce & Hein's difference of logits ratio (2020): the margin divided by the spread
    of the top logits, z_pi1 - z_pi3 (pi: the classes sorted downwards), so that scaling
    the logits (which makes the cross-entropy saturate) does not change it. (N,)"""
    top = _descending(logits)
    return margin_loss(logits, labels) / (top[:, 0] - top[:, 2] + 1e-12)


def targeted_dlr_loss(logits, labels, target):
    """Croce & Hein's targeted DLR: (z_t - z_y) / (z_pi1 - (z_pi3 + z_pi4) / 2), (N,).
    labels are the true classes y; climbing it moves z_t above z_y."""
    top = _descending(logits)
    spread = top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12
    return (_pick(logits, target) - _pick(logits, labels)) / spread


# --8<-- [end:margin_losses]


# --8<-- [start:margin_gradients]
def _runner_up(logits, labels):
    """The strongest class other than the label, (N,) ints (the first one on a tie)."""
    xp = namespace(logits)
    return xp.argmax(xp.where(_one_hot(labels, logits) > 0, -xp.inf, logits), axis=1)


def margin_gradient(logits, labels, target=None):
    """d margin_loss / d logits: +1 at the runner-up class j, -1 at the label. (N, K)"""
    return _one_hot(_runner_up(logits, labels), logits) - _one_hot(labels, logits)


def _ratio_gradient(margin, d_margin, spread, d_spread):
    """d (margin / spread) = d_margin / spread - margin / spread^2 * d_spread (quotient
    rule), each example's row on its own: (N,), (N, K), (N,), (N, K) -> (N, K)."""
    return d_margin / spread[:, None] - (margin / spread**2)[:, None] * d_spread


def _rank(logits, place):
    """(N, K) one-hot of the class in sorted place ``place`` (0 = the largest logit)."""
    order = namespace(logits).argsort(-logits, axis=1)
    return _one_hot(order[:, place], logits)


def dlr_gradient(logits, labels, target=None):
    """d dlr_loss / d logits (N, K)."""
    top = _descending(logits)
    return _ratio_gradient(
        margin_loss(logits, labels), margin_gradient(logits, labels),
        top[:, 0] - top[:, 2] + 1e-12, _rank(logits, 0) - _rank(logits, 2),
    )  # fmt: skip


def targeted_dlr_gradient(logits, labels, target):
    """d targeted_dlr_loss / d logits (N, K)."""
    top = _descending(logits)
    return _ratio_gradient(
        _pick(logits, target) - _pick(logits, labels),
        _one_hot(target, logits) - _one_hot(labels, logits),
        top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12,
        _rank(logits, 0) - (_rank(logits, 2) + _rank(logits, 3)) / 2,
    )


# --8<-- [end:margin_gradients]

# name: (the loss, its gradient with respect to the logits written by hand)
LOSS_FUNCTIONS = {
    "ce": (per_example_loss, cross_entropy_gradient),
    "cw": (margin_loss, margin_gradient),
    "dlr": (dlr_loss, dlr_gradient),
    "dlr_targeted": (targeted_dlr_loss, targeted_dlr_gradient),
}


def _check_loss(loss: str, target, labels) -> None:
    """A known loss name, and a target class per example exactly for the targeted one."""
    if loss not in LOSS_FUNCTIONS:
        raise AttackError(f"loss must be one of {', '.join(LOSSES)}; got {loss!r}.")
    if loss == "dlr_targeted" and (target is None or np.shape(target) != np.shape(labels)):
        raise AttackError(
            "loss 'dlr_targeted' needs target=, one target class per image "
            f"({np.shape(labels)[0]}); got {None if target is None else np.shape(target)}."
        )


# --------------------------------------------------------------------------- gradients


# --8<-- [start:loss_and_gradient_manual]
def loss_and_gradient_manual(model, params, state, x, labels, loss="ce", target=None):
    """(per-example losses (N,), d sum(losses) / dx (N, H, W, C)) by our backward pass.

    Written against the array namespace of x, so it also runs on JAX arrays under
    ``jax.jit`` (adversarial training compiles it into the training step).
    """
    xp = namespace(x)
    loss_of, gradient_of = LOSS_FUNCTIONS[loss]
    logits, _, caches = model.forward(params, state, standardize_unit(x), train=False)
    # d loss_i / d logits_i of each example's own loss, not the mean, written by hand.
    dx_standardized, _ = model.backward(gradient_of(logits, labels, target), caches)
    losses = loss_of(logits, labels, target)
    return losses, dx_standardized / xp.asarray(MNIST_STD, dtype=x.dtype)


# --8<-- [end:loss_and_gradient_manual]


_JITTED: dict[tuple, Callable] = {}


# --8<-- [start:jax_grad]
def _jax_loss_and_gradient(model, loss: str = "ce") -> Callable:
    """``jax.jit(jax.value_and_grad(...))`` of our forward pass and a loss of
    ``LOSS_FUNCTIONS``, compiled once per network and loss: (x, params, state, labels,
    target) -> (losses (N,), dx (N, H, W, C), predicted classes (N,))."""
    key = (tuple(model.layers), loss)  # layers are frozen dataclasses: a network's identity
    if key not in _JITTED:
        import jax

        loss_of = LOSS_FUNCTIONS[loss][0]

        def total_loss(x, params, state, labels, target):
            logits, _, _ = model.forward(params, state, standardize_unit(x), train=False)
            losses = loss_of(logits, labels, target)
            return losses.sum(), (losses, logits.argmax(axis=1))

        def losses_and_gradients(x, params, state, labels, target):
            def per_chunk(x, labels, target):
                (_, (losses, predicted)), dx = jax.value_and_grad(total_loss, has_aux=True)(
                    x, params, state, labels, target
                )
                return losses, dx, predicted

            # The same numbers, a few images at a time on a CPU: see fast/jit_chunks.py.
            return over_chunks(per_chunk, x, labels, target, chunk=chunk_size())

        keep_freed_memory()  # XLA's CPU buffers come from malloc too (see fast/cores.py)
        _JITTED[key] = jax.jit(losses_and_gradients)
    return _JITTED[key]


# --8<-- [end:jax_grad]


def loss_and_gradient(model, params, state, x, labels, grad="jax", loss="ce", target=None):
    """Per-example losses (N,) and the input gradient (N, H, W, C), as NumPy arrays.

    loss: "ce" (cross-entropy), "cw" (margin_loss), "dlr" or "dlr_targeted" (dlr_loss,
    targeted_dlr_loss; that one needs ``target``, a class (N,) per image). Attacks climb it.
    Both ``grad`` paths give the cross-entropy's gradient to float precision even where
    the network is sure (lesson 9 measures it against float64): the manual one by
    ``cross_entropy_gradient``'s sum of the other classes; ``jax.grad`` because the max
    that log_softmax subtracts sends the label's entry back as minus the sum of all
    entries, so the rounded p_y - 1 enters twice, once with each sign, and drops out.
    """
    if grad == "manual":
        x, labels, target = _loss_inputs(x, labels, loss, target)
        return loss_and_gradient_manual(model, params, state, x, labels, loss, target)
    losses, dx, _ = loss_gradient_and_prediction(
        model, params, state, x, labels, grad, loss, target
    )
    return losses, dx


def _loss_inputs(x, labels, loss, target):
    """x, labels and target as arrays (target: the labels when None), the loss checked."""
    _check_loss(loss, target, labels)
    target = np.asarray(labels if target is None else target)
    return np.asarray(x), np.asarray(labels), target


def loss_gradient_and_prediction(
    model, params, state, x, labels, grad="jax", loss="ce", target=None
):
    """``loss_and_gradient``, and the classes (N,) the network predicts at x: an attack
    checks after each step whether it has succeeded, and under ``jax.grad`` the forward
    pass that gave the loss gives them too (the manual path asks ``predict``)."""
    if grad == "manual":
        losses, dx = loss_and_gradient(model, params, state, x, labels, grad, loss, target)
        return losses, dx, predict(model, params, state, x)
    if grad != "jax":
        raise AttackError(f"grad must be 'jax' or 'manual', got {grad!r}.")
    x, labels, target = _loss_inputs(x, labels, loss, target)
    losses, dx, predicted = _jax_loss_and_gradient(model, loss)(
        x, params, state, labels.astype(np.int32), target.astype(np.int32)
    )
    losses = np.asarray(losses)
    check_finite_outputs(losses[:, None])  # NaN or inf logits give a NaN or inf loss
    return losses, np.asarray(dx), np.asarray(predicted)


def _jax_forward(model) -> Callable:
    """``jax.jit`` of our forward pass in eval mode, (params, state, x in [0, 1]) -> logits,
    compiled once per network (and per batch shape), kept beside the gradients."""
    key = (tuple(model.layers), "logits")  # no loss is called "logits"
    if key not in _JITTED:
        import jax

        def logits_of(params, state, x):
            return model.forward(params, state, standardize_unit(x), train=False)[0]

        keep_freed_memory()
        _JITTED[key] = jax.jit(eval_in_chunks(logits_of))  # see fast/jit_chunks.py
    return _JITTED[key]


JIT_FROM = 256  # fewer images: our NumPy forward pass costs less than compiling a shape


def padded_size(n: int) -> int:
    """The batch size n images are padded to: the next multiple of 1/16 of the power of two
    at or above n, so at most 8 sizes between two powers of two (8 compiles while an
    attack's batch halves) and at most 1/8 of the work wasted: 1,780 -> 1,792, where the
    power of two would compute 2,048."""
    step = max(1, (1 << max(n - 1, 0).bit_length()) // 16)
    return -(-n // step) * step


def attack_logits(model, params, state, x) -> np.ndarray:
    """Logits (N, K) of images x (N, H, W, 1) in [0, 1], in eval mode: an attack asks for
    thousands of them, so from JIT_FROM images on by the jitted forward pass (on a GPU when
    JAX has one), below by our NumPy one.

    The batch is padded with blank images (``padded_size``), so the shrinking batches of an
    attack (only the examples not yet fooled) reuse a handful of compiled shapes. In eval
    mode each image's logits depend on that image alone, so the padding changes nothing.
    """
    x = as_unit_images(x)
    n = len(x)
    if n < JIT_FROM:
        return predict_logits(model, params, state, x[..., 0])
    size = padded_size(n)
    padded = np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
    logits = np.asarray(_jax_forward(model)(params, state, padded))[:n]
    check_finite_outputs(logits)
    return logits


def predict(model, params, state, x) -> np.ndarray:
    """Predicted labels (N,) of images x (N, H, W, 1) in [0, 1], in eval mode."""
    return attack_logits(model, params, state, x).argmax(axis=1)


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
    loss: str = "ce",
    target=None,
) -> np.ndarray:
    """Fast gradient sign method (Goodfellow et al. 2015): one step of size eps.

    x: (N, H, W, C) in [0, 1]; y: (N,) labels, or None to attack the network's own
    predictions (so the true label cannot leak into the attack). Untargeted: move up
    the loss of y; targeted: y are the targets, move down their loss. loss: one of
    LOSSES (``loss_and_gradient``); "dlr_targeted" takes y and target= instead.
    """
    _check_eps(eps)
    x = np.asarray(x)
    labels = predict(model, params, state, x) if y is None else np.asarray(y)
    _check_targeting(loss, targeted)
    _, g = loss_and_gradient(model, params, state, x, labels, grad, loss, target)
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
    loss: str = "ce",
    target=None,
) -> np.ndarray:
    """Projected gradient descent (Madry et al. 2018): many small steps, each projected
    back onto the eps-ball around x (L-infinity or L2) and into the image range.

    With ``restarts > 1`` every restart begins at a new random point, and each example
    keeps its worst case: an example the attack fooled beats one it did not, and among
    equals the higher loss (lower, for a targeted attack) wins. loss: which loss the
    steps climb (LOSSES); with "dlr_targeted" pass the true labels as y and the classes
    to move towards as target= (success is still any wrong answer, as in AutoAttack).
    """
    check_budget(norm, eps)
    if not (steps >= 1 and restarts >= 1 and 0 < step_size < math.inf):  # NaN fails too
        raise AttackError(
            f"PGD needs steps >= 1, restarts >= 1 and step size > 0; got steps={steps}, "
            f"restarts={restarts}, step size={step_size}."
        )
    x = np.asarray(x)
    labels = predict(model, params, state, x) if y is None else np.asarray(y)
    _check_loss(loss, target, labels)
    _check_targeting(loss, targeted)
    rng = np.random.default_rng(rng)
    best, best_success, best_loss = x.copy(), None, None
    for _ in range(restarts):
        x_adv = _start(x, eps, norm, rng, clip) if random_start else x.copy()
        for _ in range(steps):
            _, g = loss_and_gradient(model, params, state, x_adv, labels, grad, loss, target)
            x_adv = _ascend(x_adv, -g if targeted else g, step_size, norm)
            x_adv = np.clip(_project(x_adv, x, eps, norm), *clip).astype(x.dtype)
        value, _ = loss_and_gradient(model, params, state, x_adv, labels, grad, loss, target)
        success = (predict(model, params, state, x_adv) == labels) == targeted
        score = -value if targeted else value
        if best_success is None:
            best, best_success, best_loss = x_adv, success, score
            continue
        better = (success & ~best_success) | ((success == best_success) & (score > best_loss))
        best = np.where(better[:, None, None, None], x_adv, best)
        best_success, best_loss = best_success | success, np.where(better, score, best_loss)
    return best


# --8<-- [end:pgd]


def _check_targeting(loss: str, targeted: bool) -> None:
    """targeted=True descends the loss of y taken as targets; "dlr_targeted" already aims."""
    if targeted and loss == "dlr_targeted":
        raise AttackError(
            "loss 'dlr_targeted' is targeted already: pass the true labels as y and the "
            "targets as target=, without targeted=True."
        )


def check_budget(norm: str, eps: float) -> None:
    """Every attack's threat model: a known norm, and an eps that makes sense for it."""
    if norm not in NORMS:
        raise AttackError(f"norm must be 'linf' or 'l2', got {norm!r}.")
    _check_eps(eps, norm)


def as_labels(y, n: int, classes: int = 10) -> np.ndarray:
    """y as (n,) int64: one integer label per image, each a class of the network."""
    labels = np.asarray(y)
    integers = np.issubdtype(labels.dtype, np.integer)
    if labels.shape != (n,) or not integers or not np.isin(labels, np.arange(classes)).all():
        raise AttackError(
            f"y must hold one integer label per image, one class in 0..{classes - 1} each "
            f"({n} images); got shape {labels.shape}, dtype {labels.dtype}."
        )
    return labels.astype(np.int64)


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


ADVERSARIAL = ("none", "fgsm", "pgd", "mixed", "trades")


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
    - ``mixed``: each batch twice, clean and FGSM-attacked (what the seed projects did);
    - ``trades``: the TRADES loss (Zhang et al. 2019, ``scratchcnn.trades``): clean
      cross-entropy + beta * KL to the prediction on a ``steps``-step PGD point, with
      PGD's step rule.
    """

    method: str
    eps: float = 0.3
    steps: int = 7
    beta: float = 6.0

    @property
    def attack_steps(self) -> int:
        return self.steps if self.method in ("pgd", "trades") else 1

    @property
    def step_size(self) -> float:
        if self.method in ("pgd", "trades"):
            return 2.5 * self.eps / self.steps
        return 1.25 * self.eps


# --8<-- [end:adversarial_training]


def attack_rng(rng):
    """A training attack's own random stream from a step's rng: the NumPy Generator
    itself, or a JAX key folded apart from the ones dropout layers fold in (their layer
    index)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    import jax

    return jax.random.fold_in(rng, 1_000_003)


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
