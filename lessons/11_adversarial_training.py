"""Lesson 11: adversarial training, PGD and TRADES, measured with the attack ensemble.

Three networks of the same `default` architecture: undefended (the shipped one;
runs/default-s0 with --retrain), trained on PGD-7 examples at eps 0.3 (the shipped
`defended` network when this copy of scratchcnn has it, else runs/robust-exact-ft-s0/best.npz,
trained first when missing; --checkpoint picks another), and trained with TRADES
(--trades CKPT, or the shipped `defended-trades` if it ever is; without either its rows are
skipped). For each: clean accuracy on the test set; robust accuracy at eps 0.3 under the
ensemble (APGD-CE 100 steps, APGD-T 9 targets x 100 steps, Square 5,000 queries) on every
test image, with who fooled what; the worst case under PGD-50 (step 0.01) with 10 random
restarts; and the sanity checks around the ensemble on the first 1,000 test images, with the
undefended network as the source of the transfer attack. Then our numbers beside published
MNIST eps-0.3 results (PUBLISHED) on one trade-off figure, FGSM and PGD-40 curves against
eps, and the PGD network's training curve.

    python lessons/11_adversarial_training.py --checkpoint CKPT --trades CKPT   # see below
    python lessons/11_adversarial_training.py --quick    # about a minute: tiny networks
    python lessons/11_adversarial_training.py --limit 500 --out /tmp/l11   # a partial run
    python lessons/11_adversarial_training.py --replot   # figures from results.json

The ensemble costs minutes per 50 digits of a defended network on a 2-core CPU, so the
full run takes a day or more. It is resumable: the ensemble evaluates each network batch by
batch into an attack record, runs/attack-records/<network>-<sha>-eps0.3-n10000.json (the
SHA-256 of its weights in the name: other weights get a new record), saved after each
batch and continued where it stopped when the script is run again; the sanity checks of
each network are kept in runs/attack-records/sanity-<network>-<sha>-n1000.json once done,
and the PGD-50 restarts in worst-<network>-<sha>-n10000.json, each restart as it finishes.
Stop it at any time and run the same command again.

With --retrain (or when scratchcnn does not ship it) the PGD network is trained as the
shipped one was, in two runs (about 46 and 34 minutes on 2 cores that it has to itself; the
second took 127 s on an H200 GPU): 10 epochs of PGD-7 training, then 8 more epochs from
those weights at a third of the peak learning rate:

    scratchcnn train --adversarial pgd --adversarial-steps 7 --adversarial-eps 0.3 \\
        --epochs 10 --seed 0 --output runs/robust-s0
    scratchcnn train --adversarial pgd --adversarial-steps 7 --adversarial-eps 0.3 \\
        --epochs 8 --lr 0.001 --init runs/robust-s0/best.npz --seed 0 \\
        --output runs/robust-exact-ft-s0

The trade-off sweep (--sweep, about 30 minutes of training on 2 cores and an hour of
attacks; resumable like the rest) starts from the shipped `defended` network and trains it
4 more epochs on PGD-7 examples, or with TRADES at beta 1, 3 and 6, everything else equal:

    scratchcnn train --adversarial trades --trades-beta 6 --adversarial-steps 7 \\
        --adversarial-eps 0.3 --epochs 4 --lr 0.001 --init defended --backend jax \\
        --seed 0 --output runs/tradeoff-trades6-s0      # (--adversarial pgd: tradeoff-pgd-s0)
    python lessons/11_adversarial_training.py --sweep

It measures each network on the first 1,000 test images (the ensemble, PGD-50 x 10) into
sweep.json and sweep.png. Any of them can be the main run's TRADES network:

    python lessons/11_adversarial_training.py --trades runs/tradeoff-trades6-s0/best.npz
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from _lesson import NETWORKS, ROOT, TRAINING, Lesson, train_run, trained_checkpoint
from matplotlib.ticker import MaxNLocator

from scratchcnn import apgd, attack_record, attacks, models, pretrained, robustness
from scratchcnn.checkpoint import load_for_model, save_checkpoint
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import to_unit_nhwc
from scratchcnn.files import write_json
from scratchcnn.pretrained.ship import run_history
from scratchcnn.train import RECIPES, TrainConfig, train
from scratchcnn.viz import accuracy_vs_eps_by_network, adversarial_grid, save_figure

EPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3)
EVAL_EPS = 0.3  # every robust accuracy of this lesson is at this eps
DEFENDED = "runs/robust-exact-ft-s0/best.npz"
TRADES_NAME = "defended-trades"  # the pretrained name a shipped TRADES network would have
RECORDS = ROOT / "runs" / "attack-records"
SANITY_IMAGES, SANITY_SUBSET = 1_000, 100  # the 2x stronger ensemble and eps 0.5: first 100
LABELS = {"undefended": "undefended", "defended": "PGD training", "trades": "TRADES"}
# The defended network's runs (the module docstring has them as commands): PGD-7 training
# from scratch, then more of it from those weights with a smaller step.
ROBUST_RECIPE = dataclasses.replace(RECIPES["default"], adversarial="pgd", adversarial_steps=7,
                                    adversarial_eps=0.3, epochs=10, seed=0)
FINE_TUNING = dataclasses.replace(ROBUST_RECIPE, epochs=8, learning_rate=1e-3)
ROBUST_RUNS = {
    "runs/robust-s0": ROBUST_RECIPE,
    "runs/robust-exact-ft-s0": dataclasses.replace(FINE_TUNING,
                                                   init_from="runs/robust-s0/best.npz"),
}

# Published MNIST results at eps 0.3 (L-infinity), as the AutoAttack README's MNIST table
# lists them: clean accuracy, the robust accuracy the paper reported, and AutoAttack's.
PUBLISHED = {
    "source": "AutoAttack README, MNIST - Linf table (Croce & Hein)",
    "url": "https://github.com/fra31/auto-attack/blob/"
    "aaba775aedf24c86099ca0340d62275878a101ae/README.md",
    "reported_attack": "the paper's own evaluation; the README warns it 'might be calculated "
    "on a subset of the test set or on different models trained with the same defense'",
    "autoattack_attack": "AutoAttack, standard version: APGD-CE, APGD-T (9 targets), FAB-T "
    "(9 targets), Square (5,000 queries), on the full test set",
    "rows": [
        {"paper": "Madry et al., 2018", "defence": "PGD training", "short": "PGD",
         "url": "https://arxiv.org/abs/1706.06083",
         "clean": 0.9853, "reported": 0.8962, "autoattack": 0.8850},
        {"paper": "Zhang et al., 2019b", "defence": "TRADES", "short": "TRADES",
         "url": "https://arxiv.org/abs/1901.08573",
         "clean": 0.9948, "reported": 0.9560, "autoattack": 0.9281},
        {"paper": "Wong et al., 2020", "defence": "FGSM from a random start",
         "short": "FGSM-RS",
         "url": "https://arxiv.org/abs/2001.03994",
         "clean": 0.9850, "reported": 0.8877, "autoattack": 0.8293},
    ],
}  # fmt: skip


def log(text: str) -> None:
    print(text, flush=True)


def duration(seconds: float) -> str:
    """4.2 -> "4 s", 537.7 -> "9 min", 52000 -> "14.4 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def own_options() -> argparse.Namespace:
    """This lesson's own flags; the rest (--quick, --out, --seed, --retrain) go to Lesson."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the PGD-trained network (default: the shipped `defended`)")
    parser.add_argument("--trades", type=Path, default=None,
                        help=f"the TRADES-trained network (default: a shipped `{TRADES_NAME}`)")
    parser.add_argument("--limit", type=int, default=None,
                        help="attack the first N test images only (a partial run)")
    parser.add_argument("--batch-size", type=int, default=100,
                        help="images per batch of the ensemble and its record (default 100; "
                        "a GPU wants thousands)")
    parser.add_argument("--replot", action="store_true",
                        help="only redraw restarts.png and tradeoff.png from results.json")
    parser.add_argument("--sweep", action="store_true",
                        help="only the trade-off sweep: PGD training and TRADES at each beta "
                        "from the same start, into sweep.json and sweep.png")
    if {"-h", "--help"} & set(sys.argv[1:]):
        parser.print_help()  # these flags; Lesson's parser then prints its own
        print()
    options, sys.argv[1:] = parser.parse_known_args()
    return options


# --------------------------------------------------------------------------- the networks


@dataclasses.dataclass
class Trained:
    """A network of this lesson: net = (model, params, state), the checkpoint file it was
    read from, and its training (config and epoch-by-epoch history)."""

    net: tuple
    checkpoint: Path
    training: dict


def defended_checkpoint(option: Path | None) -> Path:
    """--checkpoint if given; else the shipped defended network; else (or with --retrain)
    runs/robust-exact-ft-s0's, trained first when missing (all its runs, from the repository
    root)."""
    if option is not None:
        return option
    if "defended" in pretrained.available() and not TRAINING["retrain"]:
        NETWORKS["shipped"].add("defended")
        return pretrained.path("defended")
    for folder, config in ROBUST_RUNS.items():
        train_run(config, ROOT / folder, f"PGD-{config.adversarial_steps} adversarial training")
    return ROOT / DEFENDED


def trades_checkpoint(option: Path | None) -> Path | None:
    """--trades if given; else a shipped `defended-trades`; else None (no TRADES rows)."""
    if option is not None:
        return option
    if TRADES_NAME in pretrained.available():
        NETWORKS["shipped"].add(TRADES_NAME)
        return pretrained.path(TRADES_NAME)
    return None


def load_network(path: Path) -> Trained:
    """The checkpoint at ``path`` with its training history: the one a shipped network
    carries, else its run folder's, after the runs it was fine-tuned from (--init)."""
    model, ckpt = load_for_model(path)
    history = ckpt.info.get("history") or folder_history(Path(path).parent)
    training = {"config": ckpt.info.get("config"), "history": history}
    return Trained((model, ckpt.params, ckpt.state), Path(path), training)


