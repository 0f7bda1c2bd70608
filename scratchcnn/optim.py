r"""Optimizers and learning-rate schedules, written by hand over parameter pytrees.

Parameters, gradients and optimizer state are nested dicts of arrays, e.g.
``{"conv1": {"kernel": (3, 3, 1, 32), "bias": (32,)}, ...}``. An optimizer is a frozen
dataclass that holds hyperparameters only; the arrays travel in and out of two pure
functions, so the same code runs on NumPy arrays and, unchanged, inside ``jax.jit``::

    opt_state = optimizer.init(params)
    params, opt_state = optimizer.update(grads, opt_state, params)

Each update below is for one parameter array ``p`` with gradient ``g`` at step ``t``
(``t`` = number of updates already done, starting at 0) and learning rate
``lr_t = schedule(t) * lr_scale``.

**SGD.** ``p <- p - lr_t * g``: walk downhill, a step proportional to the slope.

**Momentum** (heavy ball). Keep a velocity that remembers past gradients::

    v <- g + momentum * v
    p <- p - lr_t * v

Gradients that keep pointing the same way add up (up to ``1 / (1 - momentum)`` times
larger steps); gradients that flip sign cancel, which damps zig-zagging across a valley.

**Nesterov momentum.** Step with the velocity *and* look one step further along it::

    v <- g + momentum * v
    p <- p - lr_t * (g + momentum * v)

This is Sutskever et al.'s reformulation of Nesterov's method, the one PyTorch and optax
use: it reacts to a change in the gradient one step earlier than plain momentum.

**Adam.** Keep running averages of the gradient (first moment ``m``) and of its square
(second moment ``v``), and divide one by the square root of the other, so every
coordinate moves by about ``lr_t`` whatever the scale of its gradient::

    m <- b1 * m + (1 - b1) * g
    v <- b2 * v + (1 - b2) * g**2
    m_hat = m / (1 - b1**(t + 1))          # bias correction
    v_hat = v / (1 - b2**(t + 1))
    p <- p - lr_t * m_hat / (sqrt(v_hat) + eps)

*Bias correction*: ``m`` and ``v`` start at zero, so the early averages are pulled
towards zero; after ``t + 1`` steps of a constant gradient ``g``, ``m = (1 - b1**(t+1)) g``.
Dividing by ``1 - b1**(t + 1)`` undoes exactly that shrinkage.

**Weight decay, two kinds.** The classic ("L2", PyTorch's ``weight_decay`` argument)
adds ``weight_decay * p`` to the gradient before anything else: ``g <- g + wd * p``. In
Adam that decay is then divided by ``sqrt(v_hat)`` like the rest of the gradient, so
parameters with large gradients are hardly decayed. *Decoupled* weight decay (AdamW,
Loshchilov & Hutter) keeps it out of the adaptive part::

    p <- p - lr_t * (m_hat / (sqrt(v_hat) + eps) + wd * p)

Here, as in optax, the decay is scaled by the learning rate (``lr_t * wd``), so a
schedule lowers both together. In every optimizer weight decay applies only to
parameters with ``ndim > 1`` (convolution and dense kernels); biases and BatchNorm
scales/offsets are not decayed, the usual practice.

**Gradient clipping.** With ``clip_norm=c``, the gradient tree is first rescaled so that
its global norm ``sqrt(sum of g**2 over every array)`` is at most ``c`` (optax's
``clip_by_global_norm``); weight decay is added after clipping.

Every formula is checked against optax, step by step, in ``tests/test_optim.py``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from scratchcnn.errors import ScratchCNNError
from scratchcnn.ops._xp import namespace

Schedule = Callable[[Any], Any]
"""A learning-rate schedule: ``schedule(step) -> lr`` (a float or a 0-d float array).

