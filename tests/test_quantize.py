"""int8 post-training quantization: weights, integer sums, accuracy, the ONNX QDQ model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from scratchcnn import models, pretrained
from scratchcnn.inference import as_unit_images, predict_logits
from scratchcnn.layers import Conv
from scratchcnn.quantize import (
    CalibrationError,
    QuantizedNetwork,
    QuantizedOnnxError,
    fake_quant_forward,
    int8_conv,
    int8_forward,
    int32_matmul,
    predict_int8,
    quantize_bias,
    quantize_network,
    quantize_weights,
    quantized_onnx,
    size_bytes,
    weighted_layers,
)

pytestmark = pytest.mark.lesson14

# --------------------------------------------------------------------------- weights


def test_weight_quantization_per_channel():
    """Per-channel scales are max|w_c| / 127, values are int8 in [-127, 127], and each
    weight comes back within half a step; an all-zero channel gets scale 1, not 0."""
    rng = np.random.default_rng(0)
    # Channels of very different sizes, as after BatchNorm folding; channel 5 all zero.
    kernel = (rng.standard_normal((3, 3, 4, 8)) * rng.uniform(0.01, 3.0, 8)).astype(np.float32)
    kernel[..., 5] = 0
    with np.errstate(all="raise"):  # no division by zero anywhere
        w_q, scales = quantize_weights(kernel)
    assert w_q.dtype == np.int8 and w_q.shape == kernel.shape
    assert scales.dtype == np.float32 and scales.shape == (8,)
    expected = np.abs(kernel).max(axis=(0, 1, 2)) / 127
    live = np.arange(8) != 5
    np.testing.assert_allclose(scales[live], expected[live], rtol=1e-6)
    assert scales[5] == 1.0 and not w_q[..., 5].any()
    assert np.abs(w_q.astype(np.int32)).max() <= 127
    # The largest weight of every live channel lands exactly on +-127: the full range.
    assert (np.abs(w_q.astype(np.int32)).max(axis=(0, 1, 2))[live] == 127).all()
    error = np.abs(w_q * scales.astype(np.float64) - kernel)
    assert (error <= scales / 2 * (1 + 1e-6)).all()


def test_dense_kernel_scales_follow_the_output_axis():
    """A dense (in, out) kernel gets one scale per output column."""
    kernel = np.array([[1.0, -0.5, 0.0], [-2.54, 0.25, 0.0]], np.float32)
    w_q, scales = quantize_weights(kernel)
    np.testing.assert_allclose(scales, [2.54 / 127, 0.5 / 127, 1.0], rtol=1e-6)
    np.testing.assert_array_equal(w_q, [[50, -127, 0], [-127, 64, 0]])


def test_bias_is_int32_in_units_of_the_sums():
    output_scale = np.array([1e-4, 3e-3, 0.5], np.float32)
    bias = np.array([0.123456, -2.0, 0.2], np.float32)
    q = quantize_bias(bias, output_scale, fan_in=288)
    assert q.dtype == np.int32
    assert (np.abs(q * output_scale.astype(np.float64) - bias) <= output_scale / 2 + 1e-9).all()


# --------------------------------------------------------------------------- int32 sums


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_int32_sums_cannot_overflow(name):
    """All 127 times all 127 (and -127 times 127) at the largest fan-in of the network:
    the int32 sum is exact, 16,129 * fan_in."""
    _, fan_in = max_fan_in(models.build(name))
    a = np.full((2, fan_in), 127, np.int8)
    a[1] = -127
    w = np.full((fan_in, 1), 127, np.int8)
    sums = int32_matmul(a, w)
    assert sums.dtype == np.int32
    assert sums[:, 0].tolist() == [127 * 127 * fan_in, -127 * 127 * fan_in]
    # Without the cast to int32, NumPy sums int8 products in int8 and wraps around.
    assert (a @ w)[0, 0] != 127 * 127 * fan_in


def test_int8_conv_worst_case_and_zero_padding():
    """A 5x5 image of 127s, a 3x3 kernel of 127s over 64 channels (SAME): the centre
    sums 9 * 64 products, a corner 4 * 64 (the padding adds integer zeros)."""
    x = np.full((1, 5, 5, 64), 127, np.int8)
    w = np.full((3, 3, 64, 2), 127, np.int8)
    sums = int8_conv(x, w, Conv(2, 3))
    assert sums.dtype == np.int32 and sums.shape == (1, 5, 5, 2)
    assert sums[0, 2, 2, 0] == 127 * 127 * 9 * 64
    assert sums[0, 0, 0, 1] == 127 * 127 * 4 * 64


def max_fan_in(model) -> tuple[str, int]:
    """(layer name, fan-in) of the Conv/Dense layer with the most inputs per output."""
    params, _ = model.init(0)
    fan_ins = {
        n: int(np.prod(p["kernel"].shape[:-1])) for n, p in weighted_layers(model, params).items()
    }
    return max(fan_ins.items(), key=lambda item: item[1])


# --------------------------------------------------------------------------- calibration


def test_calibration_uses_the_images_given(mnist_train):
    """Different calibration sets give different scales; blank images give conv1 the
    scale of the standardized background, |(0 - 0.1307) / 0.3081| / 127."""
    model = models.build("default")
    params, state = model.init(0)
    images = mnist_train[0]
    first = quantize_network(model, params, state, images[:100])
    second = quantize_network(model, params, state, images[100:200])
    blank = quantize_network(model, params, state, np.zeros((4, 28, 28), np.uint8))
    scales = [{n: q.input_scale for n, q in net.layers.items()} for net in (first, second, blank)]
    assert scales[0] != scales[1]
    np.testing.assert_allclose(scales[2]["conv1"], 0.1307 / 0.3081 / 127, rtol=1e-6)
    assert scales[0]["conv1"] == pytest.approx((1 - 0.1307) / 0.3081 / 127, rel=1e-6)
    # A percentile below 100 clips the rare largest values: never a larger scale.
    clipped = quantize_network(model, params, state, images[:100], percentile=99.9)
    assert all(clipped.layers[n].input_scale <= scales[0][n] for n in scales[0])


@pytest.mark.parametrize(
    ("images", "words"),
    [
        (np.zeros((0, 28, 28), np.uint8), "empty"),
        (np.full((3, 28, 28), np.nan, np.float32), "NaN"),
    ],
)
def test_calibration_refuses_bad_sets(images, words):
    model = models.build("default")
    params, state = model.init(0)
    with pytest.raises(CalibrationError, match=words) as error:
        quantize_network(model, params, state, images)
    message = str(error.value)
    assert message.endswith(".") and message.count(". ") == 0 and "\n" not in message


# --------------------------------------------------------------------------- a trained net


@dataclass
class Trained:
    model: object
    params: dict
    state: dict
    qnet: QuantizedNetwork
    test_images: np.ndarray  # 1,000 real test images, uint8
    test_labels: np.ndarray
    float_logits: np.ndarray
    int8_logits: np.ndarray


@pytest.fixture(scope="module")
def trained(mnist_train, mnist_test) -> Trained:
    """The shipped default network, quantized with 1,000 training images."""
    if "default" not in pretrained.available():
        pytest.skip("the pretrained default network is not shipped in this copy")
    model, params, state = pretrained.load("default")
    qnet = quantize_network(model, params, state, mnist_train[0][:1000])
    images, labels = mnist_test[0][:1000], mnist_test[1][:1000]
    return Trained(
        model,
        params,
        state,
        qnet,
        images,
        labels,
        predict_logits(model, params, state, images),
        predict_int8(qnet, images),
    )


def test_int8_forward_equals_fake_quant_reference(trained):
    """The integer arithmetic computes exactly what the rounded values say.

    Both paths round the same real numbers to float32 before the next layer quantizes
    them (the int32 sum times s_in * s_w, or a float64 sum of rounded values), so they
    agree to float32 precision, far below one quantization step.
    """
    x = as_unit_images(trained.test_images[:200])[..., None]
    ours = int8_forward(trained.qnet, x)
    reference = fake_quant_forward(trained.qnet, x)
    assert ours.dtype == np.float32 and reference.dtype == np.float64
    assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-5
    np.testing.assert_array_equal(ours.argmax(1), reference.argmax(1))


def test_int8_accuracy_close_to_float(trained):
    """On 1,000 real test images: int8 accuracy within 1 point of float, and the two
    networks predict the same digit for at least 98% of the images."""
    float_pred, int8_pred = trained.float_logits.argmax(1), trained.int8_logits.argmax(1)
    float_acc = (float_pred == trained.test_labels).mean()
    int8_acc = (int8_pred == trained.test_labels).mean()
    assert float_acc > 0.85  # the network did learn
    assert abs(int8_acc - float_acc) <= 0.01
    assert (float_pred == int8_pred).mean() >= 0.98
    sizes = size_bytes(trained.qnet)
    assert sizes["int8"] < 0.26 * sizes["float32"]


# --------------------------------------------------------------------------- ONNX


def test_onnxruntime_runs_the_qdq_model(trained):
    import onnx
    import onnxruntime as ort

    from scratchcnn.export import build_onnx

    float_model = build_onnx(trained.model, trained.params, trained.state, model_name="default")
    qdq = quantized_onnx(float_model, trained.qnet)
    onnx.checker.check_model(qdq, full_check=True)
    initializers = {init.name: init for init in qdq.graph.initializer}
    for name in trained.qnet.layers:
        assert initializers[f"{name}.weight_quantized"].data_type == onnx.TensorProto.INT8
        assert initializers[f"{name}.bias_quantized"].data_type == onnx.TensorProto.INT32
        assert f"{name}.weight" not in initializers and f"{name}.bias" not in initializers
    data, float_data = qdq.SerializeToString(), float_model.SerializeToString()
    assert len(data) <= 0.3 * len(float_data)

    x = as_unit_images(trained.test_images)[..., None]
    # On x86 CPUs without VNNI, onnxruntime's fast int8 matrix multiply adds pairs of
    # products in int16 and can saturate; this option makes it use exact kernels.
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"image": x})
    ours = trained.int8_logits
    # Measured on the shipped default: 1.5e-3 (a handful of values round the other way).
    assert np.abs(logits - ours).max() / np.abs(ours).max() < 1e-2
    assert (logits.argmax(1) == ours.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(probabilities.sum(1), 1, rtol=1e-5)
    # With default options (saturation possible), the predictions still agree.
    default = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (default_logits,) = default.run(["logits"], {"image": x})
    assert (default_logits.argmax(1) == ours.argmax(1)).mean() >= 0.99


def test_qdq_rewrite_refuses_another_networks_weights(trained, mnist_train):
    from scratchcnn.export import build_onnx

    float_model = build_onnx(trained.model, trained.params, trained.state, model_name="default")
    params, state = trained.model.init(1)  # a different network
    other = quantize_network(trained.model, params, state, mnist_train[0][:10])
    with pytest.raises(QuantizedOnnxError, match="not the ones"):
        quantized_onnx(float_model, other)


def test_a_residual_network_is_quantized_in_both_branches(mnist_train, mnist_test):
    """resnet (initial weights): every conv of both branches of every block gets int8
    weights under its ONNX node's name, the integer forward pass equals its float64
    reference, and onnxruntime runs the QDQ graph, Add included, to the same logits."""
    import onnxruntime as ort

    from scratchcnn.export import build_onnx

    model = models.build("resnet")
    params, state = model.init(0)
    qnet = quantize_network(model, params, state, mnist_train[0][:100])
    assert list(qnet.layers) == [
        "conv1",
        "residual1.body.conv1", "residual1.body.conv2",
        "residual2.body.conv1", "residual2.body.conv2", "residual2.shortcut.conv1",
        "residual3.body.conv1", "residual3.body.conv2", "residual3.shortcut.conv1",
        "dense1",
    ]  # fmt: skip
    x = as_unit_images(mnist_test[0][:50])[..., None]
    ours = int8_forward(qnet, x)
    reference = fake_quant_forward(qnet, x)
    assert np.abs(ours - reference).max() / np.abs(reference).max() < 1e-5
    assert not np.array_equal(ours, predict_logits(model, params, state, mnist_test[0][:50]))

    qdq = quantized_onnx(build_onnx(model, params, state, model_name="resnet"), qnet)
    options = ort.SessionOptions()
    options.add_session_config_entry("session.x64quantprecision", "1")
    session = ort.InferenceSession(qdq.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    (logits,) = session.run(["logits"], {"image": x})
    assert np.abs(logits - ours).max() / np.abs(ours).max() < 1e-2
