"""Lesson 6: evaluation. Confusion matrix, per-class report, mistakes, calibration, label smoothing.

Two trained networks on the 10,000 MNIST test images: `default` (seed 0, plain
cross-entropy) and `best` (seed 0, label smoothing 0.1), the networks scratchcnn ships
(scratchcnn.pretrained; --retrain trains them into runs/<recipe>-s0/ instead: default
~4 min, best ~25 min on 2 cores). Every metric comes from scratchcnn.metrics.

    python lessons/06_evaluation.py           # ~1 min
    python lessons/06_evaluation.py --quick   # seconds (fresh, untrained weights)
"""

import matplotlib.pyplot as plt
import numpy as np
from _lesson import ROOT, Lesson, network, trained_checkpoint

from scratchcnn.data.mnist import load_mnist
from scratchcnn.inference import predict_logits
from scratchcnn.metrics import evaluate_logits, expected_calibration_error, softmax
from scratchcnn.train import RECIPES
from scratchcnn.viz import save_figure

NETWORKS = {"default": "default", "best": "best (label smoothing 0.1)"}


def network_logits(recipe: str, images, quick: bool, seed: int) -> np.ndarray:
    """Test logits of the trained network (full run) or of fresh weights (--quick)."""
    return predict_logits(*network(recipe, quick, seed), images)


# --------------------------------------------------------------------------- summaries


def most_confused(counts: np.ndarray) -> dict:
    """The largest off-diagonal count, and every (true, predicted) pair that has it."""
    off = counts.copy()
    np.fill_diagonal(off, -1)
    pairs = np.argwhere(off == off.max())
    return {"count": int(off.max()), "pairs": [[int(t), int(p)] for t, p in pairs]}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 for which softmax(logits / T) has the lowest cross-entropy (grid search)."""
    grid = np.geomspace(0.1, 10, 801)
    losses = []
    for t in grid:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        losses.append(-log_p[np.arange(len(labels)), labels].mean())
    return float(grid[int(np.argmin(losses))])


def temperature_scaling(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Fit T on the first half of the test set, measure ECE on the second half."""
    half = len(labels) // 2
    t = fit_temperature(logits[:half], labels[:half])
    rest, rest_labels = logits[half:].astype(np.float64), labels[half:]
    return {
        "temperature": round(t, 3),
        "fit_on": half,
        "measured_on": len(rest_labels),
        "ece_before": expected_calibration_error(softmax(rest), rest_labels),
        "ece_after": expected_calibration_error(softmax(rest / t), rest_labels),
    }


def summary(logits: np.ndarray, labels: np.ndarray, target_top: float) -> dict:
    """Every number the page shows for one network; target_top is the largest probability
    of the smoothed training target (how many images the network is surer than that)."""
    evaluation = evaluate_logits(logits, labels)
    probs = softmax(logits)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    per_class = evaluation.per_class_accuracy
    data = evaluation.to_json()
    return {
        **{k: data[k] for k in ("num_examples", "accuracy", "loss", "ece", "report")},
        "confusion_matrix": data["confusion_matrix"],
        "per_class_accuracy": data["per_class_accuracy"],
        "reliability": data["reliability"],
        "mistakes": int((~correct).sum()),
        "worst_class": int(np.nanargmin(per_class)),
        "best_class": int(np.nanargmax(per_class)),
        "most_confused": most_confused(evaluation.confusion_matrix),
        "mean_confidence": float(confidence.mean()),
        "mean_confidence_correct": float(confidence[correct].mean()),
        "mean_confidence_wrong": float(confidence[~correct].mean()) if (~correct).any() else None,
        "max_confidence": float(confidence.max()),
        "above_target_top": int((confidence > target_top).sum()),
        "most_confident_mistakes": evaluation.misclassified[:20],
        "temperature_scaling": temperature_scaling(logits, labels),
    }


# --------------------------------------------------------------------------- figures


def confusion_figure(counts: np.ndarray, title: str, path):
    """Off-diagonal cells coloured by count (the mistakes); the diagonal in grey."""
    k = len(counts)
    off = np.ma.masked_where(np.eye(k, dtype=bool), counts)
    figure, axes = plt.subplots(figsize=(6.2, 5.4), layout="constrained")
    axes.imshow(np.eye(k), cmap="Greys", vmin=0, vmax=4)
    image = axes.imshow(off, cmap="Reds", vmin=0, vmax=max(1, int(off.max())))
    for i in range(k):
        for j in range(k):
            if counts[i, j]:
                dark = i != j and counts[i, j] > 0.6 * off.max()
                axes.text(j, i, str(counts[i, j]), ha="center", va="center",
                          fontsize=7 if i == j else 8,
                          color="0.25" if i == j else ("white" if dark else "black"))
    axes.set(xticks=range(k), yticks=range(k), xlabel="predicted class", ylabel="true class")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, shrink=0.8, label="mistakes (off the diagonal)")
    save_figure(figure, path)


