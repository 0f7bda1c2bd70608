"""Lesson 04: pooling, BatchNorm and dropout, and what train mode and eval mode change.

Max and average pooling on real digits (and where max pooling's gradient goes when a
window holds several equal maxima); BatchNorm's running statistics converging over
training steps, and eval-mode outputs drifting with them; inverted dropout, one mask
at a time and averaged. Every op checked against its Flax twin.

    python lessons/04_pool_batchnorm_dropout.py           # ~1 min
    python lessons/04_pool_batchnorm_dropout.py --quick   # seconds
"""

import jax

jax.config.update("jax_enable_x64", True)  # float64 on the Flax side too

import jax.numpy as jnp  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _lesson import Lesson  # noqa: E402
from flax import nnx  # noqa: E402

from scratchcnn import layers as L  # noqa: E402
from scratchcnn import parity  # noqa: E402
from scratchcnn.data.mnist import load_mnist  # noqa: E402
from scratchcnn.data.preprocess import standardize, to_unit_nhwc  # noqa: E402
from scratchcnn.gradcheck import relative_error  # noqa: E402
from scratchcnn.ops.batchnorm import batchnorm_forward  # noqa: E402
from scratchcnn.ops.conv import conv2d_forward  # noqa: E402
from scratchcnn.ops.dropout import dropout_forward  # noqa: E402
from scratchcnn.ops.pool import (  # noqa: E402
    avg_pool_forward,
    max_pool_backward,
    max_pool_forward,
)
from scratchcnn.viz import save_figure  # noqa: E402

MOMENTUM = 0.99  # Flax's default: the weight of the *old* running value


# --------------------------------------------------------------------------- pooling


def tie_study(x) -> dict:
    """2x2 max pooling of real digits: how often a window's maximum is tied, and where
    the gradient goes, by our rule, by jax.grad of Flax's max_pool, and if shared."""
    out, cache = max_pool_forward(x, 2)
    dout = np.random.default_rng(0).standard_normal(out.shape).astype(x.dtype)
    ours, _ = max_pool_backward(dout, cache)

    def flax_pool(xx):
        return jnp.sum(nnx.max_pool(xx, window_shape=(2, 2), strides=(2, 2)) * dout)

    flax = jax.grad(flax_pool)(jnp.asarray(x))
    up = out.repeat(2, axis=1).repeat(2, axis=2)  # each window's max, on its 4 cells
    winners = x == up
    every_maximum = winners * dout.repeat(2, axis=1).repeat(2, axis=2)
    cells = winners.reshape(len(x), 14, 2, 14, 2, -1).sum(axis=(2, 4))  # maxima per window
    return {
        "windows": int(cells.size),
        "tied_fraction": round(float(np.mean(cells > 1)), 4),
        "all_four_tied_fraction": round(float(np.mean(cells == 4)), 4),
        "ours_vs_flax_grad": relative_error(ours, flax),
        "every_maximum_vs_flax_grad": round(relative_error(every_maximum, flax), 4),
        "every_maximum_extra_cells": round(float(np.mean((every_maximum != 0) & (ours == 0))), 4),
    }


