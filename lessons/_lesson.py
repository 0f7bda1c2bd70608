"""What every lesson script shares: its command line, its output folder, its results file.

    python lessons/NN_slug.py            # the full run: figures + results.json for the site
    python lessons/NN_slug.py --quick    # a small run in seconds (the tests run this)
    python lessons/NN_slug.py --out DIR  # write somewhere else than the site's assets
    python lessons/NN_slug.py --retrain  # train the networks instead of using shipped ones

The full run writes into ``site/assets/lessons/NN-slug/``; the lesson's page reads its
numbers from ``results.json`` there (``site_macros.py``), so the page and the figures
always come from the same run.

Trained networks: a full run uses the networks scratchcnn ships (``scratchcnn.pretrained``:
seed 0 of ``default`` and ``best``) and trains any other one it needs into
``runs/<recipe>-s<seed>/`` (RESULTS.md's commands), once. ``results.json`` records which
networks were shipped and which trained, so the site's lesson index can say how long a
full run takes on a fresh clone.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time
from contextlib import chdir
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window

from scratchcnn import pretrained  # noqa: E402
from scratchcnn.files import write_atomically  # noqa: E402
from scratchcnn.train import RECIPES, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "site" / "assets" / "lessons"

# The networks this run used, filled in by trained_checkpoint(): "shipped" ones came with
# scratchcnn, "trained" ones are runs/ folders (trained here or by an earlier run).
NETWORKS: dict[str, set[str]] = {"shipped": set(), "trained": set()}
TRAINING = {"retrain": False, "seconds": 0.0}  # --retrain, and the time spent training


def seed_value(text: str) -> int:
    """--seed: a whole number NumPy's and JAX's generators take (0 to 2**32 - 1)."""
    if not text.isdigit() or int(text) >= 2**32:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to {2**32 - 1}")
    return int(text)


class Lesson:
    """A lesson run: ``lesson = Lesson(__file__, "what it does")``, then ``lesson.path(...)``
    for each figure and ``lesson.finish(results)`` at the end."""

    def __init__(self, script: str, description: str):
        self.slug = Path(script).stem.replace("_", "-")  # 01_mnist_bytes -> 01-mnist-bytes
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--quick", action="store_true", help="a small run, in seconds")
        parser.add_argument("--out", type=Path, default=ASSETS / self.slug,
                            help="output folder (default: the site's assets)")
        parser.add_argument("--seed", type=seed_value, default=0)
        parser.add_argument(
            "--retrain", action="store_true", help="train the networks, not use the shipped ones"
        )
        self.args = parser.parse_args()
        TRAINING["retrain"] = self.args.retrain
        self.quick, self.seed = self.args.quick, self.args.seed
        self.out = self.args.out
        if str(self.out) in ("", ".") or (self.out.exists() and not self.out.is_dir()):
            parser.error(f"--out {str(self.out)!r} must name a folder for the figures.")
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.perf_counter()

    def path(self, name: str) -> Path:
        """Where to write one output file (a figure) of this lesson."""
        return self.out / name

    def finish(self, results: dict, name: str = "results.json") -> Path:
        """Write results.json (or ``name``, atomically) with how and where this run was
        made."""
        results = {
            **results,
            "run": {
                "quick": self.quick,
                "seed": self.seed,
                "seconds": round(time.perf_counter() - self.started, 1),
                "training_seconds": round(TRAINING["seconds"], 1),
                "networks": {kind: sorted(names) for kind, names in NETWORKS.items()},
                "date": datetime.now(UTC).strftime("%Y-%m-%d"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            },
        }
        path = self.path(name)
        text = json.dumps(results, indent=2) + "\n"
        write_atomically(path, lambda file: file.write(text.encode()))
        print(f"wrote {path} ({results['run']['seconds']} s)")
        return path


def trained_checkpoint(recipe: str, seed: int) -> Path:
    """The checkpoint of ``recipe`` trained with ``seed``: the shipped network when
    scratchcnn has it (named ``<recipe>``, for seed 0, or ``<recipe>-s<seed>``) and there
    is no --retrain, else runs/<recipe>-s<seed>'s, trained first if missing (RESULTS.md's
    runs)."""
    names = [recipe, f"{recipe}-s{seed}"] if seed == 0 else [f"{recipe}-s{seed}"]
    for name in names:
        if name in pretrained.available() and not TRAINING["retrain"]:
            NETWORKS["shipped"].add(name)
            return pretrained.path(name)
    folder = ROOT / "runs" / f"{recipe}-s{seed}"
    config = dataclasses.replace(RECIPES[recipe], seed=seed)
    train_run(config, folder, f"the {recipe!r} recipe (see RESULTS.md for its time)")
    best = folder / "best.npz"
    return best if best.is_file() else folder / "last.npz"


def train_run(config, folder: Path, what: str) -> None:
    """Train ``config`` into the run folder ``folder`` unless a finished run is there (its
    history has the test result); a stopped one is continued. Runs from the repository
    root, where ``--init`` paths start; the time counts in the run's training time."""
    NETWORKS["trained"].add(folder.name)
    history = folder / "history.json"
    if history.is_file() and "test" in json.loads(history.read_text()):
        return
    print(f"training {folder.name}: {what}", flush=True)
    started = time.perf_counter()
    with chdir(ROOT):
        train(config, output_dir=folder, resume=(folder / "last.npz").is_file())
    TRAINING["seconds"] += time.perf_counter() - started


def network(recipe: str, quick: bool, seed: int):
    """(model, params, state): the trained network (full run) or fresh weights (--quick)."""
    from scratchcnn import models
    from scratchcnn.checkpoint import load_for_model

    if quick:
        model = models.build(recipe)
        return (model, *model.init(seed))
    model, checkpoint = load_for_model(trained_checkpoint(recipe, seed))
    return model, checkpoint.params, checkpoint.state


def undefended_network(seed: int, quick: bool):
    """(model, params, state) of the undefended default network, for the attack lessons.

    Full run: the shipped default network (seed 0), or runs/default-s{seed}'s checkpoint,
    trained with the default recipe (2 epochs) when it is missing. Quick run: a default
    network trained on 512 images for one epoch (attacking random weights would show nothing).
    """
    from scratchcnn import models
    from scratchcnn.train import TrainConfig

    if not quick:
        return network("default", quick, seed)
    config = TrainConfig(model="default", epochs=1, train_limit=512, batch_size=64,
                         val_fraction=0.0, test_limit=100, seed=seed)
    result = train(config, progress=False, log=lambda s: None)
    return models.build("default"), result.params, result.state