def per_class_figure(results: dict, path):
    figure, axes = plt.subplots(figsize=(7.5, 3.2), layout="constrained")
    classes = np.arange(10)
    for offset, (name, label) in zip((-0.2, 0.2), NETWORKS.items()):
        values = 100 * np.array(results[name]["per_class_accuracy"], dtype=float)
        axes.bar(classes + offset, values, width=0.4, label=label)
    low = min(min(results[n]["per_class_accuracy"]) for n in NETWORKS)
    axes.set(xticks=classes, xlabel="true class", ylabel="accuracy within the class (%)",
             ylim=(max(0.0, 100 * low - 0.5), 100))
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8, loc="lower left")
    save_figure(figure, path)


def digit_grid(images, titles, colors, columns: int, path, suptitle: str):
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(1.15 * columns, 1.35 * rows),
                                squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, title, color in zip(axes.flat, images, titles, colors):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)  # white ink on black, as MNIST stores it
        ax.set_title(title, fontsize=7.5, color=color)
    figure.suptitle(suptitle, fontsize=10)
    save_figure(figure, path)


def predictions_figure(images, labels, logits, path, first: int = 30, wrong: int = 10):
    """The first test images in order, then the first mistakes of the test set."""
    probs = softmax(logits)
    preds = probs.argmax(axis=1)
    mistakes = np.flatnonzero(preds != labels)[:wrong]
    shown = np.concatenate([np.arange(first), mistakes[mistakes >= first]])[: first + wrong]
    titles, colors = [], []
    for i in shown:
        right = preds[i] == labels[i]
        title = f"#{i}: {preds[i]} ({100 * probs[i].max():.0f}%)"
        titles.append(title if right else f"#{i}: {preds[i]}, not {labels[i]}")
        colors.append("tab:green" if right else "tab:red")
    digit_grid(images[shown], titles, colors, 10, path,
               f"Test images #0-{first - 1}, then the first mistakes: "
               "prediction (confidence)")


def mistakes_figure(images, mistakes: list[dict], path):
    shown = mistakes[:20]
    titles = [f"{m['prediction']} ({100 * m['confidence']:.0f}%), not {m['label']}"
              for m in shown]
    digit_grid(images[[m["index"] for m in shown]], titles, ["tab:red"] * len(shown), 10, path,
               "The most confident mistakes: prediction (confidence), true label")


def reliability_figure(results: dict, path):
    figure, axes = plt.subplots(2, 2, figsize=(9, 5.6), sharex=True, layout="constrained",
                                gridspec_kw={"height_ratios": [2.2, 1]})
    for column, (name, label) in enumerate(NETWORKS.items()):
        bins = results[name]["reliability"]
        lower, upper = np.array(bins["lower"]), np.array(bins["upper"])
        centres, width = (lower + upper) / 2, upper - lower
        accuracy = np.array([np.nan if a is None else a for a in bins["accuracy"]])
        confidence = np.array([np.nan if c is None else c for c in bins["confidence"]])
        top, bottom = axes[0, column], axes[1, column]
        top.bar(centres, accuracy, width=width, edgecolor="k", lw=0.5, color="tab:blue",
                label="accuracy in the bin")
        top.plot(confidence, confidence, "o", color="tab:orange", ms=4,
                 label="mean confidence in the bin")
        top.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
        top.set(ylim=(0, 1.02), ylabel="accuracy")
        top.set_title(f"{label}: ECE {results[name]['ece']:.4f}", fontsize=10)
        top.legend(fontsize=7.5, loc="upper left")
        bottom.bar(centres, np.maximum(bins["count"], 0.8), width=width, edgecolor="k", lw=0.5,
                   color="0.6")
        bottom.set(yscale="log", ylim=(0.8, 2e4), xlabel="confidence (largest probability)",
                   ylabel="images")
    save_figure(figure, path)


# --------------------------------------------------------------------------- main


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    images, labels = load_mnist("test")
    if lesson.quick:
        images, labels = images[:300], labels[:300]
    smoothing = RECIPES["best"].label_smoothing
    target_top = 1 - smoothing + smoothing / 10  # the smoothed target's largest probability
    logits = {name: network_logits(name, images, lesson.quick, lesson.seed) for name in NETWORKS}
    results = {name: summary(logits[name], labels, target_top) for name in NETWORKS}

    default = results["default"]
    confusion_figure(np.array(default["confusion_matrix"]),
                     f"default: {default['mistakes']} mistakes on {len(labels):,} test images",
                     lesson.path("confusion_matrix.png"))
    per_class_figure(results, lesson.path("per_class_accuracy.png"))
    predictions_figure(images, labels, logits["default"], lesson.path("predictions.png"))
    mistakes_figure(images, default["most_confident_mistakes"], lesson.path("mistakes.png"))
    reliability_figure(results, lesson.path("reliability.png"))

    lesson.finish({
        "test_images": len(labels),
        "checkpoints": None if lesson.quick else {
            name: str(trained_checkpoint(name, lesson.seed).relative_to(ROOT))
            for name in NETWORKS},
        "label_smoothing": smoothing,
        "smoothed_target_top": target_top,
        **results,
    })


if __name__ == "__main__":
    main()
