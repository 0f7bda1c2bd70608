"""Lesson 11: adversarial training, and the robustness/accuracy trade-off.

The undefended default network (the shipped one; runs/default-s0 with --retrain) against
the same architecture trained on PGD-7 adversarial examples at eps 0.3 (the shipped
`defended` network when this copy of scratchcnn has it, else runs/robust-ft2-s0/best.npz,
trained first when missing; --checkpoint picks another): clean accuracy and worst-case
accuracy under PGD-50 (step 0.01) with 10 random restarts at eps 0.3 on the test set, FGSM
and PGD-40 accuracy-against-eps curves of both networks on one figure, and the sanity
checks against gradient masking on the defended network, with the undefended network as
the source of the transfer attack.

    python lessons/11_adversarial_training.py            # about an hour on 2 cores
    python lessons/11_adversarial_training.py --quick    # seconds: tiny networks
    python lessons/11_adversarial_training.py --limit 500 --out /tmp/l11   # a partial run
    python lessons/11_adversarial_training.py --replot-restarts  # restarts.png from results.json

With --retrain (or when scratchcnn does not ship it) the defended network is trained, in
three runs (about 46, 34 and 34 minutes on 2 cores): 10 epochs of PGD-7 training, then
twice 8 more epochs from the previous run's weights at a third of the peak learning rate:

    scratchcnn train --adversarial pgd --adversarial-steps 7 --adversarial-eps 0.3 \\
        --epochs 10 --seed 0 --output runs/robust-s0
    scratchcnn train --adversarial pgd --adversarial-steps 7 --adversarial-eps 0.3 \\
        --epochs 8 --lr 0.001 --init runs/robust-s0/best.npz --seed 0 \\
        --output runs/robust-ft-s0
    scratchcnn train --adversarial pgd --adversarial-steps 7 --adversarial-eps 0.3 \\
        --epochs 8 --lr 0.001 --init runs/robust-ft-s0/best.npz --seed 0 \\
        --output runs/robust-ft2-s0
"""

import argparse
import dataclasses
import json
import sys
import time
from contextlib import chdir as working_directory
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _lesson import NETWORKS, ROOT, TRAINING, Lesson, undefended_network
from matplotlib.ticker import MaxNLocator

from scratchcnn import attacks, models, pretrained, robustness
from scratchcnn.checkpoint import load_for_model
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import to_unit_nhwc
from scratchcnn.pretrained.ship import run_history
from scratchcnn.train import RECIPES, TrainConfig, train
from scratchcnn.viz import accuracy_vs_eps_by_network, adversarial_grid, save_figure

EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
SANITY_EPS = (0.0, 0.1, 0.2, 0.3)
WORST_EPS = 0.3
DEFENDED = "runs/robust-ft2-s0/best.npz"
# The defended network's runs (the module docstring has them as commands): PGD-7 training
# from scratch, then twice more of it from the previous run's weights with a smaller step.
ROBUST_RECIPE = dataclasses.replace(RECIPES["default"], adversarial="pgd", adversarial_steps=7,
                                    adversarial_eps=0.3, epochs=10, seed=0)
FINE_TUNING = dataclasses.replace(ROBUST_RECIPE, epochs=8, learning_rate=1e-3)
ROBUST_RUNS = {
    "runs/robust-s0": ROBUST_RECIPE,
    "runs/robust-ft-s0": dataclasses.replace(FINE_TUNING, init_from="runs/robust-s0/best.npz"),
    "runs/robust-ft2-s0": dataclasses.replace(FINE_TUNING, init_from="runs/robust-ft-s0/best.npz"),
}


def log(text: str) -> None:
    print(text, flush=True)


