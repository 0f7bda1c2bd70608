"""APGD: projected gradient ascent that picks its own step size.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), Sec. 3 and Algorithm 1; the
reference code is AutoAttack's autoattack/autopgd_base.py.

PGD with a fixed step size has to be tuned per network: too large and it jumps around
the top of the loss without climbing it, too small and 40 steps never get there. APGD
starts large (2 eps, the whole ball in one step) and halves the step at fixed
checkpoints when the attack stalls, restarting from the best point it found. A
momentum term (alpha = 0.75) smooths the path. Nothing is left to tune: the same
settings serve every network, which is what an evaluation needs.

Algorithm 1 of the paper, line by line:

1.  x^(0) a random point of the eps-ball, eta = 2 eps                ``_random_start``
2.  x^(1) <- P(x^(0) + eta sign(grad f(x^(0))))   (no momentum yet)   ``_momentum_step``
3.  f_max, x_max <- the better of x^(0), x^(1)
4.  for k = 1 .. N_iter - 1:
5.      z <- P(x^(k) + eta sign(grad f(x^(k))))
6.      x^(k+1) <- P(x^(k) + alpha (z - x^(k)) + (1 - alpha)(x^(k) - x^(k-1)))
7.      if f(x^(k+1)) > f_max: x_max, f_max <- x^(k+1), f(x^(k+1))
8.      if k + 1 is a checkpoint w_j (``checkpoints``) and a condition holds
        (``should_halve``): eta <- eta / 2, x^(k+1) <- x_max

P is the projection onto the eps-ball around x and into [0, 1]. Every quantity is per
example: its own step size, best loss, best point and checkpoint decisions. As in
AutoAttack, an example is done (and never moved again) as soon as the network gets it
wrong: that image is an adversarial example, whatever the loss.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from scratchcnn.attacks import (
    AttackError,
    _ascend,
    _check_loss,
    _l2,
    _project,
    as_labels,
    check_budget,
    loss_gradient_and_prediction,
    predict,
)
from scratchcnn.inference import predict_logits

ALPHA = 0.75  # weight of the new gradient step against the last move (momentum)
RHO = 0.75  # condition 1: fewer than 75% of the steps since the checkpoint climbed

# The checkpoints, as fractions of the iterations (Sec. 3.2): exact fractions, so that
# 0.22 + 0.19 is 0.41 and not 0.41000000000000003 (whose ceiling, times 100, is 42).
FIRST_CHECKPOINT = Fraction(22, 100)
SHRINK = Fraction(3, 100)
SHORTEST = Fraction(6, 100)


# --------------------------------------------------------------------------- the schedule


# --8<-- [start:checkpoints]
def checkpoint_fractions() -> list[Fraction]:
    """p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06), up to 1.

    Each gap is 0.03 shorter than the one before, but never under 0.06: the attack
    first gets a long time to explore, then decides more and more often.
    """
    p = [Fraction(0), FIRST_CHECKPOINT]
    while True:
        following = p[-1] + max(p[-1] - p[-2] - SHRINK, SHORTEST)
        if following > 1:
            return p
        p.append(following)


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j = ceil(p_j * steps) at which the step size may be halved.

    For 100 steps: [0, 22, 41, 57, 70, 80, 87, 93, 99]. w_0 = 0 only marks where the first
    stretch starts; fewer steps can round two fractions to one iteration, kept once.
    """
    return sorted({math.ceil(p * steps) for p in checkpoint_fractions()})


# --8<-- [end:checkpoints]


# --8<-- [start:should_halve]
def should_halve(climbed, best_now, best_before, halved_before, rho: float = RHO):
    """At a checkpoint w_j, which examples halve their step size (Sec. 3.2). (N,) bool.

    climbed: (steps since w_{j-1}, N) bool, f(x^(i+1)) > f(x^(i)) for each step i;
    best_now, best_before: f_max at w_j and at w_{j-1}, (N,);
    halved_before: (N,) bool, whether eta was halved at w_{j-1}.

    Condition 1: fewer than a fraction rho of the steps climbed: the step is so large
    that it mostly overshoots. Condition 2: eta was not just changed and f_max did not
    move since w_{j-1}: this step size has had its chance and found nothing better.
    (At w_1 the paper's eta^(w_0) = eta^(w_1) holds, so condition 2 may fire there; the
    reference code skips it at w_1, a small difference.)
    """
    climbed = np.asarray(climbed, dtype=bool)
    condition_1 = climbed.sum(axis=0) < rho * len(climbed)
    condition_2 = ~np.asarray(halved_before) & (np.asarray(best_now) <= best_before)
    return condition_1 | condition_2


