"""The networks shipped in scratchcnn/pretrained/: intact, small, and as accurate as recorded.

The accuracy each was trained to is recorded in MANIFEST.json (measured by the training
run, with the jitted forward pass); here it is measured again on the 10,000 test images
with the plain NumPy forward pass. The two may differ by a few borderline images (float32
sums in another order), never by more.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from scratchcnn import pretrained
from scratchcnn.checkpoint import CheckpointError, load_checkpoint, load_for_model
from scratchcnn.cli import app
from scratchcnn.inference import predict_logits

pytestmark = pytest.mark.lesson14

runner = CliRunner()

# The accuracy each shipped network must reach (README, RESULTS.md, lesson 11).
TARGETS = {"default": 0.990, "best": 0.996, "defended": 0.985, "resnet_elastic_val-s0": 0.994}
MEMBER_TARGET = 0.996  # lesson 19's other ensemble members
FAST = ("default", "best", "defended")
# Borderline images may flip between the jitted and the NumPy forward pass.
REMEASURE_TOLERANCE = 0.0005  # 5 of 10,000 test images


def shipped(name: str):
    if name not in pretrained.available():
        pytest.skip(f"pretrained network {name!r} is not shipped in this copy")
    return name


# Lesson 19's ensemble members are re-measured with the slow tests (a minute).
MEMBERS = [name if name in FAST else pytest.param(name, marks=pytest.mark.slow)
           for name in pretrained.NAMES]  # fmt: skip


@pytest.mark.parametrize("name", MEMBERS)
def test_shipped_network_is_as_accurate_as_recorded(name, mnist_test):
    record = pretrained.manifest()[shipped(name)]
    model, params, state = pretrained.load(name)
    images, labels = mnist_test
    accuracy = float((predict_logits(model, params, state, images).argmax(1) == labels).mean())
    assert abs(accuracy - record["test_accuracy"]) <= REMEASURE_TOLERANCE, (accuracy, record)
    assert accuracy >= TARGETS.get(name, MEMBER_TARGET)


@pytest.mark.parametrize("name", pretrained.NAMES)
def test_shipped_file_is_weights_only_and_recorded(name):
    record = pretrained.manifest()[shipped(name)]
    file = pretrained.path(name)
    assert hashlib.sha256(file.read_bytes()).hexdigest() == record["sha256"]
    assert file.stat().st_size == record["bytes"] < 5_000_000
    checkpoint = load_checkpoint(file)
    assert checkpoint.opt_state is None, "no optimizer state in a shipped network"
    assert checkpoint.model_name == record["architecture"]
    leaves = jax.tree.leaves((checkpoint.params, checkpoint.state))  # a residual block nests
    assert all(a.dtype == np.float32 and np.isfinite(a).all() for a in leaves)
    assert re.fullmatch(r"[0-9a-f]{40}", record["commit"])
    assert record["command"].startswith("scratchcnn train")
    assert checkpoint.info["command"] == record["command"]


def test_everything_shipped_stays_small():
    total = sum(f.stat().st_size for f in pretrained.FOLDER.glob("*.npz"))
    assert total < 30_000_000  # 14 networks of 1.3-3.3 MB (lesson 19 uses 12)
    assert {f.stem for f in pretrained.FOLDER.glob("*.npz")} == set(pretrained.manifest())


def test_an_altered_file_is_refused(monkeypatch, tmp_path):
    name = shipped("default")
    folder = tmp_path / "pretrained"
    shutil.copytree(pretrained.FOLDER, folder, ignore=shutil.ignore_patterns("*.py", "__*"))
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    monkeypatch.setattr(pretrained, "MANIFEST", folder / "MANIFEST.json")
    data = bytearray((folder / f"{name}.npz").read_bytes())
    data[-100] ^= 1
    (folder / f"{name}.npz").write_bytes(bytes(data))
    with pytest.raises(pretrained.PretrainedError, match="was altered"):
        pretrained.load(name)


def test_unknown_and_missing_names_are_one_sentence(monkeypatch, tmp_path):
    with pytest.raises(pretrained.PretrainedError, match="not a pretrained network"):
        pretrained.path("biggest")
    monkeypatch.setattr(pretrained, "MANIFEST", tmp_path / "MANIFEST.json")
    with pytest.raises(pretrained.PretrainedError, match="not shipped"):
        pretrained.path("best")
    with pytest.raises(pretrained.PretrainedError) as info:  # a file or a name? Say both.
        load_for_model(tmp_path / "nothing.npz")
    assert str(info.value) == (
        f"checkpoint {tmp_path / 'nothing.npz'} does not exist, and it is not the name of a "
        "pretrained network (none is shipped)."  # the manifest is empty here
    )
    (tmp_path / "MANIFEST.json").write_text('{"best": {"file": "best.npz"}}')
    with pytest.raises(pretrained.PretrainedError, match="not a valid manifest"):
        pretrained.path("best")


def test_a_file_wins_over_a_pretrained_name_but_a_folder_does_not(tmp_path, monkeypatch):
    shipped("default")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()  # as `scratchcnn train --output default` makes it
    assert load_for_model("default")[1].path == pretrained.path("default")
    (tmp_path / "default").rmdir()
    (tmp_path / "default").write_text("my own notes, not a network")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_for_model("default")


def test_cli_commands_take_a_pretrained_name(mnist_dir, mnist_test, tmp_path):
    shipped("default")
    images, labels = mnist_test
    result = runner.invoke(app, ["evaluate", "default", "--data-dir", str(mnist_dir), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["accuracy"] >= TARGETS["default"]
    digit = tmp_path / "seven.png"
    Image.fromarray(255 - images[0]).resize((140, 140)).save(digit)  # dark ink on paper
    result = runner.invoke(app, ["predict", "default", str(digit), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["digit"] == labels[0]
    result = runner.invoke(app, ["evaluate", "defualt"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.strip().splitlines() == [
        "error: checkpoint defualt does not exist, and it is not the name of a pretrained "
        f"network ({', '.join(pretrained.available())})."
    ]
