"""Lesson 19: ensembles that beat their members, chosen on validation images.

The members (MEMBERS) were trained with the same 6,000 training images held out for
validation. Every rule of scratchcnn/ensemble.py (equal averages of probabilities or
logits, temperature scaling, greedy selection) chooses its ensemble on those 6,000
images, then predicts the 10,000 test images once. Three times: with the first four
members (15 epochs each), with all eleven strong members, and with the weak `default`
network added. The shipped `best` network is measured on the test images beside them but
never chosen: it was trained on the validation images.

    python lessons/19_better_ensembles.py           # ~1 min (inference only, shipped members)
    python lessons/19_better_ensembles.py --quick   # seconds (fresh weights, 300 images)
    python lessons/19_better_ensembles.py --retrain # train the members first (hours on CPU)
"""

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
from _lesson import Lesson, trained_checkpoint
from matplotlib.ticker import FixedLocator, MaxNLocator, NullFormatter, ScalarFormatter

from scratchcnn import ensemble, metrics, models
from scratchcnn.checkpoint import load_for_model
from scratchcnn.inference import predict_logits
from scratchcnn.train import RECIPES
from scratchcnn.train.data import load_splits
from scratchcnn.viz import save_figure

# Networks "<recipe>-s<seed>" (a bare recipe name is seed 0). Any number of members works.
FIRST_FOUR = ("best_val-s0", "best_val-s1", "best_val-s2", "resnet_val-s0")  # 15 epochs
LONGER = ("resnet_long_val-s0", "resnet_long_val-s1", "resnet_long_val-s2",
          "resnet_elastic_val-s0", "best_long_val-s0", "best_long_val-s1",
          "best_long_val-s2")  # 30 epochs, the last one kept
MEMBERS = FIRST_FOUR + LONGER
WEAK = "default"  # 2 epochs; trained with the same validation images held out
SAW_VALIDATION = "best"  # trained on all 60,000 training images: shown, never chosen
TARGET = 0.9978  # the target test accuracy
QUICK_IMAGES = 300
NAMED_PICKS = 4  # greedy picks named in the figure

RULES = {
    "best member": ensemble.best_member,
    "equal probabilities": ensemble.equal_probabilities,
    "equal logits": ensemble.equal_logits,
    "temperature, then equal probabilities": ensemble.temperature_scaled,
    "greedy on NLL (after temperature)": ensemble.greedy(ensemble.nll),
    "greedy on errors (after temperature)": ensemble.greedy(ensemble.error_rate),
}


def network(name: str, quick: bool):
    """(model, params, state) of member ``name``: its trained weights, or fresh ones (--quick)."""
    recipe, _, seed = name.partition("-s")
    seed = int(seed or 0)
    if quick:
        model = models.build(RECIPES[recipe].model)
        return (model, *model.init(seed))
    model, checkpoint = load_for_model(trained_checkpoint(recipe, seed))
    return model, checkpoint.params, checkpoint.state


def all_logits(names, images: dict, quick: bool) -> dict:
    """{split: (M, N, 10) float64}: every network's logits on every split, computed once."""
    logits = {split: [] for split in images}
    for name in names:
        model, params, state = network(name, quick)
        for split, x in images.items():
            logits[split].append(predict_logits(model, params, state, x))
        print(f"{name}: logits on {', '.join(images)}")
    return {split: np.stack(values).astype(np.float64) for split, values in logits.items()}


# --------------------------------------------------------------------------- measuring


def scores(probs, labels) -> dict:
    """Accuracy, errors, NLL, ECE and mean confidence of one set of probabilities (N, K)."""
    return {
        "accuracy": metrics.accuracy(probs, labels),
        "errors": int((probs.argmax(1) != labels).sum()),
        "nll": ensemble.nll(probs, labels),
        "ece": metrics.expected_calibration_error(probs, labels),
        "confidence": float(probs.max(1).mean()),
    }


