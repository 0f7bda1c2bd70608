"""BatchNorm folding and the ONNX export: onnxruntime must compute what our forward computes.

Every registered network, with weights that are not trivial (random biases, random
BatchNorm statistics so folding matters), runs on real MNIST test digits through both
our NumPy forward pass and onnxruntime; logits, probabilities and feature maps must agree
within 1e-5 (relative, ``gradcheck.relative_error``) in both input layouts. Then the
file's contract (names, shapes, metadata) and ``scratchcnn export``'s refusals.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import __version__, models
from scratchcnn.checkpoint import save_checkpoint
from scratchcnn.data.preprocess import standardize_unit, to_unit_nhwc
from scratchcnn.errors import ShapeError
from scratchcnn.export import ExportError, build_onnx, save_onnx
from scratchcnn.fold import fold_batchnorm
from scratchcnn.gradcheck import relative_error
from scratchcnn.layers import (
    AvgPool,
    BatchNorm,
    Conv,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool,
    ReLU,
    Sequential,
)
from scratchcnn.metrics import softmax
from scratchcnn.residual import Residual

pytestmark = pytest.mark.lesson14

TOLERANCE = 1e-5


# ----------------------------------------------------------------------------- helpers


def random_weights(model: Sequential, seed: int, dtype=np.float32) -> tuple[dict, dict]:
    """Initialized weights, plus random biases and BatchNorm parameters and statistics.

    A fresh BatchNorm (scale 1, bias 0, mean 0, var 1) is almost the identity, so folding
    it would prove little: here every channel gets its own scale, shift, mean and var.
    """
    params, state = model.init(seed, dtype=dtype)
    randomize_batchnorm_and_biases(model, params, state, np.random.default_rng(seed + 1000), dtype)
    return params, state


def randomize_batchnorm_and_biases(model: Sequential, params, state, rng, dtype) -> None:
    """``random_weights``' changes, in place; the branches of residual blocks too."""
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, Residual):
            for branch_name, branch in layer.branches().items():
                if branch_name in params[name]:
                    branch_state = state.get(name, {}).get(branch_name, {})
                    randomize_batchnorm_and_biases(
                        branch, params[name][branch_name], branch_state, rng, dtype
                    )
        elif isinstance(layer, BatchNorm):
            (c,) = params[name]["scale"].shape
            params[name] = {"scale": rng.uniform(0.5, 2.0, c), "bias": rng.normal(0, 0.5, c)}
            state[name] = {"mean": rng.normal(0, 0.5, c), "var": rng.uniform(0.5, 2.0, c)}
            params[name] = {k: v.astype(dtype) for k, v in params[name].items()}
            state[name] = {k: v.astype(dtype) for k, v in state[name].items()}
        elif "bias" in params.get(name, {}):
            shape = params[name]["bias"].shape
            params[name]["bias"] = rng.normal(0, 0.1, shape).astype(dtype)


def first_relu_after_first_conv(model: Sequential) -> str:
    """Name of the layer whose output the ``features`` output shows."""
    seen_conv = False
    for name, layer in zip(model.names, model.layers):
        seen_conv = seen_conv or isinstance(layer, Conv)
        if seen_conv and isinstance(layer, ReLU):
            return name
    raise AssertionError("no ReLU after a Conv")


def activation_of(model: Sequential, params, state, x, stop: str) -> np.ndarray:
    """Our eval-mode activation after layer ``stop``. x: standardized (N, 28, 28, 1)."""
    for name, layer in zip(model.names, model.layers):
        x, _, _ = layer.forward(params.get(name, {}), state.get(name, {}), x, train=False)
        if name == stop:
            return x
    raise AssertionError(stop)


def session(onnx_model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])


def run_onnx(onnx_model, images_nhwc: np.ndarray, layout: str = "nhwc") -> dict[str, np.ndarray]:
    """Run the model on [0, 1] images (N, 28, 28, 1): {output name: array}."""
    x = images_nhwc if layout == "nhwc" else images_nhwc.transpose(0, 3, 1, 2)
    sess = session(onnx_model)
    values = sess.run(None, {"image": np.ascontiguousarray(x, np.float32)})
    return {o.name: v for o, v in zip(sess.get_outputs(), values)}


