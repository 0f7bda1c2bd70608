"""The Square attack: adversarial examples without a single gradient.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020 (arXiv:1912.00049). AutoAttack
(Croce & Hein 2020) runs it as its one gradient-free member: a defence that only hides
its gradient (lesson 10's masked network) slows gradient attacks down, not this one.

A random search. Each step changes the current adversarial image inside one random
square window and asks the network (one forward pass: a *query*) whether that helped;
the change is kept only where the loss fell. The squares start large (a fraction
``p_init`` of the pixels) and shrink on a fixed schedule, as the search refines.

The loss, from the logits z (paper, Sec. 3): untargeted, the margin z_y - max_{k != y} z_k,
positive while the network still answers y; targeted (y are the targets), the target's
cross-entropy, as the reference code does. An example is done once its margin is <= 0.

Algorithm 1 of the paper, line by line (the reference code, github.com/max-andr/square-attack
attack.py and AutoAttack's autoattack/square.py, decides where it and the paper differ):

1. x_best <- init(x), l* <- its loss              ``_stripes`` (L-inf), ``_l2_start`` (L2)
2. while i < queries and x_best is not adversarial (per example)        ``square_attack``
3.     h <- the square's side, from the schedule of p           ``p_selection``, ``square_side``
4.     delta ~ P, a change inside one h x h window              ``_linf_candidates``,
5.     kept inside the eps-ball and [0, 1]                        ``_l2_candidates``
6.     l_new <- the loss of x_best + delta: one query
7.     if l_new < l*: x_best <- x_best + delta, l* <- l_new

Line 1 of the paper takes l* from the clean image; the code, and we, from the start.
P, the paper's sampling distribution: for L-inf the window is set to x + eps * (one random
sign), so every pixel stays on a corner of the eps-box; for L2 the perturbation's mass is
moved out of a second window into the first, shaped as a pair of bumps.
"""

from __future__ import annotations

import math

import numpy as np

from scratchcnn.attacks import AttackError, _l2, as_labels, attack_logits, check_budget

# The published schedule (the reference's ``p_selection``): p is halved after each of
# these iterations of a 10,000-query budget; other budgets are rescaled onto it.
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


# --------------------------------------------------------------------------- schedule


# --8<-- [start:p_selection]
def p_selection(p_init: float, i: int, queries: int) -> float:
    """The fraction of pixels a square covers at iteration i (0-based) of a budget."""
    it = int(i / queries * 10_000)  # where i falls on the 10,000-query schedule
    return p_init / 2 ** sum(it > point for point in P_HALVINGS)


# --8<-- [end:p_selection]


def square_side(p: float, height: int, width: int) -> int:
    """Side of a square covering about a fraction p of the pixels: 1 <= s <= the image."""
    return min(max(round(math.sqrt(p * height * width)), 1), height, width)


# --------------------------------------------------------------------------- the loss


# --8<-- [start:margin_and_loss]
def margin_and_loss(logits: np.ndarray, y: np.ndarray, targeted: bool):
    """(margin (N,), loss (N,)) from logits (N, K): the attack lowers both.

    margin > 0 while the attack has not succeeded: z_y - (the best other logit), or for a
    targeted attack (the best other logit) - z_target.
    """
    z = logits.astype(np.float64)
    rows = np.arange(len(z))
    z_y = z[rows, y]
    others = z.copy()
    others[rows, y] = -np.inf
    best_other = others.max(axis=1, initial=-np.inf)
    if not targeted:
        return z_y - best_other, z_y - best_other
    top = z.max(axis=1, keepdims=True, initial=-np.inf)
    cross_entropy = (top[:, 0] + np.log(np.exp(z - top).sum(axis=1))) - z_y  # stable logsumexp
    return best_other - z_y, cross_entropy


# --8<-- [end:margin_and_loss]


def _query(model, params, state, x: np.ndarray) -> np.ndarray:
    """The only way this attack touches the network: logits (N, K) of x (N, H, W, 1),
    by the forward pass in eval mode. Never a gradient."""
    return attack_logits(model, params, state, x)


# --------------------------------------------------------------------------- L-infinity


def _windows(n: int, height: int, width: int, s: int, rng):
    """One random s x s window per example, as indices: ``x[window]`` is (n, s, s, C)."""
    top = rng.integers(0, height - s + 1, size=n)
    left = rng.integers(0, width - s + 1, size=n)
    offsets = np.arange(s)
    rows = (top[:, None] + offsets)[:, :, None]  # (n, s, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (n, 1, s)
    return np.arange(n)[:, None, None], rows, cols


