"""Print the results table of RESULTS.md from the run summaries in this folder.

Each ``results/*.json`` is the ``history.json`` a ``scratchcnn train --output DIR`` run
wrote (copied here), so every number in the table comes from a real run.
Usage: python results/table.py
"""

import json
import statistics
from collections import defaultdict
from pathlib import Path

from scratchcnn.train import TrainConfig

HERE = Path(__file__).parent


def load_runs() -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(HERE.glob("*.json"))]


def group_key(run: dict) -> tuple:
    """Runs that differ only in their seed share a row. Options added after a run was
    made are filled in with their defaults (which is what that run used)."""
    config = TrainConfig.from_json(run["config"]).to_json()
    config.pop("seed")
    return tuple(sorted((k, str(v)) for k, v in config.items()))


def main() -> None:
    groups = defaultdict(list)
    for run in load_runs():
        groups[group_key(run)].append(run)
    print(
        "| model | recipe | epochs | seeds | test accuracy (each seed) | mean ± sd | "
        "training time (each seed) |"
    )
    print("|---|---|---|---|---|---|---|")
    for runs in groups.values():
        config = runs[0]["config"]
        accs = [r["test_accuracy"] * 100 for r in runs]
        times = [r["train_seconds"] for r in runs]
        spread = (
            f"{statistics.mean(accs):.2f} ± {statistics.stdev(accs):.2f}"
            if len(accs) > 1
            else f"{accs[0]:.2f}"
        )
        recipe = (
            f"{config['optimizer']} lr {config['learning_rate']} {config['schedule']}, "
            f"batch {config['batch_size']}, augment {config['augment']}, "
            f"smoothing {config['label_smoothing']}, val {config['val_fraction']}, "
            f"{config['backend']}"
        )
        if config.get("keep") == "last":
            recipe += ", last epoch kept"
        if config.get("adversarial", "none") != "none":
            steps = f"-{config['adversarial_steps']}" if config["adversarial"] == "pgd" else ""
            recipe += (
                f", **{config['adversarial']}{steps} training at eps {config['adversarial_eps']}**"
            )
        if config.get("init_from"):
            recipe += f", fine-tuning {Path(config['init_from']).parent.name}"
        print(
            f"| {config['model']} | {recipe} | {config['epochs']} | "
            f"{', '.join(str(r['config']['seed']) for r in runs)} | "
            f"{', '.join(f'{a:.2f}%' for a in accs)} | {spread}% | "
            f"{', '.join(f'{t:.0f} s' for t in times)} |"
        )


if __name__ == "__main__":
    main()
