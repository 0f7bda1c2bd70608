"""No command replaces a file without being asked, or writes over its own inputs; odd
outputs (an empty path, a device, a full standard output) get one sentence too."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import pretrained

pytestmark = pytest.mark.lesson12


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A copy of the shipped default network, so that a failing test cannot harm it."""
    return Path(shutil.copy(pretrained.path("default"), tmp_path / "net.npz"))


@pytest.fixture
def kaggle_csv(tmp_path) -> Path:
    csv = tmp_path / "test.csv"
    header = ",".join(f"pixel{i}" for i in range(784))
    csv.write_text(header + "\n" + ",".join(["0"] * 784) + "\n")
    return csv


def command(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """The real command in a child process (sys.argv and standard output are its own)."""
    return subprocess.run([sys.executable, "-m", "scratchcnn.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, **kwargs)  # fmt: skip


def test_predict_refuses_to_replace_a_submission_unless_asked(checkpoint, kaggle_csv, tmp_path):
    mine = tmp_path / "submission.csv"
    mine.write_text("my own work\n")
    result = run("predict", checkpoint, "--kaggle", kaggle_csv, "--output", mine)
    assert_one_line_error(result, str(mine), "already exists", "--overwrite")
    assert mine.read_text() == "my own work\n"
    result = run("predict", checkpoint, "--kaggle", kaggle_csv, "--output", mine, "--overwrite")
    assert result.exit_code == 0, result.output
    assert mine.read_text().startswith("ImageId,Label")


@pytest.mark.parametrize("which", ["kaggle", "checkpoint"])
def test_predict_never_writes_over_its_inputs(which, checkpoint, kaggle_csv):
    target = kaggle_csv if which == "kaggle" else checkpoint
    before = target.read_bytes()
    result = run("predict", checkpoint, "--kaggle", kaggle_csv, "--output", target, "--overwrite")
    assert_one_line_error(result, "is also an input of this command")
    assert target.read_bytes() == before


def test_attack_outputs_are_checked_before_any_work(checkpoint, tmp_path):
    before = checkpoint.read_bytes()
    for flag in ("--figure", "--save-examples"):
        result = run("attack", checkpoint, flag, checkpoint, "--overwrite")
        assert_one_line_error(result, flag, "is also an input of this command")
    assert checkpoint.read_bytes() == before
    figure = tmp_path / "fig.png"
    figure.write_bytes(b"mine")
    assert_one_line_error(run("attack", checkpoint, "--figure", figure), "already exists")
    assert_one_line_error(run("attack", checkpoint, "--figure", figure, "--save-examples",
                              figure, "--overwrite"), "same file")  # fmt: skip
    assert figure.read_bytes() == b"mine"


@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--eps", "0,,0.1"], ["--eps", "comma-separated numbers"]),
        (["--eps", "0.1,0.1"], ["--eps", "twice"]),
        (["--transfer-from", "default"], ["--transfer-from", "--sanity"]),
    ],
)
def test_attack_refuses_options_that_mean_nothing(checkpoint, args, phrases):
    result = run("attack", checkpoint, *args)
    assert result.exit_code != 0 and "Traceback" not in result.output
    for phrase in phrases:
        assert phrase in result.output


def test_export_refuses_more_calibration_images_than_mnist_has(checkpoint, tmp_path):
    result = run("export", checkpoint, "--int8", "--calibration", "100000", "-o",
                 tmp_path / "x.onnx")  # fmt: skip
    assert_one_line_error(result, "--calibration", "60000")


@pytest.mark.parametrize("flag", ["--output", "--data-dir"])
def test_an_empty_path_is_refused_not_read_as_the_current_folder(flag, tmp_path):
    done = command("train", flag, "", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {flag} is empty; give a file or folder name."
    assert list(tmp_path.iterdir()) == []


def test_a_full_standard_output_is_one_sentence():
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "scratchcnn.cli", "models"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == "error: cannot write the output: No space left on device."


def test_train_output_on_a_device_is_named(tmp_path):
    result = run("train", "--output", "/dev/null", "--train-limit", "64", "--epochs", "1")
    assert_one_line_error(result, "/dev/null is a device, not a folder")


def test_a_cache_folder_that_is_a_file_is_named(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.write_text("not a folder")
    monkeypatch.delenv("SCRATCHCNN_DATA_DIR", raising=False)
    monkeypatch.setenv("SCRATCHCNN_CACHE_DIR", str(cache))
    assert_one_line_error(run("data"), str(cache), "is a file, not a folder")


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--out", "README.md"]])
def test_lesson_flags_are_checked(args):
    done = subprocess.run([sys.executable, "lessons/02_dense_backprop.py", "--quick", *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert args[0] in done.stderr


def test_sigterm_stops_training_like_ctrl_c(tmp_path, mnist_dir):
    out = tmp_path / "run"
    env = {**os.environ, "SCRATCHCNN_DATA_DIR": str(mnist_dir)}
    process = subprocess.Popen(
        [sys.executable, "-m", "scratchcnn.cli", "train", "--model", "lenet", "--epochs", "50",
         "--train-limit", "512", "--backend", "numpy", "--quiet", "--output", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.npz").exists():
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 1
    assert stderr.strip().startswith(f"error: interrupted; {out} keeps every finished epoch")
