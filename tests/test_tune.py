"""Lesson 18: hyperparameter search (scratchcnn tune), recipe files, networks with options."""

import json
import re

import jax
import numpy as np
import optuna
import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import models, tune
from scratchcnn.checkpoint import load_for_model, save_checkpoint
from scratchcnn.layers import count_params
from scratchcnn.parity import compare_network, randomized
from scratchcnn.train import RECIPES, TrainConfig

pytestmark = pytest.mark.lesson18

BASE = RECIPES["default"]
# A few seconds per trial: 100 images, one epoch, 300 validation images, NumPy.
TINY = ["--epochs", "1", "--train-limit", "100", "--val-fraction", "0.005"]
SMALL_SPACE = {"learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
               "width": {"low": 0.25, "high": 0.5}}  # fmt: skip


# --------------------------------------------------------------------------- networks


def default_count(c1: int, c2: int, hidden: int) -> int:
    """The default network's parameters, layer by layer: conv kernels (no bias), BatchNorm
    scale and shift, the dense head with biases."""
    convs = 3 * 3 * 1 * c1 + 2 * c1 + 3 * 3 * c1 * c2 + 2 * c2
    return convs + 7 * 7 * c2 * hidden + hidden + hidden * 10 + 10


@pytest.mark.parametrize(
    "name, channels",
    [("default", (32, 64, 256)), ("default(width=1.5,dropout=0.2)", (48, 96, 384)),
     ("default(width=0.5)", (16, 32, 128)), ("default(dropout=0)", (32, 64, 256))],
)  # fmt: skip
def test_width_scales_every_layer(name, channels):
    params, _ = models.build(name).init(0)
    assert count_params(params) == default_count(*channels)


def test_dropout_option_sets_the_rate():
    rates = [layer.rate for layer in models.build("default(dropout=0.2)").layers
             if type(layer).__name__ == "Dropout"]  # fmt: skip
    assert rates == [0.2]


def test_the_plain_name_builds_the_network_as_before():
    assert repr(models.build("default").layers) == repr(models.build("default(width=1)").layers)


@pytest.mark.parametrize(
    "name, phrase",
    [("default(depth=2)", "not 'depth'"), ("default(width=wide)", "must be a number"),
     ("default(width=9)", "width must be"), ("default(dropout=1)", "dropout in [0, 1)"),
     ("lenet(width=2)", "no options"), ("nonet", "unknown architecture")],
)  # fmt: skip
def test_bad_network_names_are_refused(name, phrase):
    with pytest.raises(models.UnknownModelError, match=re.escape(phrase)):
        models.build(name)
    with pytest.raises(Exception, match="architecture|width|dropout"):
        TrainConfig(model=name).validate()


def test_a_checkpoint_rebuilds_its_network_by_name(tmp_path):
    name = "default(width=0.5,dropout=0.1)"
    model = models.build(name)
    params, state = model.init(3)
    path = save_checkpoint(tmp_path / "w.npz", model_name=name, model=model, params=params,
                           state=state)  # fmt: skip
    rebuilt, ckpt = load_for_model(path)
    assert ckpt.model_name == name
    assert repr(rebuilt.layers) == repr(model.layers)
    np.testing.assert_array_equal(ckpt.params["conv1"]["kernel"], params["conv1"]["kernel"])
    with pytest.raises(Exception, match="not for 'default'"):
        load_for_model(path, "default")


@pytest.mark.slow  # Flax compiles the float64 twin: about 10 CPU-seconds
def test_a_wider_network_matches_its_flax_twin():
    """Forward and every gradient equal to Flax's, as for the registered networks."""
    x = np.random.default_rng(0).standard_normal((4, 28, 28, 1))
    model = models.build("default(width=0.75,dropout=0.2)")
    params, state = model.init(0, dtype=np.float64)
    state = randomized(state, np.random.default_rng(1))
    diffs = compare_network(model, params, state, x, train=True, key=jax.random.key(7),
                            loss_labels=np.arange(4))  # fmt: skip
    assert max(diffs.values()) <= 1e-10, diffs


# --------------------------------------------------------------------------- search space


def test_the_default_space_is_valid():
    assert tune.check_space(tune.SPACE, BASE) is tune.SPACE


