"""Lesson 10: PGD, APGD, Square, and how to evaluate robustness without fooling yourself.

On the shipped undefended default network and real MNIST test digits: FGSM and PGD-40
(step 0.01, one random start) at eps 0.05 ... 0.3; PGD's accuracy against its number of
steps; why a fixed step size fails and how APGD picks its own (the loss per iteration of
PGD with a small and a large step, and of APGD with its step-size halvings); AutoAttack's
ensemble (APGD-CE, APGD-T, Square) stage by stage; the L2 threat model (PGD-L2 and
APGD-L2 against the L2 radius, and L2 beside L-infinity perturbations of the same
digits); a fake "defence", the same network with its logits multiplied by 1,000, whose
gradient is zero almost everywhere: attacks on the cross-entropy report robustness it
does not have, the gradient-free Square attack and the scale-free DLR loss do not; and
``scratchcnn.robustness.sanity_checks`` on both networks at eps 0.3.

    python lessons/10_pgd_evaluation.py           # 7 min on 2 cores (410 s, 2026-12-01,
                                                  # 38 s of it training runs/default-s1 once)
    python lessons/10_pgd_evaluation.py --quick   # under a minute: tiny networks, few digits
"""

import dataclasses
import sys
import time
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson, trained_checkpoint, undefended_network

from scratchcnn import apgd, attacks, models, robustness, square, verify
from scratchcnn.checkpoint import load_for_model
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
STEPS_EPS = 0.1  # the eps of the accuracy-against-steps curve
GRID_EPS = 0.1
APGD_EPS = 0.1  # where PGD, APGD and the ensemble are compared: they differ there
FIXED_STEPS = (0.001, 0.1)  # PGD's small and large fixed step sizes at APGD_EPS
MASKED_EPS = 0.3  # the masked network under every attack, and the sanity checks
L2_EPS = (0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
L2_PICTURE_EPS = 1.5  # the L2 radius of the perturbation picture (beside L-inf APGD_EPS)
MASK_FACTOR = 1000.0
IBP_EPS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05)  # where interval bounds prove anything
CERTIFIED_EPS = 0.3  # the box a network is trained for by interval bound training
CERTIFIED_EPOCHS = 5


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


# --------------------------------------------------------------------------- APGD


def pgd_history(net, x, y, eps: float, step_size: float, steps: int, seed: int) -> list:
    """L-inf PGD with a fixed step on x (N, H, W, 1), recording what ``apgd``'s history=
    records: per iteration a dict of (N,) arrays "loss" (cross-entropy), "step_size",
    "done". As in APGD, a digit stops at its first misclassified point, so the two
    averages are taken on equal terms."""
    rng = np.random.default_rng(seed)
    x_adv = np.clip(x + rng.uniform(-eps, eps, x.shape), 0, 1).astype(np.float32)
    done, history = np.zeros(len(y), bool), []
    for _ in range(steps + 1):
        loss, g = attacks.loss_and_gradient(*net, x_adv, y)
        done |= attacks.predict(*net, x_adv) != y
        history.append({"loss": loss, "step_size": np.full(len(y), step_size),
                        "done": done.copy()})
        moved = np.clip(np.clip(x_adv + step_size * np.sign(g), x - eps, x + eps), 0, 1)
        x_adv = np.where(done[:, None, None, None], x_adv, moved.astype(np.float32))
    return history


def summarize(history: list, steps: int) -> dict:
    """Per-iteration averages of a history (APGD's, or ``pgd_history``'s): mean loss, the
    share of digits not yet fooled, and the mean step size of those. APGD stops when every
    digit is fooled; its last entry then stands for the remaining iterations."""
    history = history + history[-1:] * (steps + 1 - len(history))
    loss = [float(np.mean(h["loss"])) for h in history]
    accuracy = [float(np.mean(~h["done"])) for h in history]
    step = [float(np.mean(h["step_size"][~h["done"]])) if (~h["done"]).any() else None
            for h in history]
    return {"loss": loss, "accuracy": accuracy, "step_size": step}