# --8<-- [end:should_halve]


# --------------------------------------------------------------------------- one step


def _into_ball(x_adv, x, eps: float, norm: str) -> np.ndarray:
    """P: the closest point of the eps-ball around x, then clipped into [0, 1].

    Clipping only moves a pixel towards x (which is in [0, 1]), so the point stays in
    the ball."""
    return np.clip(_project(x_adv, x, eps, norm), 0, 1).astype(x.dtype)


def _random_start(x, eps: float, norm: str, rng) -> np.ndarray:
    """Line 1, as the reference code does: a random direction scaled to length eps in
    the norm attacked (uniform noise for L-inf, Gaussian for L2), then clipped."""
    if norm == "linf":
        noise = rng.uniform(-1, 1, size=x.shape)
        length = np.abs(noise).max(axis=(1, 2, 3), keepdims=True)
    else:
        noise = rng.standard_normal(x.shape)
        length = _l2(noise)
    return np.clip(x + eps * noise / np.maximum(length, 1e-12), 0, 1).astype(x.dtype)


# --8<-- [start:momentum_step]
def _momentum_step(x, x_k, x_previous, g, eta, eps: float, norm: str, alpha: float):
    """Lines 5-6: a gradient step z, then x^(k+1) = P(x^(k) + alpha (z - x^(k)) +
    (1 - alpha)(x^(k) - x^(k-1))). All (N, H, W, C); eta (N,) per example.

    alpha = 1 is plain projected gradient ascent (line 2, the first step). The momentum
    term keeps part of the last move, so a direction that kept paying is followed on.
    """
    z = _into_ball(_ascend(x_k, g, eta[:, None, None, None], norm), x, eps, norm)
    return _into_ball(x_k + alpha * (z - x_k) + (1 - alpha) * (x_k - x_previous), x, eps, norm)


# --8<-- [end:momentum_step]


# --------------------------------------------------------------------------- one run


# --8<-- [start:run]
def _run(network, x, labels, eps, norm, loss, target, steps, rng, grad, todo, history):
    """One APGD run (Algorithm 1) on the examples where ``todo`` (N,) is True; the others
    are never moved. x: (N, H, W, C) in [0, 1], labels (N,).

    Returns (N, H, W, C): an example's first misclassified point if it has one (it stops
    there), else its highest-loss point x_max; x itself where ``todo`` is False.
    """
    model, params, state = network

    def loss_and_grad(points):  # always the whole batch: one compiled shape for jax.jit
        # Under jax.grad the predicted classes come from the gradient's own forward pass:
        # no extra one per step (they can differ from predict() only at exact ties).
        return loss_gradient_and_prediction(
            model, params, state, points, labels, grad, loss, target
        )

    done = ~todo
    x_k = np.where(done[:, None, None, None], x, _random_start(x, eps, norm, rng))
    f, g, predicted = loss_and_grad(x_k)
    done = done | (predicted != labels)
    x_previous, x_best, f_best, g_best = x_k, x_k.copy(), f.copy(), g.copy()
    eta = np.full(len(x), 2.0 * eps)
    marks = set(checkpoints(steps)[1:])
    climbed, best_before, halved_before = [], f_best.copy(), np.zeros(len(x), bool)
    _record(history, f, f_best, eta, done)
    for k in range(steps):
        active = ~done
        if not active.any():
            break
        moved = _momentum_step(x, x_k, x_previous, g, eta, eps, norm, 1.0 if k == 0 else ALPHA)
        x_previous, x_k = x_k, np.where(active[:, None, None, None], moved, x_k)
        f_new, g, predicted = loss_and_grad(x_k)
        climbed.append(f_new > f)
        f = np.where(active, f_new, f)  # a done example keeps its numbers as they were
        better = active & (f > f_best)  # line 7
        x_best[better], f_best[better], g_best[better] = x_k[better], f[better], g[better]
        done[active] = predicted[active] != labels[active]
        if k + 1 in marks:  # line 8
            halve = should_halve(climbed, f_best, best_before, halved_before) & ~done
            eta[halve] /= 2
            # Restart from x_max with its gradient (kept, so no extra gradient is needed);
            # the momentum then carries the move from x^(k) to x_max, as in the reference.
            x_k, f, g = x_k.copy(), f.copy(), g.copy()
            x_k[halve], f[halve], g[halve] = x_best[halve], f_best[halve], g_best[halve]
            climbed, best_before, halved_before = [], f_best.copy(), halve
        _record(history, f, f_best, eta, done)
    robust = ~done  # never fooled; a done example's x_k is where it stopped (x, if not todo)
    return np.where(robust[:, None, None, None], x_best, x_k)


