"""Lesson 18: hyperparameter search. Random search, TPE and TPE with pruning, same CPU budget.

Three Optuna studies search the same space (scratchcnn.tune.SPACE: learning rate, batch
size, weight decay, dropout, width, augmentation, label smoothing) for the default
network, each trial training on a subset of the training images for a few epochs and
scored by its validation accuracy. Each study gets the same budget of CPU seconds
(``time.process_time()``: the CPU time of this process, every thread counted). Then the
best trial's recipe is trained once more and, for the first time, measured on the test
set, next to the default recipe trained the same way.

    python lessons/18_hyperparameter_search.py           # ~11 CPU-minutes
    python lessons/18_hyperparameter_search.py --quick   # seconds
"""

import dataclasses
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
from _lesson import TRAINING, Lesson
from matplotlib.ticker import MaxNLocator

from scratchcnn import tune
from scratchcnn.train import RECIPES, train
from scratchcnn.viz import save_figure

STRATEGIES = {  # name: (sampler, pruner)
    "random search": ("random", "none"),
    "TPE": ("tpe", "none"),
    "TPE + pruning": ("tpe", "halving"),
}
COLORS = {"random search": "tab:gray", "TPE": "tab:blue", "TPE + pruning": "tab:orange"}


def trial_budget(quick: bool) -> dict:
    """What one trial trains on, and each study's CPU budget."""
    if quick:
        return {"epochs": 2, "train_limit": 200, "val_fraction": 0.005, "cpu_seconds": None,
                "n_trials": 2, "test_limit": 500}  # fmt: skip
    return {"epochs": 3, "train_limit": 1000, "val_fraction": 0.02, "cpu_seconds": 200,
            "n_trials": 1000, "test_limit": None}  # fmt: skip


def run_study(name, base, budget, folder: Path, seed: int) -> dict:
    """One study under the CPU budget: every trial, with the CPU time when it ended."""
    sampler_name, pruner_name = STRATEGIES[name]
    sampler = tune.make_sampler(sampler_name, seed)
    pruner = tune.make_pruner(pruner_name, base.epochs)
    storage = folder / f"{sampler_name}-{pruner_name}.db"
    study = tune.open_study(storage, "lesson18", base, tune.SPACE, sampler, pruner)
    started = time.process_time()
    ended = {}

    def on_trial(study, trial):
        ended[trial.number] = time.process_time() - started
        best = max((t.value for t in tune.finished(study) if t.value is not None), default=None)
        print(f"{name}: {tune.describe_trial(trial, best)}")

    tune.search(study, base, tune.SPACE, budget["n_trials"], cpu_budget=budget["cpu_seconds"],
                on_trial=on_trial)  # fmt: skip
    trials = [
        {"number": t.number, "state": t.state.name.lower(), "value": t.value,
         "params": t.params, "model": t.user_attrs.get("model"),
         "curve": [t.intermediate_values[e] for e in sorted(t.intermediate_values)],
         "cpu_seconds_at_end": round(ended[t.number], 1)}
        for t in study.get_trials(deepcopy=False)
    ]  # fmt: skip
    return {"trials": trials, "cpu_seconds": round(time.process_time() - started, 1),
            "study": study}  # fmt: skip


def best_so_far(trials, budget_seconds):
    """(CPU minutes, best validation accuracy) after each trial that ended within budget."""
    xs, ys, best = [0.0], [np.nan], np.nan
    for t in trials:
        if budget_seconds is not None and t["cpu_seconds_at_end"] > budget_seconds:
            continue
        if t["state"] == "complete":
            best = t["value"] if np.isnan(best) else max(best, t["value"])
        xs.append(t["cpu_seconds_at_end"] / 60)
        ys.append(best)
    return xs, ys


def best_in_budget(study, budget):
    """The best complete trial that ended within the CPU budget (first of equals)."""
    limit = budget["cpu_seconds"]  # None: no budget (--quick)
    done = [t for t in study["trials"] if t["state"] == "complete"
            and (limit is None or t["cpu_seconds_at_end"] <= limit)]
    return max(done, key=lambda t: t["value"])


def budget_figure(studies, budget_seconds, path):
    figure, axes = plt.subplots(figsize=(7, 3.6))
    for name, study in studies.items():
        xs, ys = best_so_far(study["trials"], budget_seconds)
        axes.step(xs, 100 * np.array(ys), where="post", color=COLORS[name], label=name)
        done = [t for t in study["trials"] if t["state"] == "complete"]
        axes.plot([t["cpu_seconds_at_end"] / 60 for t in done], [100 * t["value"] for t in done],
                  "o", color=COLORS[name], markersize=3, alpha=0.6)  # fmt: skip
    if budget_seconds:
        axes.axvline(budget_seconds / 60, color="black", linewidth=0.8, linestyle=":")
    axes.set_xlabel("CPU minutes spent by the study (time.process_time)")
    axes.set_ylabel("best validation accuracy (%)")
    axes.set_title("Best trial so far at the same CPU budget (dots: single trials)")
    # Zoom on the best-so-far curves: most single trials fall below, off the chart.
    bests = [y for s in studies.values() for y in best_so_far(s["trials"], budget_seconds)[1]]
    low, high = np.nanmin(bests), np.nanmax(bests)
    margin = max(high - low, 0.005)
    axes.set_ylim(100 * (low - margin), min(100 * (high + margin / 2), 100))
    axes.legend(loc="lower right")
    save_figure(figure, path)


