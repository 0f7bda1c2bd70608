"""Lesson 5: training. Optimizers against optax, schedules, a real run, early stopping, checkpoints.

1. Our SGD, momentum and Adam (scratchcnn.optim) and optax's, from the same start on the
   same problem: both trajectories, and their largest difference.
2. The learning-rate schedules of scratchcnn.optim, as `scratchcnn train --schedule` builds them,
   and how far below its peak the default one-cycle schedule is over its last quarter.
3. The default recipe trained on MNIST by the library's loop (scratchcnn.train.train), with an
   ``on_step`` that records the loss after every step and the validation loss every few steps.
4. Early stopping on a small subset, where the network overfits within a few epochs.
5. Checkpoints: a bit-exact round trip, a crash in the middle of a save, a pickle refused.

    python lessons/05_training.py           # 9 to 20 min on 2 shared cores, mostly training
    python lessons/05_training.py --quick   # seconds
"""

import contextlib
import dataclasses
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from _lesson import Lesson

from scratchcnn import models, optim
from scratchcnn.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from scratchcnn.files import write_atomically
from scratchcnn.inference import make_eval_step, predict_logits
from scratchcnn.metrics import accuracy, evaluate_logits
from scratchcnn.train import RECIPES, TrainConfig, train
from scratchcnn.train.data import load_splits
from scratchcnn.train.step import make_schedule
from scratchcnn.viz import save_figure

COLORS = {"sgd": "tab:blue", "momentum": "tab:orange", "adam": "tab:green"}

# --------------------------------------------------------------------------- optimizers

# f(w) = 1/2 w^T H w: a long, narrow valley, 100 times steeper across than along.
CURVATURE = np.diag([1.0, 100.0])
START = np.array([-4.0, 1.5])
STEPS = 100
LR = 0.019  # just below 2 / 100, the largest rate at which SGD does not blow up

# name -> (ours, optax's, learning rate)
OPTIMIZERS = {
    "sgd": (lambda lr: optim.SGD(lr), lambda lr: optax.sgd(lr), LR),
    "momentum": (lambda lr: optim.SGD(lr, momentum=0.9), lambda lr: optax.sgd(lr, 0.9), 0.005),
    "nesterov": (lambda lr: optim.SGD(lr, momentum=0.9, nesterov=True),
                 lambda lr: optax.sgd(lr, 0.9, nesterov=True), 0.005),
    "adam": (lambda lr: optim.Adam(lr), lambda lr: optax.adam(lr), 0.1),
    "adamw": (lambda lr: optim.AdamW(lr, weight_decay=0.1),
              lambda lr: optax.adamw(lr, weight_decay=0.1), 0.1),
}


def valley_loss(w):
    return 0.5 * w @ CURVATURE @ w


def ours_vs_optax(name: str, steps: int) -> dict:
    """Both trajectories from START, float64, and the largest difference between them.

    The parameter is a 2x1 "kernel" so that AdamW's weight decay (kernels only) applies.
    """
    ours, theirs, lr = OPTIMIZERS[name]
    opt = ours(lr)
    params = {"w": START.reshape(2, 1).copy()}
    state = opt.init(params)
    path = [params["w"][:, 0]]
    for _ in range(steps):
        grads = {"w": CURVATURE @ params["w"]}  # the gradient of f, by hand
        params, state = opt.update(grads, state, params)
        path.append(params["w"][:, 0])
    with jax.enable_x64(True):  # optax in float64 too, so the comparison is exact
        tx = theirs(lr)
        p = {"w": jnp.asarray(START.reshape(2, 1))}
        s = tx.init(p)
        optax_path = [np.asarray(p["w"][:, 0])]
        for _ in range(steps):
            updates, s = tx.update({"w": jnp.asarray(CURVATURE) @ p["w"]}, s, p)
            p = optax.apply_updates(p, updates)
            optax_path.append(np.asarray(p["w"][:, 0]))
    path, optax_path = np.array(path), np.array(optax_path)
    return {
        "lr": lr,
        "steps": steps,
        "max_abs_difference": float(np.abs(path - optax_path).max()),
        "final_loss": float(valley_loss(path[-1])),
        "path": path,
        "optax_path": optax_path,
    }


