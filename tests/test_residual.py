"""The residual block: the three checks, and what the addition does to the gradient.

``opcheck.check_all`` runs finite differences (float64), forward == the Flax twin and
backward == ``jax.vjp`` of the twin (float32 and float64), the dtype and gradient names,
and NumPy == jax.numpy, on identity and projection shortcuts, in eval and train mode
(BatchNorm with batch statistics), with plain and fast ops.
"""

import numpy as np
import pytest
from opcheck import BOTH_OPS, check_all

from scratchcnn import models
from scratchcnn.errors import ShapeError
from scratchcnn.layers import BatchNorm, Conv, Dropout, ReLU, Sequential
from scratchcnn.residual import Residual, basic_block

pytestmark = pytest.mark.lesson16

CASES = {
    "identity": (basic_block(3), (5, 6, 3)),
    "projection, stride 2, odd size": (basic_block(4, strides=2, project=True), (7, 5, 3)),
    "projection, more channels": (basic_block(5, project=True), (4, 4, 2)),
    # Dropout in both branches: each branch must fold its own key, on both sides.
    "dropout in both branches": (
        Residual((Conv(3, 3), Dropout(0.3)), (Dropout(0.5),)),
        (4, 5, 3),
    ),
}


def check_params():
    """Every case, eval and train, plain and fast ops; in a plain run only the two
    shortcuts with plain ops, the rest with -m slow (CI runs both)."""
    params = []
    for case in CASES:
        for train in (False, True):
            for ops, ops_id in zip(BOTH_OPS["argvalues"], BOTH_OPS["ids"], strict=True):
                quick = ops_id == "plain" and case in ("identity", "projection, stride 2, odd size")
                params.append(
                    pytest.param(
                        case,
                        train,
                        ops,
                        marks=() if quick else pytest.mark.slow,
                        id=f"{case}-{'train' if train else 'eval'}-{ops_id}",
                    )
                )
    return params


@pytest.mark.parametrize(("case", "train", "ops"), check_params())
def test_residual_block_passes_the_three_checks(case, train, ops):
    layer, in_shape = CASES[case]
    check_all(layer, in_shape, batch=2, train=train, ops=ops)


def test_the_addition_sends_the_gradient_to_both_branches():
    """A body whose last BatchNorm has scale 0 and bias 0 outputs zeros: the block is then
    ``relu(x)``, and all of dx comes through the shortcut, while the body still gets a
    gradient for that BatchNorm's scale (the sum passed dout on to it too)."""
    block = basic_block(3)
    model = Sequential([block])
    params, state = model.init(0, (5, 5, 3), np.float64)
    params["residual1"]["body"]["batchnorm2"] = {"scale": np.zeros(3), "bias": np.zeros(3)}
    x = np.random.default_rng(1).standard_normal((2, 5, 5, 3))
    out, _, caches = model.forward(params, state, x, train=True)
    np.testing.assert_array_equal(out, np.maximum(x, 0))
    dout = np.random.default_rng(2).standard_normal(out.shape)
    dx, grads = model.backward(dout, caches)
    np.testing.assert_array_equal(dx, dout * (x > 0))  # the shortcut's copy, and nothing else
    assert np.abs(grads["residual1"]["body"]["batchnorm2"]["scale"]).max() > 0
    assert np.abs(grads["residual1"]["body"]["conv1"]["kernel"]).max() == 0  # blocked by scale 0


def test_params_nest_by_branch_and_layer_name():
    params, state = Sequential([basic_block(4, 2, project=True)]).init(0, (6, 6, 3))
    block = params["residual1"]
    assert set(block) == {"body", "shortcut"}
    assert set(block["body"]) == {"conv1", "batchnorm1", "conv2", "batchnorm2"}
    assert set(block["shortcut"]) == {"conv1", "batchnorm1"}
    assert block["shortcut"]["conv1"]["kernel"].shape == (1, 1, 3, 4)
    assert set(state["residual1"]["body"]) == {"batchnorm1", "batchnorm2"}
    identity, _ = Sequential([basic_block(3)]).init(0, (6, 6, 3))
    assert set(identity["residual1"]) == {"body"}  # the identity has no weights


@pytest.mark.parametrize(
    "layer",
    [basic_block(8), basic_block(3, strides=2), Residual((Conv(3), ReLU()), (BatchNorm(),))],
    ids=["more channels", "stride 2", "shortcut keeps 2 channels"],
)
def test_a_shortcut_of_the_wrong_shape_is_refused_in_one_sentence(layer):
    with pytest.raises(ShapeError, match=r"the body gives \(.*\) but the shortcut gives"):
        Sequential([layer]).init(0, (6, 6, 2))


def test_resnet_halves_the_resolution_in_its_projection_blocks():
    shapes = dict(models.build("resnet").shapes())
    assert shapes["residual1"] == (14, 14, 32)
    assert shapes["residual2"] == (7, 7, 64)
    assert shapes["residual3"] == (4, 4, 128)