def our_logits(model, params, state, unit_nhwc) -> np.ndarray:
    return model.forward(params, state, standardize_unit(unit_nhwc), train=False)[0]


def dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def digits(mnist_test) -> np.ndarray:
    """256 real test digits as [0, 1] float32 (N, 28, 28, 1)."""
    return to_unit_nhwc(mnist_test[0][:256])


# ----------------------------------------------------------------------------- fold.py


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_folded_network_computes_the_eval_forward(name):
    model = models.build(name)
    params, state = random_weights(model, seed=3, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(4, 28, 28, 1))
    folded, folded_params = fold_batchnorm(model, params, state)
    assert not any(isinstance(layer, BatchNorm | Dropout) for layer in folded.layers)
    expected = model.forward(params, state, x, train=False)[0]
    got = folded.forward(folded_params, {}, x, train=False)[0]
    assert relative_error(got, expected) <= 1e-12


def test_fold_of_one_pair_matches_the_formula_by_hand():
    """scale / sqrt(var + eps) worked out by hand: eps = 0, var = (4, 0.25), scale = (3, 1).

    The gains are (3 / 2, 1 / 0.5) = (1.5, 2); the new biases
    ((0.5 - 1) * 1.5 + 0.25, (0 - (-2)) * 2 - 1) = (-0.5, 3).
    """
    conv = Conv(2, kernel_size=2, padding="VALID")
    kernel = np.arange(16, dtype=np.float64).reshape(2, 2, 2, 2) - 7  # (kh, kw, C_in=2, C_out=2)
    params = {
        "conv1": {"kernel": kernel, "bias": np.array([0.5, 0.0])},
        "batchnorm1": {"scale": np.array([3.0, 1.0]), "bias": np.array([0.25, -1.0])},
    }
    state = {"batchnorm1": {"mean": np.array([1.0, -2.0]), "var": np.array([4.0, 0.25])}}
    model = Sequential([conv, BatchNorm(epsilon=0.0)])
    folded, folded_params = fold_batchnorm(model, params, state)
    assert folded.names == ["conv1"] and folded.layers[0].use_bias
    np.testing.assert_array_equal(folded_params["conv1"]["kernel"], kernel * [1.5, 2.0])
    np.testing.assert_array_equal(folded_params["conv1"]["bias"], [-0.5, 3.0])
    # And the folded layer computes conv followed by BatchNorm on a tiny image.
    x = np.random.default_rng(1).normal(size=(1, 3, 3, 2))
    expected = model.forward(params, state, x, train=False)[0]
    np.testing.assert_allclose(folded.forward(folded_params, {}, x, train=False)[0], expected)


def test_fold_gives_a_dense_layer_without_bias_one():
    model = Sequential([Dense(2, use_bias=False), BatchNorm(epsilon=0.0)])
    params = {
        "dense1": {"kernel": np.array([[1.0, 2.0], [3.0, 4.0]])},
        "batchnorm1": {"scale": np.array([2.0, 1.0]), "bias": np.array([1.0, 0.0])},
    }
    state = {"batchnorm1": {"mean": np.array([1.0, 1.0]), "var": np.array([1.0, 4.0])}}
    _, folded = fold_batchnorm(model, params, state)
    # gains (2, 0.5); biases (0 - 1) * 2 + 1 = -1 and (0 - 1) * 0.5 + 0 = -0.5.
    np.testing.assert_array_equal(folded["dense1"]["kernel"], [[2.0, 1.0], [6.0, 2.0]])
    np.testing.assert_array_equal(folded["dense1"]["bias"], [-1.0, -0.5])


@pytest.mark.parametrize(
    "layers",
    [[Conv(4), ReLU(), BatchNorm(), Flatten(), Dense(10)], [BatchNorm(), Flatten(), Dense(10)]],
    ids=["after-relu", "first-layer"],
)
def test_fold_refuses_a_batchnorm_not_after_conv_or_dense(layers):
    model = Sequential(layers)
    params, state = model.init(0)
    with pytest.raises(ShapeError, match="batchnorm1: BatchNorm must follow a Conv or Dense"):
        fold_batchnorm(model, params, state)


