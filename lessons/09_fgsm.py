"""Lesson 9: FGSM. The gradient of the loss with respect to the input, and the attack it gives.

The input gradient of the undefended default network (the shipped one) computed two ways,
by jax.grad through our own forward pass and by our hand-written backward pass (beside its
naive version, which cancels in float32), and how far from float64 they are: on the test
digits as they are, where max-pool windows on the flat
background tie, and on the same digits with a little noise (parity.untie), where they do
not. Then the fast gradient sign method (Goodfellow et al. 2015): how well the first-order
Taylor expansion predicts the loss it adds, the network's accuracy under FGSM at eps 0,
0.05, ..., 0.3 on all 10,000 test images, and a grid of adversarial examples.

    python lessons/09_fgsm.py           # about 12 minutes on 2 cores
    python lessons/09_fgsm.py --quick   # seconds: a network trained on 512 images
"""

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson, undefended_network

from scratchcnn import attacks, robustness
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import MNIST_STD, standardize_unit, to_unit_nhwc
from scratchcnn.gradcheck import relative_error
from scratchcnn.inference import predict_logits, predict_probabilities
from scratchcnn.ops.losses import log_softmax
from scratchcnn.parity import untie
from scratchcnn.viz import accuracy_vs_eps, adversarial_grid, save_figure

EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
TAYLOR_EPS = (0.0001, 0.001, 0.01, 0.03, 0.1, 0.3)
GRID_EPS = 0.2


def as_float64(tree):
    """A params or state pytree (nested dicts of arrays) in float64."""
    if isinstance(tree, dict):
        return {key: as_float64(value) for key, value in tree.items()}
    return np.asarray(tree, dtype=np.float64)


def per_image_error(g, reference) -> np.ndarray:
    """relative_error of each image's gradient (N, H, W, C) against the reference."""
    return np.array([relative_error(a, b) for a, b in zip(g, reference)])


# --8<-- [start:naive_label_gradient]
def loss_and_gradient_naive(model, params, state, x, labels):
    """The input gradient as the library computed it before the fix: softmax minus one-hot,
    with the label's entry p_y - 1 taken as expm1(log p_y). In float32 it cancels."""
    logits, _, caches = model.forward(params, state, standardize_unit(x), train=False)
    log_probs = log_softmax(logits)
    one_hot = labels[:, None] == np.arange(logits.shape[1])[None, :]
    dlogits = np.where(one_hot, np.expm1(log_probs), np.exp(log_probs))
    dx, _ = model.backward(dlogits, caches)
    return dx / np.asarray(MNIST_STD, dtype=x.dtype)


# --8<-- [end:naive_label_gradient]

GRADIENTS = {"jax": "jax.grad, float32", "naive": "ours, naive $p_y - 1$, float32",
             "manual": "ours, exact, float32"}


def compare_gradients(net, x, y) -> tuple[dict, dict, np.ndarray]:
    """The input gradient by jax.grad, by our backward pass (the library's, exact) and by
    our backward pass from the naive p_y - 1, all float32, against our backward pass in
    float64 as the reference."""
    model, params, state = net
    loss_j, g_j = attacks.loss_and_gradient(*net, x, y, grad="jax")
    loss_m, g_m = attacks.loss_and_gradient(*net, x, y, grad="manual")
    gradients = {"jax": g_j, "naive": loss_and_gradient_naive(*net, x, y), "manual": g_m}
    loss_64, g_64 = attacks.loss_and_gradient(
        model, as_float64(params), as_float64(state), x.astype(np.float64), y, grad="manual"
    )
    errors = {name: per_image_error(g, g_64) for name, g in gradients.items()}
    summary = {
        "images": len(y),
        "max_abs_gradient": float(np.abs(g_64).max()),
        "max_abs_difference": float(np.abs(g_j - g_m).max()),
        "relative_error": relative_error(g_j, g_m),
        "loss_relative_error": relative_error(loss_j, loss_m),
        "sign_disagreements": int(np.sum(np.sign(g_j) != np.sign(g_m))),
        "pixels": int(g_m.size),
        "vs_float64": {
            name: {
                "max_image_error": float(errors[name].max()),
                "median_image_error": float(np.median(errors[name])),
                "images_above_1e-3": int(np.sum(errors[name] > 1e-3)),
                "sign_disagreements": int(np.sum(np.sign(g) != np.sign(g_64))),
            }
            for name, g in gradients.items()
        },
        "images_with_loss_below_1e-6": int(np.sum(loss_64 < 1e-6)),
    }
    return summary, {"loss": loss_64, **errors}, g_64


