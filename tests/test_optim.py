"""Every optimizer, schedule and the plateau rule against optax, step by step.

The optimizers run 100 updates in float64 on a small parameter tree, with gradients from a
fixed function of the current parameters (so every step sees a new gradient), and must
follow optax's trajectory to 1e-12 (relative) after every step. Weight decay is given to
optax with the mask ``ndim > 1`` that ours applies. To compile each optax optimizer once
rather than once per schedule, optax reads its learning rate from a table filled by
optax's own schedule (``lrs[count]``); the schedules are compared to optax's directly in
``test_schedule_matches_optax``.
"""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scratchcnn import optim
from scratchcnn.errors import ScratchCNNError
from scratchcnn.gradcheck import relative_error

pytestmark = pytest.mark.lesson05

STEPS = 100


def make_params(dtype=np.float64, seed=0) -> dict:
    """A conv kernel and bias, a dense kernel and bias: two arrays decay, two do not."""
    rng = np.random.default_rng(seed)
    shapes = {
        "conv1": {"kernel": (3, 3, 1, 4), "bias": (4,)},
        "dense1": {"kernel": (8, 3), "bias": (3,)},
    }
    return jax.tree.map(
        lambda shape: rng.normal(size=shape).astype(dtype),
        shapes,
        is_leaf=lambda x: isinstance(x, tuple),
    )


def gradient(params):
    """Gradient of ``sum(p**2 / 2 + sin(3 p))``: a new gradient at every new point."""
    return jax.tree.map(
        lambda p: p + 3 * (jnp if isinstance(p, jax.Array) else np).cos(3 * p), params
    )


def assert_trees_close(ours, theirs, tol, where=""):
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs), strict=True
    ):
        err = relative_error(a, b)
        assert err <= tol, f"{where} {jax.tree_util.keystr(path)}: relative error {err:.2e}"


# --------------------------------------------------------------------------- schedules

# name -> (our schedule for a base lr, optax's schedule for the same lr)
SCHEDULES = {
    "constant": (optim.constant, optax.constant_schedule),
    "milestones": (
        lambda lr: optim.milestones(lr, [30, 60], gamma=0.5),
        lambda lr: optax.piecewise_constant_schedule(lr, {30: 0.5, 60: 0.5}),
    ),
    "cosine": (
        lambda lr: optim.cosine(lr, 80, alpha=0.1),
        lambda lr: optax.cosine_decay_schedule(lr, 80, alpha=0.1),
    ),
    "one_cycle": (
        lambda lr: optim.one_cycle(STEPS, lr),
        lambda lr: optax.cosine_onecycle_schedule(STEPS, lr),
    ),
    "warmup": (
        lambda lr: optim.warmup(optim.cosine(lr, STEPS - 20), 20),
        lambda lr: optax.warmup_cosine_decay_schedule(0.0, lr, 20, STEPS),
    ),
}

# More shapes of each schedule, edge cases included: (ours, optax's).
SCHEDULE_CASES = {
    "milestones_unsorted_with_0": (
        optim.milestones(0.3, [50, 0, 7], gamma=0.2),
        optax.piecewise_constant_schedule(0.3, {0: 0.2, 7: 0.2, 50: 0.2}),
    ),
    "milestones_none": (optim.milestones(0.3, []), optax.piecewise_constant_schedule(0.3)),
    "cosine_to_zero": (optim.cosine(0.1, 37), optax.cosine_decay_schedule(0.1, 37)),
    "one_cycle_odd": (
        optim.one_cycle(43, 2.0, pct_start=0.25, div_factor=10.0, final_div_factor=100.0),
        optax.cosine_onecycle_schedule(43, 2.0, 0.25, 10.0, 100.0),
    ),
    "one_cycle_no_rise": (
        optim.one_cycle(3, 0.5, pct_start=0.2),
        optax.cosine_onecycle_schedule(3, 0.5, pct_start=0.2),
    ),
    "warmup_constant": (
        optim.warmup(0.4, 9, init_value=0.01),
        optax.join_schedules(
            [optax.linear_schedule(0.01, 0.4, 9), optax.constant_schedule(0.4)], [9]
        ),
    ),
    "warmup_milestones": (
        optim.warmup(optim.milestones(0.4, [10, 25]), 5),
        optax.join_schedules(
            [
                optax.linear_schedule(0.0, 0.4, 5),
                optax.piecewise_constant_schedule(0.4, {10: 0.1, 25: 0.1}),
            ],
            [5],
        ),
    ),
    **{name: (ours(0.05), theirs(0.05)) for name, (ours, theirs) in SCHEDULES.items()},
}