def folder_history(run: Path) -> list[dict]:
    """run_history of a run folder (--init paths are relative to the folder above runs/);
    the run's own epochs only when a run it was fine-tuned from is not there."""
    root = run.parent.parent if run.parent.name == "runs" else ROOT
    try:
        return run_history(run, root)
    except FileNotFoundError as missing:
        log(f"training history: {missing.filename} is missing; {run.name}'s own epochs only")
    own = run / "history.json"
    if not own.is_file():
        return []
    return [{**r, "run": run.name} for r in json.loads(own.read_text())["history"]]


def full_networks(options, seed: int) -> dict[str, Trained]:
    networks = {"undefended": load_network(trained_checkpoint("default", seed)),
                "defended": load_network(defended_checkpoint(options.checkpoint))}  # fmt: skip
    trades = trades_checkpoint(options.trades)
    if trades is None:
        log(f"no TRADES network (give --trades CKPT; scratchcnn ships no `{TRADES_NAME}`): "
            "its rows are skipped. The docstring has the command that trains it.")  # fmt: skip
    else:
        networks["trades"] = load_network(trades)
    return networks


def quick_networks(seed: int, folder: Path) -> dict[str, Trained]:
    """Quick run: three default networks trained for one epoch on 512 images, plainly, on
    PGD-2 examples and with TRADES (2 attack steps), saved to ``folder`` (the attack
    records name each network by its file)."""
    plain = TrainConfig(model="default", epochs=1, train_limit=512, batch_size=64,
                        val_fraction=0.0, test_limit=100, seed=seed)  # fmt: skip
    recipes = {
        "undefended": plain,
        "defended": dataclasses.replace(plain, adversarial="pgd", adversarial_steps=2),
        "trades": dataclasses.replace(plain, adversarial="trades", adversarial_steps=2),
    }
    return {name: train_quietly(config, folder / f"{name}.npz")
            for name, config in recipes.items()}  # fmt: skip


