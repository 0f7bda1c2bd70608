"""Lesson 7: augmentation and ensembles. One digit distorted many ways; the seed networks
compared; their average on the 10,000 test images.

1. Affine and elastic augmentation (scratchcnn.data.augment) applied to one test digit,
   and the elastic displacement field for three smoothing widths.
2. The six networks of RESULTS.md (one per recipe, seed 0): parameters, training time and
   test accuracy from results/*.json, test accuracy measured again here.
3. Ensembles: the average of their softmax probabilities, and of three `default` seeds.

Checkpoints are read from runs/<recipe>-s<seed>/ and trained with scratchcnn.train when
missing: about 80 minutes on 2 cores for all eight (results/*.json, train_seconds).

    python lessons/07_augmentation_ensembles.py           # ~2 min with the checkpoints
    python lessons/07_augmentation_ensembles.py --quick   # seconds (fresh, untrained weights)
    python lessons/07_augmentation_ensembles.py --augmentation-figures  # the two figures
                                                # that need no network, redrawn alone
"""

import argparse
import json
import math
import sys

import matplotlib.pyplot as plt
import numpy as np
from _lesson import ROOT, Lesson, network, trained_checkpoint

from scratchcnn import models
from scratchcnn.data.augment import (
    AUGMENTATIONS,
    AugmentConfig,
    augment_batch,
    bilinear_sample,
    elastic_displacements,
    pixel_grid,
)
from scratchcnn.data.mnist import load_mnist
from scratchcnn.inference import predict_probabilities
from scratchcnn.layers import count_params
from scratchcnn.viz import save_figure

# The seed networks and ours, smallest first; each is runs/<name>-s<seed> of RESULTS.md.
MEMBERS = ("lenet", "flax_cnn", "default", "bn_cnn", "keras_cnn", "best")
DEFAULT_SEEDS = (0, 1, 2)
AUGMENTED = ("keras_cnn", "best")  # the two recipes that train on augmented images


def probabilities(recipe: str, seed: int, images, quick: bool) -> np.ndarray:
    """Softmax probabilities of the trained network (full run) or fresh weights (--quick)."""
    return predict_probabilities(*network(recipe, quick, seed), images)


# --------------------------------------------------------------------------- augmentation

ELASTIC_ONLY = AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0, elastic_probability=1.0)


def augmentation_figure(digit: np.ndarray, seed: int, path, samples: int = 8) -> dict:
    """Rows: the affine preset, elastic distortion alone, the elastic preset (both)."""
    unit = digit.astype(np.float32) / 255
    rows = {
        "affine": AUGMENTATIONS["affine"],
        "elastic only": ELASTIC_ONLY,
        "elastic preset": AUGMENTATIONS["elastic"],
    }
    figure, axes = plt.subplots(len(rows), samples + 1, figsize=(1.1 * (samples + 1), 3.6),
                                layout="constrained")
    changed = {}
    for r, (name, config) in enumerate(rows.items()):
        rng = np.random.default_rng([seed, r])
        batch = augment_batch(np.repeat(unit[None], samples, axis=0), rng, config)
        changed[name] = float(np.abs(batch - unit).mean() / unit.mean())
        for c, image in enumerate([unit, *batch]):
            axes[r, c].imshow(image, cmap="gray", vmin=0, vmax=1)
            axes[r, c].set(xticks=[], yticks=[])
        axes[r, 0].set_ylabel(name, fontsize=9)
    axes[0, 0].set_title("original", fontsize=9)
    save_figure(figure, path)
    return changed


def elastic_figure(digit: np.ndarray, seed: int, path, sigmas=(1.0, 4.0, 8.0)) -> dict:
    """The displacement field and the distorted digit, for three smoothing widths."""
    unit = (digit.astype(np.float32) / 255)[None]
    ys, xs = pixel_grid(28, 28)
    figure, axes = plt.subplots(2, len(sigmas), figsize=(3.0 * len(sigmas), 6),
                                layout="constrained")
    sizes = {}
    for c, sigma in enumerate(sigmas):
        rng = np.random.default_rng([seed, 7])  # the same noise for every sigma
        dy, dx = elastic_displacements(rng, (1, 28, 28), alpha=34.0, sigma=sigma)
        distorted = bilinear_sample(unit, ys + dy, xs + dx)[0]
        sizes[str(sigma)] = float(np.sqrt((dy[0, 4:24, 4:24] ** 2).mean()))
        top, bottom = axes[0, c], axes[1, c]
        top.imshow(unit[0], cmap="gray", vmin=0, vmax=1, alpha=0.3)
        step = 2
        top.quiver(xs[::step, ::step], ys[::step, ::step], dx[0, ::step, ::step],
                   dy[0, ::step, ::step], angles="xy", scale_units="xy", scale=1,
                   color="tab:blue", width=0.006)
        top.set(xlim=(-0.5, 27.5), ylim=(27.5, -0.5), xticks=[], yticks=[])
        top.set_title(f"sigma = {sigma:g}: field (arrows to scale)", fontsize=9)
        bottom.imshow(distorted, cmap="gray", vmin=0, vmax=1)
        bottom.set(xticks=[], yticks=[])
        bottom.set_title(f"distorted, alpha = 34, sigma = {sigma:g}", fontsize=9)
    save_figure(figure, path)
    return sizes


