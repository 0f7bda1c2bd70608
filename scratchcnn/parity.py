"""Scratch versus Flax, number by number: the table ``scratchcnn parity`` prints.

For every op (as a one-layer network) and every registered model, in float32 and float64,
we run our forward and hand-written backward pass and the Flax twin's forward and
``jax.vjp``, and record the largest relative difference (``gradcheck.relative_error``)
of the output, of the input gradient, of every parameter gradient and of the updated
BatchNorm statistics. Dropout draws its mask from the same JAX key on both sides.
"""

from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from scratchcnn import layers as L
from scratchcnn import models, reference
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.gradcheck import relative_error
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.residual import basic_block

TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


@dataclass
class ParityRow:
    """One op or model in one dtype: relative difference per compared quantity."""

    name: str
    dtype: str
    diffs: dict[str, float] = field(default_factory=dict)

    @property
    def tolerance(self) -> float:
        return TOLERANCE[self.dtype]

    @property
    def worst(self) -> tuple[str, float]:
        return max(self.diffs.items(), key=lambda item: item[1])

    @property
    def ok(self) -> bool:
        return self.worst[1] <= self.tolerance

    def gradient_diffs(self) -> dict[str, float]:
        return {k: v for k, v in self.diffs.items() if k.startswith("d ")}

    def as_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "tolerance": self.tolerance,
                "ok": self.ok, "diffs": self.diffs}  # fmt: skip


# Each op is checked as a one-layer network: (row name, layer, input shape, train mode).
OP_CASES = [
    ("dense", L.Dense(7), (11,), False),
    ("dense, no bias", L.Dense(5, use_bias=False), (6,), False),
    ("relu", L.ReLU(), (5, 5, 3), False),
    ("flatten", L.Flatten(), (4, 3, 2), False),
    ("conv 3x3 stride 1 SAME", L.Conv(4, 3), (7, 7, 3), False),
    ("conv 5x5 stride 1 VALID", L.Conv(6, 5, padding="VALID"), (12, 12, 2), False),
    ("conv 3x3 stride 2 SAME, odd size", L.Conv(5, 3, strides=2), (9, 8, 3), False),
    (
        "conv 4x2 stride (3,1) pad 1, no bias",
        L.Conv(3, (4, 2), (3, 1), 1, False),
        (10, 7, 2),
        False,
    ),
    ("conv 3x3 stride 2 pads ((1,2),(0,1))", L.Conv(4, 3, 2, ((1, 2), (0, 1))), (8, 9, 3), False),
    ("max pool 2x2 VALID", L.MaxPool(2), (8, 8, 3), False),
    ("max pool 3x3 stride 2 SAME, odd size", L.MaxPool(3, 2, "SAME"), (9, 7, 2), False),
    ("max pool 3x3 stride 2 pad 1", L.MaxPool(3, 2, 1), (7, 8, 2), False),
    ("avg pool 2x2 VALID", L.AvgPool(2), (8, 6, 3), False),
    ("avg pool 2x2 pads ((1,0),(0,1))", L.AvgPool(2, 2, ((1, 0), (0, 1))), (5, 6, 2), False),
    ("avg pool 3x3 stride 1 SAME", L.AvgPool(3, 1, "SAME"), (5, 6, 2), False),
    ("global avg pool", L.GlobalAvgPool(), (5, 7, 4), False),
    ("batch norm NHWC, train", L.BatchNorm(), (5, 5, 4), True),
    ("batch norm NHWC, eval", L.BatchNorm(), (5, 5, 4), False),
    ("batch norm (N, C), train", L.BatchNorm(), (6,), True),
    ("dropout 0.3, train", L.Dropout(0.3), (6, 5, 3), True),
    ("dropout, eval", L.Dropout(0.3), (6, 5, 3), False),
    ("channel dropout 0.5, train", L.ChannelDropout(0.5), (6, 5, 8), True),
    ("residual, identity shortcut, train", basic_block(3), (6, 5, 3), True),
    ("residual, identity shortcut, eval", basic_block(3), (6, 5, 3), False),
    ("residual, 1x1 projection stride 2, train", basic_block(4, 2, True), (7, 6, 3), True),
]


