"""A residual block: ``out = ReLU(body(x) + shortcut(x))``, forward and backward by hand.

A plain stack of layers has to *learn* the identity if a layer should leave its input
alone; a residual block gets it for free and learns only the difference (the residual).
The gradient gets the same gift: the addition hands its output gradient unchanged to the
shortcut, so even in a deep stack every block receives at least the gradient of the
block above it, instead of a product of many layers' Jacobians that can shrink to nothing
(He et al., "Deep Residual Learning for Image Recognition", 2015).

``Residual`` is a layer like the others (``init``, ``forward``, ``backward``; weights in
pytrees) built from two ``Sequential`` branches. Its params and state nest by branch and
then by the branch's own layer names, as Flax nests a submodule's attributes::

    {"body": {"conv1": {"kernel"}, "batchnorm1": {...}, "conv2": ..., "batchnorm2": ...},
     "shortcut": {"conv1": {"kernel"}, "batchnorm1": {...}}}   # no "shortcut": identity

``basic_block`` builds the block of ResNet-18/34: two 3x3 conv + BatchNorm in the body,
and the identity shortcut, or a 1x1 conv + BatchNorm projection when the block changes
the shape (a stride of 2, or more channels).
"""

from dataclasses import dataclass

import numpy as np

from scratchcnn.errors import ShapeError
from scratchcnn.layers import BatchNorm, Conv, Layer, ReLU, Sequential, layer_rng, ops_for


@dataclass(frozen=True)
class Residual(Layer):
    """``ReLU(body(x) + shortcut(x))``. body, shortcut: tuples of layers; an empty
    shortcut is the identity. Both branches must give the same output shape."""

    body: tuple[Layer, ...]
    shortcut: tuple[Layer, ...] = ()
    kind = "residual"

    def branches(self) -> dict[str, Sequential]:
        """The two branches as ``Sequential``s (they name their layers ``conv1``...)."""
        return {"body": Sequential(list(self.body)), "shortcut": Sequential(list(self.shortcut))}

    def init(self, rng, in_shape, dtype=np.float32):
        params, state, out_shapes = {}, {}, {}
        for name, branch in self.branches().items():
            shape = tuple(in_shape)
            for layer_name, layer in zip(branch.names, branch.layers):
                p, s, shape = layer.init(rng, shape, dtype)
                if p:
                    params.setdefault(name, {})[layer_name] = p
                if s:
                    state.setdefault(name, {})[layer_name] = s
            out_shapes[name] = shape
        if out_shapes["body"] != out_shapes["shortcut"]:
            raise ShapeError(
                f"residual block on input {tuple(in_shape)}: the body gives "
                f"{out_shapes['body']} but the shortcut gives {out_shapes['shortcut']}; "
                "a projection shortcut (1x1 conv with the body's strides and features) "
                "makes them match."
            )
        return params, state, out_shapes["body"]

    # --8<-- [start:residual]
    def forward(self, params, state, x, *, train, rng=None):
        """x: (N, H, W, C) -> (out, new_state, cache). Both branches read the same x."""
        outs, new_state, caches = {}, {}, {}
        for index, (name, branch) in enumerate(self.branches().items()):
            outs[name], s, caches[name] = branch.forward(
                params.get(name, {}), state.get(name, {}), x, train=train,
                rng=layer_rng(rng, index),  # each branch its own dropout masks
            )  # fmt: skip
            if s:
                new_state[name] = s
        out, caches["relu"] = ops_for(x).relu_forward(outs["body"] + outs["shortcut"])
        return out, new_state, caches

    def backward(self, dout, cache):
        """dout: gradient of the block's output -> (dx, grads shaped like params)."""
        dsum, _ = ops_for(dout).relu_backward(dout, cache["relu"])
        # body(x) + shortcut(x): the derivative of a sum with respect to each addend is 1,
        # so the addition hands dsum, unchanged, to both branches. The shortcut's copy is
        # why deep residual networks train: it reaches x whatever the body does to its own.
        grads, dx = {}, 0
        for name, branch in self.branches().items():
            dx_branch, g = branch.backward(dsum, cache[name])
            if g:
                grads[name] = g
            # x fed both branches, so its gradient is the sum of what each sends back
            # (the multivariable chain rule). The identity branch sends back dsum itself.
            dx = dx + dx_branch
        return dx, grads

    # --8<-- [end:residual]


# --8<-- [start:basic_block]
def basic_block(features: int, strides: int = 1, project: bool = False) -> Residual:
    """ResNet's basic block: conv 3x3 (strides) + BN + ReLU + conv 3x3 + BN, plus a shortcut.

    project: a 1x1 conv (with the same strides) + BN on the shortcut, needed when the
    block halves the resolution or changes the number of channels; otherwise the identity.
    """
    body = (
        Conv(features, 3, strides, use_bias=False), BatchNorm(), ReLU(),
        Conv(features, 3, use_bias=False), BatchNorm(),
    )  # fmt: skip
    shortcut = (Conv(features, 1, strides, use_bias=False), BatchNorm()) if project else ()
    return Residual(body, shortcut)


# --8<-- [end:basic_block]
