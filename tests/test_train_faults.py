"""Crash-proof training: a SIGKILL at any instant, then ``--resume``, gives the same run.

``tests/crash_at.py`` trains a small run and kills it at its N-th event: after a training
step, or inside one of the atomic writes of last.npz, best.npz and history.json. After
each kill we continue the way a user would (``resume`` when last.npz exists, else start
again) and compare every weight, every history record and the test metrics with the run
that was never killed. Resume may also refuse with one sentence; it may never finish with
a different result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scratchcnn.checkpoint import (
    CheckpointError,
    build_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from scratchcnn.train import ResumeError, TrainConfig, train
from scratchcnn.train.loop import TrainingDiverged
from scratchcnn.train.runs import weights_digest

# One test process for the whole file, and a session fixture: the uninterrupted run is
# trained once, not once per process or each time another file's tests come between.
pytestmark = [pytest.mark.lesson05, pytest.mark.xdist_group("train_faults")]

DRIVER = Path(__file__).with_name("crash_at.py")
TIMING = {"seconds", "images_per_second", "train_seconds"}  # wall time differs, by nature
# One of each kind of instant in epoch 3, where best.npz is rewritten after a worse epoch 2.
SAMPLE = ["step 10", "first bytes of last.npz", "before renaming to last.npz",
          "empty temporary of best.npz", "first bytes of best.npz", "flushed best.npz",
          "before renaming to best.npz", "renamed to best.npz"]  # fmt: skip


def run_driver(output: Path, kill_at: int, *extra: str, mnist_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "SCRATCHCNN_DATA_DIR": str(mnist_dir)}
    command = [sys.executable, str(DRIVER), str(output), str(kill_at), *extra]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory, mnist_dir):
    """The run that was never killed, and the list of its events."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    events = folder / "events.json"
    done = run_driver(folder / "run", 0, "--events", str(events), mnist_dir=mnist_dir)
    assert done.returncode == 0, done.stderr
    return folder / "run", json.loads(events.read_text())


def kill_then_resume(output: Path, kill_at: int, mnist_dir) -> subprocess.CompletedProcess:
    killed = run_driver(output, kill_at, mnist_dir=mnist_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resume = ["--resume"] if (output / "last.npz").exists() else []
    return run_driver(output, 0, *resume, mnist_dir=mnist_dir)


def assert_same_run(folder: Path, reference: Path) -> None:
    for name in ["last.npz", "best.npz"]:
        got, want = load_checkpoint(folder / name), load_checkpoint(reference / name)
        for tree in ["params", "state", "opt_state"]:
            assert_same_tree(getattr(got, tree), getattr(want, tree), f"{name} {tree}")
    got, want = (without_timing(json.loads((f / "history.json").read_text()))
                 for f in (folder, reference))  # fmt: skip
    assert got["history"] == want["history"]
    assert got["test"] == want["test"]
    assert got["best_epoch"] == want["best_epoch"]
    assert not list(folder.glob(".*.tmp")), "a temporary file survived the resumed run"


def assert_same_tree(got, want, where: str) -> None:
    assert got.keys() == want.keys(), where
    for key in want:
        if isinstance(want[key], dict):
            assert_same_tree(got[key], want[key], f"{where}/{key}")
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{where}/{key}")


def without_timing(value):
    if isinstance(value, dict):
        return {k: without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [without_timing(v) for v in value]
    return value


def check_kill_at(event_number: int, uninterrupted, tmp_path, mnist_dir) -> None:
    reference, events = uninterrupted
    output = tmp_path / f"killed-at-{event_number}"
    resumed = kill_then_resume(output, event_number, mnist_dir)
    where = f"killed at event {event_number} ({events[event_number - 1]})"
    if resumed.returncode != 0:  # a refusal is allowed: one sentence, no traceback
        assert "Traceback" not in resumed.stderr and "cannot resume" in resumed.stderr, where
        return
    assert_same_run(output, reference)


def test_the_run_has_the_events_the_sample_names(uninterrupted):
    _, events = uninterrupted
    for name in SAMPLE:
        assert name in events
    assert events.count("renamed to best.npz") == 2  # epochs 1 and 3 improve, 2 does not


@pytest.mark.parametrize("name", SAMPLE)
def test_kill_at_one_instant_then_resume_gives_the_same_run(name, uninterrupted, tmp_path,
                                                            mnist_dir):  # fmt: skip
    _, events = uninterrupted
    # The last occurrence: inside epoch 3 for the checkpoints.
    number = len(events) - events[::-1].index(name)
    check_kill_at(number, uninterrupted, tmp_path, mnist_dir)


@pytest.mark.exhaustive  # 57 kills and resumes, about 4.5 minutes: CI runs the sample above
def test_kill_at_every_instant_then_resume_gives_the_same_run(uninterrupted, tmp_path, mnist_dir):
    _, events = uninterrupted
    for number in range(1, len(events) + 1):
        check_kill_at(number, uninterrupted, tmp_path, mnist_dir)


# ------------------------------------------------------------- the run's folder, by hand

FAST = dict(model="lenet", epochs=2, batch_size=64, train_limit=256, val_fraction=0.005,
            test_limit=200, seed=6, backend="numpy", schedule="constant")  # fmt: skip


def run(config: TrainConfig, output: Path, mnist_dir, **kwargs):
    return train(config, data_dir=mnist_dir, output_dir=output, progress=False,
                 log=lambda text: None, **kwargs)  # fmt: skip


def test_resume_refuses_when_best_npz_is_missing(mnist_dir, tmp_path):
    config = TrainConfig(**{**FAST, "learning_rate": 0.04})  # epoch 2 is worse than epoch 1
    run(dataclasses.replace(config, epochs=1), tmp_path, mnist_dir)
    with pytest.raises(ResumeError, match="already holds a run"):
        run(config, tmp_path, mnist_dir)
    # Continue to epoch 2 by hand: resume checks epochs only against the saved config, so
    # train the two-epoch run from scratch and take its folder.
    run(config, tmp_path / "two", mnist_dir)
    assert load_checkpoint(tmp_path / "two" / "last.npz").info["best_epoch"] == 1
    (tmp_path / "two" / "best.npz").unlink()
    with pytest.raises(ResumeError, match="best.npz does not hold the best weights"):
        run(config, tmp_path / "two", mnist_dir, resume=True)


def test_resume_repairs_best_npz_when_the_best_is_the_last_epoch(mnist_dir, tmp_path):
    config = TrainConfig(**FAST)  # both epochs improve
    whole = run(config, tmp_path, mnist_dir)
    assert load_checkpoint(tmp_path / "last.npz").info["best_epoch"] == 2
    (tmp_path / "best.npz").unlink()
    again = run(config, tmp_path, mnist_dir, resume=True)
    assert again.test.to_json() == whole.test.to_json()
    best = load_checkpoint(tmp_path / "best.npz")
    assert weights_digest(best.params, best.state) == weights_digest(whole.params, whole.state)


def test_a_folder_with_any_run_file_is_refused_unless_overwrite(mnist_dir, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 1})
    run(config, tmp_path, mnist_dir)
    (tmp_path / "last.npz").unlink()  # best.npz and history.json are still someone's work
    best = (tmp_path / "best.npz").read_bytes()
    with pytest.raises(ResumeError, match=r"already holds a run \(best.npz, history.json\)"):
        run(config, tmp_path, mnist_dir)
    assert (tmp_path / "best.npz").read_bytes() == best
    with pytest.raises(ResumeError, match="only one of them"):
        run(config, tmp_path, mnist_dir, resume=True, overwrite=True)
    run(dataclasses.replace(config, seed=7), tmp_path, mnist_dir, overwrite=True)
    assert load_checkpoint(tmp_path / "last.npz").info["config"]["seed"] == 7


def test_a_stale_temporary_file_is_removed_by_the_next_run(mnist_dir, tmp_path):
    stale = tmp_path / ".last.npz.0badf00d.tmp"
    stale.write_bytes(b"")  # what a kill at the instant of creation leaves
    run(TrainConfig(**{**FAST, "epochs": 1}), tmp_path, mnist_dir)
    assert not stale.exists()


def test_resume_refuses_a_checkpoint_without_its_counters(mnist_dir, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 1})
    run(config, tmp_path, mnist_dir)
    saved = load_checkpoint(tmp_path / "last.npz")
    info = {k: v for k, v in saved.info.items() if k != "step"}
    save_checkpoint(tmp_path / "last.npz", model_name="lenet", model=build_from_checkpoint(saved),
                    params=saved.params, state=saved.state, opt_state=saved.opt_state,
                    info=info)  # fmt: skip
    with pytest.raises(CheckpointError, match="has no 'step' in the info"):
        run(config, tmp_path, mnist_dir, resume=True)