def randomized(tree, rng):
    """Same structure, random values: biases and running stats must not be trivial zeros.

    Variances stay positive; everything else is standard normal. Nested dicts (the
    branches of a residual block) are randomized level by level.
    """
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out[key] = randomized(value, rng)
        else:
            draw = (
                rng.uniform(0.5, 1.5, value.shape)
                if key == "var"
                else rng.standard_normal(value.shape)
            )
            out[key] = draw.astype(value.dtype)
    return out


def compare_network(model, params, state, x, *, train, key, loss_labels=None, dout=None):
    """Relative differences between our pass and the Flax twin's, quantity by quantity.

    With ``loss_labels`` the backward pass starts from the mean cross-entropy (a model
    as trained); otherwise from the output cotangent ``dout`` (an op on its own).
    """
    ours_out, ours_state, caches = model.forward(params, state, x, train=train, rng=key)
    apply, flax_params = reference.functional(reference.to_flax(model, params, state, x.shape[1:]))

    if loss_labels is not None:
        loss, loss_cache = softmax_cross_entropy_forward(ours_out, loss_labels)
        dout = softmax_cross_entropy_backward(1.0, loss_cache)[0]

        def flax_loss(p, xx):
            logits, new_state = apply(p, xx, train, key)
            loss = reference.flax_softmax_cross_entropy(logits, loss_labels)
            return loss, (logits, new_state)

        # jit: one compiled program instead of hundreds of op-by-op dispatches (same maths)
        flax_grad = jax.jit(jax.value_and_grad(flax_loss, argnums=(0, 1), has_aux=True))
        (flax_loss_value, (flax_out, flax_state)), (flax_dparams, flax_dx) = flax_grad(
            flax_params, jnp.asarray(x)
        )
    else:

        @jax.jit
        def flax_vjp(p, xx, d):
            (out, new_state), vjp = jax.vjp(lambda p, xx: apply(p, xx, train, key), p, xx)
            return out, new_state, vjp((d, jax.tree.map(jnp.zeros_like, new_state)))

        flax_out, flax_state, (flax_dparams, flax_dx) = flax_vjp(
            flax_params, jnp.asarray(x), jnp.asarray(dout)
        )

    ours_dx, ours_grads = model.backward(dout, caches)
    diffs = {"forward": relative_error(ours_out, flax_out)}
    if loss_labels is not None:
        diffs["loss"] = relative_error(loss, flax_loss_value)
    diffs["d input"] = relative_error(ours_dx, flax_dx)
    ours_grads, ours_state = L.named_arrays(ours_grads), L.named_arrays(ours_state)
    for name, flax_grad in L.named_arrays(flax_dparams).items():  # "conv1.kernel"...
        diffs[f"d {name}"] = relative_error(ours_grads[name], flax_grad)
    if train:
        for name, value in L.named_arrays(flax_state).items():
            diffs[f"running {name}"] = relative_error(ours_state[name], value)
    return diffs


def op_row(name, layer, in_shape, train, dtype, seed=0, batch=4) -> ParityRow:
    """Parity of one op, run as a one-layer network on random input."""
    rng = np.random.default_rng(seed)
    model = L.Sequential([layer])
    params, state = model.init(rng, in_shape, dtype)
    params, state = randomized(params, rng), randomized(state, rng)
    x = rng.standard_normal((batch, *in_shape)).astype(dtype)
    out_shape = model.forward(params, state, x, train=False)[0].shape
    dout = rng.standard_normal(out_shape).astype(dtype)
    diffs = compare_network(
        model, params, state, x, train=train, key=jax.random.key(seed), dout=dout
    )
    return ParityRow(name, np.dtype(dtype).name, diffs)