@pytest.mark.parametrize(
    "space, phrase",
    [({}, "empty"), ([], "empty"), ({"lr": {"low": 1, "high": 2}}, "names 'lr'"),
     ({"learning_rate": {"low": 0.1, "high": 0.01}}, "low 0.1 is above high 0.01"),
     ({"weight_decay": {"low": 0, "high": 0.1, "log": True}}, "low must be above 0"),
     ({"batch_size": {"choices": []}}, "no choices"),
     ({"batch_size": {"choices": [32, 32]}}, "distinct"),
     ({"batch_size": {"low": 1.5, "high": 8}}, "int low and high"),
     ({"augment": {"low": 0, "high": 1}}, "str low and high"),
     ({"dropout": {"low": 0.0}}, "must be {'low'"),
     ({"dropout": {"low": 0.1, "high": 1.0}}, "dropout = 1.0 cannot train"),
     ({"label_smoothing": {"low": 0.0, "high": 1.0}}, "label_smoothing = 1.0"),
     ({"batch_size": {"choices": [0, 32]}}, "batch_size = 0"),
     ({"augment": {"choices": ["none", "wobbly"]}}, "unknown augmentation 'wobbly'"),
     ({"width": {"low": 0.5, "high": 8}}, "width = 8")],
)  # fmt: skip
def test_bad_search_spaces_are_refused(space, phrase):
    with pytest.raises(tune.TuneError, match=re.escape(phrase)):
        tune.check_space(space, BASE)


def test_trial_values_go_into_the_config_and_the_model_name():
    config = tune.trial_config(
        TrainConfig(model="default(dropout=0.1)"),
        {"width": 1.23456, "learning_rate": 0.01, "augment": "affine"},
    )
    assert config.model == "default(dropout=0.1,width=1.235)"
    assert (config.learning_rate, config.augment) == (0.01, "affine")


# --------------------------------------------------------------------------- recipe files


def test_a_recipe_file_round_trips(tmp_path):
    config = TrainConfig(model="default(width=0.5)", milestones=(1, 2), clip_norm=1.0)
    tune.write_recipe(tmp_path / "r.json", config)
    assert tune.read_recipe(tmp_path / "r.json") == config
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    with pytest.raises(Exception, match="already exists"):
        tune.write_recipe(tmp_path / "r.json", config)


@pytest.mark.parametrize(
    "text, phrase",
    [('{"lr": 0.1}', "unknown options: lr"), ('{"epochs": 1.5}', "epochs must be an integer"),
     ('{"epochs": true}', "epochs must be an integer"),
     ('{"learning_rate": "fast"}', "learning_rate must be a number"),
     ('{"clip_norm": "x"}', "clip_norm must be a number or null"),
     ('{"milestones": [1, "2"]}', "milestones must be a list"),
     ('{"learning_rate": -1}', "--lr must be a finite number above 0"),
     ("[1, 2]", "JSON object"), ("{not json", "is not JSON")],
)  # fmt: skip
def test_bad_recipe_files_are_refused(tmp_path, text, phrase):
    path = tmp_path / "recipe.json"
    path.write_text(text)
    with pytest.raises(Exception, match=re.escape(phrase)):
        tune.read_recipe(path)
    assert_one_line_error(run("train", "--recipe", path), phrase)


# --------------------------------------------------------------------------- the command


@pytest.fixture
def space_file(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SMALL_SPACE))
    return path


