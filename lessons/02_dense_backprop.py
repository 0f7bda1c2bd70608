"""Lesson 02: dense layers, softmax cross-entropy and backprop by hand.

A two-layer network (784 -> 100 -> ReLU -> 10) written with our ops: its gradients
checked against finite differences (float64 and float32, a sweep of step sizes), against
the Flax twin, and then used to train it on real MNIST with plain SGD.

    python lessons/02_dense_backprop.py           # ~1 min
    python lessons/02_dense_backprop.py --quick   # 500 images, seconds
"""

import jax

jax.config.update("jax_enable_x64", True)  # float64 on the Flax side too

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _lesson import Lesson  # noqa: E402

from scratchcnn import layers as L  # noqa: E402
from scratchcnn import parity  # noqa: E402
from scratchcnn.data.mnist import load_mnist  # noqa: E402
from scratchcnn.data.preprocess import standardize  # noqa: E402
from scratchcnn.gradcheck import numerical_gradient, relative_error  # noqa: E402
from scratchcnn.ops.activations import relu_backward, relu_forward  # noqa: E402
from scratchcnn.ops.dense import dense_backward, dense_forward  # noqa: E402
from scratchcnn.ops.losses import (  # noqa: E402
    softmax,
    softmax_cross_entropy_backward,
    softmax_cross_entropy_forward,
)
from scratchcnn.viz import save_figure  # noqa: E402


def mlp(hidden: int) -> L.Sequential:
    """dense1 -> relu1 -> dense2: the network of this lesson (params named as in Flax)."""
    return L.Sequential([L.Dense(hidden), L.ReLU(), L.Dense(10)])


# --8<-- [start:loss_and_grads]
def loss_and_grads(params, x, labels):
    """Forward through dense -> ReLU -> dense -> softmax cross-entropy, then back.

    Every op returns its output and a cache; going back, each op turns the gradient of
    its output into the gradient of its input (and of its parameters).
    """
    d1, d2 = params["dense1"], params["dense2"]
    h, cache1 = dense_forward(x, d1["kernel"], d1["bias"])  # (N, 784) -> (N, 100)
    a, cache_relu = relu_forward(h)
    logits, cache2 = dense_forward(a, d2["kernel"], d2["bias"])  # (N, 100) -> (N, 10)
    loss, cache_loss = softmax_cross_entropy_forward(logits, labels)

    dlogits, _ = softmax_cross_entropy_backward(1.0, cache_loss)  # (softmax - onehot) / N
    da, grads2 = dense_backward(dlogits, cache2)
    dh, _ = relu_backward(da, cache_relu)
    _, grads1 = dense_backward(dh, cache1)
    return loss, {"dense1": grads1, "dense2": grads2}


# --8<-- [end:loss_and_grads]


def predict(params, x):
    h, _ = dense_forward(x, params["dense1"]["kernel"], params["dense1"]["bias"])
    a, _ = relu_forward(h)
    return dense_forward(a, params["dense2"]["kernel"], params["dense2"]["bias"])[0]


def as_dtype(params, dtype):
    return {name: {k: v.astype(dtype) for k, v in p.items()} for name, p in params.items()}


# --------------------------------------------------------------------------- checks


def gradient_check(params, x, labels) -> dict:
    """Relative error of every hand-written gradient against central differences (float64)."""
    _, grads = loss_and_grads(params, x, labels)
    errors = {}
    for name, arrays in params.items():
        for key, array in arrays.items():

            def f(_):  # numerical_gradient nudges ``array`` in place, f reads it from params
                return float(loss_and_grads(params, x, labels)[0])

            numeric = numerical_gradient(f, array)
            errors[f"{name}.{key}"] = relative_error(grads[name][key], numeric)
    return errors


def eps_sweep(params, x, labels, eps_values) -> dict:
    """Finite-difference error against the float64 backward pass, for each step size,
    with the loss computed in float64 or in float32. Parameters: dense2's kernel."""
    _, grads = loss_and_grads(params, x, labels)
    exact = grads["dense2"]["kernel"]
    kernel = params["dense2"]["kernel"]
    curves = {}
    for dtype in (np.float64, np.float32):
        low = as_dtype(params, dtype)
        x_low = x.astype(dtype)

        def f(k, low=low, x_low=x_low, dtype=dtype):
            # The nudged float64 kernel, rounded to dtype: a float32 network sees the
            # nudge only as far as float32 can hold it.
            trial = {**low, "dense2": {**low["dense2"], "kernel": k.astype(dtype)}}
            return float(loss_and_grads(trial, x_low, labels)[0])

        curves[np.dtype(dtype).name] = [
            relative_error(exact, numerical_gradient(f, kernel.copy(), eps)) for eps in eps_values
        ]
    return curves


def backward_in_float32(params, x, labels) -> float:
    """How far the float32 backward pass is from the float64 one (worst tensor)."""
    _, exact = loss_and_grads(params, x, labels)
    _, low = loss_and_grads(as_dtype(params, np.float32), x.astype(np.float32), labels)
    return max(relative_error(exact[n][k], low[n][k]) for n in exact for k in exact[n])