# --8<-- [end:run]


def _record(history, loss, best_loss, step_size, done) -> None:
    """Append this iteration's numbers (each (N,), copied) to ``history``, if a list."""
    if history is not None:
        history.append(
            {"loss": loss.copy(), "best_loss": best_loss.copy(),
             "step_size": step_size.copy(), "done": done.copy()}
        )  # fmt: skip


# --------------------------------------------------------------------------- the attacks


def _check(norm: str, eps: float, steps: int) -> None:
    check_budget(norm, eps)
    if not (isinstance(steps, int | np.integer) and steps >= 1):
        raise AttackError(f"APGD needs steps >= 1 (an integer); got {steps!r}.")


# --8<-- [start:apgd]
def apgd(
    model,
    params,
    state,
    x,
    y=None,
    eps: float = 0.3,
    *,
    norm: str = "linf",
    loss: str = "ce",
    target=None,
    steps: int = 100,
    rng: np.random.Generator | int | None = 0,
    grad: str = "jax",
    history: list | None = None,
) -> np.ndarray:
    """APGD on images x (N, H, W, 1) in [0, 1]: adversarial images (N, H, W, 1) float32.

    y: (N,) true labels, or None to attack the network's own predictions. loss: what
    the steps climb (``attacks.LOSSES``): "ce" is APGD-CE; "dlr_targeted" takes target=
    (N,), the class to push each image towards (``apgd_targeted`` picks them). Success
    is any wrong answer. Examples the network already gets wrong are returned as they
    are; a fooled example stops at its first wrong point; the others end at the
    highest-loss point found. If ``history`` is a list, a dict of (N,) arrays "loss",
    "best_loss", "step_size" and "done" is appended at the start and after every step.
    """
    _check(norm, eps, steps)
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return x.copy()  # no images: nothing to attack
    labels = predict(model, params, state, x) if y is None else as_labels(y, len(x))
    _check_loss(loss, target, labels)
    todo = predict(model, params, state, x) == labels
    rng = np.random.default_rng(rng)
    network = (model, params, state)
    return _run(network, x, labels, eps, norm, loss, target, steps, rng, grad, todo, history)


# --8<-- [end:apgd]


# --8<-- [start:apgd_targeted]
def apgd_targeted(
    model,
    params,
    state,
    x,
    y=None,
    eps: float = 0.3,
    *,
    targets: int = 9,
    norm: str = "linf",
    steps: int = 100,
    rng: np.random.Generator | int | None = 0,
    grad: str = "jax",
    history: list | None = None,
) -> np.ndarray:
    """APGD-T: APGD on the targeted DLR loss, once per target class (AutoAttack's
    APGD-T), each run on the examples still classified correctly. (N, H, W, 1) float32.

    The targets of an image are its ``targets`` most likely wrong classes on the clean
    image, the likeliest first: the runner-up is the easiest class to reach, and if it
    fails the next one may not. An example still robust at the end holds the best point
    of the last run. Other arguments as in ``apgd``.
    """
    _check(norm, eps, steps)
    x = np.asarray(x, dtype=np.float32)
    if len(x) == 0:
        return x.copy()  # no images: nothing to attack
    logits = predict_logits(model, params, state, x[..., 0])
    labels = logits.argmax(axis=1) if y is None else as_labels(y, len(x))
    if not (isinstance(targets, int | np.integer) and 1 <= targets < logits.shape[1]):
        raise AttackError(
            f"targets must be an integer from 1 to {logits.shape[1] - 1} (the wrong classes); "
            f"got {targets!r}."
        )
    ranked = np.argsort(-logits, axis=1, kind="stable")  # (N, K): the label first, if right
    robust = logits.argmax(axis=1) == labels
    rng = np.random.default_rng(rng)
    x_adv = x.copy()
    for rank in range(1, targets + 1):
        if not robust.any():
            break
        target = ranked[:, rank]
        run = _run((model, params, state), x, labels, eps, norm, "dlr_targeted", target,
                   steps, rng, grad, robust, history)  # fmt: skip
        x_adv[robust] = run[robust]
        robust[robust] = predict(model, params, state, x_adv[robust]) == labels[robust]
    return x_adv


# --8<-- [end:apgd_targeted]
