"""Layer objects: hyperparameters only. Weights live in pytrees passed in and out.

Every layer has three methods:

- ``init(rng, in_shape) -> (params, state, out_shape)``: fresh weights for an input of
  ``in_shape`` (one example, no batch axis), drawn from a ``numpy.random.Generator``;
- ``forward(params, state, x, *, train, rng=None) -> (out, new_state, cache)``;
- ``backward(dout, cache) -> (dx, grads)``, with ``grads`` shaped like ``params``.

``Sequential`` chains layers and names them the way the Flax twin names its attributes
(``conv1``, ``batchnorm1``, ``dense2``...), so params are ``{"conv1": {"kernel": ...,
"bias": ...}, ...}`` on both sides and comparing them needs no renaming.

Convolution, pooling, ReLU and batch norm have two implementations behind one interface: the plain
ops (``scratchcnn.ops.PlainOps``) and the fast NumPy backend (``scratchcnn.fast.FastOps``).
``ops_for`` is the one place that chooses between them.
"""

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from scratchcnn.data.mnist import INPUT_SHAPE
from scratchcnn.errors import InputError
from scratchcnn.fast import FastOps
from scratchcnn.ops import PlainOps, activations, conv, dense, dropout, pool
from scratchcnn.ops.windows import as_pair

_numpy_ops = FastOps  # what NumPy arrays run on; ``use_ops`` changes it for a block


# --8<-- [start:ops_for]
def ops_for(x):
    """The implementation of the ops that computes on ``x``.

    JAX arrays, and the tracers of ``jax.jit``, always get the plain ops: the fast ones
    write into NumPy arrays and start threads. NumPy arrays get the fast NumPy backend,
    unless a ``with use_ops(PlainOps):`` block asks for the plain ones.
    """
    return _numpy_ops if isinstance(x, np.ndarray) else PlainOps


@contextmanager
def use_ops(ops):
    """Run NumPy arrays on ``ops`` (``PlainOps`` or ``FastOps``) inside the block."""
    global _numpy_ops
    previous, _numpy_ops = _numpy_ops, ops
    try:
        yield
    finally:
        _numpy_ops = previous


# --8<-- [end:ops_for]


def lecun_normal(rng: np.random.Generator, shape, fan_in: int, dtype) -> np.ndarray:
    """Flax's default kernel init: truncated normal on [-2, 2] with variance 1 / fan_in.

    0.8796... is the standard deviation of a unit normal truncated to [-2, 2]; dividing
    by it makes the *truncated* distribution have the intended variance.
    """
    z = rng.standard_normal(shape)
    outside = np.abs(z) > 2
    while outside.any():  # redraw the tails instead of clipping them onto the bounds
        z[outside] = rng.standard_normal(int(outside.sum()))
        outside = np.abs(z) > 2
    return (z * math.sqrt(1.0 / fan_in) / 0.87962566103423978).astype(dtype)


class Layer:
    """Base class: a layer without parameters or state that keeps the shape."""

    kind = "layer"

    def init(self, rng, in_shape, dtype=np.float32):
        return {}, {}, tuple(in_shape)

    def backward(self, dout, cache):
        raise NotImplementedError


@dataclass(frozen=True)
class Conv(Layer):
    """2-D convolution, HWIO kernel (``nnx.Conv``)."""

    features: int
    kernel_size: int | tuple[int, int] = 3
    strides: int | tuple[int, int] = 1
    padding: str | int | tuple = "SAME"
    use_bias: bool = True
    kind = "conv"

    def init(self, rng, in_shape, dtype=np.float32):
        h, w, c = in_shape
        kh, kw = as_pair(self.kernel_size, "kernel_size")
        params = {"kernel": lecun_normal(rng, (kh, kw, c, self.features), kh * kw * c, dtype)}
        if self.use_bias:
            params["bias"] = np.zeros(self.features, dtype)
        geo = conv.conv_geometry(
            (1, h, w, c), (kh, kw, c, self.features), self.strides, self.padding
        )
        return params, {}, (*geo.out_hw, self.features)

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = ops_for(x).conv2d_forward(
            x, params["kernel"], params.get("bias"), self.strides, self.padding
        )
        return out, state, cache

    def backward(self, dout, cache, input_grad=True):
        return ops_for(dout).conv2d_backward(dout, cache, input_grad)


