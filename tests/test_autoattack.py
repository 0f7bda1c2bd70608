"""The AutoAttack-style ensemble: each attack on the examples the ones before it missed,
each example's worst case kept, so the ensemble is never weaker than any of its members."""

from __future__ import annotations

import numpy as np
import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import pretrained, robustness
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import to_unit_nhwc

pytestmark = pytest.mark.lesson10


@pytest.fixture(scope="module")
def digits(mnist_dir):
    images, labels = load_mnist("test", mnist_dir)
    return to_unit_nhwc(images[:40]), labels[:40].astype(np.int64)


@pytest.mark.slow
def test_the_ensemble_is_never_weaker_than_a_member(digits):
    """eps 0.1, where the undefended default network keeps part of its accuracy."""
    network = pretrained.load("default")
    x, y = digits
    accuracy = {}
    for name in ("autoattack", *robustness.AUTOATTACK):
        config = robustness.AttackConfig(name, steps=20, queries=300)
        adv = robustness.adversarial_examples(*network, x, y, 0.1, config)
        assert np.abs(adv - x).max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
        accuracy[name] = robustness.accuracy(*network, adv, y)
    members = [accuracy[name] for name in robustness.AUTOATTACK]
    assert accuracy["autoattack"] <= min(members), accuracy


def test_the_command_runs_square_and_pgd_with_a_margin_loss(mnist_dir):
    for args in (["--attack", "square", "--queries", "100"], ["--attack", "pgd", "--loss", "cw"]):
        result = run("attack", "default", *args, "--eps", "0,0.3", "--limit", "10",
                     "--data-dir", mnist_dir)  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "eps 0.3   accuracy 0.00%" in result.output


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["--attack", "fab"], "unknown attack 'fab'"),
        (["--loss", "hinge"], "unknown loss 'hinge'"),
        (["--queries", "0"], "--queries"),
    ],
)
def test_bad_attack_names_are_one_sentence(args, phrase, mnist_dir):
    result = run("attack", "default", *args, "--limit", "5", "--data-dir", mnist_dir)
    assert_one_line_error(result, phrase)


@pytest.mark.slow  # 35 s on 2 cores
def test_the_breakdown_names_who_fooled_each_example(digits):
    network = pretrained.load("default")
    x, y = digits
    config = robustness.AttackConfig("autoattack", steps=10, queries=100, batch_size=16)
    worst, fooled_by = robustness.autoattack_breakdown(*network, x, y, 0.1, config)
    np.testing.assert_array_equal(
        worst, robustness.adversarial_examples(*network, x, y, 0.1, config)
    )
    right = robustness.attacks.predict(*network, x) == y
    np.testing.assert_array_equal(fooled_by == "clean", ~right)
    np.testing.assert_array_equal(fooled_by == "", robustness.attacks.predict(*network, worst) == y)
    assert set(fooled_by) <= {"", "clean", *robustness.AUTOATTACK}
    assert 0 < (fooled_by == "").sum() < right.sum()  # eps 0.1: some fooled, some not
