"""Transfer learning (lesson 17): the UCI digits prepared as MNIST, their fixed splits,
frozen layers, a smaller learning rate for the body, a new head, and resume's checks."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import sklearn
from cli_checks import assert_one_line_error, run

from scratchcnn import models, optim, pretrained
from scratchcnn.checkpoint import load_checkpoint
from scratchcnn.data.digits import TRAIN_DIGITS, held_out_test, load_digits, raw_digits
from scratchcnn.optim import ConfigError
from scratchcnn.train import ResumeError, TrainConfig, train
from scratchcnn.train import data as train_data
from scratchcnn.train.data import load_splits, per_class
from scratchcnn.train.loop import initial_weights
from scratchcnn.train.step import PerLayerScale

pytestmark = pytest.mark.lesson17

BODY = ("conv1", "batchnorm1", "conv2", "batchnorm2", "dense1")
# One epoch on 2 digits of each class: a few steps, in about a second.
TINY = TrainConfig(dataset="digits", per_class=2, epochs=1, batch_size=8, val_fraction=0.0)


def quiet_train(config, **kw):
    return train(config, progress=False, log=lambda line: None, **kw)


# --------------------------------------------------------------------------- the data


def test_digits_are_prepared_like_mnist():
    images, labels = load_digits()
    raw, target = raw_digits()
    assert images.shape == (1797, 28, 28) and images.dtype == np.float32
    assert raw.shape == (1797, 8, 8) and raw.max() == 16  # what scikit-learn ships
    np.testing.assert_array_equal(labels, target)
    assert images.min() == 0 and np.allclose(images.max(axis=(1, 2)), 1)
    # The ink fits MNIST's 20 x 20 box, and the border MNIST leaves black stays black.
    for image in images:
        rows = np.flatnonzero(image.any(axis=1))
        cols = np.flatnonzero(image.any(axis=0))
        assert rows[-1] - rows[0] < 20 and cols[-1] - cols[0] < 20
    # Centred by mass: a whole-pixel shift leaves each centre within half a pixel of 14.
    r, c = np.indices((28, 28))
    mass = images.sum(axis=(1, 2))
    for grid in (r, c):
        centre = (images * grid).sum(axis=(1, 2)) / mass
        assert np.abs(centre - 14).max() <= 0.5 + 1e-6


def test_prepared_digit_keeps_its_shape():
    """Shrunk back to 8 x 8, a prepared digit looks like its scan: the prepared images
    correlate far better with their own scans than with other digits' scans."""
    images, _ = load_digits()
    raw, _ = raw_digits()
    ink = images[:200].reshape(200, 28, 28)
    # the 20 x 20 box, roughly, averaged to 8 x 8 (the scan's grid): 24 x 24 -> 8 x 8
    small = ink[:, 2:26, 2:26].reshape(200, 8, 3, 8, 3).mean(axis=(2, 4)).reshape(200, -1)
    scans = raw[:200].reshape(200, -1)
    corr = np.corrcoef(small, scans)[:200, 200:]
    own = np.diag(corr)
    assert np.median(own) > 0.6
    assert (own > np.median(corr, axis=1)).mean() > 0.95


def test_test_split_is_fixed_and_apart_from_training():
    _, labels = load_digits()
    test = held_out_test(labels)
    np.testing.assert_array_equal(test, held_out_test(labels))
    assert np.bincount(labels[test]).tolist() == [50] * 10
    splits = load_splits(TrainConfig(dataset="digits", val_fraction=0.1, seed=5))
    other = load_splits(TrainConfig(dataset="digits", val_fraction=0.1, seed=6))
    np.testing.assert_array_equal(splits.test.images, other.test.images)  # not the seed's
    assert len(splits.train) + len(splits.val) == TRAIN_DIGITS == 1797 - 500
    seen = {image.tobytes() for image in (*splits.train.images, *splits.val.images)}
    assert not any(image.tobytes() in seen for image in splits.test.images)