def pooling_figure(digit, path):
    """A digit, its max and average pools, and where max pooling sends a gradient of 1."""
    x = digit[None]  # (1, 28, 28, 1) in [0, 1]
    max14, cache = max_pool_forward(x, 2)
    avg14, _ = avg_pool_forward(x, 2)
    max7, _ = max_pool_forward(max14, 2)
    routed, _ = max_pool_backward(np.ones_like(max14), cache)
    panels = [(x, "input 28x28", "gray"), (max14, "max pool 2x2: 14x14", "gray"),
              (avg14, "avg pool 2x2: 14x14", "gray"), (max7, "max pool twice: 7x7", "gray"),
              (routed, "max pool's gradient of 1s", "Reds")]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 3.2))
    for ax, (a, title, cmap) in zip(axes, panels):
        ax.imshow(a[0, :, :, 0], cmap=cmap, vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[-1].set_xticks(np.arange(-0.5, 28, 2), minor=True)
    axes[-1].set_yticks(np.arange(-0.5, 28, 2), minor=True)
    axes[-1].grid(which="minor", color="lightgray", lw=0.4)
    axes[-1].tick_params(which="minor", length=0)
    save_figure(figure, path)


# --------------------------------------------------------------------------- BatchNorm


def features(conv_kernel, conv_bias, images):
    """A fixed random 3x3 conv + ReLU on standardized digits: 8 channels to normalise."""
    out, _ = conv2d_forward(standardize(images), conv_kernel, conv_bias)
    return np.maximum(out, 0)


def population_stats(conv_kernel, conv_bias, images, chunk=1000):
    """Per-channel mean and biased variance of the features over many images (float64)."""
    total = total_sq = 0.0
    count = 0
    for start in range(0, len(images), chunk):
        f = features(conv_kernel, conv_bias, images[start : start + chunk]).astype(np.float64)
        total = total + f.sum(axis=(0, 1, 2))
        total_sq = total_sq + (f**2).sum(axis=(0, 1, 2))
        count += f.shape[0] * f.shape[1] * f.shape[2]
    mean = total / count
    return mean, total_sq / count - mean**2


# --8<-- [start:running_stats]
def train_batchnorm(batches, held_out, params, state):
    """BatchNorm in train mode over a stream of batches: each batch is normalised with its
    own statistics, and the running ones move 1% of the way towards them. After each
    step, the held-out batch goes through in eval mode, with the running statistics."""
    history = []
    for batch in batches:
        _, state, _ = batchnorm_forward(batch, params, state, train=True, momentum=MOMENTUM)
        eval_out, _, _ = batchnorm_forward(held_out, params, state, train=False)
        history.append({"state": state, "eval": eval_out})
    return history


# --8<-- [end:running_stats]


def batchnorm_study(train_images, test_images, steps, batch, seed):
    rng = np.random.default_rng(seed)
    kernel = (rng.standard_normal((3, 3, 1, 8)) / 3).astype(np.float32)
    bias = rng.uniform(-0.5, 0.5, 8).astype(np.float32)
    pop_mean, pop_var = population_stats(kernel, bias, train_images)
    order = rng.permutation(len(train_images))[: steps * batch].reshape(steps, batch)
    batches = (features(kernel, bias, train_images[index]) for index in order)
    held_out = features(kernel, bias, test_images[:batch])
    params = {"scale": np.ones(8, np.float32), "bias": np.zeros(8, np.float32)}
    state = {"mean": np.zeros(8, np.float32), "var": np.ones(8, np.float32)}  # Flax's init
    ideal = batchnorm_forward(held_out, params, {"mean": pop_mean, "var": pop_var},
                              train=False)[0]
    history = train_batchnorm(batches, held_out, params, state)
    train_out = batchnorm_forward(held_out, params, state, train=True)[0]  # batch statistics

    def rms(a):
        return float(np.sqrt(np.mean(np.square(a))))

    t = np.arange(1, steps + 1)
    mean_gap = np.array([np.abs(h["state"]["mean"] - pop_mean) for h in history])
    var_gap = np.array([np.abs(h["state"]["var"] - pop_var) for h in history])
    eval_vs_ideal = np.array([rms(h["eval"] - ideal) for h in history])
    eval_vs_train = np.array([rms(h["eval"] - train_out) for h in history])
    # The same image, normalised in train mode inside two different batches:
    other = features(kernel, bias, test_images[batch : 2 * batch - 1])
    together = np.concatenate([held_out[:1], other])
    alone_a = batchnorm_forward(held_out, params, state, train=True)[0][0]
    alone_b = batchnorm_forward(together, params, state, train=True)[0][0]
    eval_a = batchnorm_forward(held_out, params, history[-1]["state"], train=False)[0][0]
    eval_b = batchnorm_forward(together, params, history[-1]["state"], train=False)[0][0]
    fresh_eval = batchnorm_forward(held_out, params, state, train=False)[0]
    checkpoints = [s for s in (1, 10, 50, 100, 200, 300, 459, 600) if s <= steps]
    return {
        "curves": {"t": t, "mean_gap": mean_gap, "var_gap": var_gap,
                   "init_mean_gap": np.abs(pop_mean), "init_var_gap": np.abs(1 - pop_var),
                   "running_mean": np.array([h["state"]["mean"] for h in history]),
                   "pop_mean": pop_mean, "eval_vs_ideal": eval_vs_ideal,
                   "eval_vs_train": eval_vs_train},
        "results": {
            "steps": steps,
            "batch": batch,
            "population_mean": [round(float(v), 4) for v in pop_mean],
            "population_var": [round(float(v), 4) for v in pop_var],
            "remaining_mean_gap": {
                str(s): round(float(np.mean(mean_gap[s - 1] / np.abs(pop_mean))), 4)
                for s in checkpoints
            },
            "predicted_gap": {str(s): round(MOMENTUM**s, 4) for s in checkpoints},
            "eval_vs_ideal_rms": {str(s): round(float(eval_vs_ideal[s - 1]), 4)
                                  for s in checkpoints},
            "eval_vs_train_rms_final": round(float(eval_vs_train[-1]), 4),
            "fresh_eval_vs_ideal_rms": round(rms(fresh_eval - ideal), 4),
            "ideal_rms": round(rms(ideal), 4),
            "fresh_eval_equals_input": relative_error(fresh_eval, held_out / np.sqrt(1 + 1e-5)),
            "same_image_two_batches_train_max_diff": round(float(np.abs(alone_a - alone_b).max()),
                                                           4),
            "same_image_two_batches_eval_max_diff": float(np.abs(eval_a - eval_b).max()),
        },
    }


def bn_stats_figure(c, path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6), gridspec_kw={"wspace": 0.28})
    colors = ["tab:blue", "tab:orange", "tab:green"]
    for ch, color in zip(range(3), colors):
        left.plot(c["t"], c["running_mean"][:, ch], color=color, label=f"channel {ch}")
        left.axhline(c["pop_mean"][ch], color=color, ls="--", lw=0.8)
    left.set_xlabel("training step (one batch each)")
    left.set_ylabel("running mean")
    left.set_title("Running means (dashed: mean over 60,000 images)", fontsize=10)
    left.legend(fontsize=8)
    mean_gap = np.mean(c["mean_gap"] / c["init_mean_gap"], axis=1)
    var_gap = np.mean(c["var_gap"] / c["init_var_gap"], axis=1)
    right.semilogy(c["t"], mean_gap, label="running mean")
    right.semilogy(c["t"], var_gap, label="running variance")
    right.semilogy(c["t"], MOMENTUM ** c["t"], "k--", lw=1, label="0.99^t")
    right.set_xlabel("training step")
    right.set_ylabel("gap left / gap at the start")
    right.set_title("Distance to the data's statistics, mean of 8 channels", fontsize=10)
    right.grid(alpha=0.3, which="both")
    right.legend(fontsize=8)
    save_figure(figure, path)


