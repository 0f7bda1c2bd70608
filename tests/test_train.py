"""The training loop: NumPy step == jitted step, resume == uninterrupted, callbacks, files."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchcnn import attacks, models, optim
from scratchcnn.checkpoint import load_checkpoint
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.gradcheck import relative_error
from scratchcnn.layers import BatchNorm, Conv, Dense, Flatten, MaxPool, ReLU, Sequential
from scratchcnn.ops.losses import softmax_cross_entropy_forward
from scratchcnn.optim import ConfigError
from scratchcnn.train import RECIPES, ResumeError, TrainConfig, make_train_step, train
from scratchcnn.train.data import batches
from scratchcnn.train.loop import after_epoch
from scratchcnn.train.runs import RunState

pytestmark = pytest.mark.lesson05

# Small runs: a few hundred real training images, so each run takes a second or two.
TINY = TrainConfig(
    model="lenet",
    epochs=3,
    batch_size=64,
    train_limit=384,
    val_fraction=0.01,
    test_limit=500,
    seed=3,
)


class Interrupt(Exception):
    """Raised from the log callback: the run 'crashes' right after an epoch is saved."""


def crash_after(epochs: int):
    seen = []

    def log(line: str) -> None:
        seen.append(line)
        if len(seen) == epochs:
            raise Interrupt

    return log


def assert_trees_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_trees_equal(a[key], b[key])
        else:
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in ("seconds", "images_per_second")}
            for h in history]  # fmt: skip


# --------------------------------------------------------------------------- the step


def bn_net_without_dropout() -> Sequential:
    """Conv + BatchNorm + pool + dense: every op of the default net, minus dropout masks
    (NumPy and JAX draw different masks, so dropout cannot be compared step by step)."""
    return Sequential([
        Conv(8, 3, use_bias=False), BatchNorm(), ReLU(), MaxPool(2),
        Flatten(), Dense(16), ReLU(), Dense(10),
    ])  # fmt: skip


def test_jitted_step_equals_numpy_step(mnist_train):
    """The same hand-written step, on NumPy and compiled by jax.jit, 5 Adam steps."""
    model = bn_net_without_dropout()
    optimizer = optim.Adam(1e-2)
    step = make_train_step(model, optimizer, label_smoothing=0.1)
    jitted = jax.jit(step)
    images, labels = mnist_train
    params, state = model.init(0)
    opt_state = optimizer.init(params)
    jp, js, jo = (jax.tree.map(jnp.asarray, t) for t in (params, state, opt_state))
    for i in range(5):
        x = (images[i * 32 : (i + 1) * 32, ..., None] / np.float32(255)).astype(np.float32)
        y = labels[i * 32 : (i + 1) * 32].astype(np.int32)
        params, state, opt_state, loss, accuracy = step(params, state, opt_state, x, y, None)
        jp, js, jo, jloss, jaccuracy = jitted(jp, js, jo, jnp.asarray(x), jnp.asarray(y), None)
        assert abs(float(loss) - float(jloss)) <= 1e-5 * abs(float(loss))
        assert float(accuracy) == float(jaccuracy)
    for name in params:
        for key in params[name]:
            assert params[name][key].dtype == np.float32
            assert relative_error(params[name][key], np.asarray(jp[name][key])) < 1e-4, name
    for name in state:
        for key in state[name]:
            assert relative_error(state[name][key], np.asarray(js[name][key])) < 1e-5


@pytest.mark.parametrize("adversarial", [None, "fgsm"])
def test_the_step_standardizes_unit_images_itself(mnist_train, adversarial):
    """The step takes images in [0, 1], with or without adversarial training: its loss is
    the network's loss on the standardized batch (the attacked one when adversarial)."""
    model = bn_net_without_dropout()
    optimizer = optim.SGD(0.1)
    attack = TrainConfig(adversarial=adversarial or "none", adversarial_eps=0.1)
    step = make_train_step(model, optimizer, adversarial=attack.adversarial_training())
    images, labels = mnist_train
    x = (images[:16, ..., None] / np.float32(255)).astype(np.float32)
    y = labels[:16].astype(np.int32)
    params, state = model.init(0)
    _, _, _, loss, _ = step(params, state, optimizer.init(params), x, y, np.random.default_rng(1))
    if adversarial:  # the same attack, from the same random start
        x, y = attacks.training_batch(model, params, state, x, y, np.random.default_rng(1),
                                      attack.adversarial_training())  # fmt: skip
    logits, _, _ = model.forward(params, state, standardize_unit(x), train=True)
    expected, _ = softmax_cross_entropy_forward(logits, y)
    assert float(loss) == float(expected)


