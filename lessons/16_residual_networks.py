"""Lesson 16: residual networks. A deep plain stack trains worse than the same stack with shortcuts.

Two networks of the same depth: a stem and three stages of blocks, each block two 3x3 conv
+ BatchNorm (``residual.basic_block``). The residual network adds each block's input to its
output; the plain one is the very same layers without the additions. Both are trained by
the library's step (compiled by jax.jit) from the same seed, on the same batches, for the
same number of steps, and every step's training loss is recorded. Before training, one
batch's gradient is measured at every conv layer of both, to see how much of it reaches
the first layers.

    python lessons/16_residual_networks.py          # ~6 min on 2 cores (two trainings)
    python lessons/16_residual_networks.py --quick  # seconds
"""

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson

from scratchcnn import models
from scratchcnn.data.mnist import find_mnist, read_split
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.layers import (
    BatchNorm,
    Conv,
    Dense,
    GlobalAvgPool,
    MaxPool,
    ReLU,
    Sequential,
    count_params,
    named_arrays,
)
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.residual import basic_block
from scratchcnn.train import TrainConfig, train
from scratchcnn.viz import save_figure

# blocks: per stage (3 stages, so 6 * blocks + 1 conv layers and one dense layer);
# widths: channels of the three stages; steps of batch images, each image seen once.
# The quick run skips jax.jit: compiling a deep step takes longer than its six steps.
FULL = {"blocks": 5, "widths": (8, 16, 32), "steps": 800, "batch": 32, "test_limit": 10_000,
        "backend": "jax"}  # fmt: skip
QUICK = {"blocks": 1, "widths": (4, 8, 8), "steps": 6, "batch": 16, "test_limit": 100,
         "backend": "numpy"}  # fmt: skip
GRADIENT_BATCH = 128  # real training images for the gradient at initialization
SMOOTH = 25  # steps in the running mean of the loss curves
COLORS = {"plain": "tab:red", "residual": "tab:blue"}


# --8<-- [start:networks]
def block(features: int, strides: int, project: bool, residual: bool) -> list:
    """One block: ResNet's basic block, or (plain) the same layers without the addition:
    conv + BN + ReLU + conv + BN, then the ReLU the residual block applies to its sum."""
    with_shortcut = basic_block(features, strides, project)
    return [with_shortcut] if residual else [*with_shortcut.body, ReLU()]


def deep_network(blocks: int, widths: tuple[int, ...], residual: bool) -> Sequential:
    """A stem (conv, 28 -> 14 by max pool), then ``blocks`` blocks per stage; each stage
    after the first starts with a stride-2 block that doubles the channels (14 -> 7 -> 4),
    whose shortcut is a 1x1 projection. Global average pooling, one dense layer.
    x: (N, 28, 28, 1) -> logits (N, 10)."""
    layers = [Conv(widths[0], 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2)]
    for stage, features in enumerate(widths):
        for index in range(blocks):
            first = stage > 0 and index == 0  # halves the resolution, more channels
            layers += block(features, 2 if first else 1, first, residual)
    return Sequential(layers + [GlobalAvgPool(), Dense(10)])


# --8<-- [end:networks]


def conv_kernels(params: dict) -> list[str]:
    """The paths of the main path's conv kernels, input to output (the 1x1 projections of
    the shortcuts left out): ["conv1.kernel", ..., "residual1.body.conv1.kernel", ...].
    params, not grads: init fills its dict in layer order, backward in reverse order."""
    return [
        path
        for path in named_arrays(params)
        if path.endswith("kernel") and "conv" in path and "shortcut" not in path
    ]


# --8<-- [start:gradient_norms]
def gradient_norms(model: Sequential, params, state, images, labels) -> list[float]:
    """The norm of the loss gradient of every main-path conv kernel, input to output, for
    one batch in train mode. images: (N, 28, 28) in [0, 1]; labels: (N,)."""
    x = standardize_unit(images[..., None])
    logits, _, caches = model.forward(params, state, x, train=True)
    _, loss_cache = softmax_cross_entropy_forward(logits, labels)
    dlogits, _ = softmax_cross_entropy_backward(1.0, loss_cache)
    _, grads = model.backward(dlogits, caches, input_grad=False)
    grads = named_arrays(grads)
    return [float(np.linalg.norm(grads[path])) for path in conv_kernels(params)]


# --8<-- [end:gradient_norms]