def own_options() -> argparse.Namespace:
    """This lesson's own flags; the rest (--quick, --out, --seed) go to Lesson."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the defended network (default: the shipped one)")
    parser.add_argument("--limit", type=int, default=None,
                        help="attack the first N test images only (a partial run)")
    parser.add_argument("--replot-restarts", action="store_true",
                        help="only redraw restarts.png from results.json (no attacks)")
    if {"-h", "--help"} & set(sys.argv[1:]):
        parser.print_help()  # these two flags; Lesson's parser then prints its own
        print()
    options, sys.argv[1:] = parser.parse_known_args()
    return options


def defended_checkpoint(option: Path | None) -> Path:
    """--checkpoint if given; else the shipped defended network; else (or with --retrain)
    runs/robust-ft2-s0's, trained first when missing (all its runs, from the repository
    root)."""
    if option is not None:
        return option
    if "defended" in pretrained.available() and not TRAINING["retrain"]:
        NETWORKS["shipped"].add("defended")
        return pretrained.path("defended")
    for folder, config in ROBUST_RUNS.items():
        NETWORKS["trained"].add(Path(folder).name)
        if not (ROOT / folder / "history.json").is_file():
            log(f"training {folder} (PGD-{config.adversarial_steps} adversarial training)")
            resume = (ROOT / folder / "last.npz").is_file()
            started = time.perf_counter()
            with working_directory(ROOT):  # init_from is relative to the repository
                train(config, output_dir=Path(folder), resume=resume)
            TRAINING["seconds"] += time.perf_counter() - started
    return ROOT / DEFENDED


def defended_network(path: Path):
    """(model, params, state), info: the checkpoint at ``path`` and its training history,
    the epochs of the runs it was fine-tuned from first (a shipped network carries it)."""
    model, ckpt = load_for_model(path)
    history = ckpt.info.get("history") or run_history(path.parent, ROOT)
    return (model, ckpt.params, ckpt.state), {**ckpt.info, "history": history}


def quick_defended_network(seed: int):
    """Quick run: the undefended quick network's training (undefended_network), on PGD-2
    examples; and its history."""
    config = TrainConfig(model="default", epochs=1, train_limit=512, batch_size=64,
                         val_fraction=0.0, test_limit=100, seed=seed, adversarial="pgd",
                         adversarial_steps=2)
    result = train(config, progress=False, log=lambda s: None)
    net = (models.build("default"), result.params, result.state)
    return net, {"config": result.config.to_json(), "history": result.history}


# --8<-- [start:worst_case]
def worst_case_accuracy(net, x, y, eps, config: robustness.AttackConfig, restarts: int):
    """Accuracy under PGD from `restarts` random starts, after each restart.

    An image counts as robust only if the network gets it right and no restart fools it
    (the worst case over restarts, as ``attacks.pgd(restarts=...)`` keeps it). So each
    restart needs to attack only the images still standing.
    """
    standing = np.flatnonzero(attacks.predict(*net, x) == y)
    after = []
    for restart in range(restarts):
        if len(standing):
            cfg = dataclasses.replace(config, seed=1000 * config.seed + restart)
            adv = robustness.adversarial_examples(*net, x[standing], y[standing], eps, cfg)
            standing = standing[attacks.predict(*net, adv) == y[standing]]
        after.append(len(standing) / len(y))
    return after


# --8<-- [end:worst_case]


def curves_of(net, x, y, config, eps_values) -> dict:
    out = {}
    for attack in ("fgsm", "pgd"):
        started = time.perf_counter()
        cfg = dataclasses.replace(config, attack=attack)
        out[attack] = robustness.accuracy_curve(*net, x, y, eps_values, cfg)
        text = ", ".join(f"{r['eps']:g}: {r['accuracy']:.1%}" for r in out[attack])
        log(f"  {attack}: {text}  ({time.perf_counter() - started:.0f} s)")
    return out


# --------------------------------------------------------------------------- figures


def restarts_figure(worst, restarts, path):
    """Accuracy after each restart, one panel per network, each axis fitted to its own
    values: the defended network's fall of a point or two would vanish on a 0-100 axis."""
    figure, panels = plt.subplots(1, len(worst), figsize=(3.6 * len(worst), 3.2),
                                  squeeze=False, layout="constrained")
    for axes, (name, after), color in zip(panels[0], worst.items(), ("tab:blue", "tab:orange")):
        percent = [100 * a for a in after]
        axes.plot(range(1, restarts + 1), percent, "o-", color=color)
        for restart in (1, restarts):
            value = percent[restart - 1]
            axes.annotate(f"{value:.1f}%", (restart, value), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize=8)
        low, high = min(percent), max(percent)
        pad = max(0.25 * (high - low), 0.5)  # a flat line still gets a readable axis
        axes.set(xlabel="random restarts of PGD", ylabel="accuracy (%)", title=name,
                 ylim=(max(low - pad, 0), min(high + pad, 100)))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    figure.suptitle(f"Worst case over restarts, eps {WORST_EPS:g} (each axis fitted to its data)",
                    fontsize=10)
    save_figure(figure, path)


def replot_restarts(lesson) -> None:
    """--replot-restarts: redraw restarts.png from the results.json a full run wrote, with
    no attack run again (the figure shows exactly the page's numbers)."""
    results = json.loads(lesson.path("results.json").read_text())
    restarts_figure(results["worst_after_restart"], results["worst_attack"]["restarts"],
                    lesson.path("restarts.png"))


def training_figure(history, path):
    figure, axes = plt.subplots(figsize=(5, 3.2))
    epochs = [r["epoch"] for r in history]
    axes.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-",
              label="training batches (PGD examples)")
    if all("val_accuracy" in r for r in history):
        axes.plot(epochs, [100 * r["val_accuracy"] for r in history], "s-",
                  label="validation images (clean)")
    for before, after in zip(history, history[1:], strict=False):
        if before.get("run") != after.get("run"):  # where fine-tuning took over
            axes.axvline(before["epoch"] + 0.5, color="gray", linestyle=":")
            axes.text(before["epoch"] + 0.8, 45, f"--init, {after['run']}", rotation=90,
                      fontsize=7, color="gray")
    axes.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100),
             title="Adversarial training, epoch by epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    save_figure(figure, path)


# --------------------------------------------------------------------------- the run


