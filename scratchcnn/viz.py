"""Figure helpers the command line and the lessons share (matplotlib, no window)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: lessons and the CLI never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from scratchcnn.files import write_atomically  # noqa: E402


def save_figure(figure, path) -> Path:
    """Write a figure as PNG atomically (a crash leaves no half-written image)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    write_atomically(path, lambda file: file.write(buffer.getvalue()))
    return Path(path)


def accuracy_vs_eps(curves: dict[str, list[dict]], path, title: str = "") -> Path:
    """curves: {"fgsm": [{eps, accuracy}, ...], "pgd": [...]} -> a line plot."""
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for name, rows in curves.items():
        axes.plot([r["eps"] for r in rows], [100 * r["accuracy"] for r in rows], "o-",
                  label=name.upper())  # fmt: skip
    axes.set(xlabel="eps (L-infinity, pixels in [0, 1])", ylabel="test accuracy (%)",
             ylim=(0, 100), title=title)  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def accuracy_vs_eps_by_network(networks: dict[str, dict], path, title: str = "") -> Path:
    """networks: {label: {"fgsm": rows, "pgd": rows}} -> one colour per network, FGSM
    dashed with squares and PGD solid with circles, on one plot."""
    figure, axes = plt.subplots(figsize=(6, 3.8))
    for (label, curves), color in zip(networks.items(), plt.rcParams["axes.prop_cycle"]):
        for attack, style in (("fgsm", "s--"), ("pgd", "o-")):
            rows = curves[attack]
            axes.plot([r["eps"] for r in rows], [100 * r["accuracy"] for r in rows], style,
                      color=color["color"], label=f"{attack.upper()}, {label}")  # fmt: skip
    axes.set(xlabel="eps (L-infinity, pixels in [0, 1])", ylabel="test accuracy (%)",
             ylim=(0, 100), title=title)  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower left")
    return save_figure(figure, path)


def adversarial_grid(clean, adversarial, clean_pred, adv_pred, path, count: int = 8) -> Path:
    """Rows: clean image, perturbation (scaled to its own range), adversarial image."""
    count = min(count, len(clean))
    figure, axes = plt.subplots(3, count, figsize=(1.4 * count, 4.6), squeeze=False)
    for i in range(count):
        delta = adversarial[i, ..., 0] - clean[i, ..., 0]
        scale = max(float(np.abs(delta).max()), 1e-12)
        panels = [
            (clean[i, ..., 0], "gray", (0, 1), f"pred {clean_pred[i]}"),
            (delta, "seismic", (-scale, scale), f"±{scale:.2f}"),
            (adversarial[i, ..., 0], "gray", (0, 1), f"pred {adv_pred[i]}"),
        ]
        for row, (image, cmap, (lo, hi), label) in enumerate(panels):
            axes[row, i].imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            axes[row, i].set_title(label, fontsize=8)
            axes[row, i].axis("off")
    for row, name in enumerate(("clean", "perturbation", "adversarial")):
        axes[row, 0].text(-4, 14, name, rotation=90, va="center", ha="right", fontsize=8)
    return save_figure(figure, path)