def member_rows(names, logits, labels) -> list[dict]:
    """Each network alone, before and after its temperature (fitted on validation)."""
    rows = []
    for m, name in enumerate(names):
        temperature = ensemble.fit_temperature(logits["val"][m], labels["val"])
        row = {"name": name, "temperature": temperature}
        for split in ("val", "test"):
            row[split] = scores(ensemble.softmax(logits[split][m]), labels[split])
        row["test_after_temperature"] = scores(
            ensemble.softmax(logits["test"][m] / temperature), labels["test"]
        )
        rows.append(row)
    return rows


def changes(probs, reference, labels) -> dict:
    """The test images an ensemble fixes (reference wrong, it right) and breaks, and how
    likely so lopsided a split would be if neither were better (``ensemble.sign_test``)."""
    right, was_right = probs.argmax(1) == labels, reference.argmax(1) == labels
    fixed, broken = np.flatnonzero(right & ~was_right), np.flatnonzero(~right & was_right)
    return {
        "fixed": fixed.tolist(),
        "broken": broken.tolist(),
        "p_value": ensemble.sign_test(len(fixed), len(broken)),
    }


def rule_rows(sets: dict, names: list, logits, labels, reference) -> list[dict]:
    """Every rule on every set of members: chosen on validation, then tested once.

    sets: {set name: member names}, names: the rows of ``logits`` (M, N, K) per split.
    """
    rows = []
    for set_name, members in sets.items():
        picked = [names.index(name) for name in members]
        for rule_name, rule in RULES.items():
            chosen, probs = ensemble.choose_and_test(
                rule, logits["val"][picked], labels["val"], logits["test"][picked]
            )
            rows.append(
                {
                    "members": set_name,
                    "rule": rule_name,
                    "average": chosen.average,
                    "weights": dict(zip(members, chosen.weights.tolist())),
                    "temperatures": dict(zip(members, chosen.temperatures.tolist())),
                    "val": scores(probs["val"], labels["val"]),
                    "val_nll_cross_validated": ensemble.cross_validated(
                        rule, logits["val"][picked], labels["val"]
                    ),
                    "test": scores(probs["test"], labels["test"]),
                    **changes(probs["test"], reference, labels["test"]),
                }
            )
    return rows


def greedy_curves(sets: dict, names: list, logits, labels) -> dict:
    """The greedy selection on validation NLL, step by step, for each set of members."""
    curves = {}
    for set_name, members in sets.items():
        val = logits["val"][[names.index(name) for name in members]]
        temperatures = ensemble.member_temperatures(val, labels["val"])
        probs = ensemble.softmax(val / temperatures[:, None, None])
        picks, curve = ensemble.greedy_selection(probs, labels["val"], ensemble.nll)
        alone = {name: ensemble.nll(p, labels["val"]) for name, p in zip(members, probs)}
        curves[set_name] = {"picks": [members[i] for i in picks], "nll": curve, "alone": alone}
    return curves


def weak_member_effect(logits, labels, names) -> dict:
    """What adding the weak member to the strong ones' equal probability average changes
    on the test images: how many answers change, and how many of those it fixes or breaks."""
    strong = [names.index(n) for n in MEMBERS]
    without = ensemble.mean_of_probabilities(logits["test"][strong])
    with_weak = ensemble.mean_of_probabilities(logits["test"][strong + [names.index(WEAK)]])
    changed = with_weak.argmax(1) != without.argmax(1)
    weak = logits["test"][names.index(WEAK)].argmax(1)
    fixed_broken = changes(with_weak, without, labels["test"])
    return {
        "changed": int(changed.sum()),
        "to_the_weak_members_answer": int((changed & (with_weak.argmax(1) == weak)).sum()),
        "fixed": len(fixed_broken["fixed"]),
        "broken": len(fixed_broken["broken"]),
    }


def shared_errors(logits, labels) -> dict:
    """How the strong members' test errors overlap: an average can only fix an image
    that not every member gets wrong."""
    wrong = logits["test"][: len(MEMBERS)].argmax(2) != labels["test"]  # (M, N)
    return {
        "wrong_by_all": int(wrong.all(0).sum()),
        "wrong_by_any": int(wrong.any(0).sum()),
        "wrong_by_half_or_more": int((wrong.sum(0) >= len(MEMBERS) / 2).sum()),
        "pairs": [[int((a & b).sum()) for b in wrong] for a in wrong],
    }