def flax_parity(images, labels, hidden, dtypes) -> dict:
    """Our passes against the Flax twin: the ops alone, and the whole network with loss."""
    out = {}
    for dtype in dtypes:
        out[f"dense, {dtype}"] = parity.op_row("dense", L.Dense(7), (11,), False, dtype).diffs
        out[f"loss, {dtype}"] = parity.loss_row(0.0, dtype).diffs
        model = mlp(hidden)
        params, state = model.init(0, (784,), dtype)
        out[f"network, {dtype}"] = parity.compare_network(
            model, params, state, images.astype(dtype), train=True,
            key=jax.random.key(0), loss_labels=labels,
        )
    return {k: {q: float(f"{v:.2e}") for q, v in d.items()} for k, d in out.items()}


# --------------------------------------------------------------------------- training


# --8<-- [start:train]
def train(params, x, y, x_test, y_test, *, epochs, batch, lr, eval_every, seed):
    """Plain minibatch SGD: shuffle, then params <- params - lr * grads, batch by batch."""
    rng = np.random.default_rng(seed)
    curve = {"step": [], "loss": [], "eval_step": [], "test_accuracy": []}
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x) - batch + 1, batch):
            index = order[start : start + batch]
            loss, grads = loss_and_grads(params, x[index], y[index])
            params = {name: {k: p - lr * grads[name][k] for k, p in layer.items()}
                      for name, layer in params.items()}
            step += 1
            curve["step"].append(step)
            curve["loss"].append(float(loss))
            if step % eval_every == 0:
                accuracy = np.mean(np.argmax(predict(params, x_test), axis=1) == y_test)
                curve["eval_step"].append(step)
                curve["test_accuracy"].append(float(accuracy))
    return params, curve


# --8<-- [end:train]


# --------------------------------------------------------------------------- figures


def sweep_figure(eps_values, curves, path):
    figure, axes = plt.subplots(figsize=(6.5, 3.6))
    for (name, errors), color in zip(curves.items(), ("tab:blue", "tab:orange")):
        axes.loglog(eps_values, np.maximum(errors, 1e-17), "o-", ms=3, color=color,
                    label=f"loss computed in {name}")
    axes.invert_xaxis()
    axes.set_xlabel("finite-difference step eps (smaller to the right)")
    axes.set_ylabel("relative error vs backprop")
    axes.set_title("Central differences of d loss / d dense2.kernel")
    axes.grid(alpha=0.3, which="both")
    axes.legend()
    save_figure(figure, path)


def curve_figure(curve, batch, steps_per_epoch, path):
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"wspace": 0.3})
    loss = np.asarray(curve["loss"])
    window = max(1, min(50, len(loss) // 10))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    left.plot(curve["step"], loss, color="tab:blue", alpha=0.25, lw=0.8, label="each batch")
    left.plot(curve["step"][window - 1 :], smooth, color="tab:blue",
              label=f"mean of {window} batches")
    left.axhline(np.log(10), color="gray", ls="--", lw=0.8, label="ln 10 (uniform guess)")
    left.set_xlabel(f"SGD step (batch {batch}; {steps_per_epoch} steps per epoch)")
    left.set_ylabel("training loss (cross-entropy)")
    left.set_ylim(0, 2.6)
    left.legend(fontsize=8)
    right.plot(curve["eval_step"], 100 * np.asarray(curve["test_accuracy"]), "o-", ms=3,
               color="tab:green")
    right.set_xlabel("SGD step")
    right.set_ylabel("test accuracy (%)")
    right.set_ylim(80, 100)
    right.grid(alpha=0.3)
    figure.suptitle("784 -> 100 -> ReLU -> 10, trained with our hand-written backward pass")
    save_figure(figure, path)


def softmax_figure(panels, path):
    """p and p - onehot for test images: (probabilities, true label, title) per panel."""
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.2), sharey=True)
    k = np.arange(10)
    for ax, (probs, label, title) in zip(axes, panels):
        onehot = (k == label).astype(float)
        ax.bar(k - 0.2, probs, 0.4, label="softmax p", color="tab:blue")
        ax.bar(k + 0.2, probs - onehot, 0.4, label="p - onehot = d loss / d logits",
               color="tab:red")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_xticks(k)
        ax.set_xlabel("class")
        ax.set_title(f"{title}\n(true class {label}, predicted {int(np.argmax(probs))})",
                     fontsize=10)
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].legend(fontsize=7, loc="lower left")
    save_figure(figure, path)