def apgd_vs_fixed_steps(net, x, y, steps: int, seed: int):
    """PGD with each of FIXED_STEPS and APGD-CE at APGD_EPS, ``steps`` iterations each.
    Returns ({name: summary}, APGD's adversarial images)."""
    traces = {}
    for step_size in FIXED_STEPS:
        history = pgd_history(net, x, y, APGD_EPS, step_size, steps, seed)
        traces[f"PGD, step {step_size:g}"] = summarize(history, steps)
    history = []
    adv = apgd.apgd(*net, x, y, APGD_EPS, steps=steps, rng=seed, history=history)
    traces["APGD-CE"] = summarize(history, steps)
    for name, trace in traces.items():
        log(f"  {name}: accuracy {trace['accuracy'][-1]:.1%}, mean loss {trace['loss'][-1]:.3f}")
    return traces, adv


def ensemble_stages(net, x, y, eps: float, config: robustness.AttackConfig) -> dict:
    """AutoAttack's ensemble on x: the accuracy after each member, each run on the digits
    the ones before it left standing (``robustness.autoattack_breakdown``)."""
    _, fooled_by = robustness.autoattack_breakdown(*net, x, y, eps, config)
    stages, robust = {}, np.isin(fooled_by, ["", *robustness.AUTOATTACK])
    for name in robustness.AUTOATTACK:
        robust &= fooled_by != name
        stages[name] = float(robust.mean())
    return stages


# --------------------------------------------------------------------------- the masked network


def every_attack(net, x, y, eps: float, steps: int, queries: int, seed: int) -> dict:
    """Accuracy of x under each attack alone, at eps: PGD-40 and APGD on the cross-entropy,
    APGD-T on the targeted DLR loss, Square (no gradient; with its queries per digit)."""
    pgd = robustness.AttackConfig("pgd", steps=40, step_size=0.01, seed=seed)
    adversarial = {
        "pgd_ce": robustness.adversarial_examples(*net, x, y, eps, pgd),
        "apgd_ce": apgd.apgd(*net, x, y, eps, steps=steps, rng=seed),
        "apgd_t": apgd.apgd_targeted(*net, x, y, eps, steps=steps, rng=seed),
    }
    adversarial["square"], used = square.square_attack(*net, x, y, eps, queries=queries, rng=seed)
    row = {name: robustness.accuracy(*net, adv, y) for name, adv in adversarial.items()}
    fooled = attacks.predict(*net, adversarial["square"]) != y
    row["square_median_queries"] = float(np.median(used[fooled])) if fooled.any() else None
    return row


# --------------------------------------------------------------------------- L2


def l2_curves(net, x, y, eps_values, steps: int, seed: int) -> dict:
    """Accuracy against the L2 radius under PGD-L2 (40 steps of 2.5 eps / 40) and APGD-L2;
    also APGD-L2's examples at L2_PICTURE_EPS."""
    rows, picture = [], None
    for eps in eps_values:
        if eps == 0:
            clean = robustness.accuracy(*net, x, y)
            rows.append({"eps": eps, "pgd": clean, "apgd": clean})
            continue
        pgd = attacks.pgd(*net, x, y, eps, steps=40, step_size=2.5 * eps / 40, norm="l2",
                          rng=seed)
        adv = apgd.apgd(*net, x, y, eps, norm="l2", steps=steps, rng=seed)
        rows.append({"eps": eps, "pgd": robustness.accuracy(*net, pgd, y),
                     "apgd": robustness.accuracy(*net, adv, y)})
        log(f"  L2 eps {eps:g}: PGD-L2 {rows[-1]['pgd']:.1%}, APGD-L2 {rows[-1]['apgd']:.1%}")
        if eps == L2_PICTURE_EPS:
            picture = adv
    return {"rows": rows, "picture": picture}