def test_batches_cover_every_index_once():
    rng = np.random.default_rng(0)
    seen = np.concatenate(list(batches(103, 10, rng)))
    assert sorted(seen.tolist()) == list(range(103))
    assert [len(b) for b in batches(103, 10, np.random.default_rng(0))][-1] == 3


# --------------------------------------------------------------------------- runs


def test_training_learns(mnist_dir):
    """Loss falls and accuracy beats chance by far, on 2,000 images in 2 epochs."""
    config = dataclasses.replace(TINY, model="default", train_limit=2000, epochs=2)
    result = train(config, data_dir=mnist_dir, progress=False, log=lambda s: None)
    history = result.history
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert result.test.accuracy > 0.85
    assert len(history) == 2 and all("val_accuracy" in h for h in history)


@pytest.mark.parametrize("backend", ["numpy", "jax"])
def test_resume_equals_uninterrupted(mnist_dir, tmp_path, backend):
    """Crash after epoch 1, resume: the final weights equal an uninterrupted run's, bit for bit."""
    config = dataclasses.replace(TINY, backend=backend, augment="elastic", label_smoothing=0.1)
    whole = train(config, data_dir=mnist_dir, output_dir=tmp_path / "whole", progress=False,
                  log=lambda s: None)  # fmt: skip
    with pytest.raises(Interrupt):
        train(config, data_dir=mnist_dir, output_dir=tmp_path / "cut", progress=False,
              log=crash_after(1))  # fmt: skip
    assert load_checkpoint(tmp_path / "cut" / "last.npz").info["epoch"] == 1
    resumed = train(config, data_dir=mnist_dir, output_dir=tmp_path / "cut", resume=True,
                    progress=False, log=lambda s: None)  # fmt: skip
    assert_trees_equal(whole.params, resumed.params)
    assert_trees_equal(whole.state, resumed.state)
    assert without_timings(whole.history) == without_timings(resumed.history)
    last_whole = load_checkpoint(tmp_path / "whole" / "last.npz")
    last_cut = load_checkpoint(tmp_path / "cut" / "last.npz")
    assert_trees_equal(last_whole.opt_state, last_cut.opt_state)


def test_checkpoints_and_history_are_written(mnist_dir, tmp_path):
    result = train(TINY, data_dir=mnist_dir, output_dir=tmp_path, progress=False,
                   log=lambda s: None)  # fmt: skip
    last = load_checkpoint(tmp_path / "last.npz")
    best = load_checkpoint(tmp_path / "best.npz")
    assert last.info["epoch"] == TINY.epochs
    assert best.info["epoch"] == result.best_epoch
    assert last.model_name == "lenet"
    assert set(last.info["data_sha256"]) == {
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    }
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["test_accuracy"] == result.test.accuracy
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3]
    # The returned (and evaluated) weights are the best epoch's.
    assert_trees_equal(result.params, best.params)


def test_early_stopping_restores_the_best_epoch(mnist_dir, tmp_path):
    """A learning rate far too high makes the val loss rise: the run stops, keeps the best."""
    config = dataclasses.replace(TINY, epochs=8, learning_rate=0.5, schedule="constant",
                                 early_stopping=1, optimizer="sgd")  # fmt: skip
    result = train(config, data_dir=mnist_dir, output_dir=tmp_path, progress=False,
                   log=lambda s: None)  # fmt: skip
    losses = [h["val_loss"] for h in result.history]
    best = int(np.argmin(losses)) + 1
    assert result.stopped_early and len(result.history) < 8
    assert result.best_epoch == best == len(result.history) - 1
    assert_trees_equal(result.params, load_checkpoint(tmp_path / "best.npz").params)


def test_keep_last_ends_with_the_last_epoch_and_resumes(mnist_dir, tmp_path):
    """--keep last: the result and best.npz hold the final epoch's weights even when an
    earlier epoch had the lower validation loss; a run cut short resumes to the same end."""
    config = dataclasses.replace(TINY, epochs=5, learning_rate=0.5, schedule="constant",
                                 optimizer="sgd", keep="last")  # fmt: skip
    result = train(config, data_dir=mnist_dir, output_dir=tmp_path / "whole", progress=False,
                   log=lambda s: None)  # fmt: skip
    losses = [h["val_loss"] for h in result.history]
    assert int(np.argmin(losses)) + 1 < len(losses)  # "best" would have kept an earlier one
    assert result.best_epoch == len(result.history) == 5
    last = load_checkpoint(tmp_path / "whole" / "last.npz")
    assert last.info["best_epoch"] == 5  # the checkpoint names the epoch it keeps
    assert_trees_equal(result.params, last.params)
    assert_trees_equal(load_checkpoint(tmp_path / "whole" / "best.npz").params, last.params)
    with pytest.raises(Interrupt):
        train(config, data_dir=mnist_dir, output_dir=tmp_path / "cut", progress=False,
              log=crash_after(2))  # fmt: skip
    resumed = train(config, data_dir=mnist_dir, output_dir=tmp_path / "cut", resume=True,
                    progress=False, log=lambda s: None)  # fmt: skip
    assert_trees_equal(result.params, resumed.params)
    assert resumed.best_epoch == 5


