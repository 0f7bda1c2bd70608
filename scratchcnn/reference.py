"""Flax twins: the same layers and networks built from ``flax.nnx``, for checking ours.

``twin(model)`` turns one of our ``Sequential`` networks into an ``nnx.Module`` whose
attributes have the same names (``conv1``, ``batchnorm1``...) and whose parameters have
the same names and layouts (``kernel`` HWIO / (in, out), ``bias``, ``scale``, ``mean``,
``var``). ``to_flax`` / ``from_flax`` copy weights across in either direction.

Every op has its twin here: Conv -> ``nnx.Conv``, Dense -> ``nnx.Linear``, BatchNorm ->
``nnx.BatchNorm``, Dropout -> ``nnx.Dropout``, pools -> ``nnx.max_pool`` / ``nnx.avg_pool``,
ReLU -> ``nnx.relu``, Residual -> ``FlaxResidual`` (two ``FlaxSequential`` branches added),
loss -> ``optax.softmax_cross_entropy`` with ``optax.smooth_labels``.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from scratchcnn import layers as L
from scratchcnn.data.mnist import INPUT_SHAPE
from scratchcnn.ops.windows import as_pair
from scratchcnn.residual import Residual


def _flax_padding(padding):
    """Our padding spec in the form Flax's conv and pools accept."""
    if isinstance(padding, str):
        return padding.upper()
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return tuple(tuple(pair) for pair in padding)


def _flatten(x):
    return x.reshape(x.shape[0], -1)


def _global_avg_pool(x):
    return jnp.mean(x, axis=(1, 2))