def test_a_diverging_run_stops_in_words_and_keeps_the_last_good_epoch(mnist_dir, tmp_path):
    config = TrainConfig(**FAST)

    def poison_in_epoch_2(state, loss, accuracy):  # as if the learning rate were far too high
        if state.epoch == 1:
            state.params["conv1"]["kernel"] = state.params["conv1"]["kernel"] * np.inf

    with pytest.raises(TrainingDiverged, match=r"at epoch 2, step 2: the loss is nan"):
        run(config, tmp_path, mnist_dir, on_step=poison_in_epoch_2)
    before = load_checkpoint(tmp_path / "last.npz")
    assert before.info["epoch"] == 1  # the last good epoch, untouched
    resumed = run(config, tmp_path, mnist_dir, resume=True)
    assert np.isfinite(resumed.test.loss)


def test_weights_that_turn_nan_on_the_last_step_are_caught(mnist_dir, tmp_path):
    config = TrainConfig(**{**FAST, "epochs": 1})

    def poison_after_the_last_step(state, loss, accuracy):
        if state.step == 4:  # 256 images / 64 per batch: the last step of epoch 1
            state.params["conv1"]["bias"] = state.params["conv1"]["bias"] * np.nan

    with pytest.raises(TrainingDiverged, match="in epoch 1: its weights became NaN"):
        run(config, tmp_path, mnist_dir, on_step=poison_after_the_last_step)
    assert not (tmp_path / "last.npz").exists()


def test_weights_too_large_to_use_are_one_sentence(tmp_path, mnist_dir):
    """Finite weights (3e38) overflow float32 in the forward pass: no NaN predictions."""
    run(TrainConfig(**{**FAST, "epochs": 1}), tmp_path, mnist_dir)
    saved = load_checkpoint(tmp_path / "best.npz")
    params = {layer: {name: np.full_like(a, 3e38) for name, a in arrays.items()}
              for layer, arrays in saved.params.items()}  # fmt: skip
    huge = tmp_path / "huge.npz"
    save_checkpoint(huge, model_name="lenet", model=build_from_checkpoint(saved), params=params,
                    state=saved.state)  # fmt: skip
    digit = tmp_path / "digit.png"
    Image.fromarray(np.eye(28, dtype=np.uint8) * 255).save(digit)
    for command in (["evaluate", str(huge)], ["predict", str(huge), "--json", str(digit)]):
        env = {**os.environ, "SCRATCHCNN_DATA_DIR": str(mnist_dir)}
        done = subprocess.run([sys.executable, "-m", "scratchcnn.cli", *command], env=env,
                              capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 1, done.stdout
        assert done.stderr.startswith("error: the network's outputs are NaN or infinite")
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