def train_quietly(config: TrainConfig, path: Path) -> Trained:
    """A quick run's network: trained without a run folder, its weights saved to ``path``."""
    result = train(config, progress=False, log=lambda s: None)
    model = models.build(config.model)
    save_checkpoint(path, model_name=config.model, model=model, params=result.params,
                    state=result.state)  # fmt: skip
    training = {"config": result.config.to_json(), "history": result.history,
                "best_epoch": result.best_epoch}  # fmt: skip
    return Trained((model, result.params, result.state), path, training)


# --------------------------------------------------------------------------- evaluations


# --8<-- [start:worst_case]
def worst_case_accuracy(net, x, y, eps, config: robustness.AttackConfig, restarts: int,
                        kept=None):  # fmt: skip
    """Accuracy under PGD from `restarts` random starts, after each restart.

    An image counts as robust only if the network gets it right and no restart fools it
    (the worst case over restarts, as ``attacks.pgd(restarts=...)`` keeps it). So each
    restart needs to attack only the images still standing. kept: a ``KeptRestarts`` that
    holds the restarts an earlier run finished and saves each new one (None: keep none).
    """
    after, standing = kept.restored() if kept else ([], None)
    if standing is None:
        standing = np.flatnonzero(attacks.predict(*net, x) == y)
    for restart in range(len(after), restarts):
        if len(standing):
            cfg = dataclasses.replace(config, seed=1000 * config.seed + restart)
            adv = robustness.adversarial_examples(*net, x[standing], y[standing], eps, cfg)
            standing = standing[attacks.predict(*net, adv) == y[standing]]
        after.append(len(standing) / len(y))
        if kept:
            kept.save(after, standing)
    return after


# --8<-- [end:worst_case]


# --8<-- [start:ensemble]
def ensemble_outcomes(name: str, network: Trained, x, y, config, folder: Path) -> np.ndarray:
    """Who fooled each test image (N,) under the ensemble at EVAL_EPS: "" (robust),
    "clean" (wrong without attack) or the attack's name, through the network's attack
    record in ``folder``, continued where an earlier run of this script stopped."""
    ident = attack_record.identity(network.net, config, [EVAL_EPS], x, y)
    sha = ident["network"]["weights_sha256"][:12]  # another network: another record
    path = folder / f"{name}-{sha}-eps{EVAL_EPS:g}-n{len(y)}.json"
    record = attack_record.open_record(path, ident, resume=True)
    done = len(record.outcomes(EVAL_EPS))
    log(f"ensemble, {name}: {done:,} of {len(y):,} images already in {path}")
    progress = progress_log(name, len(y), done, config.batch_size)
    attack_record.run(network.net, x, y, [EVAL_EPS], config, record, log=progress)
    return record.outcomes(EVAL_EPS)


# --8<-- [end:ensemble]


def progress_log(name: str, total: int, done: int, batch: int):
    """A log for attack_record.run: each batch's line, how far the record is, and how long
    the rest takes at this run's pace."""
    started, first = time.perf_counter(), done

    def log_batch(line: str) -> None:
        nonlocal done
        done = min(done + batch, total)
        left = (time.perf_counter() - started) / (done - first) * (total - done)
        log(f"  {name}, {line}; {done / total:.0%} of the record, about {duration(left)} left")

    return log_batch