def redraw_augmentation(lesson, digit) -> None:
    """--augmentation-figures: redraw augmentation.png and elastic_field.png, which need no
    network, and check that they measure what the full run's results.json says (to 1e-9:
    a float64 sum may round its last bit differently from one run to the next)."""
    results = json.loads(lesson.path("results.json").read_text())
    measured = {
        "augmentation_mean_change": augmentation_figure(digit, lesson.seed,
                                                        lesson.path("augmentation.png")),
        "elastic_rms_displacement": elastic_figure(digit, lesson.seed,
                                                   lesson.path("elastic_field.png")),
    }
    for key, values in measured.items():
        for name, value in values.items():
            if not math.isclose(value, results[key][name], rel_tol=1e-9):
                raise SystemExit(f"{key}[{name!r}] is {value}, results.json says "
                                 f"{results[key][name]}: run the whole lesson")


# --------------------------------------------------------------------------- networks


def recorded_run(recipe: str, seed: int) -> dict:
    """What results/<recipe>-s<seed>.json (the run of RESULTS.md) says about the run."""
    run = json.loads((ROOT / "results" / f"{recipe}-s{seed}.json").read_text())
    config = run["config"]
    return {
        "epochs": config["epochs"],
        "optimizer": config["optimizer"],
        "learning_rate": config["learning_rate"],
        "schedule": config["schedule"],
        "batch_size": config["batch_size"],
        "augment": config["augment"],
        "label_smoothing": config["label_smoothing"],
        "train_seconds": run["train_seconds"],
        "recorded_test_accuracy": run["test_accuracy"],
    }


def networks_figure(rows: list[dict], path):
    figure, axes = plt.subplots(figsize=(7, 4), layout="constrained")
    for row in rows:
        size = 20 + row["parameters"] / 2500
        axes.scatter(row["train_seconds"], 100 * row["test_accuracy"], s=size, alpha=0.6)
        axes.annotate(f"{row['name']}\n{row['parameters']:,} params",
                      (row["train_seconds"], 100 * row["test_accuracy"]), fontsize=8,
                      xytext=(7, -4), textcoords="offset points")
    axes.set(xscale="log", xlabel="training time on 2 CPU cores (s, log scale)",
             ylabel="test accuracy (%)")
    axes.set_title("One run each (seed 0); marker area grows with the parameters", fontsize=10)
    axes.margins(x=0.3, y=0.15)
    axes.grid(alpha=0.3)
    save_figure(figure, path)


# --------------------------------------------------------------------------- ensembles


# --8<-- [start:ensemble]
def ensemble(probs: list[np.ndarray]) -> np.ndarray:
    """Average the members' class probabilities: (M, N, K) -> (N, K)."""
    return np.mean(probs, axis=0)


# --8<-- [end:ensemble]


def ensemble_figure(rows: list[dict], total: int, path):
    figure, axes = plt.subplots(figsize=(7, 3.6), layout="constrained")
    names = [r["name"] for r in rows][::-1]
    errors = [r["errors"] for r in rows][::-1]
    colors = ["tab:orange" if n.startswith("ensemble") else "tab:blue" for n in names]
    bars = axes.barh(names, errors, color=colors)
    accuracy = [f"{e} ({100 * (1 - e / total):.2f}%)" for e in errors]
    axes.bar_label(bars, accuracy, padding=3, fontsize=8)
    axes.set(xlabel=f"test images misclassified (of {total:,}), and accuracy")
    axes.margins(x=0.25)
    save_figure(figure, path)


def overlap_figure(wrong: dict, path):
    """How many test images two networks both get wrong (diagonal: each one's own)."""
    names = list(wrong)
    shared = np.array([[int((wrong[a] & wrong[b]).sum()) for b in names] for a in names])
    figure, axes = plt.subplots(figsize=(5.6, 4.6), layout="constrained")
    image = axes.imshow(shared, cmap="Blues")
    for i in range(len(names)):
        for j in range(len(names)):
            axes.text(j, i, str(shared[i, j]), ha="center", va="center", fontsize=8,
                      color="white" if shared[i, j] > shared.max() / 2 else "black")
    axes.set(xticks=range(len(names)), yticks=range(len(names)))
    axes.set_xticklabels(names, rotation=45, ha="right")
    axes.set_yticklabels(names)
    axes.set_title("test images both networks get wrong", fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8)
    save_figure(figure, path)
    return shared


