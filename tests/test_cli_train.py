"""`scratchcnn train / evaluate / predict` end to end on a small subset, and their refusals.

Every refusal must give one 'error: ...' line (or typer's usage message for a bad flag),
a non-zero exit status, and leave existing files untouched.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import typer
from cli_checks import assert_one_line_error, run
from PIL import Image

import scratchcnn.train
from scratchcnn import optim
from scratchcnn.cli import app
from scratchcnn.data.mnist import CACHE_DIR_ENV, DATA_DIR_ENV
from scratchcnn.optim import ConfigError
from scratchcnn.train import RECIPES, TrainConfig

# The lesson each test checks: train -> lesson 5, evaluate -> 6, predict -> 12.
lesson05, lesson06, lesson12 = pytest.mark.lesson05, pytest.mark.lesson06, pytest.mark.lesson12

QUICK = ["--train-limit", "3000", "--val-fraction", "0.02", "--epochs", "1", "--quiet"]


def assert_usage_error(result, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# One test process for the whole file, and a session fixture: the run below is trained
# once, not once per process (pytest-xdist) or each time another file's tests come between.
pytestmark = pytest.mark.xdist_group("cli_train")


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mnist_dir) -> tuple[Path, dict]:
    """A run of the default network on 3,000 images (jax backend: a few seconds)."""
    out = tmp_path_factory.mktemp("run")
    result = run(
        "train", *QUICK, "--backend", "jax", "--data-dir", mnist_dir, "--output", out, "--json"
    )
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


@lesson05
def test_train_json_summary(trained):
    out, summary = trained
    assert 0.8 < summary["test_accuracy"] <= 1.0
    assert summary["config"]["model"] == "default"
    assert summary["epochs_run"] == 1
    assert {p.name for p in out.iterdir()} >= {"best.npz", "last.npz", "history.json"}


@lesson05
@lesson06
def test_evaluate_matches_the_training_run(trained, mnist_dir):
    """evaluate (NumPy forward) reproduces the test accuracy train measured (jitted)."""
    out, summary = trained
    result = run("evaluate", out / "best.npz", "--data-dir", mnist_dir, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert abs(report["accuracy"] - summary["test_accuracy"]) <= 2e-4  # 2 images of 10,000
    assert np.sum(report["confusion_matrix"]) == 10_000
    text = run("evaluate", out / "best.npz", "--data-dir", mnist_dir)
    assert text.exit_code == 0 and "confusion" in text.stdout.lower()


@lesson05
def test_train_prints_the_test_accuracy(mnist_dir):
    result = run("train", "--model", "lenet", "--train-limit", "256", "--val-fraction", "0.01",
                 "--epochs", "1", "--quiet", "--data-dir", mnist_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.stdout and "epoch 1/1" in result.stdout


# --------------------------------------------------------------------------- predict


def digit_variants(digit: np.ndarray, tmp_path: Path) -> list[Path]:
    """One MNIST digit (28x28 uint8, white on black) drawn the ways users photograph digits."""
    white_on_black = Image.fromarray(digit)
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []

    def save(image: Image.Image, name: str) -> None:
        paths.append(tmp_path / name)
        image.save(paths[-1])

    big = white_on_black.resize((112, 112), Image.BICUBIC)
    save(Image.fromarray(255 - np.asarray(big)), "dark_on_white.png")
    save(big, "white_on_black.png")
    canvas = Image.new("L", (600, 400), 255)
    canvas.paste(Image.fromarray(255 - np.asarray(big)), (430, 40))
    save(canvas, "large_off_centre.png")
    rgba = Image.new("RGBA", big.size, (0, 0, 0, 0))
    rgba.putalpha(big)  # black ink, opaque where the digit is, transparent elsewhere
    save(rgba, "transparent.png")
    save(Image.fromarray(255 - np.asarray(big)).convert("RGB"), "photo.jpg")
    return paths


@lesson12
def test_predict_reads_digits_however_they_are_drawn(trained, mnist_test, tmp_path):
    out, _ = trained
    images, labels = mnist_test
    for index in (0, 1, 2):  # a 7, a 2 and a 1: clear digits the small net gets right
        paths = digit_variants(images[index], tmp_path / str(index))
        result = run("predict", out / "best.npz", *paths, "--json")
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert [Path(r["image"]).name for r in rows] == [p.name for p in paths]
        for row in rows:
            assert row["digit"] == labels[index], row
            assert abs(sum(row["probabilities"]) - 1) < 1e-4
    text = run("predict", out / "best.npz", tmp_path / "0" / "photo.jpg")
    assert text.exit_code == 0 and "photo.jpg: 7" in text.stdout


@lesson12
def test_predict_kaggle_writes_a_submission(trained, mnist_test, tmp_path):
    out, _ = trained
    images, _ = mnist_test
    csv = tmp_path / "test.csv"
    header = ",".join(f"pixel{i}" for i in range(784))
    rows = "\n".join(",".join(map(str, im.ravel())) for im in images[:50])
    csv.write_text(header + "\n" + rows + "\n")
    submission = tmp_path / "submission.csv"
    result = run("predict", out / "best.npz", "--kaggle", csv, "--output", submission)
    assert result.exit_code == 0, result.output
    lines = submission.read_text().splitlines()
    assert lines[0] == "ImageId,Label" and len(lines) == 51
    assert lines[1].startswith("1,")


# --------------------------------------------------------------------------- refusals


@lesson12
def test_predict_refusals_leave_files_alone(trained, tmp_path):
    out, _ = trained
    checkpoint = out / "best.npz"
    before = checkpoint.read_bytes()
    text_file = tmp_path / "notes.png"
    text_file.write_text("not an image")
    assert_one_line_error(run("predict", checkpoint, text_file), "notes.png")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    assert_one_line_error(run("predict", checkpoint, empty), "empty.png")
    tiny = tmp_path / "tiny.png"
    Image.new("L", (1, 1), 0).save(tiny)
    assert_one_line_error(run("predict", checkpoint, tiny), "tiny.png", "too small")
    csv = tmp_path / "test.csv"
    csv.write_text(",".join(f"pixel{i}" for i in range(784)) + "\n" + ",".join(["0"] * 783))
    submission = tmp_path / "submission.csv"
    submission.write_text("keep me")
    result = run("predict", checkpoint, "--kaggle", csv, "--output", submission, "--overwrite")
    assert_one_line_error(result, "test.csv", "783")
    assert submission.read_text() == "keep me"
    assert checkpoint.read_bytes() == before


def test_bad_checkpoints_are_refused(trained, tmp_path, mnist_dir):
    out, _ = trained
    good = (out / "best.npz").read_bytes()
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(good[: len(good) // 2])
    assert_one_line_error(run("evaluate", truncated, "--data-dir", mnist_dir), "truncated.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"\x00" * 100)
    assert_one_line_error(run("predict", garbage, tmp_path / "x.png"), "garbage.npz")
    missing = tmp_path / "missing.npz"
    assert_one_line_error(run("evaluate", missing, "--data-dir", mnist_dir), "missing.npz")
    result = run("evaluate", out / "best.npz", "--model", "lenet", "--data-dir", mnist_dir)
    assert_one_line_error(result, "lenet", "default")


@lesson05
@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--milestones", "five"], ["--milestones"]),
        (["--recipe", "fastest"], ["fastest"]),
        (["--seed", "1.5"], ["--seed"]),
        (["--lr", ""], ["--lr"]),
    ],
)
def test_bad_flags_are_usage_errors(flags, phrases):
    assert_usage_error(run("train", *flags), *phrases)


@pytest.fixture
def no_training(monkeypatch):
    """Make reaching the training loop a failure: these refusals must come before it."""

    def refuse(*args, **kwargs):
        raise AssertionError("the options were accepted and training started")

    monkeypatch.setattr(scratchcnn.train, "train", refuse)


HUGE = "18446744073709551616"  # 2**64: wider than any integer NumPy or JAX takes


@lesson05
@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--epochs", "0"], ["--epochs", "from 1 to 10000", "got 0"]),
        (["--epochs", "99999999999999999999"], ["--epochs", "99999999999999999999"]),
        (["--batch-size", "0"], ["--batch-size"]),
        (["--batch-size", HUGE], ["--batch-size", HUGE]),
        (["--eval-batch-size", "-1"], ["--eval-batch-size"]),
        (["--train-limit", "0"], ["--train-limit"]),
        (["--test-limit", "10001"], ["--test-limit", "10000"]),
        (["--early-stopping", HUGE], ["--early-stopping"]),
        (["--plateau", "0"], ["--plateau "]),
        (["--adversarial-steps", "0"], ["--adversarial-steps"]),
        (["--seed", "-1"], ["--seed", "0 to 4294967295", "got -1"]),
        (["--seed", HUGE], ["--seed", HUGE]),
        (["--seed", "4294967296"], ["--seed"]),
        (["--lr", "nan"], ["--lr", "finite", "nan"]),
        (["--learning-rate", "inf"], ["--lr", "inf"]),
        (["--lr", "1e400"], ["--lr", "inf"]),
        (["--lr", "-1"], ["--lr"]),
        (["--gamma", "nan"], ["--gamma"]),
        (["--weight-decay", "inf"], ["--weight-decay"]),
        (["--weight-decay", "nan"], ["--weight-decay"]),
        (["--clip-norm", "inf"], ["--clip-norm"]),
        (["--clip-norm", "0"], ["--clip-norm"]),
        (["--label-smoothing", "nan"], ["--label-smoothing"]),
        (["--val-fraction", "-inf"], ["--val-fraction"]),
        (["--plateau-factor", "nan"], ["--plateau-factor"]),
        (["--adversarial-eps", "nan"], ["--adversarial-eps"]),
        (["--adversarial-eps", "1.5"], ["--adversarial-eps"]),
        (["--warmup-epochs", "nan"], ["--warmup-epochs", "nan"]),
        (["--schedule", "constant", "--warmup-epochs", "inf"], ["--warmup-epochs", "inf"]),
        (["--schedule", "cosine", "--warmup-epochs", "3"], ["--warmup-epochs", "longer"]),
        (["--warmup-epochs", "1"], ["--warmup-epochs", "one_cycle"]),
        (["--milestones", "-1"], ["--milestones", "-1"]),
        (["--milestones", "5,3"], ["--milestones", "increase", "5,3"]),
        (["--milestones", ",".join(["1"] * 10_000)], ["--milestones", "10000 values"]),
        (["--schedule", "milestones", "--milestones", "2"], ["--milestones", "--epochs 2"]),
        (["--recipe", "lenet", "--epochs", "3"], ["--milestones", "--epochs 3"]),
        (
            [
                "--schedule",
                "milestones",
                "--epochs",
                "5",
                "--warmup-epochs",
                "3",
                "--milestones",
                "2",
            ],
            ["--milestones", "--warmup-epochs 3"],
        ),  # fmt: skip
        (["--val-fraction", "0", "--plateau", "2"], ["--plateau", "--val-fraction"]),
        (["--val-fraction", "1e-9"], ["--val-fraction", "holds out 0"]),
        (["--val-fraction", "0.999999"], ["--val-fraction", "holds out 60000"]),
        (["--init", ""], ["--init"]),
        (["--model", ""], ["unknown architecture ''"]),
        (["--optimizer", ""], ["unknown optimizer ''"]),
    ],
)
def test_hostile_flag_values_are_one_line(no_training, flags, phrases):
    """Values the flag parser lets through (NaN, inf, huge, negative, empty) are refused with
    one sentence naming the flag, before any data is read."""
    assert_one_line_error(run("train", *flags), *phrases)


@lesson05
@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--resume", "--overwrite", "--output", "somewhere"], ["--resume", "--overwrite"]),
        (["--overwrite"], ["--overwrite", "--output"]),
        (["--resume"], ["--resume", "--output"]),
    ],
)
def test_resume_and_overwrite_need_an_output_folder_and_exclude_each_other(flags, phrases):
    assert_one_line_error(run("train", *flags), *phrases)
    assert not Path("somewhere").exists()


@lesson05
def test_the_library_refuses_what_the_command_line_refuses():
    """TrainConfig.validate and the optimizers check values for library callers too."""
    with pytest.raises(ConfigError, match="--seed"):
        TrainConfig(seed=2**64).validate()
    with pytest.raises(ConfigError, match="--epochs"):
        TrainConfig(epochs=2.5).validate()
    for value in (float("inf"), float("nan")):
        with pytest.raises(ConfigError, match="learning_rate"):
            optim.make_optimizer("adam", value)
        with pytest.raises(ConfigError, match="weight_decay"):
            optim.make_optimizer("sgd", 0.1, weight_decay=value)


@lesson05
def test_the_json_summary_has_null_for_nan(monkeypatch):
    """JSON has no NaN: a diverged run's NaN test loss is printed as null."""

    class Diverged:
        def summary(self):
            return {"test_loss": float("nan"), "history": [{"loss": float("inf")}]}

    monkeypatch.setattr(scratchcnn.train, "train", lambda *args, **kwargs: Diverged())
    result = run("train", "--json")
    assert result.exit_code == 0, result.output

    def no_constants(name):
        raise AssertionError(f"{name} is not JSON")

    summary = json.loads(result.stdout, parse_constant=no_constants)
    assert summary == {"test_loss": None, "history": [{"loss": None}]}


