"""A training process killed with SIGKILL mid-epoch leaves a loadable, resumable run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from scratchcnn.checkpoint import load_checkpoint
from scratchcnn.train import TrainConfig, train

pytestmark = pytest.mark.lesson05

FLAGS = {
    "--model": "lenet",
    "--epochs": "3",
    "--batch-size": "64",
    "--train-limit": "3000",
    "--val-fraction": "0.01",
    "--seed": "5",
    "--backend": "numpy",
}
CONFIG = TrainConfig(model="lenet", epochs=3, batch_size=64, train_limit=3000,
                     val_fraction=0.01, seed=5, backend="numpy")  # fmt: skip


def command(*extra: str) -> list[str]:
    flags = [part for pair in FLAGS.items() for part in pair]
    return [sys.executable, "-m", "scratchcnn.cli", "train", *flags, "--quiet", *extra]


def wait_for(path, process, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, "training ended before writing its first checkpoint"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


def test_sigkill_mid_epoch_then_resume(mnist_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "SCRATCHCNN_DATA_DIR": str(mnist_dir)}
    process = subprocess.Popen(command("--output", str(out)), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(out / "last.npz", process)
        # At once: an epoch of 3,000 images can take under half a second, and a fixed sleep
        # once outlived epoch 2 on a fast CPU. The kill lands while epoch 1 is being saved
        # or early in epoch 2.
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL

    killed = load_checkpoint(out / "last.npz")  # complete, thanks to the atomic rename
    assert killed.info["epoch"] < 3, "the run had finished before the kill"

    resumed = subprocess.run(command("--output", str(out), "--resume", "--json"), env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    final = load_checkpoint(out / "last.npz")
    assert final.info["epoch"] == 3

    train(CONFIG, data_dir=mnist_dir, output_dir=tmp_path / "whole", progress=False,
          log=lambda s: None)  # fmt: skip
    whole = load_checkpoint(tmp_path / "whole" / "last.npz")
    for layer in whole.params:
        for name in whole.params[layer]:
            assert (whole.params[layer][name] == final.params[layer][name]).all(), layer


def with_ctrl_c(argv: list[str]) -> list[str]:
    """``python -m scratchcnn.cli ...`` with Ctrl-C restored first: a shell's background
    job ignores SIGINT, and its children inherit that (CI runs in one)."""
    restore = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)"
    return [argv[0], "-c", f"{restore}; from scratchcnn.cli import app; app()", *argv[3:]]


def test_ctrl_c_is_one_sentence_and_the_run_resumes(mnist_dir, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "SCRATCHCNN_DATA_DIR": str(mnist_dir)}
    process = subprocess.Popen(with_ctrl_c(command("--output", str(out))), env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(out / "last.npz", process)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1, stderr
    assert stderr.strip() == (
        f"error: interrupted; {out} keeps every finished epoch (continue with --resume)."
    )
    resumed = subprocess.run(command("--output", str(out), "--resume"), env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
