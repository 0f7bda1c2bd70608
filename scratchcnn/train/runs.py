"""A run's state, its result, and its folder: checkpoints, history, resume.

Files written to a run's folder (each atomically: a crash leaves the previous version):

- ``last.npz``     the checkpoint after the latest finished epoch (resume from it)
- ``best.npz``     the checkpoint with the lowest validation loss so far
- ``history.json`` the per-epoch history, and the final test metrics when done

Each checkpoint's ``info`` holds the config, the counters of ``RunState`` and the
SHA-256 of the MNIST files, which is what ``--resume`` checks and restores.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchcnn import __version__
from scratchcnn.checkpoint import load_checkpoint, save_checkpoint
from scratchcnn.errors import ScratchCNNError
from scratchcnn.files import write_json
from scratchcnn.metrics import Evaluation
from scratchcnn.train.config import TrainConfig


class ResumeError(ScratchCNNError, ValueError):
    """A run cannot be resumed from the given folder."""


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


def prepare_output_dir(output_dir, resume: bool) -> Path | None:
    """The run's folder, created if new; refuses to overwrite a run or resume nothing."""
    if output_dir is None:
        if resume:
            raise ResumeError("--resume needs the --output folder of the run to continue.")
        return None
    output_dir = Path(output_dir)
    if resume:
        if not (output_dir / "last.npz").is_file():
            raise ResumeError(f"cannot resume: {output_dir / 'last.npz'} does not exist.")
        return output_dir
    if (output_dir / "last.npz").exists():
        raise ResumeError(
            f"{output_dir} already holds a run (last.npz); pass --resume to continue it "
            "or choose another --output folder."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResumeError(f"cannot create the output folder {output_dir}: {error}.") from error
    return output_dir


@dataclass(frozen=True)
class RunFolder:
    """The folder of one run, and what it records of it."""

    path: Path
    config: TrainConfig
    model: Any
    checksums: dict[str, str]  # of the MNIST files, as MnistSplits.checksums

    def save(self, run: RunState, to_host, plateau, improved: bool) -> None:
        """Write last.npz (and best.npz when this epoch is the best so far), and the history."""
        for name in ["last.npz", "best.npz"] if improved else ["last.npz"]:
            save_checkpoint(
                self.path / name,
                model_name=self.config.model,
                model=self.model,
                params=to_host(run.params),
                state=to_host(run.state),
                opt_state=to_host(run.opt_state),
                info=self._info(run, plateau),
            )
        write_json(self.path / "history.json", {"config": self.config.to_json(),
                                                "history": run.history})  # fmt: skip

    def _info(self, run: RunState, plateau) -> dict:
        return {
            "config": self.config.to_json(),
            "epoch": run.epoch,
            "step": run.step,
            "history": run.history,
            "best_val_loss": run.best_val_loss if run.best_epoch else None,
            "best_epoch": run.best_epoch,
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
        """The state saved in last.npz, if it was trained with this config on these files."""
        checkpoint = load_checkpoint(self.path / "last.npz")
        info = checkpoint.info
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
            raise ResumeError(f"cannot resume {self.path}: it was trained on other MNIST files.")
        if plateau is not None and info.get("plateau"):
            plateau.load_state_dict(info["plateau"])
        return RunState(
            params=checkpoint.params,
            state=checkpoint.state,
            opt_state=checkpoint.opt_state,
            epoch=info["epoch"],
            step=info["step"],
            history=info["history"],
            best_val_loss=info["best_val_loss"] if info["best_val_loss"] is not None else np.inf,
            best_epoch=info["best_epoch"],
            bad_epochs=info["bad_epochs"],
            stopped_early=info["stopped_early"],
            train_seconds=info["train_seconds"],
        )

    def best_weights(self):
        """(params, state) of best.npz, or None when there is none yet."""
        path = self.path / "best.npz"
        if not path.is_file():
            return None
        checkpoint = load_checkpoint(path)
        return checkpoint.params, checkpoint.state

    def write_summary(self, result: TrainResult) -> None:
        """history.json once the run is over: the summary and the test metrics."""
        write_json(self.path / "history.json", {**result.summary(), "test": result.test.to_json()})