``step`` is the number of updates done so far: a Python int, a NumPy integer or 0-d
array, or a traced JAX integer inside ``jax.jit``.
"""


class ConfigError(ScratchCNNError, ValueError):
    """An optimizer or schedule was given a name or a hyperparameter it cannot accept."""


# --------------------------------------------------------------------------- pytrees


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """Apply ``fn`` leaf by leaf to nested dicts of the same structure.

    ``tree_map(f, a, b)`` has ``f(a[k]..., b[k]...)`` wherever ``a`` has an array.
    """
    if isinstance(tree, dict):
        return {key: tree_map(fn, tree[key], *(r[key] for r in rest)) for key in tree}
    return fn(tree, *rest)


def tree_leaves(tree: Any) -> list:
    """Every array of a nested dict, in key order."""
    if isinstance(tree, dict):
        return [leaf for key in tree for leaf in tree_leaves(tree[key])]
    return [tree]


def zeros_like_tree(tree: Any) -> Any:
    """A tree of zeros with the shapes and dtypes of ``tree``."""
    return tree_map(lambda p: namespace(p).zeros_like(p), tree)


# --------------------------------------------------------------------------- checks


def _is_number(value: Any) -> bool:
    """A real number (Python or NumPy), but not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check(value: Any, name: str, ok: Callable[[Any], bool], requirement: str) -> None:
    """Raise ``ConfigError`` unless ``value`` is a finite number for which ``ok(value)``
    holds (NaN and the infinities never are: no hyperparameter means anything there)."""
    if not (_is_number(value) and math.isfinite(value) and ok(value)):
        raise ConfigError(f"{name} must be {requirement}, got {value!r}.")


def _check_positive_int(value: Any, name: str) -> None:
    _check(value, name, lambda v: isinstance(v, numbers.Integral) and v > 0, "an integer > 0")


def _check_learning_rate(learning_rate: Any, name: str = "learning_rate") -> None:
    if not callable(learning_rate):
        _check(learning_rate, name, lambda v: v > 0, "a number > 0 or a schedule")


def _check_decay_rate(value: Any, name: str) -> None:
    """Decay rates (momentum, b1, b2) must lie in [0, 1)."""
    _check(value, name, lambda v: 0 <= v < 1, "in [0, 1)")


def _check_common(opt: Any) -> None:
    """The checks every optimizer shares: learning rate, weight decay, clipping."""
    _check_learning_rate(opt.learning_rate)
    _check(opt.weight_decay, "weight_decay", lambda v: v >= 0, ">= 0")
    if opt.clip_norm is not None:
        _check(opt.clip_norm, "clip_norm", lambda v: v > 0, "None or a number > 0")


# --------------------------------------------------------------------------- schedules


def constant(lr: float) -> Schedule:
    """``lr_t = lr`` at every step."""
    _check_learning_rate(lr, "lr")
    return lambda step: lr


def milestones(lr: float, boundaries: list[int], gamma: float = 0.1) -> Schedule:
    """Step decay: ``lr_t = lr * gamma**(number of boundaries b with t >= b)``.

    ``milestones(0.1, [1000, 2000])`` gives 0.1 up to step 999, 0.01 from step 1000,
    0.001 from step 2000 (optax's ``piecewise_constant_schedule`` with ``{b: gamma}``,
    PyTorch's ``MultiStepLR``).
    """
    _check_learning_rate(lr, "lr")
    _check(gamma, "gamma", lambda v: v >= 0, ">= 0")
    for b in boundaries:
        _check(
            b,
            "every boundary",
            lambda v: isinstance(v, numbers.Integral) and v >= 0,
            "an integer >= 0",
        )
    if len(set(boundaries)) != len(boundaries):
        raise ConfigError(f"boundaries must not repeat, got {boundaries!r}.")
    ordered = sorted(int(b) for b in boundaries)

    def schedule(step):
        xp = namespace(step)
        value = lr
        for boundary in ordered:
            value = xp.where(step >= boundary, value * gamma, value)
        return value

    return schedule


def cosine(lr: float, decay_steps: int, alpha: float = 0.0) -> Schedule:
    """Cosine decay from ``lr`` to ``alpha * lr`` over ``decay_steps``, then flat.

    ``lr_t = lr * ((1 - alpha) * (1 + cos(pi * min(t, T) / T)) / 2 + alpha)``, T =
    ``decay_steps`` (optax's ``cosine_decay_schedule``).
    """
    _check_learning_rate(lr, "lr")
    _check_positive_int(decay_steps, "decay_steps")
    _check(alpha, "alpha", lambda v: 0 <= v <= 1, "in [0, 1]")
    total = float(decay_steps)  # a float, so min(t, T) / T never overflows int32 in JAX

    def schedule(step):
        xp = namespace(step)
        t = xp.minimum(step, total)
        decayed = 0.5 * (1 + xp.cos(xp.pi * t / total))
        return lr * ((1 - alpha) * decayed + alpha)

    return schedule