@pytest.mark.parametrize("case", SCHEDULE_CASES)
def test_schedule_matches_optax(case):
    ours, theirs = SCHEDULE_CASES[case]
    steps = np.arange(STEPS + 20)
    expected = np.asarray(jax.vmap(theirs)(jnp.asarray(steps)), dtype=np.float64)
    from_ints = np.array([ours(int(t)) for t in steps], dtype=np.float64)
    from_numpy = np.array([ours(np.int32(t)) for t in steps], dtype=np.float64)
    traced = np.asarray(jax.vmap(ours)(jnp.asarray(steps, dtype=jnp.int32)), dtype=np.float64)
    for got in (from_ints, from_numpy, traced):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- optimizers


def decay_mask(params):
    """optax's mask for our rule: weight decay on kernels (ndim > 1) only."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


# name -> (our optimizer for a schedule, optax's for a schedule, base learning rate)
OPTIMIZERS = {
    "sgd": (
        lambda s: optim.make_optimizer("sgd", s),
        lambda s: optax.sgd(s),
        0.05,
    ),
    "momentum": (
        lambda s: optim.make_optimizer("momentum", s),
        lambda s: optax.sgd(s, momentum=0.9),
        0.02,
    ),
    "nesterov": (
        lambda s: optim.make_optimizer("nesterov", s),
        lambda s: optax.sgd(s, momentum=0.9, nesterov=True),
        0.02,
    ),
    "momentum_weight_decay": (
        lambda s: optim.SGD(s, momentum=0.8, weight_decay=0.05),
        lambda s: optax.chain(
            optax.add_decayed_weights(0.05, decay_mask), optax.sgd(s, momentum=0.8)
        ),
        0.02,
    ),
    "nesterov_clip": (
        lambda s: optim.SGD(s, momentum=0.9, nesterov=True, weight_decay=0.01, clip_norm=1.0),
        lambda s: optax.chain(
            optax.clip_by_global_norm(1.0),
            optax.add_decayed_weights(0.01, decay_mask),
            optax.sgd(s, momentum=0.9, nesterov=True),
        ),
        0.05,
    ),
    "sgd_clip_sometimes": (  # the global norm starts above 12 and falls below it
        lambda s: optim.SGD(s, clip_norm=12.0),
        lambda s: optax.chain(optax.clip_by_global_norm(12.0), optax.sgd(s)),
        0.05,
    ),
    "adam": (
        lambda s: optim.make_optimizer("adam", s),
        lambda s: optax.adam(s),
        0.01,
    ),
    "adam_betas": (
        lambda s: optim.Adam(s, b1=0.8, b2=0.99, eps=1e-3),
        lambda s: optax.adam(s, b1=0.8, b2=0.99, eps=1e-3),
        0.01,
    ),
    "adam_l2": (
        lambda s: optim.Adam(s, weight_decay=0.1),
        lambda s: optax.chain(optax.add_decayed_weights(0.1, decay_mask), optax.adam(s)),
        0.01,
    ),
    "adamw": (
        lambda s: optim.make_optimizer("adamw", s, weight_decay=0.1),
        lambda s: optax.adamw(s, weight_decay=0.1, mask=decay_mask),
        0.01,
    ),
    "adamw_clip": (
        lambda s: optim.AdamW(s, weight_decay=0.1, clip_norm=2.0),
        lambda s: optax.chain(
            optax.clip_by_global_norm(2.0), optax.adamw(s, weight_decay=0.1, mask=decay_mask)
        ),
        0.01,
    ),
}


@functools.cache
def optax_step(name):
    """optax's update for ``OPTIMIZERS[name]``, compiled once, learning rates from a table."""
    build = OPTIMIZERS[name][1]

    @jax.jit
    def step(params, state, lrs):
        opt = build(lambda count: lrs[count])
        updates, state = opt.update(gradient(params), state, params)
        return optax.apply_updates(params, updates), state

    return step


