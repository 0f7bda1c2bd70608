"""Lesson 15: initialization and weight decay.

Part 1: a deep plain stack of 3x3 convolutions (no BatchNorm, no shortcuts) on a real MNIST
batch, its first weights drawn five ways (N(0, 1), std 0.01, LeCun, He, Glorot). Our own
forward and backward passes, layer by layer, measure the standard deviation of every
layer's output and of the gradient that flows back into it: with ReLU and with no
nonlinearity at all; and, with He's scaling, how the stack's width changes the picture.
Part 2: weight decay, none, L2 in the gradient (Adam) and decoupled (AdamW), on a small
network trained on few images so that it overfits.

    python lessons/15_initialization.py           # ~10 min
    python lessons/15_initialization.py --quick   # seconds
"""

import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson

from scratchcnn import initializers, models
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import standardize
from scratchcnn.inference import predict_logits, without_overflow_warnings
from scratchcnn.layers import Conv, Dense, GlobalAvgPool, ReLU, Sequential, named_arrays
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.train import TrainConfig, train
from scratchcnn.viz import save_figure

RULES = {  # the label each rule has on the page and in the figures
    "naive": "N(0, 1)",
    "small": "std 0.01",
    "lecun": "LeCun, 1/fan_in",
    "glorot": "Glorot, 2/(fan_in+fan_out)",
    "he": "He, 2/fan_in",
}
COLORS = {"naive": "tab:red", "small": "tab:purple", "lecun": "tab:orange",
          "glorot": "tab:olive", "he": "tab:green"}  # fmt: skip


# --8<-- [start:stack]
def plain_stack(depth: int, width: int, relu: bool = True) -> Sequential:
    """depth x (3x3 conv [+ ReLU]) at 28x28, then global average pooling and a dense head.

    No BatchNorm and no shortcut: nothing but the initial weights keeps the signal's scale.
    """
    layers = []
    for _ in range(depth):
        layers += [Conv(width), ReLU()] if relu else [Conv(width)]
    return Sequential(layers + [GlobalAvgPool(), Dense(10)])


# --8<-- [end:stack]


# --8<-- [start:measure]
def std64(a) -> float:
    """Standard deviation in float64: N(0, 1) weights take float32 values past 1e19, whose
    squares would overflow float32."""
    return float(np.std(a, dtype=np.float64))


def forward_stds(model: Sequential, params: dict, x):
    """The forward pass, layer by layer, with our own layers. x: (N, 28, 28, 1) standardized.

    Returns (logits, the caches of the backward pass, {conv name: std of its output y}),
    y taken before the ReLU.
    """
    caches, stds = [], {}
    for name, layer in zip(model.names, model.layers):
        x, _, cache = layer.forward(params.get(name, {}), {}, x, train=True)
        caches.append(cache)
        if layer.kind == "conv":
            stds[name] = std64(x)
    return x, caches, stds


def signal_stds(model: Sequential, params: dict, x, labels) -> dict:
    """Per conv layer, in order: the std of its output y and of dL/dy, the gradient of the
    cross-entropy loss with respect to that output, as our backward pass computes it."""
    logits, caches, outputs = forward_stds(model, params, x)
    _, loss_cache = softmax_cross_entropy_forward(logits, labels)
    d = softmax_cross_entropy_backward(1.0, loss_cache)[0]
    gradients = {}
    for name, layer, cache in reversed(list(zip(model.names, model.layers, caches))):
        if layer.kind == "conv":
            gradients[name] = std64(d)  # dL/dy arrives at the conv's output
        d, _ = layer.backward(d, cache)
    return {"activation_std": list(outputs.values()),
            "gradient_std": [gradients[name] for name in outputs]}  # fmt: skip


# --8<-- [end:measure]