# ----------------------------------------------------------------------------- parity


def assert_graph_follows_folded_names(onnx_model, model, params, state):
    """Conv/Gemm nodes are named as the folded layers; weights are <name>.weight/.bias."""
    folded, _ = fold_batchnorm(model, params, state)
    weighted = weighted_layer_names(folded)
    nodes = [n for n in onnx_model.graph.node if n.op_type in ("Conv", "Gemm")]
    assert [n.name for n in nodes] == weighted
    for node in nodes:
        assert list(node.input[1:]) == [f"{node.name}.weight", f"{node.name}.bias"]
    ops = {n.op_type for n in onnx_model.graph.node}
    assert ops <= {"Sub", "Div", "Transpose", "Conv", "Relu", "MaxPool", "AveragePool",
                   "GlobalAveragePool", "Flatten", "Gemm", "Softmax", "Add"}  # fmt: skip
    assert ("Add" in ops) == any(isinstance(layer, Residual) for layer in model.layers)


def weighted_layer_names(model: Sequential, prefix: str = "") -> list[str]:
    """Conv/Dense layer names in graph order; inside a residual block
    ``<block>.body.conv1``... (the body's nodes come before the shortcut's)."""
    names = []
    for name, layer in zip(model.names, model.layers):
        if isinstance(layer, Residual):
            for branch_name, branch in layer.branches().items():
                names += weighted_layer_names(branch, f"{prefix}{name}.{branch_name}.")
        elif type(layer) in (Conv, Dense):
            names.append(prefix + name)
    return names


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_onnxruntime_matches_our_forward(name, digits, record_property):
    model = models.build(name)
    params, state = random_weights(model, seed=1)
    logits = our_logits(model, params, state, digits)
    probs = softmax(logits)
    feature_layer = first_relu_after_first_conv(model)
    features = activation_of(model, params, state, standardize_unit(digits), feature_layer)
    worst = 0.0
    for layout in ("nhwc", "nchw"):
        onnx_model = build_onnx(model, params, state, model_name=name, features=True,
                                layout=layout)  # fmt: skip
        out = run_onnx(onnx_model, digits, layout)
        assert list(out) == ["logits", "probabilities", "features"]
        errors = {key: relative_error(out[key], ours)
                  for key, ours in (("logits", logits), ("probabilities", probs),
                                    ("features", features))}  # fmt: skip
        assert max(errors.values()) <= TOLERANCE, (layout, errors)
        worst = max(worst, errors["logits"])
    assert_graph_follows_folded_names(onnx_model, model, params, state)
    assert "BatchNormalization" not in {n.op_type for n in onnx_model.graph.node}
    record_property("max_relative_logits_error", worst)
    print(f"{name}: largest relative logits difference {worst:.2e}")


def test_padding_and_pooling_geometry_match_exactly(digits):
    """SAME with an even kernel (odd pixel at the end), strided SAME, explicit pairs,
    padded average pooling (padded cells count as zeros) and a floor-rounded max pool."""
    model = Sequential([
        Conv(8, 4, padding="SAME"), ReLU(),  # 28 -> 28, pads (1, 2)
        Conv(8, 3, strides=2, padding="SAME"),  # 28 -> 14, pads (0, 1)
        Conv(8, (2, 3), padding=((1, 0), (0, 2))), ReLU(),  # 14 -> 14
        AvgPool(3, strides=2, padding="SAME"),  # 14 -> 7, pads (0, 1)
        MaxPool(2, strides=1, padding="SAME"),  # 7 -> 7
        Conv(6, 3, padding=1), MaxPool(3, strides=2),  # 7 -> 3 (floor)
        Flatten(), Dense(10),
    ])  # fmt: skip
    params, state = random_weights(model, seed=5)
    onnx_model = build_onnx(model, params, state, model_name="geometry", softmax=False)
    got = run_onnx(onnx_model, digits[:32])["logits"]
    assert relative_error(got, our_logits(model, params, state, digits[:32])) <= TOLERANCE


