"""Lesson 14: shipping the network. ONNX export, BatchNorm folding, int8 quantization.

For every network scratchcnn ships (scratchcnn.pretrained):

1. BatchNorm folded into the convolution before it: how far the folded network's logits
   are from the original's, in float64 and float32, on the test images.
2. Exported to ONNX (scratchcnn.export) and run by onnxruntime: the largest relative
   difference of its logits from our forward pass, and both accuracies.
3. Quantized to int8 after training (scratchcnn.quantize), calibrated on 1,000 training
   images: accuracy of float32, our int8 forward (NumPy, int32 sums) and onnxruntime's
   int8 model on all 10,000 test images; the sizes; and inference speed side by side.
4. A figure of weights and activations with their int8 grids.

    python lessons/14_shipping_the_network.py           # a few minutes on 2 cores
    python lessons/14_shipping_the_network.py --quick   # seconds: 500 images, one network

Speed is measured in this one run, every implementation on the same images; nothing else
should run on the machine meanwhile.
"""

import sys

import matplotlib.pyplot as plt
import numpy as np
import onnxruntime as ort
from _lesson import NETWORKS, ROOT, Lesson

from scratchcnn import __version__, pretrained
from scratchcnn.data.mnist import load_mnist
from scratchcnn.data.preprocess import standardize_unit, to_unit_nhwc
from scratchcnn.export import build_onnx
from scratchcnn.fold import fold_batchnorm
from scratchcnn.gradcheck import relative_error
from scratchcnn.inference import predict_logits
from scratchcnn.quantize import predict_int8, quantize_network, quantized_onnx, size_bytes
from scratchcnn.viz import save_figure

sys.path.insert(0, str(ROOT / "benchmarks"))
from step_speed import median_seconds  # noqa: E402

CALIBRATION_IMAGES = 1000  # from the training set: the test set never tunes anything


def session(onnx_model) -> ort.InferenceSession:
    """An onnxruntime session on the CPU, with onnxruntime's default options."""
    return ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])


def onnx_logits(sess: ort.InferenceSession, x_unit_nhwc, batch_size: int = 1000) -> np.ndarray:
    """x: (N, 28, 28, 1) pixels in [0, 1] -> logits (N, 10), the way a user runs the file."""
    parts = [sess.run(["logits"], {"image": x_unit_nhwc[i : i + batch_size]})[0]
             for i in range(0, len(x_unit_nhwc), batch_size)]
    return np.concatenate(parts)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def images_per_second(fn, n: int, repeats: int) -> float:
    """n / the median time of fn() (the benchmark's timer, as in lesson 13)."""
    return n / median_seconds(fn, repeats, warmup=1)


# --8<-- [start:folding_check]
def folding_check(model, params, state, x_unit) -> dict:
    """Relative difference of the folded network's logits from the original's (eval mode).

    In float64 it measures the algebra (it should be rounding error); in float32, what
    a deployed network sees.
    """
    out = {}
    for dtype in (np.float64, np.float32):
        cast = {k: {n: np.asarray(a, dtype) for n, a in v.items()} for k, v in params.items()}
        stats = {k: {n: np.asarray(a, dtype) for n, a in v.items()} for k, v in state.items()}
        x = standardize_unit(x_unit).astype(dtype)
        original, _, _ = model.forward(cast, stats, x, train=False)
        folded, folded_params = fold_batchnorm(model, cast, stats)
        logits, _, _ = folded.forward(folded_params, {}, x, train=False)
        out[np.dtype(dtype).name] = relative_error(logits, original)
    return out


# --8<-- [end:folding_check]


