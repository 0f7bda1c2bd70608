"""A run's state, its result, and its folder: checkpoints, history, resume.

Files written to a run's folder, each atomically (a crash leaves the previous version):

- ``last.npz``     the checkpoint after the latest finished epoch: the run's *commit*
- ``best.npz``     the checkpoint the run keeps: the lowest validation loss so far, or
                   the latest epoch's (no validation split, or ``--keep last``)
- ``history.json`` the per-epoch history, and the final test metrics when done

A crash can stop the program between any two of these writes, so they are written in an
order that keeps the folder readable. ``last.npz`` is written first and is the only file
``--resume`` trusts: its ``info`` holds the config, the counters of ``RunState``, the
SHA-256 of the data (the MNIST files, or the digits' arrays), and the epoch and digest
of the best weights. ``best.npz`` is written next, as a byte copy of ``last.npz`` when
this epoch is the best; resume checks its digest, repairs it from ``last.npz`` when the
best epoch *is* the last one, and refuses otherwise. ``history.json`` is only a
readable view of ``last.npz``, rewritten on resume.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchcnn import __version__
from scratchcnn.checkpoint import load_checkpoint, require_info, save_checkpoint
from scratchcnn.errors import ScratchCNNError
from scratchcnn.files import (
    kind_of_file,
    os_reason,
    remove_stale_temporaries,
    write_atomically,
    write_json,
)
from scratchcnn.metrics import Evaluation
from scratchcnn.train.config import TrainConfig

RUN_FILES = ("last.npz", "best.npz", "history.json")


class ResumeError(ScratchCNNError, ValueError):
    """A run cannot be resumed from (or started in) the given folder."""


@dataclass
class RunState:
    """Everything that changes during a run (and is saved to resume it)."""

    params: Any
    state: Any
    opt_state: Any
    epoch: int = 0  # epochs finished
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    best_digest: str | None = None  # weights_digest of the best weights so far
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0


@dataclass
class TrainResult:
    config: TrainConfig
    params: Any
    state: Any
    history: list[dict]
    test: Evaluation
    train_seconds: float
    best_epoch: int
    stopped_early: bool
    output_dir: Path | None

    def summary(self) -> dict:
        """The JSON summary ``scratchcnn train --json`` prints."""
        return {
            "config": self.config.to_json(),
            "test_accuracy": self.test.accuracy,
            "test_loss": self.test.loss,
            "train_seconds": round(self.train_seconds, 2),
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "library_version": __version__,
        }


def check_folder_options(output_dir, resume: bool, overwrite: bool) -> None:
    """--resume and --overwrite: at most one, and only with an --output folder."""
    if resume and overwrite:
        raise ResumeError("--resume continues the run in --output and --overwrite replaces "
                          "it; pass only one of them.")  # fmt: skip
    if output_dir is None and (resume or overwrite):
        flag = "--resume" if resume else "--overwrite"
        raise ResumeError(f"{flag} needs the --output folder of the run.")


def prepare_output_dir(output_dir, resume: bool, overwrite: bool = False) -> Path | None:
    """The run's folder, ready to write: created if new. Refuses to resume nothing, and to
    replace any file of an earlier run unless ``overwrite`` (which deletes them first)."""
    check_folder_options(output_dir, resume, overwrite)
    if output_dir is None:
        return None
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        kind = kind_of_file(output_dir.stat().st_mode)
        raise ResumeError(f"the output folder {output_dir} is {kind}, not a folder.")
    if resume:
        if not (output_dir / "last.npz").is_file():
            raise ResumeError(f"cannot resume: {output_dir / 'last.npz'} does not exist.")
    else:
        _clear_earlier_run(output_dir, overwrite)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResumeError(
            f"cannot create the output folder {output_dir}: {os_reason(error)}."
        ) from error
    for name in RUN_FILES:  # what a crash mid-write left behind
        remove_stale_temporaries(output_dir / name)
    return output_dir


def _clear_earlier_run(output_dir: Path, overwrite: bool) -> None:
    """Refuse a folder holding any file a run writes; with ``overwrite``, delete them."""
    found = [name for name in RUN_FILES if os.path.lexists(output_dir / name)]
    if found and not overwrite:
        raise ResumeError(
            f"{output_dir} already holds a run ({', '.join(found)}); pass --resume to "
            "continue it, --overwrite to replace it, or choose another --output folder."
        )
    for name in found:
        try:
            (output_dir / name).unlink()
        except OSError as error:
            raise ResumeError(f"cannot replace {output_dir / name}: {os_reason(error)}.") from error


def weights_digest(params, state) -> str:
    """SHA-256 of every weight's name, dtype, shape and bytes: the identity of a network."""
    digest = hashlib.sha256()
    for name, array in _leaves({"params": params, "state": state}):
        array = np.ascontiguousarray(array)
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _leaves(tree, prefix: str = ""):
    """(path, array) of every leaf of a nested dict, in sorted order."""
    for key in sorted(tree):
        if isinstance(tree[key], dict):
            yield from _leaves(tree[key], f"{prefix}{key}/")
        else:
            yield prefix + key, np.asarray(tree[key])