@pytest.mark.parametrize(
    "args, phrase",
    [(["--n-trials", "0"], "--n-trials must be from 1"),
     (["--space", "EMPTY"], "search space is empty"),
     (["--space", "CONTRADICTORY"], "range is empty"),
     (["--storage", "missing/study.db"], "missing does not exist"),
     (["--sampler", "grid"], "unknown sampler"), (["--pruner", "median"], "unknown pruner"),
     (["--val-fraction", "0"], "validation images"), (["--epochs", "0"], "--epochs must be"),
     (["--seed", "-1"], "--seed must be from 0"),
     (["--storage", "NOT_A_STUDY"], "cannot open the study")],
)  # fmt: skip
def test_tune_refuses_bad_input_and_writes_nothing(tmp_path, mnist_dir, args, phrase):
    spaces = {"EMPTY": {}, "CONTRADICTORY": {"dropout": {"low": 0.5, "high": 0.1}}}
    for name, space in spaces.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(space))
    args = [str(tmp_path / f"{a}.json") if a in spaces else a for a in args]
    args = [str(tmp_path / a) if a.startswith("missing") else a for a in args]
    (tmp_path / "NOT_A_STUDY").write_text("not a database")
    args = [str(tmp_path / a) if a == "NOT_A_STUDY" else a for a in args]
    before = set(tmp_path.iterdir())
    result = run("tune", *args, "--output", tmp_path / "out", "--data-dir", mnist_dir)
    assert_one_line_error(result, phrase)
    assert set(tmp_path.iterdir()) == before  # no study, no folder, no recipe


def test_a_continued_study_draws_new_trials():
    """The same --seed for a study that already holds trials must not draw them again."""

    def draws(sampler, n=3):
        study = optuna.create_study(sampler=sampler)
        study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1e-1, log=True), n_trials=n)
        return [t.params["lr"] for t in study.trials]

    fresh = draws(tune.make_sampler("random", 0))
    assert draws(tune.make_sampler("random", 0)) == fresh  # a seed is a seed
    continued = draws(tune.make_sampler("random", 0, trials_so_far=3))
    assert not set(continued) & set(fresh)


def test_tune_refuses_to_replace_a_recipe_before_any_trial(tmp_path, mnist_dir):
    (tmp_path / "recipe.json").write_text("{}")
    result = run("tune", "--output", tmp_path, "--data-dir", mnist_dir)
    assert_one_line_error(result, "already exists; pass --overwrite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.json"]


def test_a_tiny_search_writes_a_recipe_that_train_reads(tmp_path, mnist_dir, space_file):
    out = tmp_path / "search"
    result = run("tune", "--n-trials", 2, *TINY, "--space", space_file, "--output", out,
                 "--data-dir", mnist_dir, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["trials"] == 2 and 0 <= summary["best_val_accuracy"] <= 1
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["model"].startswith("default(width=")
    assert recipe["learning_rate"] == summary["best_params"]["learning_rate"]
    trained = run("train", "--recipe", out / "recipe.json", "--test-limit", 100,
                  "--data-dir", mnist_dir, "--json")  # fmt: skip
    assert trained.exit_code == 0, trained.output
    assert json.loads(trained.stdout)["config"]["model"] == recipe["model"]


@pytest.mark.slow  # three searches of a few trials: about 10 CPU-seconds
def test_a_stopped_search_continues_from_its_storage(tmp_path, mnist_dir, space_file):
    """Two trials, then a search killed mid-trial (a trial left RUNNING), then the same
    command with --n-trials 3: one more trial, in the same single study."""
    out = tmp_path / "search"
    args = [*TINY, "--space", space_file, "--output", out, "--data-dir", mnist_dir]
    assert run("tune", "--n-trials", 2, *args).exit_code == 0
    storage = f"sqlite:///{out / 'study.db'}"
    optuna.load_study(study_name="tune", storage=storage).ask()  # as a `kill -9` leaves it
    result = run("tune", "--n-trials", 3, *args, "--overwrite")
    assert result.exit_code == 0, result.output
    assert "continuing the study" in result.stdout and "2 trials finished" in result.stdout
    assert optuna.study.get_all_study_names(storage) == ["tune"]
    trials = optuna.load_study(study_name="tune", storage=storage).trials
    states = [t.state.name for t in trials]
    assert states.count("FAIL") == 1 and len(states) == 4
    assert trials[3].params not in [t.params for t in trials[:2]]  # drawn anew, not again
    assert states.count("COMPLETE") + states.count("PRUNED") == 3
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"dropout": {"low": 0.0, "high": 0.5}}))
    refused = run("tune", "--n-trials", 4, *TINY, "--space", other, "--output", out,
                  "--data-dir", mnist_dir, "--overwrite")  # fmt: skip
    assert_one_line_error(refused, "searched another space")
    refused = run("tune", "--n-trials", 4, *args, "--sampler", "random", "--overwrite")
    assert_one_line_error(refused, "another sampler or pruner")