def _as_float(step):
    """The step as a float: in JAX, int32 / int gives float32 even when float64 is on."""
    return step * 1.0


def _cosine_between(start, end, fraction, xp):
    """Half a cosine wave from ``start`` (fraction 0) to ``end`` (fraction 1)."""
    return end + (start - end) / 2.0 * (xp.cos(xp.pi * fraction) + 1)


# --8<-- [start:one_cycle]
def one_cycle(
    total_steps: int,
    peak_lr: float,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
) -> Schedule:
    """The one-cycle policy (Smith): up to ``peak_lr`` and down again, along cosines.

    Over the first ``R = int(pct_start * total_steps)`` steps the rate rises from
    ``peak_lr / div_factor`` to ``peak_lr``; over the remaining ``total_steps - R`` it
    falls to ``peak_lr / (div_factor * final_div_factor)``, and stays there (optax's
    ``cosine_onecycle_schedule``).
    """
    _check_positive_int(total_steps, "total_steps")
    _check_learning_rate(peak_lr, "peak_lr")
    _check(pct_start, "pct_start", lambda v: 0 < v < 1, "in (0, 1)")
    _check(div_factor, "div_factor", lambda v: v > 0, "> 0")
    _check(final_div_factor, "final_div_factor", lambda v: v > 0, "> 0")
    rise = int(pct_start * total_steps)
    start = peak_lr / div_factor
    end = start / final_div_factor

    def schedule(step):
        xp, t = namespace(step), _as_float(step)
        rising = _cosine_between(start, peak_lr, t / max(rise, 1), xp)
        falling = _cosine_between(peak_lr, end, (t - rise) / max(total_steps - rise, 1), xp)
        return xp.where(step < rise, rising, xp.where(step < total_steps, falling, end))

    return schedule


# --8<-- [end:one_cycle]


def as_schedule(learning_rate: float | Schedule) -> Schedule:
    """A schedule as it is, a number as ``constant(number)``."""
    return learning_rate if callable(learning_rate) else constant(learning_rate)


def warmup(
    schedule_or_lr: float | Schedule, warmup_steps: int, init_value: float = 0.0
) -> Schedule:
    """Linear warm-up from ``init_value`` to the schedule's first value, then the schedule.

    For ``t < W`` (W = ``warmup_steps``): ``lr_t = init + (peak - init) * t / W`` with
    ``peak = schedule(0)``; from then on ``lr_t = schedule(t - W)``, the schedule shifted
    by ``W`` steps (optax's ``join_schedules([linear_schedule(...), schedule], [W])``).
    """
    _check_positive_int(warmup_steps, "warmup_steps")
    _check(init_value, "init_value", lambda v: v >= 0, ">= 0")
    after = as_schedule(schedule_or_lr)
    peak = float(after(0))

    def schedule(step):
        xp = namespace(step)
        t = xp.clip(_as_float(step), 0, warmup_steps)
        rising = (init_value - peak) * (1 - t / warmup_steps) + peak
        return xp.where(step < warmup_steps, rising, after(step - warmup_steps))

    return schedule


# --------------------------------------------------------------------------- update pieces


def global_norm(tree: Any):
    """``sqrt(sum of g**2 over every array of the tree)``: the length of one long vector."""
    leaves = tree_leaves(tree)
    xp = namespace(*leaves)
    return xp.sqrt(sum(xp.sum(g * g) for g in leaves))


def clip_by_global_norm(grads: Any, max_norm: float) -> Any:
    """Scale the whole tree by ``max_norm / norm`` when its global norm exceeds ``max_norm``.

    One factor for every array, so the direction of the full gradient is unchanged.
    """
    norm = global_norm(grads)
    xp = namespace(norm)
    clipped = xp.maximum(norm, max_norm)  # never 0, so the division below is always safe

    def clip(g):
        return xp.where(norm < max_norm, g, (g / clipped.astype(g.dtype)) * max_norm)

    return tree_map(clip, grads)