def ensemble_summary(outcomes: np.ndarray) -> dict:
    """Robust accuracy, and the share of the images each attack fooled first."""
    who = ("clean", *robustness.AUTOATTACK)
    return {"robust": float(np.mean(outcomes == "")),
            "fooled_by": {name: float(np.mean(outcomes == name)) for name in who}}  # fmt: skip


def sanity(name: str, network: Trained, x, y, config, transfer_from, subset, folder,
           fooled_by) -> dict:  # fmt: skip
    """robustness.sanity_checks around the ensemble on x, kept in ``folder`` once done: on
    a defended network they take hours, and a re-run of the script need not repeat them.
    fooled_by: the ensemble's outcomes on x, from the attack record (not attacked again)."""
    source = transfer_from and attack_record.network_identity(transfer_from.net)
    ident = {**attack_record.identity(network.net, config, [EVAL_EPS], x, y),
             "subset": subset, "transfer_from": source}
    path = folder / f"sanity-{name}-{ident['network']['weights_sha256'][:12]}-n{len(y)}.json"
    saved = saved_record(path)
    if saved.get("identity") == json.loads(json.dumps(ident)) and "report" in saved:
        log(f"sanity checks, {name}: done before, in {path}")
        return saved["report"]
    log(f"sanity checks, {name}, {len(y):,} images (hours on a defended network; kept "
        "only when finished)")  # fmt: skip
    started = time.perf_counter()
    report, details = robustness.sanity_checks(
        *network.net, x, y, EVAL_EPS, config, subset=subset, fooled_by=fooled_by,
        transfer_from=transfer_from.net if transfer_from else None,
    )  # fmt: skip
    log(f"({duration(time.perf_counter() - started)})\n{report.format()}")
    result = {"checks": report.checks, "ok": report.ok, "details": details}
    write_json(path, {"identity": ident, "report": result})
    return result


def saved_record(path: Path) -> dict:
    """What an earlier run kept in ``path`` (sanity checks, PGD restarts), or {} when
    there is nothing to trust (no file, or one that is not what this script writes: the
    measurement is made again)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log(f"ignoring {path} ({error}); measuring again")
        return {}
    return saved if isinstance(saved, dict) else {}


@dataclasses.dataclass
class KeptRestarts:
    """The restarts of worst_case_accuracy one network has finished, in a file of
    ``folder``: on a defended network each restart of PGD-50 is minutes of work (hours for
    ten), so a stopped run of this script continues after the last restart it finished.
    The restarts' seeds are fixed, so the continued run ends where an unbroken one would."""

    path: Path
    identity: dict

    @classmethod
    def of(cls, name: str, network: Trained, x, y, config, restarts: int, folder: Path):
        ident = {**attack_record.identity(network.net, config, [EVAL_EPS], x, y),
                 "restarts": restarts}  # fmt: skip
        sha = ident["network"]["weights_sha256"][:12]
        return cls(folder / f"worst-{name}-{sha}-n{len(y)}.json", json.loads(json.dumps(ident)))

    def restored(self) -> tuple[list[float], np.ndarray | None]:
        """(accuracy after each finished restart, indices still standing), or ([], None)."""
        saved = saved_record(self.path)
        if saved.get("identity") != self.identity:
            return [], None
        log(f"PGD restarts: {len(saved['after'])} done before, in {self.path}")
        return list(saved["after"]), np.asarray(saved["standing"], dtype=np.int64)

    def save(self, after: list[float], standing: np.ndarray) -> None:
        write_json(self.path, {"identity": self.identity, "after": after,
                               "standing": standing.tolist()})  # fmt: skip


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


COLORS = {"undefended": "tab:blue", "defended": "tab:orange", "trades": "tab:green"}


def restarts_figure(worst, restarts, path):
    """Accuracy after each restart, one panel per network, each axis fitted to its own
    values: the defended network's fall of a point or two would vanish on a 0-100 axis."""
    figure, panels = plt.subplots(1, len(worst), figsize=(3.6 * len(worst), 3.2),
                                  squeeze=False, layout="constrained")
    for axes, (name, after) in zip(panels[0], worst.items(), strict=True):
        percent = [100 * a for a in after]
        axes.plot(range(1, restarts + 1), percent, "o-", color=COLORS.get(name, "tab:gray"))
        for restart in (1, restarts):
            value = percent[restart - 1]
            axes.annotate(f"{value:.1f}%", (restart, value), textcoords="offset points",
                          xytext=(0, 6), ha="center", fontsize=8)
        low, high = min(percent), max(percent)
        pad = max(0.25 * (high - low), 0.5)  # a flat line still gets a readable axis
        axes.set(xlabel="random restarts of PGD", ylabel="accuracy (%)",
                 title=LABELS.get(name, name), ylim=(max(low - pad, 0), min(high + pad, 100)))
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    figure.suptitle(f"Worst case over restarts, eps {EVAL_EPS:g} (each axis fitted to its data)",
                    fontsize=10)
    save_figure(figure, path)