def norms(x, adv) -> dict:
    """Mean L2 norm and mean largest pixel change of the perturbations adv - x."""
    delta = (adv - x).reshape(len(x), -1).astype(np.float64)
    return {"l2": float(np.linalg.norm(delta, axis=1).mean()),
            "linf": float(np.abs(delta).max(axis=1).mean())}


# --------------------------------------------------------------------------- figures


def bounds_on_robust_accuracy(networks: dict, x, y, eps_values, config) -> dict:
    """{name: [{"eps", "verified", "attacked"}]}: IBP's verified accuracy (a lower bound on
    the robust accuracy) and PGD's (an upper bound) at each eps, PGD's step a quarter of
    eps (the curves' fixed step would be larger than these budgets)."""
    out = {}
    for name, net in networks.items():
        out[name] = []
        for eps in eps_values:
            pgd = dataclasses.replace(config, step_size=max(eps / 4, 1e-4))
            adv = robustness.adversarial_examples(*net, x, y, eps, pgd)
            out[name].append({"eps": eps, "verified": verify.verified_accuracy(*net, x, y, eps),
                              "attacked": robustness.accuracy(*net, adv, y)})
    return out


def certified_network(eps: float, epochs: int, limit: int | None, seed: int):
    """(model, params, state): flax_cnn trained on the interval bound loss at eps, on the
    first ``limit`` training images (all when None)."""
    model = models.build("flax_cnn")
    images, labels = load_mnist("train")
    x, y = to_unit_nhwc(images[:limit]), labels[:limit].astype(np.int64)
    params = verify.train_for_bounds(model, x, y, eps=eps, epochs=epochs, seed=seed, log=log)
    return model, params, {}