# --------------------------------------------------------------------------- figures


def accuracy_figure(members: list[dict], rules: list[dict], path):
    """Validation and test accuracy of each network and each ensemble, one row each."""
    seen = {SAW_VALIDATION: f"{SAW_VALIDATION} (trained on the validation images)"}
    rows = [
        (seen.get(m["name"], m["name"]), m["val"]["accuracy"], m["test"]["accuracy"])
        for m in members
    ]
    rows += [
        (f"{r['rule']} [{r['members']}]", r["val"]["accuracy"], r["test"]["accuracy"])
        for r in rules
    ]
    figure, axes = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2), layout="constrained")
    y = np.arange(len(rows))[::-1]
    val, test = (100 * np.array([r[i] for r in rows]) for i in (1, 2))
    axes.hlines(y, np.minimum(val, test), np.maximum(val, test), color="0.8", zorder=1)
    axes.scatter(
        val,
        y,
        marker="o",
        facecolors="none",
        edgecolors="tab:blue",
        label="validation (6,000 images)",
        zorder=2,
    )
    axes.scatter(test, y, marker="o", color="tab:orange", label="test (10,000 images)", zorder=3)
    axes.axvline(100 * TARGET, color="tab:red", ls=":", label=f"target {100 * TARGET:.2f}%")
    axes.axhline(len(rows) - len(members) - 0.5, color="0.5", lw=0.8)
    axes.set_yticks(y, [r[0] for r in rows], fontsize=8)
    axes.set_xlabel("accuracy (%)")
    axes.legend(fontsize=8, loc="lower left")
    axes.grid(axis="x", alpha=0.3)
    save_figure(figure, path)