def twin_layer(layer: L.Layer, in_shape, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    """The Flax module (or function) that computes what ``layer`` computes."""
    if isinstance(layer, L.Conv):
        return nnx.Conv(
            in_shape[-1],
            layer.features,
            kernel_size=as_pair(layer.kernel_size, "kernel_size"),
            strides=as_pair(layer.strides, "strides"),
            padding=_flax_padding(layer.padding),
            use_bias=layer.use_bias,
            param_dtype=param_dtype,
            rngs=rngs,
        )
    if isinstance(layer, L.Dense):
        return nnx.Linear(
            in_shape[-1],
            layer.features,
            use_bias=layer.use_bias,
            param_dtype=param_dtype,
            rngs=rngs,
        )
    if isinstance(layer, L.BatchNorm):
        # use_fast_variance=False: Flax then computes the variance in two passes, as we do.
        return nnx.BatchNorm(
            in_shape[-1],
            momentum=layer.momentum,
            epsilon=layer.epsilon,
            use_fast_variance=False,
            param_dtype=param_dtype,
            rngs=rngs,
        )
    if isinstance(layer, L.Dropout):  # ChannelDropout included, via broadcast_dims
        return nnx.Dropout(layer.rate, broadcast_dims=layer.broadcast_dims)
    if isinstance(layer, L.MaxPool | L.AvgPool):
        window = as_pair(layer.window, "window")
        strides = window if layer.strides is None else as_pair(layer.strides, "strides")
        pool = nnx.max_pool if isinstance(layer, L.MaxPool) else nnx.avg_pool
        return partial(
            pool, window_shape=window, strides=strides, padding=_flax_padding(layer.padding)
        )
    if isinstance(layer, L.ReLU):
        return nnx.relu
    if isinstance(layer, L.Flatten):
        return _flatten
    if isinstance(layer, L.GlobalAvgPool):
        return _global_avg_pool
    if isinstance(layer, Residual):
        return FlaxResidual(layer, in_shape, param_dtype=param_dtype)
    raise TypeError(f"no Flax twin for layer {layer!r}")


class FlaxSequential(nnx.Module):
    """The Flax twin of a ``Sequential``: one attribute per layer, with our names."""

    def __init__(self, model: L.Sequential, in_shape=INPUT_SHAPE, *, param_dtype=jnp.float32):
        rngs = nnx.Rngs(0)  # weights are overwritten by to_flax; the seed does not matter
        self.layer_names = tuple(model.names)
        self.layer_kinds = tuple(layer.kind for layer in model.layers)
        for name, layer, (_, out_shape) in zip(model.names, model.layers, model.shapes(in_shape)):
            setattr(self, name, twin_layer(layer, in_shape, rngs=rngs, param_dtype=param_dtype))
            in_shape = out_shape

    def __call__(self, x, *, train: bool, dropout_key=None):
        """x: (N, H, W, C) -> logits. dropout_key: the JAX key our Sequential got as rng."""
        for index, (name, kind) in enumerate(zip(self.layer_names, self.layer_kinds)):
            layer = getattr(self, name)
            if kind in ("dropout", "channeldropout"):
                key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
                x = layer(x, deterministic=not train, rngs=key)
            elif kind == "batchnorm":
                x = layer(x, use_running_average=not train)
            elif kind == "residual":
                key = None if dropout_key is None else jax.random.fold_in(dropout_key, index)
                x = layer(x, train=train, dropout_key=key)
            else:
                x = layer(x)
        return x


class FlaxResidual(nnx.Module):
    """The Flax twin of a ``Residual``: ``relu(body(x) + shortcut(x))``, each branch a
    ``FlaxSequential``; an identity shortcut is ``None`` (it has no weights)."""

    def __init__(self, layer: Residual, in_shape, *, param_dtype=jnp.float32):
        body, shortcut = layer.branches().values()
        self.body = FlaxSequential(body, in_shape, param_dtype=param_dtype)
        self.shortcut = (
            FlaxSequential(shortcut, in_shape, param_dtype=param_dtype) if layer.shortcut else None
        )

    def __call__(self, x, *, train: bool, dropout_key=None):
        """x: (N, H, W, C). Each branch folds its own key, as ``Residual.forward`` does."""
        keys = [None if dropout_key is None else jax.random.fold_in(dropout_key, i) for i in (0, 1)]
        body = self.body(x, train=train, dropout_key=keys[0])
        shortcut = (
            x if self.shortcut is None else self.shortcut(x, train=train, dropout_key=keys[1])
        )
        return nnx.relu(body + shortcut)


def twin(model: L.Sequential, in_shape=INPUT_SHAPE, param_dtype=jnp.float32) -> FlaxSequential:
    """A Flax twin of ``model`` with Flax's own random initial weights."""
    return FlaxSequential(model, in_shape, param_dtype=param_dtype)


def to_flax(model: L.Sequential, params, state, in_shape=INPUT_SHAPE) -> FlaxSequential:
    """A Flax twin of ``model`` holding copies of our ``params`` and ``state``."""
    leaves = jax.tree.leaves(params)
    dtype = leaves[0].dtype if leaves else jnp.float32
    # Shapes only: Flax's random init compiles a truncated normal per weight shape (most of
    # a parity check's time), and every value is overwritten below anyway.
    module = nnx.eval_shape(lambda: twin(model, in_shape, param_dtype=dtype))
    _load(module, nnx.Param, params)
    _load(module, nnx.BatchStat, state)
    return module


def from_flax(module: FlaxSequential):
    """Our ``(params, state)`` pytrees (NumPy arrays) copied out of a Flax twin."""
    return _pure(nnx.state(module, nnx.Param)), _pure(nnx.state(module, nnx.BatchStat))


def _load(module, variable_type, tree):
    if not tree:
        return
    state = nnx.state(module, variable_type)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, tree))  # in place
    nnx.update(module, state)


def _with_values(state, pure):
    """A copy of an nnx ``State`` whose leaves are the arrays of the plain dict ``pure``."""
    state = jax.tree.map(lambda v: v, state)  # copy: replace_by_pure_dict works in place
    nnx.replace_by_pure_dict(state, pure)
    return state


def _pure(state) -> dict:
    return jax.tree.map(np.asarray, nnx.to_pure_dict(state))


def flax_softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """The loss twin: optax's cross-entropy on (smoothed) one-hot labels, batch mean."""
    targets = optax.smooth_labels(
        jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype), label_smoothing
    )
    return optax.softmax_cross_entropy(logits, targets).mean()


def functional(module: FlaxSequential):
    """Split a twin into a pure function ``apply(params, x, train, key) -> (out, state)``.

    ``params`` is a plain nested dict like ours, so ``jax.vjp`` / ``jax.grad`` of
    ``apply`` give gradients shaped exactly like our ``grads``.
    """
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    def apply(pure_params, x, train, key=None):
        m = nnx.merge(graphdef, _with_values(params, pure_params), rest, copy=True)
        out = m(x, train=train, dropout_key=key)
        return out, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

    return apply, nnx.to_pure_dict(params)