@lesson05
def test_overwrite_replaces_the_run(trained, mnist_dir, tmp_path):
    """--overwrite trains into a folder holding a run, replacing its files."""
    out, _ = trained
    shutil.copytree(out, tmp_path / "run")
    before = (tmp_path / "run" / "last.npz").read_bytes()
    result = run("train", "--model", "lenet", "--train-limit", "256", "--test-limit", "100",
                 "--val-fraction", "0.01", "--epochs", "1", "--quiet", "--data-dir", mnist_dir,
                 "--output", tmp_path / "run", "--overwrite", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "last.npz").read_bytes() != before
    assert json.loads(result.stdout)["config"]["model"] == "lenet"


@lesson05
def test_unknown_architecture_is_one_line(mnist_dir):
    result = run("train", "--model", "resnet9000", "--data-dir", mnist_dir)
    assert_one_line_error(result, "resnet9000", "lenet")


@lesson05
def test_resume_refusals_keep_the_run(trained, mnist_dir):
    out, _ = trained
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run("train", *QUICK, "--data-dir", mnist_dir, "--output", out)
    assert_one_line_error(result, "already holds a run")
    result = run("train", *QUICK, "--model", "lenet", "--data-dir", mnist_dir, "--output", out,
                 "--resume", "--backend", "jax")  # fmt: skip
    assert_one_line_error(result, "model", "lenet")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@lesson05
