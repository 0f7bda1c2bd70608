"""Lesson 10: the sanity checks tell a masked gradient from robustness.

A network whose logits are multiplied by 1,000 decides exactly as the original does (the
argmax is the same), so it is exactly as easy to fool. But its softmax saturates to
one-hot in float32, its input gradient is zero on the images it classifies with a clear
margin, and attacks on the cross-entropy stall. Square (no gradient) and APGD-T (the
scale-free DLR loss) do not, and ``robustness.sanity_checks`` must flag the masked network
and pass the original.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from scratchcnn import apgd, attacks, pretrained, robustness, square
from scratchcnn.layers import Layer, Sequential

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
def setting(first_digits):
    """The shipped default network, its masked copy, the shipped best network (another
    network for the transfer check), and the first 50 test digits."""
    model, params, state = pretrained.load("default")
    masked = (Sequential([*model.layers, Scale()]), params, state)
    x, y = first_digits
    return (model, params, state), masked, pretrained.load("best"), x[:50], y[:50]


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


@pytest.mark.slow  # 30 s on 2 cores
def test_sanity_checks_flag_the_masked_network_and_pass_the_original(setting):
    net, masked, other, x, y = setting
    config = robustness.AttackConfig("autoattack", steps=10, queries=50)
    checks = {}
    for name, candidate in (("original", net), ("masked", masked)):
        report, _ = robustness.sanity_checks(*candidate, x, y, 0.3, config, tolerance=0.05,
                                             transfer_from=other, subset=20)  # fmt: skip
        checks[name] = {c["check"]: c["ok"] for c in report.checks}
    assert all(checks["original"].values()), checks["original"]
    assert not checks["masked"]["the cross-entropy attack is not masked"], checks["masked"]


def test_square_and_dlr_see_through_the_mask_the_cross_entropy_does_not(setting):
    """At eps 0.3 the cross-entropy attacks report the masked network far more robust than
    the original; Square (no gradient) and APGD-T (the scale-free DLR loss) do not."""
    net, masked, _, x, y = setting
    accuracy = {}
    for name, candidate in (("original", net), ("masked", masked)):
        adversarial = {
            "apgd-ce": apgd.apgd(*candidate, x, y, 0.3, steps=10),
            "apgd-t": apgd.apgd_targeted(*candidate, x, y, 0.3, steps=10, targets=3),
            "square": square.square_attack(*candidate, x, y, 0.3, queries=50)[0],
        }
        accuracy[name] = {k: robustness.accuracy(*candidate, v, y) for k, v in adversarial.items()}
    assert accuracy["masked"]["apgd-ce"] >= accuracy["original"]["apgd-ce"] + 0.2, accuracy
    for attack in ("apgd-t", "square"):
        assert accuracy["masked"][attack] <= accuracy["original"][attack] + 0.02, accuracy
