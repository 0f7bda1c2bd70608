"""Ensembles: combine several trained networks' predictions, and choose how on validation images.

Every function takes the members' logits stacked as ``logits: (M, N, K)``: M members, N
images, K classes. An ``Ensemble`` says how to combine them (a weight and a temperature per
member, and whether probabilities or logits are averaged); a *rule* is a function that
chooses an ``Ensemble`` from the validation images alone. ``choose_and_test`` is the only
place where the test images come in, after the choice is made.

Greedy selection follows Caruana et al. (2004), "Ensemble Selection from Libraries of
Models"; temperature scaling follows Guo et al. (2017), "On Calibration of Modern Neural
Networks".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from scratchcnn.errors import InputError, ShapeError
from scratchcnn.ops import losses


def _stacked(logits) -> np.ndarray:
    """logits: (M, N, K) of M >= 1 members -> float64 (M, N, K)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 3 or logits.shape[0] == 0:
        raise ShapeError(f"members' logits must be (M, N, K) with M >= 1, got {logits.shape}.")
    return logits


def softmax(logits) -> np.ndarray:
    """Probabilities along the last axis: (..., K) -> (..., K), each row summing to 1."""
    logits = np.asarray(logits, dtype=np.float64)
    return losses.softmax(logits.reshape(-1, logits.shape[-1])).reshape(logits.shape)


def _normalized(weights, members: int) -> np.ndarray:
    """weights: (M,) non-negative, not all 0 (None: equal) -> (M,) float64 summing to 1."""
    if weights is None:
        return np.full(members, 1 / members)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (members,):
        raise ShapeError(f"need one weight per member ({members}), got shape {weights.shape}.")
    if not np.all(weights >= 0) or weights.sum() <= 0:
        raise InputError(f"weights must be non-negative and not all 0, got {weights.tolist()}.")
    return weights / weights.sum()


# --8<-- [start:averages]
def mean_of_probabilities(logits, weights=None) -> np.ndarray:
    """Each member's softmax, then their (weighted) mean: (M, N, K) -> probabilities (N, K)."""
    logits = _stacked(logits)
    weights = _normalized(weights, len(logits))
    return np.tensordot(weights, softmax(logits), axes=1)  # sum over members of w_m p_m


def softmax_of_mean_logits(logits, weights=None) -> np.ndarray:
    """The (weighted) mean of the members' logits, then one softmax: (M, N, K) -> (N, K).

    This is the normalized geometric mean of the members' probabilities: a member that
    gives a class a tiny probability pulls that class down far more than it would in
    ``mean_of_probabilities``.
    """
    logits = _stacked(logits)
    weights = _normalized(weights, len(logits))
    return softmax(np.tensordot(weights, logits, axes=1))


# --8<-- [end:averages]


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the labels: probs (N, K), labels (N,) -> float.

    Probabilities are clipped at 1e-300 so that a confident mistake costs a large but
    finite amount (690 nats) instead of infinity.
    """
    probs = np.asarray(probs, dtype=np.float64)
    picked = probs[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.mean(np.log(np.maximum(picked, 1e-300))))


def error_rate(probs, labels) -> float:
    """Fraction of images whose most probable class is not the label: (N, K), (N,) -> float."""
    return float(np.mean(np.asarray(probs).argmax(axis=1) != np.asarray(labels)))


# --8<-- [start:temperature]
def fit_temperature(logits, labels, low: float = 0.05, high: float = 20.0, steps: int = 50):
    """The temperature T in [low, high] that minimises the NLL of softmax(logits / T).

    logits: (N, K) of one network, labels: (N,) -> float. The NLL is convex in 1/T, so it
    has a single minimum, and a golden-section search on log T finds it: keep two inner
    points, drop the outer third on the side of the worse one, repeat (each step shrinks
    the interval by 0.618 and costs one new NLL).
    """
    logits = np.asarray(logits, dtype=np.float64)

    def loss(log_t: float) -> float:
        return nll(softmax(logits / np.exp(log_t)), labels)

    shrink = (np.sqrt(5) - 1) / 2  # 0.618...: the inner points stay at the same ratios
    a, b = np.log(low), np.log(high)
    c, d = b - shrink * (b - a), a + shrink * (b - a)
    loss_c, loss_d = loss(c), loss(d)
    for _ in range(steps):
        if loss_c < loss_d:  # the minimum is not in (d, b]
            b, d, loss_d = d, c, loss_c
            c = b - shrink * (b - a)
            loss_c = loss(c)
        else:  # the minimum is not in [a, c)
            a, c, loss_c = c, d, loss_d
            d = a + shrink * (b - a)
            loss_d = loss(d)
    return float(np.exp((a + b) / 2))


# --8<-- [end:temperature]


# --8<-- [start:greedy]
def greedy_selection(probs, labels, objective=nll, max_picks: int = 50):
    """Caruana et al.'s forward selection with replacement, on validation images.

    probs: (M, N, K) each member's probabilities, labels: (N,); objective(probs (N, K),
    labels) -> float, lower is better. Start from no member; at each step add the member
    (again, if it helps) whose addition gives the best mean of the picked members'
    probabilities; stop when no addition makes it better. Returns (picks, curve): the
    member index of each pick and the objective after it. A member picked twice counts
    twice: the weights are the counts of the picks (``weights_from_picks``).
    """
    probs = _stacked(probs)
    total = np.zeros(probs.shape[1:])  # the sum of the picked members' probabilities
    picks, curve = [], []
    while len(picks) < max_picks:
        scores = [objective((total + p) / (len(picks) + 1), labels) for p in probs]
        best = int(np.argmin(scores))  # ties: the first member
        if curve and scores[best] >= curve[-1]:
            break  # no member improves the ensemble any more
        picks.append(best)
        curve.append(scores[best])
        total += probs[best]
    return picks, curve


def weights_from_picks(picks: list[int], members: int) -> np.ndarray:
    """Each member's share of the picks: [0, 2, 0] of 3 members -> [2/3, 0, 1/3]."""
    return np.bincount(picks, minlength=members) / len(picks)