def mistakes_figure(images, labels, probs, path, limit: int = 30):
    preds = probs.argmax(axis=1)
    wrong = np.flatnonzero(preds != labels)[:limit]
    columns = 10
    rows = max(1, -(-len(wrong) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(1.15 * columns, 1.35 * rows),
                                squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{preds[i]} ({100 * probs[i].max():.0f}%), not {labels[i]}", fontsize=7.5,
                     color="tab:red")
    figure.suptitle("What the ensemble of six still gets wrong: prediction (probability), "
                    "true label", fontsize=10)
    save_figure(figure, path)


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--augmentation-figures", action="store_true")
    options, sys.argv[1:] = parser.parse_known_args()  # the rest is Lesson's
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    seed = lesson.seed
    images, labels = load_mnist("test")
    if lesson.quick:
        images, labels = images[:200], labels[:200]

    digit = images[np.flatnonzero(labels == 4)[0]]
    if options.augmentation_figures:
        return redraw_augmentation(lesson, digit)
    changed = augmentation_figure(digit, seed, lesson.path("augmentation.png"))
    field = elastic_figure(digit, seed, lesson.path("elastic_field.png"))

    seeds = {s: probabilities("default", s, images, lesson.quick) for s in DEFAULT_SEEDS}
    probs = {name: seeds[seed] if name == "default" and seed in seeds
             else probabilities(name, seed, images, lesson.quick) for name in MEMBERS}

    networks = []
    for name in MEMBERS:
        params, _ = models.build(name).init(0)
        accuracy = float((probs[name].argmax(axis=1) == labels).mean())
        networks.append({"name": name, "parameters": count_params(params),
                         "test_accuracy": accuracy, **recorded_run(name, seed)})
    networks_figure(networks, lesson.path("networks.png"))

    wrong = {name: probs[name].argmax(axis=1) != labels for name in MEMBERS}
    all_six = ensemble([probs[name] for name in MEMBERS])
    three_seeds = ensemble(list(seeds.values()))
    rows = [{"name": n, "errors": int(wrong[n].sum())} for n in MEMBERS]
    rows += [{"name": f"default, seed {s}", "errors": int((p.argmax(1) != labels).sum())}
             for s, p in seeds.items() if s != seed]
    augmented = ensemble([probs[name] for name in AUGMENTED])
    for name, probs_of in (
        ("ensemble: 3 default seeds", three_seeds),
        ("ensemble: " + " + ".join(AUGMENTED), augmented),
        ("ensemble: all six", all_six),
    ):
        rows.append({"name": name, "errors": int((probs_of.argmax(1) != labels).sum())})
    ensemble_figure(rows, len(labels), lesson.path("ensemble.png"))
    shared = overlap_figure(wrong, lesson.path("error_overlap.png"))
    mistakes_figure(images, labels, all_six, lesson.path("ensemble_mistakes.png"))

    stacked = np.stack([wrong[n] for n in MEMBERS])
    best_member = max(networks, key=lambda r: r["test_accuracy"])
    lesson.finish({
        "test_images": len(labels),
        "digit_label": 4,
        "augmentation_mean_change": changed,
        "elastic_rms_displacement": field,
        "networks": networks,
        "ensemble_rows": rows,
        "ensemble_accuracy": float((all_six.argmax(1) == labels).mean()),
        "ensemble_errors": int((all_six.argmax(1) != labels).sum()),
        "three_seeds_accuracy": float((three_seeds.argmax(1) == labels).mean()),
        "augmented_members": list(AUGMENTED),
        "augmented_accuracy": float((augmented.argmax(1) == labels).mean()),
        "default_seed_accuracies": {str(s): float((p.argmax(1) == labels).mean())
                                    for s, p in seeds.items()},
        "best_member": best_member["name"],
        "best_member_accuracy": best_member["test_accuracy"],
        "wrong_by_all": int(stacked.all(axis=0).sum()),
        "wrong_by_some": int(stacked.any(axis=0).sum()),
        "wrong_by_majority": int((stacked.sum(axis=0) > len(MEMBERS) / 2).sum()),
        "shared_errors": shared.tolist(),
        "checkpoints": None if lesson.quick else sorted({
            str(trained_checkpoint(n, s).relative_to(ROOT))
            for n, s in [(m, seed) for m in MEMBERS] + [("default", s) for s in DEFAULT_SEEDS]}),
    })


if __name__ == "__main__":
    main()