def test_a_trained_network_predicts_the_same_digits(digits):
    """The shipped default network (trained, so its logits are far from random)."""
    from scratchcnn import pretrained

    if "default" not in pretrained.available():
        pytest.skip("the pretrained default network is not shipped in this copy")
    model, params, state = pretrained.load("default")
    ours = our_logits(model, params, state, digits)
    got = run_onnx(build_onnx(model, params, state, model_name="default"), digits)["logits"]
    assert relative_error(got, ours) <= TOLERANCE
    np.testing.assert_array_equal(got.argmax(1), ours.argmax(1))


# ----------------------------------------------------------------------------- contract


@pytest.fixture(scope="module")
def default_net():
    model = models.build("default")
    return (model, *random_weights(model, seed=2))


@pytest.mark.parametrize("layout", ["nhwc", "nchw"])
def test_names_shapes_and_any_batch_size(default_net, digits, layout):
    model, params, state = default_net
    onnx_model = build_onnx(model, params, state, model_name="default", layout=layout,
                            features=True)  # fmt: skip
    (image,) = onnx_model.graph.input
    assert image.name == "image"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert dims(image) == (["batch", 28, 28, 1] if layout == "nhwc" else ["batch", 1, 28, 28])
    outputs = {o.name: dims(o) for o in onnx_model.graph.output}
    assert outputs == {"logits": ["batch", 10], "probabilities": ["batch", 10],
                       "features": ["batch", 28, 28, 32]}  # fmt: skip
    for n in (1, 7):
        out = run_onnx(onnx_model, digits[:n], layout)
        assert out["logits"].shape == (n, 10) and out["features"].shape == (n, 28, 28, 32)
        np.testing.assert_allclose(out["probabilities"].sum(1), 1.0, rtol=1e-5)


def test_logits_only_without_softmax_or_features(default_net):
    model, params, state = default_net
    onnx_model = build_onnx(model, params, state, model_name="default", softmax=False)
    assert [o.name for o in onnx_model.graph.output] == ["logits"]
    assert "Softmax" not in {n.op_type for n in onnx_model.graph.node}


def test_metadata_documents_the_model(default_net):
    model, params, state = default_net
    extra = {"source_sha256": "ab" * 32, "test_accuracy": 0.99}
    onnx_model = build_onnx(model, params, state, model_name="default", metadata=extra)
    props = {p.key: p.value for p in onnx_model.metadata_props}
    assert props["architecture"] == "default"
    assert props["scratchcnn_version"] == __version__
    assert props["input_name"] == "image" and props["input_layout"] == "nhwc"
    assert json.loads(props["input_shape"]) == ["batch", 28, 28, 1]
    assert "[0, 1]" in props["pixels"] and "ink" in props["pixels"]
    assert "(image - 0.1307) / 0.3081" in props["normalization"]
    assert (float(props["normalization_mean"]), float(props["normalization_std"])) == (
        0.1307,
        0.3081,
    )
    assert set(json.loads(props["outputs"])) == {"logits", "probabilities"}
    assert props["source_sha256"] == "ab" * 32 and props["test_accuracy"] == "0.99"
    assert onnx_model.producer_name == "scratchcnn" and onnx_model.doc_string
    assert onnx_model.opset_import[0].version == 17 and onnx_model.ir_version == 8
    onnx.checker.check_model(onnx_model, full_check=True)
    with pytest.raises(ExportError, match="'architecture' is already set"):
        build_onnx(model, params, state, model_name="default", metadata={"architecture": "x"})


@dataclass(frozen=True)
class Wobble(Layer):
    """A layer the exporter has never heard of (identity, but who could know)."""

    kind = "wobble"

    def forward(self, params, state, x, *, train, rng=None):
        return x, state, None


@dataclass(frozen=True)
class LeakyReLU(ReLU):
    """A subclass of a supported layer that computes something else."""

    kind = "leaky"


@pytest.mark.parametrize(
    ("layers", "phrase"),
    [
        ([Conv(4), Wobble(), Flatten(), Dense(10)], r"wobble1 \(Wobble\) of architecture 'odd'"),
        ([Conv(4), LeakyReLU(), Flatten(), Dense(10)], r"leaky1 \(LeakyReLU\)"),
        ([Conv(4), ReLU(), BatchNorm(), Flatten(), Dense(10)], "must follow a Conv or Dense"),
        ([Conv(4), MaxPool(2, padding=2), Flatten(), Dense(10)], "padding smaller than"),
        ([Conv(4), ReLU()], "not one score per class"),
    ],
)
def test_unexportable_networks_are_refused(layers, phrase):
    model = Sequential(layers)
    params, state = model.init(0)
    with pytest.raises(ExportError, match=phrase):
        build_onnx(model, params, state, model_name="odd")


