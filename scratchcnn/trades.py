"""TRADES (Zhang et al. 2019): adversarial training that trades accuracy for robustness
with one number, beta.

PGD training (lesson 11) fits the network to attacked images only. TRADES keeps the
cross-entropy on the clean image and adds a penalty for how much the prediction moves
inside the eps-ball:

    loss = CE(f(x), y) + beta * KL( softmax f(x) || softmax f(x') ),
    x' = the point of the ball where that KL divergence is largest (found by PGD).

beta = 0 is plain training; larger beta buys robustness with clean accuracy. Everything
here is written by hand against the array namespace of its inputs, so the same code runs
on NumPy and compiled into the JAX training step: the KL divergence, its gradient with
respect to both sets of logits, the inner attack, and the training step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scratchcnn import attacks
from scratchcnn.data.preprocess import MNIST_STD, standardize_unit
from scratchcnn.ops._xp import namespace
from scratchcnn.ops.losses import (
    log_softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from scratchcnn.optim import tree_map

START_SCALE = 0.001  # TRADES starts its attack at x + 0.001 * N(0, 1), not at a random corner


# --8<-- [start:kl]
def kl_divergence(clean_logits, adversarial_logits):
    """KL(p || q) of each example, p = softmax(clean), q = softmax(adversarial).

    clean_logits, adversarial_logits: (N, K) -> (N,), each >= 0.
    """
    xp = namespace(clean_logits)
    log_p, log_q = log_softmax(clean_logits), log_softmax(adversarial_logits)
    return xp.sum(xp.exp(log_p) * (log_p - log_q), axis=1)


def kl_gradient_adversarial(clean_logits, adversarial_logits):
    """d KL / d adversarial logits (N, K) = q - p.

    The same cancellation as the cross-entropy's p_y - 1 (lesson 9): where the network is
    sure, p and q are both within float32's rounding of 1 at the top class m, and q_m - p_m
    keeps none of its digits. Both sum to 1, so q_m - p_m = -sum_{k != m} (q_k - p_k):
    differences of small numbers, each exact enough.
    """
    xp = namespace(clean_logits)
    p, q = xp.exp(log_softmax(clean_logits)), xp.exp(log_softmax(adversarial_logits))
    top = p.argmax(axis=1)[:, None] == xp.arange(p.shape[1])[None, :]
    others = xp.where(top, 0, q - p)
    return others - top * others.sum(axis=1, keepdims=True)


def kl_gradient_clean(clean_logits, adversarial_logits):
    """d KL / d clean logits (N, K) = p * (a - KL), a = log p - log q.

    Chain rule through p = softmax(z): dKL/dp_k = a_k + 1, dp_k/dz_j = p_k (delta_kj - p_j);
    the + 1 drops out because the p_k sum to 1.
    """
    log_p, log_q = log_softmax(clean_logits), log_softmax(adversarial_logits)
    p, a = namespace(log_p).exp(log_p), log_p - log_q
    return p * (a - (p * a).sum(axis=1, keepdims=True))


# --8<-- [end:kl]


def normal_noise(rng, shape, dtype):
    """N(0, 1) noise from a NumPy Generator or a JAX key."""
    if isinstance(rng, np.random.Generator):
        return rng.standard_normal(shape).astype(dtype)
    import jax

    return jax.random.normal(rng, shape, dtype)


# --8<-- [start:attack]
def trades_attack(model, params, state, x, rng, eps: float, steps: int, step_size: float):
    """The x' in the eps-ball around x (N, H, W, C), in [0, 1], whose prediction is the
    furthest (in KL) from the prediction on x: sign-gradient ascent, in eval mode.

    No labels: the attack pushes away from what the network says about x, right or wrong.
    """
    xp = namespace(x)
    clean_logits, _, _ = model.forward(params, state, standardize_unit(x), train=False)
    adversarial = x + START_SCALE * normal_noise(rng, x.shape, x.dtype)
    for _ in range(steps):
        logits, _, caches = model.forward(params, state, standardize_unit(adversarial), train=False)
        dx, _ = model.backward(kl_gradient_adversarial(clean_logits, logits), caches)
        adversarial = adversarial + step_size * xp.sign(dx / MNIST_STD)
        adversarial = xp.clip(xp.clip(adversarial, x - eps, x + eps), 0, 1)
    return adversarial.astype(x.dtype)


# --8<-- [end:attack]


# --8<-- [start:loss]
def trades_loss_and_gradients(model, params, state, x, x_adv, labels, beta, rng,
                              label_smoothing=0.0):  # fmt: skip
    """The TRADES loss of a batch and its gradient with respect to the parameters.

    x, x_adv: (N, H, W, C) in [0, 1]; labels: (N,). Two forward passes in train mode, as
    the reference code makes them: the clean batch, then the attacked one (BatchNorm
    normalises each with its own statistics, and its running averages move twice).
    Returns (loss, grads, new_state, adversarial logits (N, K)).
    """
    clean_rng, adversarial_rng = _two_streams(rng)
    z, state, clean_caches = model.forward(
        params, state, standardize_unit(x), train=True, rng=clean_rng
    )
    z_adv, state, adversarial_caches = model.forward(
        params, state, standardize_unit(x_adv), train=True, rng=adversarial_rng
    )
    cross_entropy, ce_cache = softmax_cross_entropy_forward(z, labels, label_smoothing)
    weight = beta / z.shape[0]  # the KL term is averaged over the batch, as the CE is
    loss = cross_entropy + weight * kl_divergence(z, z_adv).sum()
    dz = softmax_cross_entropy_backward(1.0, ce_cache)[0] + weight * kl_gradient_clean(z, z_adv)
    dz_adv = weight * kl_gradient_adversarial(z, z_adv)
    _, clean_grads = model.backward(dz, clean_caches, input_grad=False)
    _, adversarial_grads = model.backward(dz_adv, adversarial_caches, input_grad=False)
    grads = tree_map(lambda a, b: a + b, clean_grads, adversarial_grads)
    return loss, grads, state, z_adv


# --8<-- [end:loss]


def _two_streams(rng):
    """Dropout randomness for the two passes: the Generator (its draws continue), or two
    keys folded apart."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng, rng
    import jax

    return jax.random.fold_in(rng, 1), jax.random.fold_in(rng, 2)


# --8<-- [start:train_step]
def make_train_step(model, optimizer, adversarial, label_smoothing: float = 0.0) -> Callable:
    """A training step on the TRADES loss, with the signature of ``train.step``'s:

    (params, state, opt_state, images: (N, H, W, C) in [0, 1], labels: (N,), rng)
        -> (params, state, opt_state, loss, accuracy on the attacked images)
    adversarial: an ``attacks.AdversarialTraining`` with method "trades" (eps, steps,
    step_size, beta).
    """

    def train_step(params, state, opt_state, images, labels, rng):
        x_adv = trades_attack(
            model, params, state, images, attacks.attack_rng(rng),
            adversarial.eps, adversarial.steps, adversarial.step_size,
        )  # fmt: skip
        loss, grads, state, z_adv = trades_loss_and_gradients(
            model, params, state, images, x_adv, labels, adversarial.beta, rng, label_smoothing
        )
        params, opt_state = optimizer.update(grads, opt_state, params)
        return params, state, opt_state, loss, (z_adv.argmax(axis=1) == labels).mean()

    return train_step


# --8<-- [end:train_step]