def optimizer_figure(runs: dict, path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained",
                                         gridspec_kw={"width_ratios": [1.6, 1]})
    xs, ys = np.meshgrid(np.linspace(-4.5, 1.5, 200), np.linspace(-2, 2, 200))
    zs = 0.5 * (CURVATURE[0, 0] * xs**2 + CURVATURE[1, 1] * ys**2)
    left.contour(xs, ys, zs, levels=np.geomspace(0.05, 60, 12), colors="0.8", linewidths=0.8)
    for name in ("sgd", "momentum", "adam"):
        run = runs[name]
        label = f"{name} (lr {run['lr']})"
        left.plot(*run["path"].T, "-", color=COLORS[name], lw=1.3, label=label)
        left.plot(*run["optax_path"][::4].T, "o", color=COLORS[name], ms=3.5, mfc="none")
        losses = [valley_loss(w) for w in run["path"]]
        right.semilogy(losses, color=COLORS[name], label=name)
    left.plot(*START, "k*", ms=10)
    left.plot(0, 0, "k+", ms=10)
    left.set(xlabel="$w_1$ (gentle direction)", ylabel="$w_2$ (steep direction)",
             title="lines: scratchcnn.optim, circles: optax (every 4th step)")
    left.title.set_fontsize(9)
    left.legend(fontsize=8, loc="lower right")
    right.set(xlabel="step", ylabel="loss $f(w)$ (log scale)", title="loss along the way")
    right.title.set_fontsize(9)
    right.grid(alpha=0.3)
    save_figure(figure, path)


# --------------------------------------------------------------------------- schedules


def schedule_curves(steps_per_epoch: int, epochs: int, lr: float) -> dict:
    """lr at every step of a run, for each --schedule, built by train.step.make_schedule."""
    base = TrainConfig(epochs=epochs, learning_rate=lr)
    configs = {
        "constant": dataclasses.replace(base, schedule="constant"),
        "milestones (epochs 5, 8; x0.1)": dataclasses.replace(
            base, schedule="milestones", milestones=(5, 8), gamma=0.1
        ),
        "cosine": dataclasses.replace(base, schedule="cosine"),
        "cosine + 1 warm-up epoch": dataclasses.replace(base, schedule="cosine", warmup_epochs=1),
        "one_cycle (the default)": dataclasses.replace(base, schedule="one_cycle"),
    }
    steps = np.arange(epochs * steps_per_epoch)
    curves = {}
    for name, config in configs.items():
        schedule = make_schedule(config, steps_per_epoch)
        curves[name] = np.array([float(schedule(int(t))) for t in steps])
    return curves