def test_a_dense_layer_on_a_feature_map_is_refused():
    """Our Dense needs (N, D); Sequential.init refuses such a network, build_onnx too."""
    params, state = Sequential([Conv(4), Flatten(), Dense(10)]).init(0)  # conv1, dense1
    with pytest.raises(ExportError, match="dense1 of architecture 'odd': .* needs a Flatten"):
        build_onnx(Sequential([Conv(4), Dense(10)]), params, state, model_name="odd")


def test_bad_layout_and_missing_features_are_refused(default_net):
    model, params, state = default_net
    with pytest.raises(ExportError, match="unknown layout 'nchwc'"):
        build_onnx(model, params, state, model_name="default", layout="nchwc")
    dense_only = Sequential([Flatten(), Dense(10)])
    with pytest.raises(ExportError, match="no ReLU after a Conv"):
        build_onnx(dense_only, *dense_only.init(0), model_name="mlp", features=True)


def test_save_onnx_refuses_existing_and_missing_folders(default_net, tmp_path):
    model, params, state = default_net
    onnx_model = build_onnx(model, params, state, model_name="default")
    path = save_onnx(onnx_model, tmp_path / "m.onnx")
    assert onnx.load(path).graph.output[0].name == "logits"
    with pytest.raises(ExportError, match="already exists"):
        save_onnx(onnx_model, path)
    assert save_onnx(onnx_model, path, force=True) == path
    with pytest.raises(ExportError, match="does not exist"):
        save_onnx(onnx_model, tmp_path / "nope" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ----------------------------------------------------------------------------- CLI


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, default_net) -> Path:
    model, params, state = default_net
    path = tmp_path_factory.mktemp("ckpt") / "net.npz"
    save_checkpoint(path, model_name="default", model=model, params=params, state=state)
    return path