def logit_gradient_rows(net, x, y) -> dict:
    """The label's entry of d loss / d logits, p_y - 1, from the network's float32 logits,
    four ways: on how many images it is off by more than 1e-3 (relative) from float64."""
    import jax
    import jax.numpy as jnp

    logits = predict_logits(*net, x[..., 0])
    rows, labels = np.arange(len(y)), jnp.asarray(y)[:, None]
    reference = attacks.cross_entropy_gradient(logits.astype(np.float64), y)[rows, y]

    def by_jax_grad(log_softmax_fn):
        def loss(z):
            return -jnp.take_along_axis(log_softmax_fn(z), labels, axis=1).sum()

        return np.asarray(jax.grad(loss)(jnp.asarray(logits)))

    one_hot = y[:, None] == np.arange(logits.shape[1])[None, :]
    label_entry = {
        "naive": np.where(one_hot, np.expm1(log_softmax(logits)), 0),
        "manual": attacks.cross_entropy_gradient(logits, y),
        "jax": by_jax_grad(log_softmax),  # ours: the max it subtracts is differentiated
        "jax_nn": by_jax_grad(jax.nn.log_softmax),  # JAX's: stop_gradient on the max
    }
    return {name: int(np.sum(np.abs(g[rows, y] - reference) > 1e-3 * np.abs(reference)))
            for name, g in label_entry.items()}


def taylor_rows(net, x, y) -> list[dict]:
    """Loss added by FGSM against its first-order prediction g . (x_adv - x), per eps."""
    loss, g = attacks.loss_and_gradient(*net, x, y)
    rows = []
    for eps in TAYLOR_EPS:
        adv = attacks.fgsm(*net, x, y, eps)
        adv_loss, _ = attacks.loss_and_gradient(*net, adv, y)
        predicted = np.sum(g * (adv - x), axis=(1, 2, 3))  # eps * |g|_1 where nothing clips
        actual = adv_loss - loss
        rows.append({"eps": eps, "predicted": float(predicted.mean()),
                     "actual": float(actual.mean()),
                     "ratio": float(actual.mean() / predicted.mean())})
    return rows


def off_the_ties(x, seed: int) -> np.ndarray:
    """x plus uniform noise in [0.01, 0.02]: no two pixels of the black background (and so
    no two values in a max-pool window) are equal any more."""
    noise = np.random.default_rng(seed).uniform(0.01, 0.02, x.shape)
    return np.clip(x + noise, 0, 1).astype(np.float32)


# --------------------------------------------------------------------------- figures


def gradient_figure(x, g, labels, path, count: int = 6):
    """Rows: the digit, its input gradient, the sign of the gradient (FGSM's direction)."""
    figure, axes = plt.subplots(3, count, figsize=(1.5 * count, 4.8), squeeze=False)
    for i in range(count):
        scale = float(np.abs(g[i]).max()) or 1.0
        panels = [(x[i, ..., 0], "gray", 0, 1, f"label {labels[i]}"),
                  (g[i, ..., 0], "seismic", -scale, scale, f"±{scale:.2g}"),
                  (np.sign(g[i, ..., 0]), "seismic", -1, 1, "sign")]
        for row, (image, cmap, lo, hi, title) in enumerate(panels):
            axes[row, i].imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            axes[row, i].set_title(title, fontsize=8)
            axes[row, i].axis("off")
    for row, name in enumerate(("image", "gradient", "sign")):
        axes[row, 0].text(-4, 14, name, rotation=90, va="center", ha="right", fontsize=8)
    save_figure(figure, path)


def precision_figure(panels: dict, path):
    """Per-image relative error of the float32 gradients against float64, by loss: one
    panel per set of images ({title: errors})."""
    figure, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8),
                                sharey=True, squeeze=False)
    for ax, (title, errors) in zip(axes[0], panels.items()):
        for name, marker in zip(GRADIENTS, ("x", "o", "^")):
            ax.scatter(errors["loss"], np.maximum(errors[name], 1e-9), s=8, marker=marker,
                       alpha=0.5, label=GRADIENTS[name])
        losses = np.sort(errors["loss"][errors["loss"] > 0])
        ax.plot(losses, np.minimum(2.0**-24 / losses, 1.5), "k--", lw=0.8,
                label="$2^{-24}$ / loss")
        ax.set(xscale="log", yscale="log", xlabel="loss of the image (float64)", title=title)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("relative error of its gradient\n(float32 against float64)")
    axes[0, 0].legend(fontsize=8)
    save_figure(figure, path)