def decays(p) -> bool:
    """Whether weight decay applies to this parameter: kernels yes, 1-d vectors no."""
    return p.ndim > 1


def add_weight_decay(grads: Any, params: Any, weight_decay: float) -> Any:
    """``g + weight_decay * p`` for every kernel (``ndim > 1``); other gradients unchanged."""
    if weight_decay == 0:
        return grads
    return tree_map(lambda g, p: g + weight_decay * p if decays(p) else g, grads, params)


def _cast(value, like):
    """``value`` as a 0-d array of ``like``'s dtype: float32 params stay float32."""
    return namespace(like).asarray(value, dtype=like.dtype)


def current_lr(schedule: Schedule, opt_state: dict):
    """``lr_t = schedule(step) * lr_scale``: the learning rate of this update."""
    return schedule(opt_state["step"]) * opt_state["lr_scale"]


def descend(params: Any, directions: Any, lr) -> Any:
    """``p - lr * d`` for every parameter, in the parameter's own dtype."""
    return tree_map(lambda p, d: p - _cast(lr, p) * d, params, directions)


def init_counters(params: Any) -> dict:
    """``{"step": 0, "lr_scale": 1.0}`` as 0-d arrays (int32; the params' float dtype)."""
    leaves = tree_leaves(params)
    xp = namespace(*leaves)
    float_dtype = np.result_type(*(p.dtype for p in leaves))
    return {
        "step": xp.zeros((), dtype=xp.int32),
        "lr_scale": xp.ones((), dtype=float_dtype),
    }


def next_counters(opt_state: dict) -> dict:
    """The counters after one more update: ``step + 1``, ``lr_scale`` unchanged."""
    step = opt_state["step"]
    return {"step": _cast(step + 1, step), "lr_scale": opt_state["lr_scale"]}


def set_lr_scale(opt_state: dict, scale: float) -> dict:
    """A copy of ``opt_state`` whose ``lr_scale`` is ``scale`` (same dtype, same library).

    The training loop calls it with ``ReduceOnPlateau.step(...)``'s result.
    """
    return {**opt_state, "lr_scale": _cast(scale, opt_state["lr_scale"])}