def _at_vertex(x: np.ndarray, eps: float, signs: np.ndarray) -> np.ndarray:
    """x + eps * signs, clipped to [0, 1], in x's dtype: a corner of the eps-box."""
    return np.clip(x + eps * signs, 0, 1).astype(x.dtype)


# --8<-- [start:stripes]
def _stripes(x: np.ndarray, eps: float, rng) -> np.ndarray:
    """Line 1 (L-inf): every column of every image moved by +-eps. x: (N, H, W, C).

    Vertical stripes: the paper found them the best start (networks are sensitive to
    such high-frequency patterns), and every pixel sits on a corner of the eps-box.
    """
    n, _, width, channels = x.shape
    return _at_vertex(x, eps, rng.choice([-1.0, 1.0], size=(n, 1, width, channels)))


# --8<-- [end:stripes]


# --8<-- [start:linf_candidates]
def _linf_candidates(x, x_best, eps: float, s: int, rng) -> np.ndarray:
    """Lines 4-5 (L-inf): x_best (N, H, W, C), one s x s window each set to x + eps * sign.

    A sign that changes nothing (the window is there already) is flipped: with one
    channel that is exactly the reference's "redraw until it changes" loop, and it keeps
    the query from being wasted.
    """
    n, height, width, channels = x.shape
    window = _windows(n, height, width, s, rng)
    signs = rng.choice([-1.0, 1.0], size=(n, 1, 1, channels))
    unchanged = (_at_vertex(x[window], eps, signs) == x_best[window]).all(axis=(1, 2, 3))
    signs[unchanged] *= -1
    candidates = x_best.copy()
    candidates[window] = _at_vertex(x[window], eps, signs)
    return candidates


# --8<-- [end:linf_candidates]


# --------------------------------------------------------------------------- L2