def optax_trajectory(name, lrs, params):
    """The parameters after each of ``len(lrs)`` optax updates with learning rates ``lrs``."""
    state = OPTIMIZERS[name][1](lambda count: 0.1).init(params)  # the same state shape
    params, lrs, history = jax.tree.map(jnp.asarray, params), jnp.asarray(lrs), []
    for _ in range(len(lrs)):
        params, state = optax_step(name)(params, state, lrs)
        history.append(params)
    return history


def optax_lrs(schedule) -> np.ndarray:
    """An optax schedule's values at steps 0 .. STEPS - 1."""
    return np.asarray(jax.vmap(schedule)(jnp.arange(STEPS)))


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", OPTIMIZERS)
def test_trajectory_matches_optax(name, schedule):
    ours_opt, _, lr = OPTIMIZERS[name]
    ours_schedule, optax_schedule = SCHEDULES[schedule]
    expected = optax_trajectory(name, optax_lrs(optax_schedule(lr)), make_params())

    opt = ours_opt(ours_schedule(lr))
    params = make_params()
    state = opt.init(params)
    for step in range(STEPS):
        params, state = opt.update(gradient(params), state, params)
        assert_trees_close(params, expected[step], 1e-12, where=f"step {step}:")
    assert int(state["step"]) == STEPS


@pytest.mark.parametrize("name", ["momentum", "adam_l2", "adamw_clip"])
def test_lr_scale_multiplies_the_step(name):
    """lr_scale = 1 for 40 steps, 0.3 after: optax with those learning rates."""
    ours_opt, _, lr = OPTIMIZERS[name]
    scales = np.where(np.arange(STEPS) < 40, 1.0, 0.3)
    lrs = optax_lrs(optax.cosine_decay_schedule(lr, 90)) * scales
    expected = optax_trajectory(name, lrs, make_params())

    opt = ours_opt(optim.cosine(lr, 90))
    params = make_params()
    state = opt.init(params)
    for step in range(STEPS):
        if step == 40:
            state = optim.set_lr_scale(state, 0.3)
        params, state = opt.update(gradient(params), state, params)
        assert_trees_close(params, expected[step], 1e-12, where=f"step {step}:")
    assert state["lr_scale"].dtype == np.float64


# --------------------------------------------------------------------------- dtypes and jit


def moment_keys(opt) -> set:
    """The moment trees an optimizer's state must hold besides "step" and "lr_scale"."""
    if isinstance(opt, optim.Adam):
        return {"mu", "nu"}
    return {"momentum"} if opt.momentum > 0 else set()


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_float32_stays_float32(name):
    ours_opt, _, lr = OPTIMIZERS[name]
    opt = ours_opt(optim.warmup(optim.cosine(lr, 50), 2))  # np.float64 learning rates
    params = make_params(np.float32)
    state = opt.init(params)
    for _ in range(3):
        params, state = opt.update(gradient(params), state, params)
    assert set(state) == {"step", "lr_scale"} | moment_keys(opt)
    for key in moment_keys(opt):
        assert jax.tree.structure(state[key]) == jax.tree.structure(params)
    floats = {key: value for key, value in state.items() if key != "step"}
    for leaf in jax.tree.leaves(params) + jax.tree.leaves(floats):
        assert isinstance(leaf, np.ndarray) and leaf.dtype == np.float32
    assert isinstance(state["step"], np.ndarray) and state["step"].dtype == np.int32
    assert state["step"].shape == state["lr_scale"].shape == ()
    assert int(state["step"]) == 3 and float(state["lr_scale"]) == 1.0


