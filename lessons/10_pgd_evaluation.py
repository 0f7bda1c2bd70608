"""Lesson 10: PGD, and how to evaluate robustness without fooling yourself.

The undefended default network (the shipped one) under FGSM and under PGD-40 (step 0.01,
one random start) at eps 0.05 ... 0.3 on all 10,000 test images; PGD's accuracy against
its number of steps; and the five sanity checks against gradient masking
(scratchcnn.robustness.sanity_checks) on the first 1,000 test images, run twice: on the
network, and on a fake "defence", the same network with its logits multiplied by 1,000.
The fake has the same predictions and the same weakness, but a gradient that is exactly
zero on almost every image, so gradient attacks report robustness it does not have. The
checks catch it.

    python lessons/10_pgd_evaluation.py           # ~1 hour on 2 cores (PGD-40 on 10,000 images)
    python lessons/10_pgd_evaluation.py --quick   # seconds: tiny networks, a few hundred images
"""

import dataclasses
import sys
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson, undefended_network

from scratchcnn import attacks, robustness
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import to_unit_nhwc
from scratchcnn.inference import predict_logits
from scratchcnn.layers import Layer, Sequential
from scratchcnn.viz import (
    accuracy_vs_eps,
    accuracy_vs_eps_by_network,
    adversarial_grid,
    save_figure,
)

EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
SANITY_EPS = (0.0, 0.05, 0.1)  # "more steps and restarts" is checked at the largest, 0.1
STEPS_EPS = 0.1  # the eps of the accuracy-against-steps curve
GRID_EPS = 0.1
MASK_FACTOR = 1000.0


def log(text: str) -> None:
    print(text, flush=True)


# --8<-- [start:scale]
@dataclass(frozen=True)
class Scale(Layer):
    """Multiply the logits by a constant. argmax (the prediction) does not change; the
    softmax saturates to exactly one-hot in float32, so the loss and its gradient are 0."""

    factor: float = MASK_FACTOR
    kind = "scale"

    def forward(self, params, state, x, *, train, rng=None):
        return x * self.factor, state, None

    def backward(self, dout, cache):
        return dout * self.factor, {}


def masked(model: Sequential) -> Sequential:
    """The fake defence: the same network and weights, logits times 1,000."""
    return Sequential([*model.layers, Scale()])


# --8<-- [end:scale]


def attack_curves(net, x, y, config: robustness.AttackConfig, eps_values, subset: int):
    """FGSM and PGD accuracy at every eps of eps_values, on all of x and on its first ``subset``
    images; also returns the PGD examples of the first 8 images at GRID_EPS."""
    curves, on_subset, grid = {"fgsm": [], "pgd": []}, {"fgsm": [], "pgd": []}, None
    for name in curves:
        cfg = dataclasses.replace(config, attack=name)
        for eps in eps_values:
            started = time.perf_counter()
            adv = robustness.adversarial_examples(*net, x, y, eps, cfg)
            correct = attacks.predict(*net, adv) == y
            curves[name].append({"eps": eps, "accuracy": float(correct.mean())})
            on_subset[name].append({"eps": eps, "accuracy": float(correct[:subset].mean())})
            if name == "pgd" and eps == GRID_EPS:
                grid = adv[:8]
            seconds = time.perf_counter() - started
            log(f"  {name} eps {eps:<4g} accuracy {correct.mean():.2%}  ({seconds:.0f} s)")
    return curves, on_subset, grid


def steps_curve(net, x, y, steps_list, seed: int) -> list[dict]:
    """PGD accuracy at STEPS_EPS against the number of steps (step size 2.5 eps / steps)."""
    rows = []
    for steps in steps_list:
        cfg = robustness.AttackConfig("pgd", steps=steps, step_size=2.5 * STEPS_EPS / steps,
                                      seed=seed)
        adv = robustness.adversarial_examples(*net, x, y, STEPS_EPS, cfg)
        rows.append({"steps": steps, "step_size": round(cfg.step_size, 5),
                     "accuracy": robustness.accuracy(*net, adv, y)})
        log(f"  PGD-{steps} at eps {STEPS_EPS}: {rows[-1]['accuracy']:.2%}")
    return rows


def loss_along(net, x, y, direction, ts) -> tuple[np.ndarray, np.ndarray]:
    """Loss and prediction of one image x (1, H, W, 1) moved by t * direction, per t."""
    points = np.clip(x + ts[:, None, None, None] * direction, 0, 1).astype(np.float32)
    logits = predict_logits(*net, points[..., 0])
    return attacks.per_example_loss(logits, np.full(len(ts), y)), logits.argmax(axis=1)


# --------------------------------------------------------------------------- figures