def test_cli_writes_a_model_onnxruntime_runs(checkpoint, default_net, digits, tmp_path):
    out = tmp_path / "net.onnx"
    result = run("export", checkpoint, "--output", out)
    assert result.exit_code == 0, result.output
    line = result.stdout.strip()
    assert "\n" not in line and f"wrote {out}" in line
    assert "image (batch, 28, 28, 1)" in line and "logits (batch, 10)" in line
    assert "probabilities" in line and "MB" in line
    onnx_model = onnx.load(out)
    model, params, state = default_net
    got = run_onnx(onnx_model, digits[:16])["logits"]
    assert relative_error(got, our_logits(model, params, state, digits[:16])) <= TOLERANCE
    props = {p.key: p.value for p in onnx_model.metadata_props}
    assert props["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert props["source_checkpoint"] == "net.npz"


def test_cli_options_and_json(checkpoint, tmp_path):
    out = tmp_path / "nchw.onnx"
    result = run("export", checkpoint, "-o", out, "--layout", "nchw", "--no-softmax",
                 "--features", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["inputs"] == {"image": ["batch", 1, 28, 28]}
    assert summary["outputs"] == {"logits": ["batch", 10], "features": ["batch", 28, 28, 32]}
    assert summary["bytes"] == out.stat().st_size and summary["architecture"] == "default"


def test_cli_default_output_is_named_after_the_checkpoint(checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run("export", checkpoint)
    assert result.exit_code == 0, result.output
    assert onnx.load(tmp_path / "net.onnx").graph.input[0].name == "image"


def test_cli_refuses_to_overwrite_without_force(checkpoint, tmp_path):
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"precious")
    assert_one_line_error(run("export", checkpoint, "-o", out), "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    result = run("export", checkpoint, "-o", out, "--force")
    assert result.exit_code == 0, result.output
    assert onnx.load(out).producer_name == "scratchcnn"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--format", "tflite"], ["unknown export format 'tflite'", "onnx"]),
        (["--layout", "hwcn"], ["unknown layout 'hwcn'", "nhwc, nchw"]),
    ],
)
def test_cli_refuses_bad_options(checkpoint, tmp_path, flags, phrases):
    assert_one_line_error(run("export", checkpoint, "-o", tmp_path / "m.onnx", *flags), *phrases)
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_a_missing_folder(checkpoint, tmp_path):
    target = tmp_path / "missing" / "m.onnx"
    assert_one_line_error(run("export", checkpoint, "-o", target), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_architecture_with_an_unknown_layer(tmp_path, monkeypatch):
    def odd_net():
        return Sequential([Conv(4), Wobble(), ReLU(), Flatten(), Dense(10)])

    monkeypatch.setitem(models.MODELS, "odd_net", odd_net)
    model = odd_net()
    ckpt = tmp_path / "odd.npz"
    save_checkpoint(ckpt, model_name="odd_net", model=model, params=model.init(0)[0], state={})
    result = run("export", ckpt, "-o", tmp_path / "odd.onnx")
    assert_one_line_error(result, "wobble1 (Wobble)", "'odd_net'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.npz"]


def test_cli_int8_writes_a_quantized_model_as_accurate_as_float(mnist_dir, mnist_test, tmp_path):
    from scratchcnn import pretrained

    if "default" not in pretrained.available():
        pytest.skip("needs the shipped default network")
    images, labels = mnist_test
    x = to_unit_nhwc(images[:1000])
    accuracy = {}
    int8 = ["--int8", "--calibration", "500", "--data-dir", str(mnist_dir)]
    for name, flags in {"float": [], "int8": int8}.items():
        target = tmp_path / f"{name}.onnx"
        result = run(*["export", "default", "--output", str(target), *flags])
        assert result.exit_code == 0, result.output
        session = ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])
        (logits,) = session.run(["logits"], {"image": x})
        accuracy[name] = (logits.argmax(1) == labels[:1000]).mean()
        written = onnx.load(str(target))
        kinds = {init.data_type for init in written.graph.initializer}
        assert (onnx.TensorProto.INT8 in kinds) == (name == "int8")
        props = {p.key: p.value for p in written.metadata_props}
        assert ("first 500 MNIST training images" in props.get("quantization", "")) == (
            name == "int8"
        )
    assert (tmp_path / "int8.onnx").stat().st_size < 0.3 * (tmp_path / "float.onnx").stat().st_size
    assert abs(accuracy["int8"] - accuracy["float"]) <= 0.003, accuracy


def test_cli_refuses_weights_that_are_not_finite_and_its_own_source(tmp_path):
    model = models.build("default")
    params, state = model.init(0)
    bad = {"nan": ("params", "conv1", "kernel", np.nan),
           "inf": ("params", "dense1", "bias", np.inf),
           "var": ("state", "batchnorm1", "var", -1.0)}  # fmt: skip
    for label, (tree, layer, name, value) in bad.items():
        p = {k: {n: a.copy() for n, a in v.items()} for k, v in params.items()}
        s = {k: {n: a.copy() for n, a in v.items()} for k, v in state.items()}
        ({"params": p, "state": s}[tree])[layer][name].flat[0] = value
        path = tmp_path / f"{label}.npz"
        save_checkpoint(path, model_name="default", model=model, params=p, state=s)
        for flags in ([], ["--int8"]):
            target = tmp_path / f"{label}.onnx"
            result = run("export", path, "--output", target, *flags)
            assert result.exit_code == 1 and "Traceback" not in result.output, result.output
            assert f"{layer}/{name}" in result.stderr and len(result.stderr.splitlines()) == 1
            assert not target.exists() and not list(tmp_path.glob("*.tmp"))
    good = tmp_path / "good.npz"
    save_checkpoint(good, model_name="default", model=model, params=params, state=state)
    before = good.read_bytes()
    result = run("export", good, "--output", good, "--force")
    assert result.exit_code == 1 and "is the checkpoint being exported" in result.stderr
    assert good.read_bytes() == before
    result = run("export", good, "--output", tmp_path / "x.onnx", "--calibration", "10")
    assert result.exit_code == 1 and "only apply with --int8" in result.stderr