def history_figure(trials, name, path):
    """Each trial's validation accuracy in order, pruned ones at their last epoch."""
    figure, axes = plt.subplots(figsize=(7, 3.4))
    done = [t for t in trials if t["state"] == "complete"]
    pruned = [t for t in trials if t["state"] == "pruned"]
    axes.plot([t["number"] for t in done], [100 * t["value"] for t in done], "o",
              color=COLORS[name], label="finished trial")  # fmt: skip
    axes.plot([t["number"] for t in pruned], [100 * t["curve"][-1] for t in pruned], "x",
              color="tab:red", label="pruned (accuracy when stopped)")  # fmt: skip
    best, xs, ys = -np.inf, [], []
    for t in trials:
        if t["state"] == "complete":
            best = max(best, t["value"])
        if np.isfinite(best):
            xs.append(t["number"])
            ys.append(100 * best)
    axes.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(f"Optimization history: {name}")
    axes.legend(loc="lower right")
    save_figure(figure, path)


def curves_figure(trials, epochs, path):
    """Every trial's validation accuracy epoch by epoch: pruned trials stop early."""
    figure, axes = plt.subplots(figsize=(7, 3.4))
    for t in trials:
        if not t["curve"]:
            continue
        pruned = t["state"] == "pruned"
        axes.plot(range(1, len(t["curve"]) + 1), 100 * np.array(t["curve"]),
                  "x-" if pruned else "o-", color="tab:red" if pruned else "tab:orange",
                  alpha=0.7, linewidth=1, markersize=4)  # fmt: skip
    axes.plot([], [], "o-", color="tab:orange", label="ran all epochs")
    axes.plot([], [], "x-", color="tab:red", label="pruned")
    axes.set_xticks(range(1, epochs + 1))
    axes.set_xlabel("epoch")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title("TPE + pruning: each trial's validation accuracy after each epoch")
    axes.legend(loc="lower right")
    save_figure(figure, path)


def importances(studies) -> dict:
    """fANOVA importances over every finished trial of the three studies together."""
    pooled = optuna.create_study(direction="maximize")  # in memory
    for study in studies.values():
        pooled.add_trials([t for t in study["study"].trials
                           if t.state == optuna.trial.TrialState.COMPLETE])  # fmt: skip
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)  # a random forest's
    scores = optuna.importance.get_param_importances(pooled, evaluator=evaluator)
    return {"trials": len(pooled.trials), "importance": {k: round(v, 4) for k, v in scores.items()}}


def importance_figure(result, path):
    figure, axes = plt.subplots(figsize=(7, 3))
    names = list(result["importance"])[::-1]
    values = [result["importance"][n] for n in names]
    bars = axes.barh(names, values, color="tab:green")
    axes.bar_label(bars, [f"{v:.2f}" for v in values], padding=3, fontsize=8)
    axes.set_xlabel("share of the variance of validation accuracy (fANOVA)")
    axes.set_title(f"Parameter importances, {result['trials']} finished trials pooled")
    axes.margins(x=0.15)
    save_figure(figure, path)


def final_check(config, test_limit) -> dict:
    """Train ``config`` once; its validation accuracy, and its test accuracy."""
    config = dataclasses.replace(config, test_limit=test_limit)
    started = time.perf_counter()
    result = train(config, progress=False, log=lambda _: None)
    TRAINING["seconds"] += time.perf_counter() - started
    return {"model": config.model, "val_accuracy": result.history[-1]["val_accuracy"],
            "test_accuracy": result.test.accuracy,
            "test_images": result.test.num_examples}  # fmt: skip


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    budget = trial_budget(lesson.quick)
    base = dataclasses.replace(RECIPES["default"], backend="numpy", epochs=budget["epochs"],
                               train_limit=budget["train_limit"],
                               val_fraction=budget["val_fraction"])  # fmt: skip
    studies = {}
    with tempfile.TemporaryDirectory() as folder:  # the study files: this run's only
        for name in STRATEGIES:
            studies[name] = run_study(name, base, budget, Path(folder), lesson.seed)
        budget_figure(studies, budget["cpu_seconds"], lesson.path("best_vs_cpu.png"))
        history_figure(studies["TPE + pruning"]["trials"], "TPE + pruning",
                       lesson.path("history.png"))  # fmt: skip
        curves_figure(studies["TPE + pruning"]["trials"], base.epochs, lesson.path("curves.png"))
        ranked = importances(studies)
        importance_figure(ranked, lesson.path("importances.png"))
        # The comparison's rule: only trials that ended within the CPU budget count.
        winner = max(studies, key=lambda n: best_in_budget(studies[n], budget)["value"])
        best = tune.trial_config(base, best_in_budget(studies[winner], budget)["params"])
    recipe_path = lesson.path("recipe.json")
    tune.write_recipe(recipe_path, best, overwrite=True)
    tuned = final_check(tune.read_recipe(recipe_path), budget["test_limit"])
    default = final_check(base, budget["test_limit"])
    for study in studies.values():
        study.pop("study")
    summary = {
        name: {"trials": len(s["trials"]),
               "complete": sum(t["state"] == "complete" for t in s["trials"]),
               "pruned": sum(t["state"] == "pruned" for t in s["trials"]),
               "failed": sum(t["state"] == "fail" for t in s["trials"]),
               "best_within_budget": best_so_far(s["trials"], budget["cpu_seconds"])[1][-1],
               "cpu_seconds": s["cpu_seconds"]}
        for name, s in studies.items()
    }  # fmt: skip
    lesson.finish(
        {
            "budget": {**budget, "clock": "time.process_time (CPU seconds of the process)"},
            "base": base.to_json(),
            "space": tune.SPACE,
            "summary": summary,
            "studies": studies,
            "importances": ranked,
            "winner": winner,
            "best_recipe": best.to_json(),
            "final": {"tuned": tuned, "default": default},
        }
    )


if __name__ == "__main__":
    main()