def tradeoff_points(results: dict) -> list[dict]:
    """The trade-off figure's points from results.json: each defended network of ours,
    robust accuracy under the ensemble, and each published one, under AutoAttack."""
    robust = results.get("ensemble", {}).get("robust", {})
    ours = [{"label": f"ours: {LABELS.get(name, name)}", "color": COLORS.get(name, "tab:gray"),
             "clean": results["clean"][name], "robust": robust[name]}
            for name in robust if name != "undefended"]  # fmt: skip
    published = [{"label": f"{row['paper']} ({row['short']})", "color": "dimgray",
                  "clean": row["clean"], "robust": row["autoattack"]}
                 for row in results.get("published", PUBLISHED)["rows"]]  # fmt: skip
    return ours + published


def tradeoff_figure(results: dict, path) -> None:
    """Clean accuracy against robust accuracy at eps 0.3 (our ensemble; AutoAttack for the
    published networks), one labelled point per defended network."""
    points = tradeoff_points(results)
    figure, axes = plt.subplots(figsize=(6.4, 4.2))
    for i, point in enumerate(sorted(points, key=lambda p: p["robust"])):
        robust, clean = 100 * point["robust"], 100 * point["clean"]
        axes.plot(robust, clean, "s" if point["label"].startswith("ours") else "o",
                  color=point["color"], markersize=7)
        above = i % 2 == 0  # alternate, so labels of neighbouring points do not collide
        axes.annotate(point["label"], (robust, clean), textcoords="offset points",
                      xytext=(0, 9 if above else -9), ha="center",
                      va="bottom" if above else "top", fontsize=7, color=point["color"])
    xs, ys = [100 * p["robust"] for p in points], [100 * p["clean"] for p in points]
    x_pad, y_pad = max(4, 0.3 * (max(xs) - min(xs))), max(0.4, 0.2 * (max(ys) - min(ys)))
    axes.set_xlim(max(min(xs) - x_pad, 0), min(max(xs) + x_pad, 100))
    axes.set_ylim(max(min(ys) - y_pad, 0), max(ys) + y_pad)  # room above for labels
    axes.set_yticks([tick for tick in axes.get_yticks() if tick <= 100])  # no "100.2%"
    if "undefended" in results.get("ensemble", {}).get("robust", {}):
        axes.text(0.02, 0.03, "not shown: the undefended network, "
                  f"{results['clean']['undefended']:.1%} clean, "
                  f"{results['ensemble']['robust']['undefended']:.1%} robust",
                  transform=axes.transAxes, fontsize=7, color="tab:blue")  # fmt: skip
    axes.set(xlabel=f"robust accuracy at eps {EVAL_EPS:g} (%): our ensemble; AutoAttack",
             ylabel="clean accuracy (%)",
             title=f"Clean against robust accuracy, MNIST, L-infinity eps {EVAL_EPS:g}")
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def replot(lesson) -> None:
    """--replot: redraw restarts.png and tradeoff.png from the results.json of a run, with
    no attack run again (the figures show exactly the page's numbers)."""
    results = json.loads(lesson.path("results.json").read_text())
    restarts_figure(results["worst_after_restart"], results["worst_attack"]["restarts"],
                    lesson.path("restarts.png"))
    if "ensemble" in results:  # a run from before the ensemble has no trade-off figure
        tradeoff_figure(results, lesson.path("tradeoff.png"))


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


# --------------------------------------------------------------------------- the sweep

# --sweep: the trade-off measured from one starting point. The shipped `defended` network
# trains SWEEP_EPOCHS more epochs, on PGD examples or with TRADES at each beta, everything
# else the same; each network is then measured on the first SWEEP_IMAGES test images (the
# ensemble on all 10,000 takes a defended network about two hours on 2 cores).
SWEEP_START = "defended"
SWEEP_BETAS = (1.0, 3.0, 6.0)
SWEEP_IMAGES = 1_000
SWEEP_RECIPE = dataclasses.replace(ROBUST_RECIPE, epochs=4, learning_rate=1e-3,
                                   init_from=SWEEP_START, backend="jax")  # fmt: skip


def sweep_recipes(seed: int) -> dict[str, TrainConfig]:
    """The sweep's runs: name -> recipe, PGD training and TRADES at each beta."""
    pgd = dataclasses.replace(SWEEP_RECIPE, seed=seed)
    recipes = {"pgd": pgd}
    for beta in SWEEP_BETAS:
        recipes[f"trades{beta:g}"] = dataclasses.replace(pgd, adversarial="trades",
                                                         trades_beta=beta)  # fmt: skip
    return recipes