# --------------------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    ``v <- g + momentum * v``; ``p <- p - lr_t * v`` (or ``lr_t * (g + momentum * v)``
    with ``nesterov=True``); plain ``p <- p - lr_t * g`` when ``momentum == 0``. This is
    optax's ``sgd`` and PyTorch's ``SGD`` (dampening 0). ``weight_decay`` is the coupled
    L2 form, ``g <- g + weight_decay * p``, on kernels only (``ndim > 1``).
    """

    learning_rate: float | Schedule
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    clip_norm: float | None = None

    def __post_init__(self) -> None:
        _check_common(self)
        _check_decay_rate(self.momentum, "momentum")
        if self.nesterov and self.momentum == 0:
            raise ConfigError("nesterov=True needs a momentum > 0, got momentum=0.")

    def init(self, params: Any) -> dict:
        """``{"step", "lr_scale"}``, plus a zero ``"momentum"`` tree when momentum > 0."""
        state = init_counters(params)
        if self.momentum > 0:
            state["momentum"] = zeros_like_tree(params)
        return state

    # --8<-- [start:sgd_update]
    def update(self, grads: Any, opt_state: dict, params: Any) -> tuple[Any, dict]:
        """One step: ``(grads, opt_state, params) -> (new_params, new_opt_state)``."""
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        grads = add_weight_decay(grads, params, self.weight_decay)
        lr = current_lr(as_schedule(self.learning_rate), opt_state)
        new_state = next_counters(opt_state)
        if self.momentum == 0:
            return descend(params, grads, lr), new_state

        m = self.momentum
        velocity = tree_map(lambda g, v: g + m * v, grads, opt_state["momentum"])
        if self.nesterov:
            directions = tree_map(lambda g, v: g + m * v, grads, velocity)
        else:
            directions = velocity
        new_state["momentum"] = velocity
        return descend(params, directions, lr), new_state

    # --8<-- [end:sgd_update]


@dataclass(frozen=True)
class Adam:
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` is coupled L2.

    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g**2``, then
    ``p <- p - lr_t * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1**(t+1))``,
    ``v_hat = v / (1 - b2**(t+1))`` (optax's ``adam``). ``weight_decay`` adds
    ``weight_decay * p`` to the gradient of every kernel (``ndim > 1``) before the
    moments, as PyTorch's ``Adam(weight_decay=...)``; for decoupled decay use ``AdamW``.
    """

    learning_rate: float | Schedule
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_norm: float | None = None

    # Not a field (no annotation): where weight decay goes. Adam adds it to the gradient
    # (coupled L2); AdamW sets this to True and adds it to the step.
    decoupled = False

    def __post_init__(self) -> None:
        _check_common(self)
        _check_decay_rate(self.b1, "b1")
        _check_decay_rate(self.b2, "b2")
        _check(self.eps, "eps", lambda v: v > 0, "> 0")

    def init(self, params: Any) -> dict:
        """``{"step", "lr_scale", "mu", "nu"}`` with zero moments shaped like params."""
        return {
            **init_counters(params),
            "mu": zeros_like_tree(params),
            "nu": zeros_like_tree(params),
        }

    # --8<-- [start:adam_update]
    def adam_directions(self, grads: Any, opt_state: dict) -> tuple[Any, Any, Any]:
        """The new moments ``mu``, ``nu`` and the step ``m_hat / (sqrt(v_hat) + eps)``."""
        b1, b2 = self.b1, self.b2
        mu = tree_map(lambda g, m: (1 - b1) * g + b1 * m, grads, opt_state["mu"])
        nu = tree_map(lambda g, v: (1 - b2) * (g * g) + b2 * v, grads, opt_state["nu"])
        t = opt_state["step"] + 1  # this is update number t (1, 2, ...)

        def direction(m, v):
            m_hat = m / _cast(1 - b1**t, m)
            v_hat = v / _cast(1 - b2**t, v)
            return m_hat / (namespace(v).sqrt(v_hat) + self.eps)

        return mu, nu, tree_map(direction, mu, nu)

    def update(self, grads: Any, opt_state: dict, params: Any) -> tuple[Any, dict]:
        """One step: ``(grads, opt_state, params) -> (new_params, new_opt_state)``."""
        if self.clip_norm is not None:
            grads = clip_by_global_norm(grads, self.clip_norm)
        if not self.decoupled:
            grads = add_weight_decay(grads, params, self.weight_decay)
        mu, nu, directions = self.adam_directions(grads, opt_state)
        if self.decoupled:
            directions = add_weight_decay(directions, params, self.weight_decay)
        lr = current_lr(as_schedule(self.learning_rate), opt_state)
        new_state = {**next_counters(opt_state), "mu": mu, "nu": nu}
        return descend(params, directions, lr), new_state

    # --8<-- [end:adam_update]


@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), optax's ``adamw``.

    ``p <- p - lr_t * (m_hat / (sqrt(v_hat) + eps) + weight_decay * p)`` for kernels
    (``ndim > 1``); biases and BatchNorm parameters get plain Adam. The decay is scaled by
    the learning rate, so a schedule lowers both together.
    """

    weight_decay: float = 1e-4
    decoupled = True


# --------------------------------------------------------------------------- by name

OPTIMIZERS: dict[str, tuple[type, dict]] = {
    "sgd": (SGD, {}),
    "momentum": (SGD, {"momentum": 0.9}),
    "nesterov": (SGD, {"momentum": 0.9, "nesterov": True}),
    "adam": (Adam, {}),
    "adamw": (AdamW, {}),
}
"""Each name's class and default hyperparameters; keyword arguments override them."""