def steps_figure(rows, path):
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot([r["steps"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
    axes.set_xscale("log")
    axes.set(xlabel="PGD steps (step size 2.5 eps / steps)", ylabel="test accuracy (%)",
             title=f"PGD at eps {STEPS_EPS:g}: more steps, until it levels off")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def landscape_figure(ts, curves, path):
    """Loss along the undefended network's FGSM direction, for both networks."""
    figure, panels = plt.subplots(1, 2, figsize=(8.5, 3.2), layout="constrained")
    for axes, (name, (losses, correct)) in zip(panels, curves.items()):
        axes.plot(ts, losses, color="tab:blue")
        wrong = ts[~correct]
        if len(wrong):
            axes.axvspan(wrong.min(), ts.max(), color="tab:red", alpha=0.12,
                         label="prediction wrong")
            axes.legend(fontsize=8, loc="upper left")
        axes.set(xlabel="t (move x by t * sign of the gradient)", ylabel="cross-entropy",
                 title=name)
        axes.grid(alpha=0.3)
    save_figure(figure, path)


# --------------------------------------------------------------------------- the run


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    quick, seed = lesson.quick, lesson.seed
    n_test, n_sanity = (100, 100) if quick else (10_000, 1_000)
    steps_list = (1, 2, 5) if quick else (1, 2, 5, 10, 20, 40, 100)
    eps_values = (0.0, 0.1, 0.3) if quick else EPS
    config = robustness.AttackConfig("pgd", steps=5 if quick else 40,
                                     step_size=0.03 if quick else 0.01, seed=seed)

    images, labels = load_mnist("test")
    x, y = to_unit_nhwc(images[:n_test]), labels[:n_test].astype(np.int64)
    net = undefended_network(seed, quick)
    other = undefended_network(seed + 1, quick)  # independently trained: the transfer source
    clean = robustness.accuracy(*net, x, y)
    log(f"clean accuracy on {n_test:,} test images: {clean:.2%}")

    # 1. FGSM and PGD on the whole test set.
    curves, curves_subset, grid = attack_curves(net, x, y, config, eps_values, n_sanity)
    accuracy_vs_eps(curves, lesson.path("fgsm_vs_pgd.png"),
                    title=f"Undefended default network, {n_test:,} test images")
    adversarial_grid(x[:8], grid, attacks.predict(*net, x[:8]), attacks.predict(*net, grid),
                     lesson.path("pgd_examples.png"))

    # 2. How many steps does PGD need?
    xs, ys = x[:n_sanity], y[:n_sanity]
    steps = steps_curve(net, xs, ys, steps_list, seed)
    steps_figure(steps, lesson.path("pgd_steps.png"))

    # 3. The sanity checks, on the network and on its masked copy.
    fake = (masked(net[0]), net[1], net[2])
    sanity = {}
    for name, candidate in (("undefended", net), ("masked", fake)):
        started = time.perf_counter()
        report, _ = robustness.sanity_checks(*candidate, xs, ys, SANITY_EPS, config,
                                             transfer_from=other)
        log(f"sanity checks, {name} ({time.perf_counter() - started:.0f} s):\n{report.format()}")
        sanity[name] = report.checks
    masked_curves, _, _ = attack_curves(fake, xs, ys, config, eps_values, n_sanity)
    accuracy_vs_eps_by_network(
        {"undefended": curves_subset, "masked (logits x 1000)": masked_curves},
        lesson.path("masking_curves.png"),
        title=f"One network, with and without a masked gradient ({n_sanity:,} images)",
    )

    # 4. What the masked gradient looks like.
    _, g_fake = attacks.loss_and_gradient(*fake, xs, ys)
    zero_gradient = float(np.mean(np.all(g_fake.reshape(len(ys), -1) == 0, axis=1)))
    _, g = attacks.loss_and_gradient(*net, xs, ys)
    ts = np.linspace(0, 0.3, 61)
    landscape = {}
    for name, candidate in (("undefended", net), ("masked (logits x 1000)", fake)):
        losses, predicted = loss_along(candidate, x[:1], y[0], np.sign(g[:1]), ts)
        landscape[name] = (losses, predicted == y[0])
    landscape_figure(ts, landscape, lesson.path("masking_landscape.png"))
    flip = ts[~landscape["undefended"][1]]

    lesson.finish({
        "n_test": n_test,
        "n_sanity": n_sanity,
        "clean_accuracy": clean,
        "attack": {"steps": config.steps, "step_size": config.step_size,
                   "restarts": config.restarts, "random_start": config.random_start},
        "eps": list(eps_values),
        "table": [{"eps": f["eps"], "fgsm": f["accuracy"], "pgd": p["accuracy"]}
                  for f, p in zip(curves["fgsm"], curves["pgd"])],
        "fgsm_at_0_3": curves["fgsm"][-1]["accuracy"],
        "pgd_at_0_1": next(r["accuracy"] for r in curves["pgd"] if r["eps"] == 0.1),
        "pgd_at_0_3": curves["pgd"][-1]["accuracy"],
        "grid_eps": GRID_EPS,
        "steps_eps": STEPS_EPS,
        "steps_curve": steps,
        "sanity_eps": list(SANITY_EPS),
        "sanity": {name: checks for name, checks in sanity.items()},
        "sanity_ok": {name: all(c["ok"] for c in checks) for name, checks in sanity.items()},
        "subset_curves": {"undefended": curves_subset, "masked": masked_curves},
        "mask_factor": MASK_FACTOR,
        "masked_zero_gradient_fraction": zero_gradient,
        "landscape_flip_t": float(flip.min()) if len(flip) else None,
        "landscape_label": int(y[0]),
    })


if __name__ == "__main__":
    sys.exit(main())