def test_per_class_is_seeded_balanced_and_nested():
    labels = np.repeat(np.arange(10), 30)
    indices = np.arange(300)
    ten = per_class(labels, indices, 10, seed=1)
    assert np.bincount(labels[ten]).tolist() == [10] * 10
    np.testing.assert_array_equal(ten, per_class(labels, indices, 10, seed=1))
    assert set(per_class(labels, indices, 3, seed=1)) <= set(ten)  # 3 of the 10
    assert set(ten) != set(per_class(labels, indices, 10, seed=2))
    with pytest.raises(ConfigError, match="at most 30"):
        per_class(labels, indices, 31, seed=1)


# --------------------------------------------------------------------------- training


def test_frozen_layers_do_not_move_and_the_others_do():
    """Frozen: params and BatchNorm statistics bit-equal to the MNIST network's after
    training; the new head differs from both the MNIST head and its own fresh start."""
    config = dataclasses.replace(TINY, init_from="default", new_head=True, freeze=BODY)
    result = quiet_train(config)
    mnist = load_checkpoint(pretrained.path("default"))
    for name in BODY:
        for key, value in mnist.params[name].items():
            np.testing.assert_array_equal(result.params[name][key], value, err_msg=name)
        for key, value in mnist.state.get(name, {}).items():
            np.testing.assert_array_equal(result.state[name][key], value, err_msg=name)
    head = result.params["dense2"]["kernel"]
    assert not np.allclose(head, mnist.params["dense2"]["kernel"])
    one_epoch_more = quiet_train(dataclasses.replace(config, epochs=2))
    assert not np.array_equal(one_epoch_more.params["dense2"]["kernel"], head)


def test_unfrozen_run_moves_every_layer():
    """The control: the same run without --freeze changes the body too."""
    result = quiet_train(dataclasses.replace(TINY, init_from="default", new_head=True))
    mnist = load_checkpoint(pretrained.path("default"))
    for name in BODY:
        moved = [
            not np.array_equal(result.params[name][k], v) for k, v in mnist.params[name].items()
        ]
        assert all(moved), name


def test_body_learning_rate_scale_is_a_smaller_learning_rate():
    """SGD at lr 0.1 with the body scaled by 0.25 moves the body as SGD at lr 0.025."""
    rng = np.random.default_rng(0)
    params = {n: {"kernel": rng.standard_normal((3, 2))} for n in ("body", "head")}
    grads = {n: {"kernel": rng.standard_normal((3, 2))} for n in ("body", "head")}
    scaled = PerLayerScale(optim.SGD(0.1), {"body": 0.25, "frozen": 0.0})
    new, _ = scaled.update(grads, scaled.init(params), params)
    for name, lr in (("body", 0.025), ("head", 0.1)):
        expected = params[name]["kernel"] - lr * grads[name]["kernel"]
        np.testing.assert_allclose(new[name]["kernel"], expected, rtol=1e-12)


def test_a_frozen_layer_gradient_counts_nowhere():
    """With --clip-norm the global norm must not include a frozen layer's gradient: the
    head's step is the same whether the frozen body's gradient is 0 or 1,000."""
    params = {n: {"kernel": np.ones((3, 2))} for n in ("body", "head")}
    scaled = PerLayerScale(optim.Adam(0.1, clip_norm=1.0), {"body": 0.0})
    heads = []
    for body_gradient in (0.0, 1000.0):
        grads = {"body": {"kernel": np.full((3, 2), body_gradient)},
                 "head": {"kernel": np.full((3, 2), 0.5)}}  # fmt: skip
        new, _ = scaled.update(grads, scaled.init(params), params)
        np.testing.assert_array_equal(new["body"]["kernel"], params["body"]["kernel"])
        heads.append(new["head"]["kernel"])
    np.testing.assert_array_equal(heads[0], heads[1])
    assert not np.array_equal(heads[0], params["head"]["kernel"])