def measure_all(depth: int, width: int, x, labels, seed: int) -> dict:
    """signal_stds of the stack for every rule, with ReLU and without any nonlinearity."""
    out = {}
    for relu in (True, False):
        model = plain_stack(depth, width, relu)
        params, _ = model.init(seed)
        with without_overflow_warnings():  # N(0, 1) logits reach 1e30: that is the point
            out["relu" if relu else "linear"] = {
                rule: signal_stds(model, initializers.reinitialize(
                    params, initializers.RULES[rule], seed), x, labels)
                for rule in RULES
            }  # fmt: skip
    return out


def he_by_width(depth: int, widths, x, seed: int) -> dict:
    """He-initialized ReLU stacks of several widths: the std of each conv's output."""
    out = {}
    for width in widths:
        model = plain_stack(depth, width)
        params = initializers.reinitialize(model.init(seed)[0], initializers.he, seed)
        out[str(width)] = list(forward_stds(model, params, x)[2].values())
    return out


def width_figure(by_width: dict, path):
    figure, axes = plt.subplots(figsize=(6, 3.4))
    for width, stds in by_width.items():
        axes.plot(np.arange(1, len(stds) + 1), stds, marker=".", label=f"{width} channels")
    axes.set_yscale("log")
    axes.set_xlabel("conv layer")
    axes.set_title("He initialization, ReLU: std of each conv's output")
    axes.legend(fontsize=8)
    axes.grid(True, alpha=0.3)
    save_figure(figure, path)


def signals_figure(stats: dict, input_std: float, title: str, path):
    """Per-layer std of outputs and of gradients, one line per rule, log scale."""
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
    for rule, label in RULES.items():
        row = stats[rule]
        layers = np.arange(1, len(row["activation_std"]) + 1)
        style = dict(color=COLORS[rule], label=label, marker=".",
                     linestyle="--" if rule == "glorot" else "-")  # fmt: skip
        axes[0].plot(layers, row["activation_std"], **style)
        axes[1].plot(layers, row["gradient_std"], **style)
    axes[0].axhline(input_std, color="gray", linewidth=0.8, linestyle=":")
    axes[0].set_title("forward: std of each conv's output")
    axes[1].set_title("backward: std of dL/d(conv output)")
    for ax in axes:
        ax.set_yscale("log")
        ax.set_xlabel("conv layer")
        ax.grid(True, which="major", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize=8,
                  bbox_to_anchor=(0.5, -0.1))  # fmt: skip
    figure.suptitle(title)
    save_figure(figure, path)


# --------------------------------------------------------------------------- weight decay

DECAYS = [  # (key, optimizer, weight_decay, label)
    ("none", "adam", 0.0, "Adam, no decay"),
    ("l2_small", "adam", 1e-3, "Adam + L2 1e-3"),
    ("l2_large", "adam", 1e-2, "Adam + L2 1e-2"),
    ("adamw_small", "adamw", 1.0, "AdamW 1"),
    ("adamw_large", "adamw", 10.0, "AdamW 10"),
]


def kernel_norm(params) -> float:
    """sqrt(sum of w**2) over every kernel: what weight decay pulls towards 0."""
    kernels = [a for a in named_arrays(params).values() if a.ndim > 1]
    return math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in kernels))


# --8<-- [start:decay_run]
def decay_run(config: TrainConfig, test_images, test_labels) -> dict:
    """Train with ``config``; after every epoch record the kernels' norm, the training
    loss and the accuracy on ``test_images`` (a fixed slice of the test set); at the end,
    each layer's kernel norm and the accuracy on the whole test set."""
    model = models.build(config.model)
    curve = []

    def on_epoch(run, record):
        logits = predict_logits(model, run.params, run.state, test_images)
        accuracy = float((logits.argmax(axis=1) == test_labels).mean())
        norm = kernel_norm(run.params)
        curve.append({"epoch": record["epoch"], "train_loss": record["train_loss"],
                      "kernel_norm": norm, "test_accuracy": accuracy})  # fmt: skip

    start = {"epoch": 0, "kernel_norm": kernel_norm(model.init(config.seed)[0])}
    result = train(config, progress=False, log=lambda s: None, on_epoch=on_epoch)
    layers = {name: kernel_norm({name: p}) for name, p in result.params.items()}
    return {"curve": [start, *curve], "layer_norms": layers, "test_accuracy":
            result.test.accuracy, "seconds": round(result.train_seconds, 1)}  # fmt: skip


