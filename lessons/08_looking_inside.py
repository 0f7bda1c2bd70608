"""Lesson 8: looking inside. First-layer filters, feature maps, saliency maps.

1. The learned 3x3 filters of the `default` network's first convolution (and the 5x5 ones
   of `best`).
2. Every layer's output for one test digit, run layer by layer: feature maps after each
   convolution block and each max-pool, and how many activations ReLU sets to zero.
3. Saliency maps, the gradient of the log-probability of a class with respect to the
   input pixels, computed twice: by our hand-written backward pass (grad="manual") and
   by jax.grad through our forward pass (grad="jax"); the two are compared, and checked
   against finite differences in float64, on the digits as they are and untied
   (scratchcnn.parity.untie: a little noise, so that no max-pool window holds equal values).

Networks: the shipped `default` and `best` (scratchcnn.pretrained); --retrain trains them
into runs/ instead (default: ~4 min, best: ~25 min on 2 cores).

    python lessons/08_looking_inside.py           # ~1 min
    python lessons/08_looking_inside.py --quick   # seconds (fresh, untrained weights)
"""

import matplotlib.pyplot as plt
import numpy as np
from _lesson import ROOT, Lesson, network, trained_checkpoint

from scratchcnn.attacks import loss_and_gradient
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.gradcheck import relative_error
from scratchcnn.layers import count_params
from scratchcnn.metrics import softmax
from scratchcnn.parity import untie
from scratchcnn.viz import save_figure

STAGES = {  # the outputs we draw, and what produced them
    "relu1": "conv1 > BN > ReLU",
    "maxpool1": "max-pool 1",
    "relu2": "conv2 > BN > ReLU",
    "maxpool2": "max-pool 2",
}


# --------------------------------------------------------------------------- filters


def filters_figure(panels: dict, path):
    """One small image per output channel; blue negative, red positive, one scale per panel."""
    figure = plt.figure(figsize=(12, 3.0), layout="constrained")
    for sub, (title, (kernel, scale)) in zip(figure.subfigures(1, len(panels)), panels.items()):
        weights = kernel[:, :, 0, :]  # (kh, kw, out): one input channel, the grey image
        for c, ax in enumerate(sub.subplots(4, 8).flat):
            ax.imshow(weights[:, :, c], cmap="seismic", vmin=-scale, vmax=scale)
            ax.set(xticks=[], yticks=[])
        sub.suptitle(f"{title}\n(colour scale ±{scale:.2f})", fontsize=9)
    save_figure(figure, path)


def relative_change(trained, initial) -> float:
    """|W - W0| / |W0|: how far training moved the weights from their random start."""
    return float(np.linalg.norm(trained - initial) / np.linalg.norm(initial))


# --------------------------------------------------------------------------- feature maps


# --8<-- [start:feature_maps]
def feature_maps(model, params, state, x) -> dict:
    """Every layer's output for a batch x (N, H, W, C), in eval mode: {layer name: array}."""
    outputs = {}
    for name, layer in zip(model.names, model.layers):
        x, _, _ = layer.forward(params.get(name, {}), state.get(name, {}), x, train=False)
        outputs[name] = x
    return outputs


# --8<-- [end:feature_maps]


def activations_figure(digit: np.ndarray, maps: dict, path, channels: int = 12):
    """Rows: the stages of STAGES; columns: the channels that vary most over this digit,
    each drawn on its own scale (black 0, bright its largest value)."""
    first = np.argsort(-maps["relu1"][0].std(axis=(0, 1)))[:channels]  # the most varied
    second = np.argsort(-maps["relu2"][0].std(axis=(0, 1)))[:channels]
    picks = {"relu1": first, "maxpool1": first, "relu2": second, "maxpool2": second}
    figure, axes = plt.subplots(len(STAGES), channels + 1, figsize=(1.05 * (channels + 1), 5.2),
                                layout="constrained")
    for r, (name, label) in enumerate(STAGES.items()):
        out = maps[name][0]
        axes[r, 0].imshow(digit, cmap="gray", vmin=0, vmax=1) if r == 0 else axes[r, 0].axis("off")
        for c, channel in enumerate(picks[name]):
            ax = axes[r, c + 1]
            image = out[:, :, channel]
            ax.imshow(image, cmap="magma", vmin=0, vmax=max(float(image.max()), 1e-6))
            ax.set(xticks=[], yticks=[])
            if r in (0, 2):
                ax.set_title(f"ch {channel}", fontsize=7)
        h, w, k = out.shape
        axes[r, 1].set_ylabel(f"{label}\n{h}x{w}x{k}", fontsize=8)
    axes[0, 0].set(xticks=[], yticks=[])
    axes[0, 0].set_title("input", fontsize=8)
    save_figure(figure, path)


