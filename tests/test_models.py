"""Whole networks: parity with the Flax twin, input gradients, weight conversion, counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scratchcnn import models, reference
from scratchcnn.data.preprocess import standardize_unit, to_unit_nhwc
from scratchcnn.errors import ScratchCNNError
from scratchcnn.gradcheck import relative_error
from scratchcnn.layers import count_params, named_arrays
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.parity import compare_network, randomized, untie

pytestmark = pytest.mark.lesson07

MODEL_NAMES = sorted(models.MODELS)
# The whole-network gradient checks are the slowest tests there are, and their point is how
# layers compose: they run on networks that hold every layer kind between them (lenet's
# channel dropout, flax_cnn's average pooling, bn_cnn's BatchNorm on features and global
# pooling, resnet's residual blocks, the shipped default). keras_cnn adds no kind of layer;
# best, the shipped network of our best recipe, runs with the slow tests.
COMPOSED = [
    pytest.param(name, marks=pytest.mark.slow) if name == "best" else name
    for name in MODEL_NAMES
    if name != "keras_cnn"
]
TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


@pytest.fixture(scope="module")
def batch(mnist_test):
    """Eight real test digits, untied (see ``parity.untie``), standardised, and labels."""
    images, labels = mnist_test
    unit = untie(images[:8, ..., None] / np.float32(255))
    return standardize_unit(unit), labels[:8].astype(np.int64)


def loss_and_input_grad(model, params, state, x, y, train, key):
    """Our forward + hand-written backward: (loss, d loss / d x)."""
    logits, _, caches = model.forward(params, state, x, train=train, rng=key)
    loss, cache = softmax_cross_entropy_forward(logits, y)
    dx, _ = model.backward(softmax_cross_entropy_backward(1.0, cache)[0], caches)
    return loss, dx


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", COMPOSED)
def test_model_matches_flax_twin(name, train, dtype, batch):
    """Logits, loss, input gradient, every parameter gradient and running stats."""
    images, labels = batch
    model = models.build(name)
    params, state = model.init(0, dtype=dtype)
    state = randomized(state, np.random.default_rng(1))  # eval must use non-trivial stats
    diffs = compare_network(
        model, params, state, images.astype(dtype), train=train,
        key=jax.random.key(7), loss_labels=labels,
    )  # fmt: skip
    expected = {"forward", "loss", "d input"} | {f"d {name}" for name in named_arrays(params)}
    assert expected <= set(diffs)  # every parameter gradient was compared
    worst = max(diffs.items(), key=lambda item: item[1])
    assert worst[1] <= TOLERANCE[dtype], worst


@pytest.mark.parametrize("scale", ["standardized", "unit"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", COMPOSED)
def test_jax_grad_of_our_forward_equals_our_backward(name, train, scale, batch, mnist_test):
    """FGSM relies on it: jax.grad through our own forward pass == our hand-written dx.

    On [0, 1] images ("unit") the background is exactly 0, so ReLUs see exact zeros and
    max-pools see exact ties: both must break the same way in both gradients.
    """
    images, labels = batch
    if scale == "unit":
        images = to_unit_nhwc(mnist_test[0][:8])
    model = models.build(name)
    params, state = model.init(0, dtype=np.float64)
    key = jax.random.key(3)
    x = images.astype(np.float64)

    def loss(xx):
        logits = model.forward(params, state, xx, train=train, rng=key)[0]
        return softmax_cross_entropy_forward(logits, labels)[0]

    _, ours = loss_and_input_grad(model, params, state, x, labels, train, key)
    # jit: one compiled program instead of op-by-op dispatch (a third of the time)
    assert relative_error(ours, jax.jit(jax.grad(loss))(jnp.asarray(x))) <= 1e-10


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("name", COMPOSED)
def test_model_gradients_match_finite_differences(name, train, batch):
    """Whole-network check 1: directional derivatives along random directions (float64).

    Nudging all of x and every parameter at once along a random direction v, the central
    difference of the loss must equal <gradient, v>. The input is noise, not digits: on a
    digit's flat background max-pool windows tie exactly, the loss has a kink there, and
    a finite difference measures neither side's slope.
    """
    _, labels = batch
    model = models.build(name)
    params, state = model.init(0, dtype=np.float64)
    key = jax.random.key(11)
    x = np.random.default_rng(1).standard_normal((4, 28, 28, 1))
    y = labels[:4]
    logits, _, caches = model.forward(params, state, x, train=train, rng=key)
    loss, cache = softmax_cross_entropy_forward(logits, y)
    dx, grads = model.backward(softmax_cross_entropy_backward(1.0, cache)[0], caches)

    rng = np.random.default_rng(0)
    for _ in range(3):
        vx = rng.standard_normal(x.shape)
        vp = jax.tree.map(lambda a: rng.standard_normal(a.shape), params)
        # A unit direction: every pre-activation moves ~1e-9, too little to cross a ReLU.
        norm = np.sqrt(np.sum(vx**2) + sum(np.sum(v**2) for v in jax.tree.leaves(vp)))
        vx, vp = vx / norm, jax.tree.map(lambda v, n=norm: v / n, vp)
        along = jax.tree.map(lambda g, d: np.sum(g * d), grads, vp)
        predicted = np.sum(dx * vx) + sum(jax.tree.leaves(along))

        def loss_at(t, vx=vx, vp=vp):
            p = jax.tree.map(lambda a, d: a + t * d, params, vp)
            out = model.forward(p, state, x + t * vx, train=train, rng=key)[0]
            return softmax_cross_entropy_forward(out, y)[0]

        eps = 1e-6
        numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
        grad_norm = np.sqrt(np.sum(dx**2) + sum(np.sum(g**2) for g in jax.tree.leaves(grads)))
        assert abs(numeric - predicted) <= 1e-7 * grad_norm  # |<g, v>| <= |g| for unit v


@pytest.mark.parametrize("name", COMPOSED)
def test_jitted_forward_and_backward_equal_numpy(name, batch):
    """The same op code compiles with jax.jit (the JAX backend of training builds on it)."""
    images, labels = batch
    model = models.build(name)
    params, state = model.init(0)
    key = jax.random.key(5)

    @jax.jit
    def step(params, x):
        return loss_and_input_grad(model, params, state, x, labels, True, key)

    loss_np, dx_np = loss_and_input_grad(model, params, state, images, labels, True, key)
    loss_jit, dx_jit = step(jax.tree.map(jnp.asarray, params), jnp.asarray(images))
    assert relative_error(loss_np, loss_jit) <= 1e-5
    assert relative_error(dx_np, dx_jit) <= 1e-5


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_weight_conversion_both_ways(name, batch):
    images, _ = batch
    model = models.build(name)
    params, state = model.init(0)
    state = randomized(state, np.random.default_rng(2))
    back_params, back_state = reference.from_flax(reference.to_flax(model, params, state))
    jax.tree.map(np.testing.assert_array_equal, (back_params, back_state), (params, state))

    flax_model = reference.twin(model)  # Flax's own random init
    flax_params, flax_state = reference.from_flax(flax_model)
    ours = model.forward(flax_params, flax_state, images, train=False)[0]
    theirs = flax_model(jnp.asarray(images), train=False)
    assert relative_error(ours, theirs) <= 1e-5


# Published counts: the PyTorch example's LeNet, the Keras network's stated 863,082, and
# Flax's examples/mnist CNN (320 + 18,496 + 803,072 + 2,570).
PUBLISHED_COUNTS = {"lenet": 21_840, "keras_cnn": 863_082, "flax_cnn": 824_458}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts(name):
    model = models.build(name)
    params, _ = model.init(0)
    flax_count = sum(a.size for a in jax.tree.leaves(reference.from_flax(reference.twin(model))[0]))
    assert count_params(params) == flax_count
    if name in PUBLISHED_COUNTS:
        assert count_params(params) == PUBLISHED_COUNTS[name]


def test_every_model_maps_mnist_to_ten_logits():
    for name in MODEL_NAMES:
        assert models.build(name).shapes()[-1][1] == (10,)


def test_unknown_model_names_the_choices():
    with pytest.raises(
        ScratchCNNError, match="unknown architecture 'vgg'; choose one of: best, bn_cnn"
    ):
        models.build("vgg")