def sweep_networks(seed: int) -> dict[str, Trained]:
    """The start and every sweep run's best checkpoint, runs/tradeoff-<name>-s<seed>,
    each trained first when missing (continued when stopped)."""
    networks = {"start": load_network(defended_checkpoint(None))}
    for name, config in sweep_recipes(seed).items():
        folder = ROOT / "runs" / f"tradeoff-{name}-s{seed}"
        train_run(config, folder, f"{config.epochs} epochs of {config.adversarial} from "
                  f"{SWEEP_START}")  # fmt: skip
        run = json.loads((folder / "history.json").read_text())  # every epoch, not the best's
        network = load_network(folder / "best.npz")
        network.training = {key: run[key] for key in ("config", "history", "best_epoch")}
        networks[name] = network
    return networks


def quick_sweep_networks(start: Trained, seed: int, folder: Path) -> dict[str, Trained]:
    """--quick: the sweep's runs for one epoch on 256 images (PGD-2 / TRADES with 2 attack
    steps) from the quick PGD network, saved to ``folder``."""
    networks = {"start": start}
    for name, config in sweep_recipes(seed).items():
        config = dataclasses.replace(config, epochs=1, train_limit=256, batch_size=64,
                                     val_fraction=0.0, test_limit=100, adversarial_steps=2,
                                     backend="numpy", init_from=str(start.checkpoint))  # fmt: skip
        networks[name] = train_quietly(config, folder / f"sweep-{name}.npz")
    return networks


def sweep_label(name: str) -> str:
    """"start" -> "start: the shipped defended", "trades6" -> "TRADES, β = 6"."""
    if name.startswith("trades"):
        return f"TRADES, β = {name.removeprefix('trades')}"
    return {"start": f"start: the shipped {SWEEP_START}", "pgd": "PGD training"}[name]


def measure_sweep(networks: dict[str, Trained], x, y, s: dict, records: Path) -> dict:
    """Clean accuracy on every test image given; on the first s["n_sweep"]: the worst case
    under PGD-50 with s["restarts"] restarts and the ensemble (resumable records)."""
    n = s["n_sweep"]
    rows = {}
    for name, network in networks.items():
        started = time.perf_counter()
        kept = KeptRestarts.of(f"sweep-{name}", network, x[:n], y[:n], s["worst"],
                               s["restarts"], records)  # fmt: skip
        worst = worst_case_accuracy(network.net, x[:n], y[:n], EVAL_EPS, s["worst"],
                                    s["restarts"], kept)  # fmt: skip
        outcomes = ensemble_outcomes(f"sweep-{name}", network, x[:n], y[:n], s["ensemble"],
                                     records)  # fmt: skip
        correct = attacks.predict(*network.net, x) == y  # clean, every image given
        history = network.training["history"] if name != "start" else []
        best = network.training.get("best_epoch") if history else None
        rows[name] = {
            "label": sweep_label(name),
            "checkpoint": shown(network.checkpoint),
            "clean": float(correct.mean()),
            "clean_subset": float(correct[:n].mean()),
            "worst": worst[-1],
            **ensemble_summary(outcomes),
            "epochs": len(history),
            "best_epoch": best,  # the checkpoint measured: lowest attacked validation loss
            "training_seconds": round(sum(r.get("seconds", 0.0) for r in history), 1),
            "val_robust_accuracy": [r.get("val_robust_accuracy") for r in history],
        }
        log(f"sweep, {rows[name]['label']}: clean {rows[name]['clean']:.2%}, "
            f"PGD-{s['worst'].steps} x {s['restarts']} {worst[-1]:.2%}, ensemble "
            f"{rows[name]['robust']:.2%}  ({time.perf_counter() - started:.0f} s)")
    return rows


def sweep_color(name: str) -> str:
    if name.startswith("trades"):
        return COLORS["trades"]
    return COLORS["defended"] if name == "pgd" else "tab:gray"


def sweep_figure(rows: dict, n: int, path) -> None:
    """Left: clean against robust accuracy (the ensemble) of the sweep's networks, TRADES'
    betas joined in order. Right: each run's learning curve, accuracy on the validation
    images under the training attack after each epoch (what picked its best epoch)."""
    figure, (tradeoff, curves) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    trades = [name for name in rows if name.startswith("trades")]
    tradeoff.plot([100 * rows[t]["robust"] for t in trades],
                  [100 * rows[t]["clean"] for t in trades], "-", color=COLORS["trades"],
                  alpha=0.5)  # fmt: skip
    for name, row in rows.items():
        robust, clean = 100 * row["robust"], 100 * row["clean"]
        tradeoff.plot(robust, clean, "o" if name in trades else "s", color=sweep_color(name),
                      markersize=7)  # fmt: skip
        left = name == "start"  # beside PGD training's point: its label goes to the left
        tradeoff.annotate(row["label"], (robust, clean), textcoords="offset points",
                          xytext=(-6 if left else 6, 4), ha="right" if left else "left",
                          fontsize=7, color=sweep_color(name))  # fmt: skip
    tradeoff.margins(x=0.3, y=0.25)
    tradeoff.set(xlabel=f"robust accuracy (%): ensemble, eps {EVAL_EPS:g}, first {n:,} test images",
                 ylabel="clean accuracy (%), all test images", title="Clean against robust")
    for name, row in rows.items():
        points = [(epoch, 100 * a) for epoch, a in enumerate(row["val_robust_accuracy"], 1)
                  if a is not None]  # fmt: skip
        if points:
            curves.plot(*zip(*points, strict=True), "o-" if name in trades else "s-",
                        color=sweep_color(name), label=row["label"],
                        alpha=1.0 if name in ("pgd", "trades6") else 0.6)  # fmt: skip
    curves.set(xlabel="epoch after the start", ylabel="attacked validation accuracy (%)",
               title="Learning curves (the training attack, validation images)")
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves.has_data():
        curves.legend(fontsize=7)
    for axes in (tradeoff, curves):
        axes.grid(alpha=0.3)
    save_figure(figure, path)


