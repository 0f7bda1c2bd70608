"""Lesson 17: transfer learning. What a network learnt on MNIST is worth on digits it never saw.

scikit-learn's UCI digits (1,797 8x8 scans by 43 writers who are not MNIST's), prepared the
MNIST way, with a fixed test split of 500. For 10, 50 and all (about 130) labelled images
per class, three ways to train the default network, each for about the same number of steps
and over several seeds (each seed draws other labelled images): from scratch; the shipped
MNIST network frozen, with a new last layer trained on top; and the whole MNIST network
fine-tuned (a new last layer, the body at a tenth of the learning rate). Also: the MNIST
network as it is, with no digits training at all.

    python lessons/17_transfer_learning.py           # ~15 min on 2 cores
    python lessons/17_transfer_learning.py --quick   # seconds
"""

import dataclasses
import time

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson, trained_checkpoint

from scratchcnn import pretrained
from scratchcnn.checkpoint import load_for_model
from scratchcnn.data import find_mnist, read_split
from scratchcnn.data.digits import digits_checksum, held_out_test, load_digits, raw_digits
from scratchcnn.inference import predict_logits
from scratchcnn.train import RECIPES, TrainConfig, train
from scratchcnn.train.config import flag
from scratchcnn.train.data import load_splits
from scratchcnn.viz import save_figure

# Labelled images per class (None: all of them) -> epochs: about 125 steps of 32 images each.
BUDGETS = {10: 30, 50: 8, None: 3}
QUICK_BUDGETS = {10: 1}
BATCH = 32
BODY_LR_SCALE = 0.1
BODY = ("conv1", "batchnorm1", "conv2", "batchnorm2", "dense1")  # all but the last layer
METHODS = {
    "scratch": "from scratch",
    "frozen": "frozen MNIST features + new last layer",
    "finetune": "fine-tune all (body at 0.1 x lr)",
}
COLORS = {"scratch": "tab:gray", "frozen": "tab:blue", "finetune": "tab:orange"}


# --8<-- [start:configs]
def method_config(method: str, per_class, epochs: int, seed: int, init: str) -> TrainConfig:
    """One of the three ways to train on the digits; ``init`` is the MNIST network."""
    config = TrainConfig(dataset="digits", per_class=per_class, epochs=epochs,
                         batch_size=BATCH, val_fraction=0.0, seed=seed)  # fmt: skip
    if method == "frozen":  # only the new last layer learns
        return dataclasses.replace(config, init_from=init, new_head=True, freeze=BODY)
    if method == "finetune":  # everything learns, the MNIST body ten times slower
        return dataclasses.replace(
            config, init_from=init, new_head=True, body_lr_scale=BODY_LR_SCALE
        )
    return config  # scratch: random weights


# --8<-- [end:configs]


def command(config: TrainConfig) -> str:
    """The ``scratchcnn train`` command line of a config: the flags that differ from the
    default recipe (which the command starts from)."""
    parts = ["scratchcnn train"]
    default = RECIPES["default"]
    for field in dataclasses.fields(TrainConfig):
        value = getattr(config, field.name)
        if value == getattr(default, field.name) or value is None:
            continue
        if isinstance(value, bool):
            parts.append(flag(field.name))
        elif isinstance(value, tuple):
            parts.append(f"{flag(field.name)} {','.join(map(str, value))}")
        else:
            parts.append(f"{flag(field.name)} {value:g}" if isinstance(value, float) else
                         f"{flag(field.name)} {value}")  # fmt: skip
    return " ".join(parts)


def test_accuracy(model, params, state, test) -> float:
    """Accuracy on the fixed digits test split, in eval mode."""
    logits = predict_logits(model, params, state, test.images)
    return float((logits.argmax(axis=1) == test.labels).mean())


