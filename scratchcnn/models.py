"""Named architectures. ``build(name)`` returns a ``Sequential``; ``MODELS`` lists them.

The seed networks are kept as published so their results can be reproduced:

- ``lenet``: the classic PyTorch ``examples/mnist`` network (with ``Dropout2d``).
- ``keras_cnn``: the 863,082-parameter Keras network that reports 99.57%.
- ``bn_cnn``: three conv + BatchNorm blocks, global average pooling, a BN dense head.
- ``flax_cnn``: the CNN of Flax's ``examples/mnist``.
- ``default``: our choice for speed on a CPU (99% in two epochs).
- ``best``: the network of our best recipe (99.6%+ with augmentation).
- ``resnet``: a small residual network (``residual.py``) for MNIST.

A name may carry hyperparameters for its builder, in parentheses: ``"default"`` is the
network as registered, ``"default(width=1.5,dropout=0.2)"`` the same design with 1.5 times
the channels and a lighter dropout. The whole string is the network's name everywhere
(checkpoints, ``evaluate``, ``export``), so a checkpoint rebuilds its exact network.
"""

import inspect
import re
from collections.abc import Callable

from scratchcnn.errors import ScratchCNNError
from scratchcnn.layers import (
    AvgPool,
    BatchNorm,
    ChannelDropout,
    Conv,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    MaxPool,
    ReLU,
    Sequential,
)
from scratchcnn.residual import basic_block

MODELS: dict[str, Callable[[], Sequential]] = {}


class UnknownModelError(ScratchCNNError, ValueError):
    """The architecture name is not in the registry."""


def register(name: str):
    """Decorator: add a network builder to ``MODELS`` under ``name``."""

    def add(builder):
        MODELS[name] = builder
        return builder

    return add


# --8<-- [start:build]
def build(name: str) -> Sequential:
    """The network ``name`` names: a registered one, e.g. ``"default"``, or one with
    hyperparameters for its builder, e.g. ``"default(width=1.5,dropout=0.2)"``."""
    base, options = parse_name(name)
    return MODELS[base](**options)


def parse_name(name: str) -> tuple[str, dict[str, float]]:
    """ "default(width=1.5,dropout=0.2)" -> ("default", {"width": 1.5, "dropout": 0.2}).

    Refuses, in one sentence, an unregistered base name, an option its builder does not
    take, and a value that is not a number.
    """
    match = re.fullmatch(r"([a-z_0-9]+)(?:\((.*)\))?", str(name).strip())
    if not match or match[1] not in MODELS:
        raise UnknownModelError(
            f"unknown architecture {name!r}; choose one of: {', '.join(sorted(MODELS))} "
            "(optionally with options, like default(width=1.5,dropout=0.2))."
        )
    base, text = match[1], match[2]
    takes = inspect.signature(MODELS[base]).parameters
    options = {}
    for part in filter(None, (text or "").split(",")):
        key, _, value = (s.strip() for s in part.partition("="))
        if key not in takes or key in options:
            allowed = ", ".join(takes) or "no options"
            raise UnknownModelError(
                f"architecture {name!r}: {base} takes {allowed}, not {key!r} (each once)."
            )
        try:
            options[key] = float(value)
        except ValueError:
            raise UnknownModelError(
                f"architecture {name!r}: {key} must be a number, got {value!r}."
            ) from None
    return base, options


# --8<-- [end:build]


@register("lenet")
def lenet() -> Sequential:
    """PyTorch's classic MNIST example: 21,840 parameters, ~99% test accuracy."""
    return Sequential([
        Conv(10, 5, padding="VALID"), MaxPool(2), ReLU(),
        Conv(20, 5, padding="VALID"), ChannelDropout(0.5), MaxPool(2), ReLU(),
        Flatten(),  # 4 * 4 * 20 = 320
        Dense(50), ReLU(), Dropout(0.5),
        Dense(10),
    ])  # fmt: skip


@register("keras_cnn")
def keras_cnn() -> Sequential:
    """The published 99.57% Keras network: 3x3 SAME convs, 863,082 parameters."""
    return Sequential([
        Conv(32), ReLU(), Conv(32), ReLU(), MaxPool(2), Dropout(0.25),
        Conv(64), ReLU(), Conv(64), ReLU(), MaxPool(2), Dropout(0.25),
        Conv(128), ReLU(), MaxPool(2), Dropout(0.25),  # 7x7 -> 3x3 (floor)
        Flatten(),  # 3 * 3 * 128 = 1152
        Dense(512), ReLU(), Dropout(0.5),
        Dense(256), ReLU(), Dropout(0.5),
        Dense(10),
    ])  # fmt: skip