def test_new_head_replaces_only_the_last_layer():
    config = dataclasses.replace(TINY, init_from="default", new_head=True, freeze=BODY[:4])
    params, state = initial_weights(models.build("default"), config)
    mnist = load_checkpoint(pretrained.path("default"))
    np.testing.assert_array_equal(params["dense1"]["kernel"], mnist.params["dense1"]["kernel"])
    assert not np.array_equal(params["dense2"]["kernel"], mnist.params["dense2"]["kernel"])
    np.testing.assert_array_equal(params["dense2"]["bias"], 0)  # a fresh Dense layer's bias


# --------------------------------------------------------------------------- refusals


def test_unknown_freeze_name_is_refused_in_one_sentence():
    result = run("train", "--dataset", "digits", "--init", "default", "--freeze", "conv1,conv9")
    assert_one_line_error(result, "'conv9'", "conv1, batchnorm1, conv2, batchnorm2, dense1, dense2")


def test_freeze_names_may_have_spaces_after_the_commas():
    result = run("train", "--dataset", "digits", "--init", "default", "--freeze", "conv1, conv9")
    assert_one_line_error(result, "--freeze 'conv9' is not a layer")  # not ' conv9'


def test_freezing_everything_and_a_head_without_init_are_refused():
    every = "conv1,batchnorm1,conv2,batchnorm2,dense1,dense2"
    assert_one_line_error(run("train", "--init", "default", "--freeze", every), "none is left")
    assert_one_line_error(run("train", "--freeze", "conv1"), "random ones without --init")
    assert_one_line_error(run("train", "--new-head"), "--new-head", "--init")
    assert_one_line_error(run("train", "--dataset", "emnist"), "unknown dataset 'emnist'")


def test_too_many_per_class_is_refused():
    with pytest.raises(ConfigError, match="--per-class 500"):
        load_splits(TrainConfig(dataset="digits", per_class=500))


def test_checkpoint_records_the_digits_and_resume_refuses_another_dataset(tmp_path, mnist_dir):
    quiet_train(TINY, output_dir=tmp_path)
    info = load_checkpoint(tmp_path / "last.npz").info
    assert info["config"]["dataset"] == "digits"
    assert info["data_sha256"]["scikit-learn"] == sklearn.__version__
    assert len(info["data_sha256"]["sklearn load_digits"]) == 64
    mnist = dataclasses.replace(TINY, dataset="mnist", per_class=None, train_limit=64,
                                test_limit=100, epochs=2)  # fmt: skip
    with pytest.raises(ResumeError, match="dataset"):
        quiet_train(mnist, data_dir=mnist_dir, output_dir=tmp_path, resume=True)


def test_resume_refuses_other_digits_data(tmp_path, monkeypatch):
    """A run saved with other digits (another scikit-learn's, say) does not resume."""
    quiet_train(dataclasses.replace(TINY, epochs=2), output_dir=tmp_path)
    other = {"sklearn load_digits": "0" * 64, "scikit-learn": "0.0"}
    monkeypatch.setattr(train_data, "digits_checksum", lambda: other)
    with pytest.raises(ResumeError, match="other digits data"):
        quiet_train(dataclasses.replace(TINY, epochs=2), output_dir=tmp_path, resume=True)


# --------------------------------------------------------------------------- the result


@pytest.mark.slow
def test_fine_tuning_beats_scratch_with_10_images_per_class():
    """The lesson's claim on one seed: with 10 labelled digits per class, fine-tuning the
    MNIST network beats training the same network from random weights, by 3 points or more
    (the lesson's full run, the same configs, shows the margin over three seeds)."""
    base = dataclasses.replace(TINY, per_class=10, epochs=30, batch_size=32)
    scratch = quiet_train(base).test.accuracy
    tuned = quiet_train(
        dataclasses.replace(base, init_from="default", new_head=True, body_lr_scale=0.1)
    ).test.accuracy
    assert tuned > scratch + 0.03, (tuned, scratch)


def test_evaluate_says_a_digits_network_is_measured_on_mnist(tmp_path, mnist_dir):
    quiet_train(TINY, output_dir=tmp_path / "run")
    result = run("evaluate", tmp_path / "run" / "last.npz", "--data-dir", mnist_dir)
    assert result.exit_code == 0, result.output
    assert "on the MNIST test set (it was trained on digits)" in result.stdout