def sparsity(model, params, state, x) -> dict:
    """Share of exact zeros after each ReLU, and channels that are zero on every image."""
    maps = feature_maps(model, params, state, x)
    result = {}
    for name in ("relu1", "relu2", "relu3"):
        out = maps[name]
        silent = (out == 0).reshape(-1, out.shape[-1]).all(axis=0)
        result[name] = {
            "zero_fraction": float((out == 0).mean()),
            "channels": int(out.shape[-1]),
            "never_active": int(silent.sum()),
        }
    return result


# --------------------------------------------------------------------------- saliency


# --8<-- [start:smoothgrad]
def smoothgrad(model, params, state, x, labels, samples: int, noise: float, seed: int):
    """The input gradient averaged over noisy copies of x (Smilkov et al. 2017, SmoothGrad)."""
    rng = np.random.default_rng(seed)
    total = np.zeros_like(x)
    for _ in range(samples):
        noisy = x + rng.normal(0, noise, x.shape).astype(x.dtype)
        total += loss_and_gradient(model, params, state, noisy, labels, grad="jax")[1]
    return total / samples


# --8<-- [end:smoothgrad]


def saliency_figure(x, labels, rows: list[tuple[str, np.ndarray]], titles: dict, path):
    """Row 0: the digits; then one row per map, -d loss / dx = d log p(class) / dx."""
    count = len(x)
    figure, axes = plt.subplots(len(rows) + 1, count, figsize=(1.25 * count, 1.4 * (len(rows) + 1)),
                                layout="constrained")
    for i in range(count):
        axes[0, i].imshow(x[i, :, :, 0], cmap="gray", vmin=0, vmax=1)  # white ink on black
        axes[0, i].set_title(f"label {labels[i]}", fontsize=8)
        for r, (_, grad) in enumerate(rows, start=1):
            g = -grad[i, :, :, 0]
            scale = float(np.abs(g).max()) or 1.0
            axes[r, i].imshow(g, cmap="seismic", vmin=-scale, vmax=scale)
            axes[r, i].contour(x[i, :, :, 0], levels=[0.5], colors="0.4", linewidths=0.5)
            if r in titles:
                axes[r, i].set_title(titles[r][i], fontsize=8)
    for ax in axes.flat:
        ax.set(xticks=[], yticks=[])
    axes[0, 0].set_ylabel("digit", fontsize=8)
    for r, (label, _) in enumerate(rows, start=1):
        axes[r, 0].set_ylabel(label, fontsize=7.5)
    save_figure(figure, path)


def finite_difference_check(model, params, state, x, labels, directions: int, seed: int):
    """Directional derivatives in float64: (loss(x + h v) - loss(x - h v)) / 2h against
    <grad, v> for random unit directions v, relative to |grad|.

    The digits get a little noise first: on a flat background or a saturated stroke,
    max-pool windows tie exactly, the max has no derivative there, and a finite
    difference measures neither side's slope.
    """
    rng = np.random.default_rng(seed)
    params64, state64 = _as_float64(params), _as_float64(state)
    x64 = x.astype(np.float64) + rng.uniform(-0.01, 0.01, x.shape)
    _, grad = loss_and_gradient(model, params64, state64, x64, labels, grad="manual")
    h, worst = 1e-6, 0.0
    for _ in range(directions):
        v = rng.standard_normal(x64.shape)
        v /= np.sqrt((v**2).sum())
        plus, _ = loss_and_gradient(model, params64, state64, x64 + h * v, labels, grad="manual")
        minus, _ = loss_and_gradient(model, params64, state64, x64 - h * v, labels, grad="manual")
        numeric = (plus.sum() - minus.sum()) / (2 * h)
        worst = max(worst, abs(numeric - float((grad * v).sum())) / np.sqrt((grad**2).sum()))
    return worst


def _as_float64(tree):
    return {k: _as_float64(v) if isinstance(v, dict) else v.astype(np.float64)
            for k, v in tree.items()}


