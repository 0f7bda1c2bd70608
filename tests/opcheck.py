"""The three checks of DESIGN.md, applied to one layer (one op) at a time.

1. finite differences in float64 against our backward pass;
2. our forward pass against the Flax twin's, in float32 and float64;
3. our backward pass against ``jax.vjp`` of the Flax twin, for the input and every
   parameter (and the updated BatchNorm statistics in train mode).

A layer is checked as a one-layer ``Sequential`` so that its Flax twin, weight conversion
and dropout keys go through the same code as whole models do.
"""

import jax
import jax.numpy as jnp
import numpy as np

from scratchcnn import reference
from scratchcnn.gradcheck import numerical_gradient, relative_error
from scratchcnn.layers import Sequential
from scratchcnn.parity import randomized

FD_TOLERANCE = 1e-7
PARITY_TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


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
    params, state = randomized(params, rng), randomized(state, rng)
    x = kink_free(rng, (batch, *in_shape), dtype)
    out_shape = model.forward(params, state, x, train=False)[0].shape
    dout = rng.standard_normal(out_shape).astype(dtype)
    return model, params, state, x, dout


def check_finite_differences(layer, in_shape, *, batch=2, train=False, seed=0):
    """Check 1: our backward pass equals central differences (float64)."""
    model, params, state, x, dout = setup(layer, in_shape, batch, seed)
    key = jax.random.key(seed)  # the same key every call: the same dropout mask

    def loss(_):
        out = model.forward(params, state, x, train=train, rng=key)[0]
        return float(np.sum(out * dout))

    out, _, caches = model.forward(params, state, x, train=train, rng=key)
    dx, grads = model.backward(dout, caches)
    assert relative_error(dx, numerical_gradient(loss, x)) <= FD_TOLERANCE, "d input"
    for name, arrays in params.items():
        for key_name, array in arrays.items():
            numeric = numerical_gradient(loss, array)  # nudges the array inside params
            error = relative_error(grads[name][key_name], numeric)
            assert error <= FD_TOLERANCE, f"d {name}.{key_name}: {error:.2e}"


def check_flax_parity(layer, in_shape, *, batch=2, train=False, seed=0, dtype=np.float32):
    """Checks 2 and 3: forward and every gradient equal to the Flax twin's."""
    tolerance = PARITY_TOLERANCE[dtype]
    model, params, state, x, dout = setup(layer, in_shape, batch, seed, dtype)
    key = jax.random.key(seed)
    out, new_state, caches = model.forward(params, state, x, train=train, rng=key)
    dx, grads = model.backward(dout, caches)

    apply, flax_params = reference.functional(reference.to_flax(model, params, state, in_shape))
    (flax_out, flax_state), vjp = jax.vjp(
        lambda p, xx: apply(p, xx, train, key), flax_params, jnp.asarray(x)
    )
    flax_grads, flax_dx = vjp((jnp.asarray(dout), jax.tree.map(jnp.zeros_like, flax_state)))

    assert out.dtype == dtype and dx.dtype == dtype
    assert out.shape == flax_out.shape
    assert relative_error(out, flax_out) <= tolerance, "forward"
    assert relative_error(dx, flax_dx) <= tolerance, "d input"
    assert set(grads) == set(flax_grads)
    for name, arrays in flax_grads.items():
        assert set(grads[name]) == set(arrays)
        for key_name, flax_grad in arrays.items():
            error = relative_error(grads[name][key_name], flax_grad)
            assert error <= tolerance, f"d {name}.{key_name}: {error:.2e}"
    if train:
        for name, arrays in flax_state.items():
            for key_name, value in arrays.items():
                assert relative_error(new_state[name][key_name], value) <= tolerance


def check_numpy_equals_jax(layer, in_shape, *, batch=2, train=False, seed=0):
    """The same op code on jax.numpy arrays gives the NumPy results (float64)."""
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
    for name, arrays in grads.items():
        for key_name, g in arrays.items():
            assert relative_error(g, grads_j[name][key_name]) <= 1e-12


def check_all(layer, in_shape, *, batch=2, train=False, seed=0):
    """All three checks of DESIGN.md plus NumPy == JAX, for one layer configuration."""
    check_finite_differences(layer, in_shape, batch=batch, train=train, seed=seed)
    for dtype in (np.float32, np.float64):
        check_flax_parity(layer, in_shape, batch=batch, train=train, seed=seed, dtype=dtype)
    check_numpy_equals_jax(layer, in_shape, batch=batch, train=train, seed=seed)