def weights_figure(change, path, count=24):
    """What training added to the incoming weights of the first hidden units."""
    figure, axes = plt.subplots(3, count // 3, figsize=(count / 3 * 1.1, 3.6))
    for unit, ax in enumerate(axes.flat):
        w = change[:, unit].reshape(28, 28)
        scale = np.abs(w).max()
        ax.imshow(w, cmap="seismic", vmin=-scale, vmax=scale)
        ax.axis("off")
    figure.suptitle("Trained minus initial weights into the first hidden units (red +, blue -)")
    save_figure(figure, path)


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    train_images, train_labels = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    if lesson.quick:
        train_images, train_labels = train_images[:500], train_labels[:500]
        test_images, test_labels = test_images[:500], test_labels[:500]
    x = standardize(train_images).reshape(len(train_images), -1)  # (N, 784) float32
    y = train_labels.astype(np.int64)
    x_test = standardize(test_images).reshape(len(test_images), -1)
    y_test = test_labels.astype(np.int64)

    # 1. Finite differences, float64, a small network on 16 real images.
    check_hidden = 4 if lesson.quick else 32  # 784 * hidden kernel entries, 2 losses each
    check_params, _ = mlp(check_hidden).init(lesson.seed, (784,), np.float64)
    xs, ys = x[:16].astype(np.float64), y[:16]
    check = gradient_check(check_params, xs, ys)
    eps_values = np.logspace(-1, -11, 21)
    sweep = eps_sweep(check_params, xs, ys, eps_values)
    sweep_figure(eps_values, sweep, lesson.path("gradcheck_eps.png"))
    best = {
        name: (float(eps_values[int(np.argmin(e))]), float(min(e))) for name, e in sweep.items()
    }

    # 2. The Flax twin.
    dtypes = ("float32",) if lesson.quick else ("float32", "float64")  # XLA compiles a lot
    flax = flax_parity(x_test[:64], y_test[:64], hidden=100, dtypes=dtypes)

    # 3. Training with SGD.
    hidden, batch, lr = 100, 128 if not lesson.quick else 50, 0.1
    epochs, eval_every = (1, 2) if lesson.quick else (2, 25)
    initial, _ = mlp(hidden).init(lesson.seed, (784,), np.float32)
    initial_probs = softmax(predict(initial, x_test))
    params, curve = train(initial, x, y, x_test, y_test, epochs=epochs, batch=batch, lr=lr,
                          eval_every=eval_every, seed=lesson.seed)
    final_logits = predict(params, x_test)  # after the last step: loss and accuracy agree
    probs = softmax(final_logits)
    wrong = int(np.flatnonzero(np.argmax(probs, axis=1) != y_test)[0])
    steps_per_epoch = len(x) // batch
    curve_figure(curve, batch, steps_per_epoch, lesson.path("learning_curve.png"))
    softmax_figure([(initial_probs[0], y_test[0], "test image 0, before training"),
                    (probs[0], y_test[0], "test image 0, after training"),
                    (probs[wrong], y_test[wrong], f"test image {wrong}, after training")],
                   lesson.path("softmax_gradient.png"))
    change = params["dense1"]["kernel"] - initial["dense1"]["kernel"]
    weights_figure(change, lesson.path("first_layer_weights.png"))
    initial_loss = float(softmax_cross_entropy_forward(predict(initial, x_test), y_test)[0])

    lesson.finish({
        "gradcheck_float64": {k: float(f"{v:.2e}") for k, v in check.items()},
        "gradcheck_worst": float(f"{max(check.values()):.2e}"),
        "gradcheck_shapes": {"hidden": check_hidden, "batch": 16},
        "eps_values": [float(f"{e:.3g}") for e in eps_values],
        "eps_sweep": {k: [float(f"{v:.3g}") for v in e] for k, e in sweep.items()},
        "best_eps": {k: {"eps": float(f"{e:.2g}"), "error": float(f"{v:.2g}")}
                     for k, (e, v) in best.items()},
        "error_at_1e-6": {k: float(f"{e[int(np.argmin(np.abs(eps_values - 1e-6)))]:.2g}")
                          for k, e in sweep.items()},
        "float32_backward_vs_float64": float(f"{backward_in_float32(check_params, xs, ys):.2e}"),
        "flax": flax,
        "train": {
            "hidden": hidden, "batch": batch, "lr": lr, "epochs": epochs, "eval_every": eval_every,
            "steps": curve["step"][-1], "steps_per_epoch": steps_per_epoch,
            "train_images": len(x), "test_images": len(x_test),
            "initial_test_loss": round(initial_loss, 4), "ln10": round(float(np.log(10)), 4),
            "final_batch_loss": round(float(np.mean(curve["loss"][-20:])), 4),
            "test_loss": round(float(softmax_cross_entropy_forward(final_logits, y_test)[0]), 4),
            "test_accuracy": round(float(np.mean(np.argmax(final_logits, axis=1) == y_test)), 4),
            "accuracy_after_100_steps": round(
                curve["test_accuracy"][min(len(curve["test_accuracy"]), 100 // eval_every) - 1],
                4),
            "example_label": int(y_test[0]),
            "example_p_true_before": round(float(initial_probs[0, y_test[0]]), 4),
            "example_p_true_after": round(float(probs[0, y_test[0]]), 4),
            "wrong_index": wrong, "wrong_label": int(y_test[wrong]),
            "wrong_predicted": int(np.argmax(probs[wrong])),
            "wrong_p_true": round(float(probs[wrong, y_test[wrong]]), 4),
            "wrong_p_predicted": round(float(probs[wrong].max()), 4),
        },
    })


if __name__ == "__main__":
    main()