# --------------------------------------------------------------------------- main


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    quick, seed = lesson.quick, lesson.seed
    images, labels = load_mnist("test")
    model, params, state = network("default", quick, seed)
    best_model, best_params, _ = network("best", quick, seed)
    kernel, best_kernel = params["conv1"]["kernel"], best_params["conv1"]["kernel"]
    start = model.init(seed)[0]["conv1"]["kernel"]  # the random start of the run
    best_start = best_model.init(seed)[0]["conv1"]["kernel"]
    scale = float(np.abs(kernel).max())
    filters_figure({
        "default: conv1, 32 filters of 3x3": (kernel, scale),
        "default: trained minus random start": (kernel - start, scale),
        "best: conv1, 32 filters of 5x5": (best_kernel, float(np.abs(best_kernel).max())),
    }, lesson.path("filters.png"))

    index = 0  # the first test image
    unit = (images[: 1000 if not quick else 100] / np.float32(255))[..., None]
    digit = unit[index : index + 1]
    maps = feature_maps(model, params, state, standardize_unit(digit))
    logits, _, _ = model.forward(params, state, standardize_unit(digit), train=False)
    layer_by_layer = relative_error(maps[model.names[-1]], logits)
    activations_figure(digit[0, :, :, 0], maps, lesson.path("activations.png"))
    probs = softmax(logits)[0]
    zeros = sparsity(model, params, state, standardize_unit(unit))

    x, y = unit[:8], labels[:8].astype(np.int64)
    losses_m, grad_m = loss_and_gradient(model, params, state, x, y, grad="manual")
    losses_j, grad_j = loss_and_gradient(model, params, state, x, y, grad="jax")
    probs_x = softmax(model.forward(params, state, standardize_unit(x), train=False)[0])
    ranked = np.argsort(-probs_x, axis=1)
    runner_up = np.where(ranked[:, 0] == y, ranked[:, 1], ranked[:, 0])
    samples = 4 if quick else 50
    smooth = smoothgrad(model, params, state, x, y, samples, 0.15, seed)
    toward = smoothgrad(model, params, state, x, runner_up, samples, 0.15, seed)
    saliency_figure(x, y, [
        ("d log p(label) / dx\nour backward", grad_m),
        ("d log p(label) / dx\njax.grad", grad_j),
        (f"SmoothGrad, label\n{samples} noisy copies", smooth),
        ("SmoothGrad toward\nthe runner-up", toward),
    ], {4: [f"toward {c}" for c in runner_up]}, lesson.path("saliency.png"))

    _, grad_64 = loss_and_gradient(model, _as_float64(params), _as_float64(state),
                                   x.astype(np.float64), y, grad="manual")
    _, untied_m = loss_and_gradient(model, params, state, untie(x, seed), y, grad="manual")
    _, untied_j = loss_and_gradient(model, params, state, untie(x, seed), y, grad="jax")
    per_image = [
        {"loss": float(losses_m[i]), "relative_error": relative_error(grad_m[i], grad_j[i]),
         "relative_error_untied": relative_error(untied_m[i], untied_j[i]),
         "largest_gradient": float(np.abs(grad_j[i]).max())}
        for i in range(len(x))
    ]
    many = unit[:100] if not quick else unit[:16]
    many_labels = labels[: len(many)].astype(np.int64)
    _, many_m = loss_and_gradient(model, params, state, many, many_labels, grad="manual")
    _, many_j = loss_and_gradient(model, params, state, many, many_labels, grad="jax")
    _, many_um = loss_and_gradient(model, params, state, untie(many, seed), many_labels, "manual")
    _, many_uj = loss_and_gradient(model, params, state, untie(many, seed), many_labels, "jax")
    directions, fd_images = (3 if quick else 10), 4
    fd = finite_difference_check(model, params, state, x[:fd_images], runner_up[:fd_images],
                                 directions, seed)

    maps_shapes = {name: list(maps[name].shape[1:]) for name in model.names}
    lesson.finish({
        "checkpoints": None if quick else {
            r: str(trained_checkpoint(r, seed).relative_to(ROOT)) for r in ("default", "best")},
        "digit": {"index": index, "label": int(labels[index]),
                  "prediction": int(probs.argmax()), "probability": float(probs.max())},
        "parameters": count_params(params),
        "shapes": maps_shapes,
        "layer_by_layer_vs_forward": layer_by_layer,
        "sparsity": zeros,
        "sparsity_images": len(unit),
        "filters": {
            "default_abs_max": scale,
            "default_relative_change": relative_change(kernel, start),
            "best_relative_change": relative_change(best_kernel, best_start),
            "default_init_std": float(start.std()),
        },
        "smoothgrad": {"samples": samples, "noise": 0.15},
        "saliency": {
            "images": len(x),
            "labels": y.tolist(),
            "runner_up": runner_up.tolist(),
            "relative_error": relative_error(grad_m, grad_j),
            "loss_relative_error": relative_error(losses_m, losses_j),
            "relative_error_100": relative_error(many_m, many_j),
            "relative_error_untied": relative_error(untied_m, untied_j),
            "relative_error_100_untied": relative_error(many_um, many_uj),
            "images_100": len(many),
            "finite_difference_relative_error": fd,
            "finite_difference_directions": directions,
            "finite_difference_images": fd_images,
            "per_image": per_image,
            "manual_vs_float64": relative_error(grad_m, grad_64),
            "jax_vs_float64": relative_error(grad_j, grad_64),
        },
    })


if __name__ == "__main__":
    main()