def test_reduce_on_plateau_lowers_the_learning_rate(mnist_dir):
    config = dataclasses.replace(TINY, epochs=4, learning_rate=0.5, schedule="constant",
                                 plateau_patience=1, optimizer="sgd")  # fmt: skip
    result = train(config, data_dir=mnist_dir, progress=False, log=lambda s: None)
    lrs = [h["lr"] for h in result.history]
    worse = [b["val_loss"] >= a["val_loss"] for a, b in zip(result.history, result.history[1:])]
    assert lrs[0] == pytest.approx(0.5)
    if any(worse):  # after the first epoch that did not improve, lr is halved
        first = worse.index(True) + 2
        assert lrs[first] == pytest.approx(0.25)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("change", "phrase"),
    [
        ({"epochs": 0}, "--epochs must be an integer from 1"),
        ({"batch_size": 0}, "--batch-size must be an integer from 1"),
        ({"model": "resnet9000"}, "unknown architecture 'resnet9000'"),
        ({"backend": "torch"}, "unknown backend"),
        ({"augment": "mixup"}, "unknown augmentation"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"val_fraction": 0.0, "early_stopping": 2}, "need a validation fraction"),
        ({"keep": "Last"}, "unknown --keep 'Last'"),
        ({"keep": "last", "early_stopping": 2}, "use --keep best with it"),
        ({"optimizer": "adagrad"}, "adagrad"),
        ({"adversarial": "free"}, "unknown adversarial training"),
        ({"adversarial": "pgd", "adversarial_eps": 0.0}, "--adversarial-eps"),
    ],
)
def test_bad_options_are_refused(mnist_dir, change, phrase):
    with pytest.raises(ConfigError, match=phrase):
        train(dataclasses.replace(TINY, **change), data_dir=mnist_dir, progress=False)


def test_resume_refuses_other_options(mnist_dir, tmp_path):
    train(dataclasses.replace(TINY, epochs=1), data_dir=mnist_dir, output_dir=tmp_path,
          progress=False, log=lambda s: None)  # fmt: skip
    before = (tmp_path / "last.npz").read_bytes()
    with pytest.raises(ResumeError, match="model"):
        train(dataclasses.replace(TINY, epochs=1, model="flax_cnn"), data_dir=mnist_dir,
              output_dir=tmp_path, resume=True, progress=False)  # fmt: skip
    with pytest.raises(ResumeError, match="already holds a run"):
        train(TINY, data_dir=mnist_dir, output_dir=tmp_path, progress=False)
    assert (tmp_path / "last.npz").read_bytes() == before


def test_every_recipe_is_valid():
    for name, config in RECIPES.items():
        assert config.validate() is config, name
        assert config.model in models.MODELS


def test_an_adversarial_run_keeps_its_most_robust_epoch():
    """With --adversarial the best epoch has the lowest loss on the attacked validation
    images, even where the clean loss says otherwise (TRADES trades clean loss away)."""
    run = RunState(params={}, state={}, opt_state={})
    config = dataclasses.replace(TINY, adversarial="trades")
    records = [{"val_loss": 0.05, "val_robust_loss": 0.9},  # clean best, least robust
               {"val_loss": 0.08, "val_robust_loss": 0.4},  # the most robust
               {"val_loss": 0.07, "val_robust_loss": 0.6}]  # fmt: skip
    best = []
    for record in records:
        run.epoch += 1  # as the loop counts: epochs finished
        if after_epoch(run, record, config, plateau=None):
            best.append(run.epoch)
    assert best == [1, 2] and run.best_epoch == 2


def test_adversarial_training_records_robust_validation(mnist_dir, tmp_path):
    """Each epoch of an adversarial run measures the validation images under the training
    attack; best.npz holds the epoch with the lowest attacked loss."""
    config = dataclasses.replace(TINY, adversarial="pgd", adversarial_eps=0.3,
                                 adversarial_steps=2, val_fraction=0.005)  # fmt: skip
    result = train(config, data_dir=mnist_dir, output_dir=tmp_path, progress=False,
                   log=lambda s: None)  # fmt: skip
    robust = [h["val_robust_loss"] for h in result.history]
    assert all(h["val_robust_accuracy"] < h["val_accuracy"] for h in result.history)
    assert result.best_epoch == int(np.argmin(robust)) + 1
    assert_trees_equal(result.params, load_checkpoint(tmp_path / "best.npz").params)