def sweep(lesson, x, y, s: dict, records: Path, start: Trained | None = None) -> None:
    """The sweep, into sweep.json and sweep.png (--sweep; --quick from its quick start)."""
    if start is None:
        networks = sweep_networks(lesson.seed)
    else:
        networks = quick_sweep_networks(start, lesson.seed, records)
    rows = measure_sweep(networks, x, y, s, records)
    sweep_figure(rows, s["n_sweep"], lesson.path("sweep.png"))
    recipe = sweep_recipes(lesson.seed)["pgd"]  # the others differ only in the loss
    lesson.finish({"rows": rows, "start": SWEEP_START, "betas": list(SWEEP_BETAS),
                   "n_test": len(y), "n_sweep": s["n_sweep"], "eps": EVAL_EPS,
                   "recipe": recipe.to_json(),
                   "worst_attack": {"steps": s["worst"].steps,
                                    "step_size": s["worst"].step_size,
                                    "restarts": s["restarts"]}},
                  name="sweep.json")  # fmt: skip


# --------------------------------------------------------------------------- the run


def settings(quick: bool, limit: int | None, seed: int, batch: int = 100) -> dict:
    """How many images and how hard each attack: the full run's, or --quick's."""
    attack = robustness.AttackConfig
    if quick:
        return {"n_test": 100, "n_curve": 100, "n_sanity": 100, "subset": 20, "n_sweep": 50,
                "eps": (0.0, 0.1, 0.3), "restarts": 2,
                "curve": attack("pgd", steps=5, step_size=0.03, seed=seed),
                "worst": attack("pgd", steps=5, step_size=0.03, seed=seed),
                "ensemble": attack("autoattack", steps=5, queries=20, batch_size=100, seed=seed)}
    n_test = limit or 10_000
    return {"n_test": n_test, "n_curve": min(n_test, 1_000), "n_sanity": min(n_test, SANITY_IMAGES),
            "n_sweep": min(n_test, SWEEP_IMAGES),
            "subset": SANITY_SUBSET, "eps": EPS, "restarts": 10,
            "curve": attack("pgd", steps=40, step_size=0.01, seed=seed),
            "worst": attack("pgd", steps=50, step_size=0.01, seed=seed),
            # AutoAttack's budgets; on a CPU a batch of 100 is a few minutes' work to lose
            # at a stop. The batch size is part of a record's identity (its random streams).
            "ensemble": attack("autoattack", steps=100, queries=5000, batch_size=batch,
                               seed=seed)}  # fmt: skip


def main():
    options = own_options()
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    if options.replot:
        return replot(lesson)
    quick, seed = lesson.quick, lesson.seed
    if options.batch_size < 1:
        sys.exit(f"--batch-size must be at least 1, got {options.batch_size}.")
    s = settings(quick, options.limit, seed, options.batch_size)
    images, labels = load_mnist("test")
    x, y = to_unit_nhwc(images[: s["n_test"]]), labels[: s["n_test"]].astype(np.int64)
    with tempfile.TemporaryDirectory() as scratch:  # a quick run keeps nothing
        records = Path(scratch) if quick else RECORDS
        records.mkdir(parents=True, exist_ok=True)
        if options.sweep and not quick:
            return sweep(lesson, x, y, s, records)
        networks = quick_networks(seed, records) if quick else full_networks(options, seed)
        results = evaluate(networks, x, y, s, records, lesson)
        results.update({"partial": options.limit is not None,
                        "checkpoint": None if quick else shown(networks["defended"].checkpoint)})
        if "trades" in networks:
            trades = networks["trades"]
            results["trades"] = {"checkpoint": None if quick else shown(trades.checkpoint),
                                 "training": training_summary(trades.training)}
        tradeoff_figure(results, lesson.path("tradeoff.png"))
        lesson.finish(results)
        if quick:  # the quick run is the whole lesson: the sweep too
            sweep(lesson, x, y, s, records, start=networks["defended"])