def one_cycle_tail(config: TrainConfig, steps_per_epoch: int) -> dict:
    """How far below its peak the one-cycle schedule of ``config`` is over its last quarter:
    the factor at 3/4 of the run and at its last step, and when it first falls 10, 100 and
    1000 times below the peak (as a fraction of the run)."""
    total = config.epochs * steps_per_epoch
    schedule = make_schedule(config, steps_per_epoch)
    lr = np.array([float(schedule(t)) for t in range(total)])
    peak, after_peak = lr.max(), np.arange(total) >= lr.argmax()
    return {
        "steps": total,
        "peak": float(peak),
        "below_peak_at_three_quarters": float(peak / lr[total * 3 // 4]),
        "below_peak_at_last_step": float(peak / lr[-1]),
        "run_fraction_when_below": {
            str(factor): float(np.argmax(after_peak & (lr <= peak / factor)) / total)
            for factor in (10, 100, 1000)
        },
    }


def schedule_figure(curves: dict, steps_per_epoch: int, path):
    figure, axes = plt.subplots(figsize=(8, 3.4))
    for name, values in curves.items():
        axes.plot(np.arange(len(values)) / steps_per_epoch, 1e3 * values, label=name, lw=1.6)
    axes.set(xlabel="epoch", ylabel="learning rate (x 1e-3)",
             title=f"--schedule, over 10 epochs of {steps_per_epoch} steps")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    save_figure(figure, path)


# --------------------------------------------------------------------------- the run


# --8<-- [start:recorder]
class StepRecorder:
    """An ``on_step`` for ``train``: the loss and learning rate of every step, and every
    ``every`` steps the loss on the validation images (timed apart from the training)."""

    def __init__(self, config: TrainConfig, splits, every: int):
        self.model, self.val, self.every = models.build(config.model), splits.val, every
        self.steps_per_epoch = -(-len(splits.train) // config.batch_size)  # ceil
        self.total = config.epochs * self.steps_per_epoch
        self.schedule = make_schedule(config, self.steps_per_epoch)  # the run's schedule
        self.eval_step = jax.jit(make_eval_step(self.model))
        self.curve, self.eval_seconds = [], 0.0

    def __call__(self, run, loss: float, accuracy: float) -> None:
        step = run.step - 1  # the step just taken
        row = {"step": step, "lr": float(self.schedule(step)), "loss": loss, "accuracy": accuracy}
        if run.step % self.every == 0 or run.step == self.total:
            started = time.perf_counter()
            val = self.evaluate(run.params, run.state)
            row.update(val_loss=val.loss, val_accuracy=val.accuracy)
            self.eval_seconds += time.perf_counter() - started
        self.curve.append(row)

    def evaluate(self, params, state):
        """Loss and accuracy on the validation images, with the jitted forward pass."""
        logits = predict_logits(
            self.model, params, state, self.val.images, eval_step=self.eval_step
        )
        return evaluate_logits(logits, self.val.labels)


# --8<-- [end:recorder]


def curves_figure(curve: list[dict], steps_per_epoch: int, path):
    steps = np.array([r["step"] + 1 for r in curve]) / steps_per_epoch
    loss = np.array([r["loss"] for r in curve])
    acc = np.array([r["accuracy"] for r in curve])
    window = max(1, min(25, len(curve) // 8))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    smooth_acc = np.convolve(acc, np.ones(window) / window, mode="valid")
    val = [r for r in curve if "val_loss" in r]
    val_x = np.array([r["step"] + 1 for r in val]) / steps_per_epoch
    figure, (a, b, c) = plt.subplots(1, 3, figsize=(11.5, 3.3), layout="constrained")
    a.semilogy(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="batch loss")
    a.semilogy(steps[window - 1 :], smooth, color="tab:blue", label=f"mean of {window} steps")
    a.semilogy(val_x, [r["val_loss"] for r in val], "o-", color="tab:red", ms=3,
               label="validation loss")
    a.set(xlabel="epoch", ylabel="cross-entropy (log scale)", title="loss")
    b.plot(steps[window - 1 :], 100 * smooth_acc, color="tab:blue", label="training batches")
    b.plot(val_x, [100 * r["val_accuracy"] for r in val], "o-", color="tab:red", ms=3,
           label="validation")
    b.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(90, 100), title="accuracy")
    c.plot(steps, [1e3 * r["lr"] for r in curve], color="k")
    c.set(xlabel="epoch", ylabel="learning rate (x 1e-3)", title="one-cycle schedule")
    for axes in (a, b, c):
        axes.grid(alpha=0.3)
    a.legend(fontsize=8)
    b.legend(fontsize=8, loc="lower right")
    save_figure(figure, path)


# --------------------------------------------------------------------------- early stopping


def early_stopping_run(config: TrainConfig, folder: Path) -> dict:
    """scratchcnn.train with early stopping; the best and the last weights on the test set."""
    result = train(config, output_dir=folder, progress=False, log=lambda line: None)
    splits = load_splits(config)
    last = load_checkpoint(folder / "last.npz")
    model = models.build(config.model)
    last_logits = predict_logits(model, last.params, last.state, splits.test.images)
    return {
        "model": config.model,
        "train_limit": config.train_limit,
        "val_images": len(splits.val),
        "learning_rate": config.learning_rate,
        "max_epochs": config.epochs,
        "patience": config.early_stopping,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "test_accuracy_best": result.test.accuracy,
        "test_loss_best": result.test.loss,
        "test_accuracy_last": accuracy(last_logits, splits.test.labels),
        "history": result.history,
    }


def early_stopping_figure(run: dict, path):
    history = run["history"]
    epochs = [h["epoch"] for h in history]
    figure, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), layout="constrained")
    a.plot(epochs, [h["train_loss"] for h in history], "o-", ms=3, label="training loss")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", ms=3, color="tab:red",
           label="validation loss")
    b.plot(epochs, [100 * h["train_accuracy"] for h in history], "o-", ms=3, label="training")
    b.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", ms=3, color="tab:red",
           label="validation")
    for axes in (a, b):
        axes.axvline(run["best_epoch"], color="tab:green", ls="--", lw=1,
                     label=f"best epoch ({run['best_epoch']})")
        axes.grid(alpha=0.3)
        axes.set_xlabel("epoch")
        axes.legend(fontsize=8)
    a.set(ylabel="cross-entropy (log scale)",
          title=f"stopped after epoch {run['epochs_run']}: {run['patience']} epochs "
          "without a lower validation loss")
    a.title.set_fontsize(10)
    b.set(ylabel="accuracy (%)", title=f"{run['train_limit']} training images: overfitting")
    a.set_yscale("log")
    save_figure(figure, path)


# --------------------------------------------------------------------------- checkpoints


class PowerCut(Exception):
    """Stands in for a crash in the middle of writing a file."""