def run_one(config: TrainConfig, model, test, curve: list | None) -> dict:
    """Train one config; with ``curve``, append the test accuracy after every epoch."""

    def after_epoch(run, record):
        curve.append(test_accuracy(model, run.params, run.state, test))

    started = time.perf_counter()
    result = train(config, progress=False, log=lambda line: None,
                   on_epoch=after_epoch if curve is not None else None)  # fmt: skip
    steps = config.epochs * -(-len_train(config) // BATCH)  # ceil: a last, smaller batch
    return {"accuracy": result.test.accuracy, "seconds": round(time.perf_counter() - started, 1),
            "steps": steps}  # fmt: skip


def len_train(config: TrainConfig) -> int:
    return len(load_splits(config).train)


def compare(budgets: dict, seeds: list[int], init: str, model, test) -> tuple[list, dict]:
    """The table (one row per label budget) and the per-epoch curves at the smallest budget
    (seed 0)."""
    rows, curves = [], {}
    for per_class, epochs in budgets.items():
        row = {"per_class": per_class, "epochs": epochs, "methods": {}}
        for method in METHODS:
            runs = []
            for seed in seeds:
                config = method_config(method, per_class, epochs, seed, init)
                draw_curve = per_class == min(b for b in budgets if b) and seed == seeds[0]
                curve = curves.setdefault(method, []) if draw_curve else None
                runs.append(run_one(config, model, test, curve))
                print(f"{per_class or 'all'} per class, {method}, seed {seed}: "
                      f"{runs[-1]['accuracy']:.2%} ({runs[-1]['seconds']} s)")  # fmt: skip
            accuracies = [r["accuracy"] for r in runs]
            row["methods"][method] = {
                "accuracies": accuracies,
                "mean": float(np.mean(accuracies)),
                "min": min(accuracies),
                "max": max(accuracies),
                "seconds": round(sum(r["seconds"] for r in runs), 1),
            }
            row["steps"] = runs[0]["steps"]
        row["train_images"] = len_train(method_config("scratch", per_class, epochs, 0, init))
        rows.append(row)
    return rows, curves


def data_summary() -> dict:
    """What the prepared digits look like next to MNIST."""
    images, labels = load_digits()
    rows, cols = np.indices(images.shape[1:])
    mass = images.sum(axis=(1, 2))
    mnist, _ = read_split(find_mnist(None), "test")
    test = held_out_test(labels)
    return {
        "images": len(labels),
        "test_images": len(test),
        "train_images": len(labels) - len(test),
        "smallest_class_left": int(np.bincount(np.delete(labels, test)).min()),
        "center_of_mass": [
            round(float(((images * rows).sum(axis=(1, 2)) / mass).mean()), 2),
            round(float(((images * cols).sum(axis=(1, 2)) / mass).mean()), 2),
        ],
        "mean_pixel": round(float(images.mean()), 3),
        "mnist_mean_pixel": round(float(mnist.mean() / 255), 3),
        "ink_fraction": round(float((images > 0.5).mean()), 3),
        "mnist_ink_fraction": round(float((mnist > 127).mean()), 3),
        "checksum": digits_checksum(),
    }


def samples_figure(path):
    """Raw 8x8 digits, the same prepared as MNIST, and MNIST digits of the same classes."""
    raw, target = raw_digits()
    prepared, _ = load_digits()
    mnist, mnist_labels = read_split(find_mnist(None), "test")
    figure, axes = plt.subplots(3, 10, figsize=(8, 2.8))
    for digit in range(10):
        i = int(np.flatnonzero(target == digit)[0])
        j = int(np.flatnonzero(mnist_labels == digit)[0])
        for row, image in enumerate((raw[i], prepared[i], mnist[j])):
            axes[row, digit].imshow(image, cmap="gray", interpolation="nearest")
            axes[row, digit].set_xticks([])
            axes[row, digit].set_yticks([])
    for row, name in enumerate(("UCI 8x8", "prepared", "MNIST")):
        axes[row, 0].set_ylabel(name, fontsize=8)
    figure.suptitle("The UCI digits as scanned, as prepared for the network, and MNIST's")
    save_figure(figure, path)


def table_figure(rows, zero_shot, path):
    """Test accuracy against labelled images per class, one line per method."""
    figure, axes = plt.subplots(figsize=(6.5, 3.8))
    x = [row["train_images"] / 10 for row in rows]
    for method, name in METHODS.items():
        stats = [row["methods"][method] for row in rows]
        mean = np.array([s["mean"] for s in stats])
        spread = [mean - [s["min"] for s in stats], [s["max"] for s in stats] - mean]
        axes.errorbar(x, 100 * mean, yerr=100 * np.array(spread), marker="o", capsize=3,
                      label=name, color=COLORS[method])  # fmt: skip
    axes.axhline(100 * zero_shot, color="tab:green", linestyle="--",
                 label="MNIST network as it is (no digits training)")  # fmt: skip
    axes.set_xscale("log")
    axes.set_xticks(x, [f"{row['per_class'] or 'all'}\n({v:.0f})" for row, v in zip(rows, x)])
    axes.minorticks_off()
    axes.set_xlabel("labelled training images per class")
    axes.set_ylabel("accuracy on the 500 test digits (%)")
    axes.set_title("UCI digits: mean over seeds, bars from lowest to highest")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def curves_figure(curves, per_class, steps_per_epoch, path):
    """Test accuracy after each epoch of the smallest label budget (seed 0)."""
    figure, axes = plt.subplots(figsize=(6.5, 3.5))
    for method, accuracies in curves.items():
        steps = steps_per_epoch * np.arange(1, len(accuracies) + 1)
        axes.plot(steps, 100 * np.array(accuracies), marker=".", label=METHODS[method],
                  color=COLORS[method])  # fmt: skip
    axes.set_xlabel(f"training steps (batches of {BATCH})")
    axes.set_ylabel("accuracy on the 500 test digits (%)")
    axes.set_title(f"Learning curves with {per_class} labelled images per class (seed 0)")
    axes.legend(fontsize=8, loc="lower right")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    budgets = QUICK_BUDGETS if lesson.quick else BUDGETS
    seeds = [lesson.seed] if lesson.quick else [lesson.seed + k for k in range(3)]
    source = trained_checkpoint("default", 0)  # the shipped MNIST network
    init = "default" if source == pretrained.path("default") else str(source)
    model, checkpoint = load_for_model(source)
    test = load_splits(TrainConfig(dataset="digits")).test
    zero_shot = test_accuracy(model, checkpoint.params, checkpoint.state, test)
    samples_figure(lesson.path("samples.png"))
    rows, curves = compare(budgets, seeds, init, model, test)
    table_figure(rows, zero_shot, lesson.path("accuracy.png"))
    smallest = rows[0]
    curves_figure(curves, smallest["per_class"], smallest["steps"] // smallest["epochs"],
                  lesson.path("curves.png"))  # fmt: skip
    first = smallest["methods"]
    commands = {
        method: command(method_config(method, smallest["per_class"], smallest["epochs"],
                                      seeds[0], init))
        for method in METHODS
    }  # fmt: skip
    lesson.finish({
        "data": data_summary(),
        "zero_shot": zero_shot,
        "batch": BATCH,
        "body_lr_scale": BODY_LR_SCALE,
        "learning_rate": TrainConfig().learning_rate,
        "seeds": seeds,
        "table": rows,
        "curves": curves,
        "finetune_gain_at_smallest": first["finetune"]["mean"] - first["scratch"]["mean"],
        "finetune_always_ahead_at_smallest": first["finetune"]["min"] > first["scratch"]["max"],
        "commands": commands,
    })  # fmt: skip


if __name__ == "__main__":
    main()