def shown(path: Path) -> str:
    """A checkpoint path as results.json records it: relative to the repository if inside."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def training_summary(training: dict) -> dict:
    history = training["history"]
    seconds = [r.get("seconds") for r in history]
    hours = round(sum(seconds) / 3600, 2) if history and None not in seconds else None
    return {**training, "epochs": len(history), "hours": hours}


def evaluate(networks: dict[str, Trained], x, y, s: dict, records: Path, lesson) -> dict:
    """Every measurement of the lesson, the long resumable one first; returns results."""
    ensemble_cfg, n_sanity = s["ensemble"], s["n_sanity"]
    plain, pgd_net = networks["undefended"], networks["defended"]

    # 1. The ensemble at eps 0.3 on every test image, through the attack records.
    outcomes = {name: ensemble_outcomes(name, net, x, y, ensemble_cfg, records)
                for name, net in networks.items()}  # fmt: skip
    ensemble = {name: ensemble_summary(who) for name, who in outcomes.items()}
    for name, summary in ensemble.items():
        shares = ", ".join(f"{who} {share:.2%}" for who, share in summary["fooled_by"].items())
        log(f"ensemble, {name}: {summary['robust']:.2%} robust (fooled first by: {shares})")

    # 2. The sanity checks around the ensemble, first n_sanity images; the transfer attack
    #    comes from the undefended network.
    checks = {name: sanity(name, net, x[:n_sanity], y[:n_sanity], ensemble_cfg,
                           None if name == "undefended" else plain, s["subset"], records,
                           outcomes[name][:n_sanity])
              for name, net in networks.items()}  # fmt: skip

    # 3. Clean accuracy, and the worst case under PGD with restarts.
    clean, worst = {}, {}
    for name, network in networks.items():
        clean[name] = robustness.accuracy(*network.net, x, y)
        started = time.perf_counter()
        kept = KeptRestarts.of(name, network, x, y, s["worst"], s["restarts"], records)
        worst[name] = worst_case_accuracy(network.net, x, y, EVAL_EPS, s["worst"], s["restarts"],
                                          kept)  # fmt: skip
        log(f"{name}: clean {clean[name]:.2%}, PGD-{s['worst'].steps} x {s['restarts']} at eps "
            f"{EVAL_EPS}: {worst[name][-1]:.2%}  ({time.perf_counter() - started:.0f} s)")
    restarts_figure(worst, s["restarts"], lesson.path("restarts.png"))

    # 4. Accuracy against eps on the first n_curve test images.
    n_curve, curves = s["n_curve"], {}
    for name, network in networks.items():
        log(f"curves, {name}, {n_curve:,} images")
        curves[name] = curves_of(network.net, x[:n_curve], y[:n_curve], s["curve"], s["eps"])
    accuracy_vs_eps_by_network(
        {LABELS[name]: curve for name, curve in curves.items()},
        lesson.path("accuracy_vs_eps.png"),
        title=f"Undefended and adversarially trained, {n_curve:,} test images",
    )

    # 5. What PGD does to the PGD-trained network's inputs, and its training run.
    adv = robustness.adversarial_examples(*pgd_net.net, x[:8], y[:8], EVAL_EPS, s["curve"])
    adversarial_grid(x[:8], adv, attacks.predict(*pgd_net.net, x[:8]),
                     attacks.predict(*pgd_net.net, adv), lesson.path("robust_examples.png"))
    training_figure(pgd_net.training["history"], lesson.path("training.png"))

    return {
        "networks": list(networks),
        "labels": {name: LABELS[name] for name in networks},
        "n_test": len(y),
        "n_curve": n_curve,
        "n_sanity": n_sanity,
        "training": training_summary(pgd_net.training),
        "clean": clean,
        "worst_eps": EVAL_EPS,
        "worst_attack": {"steps": s["worst"].steps, "step_size": s["worst"].step_size,
                         "restarts": s["restarts"]},
        "worst": {name: after[-1] for name, after in worst.items()},
        "worst_after_restart": worst,
        "worst_first_restart": {name: after[0] for name, after in worst.items()},
        "ensemble": {
            "eps": EVAL_EPS,
            "attack": {"attacks": list(robustness.AUTOATTACK), "steps": ensemble_cfg.steps,
                       "targets": apgd_targets(), "queries": ensemble_cfg.queries,
                       "batch_size": ensemble_cfg.batch_size, "seed": ensemble_cfg.seed},
            "robust": {name: summary["robust"] for name, summary in ensemble.items()},
            "fooled_by": {name: summary["fooled_by"] for name, summary in ensemble.items()},
        },
        "sanity_checks": checks,
        "sanity_subset": min(s["subset"], n_sanity),
        "sanity_ok": all(report["ok"] for report in checks.values()),
        "published": PUBLISHED,
        "curve_attack": {"steps": s["curve"].steps, "step_size": s["curve"].step_size},
        "eps": list(s["eps"]),
        "curves": curves,
        "table": [{"eps": e, **{f"{name}_{attack}": curves[name][attack][i]["accuracy"]
                                for name in networks for attack in ("fgsm", "pgd")}}
                  for i, e in enumerate(s["eps"])],
    }  # fmt: skip


def apgd_targets() -> int:
    """How many target classes APGD-T tries (apgd_targeted's default)."""
    import inspect

    return inspect.signature(apgd.apgd_targeted).parameters["targets"].default


if __name__ == "__main__":
    main()