@pytest.mark.parametrize(
    "name, schedule",
    [("nesterov_clip", "warmup"), ("adam_l2", "milestones"), ("adamw_clip", "one_cycle")],
)
def test_jit_float32_equals_numpy_float32(name, schedule):
    ours_opt, _, lr = OPTIMIZERS[name]
    opt = ours_opt(SCHEDULES[schedule][0](lr))
    update = jax.jit(opt.update)
    np_params = make_params(np.float32)
    np_state = opt.init(np_params)
    jax_params = jax.tree.map(jnp.asarray, np_params)
    jax_state = opt.init(jax_params)
    for step in range(8):
        grads = gradient(np_params)  # the same float32 gradients on both sides
        np_params, np_state = opt.update(grads, np_state, np_params)
        jax_params, jax_state = update(jax.tree.map(jnp.asarray, grads), jax_state, jax_params)
        assert_trees_close(jax_params, np_params, 1e-6, where=f"step {step}:")
        assert_trees_close(jax_state, np_state, 1e-6, where=f"step {step} state:")
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(jax_params))
    assert jax_state["step"].dtype == jnp.int32 and int(jax_state["step"]) == 8


# --------------------------------------------------------------------------- configuration


def test_make_optimizer_names():
    assert optim.make_optimizer("sgd", 0.1) == optim.SGD(0.1)
    assert optim.make_optimizer("momentum", 0.1) == optim.SGD(0.1, momentum=0.9)
    assert optim.make_optimizer("nesterov", 0.1, momentum=0.8) == optim.SGD(
        0.1, momentum=0.8, nesterov=True
    )
    assert optim.make_optimizer("adam", 0.1, b2=0.99) == optim.Adam(0.1, b2=0.99)
    assert optim.make_optimizer("adamw", 0.1) == optim.AdamW(0.1, weight_decay=1e-4)


@pytest.mark.parametrize(
    "name, lr, kw",
    [
        pytest.param("rmsprop", 0.1, {}, id="unknown_name"),
        pytest.param("sgd", 0.0, {}, id="lr_0"),
        pytest.param("sgd", -0.1, {}, id="lr_negative"),
        pytest.param("adam", float("nan"), {}, id="lr_nan"),
        pytest.param("sgd", "0.1", {}, id="lr_string"),
        pytest.param("momentum", 0.1, {"momentum": 1.0}, id="momentum_1"),
        pytest.param("sgd", 0.1, {"momentum": -0.1}, id="momentum_negative"),
        pytest.param("sgd", 0.1, {"nesterov": True}, id="nesterov_without_momentum"),
        pytest.param("adam", 0.1, {"eps": 0.0}, id="eps_0"),
        pytest.param("adam", 0.1, {"b1": 1.0}, id="b1_1"),
        pytest.param("adamw", 0.1, {"weight_decay": -1e-4}, id="weight_decay_negative"),
        pytest.param("sgd", 0.1, {"clip_norm": 0.0}, id="clip_norm_0"),
        pytest.param("adam", 0.1, {"betas": (0.9, 0.99)}, id="unknown_option"),
    ],
)
def test_bad_optimizer_config_raises(name, lr, kw):
    with pytest.raises(optim.ConfigError) as info:
        optim.make_optimizer(name, lr, **kw)
    message = str(info.value)
    assert isinstance(info.value, ScratchCNNError) and isinstance(info.value, ValueError)
    assert message.endswith(".") and "\n" not in message


