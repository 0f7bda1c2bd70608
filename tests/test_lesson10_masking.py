"""Lesson 10: the sanity checks tell a masked gradient from robustness.

A network whose logits are multiplied by 1,000 decides exactly as the original does (the
argmax is the same), so it is exactly as easy to fool. But its softmax saturates to
one-hot in float32, its input gradient is zero on the images it classifies with a clear
margin, and gradient attacks stall. ``robustness.sanity_checks`` must flag it and pass
the original network.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from scratchcnn import attacks, models, robustness
from scratchcnn.data.preprocess import to_unit_nhwc
from scratchcnn.layers import Layer, Sequential
from scratchcnn.train import TrainConfig, train

pytestmark = pytest.mark.lesson10


@dataclass(frozen=True)
class Scale(Layer):
    """Logits times a constant: the fake defence of lesson 10."""

    factor: float = 1000.0
    kind = "scale"

    def forward(self, params, state, x, *, train, rng=None):
        return x * self.factor, state, None

    def backward(self, dout, cache):
        return dout * self.factor, {}


@pytest.fixture(scope="module")
def setting(mnist_dir, mnist_test):
    """Two default networks (seeds 0, 1) trained on 2,000 images, and 100 test digits."""
    nets = []
    for seed in (0, 1):
        config = TrainConfig(model="default", epochs=1, train_limit=2000, batch_size=64,
                             val_fraction=0.0, test_limit=10, seed=seed)  # fmt: skip
        result = train(config, data_dir=mnist_dir, progress=False, log=lambda s: None)
        nets.append((models.build("default"), result.params, result.state))
    images, labels = mnist_test
    x, y = to_unit_nhwc(images[:100]), labels[:100].astype(np.int64)
    model, params, state = nets[0]
    masked = (Sequential([*model.layers, Scale()]), params, state)
    return nets[0], masked, nets[1], x, y


def test_scaled_logits_keep_every_decision_but_zero_the_gradient(setting):
    net, masked, _, x, y = setting
    noisy = np.clip(x + np.random.default_rng(0).uniform(-0.3, 0.3, x.shape), 0, 1)
    for images in (x, noisy.astype(np.float32)):
        np.testing.assert_array_equal(
            attacks.predict(*masked, images), attacks.predict(*net, images)
        )
    _, g = attacks.loss_and_gradient(*masked, x, y)
    zero = np.all(g.reshape(len(y), -1) == 0, axis=1)
    assert zero.mean() > 0.5
    # FGSM cannot move an image whose gradient is exactly zero.
    adv = attacks.fgsm(*masked, x[zero], y[zero], 0.3)
    np.testing.assert_array_equal(adv, x[zero])


def test_sanity_checks_flag_the_masked_network_and_pass_the_original(setting):
    net, masked, other, x, y = setting
    config = robustness.AttackConfig("pgd", steps=10, step_size=0.05)
    checks = {}
    for name, candidate in (("original", net), ("masked", masked)):
        report, _ = robustness.sanity_checks(*candidate, x, y, [0.0, 0.3], config,
                                             tolerance=0.05, transfer_from=other)  # fmt: skip
        checks[name] = {c["check"]: c["ok"] for c in report.checks}
    gradient_free = ["eps = 1 leaves (almost) nothing", "transfer attack is weaker than white-box"]
    assert all(checks["original"][name] for name in gradient_free), checks["original"]
    assert not any(checks["masked"][name] for name in gradient_free), checks["masked"]