def test_missing_data_is_one_line(tmp_path, isolated_mnist_search, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("no network in this test")

    monkeypatch.setattr(tfds, "data_source", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    result = run("train", *QUICK, "--data-dir", tmp_path / "nowhere", "--output", tmp_path / "o")
    assert_one_line_error(result, "nowhere")
    assert not (tmp_path / "o" / "last.npz").exists()


@pytest.mark.parametrize(
    "command",
    [
        pytest.param("train", marks=lesson05),
        pytest.param("evaluate", marks=lesson06),
        pytest.param("predict", marks=lesson12),
    ],
)
def test_help_shows_examples(command):
    result = run(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout


@lesson05
def test_train_has_a_flag_for_every_config_field():
    """The train options are made from TrainConfig: each field's flags and help text (its
    limits: test_hostile_flag_values_are_one_line)."""
    options = {p.name: p for p in typer.main.get_command(app).commands["train"].params}
    for field in dataclasses.fields(TrainConfig):
        option = options[field.name]
        assert option.help == field.metadata["help"], field.name
        assert option.default is None  # None: the recipe's value
        expected = field.metadata["flags"] or ("--" + field.name.replace("_", "-"),)
        assert tuple(option.opts) == expected
    assert options["learning_rate"].opts == ["--lr", "--learning-rate"]
    help_text = run("train", "--help").stdout
    assert "--adversarial-eps" in help_text and "--plateau-factor" in help_text


@lesson05
def test_train_flags_reach_the_config(mnist_dir):
    """Every kind of flag (int, float, None-able, comma-separated, an alias) lands in the
    config the run records; the others keep the recipe's values."""
    result = run("train", "--model", "lenet", "--train-limit", "256", "--test-limit", "100",
                 "--epochs", "2", "--learning-rate", "0.002", "--schedule", "milestones",
                 "--milestones", "1", "--gamma", "0.5", "--plateau", "1", "--plateau-factor",
                 "0.25", "--clip-norm", "1.5", "--backend", "numpy", "--data-dir", mnist_dir,
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    config = json.loads(result.stdout)["config"]
    given = {"model": "lenet", "train_limit": 256, "test_limit": 100, "epochs": 2,
             "learning_rate": 0.002, "schedule": "milestones", "milestones": [1], "gamma": 0.5,
             "plateau_patience": 1, "plateau_factor": 0.25, "clip_norm": 1.5,
             "backend": "numpy"}  # fmt: skip
    assert config == {**RECIPES["default"].to_json(), **given}


@lesson05
@pytest.mark.slow  # 34 s, in the group of tests that share one trained run
def test_init_fine_tunes_from_a_checkpoint(trained, mnist_dir, tmp_path):
    """--init starts from the checkpoint's weights: one more epoch at a tiny learning rate
    keeps its accuracy (fresh weights would start near 10%) and barely moves a weight."""
    out, summary = trained
    result = run("train", *QUICK, "--backend", "jax", "--lr", "1e-7", "--init",
                 out / "best.npz", "--data-dir", mnist_dir, "--output", tmp_path / "ft",
                 "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    tuned = json.loads(result.stdout)
    assert tuned["config"]["init_from"] == str(out / "best.npz")
    assert abs(tuned["test_accuracy"] - summary["test_accuracy"]) <= 0.005
    before = np.load(out / "best.npz")
    after = np.load(tmp_path / "ft" / "last.npz")
    kernels = [k for k in before.files if k.startswith("params/") and k.endswith("kernel")]
    assert kernels
    for key in kernels:
        np.testing.assert_allclose(after[key], before[key], atol=1e-4)


@lesson05
def test_init_refuses_a_checkpoint_of_another_network(trained, mnist_dir, tmp_path):
    out, _ = trained
    result = run("train", *QUICK, "--model", "lenet", "--init", out / "best.npz",
                 "--data-dir", mnist_dir, "--output", tmp_path / "ft")  # fmt: skip
    assert_one_line_error(result, "best.npz", "'default'", "'lenet'")
    assert not (tmp_path / "ft").exists()
    missing = run("train", *QUICK, "--init", tmp_path / "nope.npz", "--data-dir", mnist_dir)
    assert_one_line_error(missing, "nope.npz")