def greedy_figure(curves: dict, path):
    """Validation NLL after each greedy pick (the first ones named), and each candidate's own
    NLL after its temperature (dotted lines), for the largest set of candidates."""
    set_name, curve = list(curves.items())[-1]
    same = [name for name, c in curves.items() if c["picks"] == curve["picks"]]
    figure, axes = plt.subplots(figsize=(9, 3.8), layout="constrained")
    steps = np.arange(1, len(curve["nll"]) + 1)
    label = "greedy average" + (" (the same picks from: " + ", ".join(same) + ")")
    axes.plot(steps, curve["nll"], "o-", color="black", label=label)
    # Only the first picks are named: later ones repeat members and only fine-tune weights.
    named = list(zip(steps, curve["nll"], curve["picks"]))[:NAMED_PICKS]
    for step, value, _ in named:
        axes.annotate(str(step), (step, value), xytext=(5, 4), textcoords="offset points")
    listing = "\n".join(f"{step}: + {name}" for step, _, name in named)
    axes.text(0.98, 0.95, f"first picks\n{listing}", transform=axes.transAxes, ha="right",
              va="top", fontsize=8, bbox={"facecolor": "white", "alpha": 0.9})  # fmt: skip
    top = 1.15 * max(curve["nll"])
    for (name, value), color in zip(curve["alone"].items(), plt.cm.tab20.colors):
        if value <= top:
            axes.axhline(value, color=color, ls=":", label=f"{name} alone")
        else:  # a legend entry only: the line would squash the curve
            axes.plot([], [], ls="none", label=f"{name} alone: {value:.4f} (above)")
    axes.set(xlabel="greedy step (one member added, with replacement)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(ylabel="validation NLL (nats)", ylim=(None, top))
    axes.set_title(f"Greedy selection from: {set_name} (after temperature scaling)")
    axes.margins(x=0.15)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    axes.grid(alpha=0.3)
    save_figure(figure, path)


def temperature_figure(members: list[dict], logits, labels, names, path):
    """Left: validation NLL against temperature, one curve per network, the fitted T
    marked. Right: test ECE before and after each network's temperature."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), layout="constrained")
    grid = np.geomspace(0.2, 5, 61)
    colors = iter(plt.cm.tab20.colors)  # one per network: tab10's ten would repeat
    for row in members:
        if row["name"] == SAW_VALIDATION:
            continue  # it saw these images: its curve would say nothing about new ones
        val = logits["val"][names.index(row["name"])]
        curve = [ensemble.nll(ensemble.softmax(val / t), labels["val"]) for t in grid]
        (line,) = left.plot(grid, curve, label=row["name"], color=next(colors))
        best = ensemble.nll(ensemble.softmax(val / row["temperature"]), labels["val"])
        left.plot(row["temperature"], best, "o", color=line.get_color())
    left.set(
        xscale="log",
        yscale="log",
        xlabel="temperature T (logits / T)",
        ylabel="validation NLL (nats)",
    )
    left.xaxis.set_major_locator(FixedLocator([0.2, 0.5, 1, 2, 5]))
    left.xaxis.set_major_formatter(ScalarFormatter())
    left.xaxis.set_minor_formatter(NullFormatter())
    left.set_title("NLL on validation; dot: the fitted T", fontsize=10)
    left.legend(fontsize=7)
    left.grid(alpha=0.3, which="both")
    x = np.arange(len(members))
    before = [100 * r["test"]["ece"] for r in members]
    after = [100 * r["test_after_temperature"]["ece"] for r in members]
    right.bar(x - 0.2, before, 0.4, label="T = 1")
    right.bar(x + 0.2, after, 0.4, label="fitted T")
    right.set_xticks(x, [r["name"] for r in members], rotation=30, ha="right", fontsize=8)
    right.set(ylabel="test ECE (%)")
    right.set_title("Calibration error on the test images", fontsize=10)
    right.legend(fontsize=8)
    save_figure(figure, path)


# --------------------------------------------------------------------------- main


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    splits = load_splits(dataclasses.replace(RECIPES["best_val"], val_fraction=0.1))
    keep = slice(QUICK_IMAGES) if lesson.quick else slice(None)
    images = {"val": splits.val.images[keep], "test": splits.test.images[keep]}
    labels = {
        "val": splits.val.labels[keep].astype(np.int64),
        "test": splits.test.labels[keep].astype(np.int64),
    }
    names = [*MEMBERS, WEAK, SAW_VALIDATION]
    logits = all_logits(names, images, lesson.quick)

    members = member_rows(names, logits, labels)
    # The sets of members a rule may choose from: never `best`, which saw the val images.
    sets = {"first four": FIRST_FOUR, "strong": MEMBERS, f"strong + {WEAK}": (*MEMBERS, WEAK)}
    strong = logits["val"][: len(MEMBERS)]
    chosen = MEMBERS[ensemble.best_member(strong, labels["val"]).weights.argmax()]
    reference = ensemble.softmax(logits["test"][names.index(chosen)])
    rules = rule_rows(sets, names, logits, labels, reference)
    curves = greedy_curves(sets, names, logits, labels)
    # The ensemble we would ship: the row with the lowest validation NLL on images its rule
    # did not choose on (cross-validated); the test images are not looked at.
    final = min(rules, key=lambda r: r["val_nll_cross_validated"])

    accuracy_figure(members, rules, lesson.path("accuracy.png"))
    greedy_figure(curves, lesson.path("greedy.png"))
    temperature_figure(members, logits, labels, names, lesson.path("temperature.png"))
    lesson.finish(
        {
            "val_images": len(labels["val"]),
            "test_images": len(labels["test"]),
            "members": list(MEMBERS),
            "first_four": list(FIRST_FOUR),
            "weak": WEAK,
            "saw_validation": SAW_VALIDATION,
            "target": TARGET,
            "networks": members,
            "best_by_validation": chosen,
            "rules": rules,
            "greedy": curves,
            "final": {
                "members": final["members"],
                "rule": final["rule"],
                "test_accuracy": final["test"]["accuracy"],
                "gap_images": round((TARGET - final["test"]["accuracy"]) * len(labels["test"])),
            },
            "weak_member_effect": weak_member_effect(logits, labels, names),
            "shared_errors": shared_errors(logits, labels),
        }
    )


if __name__ == "__main__":
    main()