def bn_eval_figure(c, path):
    figure, axes = plt.subplots(figsize=(7, 3.4))
    axes.semilogy(c["t"], c["eval_vs_ideal"],
                  label="eval mode vs eval with the data's exact statistics")
    axes.semilogy(c["t"], c["eval_vs_train"], label="eval mode vs train mode (batch statistics)")
    axes.set_xlabel("training step")
    axes.set_ylabel("RMS difference of outputs")
    axes.set_title("One held-out batch through BatchNorm, after each training step", fontsize=10)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    save_figure(figure, path)


# --------------------------------------------------------------------------- dropout


def dropout_study(digit, rate, samples, seed):
    """Many inverted-dropout masks on one digit: single outputs, and their running mean."""
    rng = np.random.default_rng(seed)
    x = digit[None].astype(np.float64)
    outs = np.stack([dropout_forward(x, rate, rng)[0][0] for _ in range(samples)])
    means = np.cumsum(outs, axis=0) / np.arange(1, samples + 1)[:, None, None, None]
    rms_x = np.sqrt(np.mean(x**2))
    error = np.sqrt(np.mean((means - x[0]) ** 2, axis=(1, 2, 3)))
    big = rng.uniform(0, 1, (1000, 1000))
    big_out, (mask, keep) = dropout_forward(big, rate, rng)
    return outs, means, error, rms_x, {
        "rate": rate,
        "samples": samples,
        "kept_fraction": round(float(np.mean(mask)), 4),
        "kept_expected": 1 - rate,
        "survivor_scale": round(float(big_out[mask][0] / big[mask][0]), 6),
        "mean_ratio": round(float(big_out.mean() / big.mean()), 4),
        "error_after_1": round(float(error[0] / rms_x), 4),
        "error_after_last": round(float(error[-1] / rms_x), 4),
        "predicted_after_1": round(float(np.sqrt(rate / (1 - rate))), 4),
        "predicted_after_last": round(float(np.sqrt(rate / (1 - rate) / samples)), 4),
        "eval_is_identity": bool(np.array_equal(
            L.Dropout(rate).forward({}, {}, big, train=False)[0], big)),
    }