# --8<-- [end:greedy]


def sign_test(fixed: int, broken: int) -> float:
    """Two-sided exact sign test (McNemar's exact test) of two predictors on the same images.

    fixed: images only the first gets right, broken: images only the second gets right.
    If the two were equally good, each such image would be a fair coin flip; returns the
    chance of a split at least this uneven in fixed + broken flips.
    """
    n, k = fixed + broken, min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


# --8<-- [start:ensemble]
@dataclass(frozen=True)
class Ensemble:
    """How to combine M members: weights (M,) summing to 1, a temperature per member (M,)
    that divides its logits first, and what is averaged ("probabilities" or "logits")."""

    weights: np.ndarray
    temperatures: np.ndarray
    average: str = "probabilities"

    def predict(self, logits) -> np.ndarray:
        """The members' logits (M, N, K) -> the ensemble's probabilities (N, K)."""
        scaled = _stacked(logits) / self.temperatures[:, None, None]
        if self.average == "logits":
            return softmax_of_mean_logits(scaled, self.weights)
        return mean_of_probabilities(scaled, self.weights)


# A rule chooses an ensemble from the validation images: (logits (M, N, K), labels (N,)).
Rule = Callable[[np.ndarray, np.ndarray], Ensemble]


def choose_and_test(rule: Rule, val_logits, val_labels, test_logits) -> tuple[Ensemble, dict]:
    """Choose on validation, then predict the test images once with what was chosen.

    Returns (the ensemble, {"val": probabilities (N_val, K), "test": (N_test, K)}). The
    rule never sees a test image or label: nothing measured on them can shape the choice.
    """
    chosen = rule(np.asarray(val_logits), np.asarray(val_labels))
    return chosen, {"val": chosen.predict(val_logits), "test": chosen.predict(test_logits)}


# --8<-- [end:ensemble]


# --8<-- [start:cross_validated]
def cross_validated(rule: Rule, logits, labels, objective=nll, folds: int = 5, seed: int = 0):
    """How well ``rule`` does on validation images it did not choose on.

    logits: (M, N, K), labels: (N,). Split the N images into ``folds`` random parts; for
    each part, let the rule choose on the other parts and score the held-out part with
    ``objective``. Returns the mean of the ``folds`` scores.

    A rule's score on the very images it chose on flatters it, the more so the more
    freedom it has: greedy selection tries many weightings and keeps the one these images
    like best, an equal average has nothing to choose. Compared on the images they chose
    on, the most flexible rule would always look best.
    """
    logits, labels = _stacked(logits), np.asarray(labels)
    order = np.random.default_rng(seed).permutation(len(labels))
    scores = []
    for held_out in np.array_split(order, folds):
        chosen_on = np.setdiff1d(order, held_out)
        ensemble = rule(logits[:, chosen_on], labels[chosen_on])
        scores.append(objective(ensemble.predict(logits[:, held_out]), labels[held_out]))
    return float(np.mean(scores))


# --8<-- [end:cross_validated]


# --------------------------------------------------------------------------- the rules


def no_temperature(members: int) -> np.ndarray:
    """T = 1 for each of the members: their logits as they are."""
    return np.ones(members)


def best_member(logits, labels) -> Ensemble:
    """Only the member with the highest validation accuracy (ties: the lower NLL)."""
    probs = softmax(_stacked(logits))
    scores = [(error_rate(p, labels), nll(p, labels)) for p in probs]
    weights = np.eye(len(probs))[min(range(len(probs)), key=scores.__getitem__)]
    return Ensemble(weights, no_temperature(len(probs)))


def equal_probabilities(logits, labels) -> Ensemble:
    """Every member's probabilities, one equal vote each (what lesson 7 did)."""
    return Ensemble(_normalized(None, len(logits)), no_temperature(len(logits)))


def equal_logits(logits, labels) -> Ensemble:
    """Every member's logits, averaged with equal weights, then one softmax."""
    return Ensemble(_normalized(None, len(logits)), no_temperature(len(logits)), "logits")


def member_temperatures(logits, labels) -> np.ndarray:
    """Each member's own temperature, fitted on these images: (M, N, K) -> (M,)."""
    return np.array([fit_temperature(member, labels) for member in _stacked(logits)])


def temperature_scaled(logits, labels) -> Ensemble:
    """Each member temperature-scaled first, then equal-weight probabilities."""
    return Ensemble(_normalized(None, len(logits)), member_temperatures(logits, labels))


def greedy(objective=nll) -> Rule:
    """The rule: temperature-scaled members chosen by ``greedy_selection`` on ``objective``."""

    def rule(logits, labels) -> Ensemble:
        logits = _stacked(logits)
        temperatures = member_temperatures(logits, labels)
        picks, _ = greedy_selection(
            softmax(logits / temperatures[:, None, None]), labels, objective
        )
        return Ensemble(weights_from_picks(picks, len(logits)), temperatures)

    return rule