def loss_row(label_smoothing, dtype, seed=0) -> ParityRow:
    """Parity of softmax cross-entropy (forward and d logits) with optax."""
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal((16, 10))).astype(dtype)
    labels = rng.integers(0, 10, 16)
    loss, cache = softmax_cross_entropy_forward(logits, labels, label_smoothing)
    dlogits = softmax_cross_entropy_backward(1.0, cache)[0]
    flax_loss, flax_dlogits = jax.value_and_grad(reference.flax_softmax_cross_entropy)(
        jnp.asarray(logits), labels, label_smoothing
    )
    name = "softmax cross-entropy" + (f", smoothing {label_smoothing}" if label_smoothing else "")
    diffs = {
        "forward": relative_error(loss, flax_loss),
        "d logits": relative_error(dlogits, flax_dlogits),
    }
    return ParityRow(name, np.dtype(dtype).name, diffs)


def model_row(name, images, labels, train, dtype, seed=0) -> ParityRow:
    """Parity of a registered model on a batch, from the loss back to every parameter."""
    model = models.build(name)
    params, state = model.init(seed, images.shape[1:], dtype)
    state = randomized(state, np.random.default_rng(seed))  # non-trivial running stats
    diffs = compare_network(
        model, params, state, images.astype(dtype), train=train,
        key=jax.random.key(seed), loss_labels=np.asarray(labels),
    )  # fmt: skip
    mode = "train" if train else "eval"
    return ParityRow(f"model {name} ({mode})", np.dtype(dtype).name, diffs)


def parity_rows(images, labels, dtypes=("float32", "float64"), model_names=None):
    """Every op and model, in every dtype. images: float (N, 28, 28, 1), labels: (N,)."""
    jax.config.update("jax_enable_x64", True)  # float64 on the Flax side too
    model_names = sorted(models.MODELS) if model_names is None else model_names
    rows = []
    for dtype in dtypes:
        rows += [op_row(*case, dtype) for case in OP_CASES]
        rows += [loss_row(smoothing, dtype) for smoothing in (0.0, 0.1)]
        for name in model_names:
            rows += [model_row(name, images, labels, train, dtype) for train in (False, True)]
    return rows


def untie(unit_images, seed: int = 0, amount: float = 0.05) -> np.ndarray:
    """Real digits (N, 28, 28, 1) in [0, 1] with a little noise, still in [0, 1].

    Why: MNIST's background is flat, so max-pool windows over it hold values that are
    equal in exact arithmetic, and there the max has no derivative. In float32 the
    convolution before the pool rounds those equal sums differently at different
    positions on some CPUs (OpenBLAS's sgemm kernels for AMD EPYC do, and so the row a
    window lands on in the matrix decides), while XLA keeps them equal; the two then route
    the gradient to different cells of the window, and gradients differ where neither is
    wrong. Comparing gradients where they exist, we squeeze the pixels into
    [amount, 1 - amount] and add uniform noise of +-amount (about 13 gray levels): every
    window then has one clear maximum. The forward pass is compared on the same images.
    """
    x = np.asarray(unit_images, np.float32)
    noise = np.random.default_rng(seed).uniform(-amount, amount, x.shape).astype(np.float32)
    return x * np.float32(1 - 2 * amount) + np.float32(amount) + noise


def mnist_batch(batch_size: int, data_dir=None):
    """The first ``batch_size`` test images, untied (``untie``) and standardised:
    (N, 28, 28, 1) float32, and their labels."""
    images, labels = load_mnist("test", data_dir)
    unit = untie(images[:batch_size, ..., None] / np.float32(255))
    return standardize_unit(unit), labels[:batch_size].astype(np.int64)


def format_table(rows) -> str:
    """Plain-text table: one line per op/model and dtype, worst gradient named."""
    header = (
        f"{'op / model':<44} {'dtype':<8} {'forward':>9} {'d input':>9}  {'worst gradient':<34} ok"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        grads = row.gradient_diffs()
        worst_name, worst = max(grads.items(), key=lambda item: item[1])
        d_input = grads.get("d input", grads.get("d logits", 0.0))
        lines.append(
            f"{row.name:<44} {row.dtype:<8} {row.diffs['forward']:9.1e} {d_input:9.1e}  "
            f"{worst_name + f' {worst:.1e}':<34} {'yes' if row.ok else 'NO'}"
        )
    return "\n".join(lines)