def dropout_figure(digit, outs, means, error, rms_x, rate, path):
    figure = plt.figure(figsize=(14, 3.2))
    grid = figure.add_gridspec(1, 7, width_ratios=[1, 1, 1, 1, 1, 0.25, 2.2])
    samples = len(outs)
    panels = [(digit[..., 0], "input"), (outs[0][..., 0], "one mask"),
              (outs[1][..., 0], "another mask"), (means[9][..., 0], "mean of 10"),
              (means[-1][..., 0], f"mean of {samples}")]
    for k, (a, title) in enumerate(panels):
        ax = figure.add_subplot(grid[0, k])
        ax.imshow(a, cmap="gray", vmin=0, vmax=1)  # survivors (x2) are clipped to white
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    ax = figure.add_subplot(grid[0, 6])
    k = np.arange(1, samples + 1)
    ax.loglog(k, error / rms_x, label="measured")
    ax.loglog(k, np.sqrt(rate / (1 - rate) / k), "k--", lw=1, label="sqrt(rate / (keep K))")
    ax.set_xlabel("masks averaged, K")
    ax.set_ylabel("RMS error / RMS of input")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    figure.suptitle(f"Inverted dropout, rate {rate}: survivors are scaled by "
                    f"1/(1 - rate) = {1 / (1 - rate):g}, so the average is the input")
    save_figure(figure, path)


# --------------------------------------------------------------------------- Flax


def flax_parity(dtypes) -> dict:
    """Worst relative difference per op family over the ``scratchcnn parity`` cases."""
    families = {"max pool": "max pool", "avg pool": "avg pool", "batch norm": "batch norm",
                "dropout": "dropout", "channel dropout": "channel dropout"}
    rows = {}
    for dtype in dtypes:
        for name, layer, in_shape, train in parity.OP_CASES:
            family = next((f for f in families if name.startswith(f)), None)
            if family is None:
                continue
            mode = "train" if train else "eval"
            if family in ("batch norm", "dropout", "channel dropout"):
                family_key = f"{family}, {mode}, {dtype}"
            else:
                family_key = f"{family}, {dtype}"
            row = parity.op_row(name, layer, in_shape, train, dtype)
            worst = rows.setdefault(family_key, {"cases": 0})
            worst["cases"] += 1
            for quantity, value in row.diffs.items():
                key = "running stats" if quantity.startswith("running") else quantity
                key = key.replace("batchnorm1.", "")
                worst[key] = max(worst.get(key, 0.0), value)
    return {k: {q: (v if q == "cases" else float(f"{v:.2e}")) for q, v in d.items()}
            for k, d in rows.items()}


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    train_images, _ = load_mnist("train")
    test_images, _ = load_mnist("test")
    if lesson.quick:
        train_images, test_images = train_images[:500], test_images[:500]

    unit = to_unit_nhwc(test_images)
    pooling_figure(unit[0], lesson.path("pooling.png"))
    ties = tie_study(unit[:1000])

    steps, batch = (30, 16) if lesson.quick else (600, 64)
    bn = batchnorm_study(train_images, test_images, steps, batch, lesson.seed)
    bn_stats_figure(bn["curves"], lesson.path("bn_running_stats.png"))
    bn_eval_figure(bn["curves"], lesson.path("bn_train_vs_eval.png"))

    samples = 50 if lesson.quick else 1000
    outs, means, error, rms_x, drop = dropout_study(unit[0], 0.5, samples, lesson.seed)
    dropout_figure(unit[0], outs, means, error, rms_x, 0.5, lesson.path("dropout.png"))

    dtypes = ("float32",) if lesson.quick else ("float32", "float64")  # XLA compiles a lot
    lesson.finish({
        "ties": ties,
        "batchnorm": bn["results"],
        "steps_to_1_percent": round(float(np.log(0.01) / np.log(MOMENTUM)), 1),
        "dropout": drop,
        "flax": flax_parity(dtypes),
    })


if __name__ == "__main__":
    main()