def taylor_figure(series, path):
    figure, axes = plt.subplots(figsize=(5.5, 3.4))
    for (name, rows), marker in zip(series.items(), ("o-", "s--")):
        axes.plot([r["eps"] for r in rows], [r["ratio"] for r in rows], marker, label=name)
    axes.axhline(1, color="gray", lw=0.8)
    axes.set(xscale="log", yscale="log", xlabel="eps", ylabel="actual / predicted loss increase",
             title="FGSM's loss increase against the first-order prediction")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    save_figure(figure, path)


# --------------------------------------------------------------------------- the run


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    n_test = 100 if lesson.quick else 10_000
    n_small = 100 if lesson.quick else 1_000  # gradient comparison and Taylor check
    images, labels = load_mnist("test")
    x, y = to_unit_nhwc(images[:n_test]), labels[:n_test].astype(np.int64)
    net = undefended_network(lesson.seed, lesson.quick)

    # 1. The input gradient, two ways.
    agreement, errors, g = compare_gradients(net, x[:n_small], y[:n_small])
    untied, untied_errors, _ = compare_gradients(net, untie(x[:n_small], lesson.seed), y[:n_small])
    logit_rows = logit_gradient_rows(net, untie(x[:n_small], lesson.seed), y[:n_small])
    print(f"jax.grad vs our backward: {agreement}\nuntied: {untied}\n{logit_rows}", flush=True)
    gradient_figure(x, g, y, lesson.path("input_gradients.png"))
    precision_figure({"test digits as they are": errors,
                      "the same digits untied (parity.untie)": untied_errors},
                     lesson.path("gradient_precision.png"))

    # 2. How linear is the network around an image?
    taylor = {
        "test images": taylor_rows(net, x[:n_small], y[:n_small]),
        "test images + noise in [0.01, 0.02]":
            taylor_rows(net, off_the_ties(x[:n_small], lesson.seed), y[:n_small]),
    }
    taylor_figure(taylor, lesson.path("taylor.png"))

    # 3. FGSM at every eps, on the whole test set.
    config = robustness.AttackConfig("fgsm", seed=lesson.seed)
    curve = robustness.accuracy_curve(*net, x, y, EPS, config)
    for row in curve:
        print(f"  FGSM eps {row['eps']:<4g} accuracy {row['accuracy']:.2%}", flush=True)
    accuracy_vs_eps({"fgsm": curve}, lesson.path("fgsm_accuracy.png"),
                    title=f"Undefended default network, {n_test:,} test images")

    # 4. What the adversarial images look like, and how sure the network is of them.
    adv = attacks.fgsm(*net, x, y, GRID_EPS)
    before, after = attacks.predict(*net, x), attacks.predict(*net, adv)
    adversarial_grid(x, adv, before, after, lesson.path("fgsm_examples.png"))
    fooled = (before == y) & (after != y)
    confidence = predict_probabilities(*net, adv[fooled, ..., 0]).max(axis=1)

    lesson.finish({
        "n_test": n_test,
        "gradients": agreement,
        "gradients_untied": untied,
        "label_entry_above_1e-3": logit_rows,
        "taylor": taylor["test images"],
        "taylor_noisy": taylor["test images + noise in [0.01, 0.02]"],
        "curve": curve,
        "clean_accuracy": curve[0]["accuracy"],
        "accuracy_at": {f"{r['eps']:g}": r["accuracy"] for r in curve},
        "grid_eps": GRID_EPS,
        "grid_fooled": int(np.sum((before[:8] == y[:8]) & (after[:8] != y[:8]))),
        "fooled_at_grid_eps": float(fooled.mean()),
        "fooled_median_confidence": float(np.median(confidence)) if fooled.any() else None,
        "pixels_moved_fraction": float(np.mean(np.abs(adv - x) > 0)),
    })


if __name__ == "__main__":
    main()
