"""The three checks of every op, applied to one layer at a time, with either
implementation of the ops (``PlainOps`` or the fast NumPy ``FastOps``):

1. finite differences in float64 against our backward pass;
2. our forward pass against the Flax twin's, in float32 and float64;
3. our backward pass against ``jax.vjp`` of the Flax twin, for the input and every
   parameter (and the updated BatchNorm statistics in train mode).

Checks 2 and 3 are ``scratchcnn parity``'s own (``parity.op_row``), with its tolerance.
A layer is checked as a one-layer ``Sequential`` so that its Flax twin, weight conversion
and dropout keys go through the same code as whole models do.
"""

import jax
import jax.numpy as jnp
import numpy as np

from scratchcnn import parity
from scratchcnn.fast import FastOps
from scratchcnn.gradcheck import numerical_gradient, relative_error
from scratchcnn.layers import Sequential, named_arrays, use_ops
from scratchcnn.ops import PlainOps

FD_TOLERANCE = 1e-7
# For pytest.mark.parametrize: every op test runs on both implementations.
BOTH_OPS = {"argnames": "ops", "argvalues": [PlainOps, FastOps], "ids": ["plain", "fast"]}


def kink_free(rng, shape, dtype=np.float64):
    """Distinct values in (-2, 2), none near 0 or near each other.

    A finite difference that steps across a kink (ReLU at 0, a max-pool tie) measures
    neither side's slope, so test inputs keep every kink at least ~4/size away.
    """
    size = int(np.prod(shape))
    values = (rng.permutation(size) - (size - 1) / 2) * (4 / size)
    return values.reshape(shape).astype(dtype)


def setup(layer, in_shape, batch, seed, dtype=np.float64):
    """A one-layer model with random weights, a kink-free input and an output cotangent."""
    rng = np.random.default_rng(seed)
    model = Sequential([layer])
    params, state = model.init(rng, in_shape, dtype)
    params, state = parity.randomized(params, rng), parity.randomized(state, rng)
    x = kink_free(rng, (batch, *in_shape), dtype)
    out_shape = model.forward(params, state, x, train=False)[0].shape
    dout = rng.standard_normal(out_shape).astype(dtype)
    return model, params, state, x, dout


def check_finite_differences(layer, in_shape, *, batch=2, train=False, seed=0):
    """Check 1: our backward pass equals central differences (float64)."""
    model, params, state, x, dout = setup(layer, in_shape, batch, seed)
    # The same key every call: the same dropout mask. Eval mode draws none, and skipping
    # the key saves a JAX call per forward pass (thousands of them here).
    key = jax.random.key(seed) if train else None

    def loss(_):
        out = model.forward(params, state, x, train=train, rng=key)[0]
        return float(np.sum(out * dout))

    out, _, caches = model.forward(params, state, x, train=train, rng=key)
    dx, grads = model.backward(dout, caches)
    assert relative_error(dx, numerical_gradient(loss, x)) <= FD_TOLERANCE, "d input"
    grads = named_arrays(grads)
    for name, array in named_arrays(params).items():  # "conv1.kernel", "residual1.body..."
        numeric = numerical_gradient(loss, array)  # nudges the array inside params
        error = relative_error(grads[name], numeric)
        assert error <= FD_TOLERANCE, f"d {name}: {error:.2e}"


def check_flax_parity(layer, in_shape, *, batch=2, train=False, seed=0, dtype=np.float32):
    """Checks 2 and 3: forward and every gradient equal to the Flax twin's."""
    row = parity.op_row("op", layer, in_shape, train, dtype, seed=seed, batch=batch)
    worst, error = row.worst
    assert row.ok, f"{worst}: {error:.2e} > {row.tolerance:.0e} ({row.dtype})"


def check_dtype_and_names(layer, in_shape, *, batch=2, train=False, seed=0):
    """float32 in, float32 out; a gradient for every parameter, and only for those."""
    model, params, state, x, dout = setup(layer, in_shape, batch, seed, np.float32)
    out, _, caches = model.forward(params, state, x, train=train, rng=jax.random.key(seed))
    dx, grads = model.backward(dout, caches)
    assert out.dtype == dx.dtype == np.float32
    assert set(named_arrays(grads)) == set(named_arrays(params))
    assert all(g.dtype == np.float32 for g in named_arrays(grads).values())


def check_numpy_equals_jax(layer, in_shape, *, batch=2, train=False, seed=0):
    """The NumPy results equal the plain code's on jax.numpy arrays (float64)."""
    model, params, state, x, dout = setup(layer, in_shape, batch, seed)
    key = jax.random.key(seed)
    out, _, caches = model.forward(params, state, x, train=train, rng=key)
    dx, grads = model.backward(dout, caches)
    to_jax = lambda tree: jax.tree.map(jnp.asarray, tree)  # noqa: E731
    out_j, _, caches_j = model.forward(
        to_jax(params), to_jax(state), jnp.asarray(x), train=train, rng=key
    )
    dx_j, grads_j = model.backward(jnp.asarray(dout), caches_j)
    assert isinstance(out_j, jax.Array) and isinstance(dx_j, jax.Array)
    assert relative_error(out, out_j) <= 1e-12
    assert relative_error(dx, dx_j) <= 1e-12
    grads_j = named_arrays(grads_j)
    for name, g in named_arrays(grads).items():
        assert relative_error(g, grads_j[name]) <= 1e-12, name


def check_all(layer, in_shape, *, batch=2, train=False, seed=0, ops=FastOps):
    """Every check above for one layer configuration, NumPy arrays running on ``ops``."""
    with use_ops(ops):
        check_finite_differences(layer, in_shape, batch=batch, train=train, seed=seed)
        for dtype in (np.float32, np.float64):
            check_flax_parity(layer, in_shape, batch=batch, train=train, seed=seed, dtype=dtype)
        check_dtype_and_names(layer, in_shape, batch=batch, train=train, seed=seed)
        check_numpy_equals_jax(layer, in_shape, batch=batch, train=train, seed=seed)