@register("bn_cnn")
def bn_cnn() -> Sequential:
    """Three conv + BatchNorm + ReLU + max-pool + dropout blocks, GAP, a BN dense head."""
    layers = []
    for features in (32, 64, 128):
        layers += [Conv(features, use_bias=False), BatchNorm(), ReLU(), MaxPool(2), Dropout(0.25)]
    layers += [GlobalAvgPool(), Dense(512, use_bias=False), BatchNorm(), ReLU(), Dropout(0.5)]
    layers += [Dense(10)]
    return Sequential(layers)


@register("flax_cnn")
def flax_cnn() -> Sequential:
    """Flax ``examples/mnist``: two conv + avg-pool stages and a 256-unit dense layer."""
    return Sequential([
        Conv(32), ReLU(), AvgPool(2),
        Conv(64), ReLU(), AvgPool(2),
        Flatten(),  # 7 * 7 * 64 = 3136
        Dense(256), ReLU(),
        Dense(10),
    ])  # fmt: skip


# --8<-- [start:default]
@register("default")
def default(width: float = 1.0, dropout: float = 0.3) -> Sequential:
    """Fast on a CPU: two 3x3 conv + BatchNorm stages, a 256-unit dense head.

    Reaches 99% test accuracy in two epochs (``scratchcnn train``, see RESULTS.md).
    ``width`` scales every layer's channels (32, 64, 256 at 1.0), ``dropout`` is the
    head's dropout rate: ``default(width=0.5,dropout=0.1)`` is a narrower, lighter one.
    """
    if not (0.125 <= width <= 4 and 0 <= dropout < 1):
        raise UnknownModelError(
            f"default(width={width:g},dropout={dropout:g}): width must be from 0.125 to 4 "
            "and dropout in [0, 1)."
        )
    c1, c2, hidden = (round(n * width) for n in (32, 64, 256))
    return Sequential([
        Conv(c1, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),
        Conv(c2, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),
        Flatten(),  # 7 * 7 * c2 (3136 at width 1)
        Dense(hidden), ReLU(), Dropout(dropout),
        Dense(10),
    ])  # fmt: skip


# --8<-- [end:default]


@register("best")
def best() -> Sequential:
    """The network of our best recipe (``scratchcnn train --recipe best``).

    A 5x5 stem, two 3x3 convs at 14x14 and one at 7x7, each with BatchNorm, then a
    BatchNorm dense head with dropout: 428,394 parameters.
    """
    return Sequential([
        Conv(32, 5, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),  # 28 -> 14
        Conv(64, 3, use_bias=False), BatchNorm(), ReLU(),
        Conv(64, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),  # 14 -> 7
        Conv(128, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),  # 7 -> 3
        Flatten(),  # 3 * 3 * 128 = 1152
        Dense(256, use_bias=False), BatchNorm(), ReLU(), Dropout(0.4),
        Dense(10),
    ])  # fmt: skip


@register("resnet")
def resnet() -> Sequential:
    """A small ResNet: a conv + max-pool stem and three residual blocks at 32, 64, 128 channels.

    The stem brings 28x28 down to 14x14, as ResNet's stem does (a conv, then a max pool);
    the first block keeps the shape, so its shortcut is the identity; the second and third
    halve the resolution with a stride-2 conv (14 -> 7 -> 4) and double the channels, so
    their shortcuts are 1x1 stride-2 projections. Global average pooling, one dense layer.
    8 weight layers deep (stem, 3 x 2 convs, dense) plus the two projections: 308,074
    parameters.
    """
    return Sequential([
        Conv(32, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),  # 14x14x32
        basic_block(32),  # 14x14x32, identity shortcut
        basic_block(64, strides=2, project=True),  # 7x7x64
        basic_block(128, strides=2, project=True),  # 4x4x128 (SAME: 7 / 2 rounded up)
        GlobalAvgPool(),  # 128
        Dense(10),
    ])  # fmt: skip