@pytest.mark.parametrize(
    "make",
    [
        lambda: optim.constant(0.0),
        lambda: optim.milestones(0.1, [10, 10]),
        lambda: optim.milestones(0.1, [-1]),
        lambda: optim.cosine(0.1, 0),
        lambda: optim.cosine(0.1, 10, alpha=2.0),
        lambda: optim.one_cycle(0, 0.1),
        lambda: optim.one_cycle(100, 0.1, pct_start=1.0),
        lambda: optim.warmup(0.1, 0),
        lambda: optim.ReduceOnPlateau(factor=1.0),
        lambda: optim.ReduceOnPlateau(patience=0),
        lambda: optim.ReduceOnPlateau(mode="avg"),
    ],
    ids=[
        "constant_0", "milestones_repeat", "milestones_negative", "cosine_0_steps",
        "cosine_alpha_2", "one_cycle_0_steps", "one_cycle_pct_1", "warmup_0_steps",
        "plateau_factor_1", "plateau_patience_0", "plateau_mode",
    ],
)  # fmt: skip
def test_bad_schedule_or_plateau_config_raises(make):
    with pytest.raises(optim.ConfigError):
        make()


# --------------------------------------------------------------------------- reduce on plateau

_rng = np.random.default_rng(7)
PLATEAU_VALUES = np.concatenate(
    [
        np.linspace(1.0, 0.5, 8),
        0.5 + 0.02 * _rng.random(12),  # noisy plateau
        [0.49995, 0.49991, 0.4999, 0.45],  # improvements below / above rtol=1e-4
        [np.nan, 0.44, np.inf, 0.44, 0.44],
        0.3 + 0.05 * _rng.random(20),
        np.full(15, 0.3),
    ]
)
PLATEAU_CONFIGS = {
    "defaults": {},
    "cooldown": {"factor": 0.1, "patience": 2, "cooldown": 2, "min_scale": 0.01},
    "patience_1": {"factor": 0.7, "patience": 1, "cooldown": 1, "threshold": 0.05},
    "min_scale_0": {"factor": 0.5, "patience": 4, "min_scale": 0.0, "threshold": 1e-3},
}


def optax_plateau(config):
    """optax's reduce_on_plateau with our names, jitted: (update, initial state)."""
    kw = {"factor": 0.5, "patience": 3, "min_scale": 1e-3, "threshold": 1e-4, "cooldown": 0}
    kw |= config
    kw["rtol"] = kw.pop("threshold")
    opt = optax.contrib.reduce_on_plateau(**kw, atol=0.0)
    params = {"w": jnp.zeros(1, dtype=jnp.float64)}
    update = jax.jit(lambda state, value: opt.update(params, state, value=value)[1])
    return update, opt.init(params)


@pytest.mark.parametrize("config", PLATEAU_CONFIGS)
def test_reduce_on_plateau_matches_optax(config):
    update, state = optax_plateau(PLATEAU_CONFIGS[config])
    ours = optim.ReduceOnPlateau(**PLATEAU_CONFIGS[config])
    reductions = 0
    for i, value in enumerate(PLATEAU_VALUES):
        state = update(state, value)
        if i == len(PLATEAU_VALUES) // 2:  # a checkpoint: save, reload, go on
            saved = json.loads(json.dumps(ours.state_dict()))
            ours = optim.ReduceOnPlateau(**PLATEAU_CONFIGS[config])
            ours.load_state_dict(saved)
        before = ours.scale
        scale = ours.step(value)
        reductions += scale < before
        assert scale == pytest.approx(float(state.scale), rel=1e-12), f"value {i}"
    assert reductions >= 3  # the sequence really exercises the rule


def test_reduce_on_plateau_max_mode():
    """Accuracy going up: improvement means metric > (1 + threshold) * best."""
    plateau = optim.ReduceOnPlateau(factor=0.5, patience=2, threshold=0.1, mode="max")
    values = [0.5, 0.6, 0.65, 0.67, 0.9, 0.95, 0.95, 0.96, 0.97]
    # 0.65 < 1.1 * 0.6 is a bad epoch; 0.67 improves; from 0.95 on every value is bad.
    expected = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.25]
    assert [plateau.step(v) for v in values] == expected