# Fields of last.npz's info that resume restores into RunState, and the type of each.
SAVED_COUNTERS = {
    "epoch": int,
    "step": int,
    "history": list,
    "best_val_loss": float | None,  # None: no validation yet
    "best_epoch": int,
    "bad_epochs": int,
    "stopped_early": bool,
    "train_seconds": float,
    "best_weights_sha256": str | None,  # None until the first epoch
}


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run, and what it records of it."""

    path: Path
    config: TrainConfig
    model: Any
    checksums: dict[str, str]  # what identifies the data, as Splits.checksums

    def save(self, run: RunState, to_host, plateau, improved: bool) -> None:
        """Commit one finished epoch: last.npz, then best.npz if improved, then the history."""
        params, state = to_host(run.params), to_host(run.state)
        if improved:
            run.best_digest = weights_digest(params, state)
        last = save_checkpoint(
            self.path / "last.npz",
            model_name=self.config.model,
            model=self.model,
            params=params,
            state=state,
            opt_state=to_host(run.opt_state),
            info=self._info(run, plateau),
        )
        if improved:
            self._copy_to_best(last)
        self._write_history(run.history)

    def _copy_to_best(self, last: Path) -> None:
        data = last.read_bytes()
        write_atomically(self.path / "best.npz", lambda file: file.write(data))

    def _write_history(self, history: list[dict]) -> None:
        write_json(self.path / "history.json", {"config": self.config.to_json(),
                                                "history": history})  # fmt: skip

    def _info(self, run: RunState, plateau) -> dict:
        return {
            "config": self.config.to_json(),
            "epoch": run.epoch,
            "step": run.step,
            "history": run.history,
            "best_val_loss": run.best_val_loss if run.best_epoch else None,
            "best_epoch": run.best_epoch,
            "best_weights_sha256": run.best_digest,
            "bad_epochs": run.bad_epochs,
            "stopped_early": run.stopped_early,
            "train_seconds": run.train_seconds,
            "plateau": plateau.state_dict() if plateau is not None else None,
            "rng": {
                "seed": self.config.seed,
                "streams": "numpy default_rng([seed, epoch, stream])",
            },
            "data_sha256": self.checksums,
            "metrics": run.history[-1] if run.history else {},
        }

    def resume(self, plateau) -> RunState:
        """The state saved in last.npz, if it was trained with this config on these files
        and best.npz holds the best weights it names (repaired when they are its own)."""
        last = self.path / "last.npz"
        checkpoint = load_checkpoint(last)
        info = checkpoint.info
        require_info(checkpoint, {"config": dict, "data_sha256": dict})
        self._check_same_run(info)
        counters = require_info(checkpoint, SAVED_COUNTERS)
        if counters["best_val_loss"] is None:
            counters["best_val_loss"] = math.inf
        counters["best_digest"] = counters.pop("best_weights_sha256")
        if plateau is not None and info.get("plateau"):
            plateau.load_state_dict(info["plateau"])
        run = RunState(
            params=checkpoint.params,
            state=checkpoint.state,
            opt_state=checkpoint.opt_state,
            **counters,
        )
        self._check_best(run, last)
        self._write_history(run.history)  # a crash may have come before the history's write
        return run

    def _check_same_run(self, info: dict) -> None:
        saved = TrainConfig.from_json(info.get("config", {}))
        different = [
            f"{name} (saved {getattr(saved, name)!r}, now {getattr(self.config, name)!r})"
            for name in TrainConfig.__dataclass_fields__
            if getattr(saved, name) != getattr(self.config, name)
        ]
        if different:
            raise ResumeError(
                f"cannot resume {self.path}: the options differ from the saved run: "
                + "; ".join(different)
                + "."
            )
        if info.get("data_sha256") != self.checksums:
            raise ResumeError(
                f"cannot resume {self.path}: it was trained on other {self.config.dataset} "
                "data (their checksums differ)."
            )

    def _check_best(self, run: RunState, last: Path) -> None:
        """best.npz must hold the weights last.npz names as the best; when those are last's
        own weights (the crash came between the two writes), copy them over again."""
        best = self.path / "best.npz"
        if best.is_file() and self._digest_of(best) == run.best_digest:
            return
        if run.best_digest == weights_digest(run.params, run.state):
            self._copy_to_best(last)
            return
        raise ResumeError(
            f"cannot resume {self.path}: best.npz does not hold the best weights that last.npz "
            "names (it is missing, or was replaced), so the run's result would be wrong; "
            "start it again with --overwrite."
        )

    @staticmethod
    def _digest_of(path: Path) -> str | None:
        try:
            checkpoint = load_checkpoint(path)
        except ScratchCNNError:
            return None  # unreadable: treated as not holding the best weights
        return weights_digest(checkpoint.params, checkpoint.state)

    def best_weights(self):
        """(params, state) of best.npz (checked by ``resume``)."""
        checkpoint = load_checkpoint(self.path / "best.npz")
        return checkpoint.params, checkpoint.state

    def write_summary(self, result: TrainResult) -> None:
        """history.json once the run is over: the summary and the test metrics."""
        write_json(self.path / "history.json", {**result.summary(), "test": result.test.to_json()})