@dataclass(frozen=True)
class Dense(Layer):
    """Fully connected layer, (in, out) kernel (``nnx.Linear``)."""

    features: int
    use_bias: bool = True
    kind = "dense"

    def init(self, rng, in_shape, dtype=np.float32):
        (d_in,) = in_shape
        params = {"kernel": lecun_normal(rng, (d_in, self.features), d_in, dtype)}
        if self.use_bias:
            params["bias"] = np.zeros(self.features, dtype)
        return params, {}, (self.features,)

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = dense.dense_forward(x, params["kernel"], params.get("bias"))
        return out, state, cache

    def backward(self, dout, cache):
        return dense.dense_backward(dout, cache)


@dataclass(frozen=True)
class ReLU(Layer):
    kind = "relu"

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = ops_for(x).relu_forward(x)
        return out, state, cache

    def backward(self, dout, cache):
        return ops_for(dout).relu_backward(dout, cache)


@dataclass(frozen=True)
class Flatten(Layer):
    kind = "flatten"

    def init(self, rng, in_shape, dtype=np.float32):
        return {}, {}, (math.prod(in_shape),)

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = activations.flatten_forward(x)
        return out, state, cache

    def backward(self, dout, cache):
        return activations.flatten_backward(dout, cache)


@dataclass(frozen=True)
class _Pool(Layer):
    window: int | tuple[int, int] = 2
    strides: int | tuple[int, int] | None = None
    padding: str | int | tuple = "VALID"

    def init(self, rng, in_shape, dtype=np.float32):
        h, w, c = in_shape
        geo = pool.pool_geometry((h, w), self.window, self.strides, self.padding)
        return {}, {}, (*geo.out_hw, c)


@dataclass(frozen=True)
class MaxPool(_Pool):
    """Max pooling (``nnx.max_pool``); strides default to the window."""

    kind = "maxpool"

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = ops_for(x).max_pool_forward(x, self.window, self.strides, self.padding)
        return out, state, cache

    def backward(self, dout, cache):
        return ops_for(dout).max_pool_backward(dout, cache)


@dataclass(frozen=True)
class AvgPool(_Pool):
    """Average pooling (``nnx.avg_pool``), padded cells counted as zeros."""

    kind = "avgpool"

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = ops_for(x).avg_pool_forward(x, self.window, self.strides, self.padding)
        return out, state, cache

    def backward(self, dout, cache):
        return ops_for(dout).avg_pool_backward(dout, cache)


@dataclass(frozen=True)
class GlobalAvgPool(Layer):
    """Mean over H and W: (N, H, W, C) -> (N, C)."""

    kind = "gap"

    def init(self, rng, in_shape, dtype=np.float32):
        return {}, {}, (in_shape[-1],)

    def forward(self, params, state, x, *, train, rng=None):
        out, cache = pool.global_avg_pool_forward(x)
        return out, state, cache

    def backward(self, dout, cache):
        return pool.global_avg_pool_backward(dout, cache)


@dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch norm with Flax's convention: momentum 0.99 weighs the old running value.

    Train mode normalises with the batch statistics (biased variance) and updates the
    running ones; eval mode uses the running statistics. See ``ops/batchnorm.py``.
    """

    momentum: float = 0.99
    epsilon: float = 1e-5
    kind = "batchnorm"

    def init(self, rng, in_shape, dtype=np.float32):
        c = in_shape[-1]
        params = {"scale": np.ones(c, dtype), "bias": np.zeros(c, dtype)}
        state = {"mean": np.zeros(c, dtype), "var": np.ones(c, dtype)}
        return params, state, tuple(in_shape)

    def forward(self, params, state, x, *, train, rng=None):
        return ops_for(x).batchnorm_forward(
            x, params, state, train=train, momentum=self.momentum, epsilon=self.epsilon
        )

    def backward(self, dout, cache):
        return ops_for(dout).batchnorm_backward(dout, cache)


@dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout; identity in eval mode. Needs ``rng`` in train mode."""

    rate: float = 0.5
    kind = "dropout"
    broadcast_dims = ()

    def __post_init__(self):
        if not 0.0 <= self.rate <= 1.0:
            raise InputError(f"dropout rate must be in [0, 1], got {self.rate}.")

    def forward(self, params, state, x, *, train, rng=None):
        if not train or self.rate == 0.0:
            return x, state, None
        if rng is None:
            raise ValueError(f"{self.kind} in train mode needs an rng (Generator or JAX key).")
        out, cache = dropout.dropout_forward(x, self.rate, rng, self.broadcast_dims)
        return out, state, cache

    def backward(self, dout, cache):
        return dropout.dropout_backward(dout, cache)


