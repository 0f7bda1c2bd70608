"""Train a small run and SIGKILL it at its N-th *event*: used by tests/test_train_faults.py.

Usage: python tests/crash_at.py OUTPUT_DIR KILL_AT [--resume] [--events EVENTS_JSON]

Events are the instants a crash can hit: after each training step, and inside every
atomic file write (the temporary file just created and still empty, its first bytes
written, flushed to disk, just before and just after the rename). KILL_AT = 0 never
kills; --events writes the list of events the run went through.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from scratchcnn import files
from scratchcnn.train import TrainConfig, train

# One improved epoch, one worse, one improved again: every path of best.npz is taken.
CONFIG = TrainConfig(
    model="lenet", epochs=3, batch_size=64, learning_rate=0.04, schedule="constant",
    train_limit=256, val_fraction=0.005, test_limit=200, seed=6, backend="numpy",
)  # fmt: skip


class Events:
    """Counts events and kills this process (SIGKILL: no cleanup runs) at number ``kill_at``."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at, self.names = kill_at, []

    def __call__(self, name: str) -> None:
        self.names.append(name)
        if len(self.names) == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


class CrashingFile:
    """A file whose first write is an event."""

    def __init__(self, file, event: Events, name: str) -> None:
        self.file, self.event, self.name, self.written = file, event, name, False

    def write(self, data):
        count = self.file.write(data)
        if not self.written:
            self.written = True
            self.event(f"first bytes of {self.name}")
        return count

    def __getattr__(self, attribute):
        return getattr(self.file, attribute)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)


class CrashingOs:
    """Stands in for the ``os`` module inside scratchcnn.files: each write step is an event."""

    def __init__(self, event: Events) -> None:
        self.event, self.names = event, {}

    def __getattr__(self, attribute):
        return getattr(os, attribute)

    def open(self, path, flags, *args):
        fd = os.open(path, flags, *args)
        if flags & os.O_CREAT:
            self.names[fd] = target_name(path)
            self.event(f"empty temporary of {self.names[fd]}")
        return fd

    def fdopen(self, fd, *args):
        return CrashingFile(os.fdopen(fd, *args), self.event, self.names.get(fd, "?"))

    def fsync(self, fd):
        os.fsync(fd)
        if fd in self.names:
            self.event(f"flushed {self.names.pop(fd)}")

    def replace(self, source, target):
        self.event(f"before renaming to {Path(target).name}")
        os.replace(source, target)
        self.event(f"renamed to {Path(target).name}")


def target_name(temporary) -> str:
    """'.last.npz.1a2b3c4d.tmp' -> 'last.npz'."""
    return Path(temporary).name[1:].rsplit(".", 2)[0]


def main() -> None:
    output, kill_at = Path(sys.argv[1]), int(sys.argv[2])
    events = Events(kill_at)
    files.os = CrashingOs(events)
    train(
        CONFIG,
        output_dir=output,
        resume="--resume" in sys.argv,
        progress=False,
        log=lambda text: None,
        on_step=lambda run, loss, accuracy: events(f"step {run.step}"),
    )
    if "--events" in sys.argv:
        Path(sys.argv[sys.argv.index("--events") + 1]).write_text(json.dumps(events.names))


if __name__ == "__main__":
    main()