def checkpoint_demo(model, config, params, state, opt_state, folder: Path) -> dict:
    """Save, load, compare; crash in the middle of a save; offer a pickle to the loader."""
    path = folder / "default.npz"
    save_checkpoint(path, model_name=config.model, model=model, params=params, state=state,
                    opt_state=opt_state, info={"config": config.to_json()})
    loaded = load_checkpoint(path)
    pairs = [(params, loaded.params), (state, loaded.state), (opt_state, loaded.opt_state)]
    leaves = [(a, b) for ours, theirs in pairs
              for a, b in zip(optim.tree_leaves(ours), optim.tree_leaves(theirs))]
    round_trip = all(a.dtype == b.dtype and np.array_equal(a, b) for a, b in leaves)

    # --8<-- [start:crash]
    before = path.read_bytes()

    def crash_halfway(file):
        file.write(before[: len(before) // 2])  # half of a new checkpoint...
        raise PowerCut()  # ...and the power goes

    with contextlib.suppress(PowerCut):
        write_atomically(path, crash_halfway)
    intact = path.read_bytes() == before
    leftovers = sorted(p.name for p in folder.glob(".*.tmp"))
    # --8<-- [end:crash]

    evil = folder / "evil.npz"
    np.savez(evil, **{"meta.json": np.array([{"run": "print('pwned')"}], dtype=object)})
    try:
        load_checkpoint(evil)
        refused = None
    except CheckpointError as error:
        refused = str(error).replace(str(evil), evil.name)

    with np.load(path, allow_pickle=False) as npz:
        entries = npz.files
    return {
        "arrays": len(leaves),
        "entries": len(entries),
        "first_entries": entries[:4],
        "megabytes": round(len(before) / 1e6, 2),
        "round_trip_bit_exact": round_trip,
        "crash_left_old_file_intact": intact,
        "temporary_files_left": leftovers,
        "pickle_refused_with": refused,
    }


# --------------------------------------------------------------------------- main


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    quick, seed = lesson.quick, lesson.seed

    runs = {name: ours_vs_optax(name, STEPS) for name in OPTIMIZERS}
    optimizer_figure(runs, lesson.path("optimizers.png"))

    steps_per_epoch = 422  # 54,000 training images in batches of 128
    curves = schedule_curves(steps_per_epoch, 10, 3e-3)
    schedule_figure(curves, steps_per_epoch, lesson.path("schedules.png"))

    tail = one_cycle_tail(RECIPES["default"], steps_per_epoch)

    config = dataclasses.replace(RECIPES["default"], seed=seed)
    stop_config = TrainConfig(model="flax_cnn", train_limit=500, epochs=25, schedule="constant",
                              learning_rate=3e-3, val_fraction=0.05, early_stopping=4,
                              backend="numpy", seed=seed)
    if quick:
        config = dataclasses.replace(config, backend="numpy", train_limit=256, batch_size=64,
                                     epochs=1, val_fraction=0.01, test_limit=500)
        stop_config = dataclasses.replace(stop_config, train_limit=128, epochs=3, early_stopping=1,
                                          val_fraction=0.01, test_limit=200)
    splits = load_splits(config)
    recorder = StepRecorder(config, splits, every=2 if quick else 50)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        result = train(config, output_dir=tmp / "default", progress=False, on_step=recorder)
        last = load_checkpoint(tmp / "default" / "last.npz")  # the weights and Adam's state
        saved = checkpoint_demo(models.build(config.model), config, last.params, last.state,
                                last.opt_state, tmp)
        stopping = early_stopping_run(stop_config, tmp / "early")
    curve, test = recorder.curve, result.test
    seconds = result.train_seconds - recorder.eval_seconds  # without the recorder's evaluations
    curves_figure(curve, recorder.steps_per_epoch, lesson.path("learning_curves.png"))
    early_stopping_figure(stopping, lesson.path("early_stopping.png"))

    val = [r for r in curve if "val_loss" in r]
    lesson.finish({
        "optimizers": {name: {k: v for k, v in run.items() if "path" not in k}
                       for name, run in runs.items()},
        "optimizers_max_abs_difference": max(r["max_abs_difference"] for r in runs.values()),
        "schedules": {name: {"first": float(v[0]), "peak": float(v.max()),
                             "last": float(v[-1])} for name, v in curves.items()},
        "one_cycle_tail": tail,
        "training": {
            "config": config.to_json(),
            "train_images": len(splits.train),
            "val_images": len(splits.val),
            "test_images": len(splits.test),
            "steps": len(curve),
            "steps_per_epoch": recorder.steps_per_epoch,
            "train_seconds": round(seconds, 1),
            "images_per_second": round(config.epochs * len(splits.train) / seconds),
            "first_loss": curve[0]["loss"],
            "final_val_loss": val[-1]["val_loss"],
            "final_val_accuracy": val[-1]["val_accuracy"],
            "val_accuracy_after_first_eval": val[0]["val_accuracy"],
            "first_eval_step": val[0]["step"] + 1,
            "test_accuracy": test.accuracy,
            "test_loss": test.loss,
            "curve": curve,
        },
        "early_stopping": stopping,
        "checkpoint": saved,
    })


if __name__ == "__main__":
    main()