# --8<-- [start:train_network]
def train_network(name: str, setup: dict, seed: int) -> dict:
    """Train the registered network ``name`` (one epoch over steps * batch training images,
    the default recipe's Adam and one-cycle schedule); every step's loss."""
    losses = []
    config = TrainConfig(
        model=name, epochs=1, batch_size=setup["batch"], val_fraction=0.0,
        train_limit=setup["steps"] * setup["batch"], test_limit=setup["test_limit"],
        backend=setup["backend"], seed=seed,
    )  # fmt: skip
    result = train(config, progress=False, log=print,
                   on_step=lambda run, loss, accuracy: losses.append(loss))  # fmt: skip
    return {
        "step_losses": [round(loss, 5) for loss in losses],
        "final_train_loss": round(float(np.mean(losses[-SMOOTH:])), 4),
        "test_loss": round(result.test.loss, 4),
        "test_accuracy": result.test.accuracy,
        "train_seconds": round(result.train_seconds, 1),
    }


# --8<-- [end:train_network]


def running_mean(values, width: int) -> np.ndarray:
    """Mean of each window of ``width`` consecutive values (len(values) - width + 1 of them)."""
    width = min(width, len(values))
    return np.convolve(values, np.ones(width) / width, mode="valid")


def loss_figure(runs: dict, depth: int, path):
    figure, axes = plt.subplots(figsize=(7, 3.6))
    for kind, run in runs.items():
        losses = np.array(run["step_losses"])
        steps = np.arange(1, len(losses) + 1)
        smooth = running_mean(losses, SMOOTH)
        axes.plot(steps, losses, color=COLORS[kind], alpha=0.2, linewidth=0.7)
        axes.plot(steps[len(steps) - len(smooth) :], smooth, color=COLORS[kind],
                  label=f"{kind} ({depth} layers)")  # fmt: skip
    axes.set_yscale("log")
    axes.set_xlabel("training step")
    axes.set_ylabel("training loss (cross-entropy)")
    axes.set_title(f"The same {depth} layers, with and without shortcuts")
    axes.legend()
    axes.grid(alpha=0.3, which="both")
    save_figure(figure, path)


def gradient_figure(norms: dict, path):
    figure, axes = plt.subplots(figsize=(7, 3.4))
    for kind, values in norms.items():
        layers = np.arange(1, len(values) + 1)
        axes.plot(layers, values, marker="o", markersize=3, color=COLORS[kind], label=kind)
    axes.set_yscale("log")
    axes.set_xlabel("conv layer (1 = nearest the input)")
    axes.set_ylabel("norm of the kernel's gradient")
    axes.set_title("One batch's gradient at initialization, layer by layer")
    axes.legend()
    axes.grid(alpha=0.3, which="both")
    save_figure(figure, path)


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    setup = QUICK if lesson.quick else FULL
    builders = {
        kind: (lambda residual=(kind == "residual"):
               deep_network(setup["blocks"], setup["widths"], residual))
        for kind in COLORS
    }  # fmt: skip
    images, labels = read_split(find_mnist(None), "train")
    x, y = images[:GRADIENT_BATCH] / np.float32(255), labels[:GRADIENT_BATCH].astype(np.int32)
    norms = {}
    for kind, build in builders.items():
        model = build()  # at initialization: the weights train() starts from for this seed
        norms[kind] = gradient_norms(model, *model.init(lesson.seed), x, y)
    gradient_figure(norms, lesson.path("gradient_norms.png"))

    runs, sizes = {}, {}
    for kind, build in builders.items():
        name = f"lesson16_{kind}"
        models.register(name)(build)  # train() builds the networks it trains by name
        params, _ = build().init(lesson.seed)
        sizes[kind] = {"parameters": count_params(params), "conv_layers": len(conv_kernels(params))}
        print(f"training the {kind} network ({setup['steps']} steps)")
        runs[kind] = train_network(name, setup, lesson.seed)
    depth = sizes["plain"]["conv_layers"] + 1  # the conv layers and the dense layer
    loss_figure(runs, depth, lesson.path("training_loss.png"))
    lesson.finish({
        "setup": {**setup, "train_images": setup["steps"] * setup["batch"],
                  "gradient_batch": GRADIENT_BATCH, "smooth": SMOOTH},
        "depth": depth,
        "networks": sizes,
        "gradient_norms": {kind: [round(n, 5) for n in values] for kind, values in norms.items()},
        "first_to_last_gradient": {kind: round(values[0] / values[-1], 4)
                                   for kind, values in norms.items()},
        "runs": runs,
    })  # fmt: skip


if __name__ == "__main__":
    main()
