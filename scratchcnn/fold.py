"""Fold BatchNorm into the layer before it: the eval-mode network without BatchNorm.

In eval mode BatchNorm is a fixed affine map per channel,
``y = (x - mean) / sqrt(var + eps) * scale + bias``, and so is a convolution or a dense
layer followed by it. With ``g = scale / sqrt(var + eps)`` (one factor per output
channel), the pair computes the same as one layer with

    kernel' = kernel * g                 (each output channel's weights scaled)
    bias'   = (bias - mean) * g + beta   (bias = 0 when the layer had none)

Deployed networks (ONNX, int8) carry the folded layer only: one fewer pass over every
activation, and nothing left that behaves differently in training and inference.
Dropout is the identity in eval mode, so folding drops it too.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from scratchcnn.errors import ShapeError, WeightError
from scratchcnn.layers import BatchNorm, Conv, Dense, Dropout, Layer, Sequential, named_arrays
from scratchcnn.residual import Residual


def fold_batchnorm(model: Sequential, params: dict, state: dict) -> tuple[Sequential, dict]:
    """The eval-mode network without BatchNorm or Dropout: ``(folded_model, folded_params)``.

    Every BatchNorm must follow a Conv or Dense layer directly (true of every registered
    architecture); residual blocks are folded branch by branch (``fold_residual``). The
    folded layers keep their order; ``Sequential`` renames them (``conv1``, ``relu1``...),
    and ``folded_params`` uses those new names. The folded
    network has no state. Arithmetic is float64, the result in the params' dtype.
    Weights that are not finite, or a negative BatchNorm variance, raise WeightError:
    folding would turn them into a network that quietly answers NaN.
    """
    check_weights(params, state)
    layers: list[Layer] = []
    weights: list[dict] = []  # params of each kept layer, in order
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, Dropout):
            continue
        if isinstance(layer, Residual):
            layer, layer_params = fold_residual(layer, params.get(name, {}), state.get(name, {}))
            layers.append(layer)
            weights.append(layer_params)
            continue
        if isinstance(layer, BatchNorm):
            previous = layers[-1] if layers else None
            if not isinstance(previous, Conv | Dense):
                raise ShapeError(
                    f"cannot fold {name}: BatchNorm must follow a Conv or Dense layer directly."
                )
            layers[-1] = dataclasses.replace(previous, use_bias=True)
            weights[-1] = fold_pair(weights[-1], params[name], state[name], layer.epsilon)
            continue
        layers.append(layer)
        weights.append(params.get(name, {}))
    folded = Sequential(layers)
    folded_params = {n: w for n, w in zip(folded.names, weights) if w}
    return folded, folded_params


def fold_residual(block: Residual, params: dict, state: dict) -> tuple[Residual, dict]:
    """A residual block with each branch folded on its own: ``(folded_block, its_params)``.

    The addition and the ReLU after it stay as they are; inside each branch, every
    BatchNorm follows its conv, so each branch folds like a network of its own.
    """
    folded_params, branches = {}, {}
    for name, branch in block.branches().items():
        folded, folded_params[name] = fold_batchnorm(
            branch, params.get(name, {}), state.get(name, {})
        )
        branches[name] = tuple(folded.layers)
    return Residual(branches["body"], branches["shortcut"]), {
        name: p for name, p in folded_params.items() if p
    }


def check_weights(params: dict, state: dict) -> None:
    """Refuse NaN or inf anywhere, and BatchNorm variances below zero, in one sentence."""
    for tree_name, tree in (("params", params), ("state", state)):
        for path, array in named_arrays(tree).items():
            array, path = np.asarray(array), path.replace(".", "/")  # "conv1/kernel"
            if not np.isfinite(array).all():
                raise WeightError(f"{tree_name} {path} holds NaN or inf values.")
            if tree_name == "state" and path.endswith("/var") and (array < 0).any():
                raise WeightError(f"state {path} holds a negative BatchNorm variance.")


# --8<-- [start:fold_pair]
def fold_pair(layer_params: dict, bn_params: dict, bn_state: dict, epsilon: float) -> dict:
    """One Conv/Dense layer's params with the BatchNorm after it folded in.

    kernel: (..., C_out), the output channel last (HWIO conv, (in, out) dense); the
    BatchNorm arrays are (C_out,). Returns {"kernel", "bias"} in the kernel's dtype.
    """
    kernel = np.asarray(layer_params["kernel"])
    dtype = kernel.dtype
    bias = np.asarray(layer_params.get("bias", np.zeros(kernel.shape[-1])), np.float64)
    gain = np.asarray(bn_params["scale"], np.float64) / np.sqrt(
        np.asarray(bn_state["var"], np.float64) + epsilon
    )
    folded_bias = (bias - np.asarray(bn_state["mean"], np.float64)) * gain + np.asarray(
        bn_params["bias"], np.float64
    )
    folded_kernel = kernel.astype(np.float64) * gain  # broadcasts over the last axis
    return {"kernel": folded_kernel.astype(dtype), "bias": folded_bias.astype(dtype)}


# --8<-- [end:fold_pair]