def make_optimizer(name: str, learning_rate: float | Schedule, **kw: Any) -> SGD | Adam:
    """The optimizer called ``name`` ("sgd", "momentum", "nesterov", "adam", "adamw").

    ``make_optimizer("nesterov", 0.01, weight_decay=5e-4)`` is
    ``SGD(0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)``. An unknown name,
    keyword or bad value raises ``ConfigError``.
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}.")
    cls, defaults = OPTIMIZERS[name]
    accepted = [f.name for f in fields(cls) if f.name != "learning_rate"]
    unknown = sorted(set(kw) - set(accepted))
    if unknown:
        raise ConfigError(
            f"optimizer {name!r} has no option {unknown[0]!r}; it accepts {', '.join(accepted)}."
        )
    return cls(learning_rate, **{**defaults, **kw})


# --------------------------------------------------------------------------- plateaus


class ReduceOnPlateau:
    """Multiply the learning rate by ``factor`` when the validation loss stops improving.

    Call ``step(metric)`` once per epoch; it returns the new scale, which the training loop
    puts into ``opt_state["lr_scale"]`` (``set_lr_scale``). The rules, those of optax's
    ``contrib.reduce_on_plateau`` with ``rtol = threshold`` and ``atol = 0``:

    - ``metric`` *improves* on the best value so far when ``metric < (1 - threshold) *
      best`` (``mode="min"``; the first finite value always does). An improvement
      becomes the new best and resets the count of bad epochs; any other value adds one.
    - When the count of bad epochs reaches ``patience``, the scale is multiplied by
      ``factor`` (never below ``min_scale``), the count restarts at 0, and the next
      ``cooldown`` epochs are ignored (their bad epochs are not counted).

    So ``patience=3`` reduces after the 3rd epoch without improvement (PyTorch's
    ``ReduceLROnPlateau`` waits for the 4th). ``mode="max"`` is for metrics that should
    grow, such as accuracy: it improves when ``metric > (1 + threshold) * best``.
    """

    def __init__(
        self,
        factor: float = 0.5,
        patience: int = 3,
        min_scale: float = 1e-3,
        threshold: float = 1e-4,
        cooldown: int = 0,
        mode: str = "min",
    ) -> None:
        _check(factor, "factor", lambda v: 0 < v < 1, "in (0, 1)")
        _check_positive_int(patience, "patience")
        _check(min_scale, "min_scale", lambda v: 0 <= v <= 1, "in [0, 1]")
        _check(threshold, "threshold", lambda v: 0 <= v < 1, "in [0, 1)")
        _check(
            cooldown,
            "cooldown",
            lambda v: isinstance(v, numbers.Integral) and v >= 0,
            "an integer >= 0",
        )
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}.")
        self.factor, self.patience, self.min_scale = factor, patience, min_scale
        self.threshold, self.cooldown, self.mode = threshold, cooldown, mode
        self.scale = 1.0
        self.best: float | None = None  # None until a first value improves
        self.bad_epochs = 0
        self.cooldown_left = 0

    def improves(self, metric: float) -> bool:
        """Whether ``metric`` beats the best value by more than the relative threshold."""
        if self.mode == "min":
            best = math.inf if self.best is None else self.best
            return metric < (1 - self.threshold) * best
        best = -math.inf if self.best is None else self.best
        return metric > (1 + self.threshold) * best

    def step(self, metric: float) -> float:
        """Record one epoch's metric and return the learning-rate scale to use next."""
        metric = float(metric)
        if self.improves(metric):
            self.best, bad_epochs = metric, 0
        else:
            bad_epochs = self.bad_epochs + 1
        if self.cooldown_left > 0:  # just reduced: let the new rate settle
            self.cooldown_left -= 1
            self.bad_epochs = 0
        elif bad_epochs == self.patience:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.bad_epochs = 0
            self.cooldown_left = self.cooldown
        else:
            self.bad_epochs = bad_epochs
        return self.scale

    def state_dict(self) -> dict:
        """The counters, as JSON-serializable values (for checkpoints)."""
        return {
            "scale": self.scale,
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "cooldown_left": self.cooldown_left,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the counters ``state_dict`` returned."""
        missing = [
            key for key in ("scale", "best", "bad_epochs", "cooldown_left") if key not in state
        ]
        if missing:
            raise ConfigError(f"the reduce-on-plateau state has no {missing[0]!r} entry.")
        self.scale = float(state["scale"])
        self.best = None if state["best"] is None else float(state["best"])
        self.bad_epochs = int(state["bad_epochs"])
        self.cooldown_left = int(state["cooldown_left"])