def ship_one(name: str, x_test, y_test, calibration, timing_images: int, repeats: int) -> dict:
    """Every number of this lesson for one shipped network."""
    model, params, state = pretrained.load(name)
    architecture = pretrained.manifest()[name]["architecture"]
    float_onnx = build_onnx(model, params, state, model_name=architecture)
    qnet = quantize_network(model, params, state, calibration)
    int8_onnx = quantized_onnx(float_onnx, qnet)
    float_sess, int8_sess = session(float_onnx), session(int8_onnx)

    ours = predict_logits(model, params, state, x_test[..., 0])
    ours_int8 = predict_int8(qnet, x_test[..., 0])
    ort_float = onnx_logits(float_sess, x_test)
    ort_int8 = onnx_logits(int8_sess, x_test)
    sizes = size_bytes(qnet)

    x_time = x_test[:timing_images]
    speed = {
        "ours float32": images_per_second(
            lambda: predict_logits(model, params, state, x_time[..., 0]), len(x_time), repeats),
        "ours int8": images_per_second(
            lambda: predict_int8(qnet, x_time[..., 0]), len(x_time), max(1, repeats // 3)),
        "onnxruntime float32": images_per_second(
            lambda: onnx_logits(float_sess, x_time), len(x_time), repeats),
        "onnxruntime int8": images_per_second(
            lambda: onnx_logits(int8_sess, x_time), len(x_time), repeats),
    }
    one = x_test[:1]
    latency_ms = {
        "onnxruntime float32": 1e3 / images_per_second(
            lambda: float_sess.run(["logits"], {"image": one}), 1, 50),
        "onnxruntime int8": 1e3 / images_per_second(
            lambda: int8_sess.run(["logits"], {"image": one}), 1, 50),
    }
    return {
        "name": name,
        "architecture": architecture,
        "folding": folding_check(model, params, state, x_test[:1000]),
        "onnx_relative_error": relative_error(ort_float, ours),
        "onnx_agreement": float((ort_float.argmax(1) == ours.argmax(1)).mean()),
        "accuracy": {
            "ours float32": accuracy(ours, y_test),
            "onnxruntime float32": accuracy(ort_float, y_test),
            "ours int8": accuracy(ours_int8, y_test),
            "onnxruntime int8": accuracy(ort_int8, y_test),
        },
        "int8_agreement": float((ours_int8.argmax(1) == ours.argmax(1)).mean()),
        "ort_int8_agreement": float((ort_int8.argmax(1) == ours_int8.argmax(1)).mean()),
        "bytes": {
            "checkpoint": pretrained.path(name).stat().st_size,
            "onnx float32": len(float_onnx.SerializeToString()),
            "onnx int8": len(int8_onnx.SerializeToString()),
            "weights float32": sizes["float32"],
            "weights int8": sizes["int8"],
        },
        "images_per_second": speed,
        "latency_ms": latency_ms,
        "timing_images": len(x_time),
        "qnet": qnet,  # for the figure; removed before results.json
    }


# --------------------------------------------------------------------------- the figure


def grids_figure(qnet, calibration, path) -> dict:
    """Weights of one channel and activations of one layer input, with their int8 grids.

    Top: conv2's kernel values for its widest output channel (3 x 3 x 32 weights), and
    dense1's; each channel has its own scale, so its grid spans exactly its largest
    weight. Bottom:
    the values entering conv2 and dense1 (after ReLU and pooling) on the calibration
    images, and that layer's one scale for all of them.
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")
    described = {}
    for ax, layer in zip(axes[0], ("conv2", "dense1")):
        q = qnet.layers[layer]
        kernel = np.asarray(qnet.params[layer]["kernel"], np.float64)
        channel = int(np.argmax(q.weight_scale))
        weights = kernel[..., channel].ravel()
        scale = float(q.weight_scale[channel])
        ax.hist(weights, bins=120, color="tab:blue")
        draw_grid(ax, scale, weights)
        ax.set_title(f"{layer} weights, channel {channel}: scale {scale:.2e}")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        described[f"{layer}_weight_scale"] = scale
    inputs = layer_inputs(qnet, calibration[:200])
    for ax, layer in zip(axes[1], ("conv2", "dense1")):
        values = inputs[layer].ravel()
        scale = float(qnet.layers[layer].input_scale)
        ax.hist(values, bins=120, color="tab:orange", log=True)
        draw_grid(ax, scale, values)
        zeros = float((values == 0).mean())
        ax.set_title(f"input of {layer}: scale {scale:.3f}, {zeros:.0%} exactly 0")
        ax.set_xlabel("activation value")
        ax.set_ylabel("count (log scale)")
        described[f"{layer}_input_scale"] = scale
        described[f"{layer}_input_zero_fraction"] = zeros
    fig.suptitle(
        "Float values and the int8 grid they are rounded to (grey: every 8th of the "
        "255 levels; black: the ends, +-127 x scale)"
    )
    save_figure(fig, path)
    return described


def draw_grid(ax, scale: float, values: np.ndarray) -> None:
    """Mark every 8th int8 level (k * scale) inside the data's range, and +-127 * scale."""
    low, high = values.min(), values.max()
    for k in range(-127, 128, 8):
        if low <= k * scale <= high:
            ax.axvline(k * scale, color="grey", lw=0.5, alpha=0.6)
    for end in (-127, 127):
        if low - scale <= end * scale <= high + scale:
            ax.axvline(end * scale, color="black", lw=1.2)


def layer_inputs(qnet, unit_images) -> dict:
    """The float input of every layer of the folded network: {name: array}."""
    x = standardize_unit(unit_images.astype(np.float32))
    seen = {}
    for name, layer in zip(qnet.model.names, qnet.model.layers):
        seen[name] = x
        x, _, _ = layer.forward(qnet.params.get(name, {}), {}, x, train=False)
    return seen


# --------------------------------------------------------------------------- the run


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    quick = lesson.quick
    n_test, timing_images, repeats = (500, 200, 1) if quick else (10_000, 2_000, 5)
    names = ["default"] if quick else pretrained.available()
    NETWORKS["shipped"].update(names)

    train_images, _ = load_mnist("train")
    test_images, test_labels = load_mnist("test")
    calibration = to_unit_nhwc(train_images[:CALIBRATION_IMAGES])
    x_test, y_test = to_unit_nhwc(test_images[:n_test]), test_labels[:n_test]

    rows = []
    for name in names:
        print(f"{name}: export, quantize, measure", flush=True)
        rows.append(ship_one(name, x_test, y_test, calibration[..., 0], timing_images, repeats))
        print({k: v for k, v in rows[-1].items() if k != "qnet"}, flush=True)
    grids = grids_figure(rows[0]["qnet"], calibration, lesson.path("int8_grids.png"))
    for row in rows:
        del row["qnet"]

    lesson.finish({
        "n_test": n_test,
        "calibration_images": CALIBRATION_IMAGES,
        "networks": rows,
        "grids": grids,
        "grids_network": names[0],
        "onnxruntime_version": ort.__version__,
        "scratchcnn_version": __version__,
    })


if __name__ == "__main__":
    main()