# --8<-- [end:decay_run]


def decay_all(base: TrainConfig, test_images, test_labels) -> dict:
    out = {}
    for key, optimizer, weight_decay, label in DECAYS:
        config = dataclasses.replace(base, optimizer=optimizer, weight_decay=weight_decay)
        out[key] = {"label": label, "optimizer": optimizer, "weight_decay": weight_decay,
                    **decay_run(config, test_images, test_labels)}  # fmt: skip
        last = out[key]["curve"][-1]
        print(
            f"  {label:>16}: kernel norm {last['kernel_norm']:.1f}, train loss "
            f"{last['train_loss']:.4f}, test accuracy {out[key]['test_accuracy']:.4f}"
        )
    return out


def decay_figure(runs: dict, path):
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    colors = {"none": "black", "l2_small": "tab:blue", "l2_large": "navy",
              "adamw_small": "tab:orange", "adamw_large": "tab:red"}  # fmt: skip
    for key, run in runs.items():
        curve = run["curve"]
        epochs = [c["epoch"] for c in curve]
        style = dict(color=colors[key], label=run["label"], marker=".")
        axes[0].plot(epochs, [c["kernel_norm"] for c in curve], **style)
        axes[1].plot(epochs[1:], [c["train_loss"] for c in curve[1:]], **style)
        axes[2].plot(epochs[1:], [100 * c["test_accuracy"] for c in curve[1:]], **style)
    axes[0].set_title("norm of all kernels")
    axes[1].set_title("training loss")
    axes[1].set_yscale("log")
    axes[2].set_title("test accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=5, fontsize=8,
                  bbox_to_anchor=(0.5, -0.11))  # fmt: skip
    save_figure(figure, path)


# --------------------------------------------------------------------------- main


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    quick, seed = lesson.quick, lesson.seed
    depth, width = (6, 4) if quick else (30, 16)
    images, labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    batch = 16 if quick else 32
    x = standardize(images[:batch])

    print(f"signals through {depth} layers of {width} channels, batch {batch}")
    signals = measure_all(depth, width, x, labels[:batch], seed)
    input_std = std64(x)
    signals_figure(
        signals["relu"],
        input_std,
        f"{depth} conv + ReLU layers, MNIST batch",
        lesson.path("signals_relu.png"),
    )
    signals_figure(
        signals["linear"],
        input_std,
        f"{depth} conv layers, no nonlinearity",
        lesson.path("signals_linear.png"),
    )
    widths = (4, 8) if quick else (8, 16, 32, 64)
    print(f"He at widths {widths}")
    by_width = he_by_width(depth, widths, x, seed)
    width_figure(by_width, lesson.path("he_width.png"))

    base = TrainConfig(
        model="flax_cnn", epochs=2 if quick else 15, batch_size=50,
        train_limit=100 if quick else 1000, val_fraction=0.0, schedule="constant",
        learning_rate=1e-3, test_limit=100 if quick else None, seed=seed,
    )  # fmt: skip
    n_curve = 100 if quick else 1000
    print(f"weight decay: {base.model} on {base.train_limit} images, {base.epochs} epochs")
    decay = decay_all(base, test_images[:n_curve], test_labels[:n_curve])
    decay_figure(decay, lesson.path("weight_decay.png"))

    lesson.finish({
        "signals": {"depth": depth, "width": width, "batch": batch, "input_std": input_std,
                    "rules": RULES, **signals, "he_by_width": by_width},
        "weight_decay": {"config": dataclasses.asdict(base), "curve_test_images": n_curve,
                         "runs": decay},
    })  # fmt: skip


if __name__ == "__main__":
    main()
