"""Add a trained run to the shipped networks (for maintainers).

    python -m scratchcnn.pretrained.ship runs/default-s0 default \\
        --command "scratchcnn train --seed 0 --output runs/default-s0" --commit c622238

Copies the run's best checkpoint without its optimizer state (float32 params and
BatchNorm state only, so the file is a third of the size) and with its training history
(and that of the runs it was fine-tuned from), and records in MANIFEST.json
its SHA-256, size, the command and commit that trained it, and the test accuracy that
run measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

from scratchcnn.checkpoint import load_for_model, save_checkpoint
from scratchcnn.files import write_atomically
from scratchcnn.pretrained import DESCRIPTIONS, FOLDER, MANIFEST, manifest

KEPT_INFO = ("epoch", "seed", "config", "train_seconds")


def ship(run: Path, name: str, command: str, commit: str) -> dict:
    """Write ``<name>.npz`` from ``run``'s best checkpoint; returns its manifest record."""
    history = json.loads((run / "history.json").read_text())
    model, checkpoint = load_for_model(run / "best.npz")
    target = FOLDER / f"{name}.npz"
    info = {key: checkpoint.info[key] for key in KEPT_INFO if key in checkpoint.info}
    info |= {
        "command": command,
        "commit": commit,
        "test_accuracy": history["test_accuracy"],
        "history": run_history(run, run.parent.parent),
    }
    save_checkpoint(target, model_name=checkpoint.model_name, model=model,
                    params=checkpoint.params, state=checkpoint.state, info=info)  # fmt: skip
    record = {
        "file": target.name,
        "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
        "bytes": target.stat().st_size,
        "architecture": checkpoint.model_name,
        "description": DESCRIPTIONS[name],
        "command": command,
        "commit": commit,
        "test_accuracy": history["test_accuracy"],
        "best_epoch": history.get("best_epoch"),
        "train_seconds": history.get("train_seconds"),
    }
    records = manifest() | {name: record}
    text = json.dumps({n: records[n] for n in DESCRIPTIONS if n in records}, indent=2) + "\n"
    write_atomically(MANIFEST, lambda file: file.write(text.encode()))
    return record


def run_history(run: Path, root: Path) -> list[dict]:
    """Every epoch of ``run`` (its history.json), after the epochs of the run it was
    fine-tuned from (``init_from``, a path relative to ``root``), numbered on from them."""
    summary = json.loads((run / "history.json").read_text())
    history = [{**record, "run": run.name} for record in summary["history"]]
    parent = summary["config"].get("init_from")
    if not parent:
        return history
    before = run_history((root / parent).parent, root)
    return before + [{**r, "epoch": r["epoch"] + len(before)} for r in history]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="a training run's folder (best.npz, history.json)")
    parser.add_argument("name", choices=sorted(DESCRIPTIONS))
    parser.add_argument("--command", required=True, help="the command that trained it")
    parser.add_argument("--commit", required=True, help="the commit it was trained at")
    args = parser.parse_args()
    print(json.dumps(ship(args.run, args.name, args.command, args.commit), indent=2))


if __name__ == "__main__":
    main()