def _bump(rows: int, cols: int) -> np.ndarray:
    """(rows, cols) of unit L2 norm, peaked in the middle: nested rectangles around the
    centre, the k-th (k = 0, 1, ...) adding 1 / (k + 1)^2, so a pixel k rings out holds
    sum_{j >= k} 1 / (j + 1)^2 (the reference's ``pseudo_gaussian_pert_rectangles``)."""
    ring = np.maximum(
        np.abs(np.arange(rows) - rows // 2)[:, None], np.abs(np.arange(cols) - cols // 2)[None, :]
    )
    weights = 1.0 / (np.arange(max(rows, cols) // 2 + 1) + 1.0) ** 2
    tail = np.cumsum(weights[::-1])[::-1]  # tail[k] = sum of the weights from ring k on
    bump = tail[ring]
    return bump / np.sqrt((bump**2).sum())


def _eta(s: int, rng) -> np.ndarray:
    """The L2 update's shape (s, s), unit norm: a bump up on one half, a bump down on the
    other, turned a quarter at random (the reference's ``meta_pseudo_gaussian_pert``)."""
    half = s // 2
    eta = np.concatenate([_bump(half, s), -_bump(s - half, s)])
    eta /= np.sqrt((eta**2).sum())
    return eta.T if rng.random() < 0.5 else eta


def _l2_start(x: np.ndarray, eps: float, rng) -> np.ndarray:
    """L2 line 1: a grid of (H // 5)-wide bumps, each with a random sign per example,
    scaled to length eps. x: (N, H, W, C)."""
    n, height, width, channels = x.shape
    s = height // 5
    first = (height - 5 * s) // 2
    delta = np.zeros(x.shape)
    for top in range(first, first + s * (height // s), s):
        for left in range(first, first + s * (width // s), s):
            signs = rng.choice([-1.0, 1.0], size=(n, 1, 1, channels))
            patch = delta[:, top : top + s, left : left + s]  # may be cut at the border
            patch += _eta(s, rng)[: patch.shape[1], : patch.shape[2], None] * signs
    return np.clip(x + eps * delta / np.maximum(_l2(delta), 1e-12), 0, 1).astype(x.dtype)


def _window_norm(v: np.ndarray) -> np.ndarray:
    """L2 norm of (n, h, w, C) over the pixels, per channel: (n, 1, 1, C)."""
    return np.sqrt((v**2).sum(axis=(1, 2), keepdims=True))


# --8<-- [start:l2_candidates]
def _l2_candidates(x, x_best, eps: float, s: int, rng) -> np.ndarray:
    """L2 lines 4-5: empty a second window, put its mass (and any unused budget) into the
    first, reshaped as the old content of the first plus a random +-bump; then the whole
    perturbation is scaled to length eps. x, x_best: (N, H, W, C)."""
    n, height, width, channels = x.shape
    delta = (x_best - x).astype(np.float64)
    first, second = (_windows(n, height, width, s, rng) for _ in range(2))
    in_either = np.zeros(delta.shape, bool)
    in_either[first] = in_either[second] = True
    unused = np.maximum(eps**2 - _l2(delta) ** 2, 0) / channels  # shared out per channel
    mass = np.sqrt(unused + _window_norm(delta * in_either) ** 2)  # (n, 1, 1, C)
    old = delta[first]
    new = _eta(s, rng)[None, :, :, None] * rng.choice([-1.0, 1.0], size=(n, 1, 1, channels))
    new += old / (_window_norm(old) + 1e-12)
    delta[second] = 0
    delta[first] = new * mass / (_window_norm(new) + 1e-12)
    return np.clip(x + eps * delta / np.maximum(_l2(delta), 1e-12), 0, 1).astype(x.dtype)


# --8<-- [end:l2_candidates]


def _l2_side(p: float, height: int, width: int) -> int:
    """The L2 attack's square: at least 3 pixels and odd, so its bump has a centre."""
    s = max(square_side(p, height, width), 3)
    return min(s + 1 - s % 2, height, width)


# --------------------------------------------------------------------------- the attack


def _check(norm: str, eps: float, queries: int, p_init: float) -> None:
    check_budget(norm, eps)
    if not (isinstance(queries, int | np.integer) and queries >= 1):
        raise AttackError(f"the Square attack needs a query budget >= 1; got {queries!r}.")
    if not 0 < p_init <= 1:  # NaN fails too
        raise AttackError(f"p_init is a fraction of the pixels, in (0, 1]; got {p_init}.")


# --8<-- [start:square_attack]
def square_attack(
    model,
    params,
    state,
    x,
    y=None,
    eps: float = 0.3,
    *,
    norm: str = "linf",
    queries: int = 5000,
    p_init: float = 0.8,
    rng: np.random.Generator | int | None = 0,
    targeted: bool = False,
    history: list | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The Square attack on images x (N, H, W, 1) in [0, 1], in eval mode, by queries only.

    y: (N,) labels, or None to attack the network's own predictions; with ``targeted``
    they are the targets. ``queries`` is the budget per example; ``p_init`` = 0.8 is
    AutoAttack's setting. Examples the network already gets wrong (or already at their
    target) are left as they are. If ``history`` is a list, the best loss (N,) is appended
    to it after every query, the first one included.

    Returns (x_adv (N, H, W, 1) float32, queries_used (N,)): queries_used counts the
    perturbed images each example was queried with (the one look at the clean images is
    not counted, as in the paper), so it is 0 for an example left as it was.
    """
    _check(norm, eps, queries, p_init)
    if targeted and y is None:
        raise AttackError("a targeted attack needs its targets y.")
    x = np.asarray(x, dtype=np.float32)
    start, candidates, side = (
        (_stripes, _linf_candidates, square_side)
        if norm == "linf"
        else (_l2_start, _l2_candidates, _l2_side)
    )
    rng = np.random.default_rng(rng)
    logits = _query(model, params, state, x)
    labels = logits.argmax(axis=1) if y is None else as_labels(y, *logits.shape)

    used = np.zeros(len(x), np.int64)

    def ask(images, which):  # one query of the examples `which`: (margin, loss)
        used[which] += 1
        return margin_and_loss(_query(model, params, state, images), labels[which], targeted)

    def record():
        if history is not None:
            history.append(loss.copy())

    margin, loss = margin_and_loss(logits, labels, targeted)
    x_best = x.copy()
    todo = np.flatnonzero(margin > 0)  # the others are fooled already: nothing to do
    x_best[todo] = start(x[todo], eps, rng)  # line 1
    margin[todo], loss[todo] = ask(x_best[todo], todo)
    record()
    for i in range(queries - 1):
        todo = np.flatnonzero(margin > 0)  # line 2
        if len(todo) == 0:
            break
        s = side(p_selection(p_init, i, queries), *x.shape[1:3])  # line 3
        tried = candidates(x[todo], x_best[todo], eps, s, rng)
        new_margin, new_loss = ask(tried, todo)  # line 6
        better = new_loss < loss[todo]  # line 7: keep a candidate only if it helps
        keep = todo[better]
        x_best[keep], margin[keep], loss[keep] = tried[better], new_margin[better], new_loss[better]
        record()
    return x_best, used


# --8<-- [end:square_attack]