def bounds_figure(bounds: dict, path, title: str):
    """Per network: PGD's accuracy (solid, upper bound), IBP's (dashed, lower bound) and
    the band between them, where the true robust accuracy lies."""
    figure, axes = plt.subplots(figsize=(6, 3.8))
    for (name, rows), color in zip(bounds.items(), plt.rcParams["axes.prop_cycle"]):
        eps = [r["eps"] for r in rows]
        upper, lower = [100 * r["attacked"] for r in rows], [100 * r["verified"] for r in rows]
        axes.plot(eps, upper, "o-", color=color["color"], label=f"{name}: PGD (upper bound)")
        axes.plot(eps, lower, "s--", color=color["color"], label=f"{name}: IBP (lower bound)")
        axes.fill_between(eps, lower, upper, color=color["color"], alpha=0.12)
    axes.set(xlabel="eps (L-infinity, pixels in [0, 1])", ylabel="test accuracy (%)",
             ylim=(0, 100), title=title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center right")
    return save_figure(figure, path)


def steps_figure(rows, path):
    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.plot([r["steps"] for r in rows], [100 * r["accuracy"] for r in rows], "o-")
    axes.set_xscale("log")
    axes.set(xlabel="PGD steps (step size 2.5 eps / steps)", ylabel="test accuracy (%)",
             title=f"PGD at eps {STEPS_EPS:g}: more steps, until it levels off")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def apgd_figure(traces, marks, path):
    """Mean loss, accuracy and step size per iteration, one line per attack; dotted: the
    APGD checkpoints."""
    figure, panels = plt.subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for name, trace in traces.items():
        its = np.arange(len(trace["loss"]))
        panels[0].plot(its, trace["loss"], label=name)
        panels[1].plot(its, [100 * a for a in trace["accuracy"]], label=name)
        steps = [np.nan if s is None else s for s in trace["step_size"]]
        panels[2].plot(its, steps, label=name)
    for axes, ylabel in zip(panels, ("mean cross-entropy", "not yet fooled (%)",
                                     "step size (mean over digits not yet fooled)")):
        for mark in marks:
            axes.axvline(mark, color="gray", lw=0.6, ls=":")
        axes.set(xlabel="iteration", ylabel=ylabel)
        axes.grid(alpha=0.3)
    panels[2].set_yscale("log")
    panels[0].legend(fontsize=8)
    figure.suptitle(f"eps {APGD_EPS:g}: fixed-step PGD against APGD (dotted: APGD's checkpoints)")
    save_figure(figure, path)


def l2_figure(rows, path, title):
    figure, axes = plt.subplots(figsize=(5, 3.5))
    for key, label in (("pgd", "PGD-L2 (40 steps)"), ("apgd", "APGD-L2")):
        axes.plot([r["eps"] for r in rows], [100 * r[key] for r in rows], "o-", label=label)
    axes.set(xlabel="eps (L2 norm of the perturbation)", ylabel="test accuracy (%)",
             ylim=(0, 100), title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    save_figure(figure, path)


def threat_models_figure(x, linf, l2, predicted, path):
    """Per digit (a row): clean, L-inf perturbation and image, L2 perturbation and image.
    Perturbations share one colour scale, so their sizes compare."""
    scale = max(float(np.abs(linf - x).max()), float(np.abs(l2 - x).max()))
    figure, axes = plt.subplots(len(x), 5, figsize=(7.5, 1.6 * len(x)), squeeze=False)
    for i in range(len(x)):
        d_inf, d_2 = (linf[i] - x[i])[..., 0], (l2[i] - x[i])[..., 0]
        panels = [
            (x[i, ..., 0], "gray", (0, 1), f"clean, pred {predicted['clean'][i]}"),
            (d_inf, "seismic", (-scale, scale),
             f"L-inf: max {np.abs(d_inf).max():.2f}, L2 {np.linalg.norm(d_inf):.2f}"),
            (linf[i, ..., 0], "gray", (0, 1), f"pred {predicted['linf'][i]}"),
            (d_2, "seismic", (-scale, scale),
             f"L2: max {np.abs(d_2).max():.2f}, L2 {np.linalg.norm(d_2):.2f}"),
            (l2[i, ..., 0], "gray", (0, 1), f"pred {predicted['l2'][i]}"),
        ]
        for axes_, (image, cmap, (lo, hi), label) in zip(axes[i], panels):
            axes_.imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            axes_.set_title(label, fontsize=7)
            axes_.axis("off")
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
    # The full run must fit in minutes on 2 busy cores: 500 digits for the FGSM/PGD curves,
    # the first 100 of them for everything else (APGD-T alone costs 9 runs per digit), and
    # the first 50 for the sanity checks' 2x stronger ensemble and eps = 0.5.
    n_test, n_subset = (100, 30) if quick else (500, 100)
    steps_list = (1, 2, 5) if quick else (1, 2, 5, 10, 20, 40, 100)
    eps_values = (0.0, 0.1, 0.3) if quick else EPS
    l2_eps = (0.0, L2_PICTURE_EPS, 3.0) if quick else L2_EPS
    apgd_steps, queries = (10, 20) if quick else (100, 1000)
    config = robustness.AttackConfig("pgd", steps=5 if quick else 40,
                                     step_size=0.03 if quick else 0.01, seed=seed)
    evaluation = robustness.AttackConfig("autoattack", steps=apgd_steps, queries=queries,
                                         seed=seed)

    images, labels = load_mnist("test")
    x, y = to_unit_nhwc(images[:n_test]), labels[:n_test].astype(np.int64)
    net = undefended_network(seed, quick)
    other = undefended_network(seed + 1, quick)  # independently trained: the transfer source
    clean = robustness.accuracy(*net, x, y)
    log(f"clean accuracy on {n_test:,} test images: {clean:.2%}")

    # 1. FGSM and PGD.
    curves, curves_subset, grid = attack_curves(net, x, y, config, eps_values, n_subset)
    accuracy_vs_eps(curves, lesson.path("fgsm_vs_pgd.png"),
                    title=f"Undefended default network, {n_test:,} test images")
    adversarial_grid(x[:8], grid, attacks.predict(*net, x[:8]), attacks.predict(*net, grid),
                     lesson.path("pgd_examples.png"))

    # 2. How many steps does PGD need?
    xs, ys = x[:n_subset], y[:n_subset]
    steps = steps_curve(net, xs, ys, steps_list, seed)
    steps_figure(steps, lesson.path("pgd_steps.png"))

    # 3. APGD: a fixed step size against one that adapts; then the whole ensemble.
    started = time.perf_counter()
    traces, apgd_adv = apgd_vs_fixed_steps(net, xs, ys, apgd_steps, seed)
    apgd_figure(traces, apgd.checkpoints(apgd_steps)[1:], lesson.path("apgd_steps.png"))
    stages = ensemble_stages(net, xs, ys, APGD_EPS, evaluation)
    log(f"  ensemble at eps {APGD_EPS}: {stages} ({time.perf_counter() - started:.0f} s)")

    # 4. The L2 threat model.
    started = time.perf_counter()
    l2 = l2_curves(net, xs, ys, l2_eps, apgd_steps, seed)
    l2_figure(l2["rows"], lesson.path("l2_curves.png"),
              f"Undefended default network, L2 threat model ({n_subset} digits)")
    l2_adv = l2["picture"]
    predicted = {"clean": attacks.predict(*net, xs), "linf": attacks.predict(*net, apgd_adv),
                 "l2": attacks.predict(*net, l2_adv)}
    both = np.flatnonzero((predicted["clean"] == ys) & (predicted["linf"] != ys)
                          & (predicted["l2"] != ys))[:4]
    shown = both if len(both) else np.arange(2)
    threat_models_figure(xs[shown], apgd_adv[shown], l2_adv[shown],
                         {k: v[shown] for k, v in predicted.items()},
                         lesson.path("l2_vs_linf.png"))
    fooled_linf, fooled_l2 = predicted["linf"] != ys, predicted["l2"] != ys
    perturbation_norms = {
        "linf": norms(xs[fooled_linf], apgd_adv[fooled_linf]) if fooled_linf.any() else None,
        "l2": norms(xs[fooled_l2], l2_adv[fooled_l2]) if fooled_l2.any() else None,
    }
    log(f"  L2 section ({time.perf_counter() - started:.0f} s), norms {perturbation_norms}")

    # 5. The masked network: gradient attacks, Square, and what its gradient looks like.
    started = time.perf_counter()
    fake = (masked(net[0]), net[1], net[2])
    masked_curves, _, _ = attack_curves(fake, xs, ys, config, eps_values, n_subset)
    accuracy_vs_eps_by_network(
        {"undefended": curves_subset, "masked (logits x 1000)": masked_curves},
        lesson.path("masking_curves.png"),
        title=f"One network, with and without a masked gradient ({n_subset:,} images)",
    )
    attacks_at_masked_eps = {
        name: every_attack(candidate, xs, ys, MASKED_EPS, apgd_steps, queries, seed)
        for name, candidate in (("undefended", net), ("masked", fake))
    }
    log(f"  every attack at eps {MASKED_EPS}: {attacks_at_masked_eps} "
        f"({time.perf_counter() - started:.0f} s)")
    _, g_fake = attacks.loss_and_gradient(*fake, xs, ys)
    zero_gradient = float(np.mean(np.all(g_fake.reshape(len(ys), -1) == 0, axis=1)))
    _, g = attacks.loss_and_gradient(*net, xs, ys)
    ts = np.linspace(0, 0.3, 61)
    landscape = {}
    for name, candidate in (("undefended", net), ("masked (logits x 1000)", fake)):
        losses, predicted_t = loss_along(candidate, x[:1], y[0], np.sign(g[:1]), ts)
        landscape[name] = (losses, predicted_t == y[0])
    landscape_figure(ts, landscape, lesson.path("masking_landscape.png"))
    flip = ts[~landscape["undefended"][1]]

    # 6. The sanity checks, around the ensemble, on the network and on its masked copy.
    sanity, sanity_details = {}, {}
    for name, candidate in (("undefended", net), ("masked", fake)):
        started = time.perf_counter()
        report, details = robustness.sanity_checks(*candidate, xs, ys, MASKED_EPS, evaluation,
                                                   transfer_from=other, subset=n_subset // 2)
        log(f"sanity checks, {name} ({time.perf_counter() - started:.0f} s):\n{report.format()}")
        sanity[name], sanity_details[name] = report.checks, details

    # 7. Lower bounds: interval bound propagation, undefended against defended.
    started = time.perf_counter()
    defended_model, defended = load_for_model(trained_checkpoint("defended", 0))
    networks = {"undefended": net, "defended": (defended_model, defended.params, defended.state)}
    ibp_eps = IBP_EPS[::2] if quick else IBP_EPS
    bounds = bounds_on_robust_accuracy(networks, x, y, ibp_eps, config)
    bounds_figure(bounds, lesson.path("ibp_bounds.png"),
                  f"What attacks and interval bounds say ({n_test:,} test images)")
    log(f"  interval bounds ({time.perf_counter() - started:.0f} s): {bounds}")

    # 8. A network trained for the bound (flax_cnn: no batch norm, no dropout).
    started = time.perf_counter()
    certified = certified_network(CERTIFIED_EPS, 1 if quick else CERTIFIED_EPOCHS,
                                  512 if quick else None, seed)
    training_seconds = time.perf_counter() - started
    networks = {"defended (PGD training)": networks["defended"],
                "trained for the bound": certified}
    trained_bounds = bounds_on_robust_accuracy(networks, x, y, eps_values, config)
    bounds_figure(trained_bounds, lesson.path("ibp_trained.png"),
                  f"Trained for the bound, eps {CERTIFIED_EPS} ({n_test:,} test images)")
    log(f"  interval bound training ({training_seconds:.0f} s) and its bounds "
        f"({time.perf_counter() - started - training_seconds:.0f} s): {trained_bounds}")

    lesson.finish({
        "n_test": n_test,
        "n_subset": n_subset,
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
        "apgd": {
            "eps": APGD_EPS,
            "steps": apgd_steps,
            "checkpoints": apgd.checkpoints(apgd_steps),
            "fixed_steps": list(FIXED_STEPS),
            "traces": traces,
            "final": {name: trace["accuracy"][-1] for name, trace in traces.items()},
            "pgd40": next(r["accuracy"] for r in curves_subset["pgd"] if r["eps"] == APGD_EPS),
            "ensemble": stages,
            "queries": queries,
        },
        "l2": {"eps": list(l2_eps), "rows": l2["rows"], "picture_eps": L2_PICTURE_EPS,
               "picture_linf_eps": APGD_EPS, "norms": perturbation_norms},
        "masked_eps": MASKED_EPS,
        "every_attack": attacks_at_masked_eps,
        "sanity_eps": MASKED_EPS,
        "sanity": sanity,
        "sanity_details": sanity_details,
        "sanity_ok": {name: all(c["ok"] for c in checks) for name, checks in sanity.items()},
        "subset_curves": {"undefended": curves_subset, "masked": masked_curves},
        "mask_factor": MASK_FACTOR,
        "masked_zero_gradient_fraction": zero_gradient,
        "landscape_flip_t": float(flip.min()) if len(flip) else None,
        "landscape_label": int(y[0]),
        "ibp": {"eps": list(ibp_eps), "bounds": bounds},
        "ibp_trained": {"model": "flax_cnn", "eps": CERTIFIED_EPS,
                        "epochs": 1 if quick else CERTIFIED_EPOCHS,
                        "train_images": 512 if quick else 60000,
                        "seconds": round(training_seconds, 1), "bounds": trained_bounds},
    })


if __name__ == "__main__":
    sys.exit(main())