@dataclass(frozen=True)
class ChannelDropout(Dropout):
    """Drops whole channels of an NHWC feature map (PyTorch's ``Dropout2d``)."""

    kind = "channeldropout"
    broadcast_dims = (1, 2)


def layer_rng(rng, index: int):
    """The random source for layer ``index``.

    A JAX key is split deterministically per layer with ``fold_in`` (the Flax twin does
    the same, so both draw identical dropout masks); a NumPy Generator is shared.
    """
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    import jax

    return jax.random.fold_in(rng, index)


@dataclass
class Sequential:
    """Layers applied in order. Names follow the pattern ``kind + running number``.

    params / state: ``{layer_name: {array_name: array}}``, only for layers that have any.
    """

    layers: list[Layer]
    names: list[str] = field(init=False)

    def __post_init__(self):
        counts: dict[str, int] = {}
        self.names = []
        for layer in self.layers:
            counts[layer.kind] = counts.get(layer.kind, 0) + 1
            self.names.append(f"{layer.kind}{counts[layer.kind]}")

    def init(self, rng, in_shape=INPUT_SHAPE, dtype=np.float32):
        """Fresh params and state. rng: a ``numpy.random.Generator`` or an int seed."""
        rng = np.random.default_rng(rng)
        params, state, shape = {}, {}, tuple(in_shape)
        for name, layer in zip(self.names, self.layers):
            p, s, shape = layer.init(rng, shape, dtype)
            if p:
                params[name] = p
            if s:
                state[name] = s
        return params, state

    def shapes(self, in_shape=INPUT_SHAPE):
        """Output shape of every layer, for summaries: [(name, shape), ...]."""
        rng, shape, out = np.random.default_rng(0), tuple(in_shape), []
        for name, layer in zip(self.names, self.layers):
            _, _, shape = layer.init(rng, shape)
            out.append((name, shape))
        return out

    # --8<-- [start:forward_backward]
    def forward(self, params, state, x, *, train, rng=None):
        """x: (N, H, W, C) -> (out, new_state, caches). rng is needed for dropout in train.

        Each layer turns x into its output and keeps a cache for its backward pass; the
        caches are returned in layer order.
        """
        new_state, caches = {}, []
        with ops_for(x).whole_pass():
            for i, (name, layer) in enumerate(zip(self.names, self.layers)):
                x, s, cache = layer.forward(
                    params.get(name, {}), state.get(name, {}), x, train=train, rng=layer_rng(rng, i)
                )
                if s:
                    new_state[name] = s
                caches.append(cache)
        return x, new_state, caches

    def backward(self, dout, caches, input_grad=True):
        """Run every layer's backward in reverse. Returns (dx, grads shaped like params).

        Each layer turns the gradient of its output into the gradient of its input (and
        of its params), using the cache its forward pass kept. ``input_grad=False``:
        training needs no gradient for the images themselves, so a first Conv layer
        skips it (dx is then None); attacks need it and keep the default.
        """
        grads = {}
        with ops_for(dout).whole_pass():
            for i in reversed(range(len(self.layers))):
                name, layer, cache = self.names[i], self.layers[i], caches[i]
                if i == 0 and not input_grad and isinstance(layer, Conv):
                    dout, g = layer.backward(dout, cache, input_grad=False)
                else:
                    dout, g = layer.backward(dout, cache)
                if g:
                    grads[name] = g
        return dout, grads

    # --8<-- [end:forward_backward]


def named_arrays(tree, prefix: str = "") -> dict:
    """Every array of a nested params/state dict under its dotted path, in the tree's order:
    ``{"conv1.kernel": ..., "residual1.body.conv1.kernel": ...}``."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(named_arrays(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def count_params(params) -> int:
    """Number of scalars in a params pytree."""
    return sum(int(np.prod(a.shape)) for a in named_arrays(params).values())