def main():
    options = own_options()
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    if options.replot_restarts:
        return replot_restarts(lesson)
    quick, seed = lesson.quick, lesson.seed
    if quick:
        n_test = n_curve = n_sanity = 100
        eps_values, sanity_eps, restarts = (0.0, 0.1, 0.3), (0.0, 0.3), 2
        curve_cfg = robustness.AttackConfig("pgd", steps=5, step_size=0.03, seed=seed)
        worst_cfg = robustness.AttackConfig("pgd", steps=5, step_size=0.03, seed=seed)
    else:
        n_test = options.limit or 10_000
        n_curve = n_sanity = min(n_test, 1_000)
        eps_values, sanity_eps, restarts = EPS, SANITY_EPS, 10
        curve_cfg = robustness.AttackConfig("pgd", steps=40, step_size=0.01, seed=seed)
        worst_cfg = robustness.AttackConfig("pgd", steps=50, step_size=0.01, seed=seed)

    images, labels = load_mnist("test")
    x, y = to_unit_nhwc(images[:n_test]), labels[:n_test].astype(np.int64)
    checkpoint = None
    if quick:
        robust, info = quick_defended_network(seed)
    else:
        checkpoint = defended_checkpoint(options.checkpoint)
        robust, info = defended_network(checkpoint)
    plain = undefended_network(seed, quick)
    networks = {"undefended": plain, "defended": robust}

    # 1. Clean accuracy, and the worst case at eps 0.3.
    clean, worst = {}, {}
    for name, net in networks.items():
        clean[name] = robustness.accuracy(*net, x, y)
        started = time.perf_counter()
        worst[name] = worst_case_accuracy(net, x, y, WORST_EPS, worst_cfg, restarts)
        seconds = time.perf_counter() - started
        log(f"{name}: clean {clean[name]:.2%}, PGD-{worst_cfg.steps} x {restarts} at eps "
            f"{WORST_EPS}: {worst[name][-1]:.2%}  ({seconds:.0f} s)")
    restarts_figure(worst, restarts, lesson.path("restarts.png"))

    # 2. Accuracy against eps, both networks, on the first n_curve test images.
    curves = {}
    for name, net in networks.items():
        log(f"curves, {name}, {n_curve:,} images")
        curves[name] = curves_of(net, x[:n_curve], y[:n_curve], curve_cfg, eps_values)
    accuracy_vs_eps_by_network(
        {"undefended": curves["undefended"], "adversarially trained": curves["defended"]},
        lesson.path("accuracy_vs_eps.png"),
        title=f"Undefended and adversarially trained, {n_curve:,} test images",
    )

    # 3. What PGD does to the defended network's inputs.
    pgd_cfg = dataclasses.replace(curve_cfg, attack="pgd")
    adv = robustness.adversarial_examples(*robust, x[:8], y[:8], WORST_EPS, pgd_cfg)
    adversarial_grid(x[:8], adv, attacks.predict(*robust, x[:8]), attacks.predict(*robust, adv),
                     lesson.path("robust_examples.png"))

    # 4. The sanity checks on the defended network; the transfer attack comes from the
    #    undefended one.
    started = time.perf_counter()
    report, _ = robustness.sanity_checks(*robust, x[:n_sanity], y[:n_sanity], sanity_eps,
                                         curve_cfg, transfer_from=plain)
    log(f"sanity checks ({time.perf_counter() - started:.0f} s):\n{report.format()}")

    # 5. The training run itself.
    training_figure(info["history"], lesson.path("training.png"))

    lesson.finish({
        "n_test": n_test,
        "n_curve": n_curve,
        "n_sanity": n_sanity,
        "partial": options.limit is not None,
        "checkpoint": None if quick else str(checkpoint.relative_to(ROOT))
        if checkpoint.is_relative_to(ROOT) else str(checkpoint),
        "training": {"config": info["config"], "history": info["history"],
                     "epochs": len(info["history"]),
                     "hours": round(sum(r["seconds"] for r in info["history"]) / 3600, 2)
                     if all("seconds" in r for r in info["history"]) else None},
        "clean": clean,
        "worst_eps": WORST_EPS,
        "worst_attack": {"steps": worst_cfg.steps, "step_size": worst_cfg.step_size,
                         "restarts": restarts},
        "worst": {name: after[-1] for name, after in worst.items()},
        "worst_after_restart": worst,
        "worst_first_restart": {name: after[0] for name, after in worst.items()},
        "curve_attack": {"steps": curve_cfg.steps, "step_size": curve_cfg.step_size},
        "eps": list(eps_values),
        "curves": curves,
        "table": [{"eps": e, **{f"{name}_{attack}": curves[name][attack][i]["accuracy"]
                                for name in ("undefended", "defended")
                                for attack in ("fgsm", "pgd")}}
                  for i, e in enumerate(eps_values)],
        "sanity_eps": list(sanity_eps),
        "sanity": report.checks,
        "sanity_ok": report.ok,
    })


if __name__ == "__main__":
    main()
