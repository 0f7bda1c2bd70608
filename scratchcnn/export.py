"""Export a trained network to ONNX, one hand-written node per layer.

ONNX is a file format for computation graphs that many runtimes read (onnxruntime in
Python, C++, C#, Java, and in the browser). We do not use a converter: we walk our layer
list and write, for each layer, the ONNX node that computes the same thing. Three things
need care on the way.

NHWC and NCHW
    Our activations are NHWC (Flax's layout); ONNX's ``Conv`` and pooling nodes only
    speak NCHW, with OIHW kernels. The graph therefore takes the image in the layout its
    users have (``layout="nhwc"``: what our loaders and most image arrays give, or
    ``"nchw"``), transposes it to NCHW once, and stays there; each HWIO kernel is
    transposed to OIHW while it is written. Our ``Flatten`` reads a feature map in
    (H, W, C) order, so before flattening the graph transposes back to NHWC: then the
    dense layer's kernel is written exactly as the checkpoint holds it.

BatchNorm folding
    In eval mode a BatchNorm after a Conv or Dense layer is a fixed per-channel affine
    map, so ``scratchcnn.fold.fold_batchnorm`` merges it into that layer's kernel and
    bias, and drops Dropout (the identity in eval mode). The exported graph has one
    fewer pass over every activation, and nothing in it that behaves differently in
    training and inference.

What the file says about itself
    ``metadata_props`` (key/value strings any ONNX tool shows) document the input (name,
    layout, shape, and the pixel convention: floats in [0, 1], ink 1, background 0), the
    standardization the graph does inside (so callers must *not* do it), every output and
    its meaning, the architecture, the scratchcnn version, and whatever the caller adds
    (the command line adds the source checkpoint's SHA-256).

Node names are the folded layers' names (``conv1``, ``dense2``...), and their weights are
the initializers ``<name>.weight`` and ``<name>.bias``, so a tool can find a layer's
weights in the graph by the name our code gives it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from scratchcnn import __version__
from scratchcnn.data.mnist import INPUT_SHAPE
from scratchcnn.data.preprocess import MNIST_MEAN, MNIST_STD
from scratchcnn.errors import ScratchCNNError, ShapeError, WriteError
from scratchcnn.files import check_output_file, write_atomically
from scratchcnn.fold import fold_batchnorm
from scratchcnn.layers import (
    AvgPool,
    Conv,
    Dense,
    Flatten,
    GlobalAvgPool,
    Layer,
    MaxPool,
    ReLU,
    Sequential,
)
from scratchcnn.ops.conv import conv_geometry
from scratchcnn.ops.pool import pool_geometry
from scratchcnn.residual import Residual

FORMATS = ("onnx",)
LAYOUTS = ("nhwc", "nchw")

# Opset 17 has every operator we use in its present form, and IR version 8 (the smallest
# that carries opset 17) loads in every onnxruntime since 1.12, onnxruntime-web included.
OPSET = 17
INPUT_NAME = "image"
BATCH = "batch"  # the symbolic batch dimension: any N works

OUTPUT_MEANINGS = {
    "logits": "float32 (batch, K): unnormalized class scores, one per digit 0..K-1",
    "probabilities": "float32 (batch, K): softmax of the logits",
    "features": (
        "float32 (batch, H, W, C): the activations after the first ReLU that follows the "
        "first convolution, NHWC, one H x W map per channel"
    ),
}


class ExportError(ScratchCNNError, ValueError):
    """A network, an option or a target file that the export cannot handle."""


# --------------------------------------------------------------------------- the graph


@dataclass
class _Graph:
    """The graph under construction and the activation the next layer reads.

    ``shape`` is the activation's shape without the batch axis: (C, H, W) inside the
    graph (NCHW), or (D,) once flattened.
    """

    tensor: str
    shape: tuple[int, ...]
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)

    def add(self, op: str, inputs: list[str], output: str, name: str, **attributes) -> None:
        """Append one node; its output becomes the current activation."""
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attributes))
        self.tensor = output

    def constant(self, name: str, array) -> str:
        """Store a float32 initializer (weights, biases, constants); returns its name."""
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3


def _add_input(graph: _Graph, layout: str) -> None:
    """Standardize the [0, 1] image as our training did, then go to NCHW.

    ``(x - 0.1307) / 0.3081`` in float32, the same two operations ``standardize_unit``
    does, so the network sees the very numbers it saw in training.
    """
    graph.add("Sub", [INPUT_NAME, graph.constant("pixel_mean", MNIST_MEAN)], "centred", "centre")
    graph.add("Div", ["centred", graph.constant("pixel_std", MNIST_STD)], "standardized", "scale")
    if layout == "nhwc":
        graph.add("Transpose", ["standardized"], "standardized_nchw", "to_nchw", perm=[0, 3, 1, 2])


# --8<-- [start:add_conv]
def _add_conv(graph: _Graph, name: str, layer: Conv, params: dict) -> None:
    """Conv with an OIHW kernel, and our strides and resolved padding (SAME, VALID...).

    ``conv_geometry`` is the function our own forward pass uses, so the pads are ours
    exactly, including SAME with an even kernel (the odd pixel goes at the end).
    """
    kernel = np.asarray(params["kernel"])  # (kh, kw, C_in, C_out), HWIO
    channels, h, w = graph.shape
    geo = conv_geometry((1, h, w, channels), kernel.shape, layer.strides, layer.padding)
    (top, bottom), (left, right) = geo.pads
    # A layer without a bias gets a zero one, so every Conv has "<name>.bias".
    bias = params.get("bias", np.zeros(kernel.shape[3]))
    weight = graph.constant(f"{name}.weight", kernel.transpose(3, 2, 0, 1))  # -> OIHW
    graph.add(
        "Conv",
        [graph.tensor, weight, graph.constant(f"{name}.bias", bias)],
        name,
        name,
        kernel_shape=list(geo.window),
        strides=list(geo.strides),
        pads=[top, left, bottom, right],  # ONNX order: all the starts, then all the ends
    )
    graph.shape = (kernel.shape[3], *geo.out_hw)


# --8<-- [end:add_conv]


def _add_dense(graph: _Graph, name: str, layer: Dense, params: dict) -> None:
    """Gemm: (N, D_in) @ kernel (D_in, D_out) + bias; the kernel kept (in, out), transB=0."""
    kernel = np.asarray(params["kernel"])
    bias = params.get("bias", np.zeros(kernel.shape[1]))
    weight = graph.constant(f"{name}.weight", kernel)
    graph.add("Gemm", [graph.tensor, weight, graph.constant(f"{name}.bias", bias)], name, name)
    graph.shape = (kernel.shape[1],)


def _add_pool(graph: _Graph, name: str, layer: MaxPool | AvgPool, model_name: str) -> None:
    """MaxPool / AveragePool with our window, strides and pads (``pool_geometry``).

    Output sizes round down in both (ONNX's ``ceil_mode=0``), so keras_cnn's 7x7 -> 3x3
    matches. A padded cell never wins a max in either; average pooling counts padded
    cells as zeros in ours, which is ONNX's ``count_include_pad=1``.
    """
    channels, h, w = graph.shape
    window, strides, pads, out_hw = pool_geometry(
        (h, w), layer.window, layer.strides, layer.padding
    )
    (top, bottom), (left, right) = pads
    if max(top, bottom) >= window[0] or max(left, right) >= window[1]:
        raise ExportError(
            f"cannot export {name} of architecture {model_name!r}: ONNX pooling needs "
            f"padding smaller than the window, got pads {pads} for window {window}."
        )
    extra = {"count_include_pad": 1} if isinstance(layer, AvgPool) else {}
    op = "AveragePool" if isinstance(layer, AvgPool) else "MaxPool"
    graph.add(op, [graph.tensor], name, name, kernel_shape=list(window), strides=list(strides),
              pads=[top, left, bottom, right], **extra)  # fmt: skip
    graph.shape = (channels, *out_hw)


def _add_flatten(graph: _Graph, name: str) -> None:
    """Flatten in our (H, W, C) order: transpose back to NHWC, then Flatten.

    The other way would permute the next dense kernel's rows into (C, H, W) order; the
    transpose costs little (a few thousand floats per image) and keeps that kernel
    exactly as the checkpoint holds it, so the two can be compared by eye.
    """
    if not graph.spatial:
        return  # already (N, D): our Flatten leaves it as it is
    graph.add("Transpose", [graph.tensor], f"{name}_nhwc", f"{name}_to_nhwc", perm=[0, 2, 3, 1])
    graph.add("Flatten", [graph.tensor], name, name, axis=1)
    graph.shape = (int(np.prod(graph.shape)),)


def _add_global_avg_pool(graph: _Graph, name: str) -> None:
    """GlobalAveragePool gives (N, C, 1, 1); ours gives (N, C), hence the Flatten."""
    graph.add("GlobalAveragePool", [graph.tensor], f"{name}_nc11", name)
    graph.add("Flatten", [graph.tensor], name, f"{name}_squeeze", axis=1)
    graph.shape = (graph.shape[0],)


# --8<-- [start:add_residual]
def _add_residual(graph: _Graph, name: str, block: Residual, params: dict, model_name: str):
    """Both branches read the block's input; ``Add`` joins them and ``Relu`` follows.

    The branches' nodes are named ``<name>.body.conv1``, ``<name>.shortcut.conv1``...
    (weights ``<name>.body.conv1.weight``); an identity shortcut adds no node at all.
    """
    source, in_shape, ends = graph.tensor, graph.shape, []
    for branch_name, branch in block.branches().items():
        graph.tensor, graph.shape = source, in_shape  # each branch starts from the input
        for layer_name, layer in zip(branch.names, branch.layers):
            _add_layer(graph, f"{name}.{branch_name}.{layer_name}", layer,
                       params.get(branch_name, {}).get(layer_name, {}), model_name)  # fmt: skip
        ends.append(graph.tensor)
    graph.add("Add", ends, f"{name}.add", f"{name}.add")
    graph.add("Relu", [graph.tensor], name, name)


# --8<-- [end:add_residual]


def _add_layer(graph: _Graph, name: str, layer: Layer, params: dict, model_name: str) -> None:
    """Append the nodes of one folded layer. Exact types only: a subclass may compute
    something else, and a silently wrong graph is worse than a refusal."""
    kind = type(layer)
    if kind in (Conv, MaxPool, AvgPool, GlobalAvgPool, Residual) and not graph.spatial:
        raise ExportError(
            f"cannot export {name} of architecture {model_name!r}: it follows a flattened "
            f"activation of shape {graph.shape}."
        )
    if kind is Dense and graph.spatial:
        raise ExportError(
            f"cannot export {name} of architecture {model_name!r}: a Dense layer needs a "
            "Flatten or GlobalAvgPool before it."
        )
    if kind is Conv:
        _add_conv(graph, name, layer, params)
    elif kind is Dense:
        _add_dense(graph, name, layer, params)
    elif kind is ReLU:
        graph.add("Relu", [graph.tensor], name, name)
    elif kind in (MaxPool, AvgPool):
        _add_pool(graph, name, layer, model_name)
    elif kind is Flatten:
        _add_flatten(graph, name)
    elif kind is GlobalAvgPool:
        _add_global_avg_pool(graph, name)
    elif kind is Residual:
        _add_residual(graph, name, layer, params, model_name)
    else:
        raise ExportError(
            f"cannot export layer {name} ({kind.__name__}) of architecture {model_name!r} to "
            "ONNX: only Conv, Dense, ReLU, MaxPool, AvgPool, GlobalAvgPool, Flatten, "
            "Residual, BatchNorm and Dropout are supported."
        )


def _features_layer(model: Sequential) -> str | None:
    """Name of the first ReLU after the first Conv (the demo's feature maps), or None."""
    kinds = [type(layer) for layer in model.layers]
    if Conv not in kinds:
        return None
    first_conv = kinds.index(Conv)
    relus = [i for i, kind in enumerate(kinds) if kind is ReLU and i > first_conv]
    return model.names[relus[0]] if relus else None


def _rename_output(graph: _Graph, old: str, new: str) -> None:
    """Give the tensor ``old`` the name ``new`` everywhere (graph outputs need theirs)."""
    for node in graph.nodes:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    graph.tensor = new if graph.tensor == old else graph.tensor


# --------------------------------------------------------------------------- the model


def _folded(model, params, state, model_name: str, layout: str) -> tuple[Sequential, dict]:
    """The network to export, BatchNorm folded in; refuses an unknown input layout."""
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}.")
    try:
        return fold_batchnorm(model, params, state)
    except ShapeError as error:
        raise ExportError(f"cannot export architecture {model_name!r}: {error}") from error


def build_onnx(
    model: Sequential,
    params: dict,
    state: dict,
    *,
    model_name: str,
    softmax: bool = True,
    features: bool = False,
    layout: str = "nhwc",
    metadata: dict | None = None,
) -> onnx.ModelProto:
    """The eval-mode network as a checked ONNX model.

    Input ``image``: float32 pixels in [0, 1], ink 1 and background 0, shaped
    (batch, 28, 28, 1) for ``layout="nhwc"`` or (batch, 1, 28, 28) for ``"nchw"``.
    Outputs ``logits`` (batch, K); ``probabilities`` (batch, K) when ``softmax``;
    ``features`` (batch, H, W, C) when ``features``. ``metadata``: more key/value pairs
    for ``metadata_props`` (values that are not strings are stored as JSON).
    """
    folded, folded_params = _folded(model, params, state, model_name, layout)
    feature_source = _features_layer(folded) if features else None
    if features and feature_source is None:
        raise ExportError(
            f"architecture {model_name!r} has no ReLU after a Conv layer to export as features."
        )

    h, w, c = INPUT_SHAPE
    graph = _Graph(tensor=INPUT_NAME, shape=(c, h, w))
    _add_input(graph, layout)
    feature_shape = None
    for name, layer in zip(folded.names, folded.layers):
        _add_layer(graph, name, layer, folded_params.get(name, {}), model_name)
        if name == feature_source:
            feature_shape = graph.shape
    if graph.spatial:
        raise ExportError(
            f"cannot export architecture {model_name!r}: its output is a feature map of "
            f"shape {graph.shape}, not one score per class."
        )
    _rename_output(graph, graph.tensor, "logits")
    (classes,) = graph.shape
    outputs = [_value_info("logits", [BATCH, classes])]
    if softmax:
        graph.add("Softmax", ["logits"], "probabilities", "softmax", axis=1)
        outputs.append(_value_info("probabilities", [BATCH, classes]))
    if feature_source is not None:
        channels, fh, fw = feature_shape
        # feature_source still names the ReLU's output, unless that ReLU was the last layer.
        source = "logits" if feature_source == folded.names[-1] else feature_source
        graph.add("Transpose", [source], "features", "features_to_nhwc", perm=[0, 2, 3, 1])
        outputs.append(_value_info("features", [BATCH, fh, fw, channels]))

    input_shape = [BATCH, h, w, c] if layout == "nhwc" else [BATCH, c, h, w]
    onnx_graph = helper.make_graph(
        graph.nodes,
        f"scratchcnn_{model_name}",
        [_value_info(INPUT_NAME, input_shape)],
        outputs,
        initializer=graph.initializers,
    )
    output_names = [o.name for o in outputs]
    props = _metadata(model_name, layout, input_shape, output_names, metadata)
    onnx_model = _make_model(onnx_graph, model_name, props)
    onnx.checker.check_model(onnx_model, full_check=True)  # also infers every shape
    return onnx_model


def _value_info(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _make_model(graph: onnx.GraphProto, model_name: str, props: dict[str, str]):
    """Wrap the graph: opset, IR version, producer, doc string and metadata."""
    opsets = [helper.make_opsetid("", OPSET)]
    onnx_model = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="scratchcnn",
        producer_version=__version__,
        doc_string=(
            f"scratchcnn {model_name}: an MNIST digit classifier (BatchNorm folded, eval mode). "
            f"{props['input']}; {props['normalization']}. Outputs: {props['output_names']}."
        ),
    )
    # make_model stamps the newest IR version this onnx knows; older runtimes refuse it.
    onnx_model.ir_version = helper.find_min_ir_version_for(opsets)
    helper.set_model_props(onnx_model, props)
    return onnx_model


def _metadata(
    model_name: str, layout: str, input_shape: list, outputs: list[str], extra: dict | None
) -> dict[str, str]:
    """The ``metadata_props``: what the input must be, what each output means."""
    shape = ", ".join(str(n) for n in input_shape)
    props = {
        "input": f"{INPUT_NAME}: float32 ({shape}), {layout.upper()}",
        "input_name": INPUT_NAME,
        "input_layout": layout,
        "input_shape": json.dumps(input_shape),
        "pixels": (
            "floats in [0, 1] with MNIST's polarity: ink (the digit) 1, background 0; "
            "a 28x28 digit centred by centre of mass, as in MNIST"
        ),
        "normalization": (
            f"done inside the graph: (image - {MNIST_MEAN}) / {MNIST_STD}; "
            "do not standardize the image before feeding it"
        ),
        "normalization_mean": repr(MNIST_MEAN),
        "normalization_std": repr(MNIST_STD),
        "output_names": ", ".join(outputs),
        "outputs": json.dumps({name: OUTPUT_MEANINGS[name] for name in outputs}),
        "architecture": model_name,
        "batchnorm": "folded into the Conv/Gemm before it; Dropout removed (eval mode)",
        "weights": "Conv <name>.weight OIHW, Gemm <name>.weight (in, out) with transB=0",
        "scratchcnn_version": __version__,
    }
    for key, value in (extra or {}).items():
        if key in props:
            raise ExportError(f"metadata key {key!r} is already set by the export itself.")
        props[str(key)] = value if isinstance(value, str) else json.dumps(value)
    return props


# --------------------------------------------------------------------------- the file


def check_target(path: str | Path, *, force: bool = False) -> Path:
    """Refuse a folder, a missing parent folder, or an existing file without ``force``."""
    try:
        return check_output_file(Path(path), overwrite=force)
    except WriteError as error:
        raise ExportError(str(error)) from None


def save_onnx(onnx_model: onnx.ModelProto, path: str | Path, *, force: bool = False) -> Path:
    """Write ``onnx_model`` to ``path`` atomically (all or nothing) and return the path."""
    path = check_target(path, force=force)
    data = onnx_model.SerializeToString()  # before the file exists: no half-written file
    write_atomically(path, lambda file: file.write(data))
    return path


# --------------------------------------------------------------------------- the gradient
#
# FGSM in the browser needs d loss / d image. onnxruntime-web only runs graphs forward,
# so the second graph holds our backward pass too, written node by node as the first one
# is: the forward nodes (the very builders above), then, in reverse layer order, one small
# group of nodes per layer that does what that layer's ``*_backward`` function in
# ``scratchcnn/ops`` does. No autodiff, no training API: every node is written here.

GRADIENT_OUTPUT_MEANINGS = {
    "logits": OUTPUT_MEANINGS["logits"],
    "loss": "float32 (batch,): each example's cross-entropy at its label (not averaged)",
    "gradient": (
        "float32, the image's shape: d loss_i / d image_i, each example's loss by its own "
        "pixels in [0, 1] (the standardization inside the graph is differentiated too)"
    ),
}
LABEL_NAME = "label"


@dataclass
class _Step:
    """One folded layer as the backward pass needs it: what it read, and its shapes."""

    name: str
    layer: Layer
    params: dict
    input: str  # the tensor the layer read
    in_shape: tuple[int, ...]  # its shape without the batch axis, (C, H, W) or (D,)
    out_shape: tuple[int, ...]


def _int64(graph: _Graph, name: str, values) -> str:
    """An int64 initializer (shapes, axes, class indices); returns its name."""
    graph.initializers.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
    return name


def _shared_zero(graph: _Graph) -> str:
    """The float32 scalar 0, one initializer for every ReLU's mask."""
    if not any(tensor.name == "zero" for tensor in graph.initializers):
        graph.constant("zero", 0.0)
    return "zero"


def _check_differentiable(name: str, layer: Layer, model_name: str) -> None:
    """Refuse, before building anything, a layer whose backward we do not export."""
    if type(layer) not in (Conv, Dense, ReLU, MaxPool, AvgPool, GlobalAvgPool, Flatten):
        raise ExportError(
            f"cannot export the gradient of layer {name} ({type(layer).__name__}) of "
            f"architecture {model_name!r}: only Conv, Dense, ReLU, MaxPool, AvgPool, "
            "GlobalAvgPool, Flatten, BatchNorm and Dropout have a backward pass in ONNX."
        )


def _add_loss_and_its_gradient(graph: _Graph, classes: int) -> str:
    """``loss`` (N,) and d loss / d logits (N, K); returns the latter's name.

    The loss is ``-log_softmax(logits)[label]`` (``attacks.per_example_loss``). Its
    gradient is the famous ``softmax - one_hot`` (``softmax_cross_entropy_backward``, one
    example's loss, not the mean), but written as lesson 9's exercise 3 writes it: the
    true class's entry ``p_y - 1`` is formed as ``-sum_{k != y} p_k``. In float32,
    ``p_y - 1`` is a multiple of 2^-24 and loses every digit when the network is sure
    (p_y within 1e-7 of 1: most digits a trained network reads); the sum of the other
    probabilities keeps them, and it is what ``jax.grad`` computes too.
    """
    graph.add("LogSoftmax", ["logits"], "log_probabilities", "log_softmax", axis=1)
    column = _int64(graph, "label_as_column", [-1, 1])
    graph.add("Reshape", [LABEL_NAME, column], "label_column", "label_to_column")
    graph.add("GatherElements", ["log_probabilities", "label_column"], "log_p_label",
              "pick_label", axis=1)  # fmt: skip
    graph.add("Reshape", ["log_p_label", _int64(graph, "flat", [-1])], "log_p_flat",
              "log_p_label_flat")  # fmt: skip
    graph.add("Neg", ["log_p_flat"], "loss", "loss")
    # one_hot (N, K): Equal(label, 0..K-1), as the manual gradient builds it.
    graph.add("Equal", ["label_column", _int64(graph, "classes", np.arange(classes)[None])],
              "is_label", "is_label")  # fmt: skip
    graph.add("Cast", ["is_label"], "one_hot", "one_hot", to=TensorProto.FLOAT)
    graph.add("Softmax", ["logits"], "probabilities", "softmax", axis=1)
    graph.add("Sub", [graph.constant("one", 1.0), "one_hot"], "not_label", "not_label")
    graph.add("Mul", ["probabilities", "not_label"], "other_probabilities", "other_classes")
    graph.add("ReduceSum", ["other_probabilities", _int64(graph, "class_axis", [1])],
              "p_not_label", "sum_other_classes", keepdims=1)  # fmt: skip
    graph.add("Mul", ["p_not_label", "one_hot"], "label_share", "label_entry")
    graph.add("Sub", ["other_probabilities", "label_share"], "d_logits", "grad_logits")
    return "d_logits"


def _add_backward(graph: _Graph, step: _Step, dout: str) -> str:
    """The nodes of one layer's backward pass: d loss / d input from d loss / d output."""
    name, layer, x = step.name, step.layer, step.input
    kind = type(layer)
    d_in = f"d_{name}_input"

    if kind is Dense:
        # dense_backward: dx = dout @ W^T. MatMul with the transposed kernel; the
        # Transpose reads the forward's initializer, so the file holds the kernel once
        # (onnxruntime folds the Transpose away when it loads the graph).
        graph.add("Transpose", [f"{name}.weight"], f"{name}.weight_T", f"{name}_weight_T",
                  perm=[1, 0])  # fmt: skip
        graph.add("MatMul", [dout, f"{name}.weight_T"], d_in, f"grad_{name}")
    elif kind is ReLU:
        # relu_backward: dout * (x > 0); slope 0 at exactly 0, as ours and jax.nn.relu.
        graph.add("Greater", [x, _shared_zero(graph)], f"{name}_positive", f"{name}_positive")
        graph.add("Cast", [f"{name}_positive"], f"{name}_mask", f"{name}_mask",
                  to=TensorProto.FLOAT)  # fmt: skip
        graph.add("Mul", [dout, f"{name}_mask"], d_in, f"grad_{name}")
    elif kind is Flatten:
        if len(step.in_shape) != 3:
            return dout  # ours left an (N, D) activation as it was: so does its gradient
        # flatten_backward: reshape back to (N, H, W, C), then to NCHW as the graph runs.
        channels, h, w = step.in_shape
        shape = _int64(graph, f"{name}.nhwc_shape", [-1, h, w, channels])
        graph.add("Reshape", [dout, shape], f"d_{name}_nhwc", f"grad_{name}")
        graph.add("Transpose", [f"d_{name}_nhwc"], d_in, f"grad_{name}_to_nchw",
                  perm=[0, 3, 1, 2])  # fmt: skip
    elif kind is GlobalAvgPool:
        # global_avg_pool_backward: each of the H*W pixels gets dout / (H*W).
        channels, h, w = step.in_shape
        graph.add("Reshape", [dout, _int64(graph, f"{name}.nc11", [-1, channels, 1, 1])],
                  f"d_{name}_nc11", f"grad_{name}_nc11")  # fmt: skip
        graph.add("Div", [f"d_{name}_nc11", graph.constant(f"{name}.pixels", h * w)],
                  f"d_{name}_share", f"grad_{name}_share")  # fmt: skip
        graph.add("Expand", [f"d_{name}_share", _int64(graph, f"{name}.in_shape",
                  [1, channels, h, w])], d_in, f"grad_{name}")  # fmt: skip
    elif kind is MaxPool:
        _add_max_pool_backward(graph, step, dout, d_in)
    elif kind is AvgPool:
        _add_avg_pool_backward(graph, step, dout, d_in)
    elif kind is Conv:
        _add_conv_backward(graph, step, dout, d_in)
    else:  # _check_differentiable refused it before
        raise AssertionError(kind)
    graph.tensor = d_in
    return d_in


def _transpose_geometry(in_hw, out_hw, window, strides, pads) -> dict:
    """ConvTranspose attributes that give back an (H, W) input from an (Ho, Wo) output.

    ONNX: H = s * (Ho - 1) + output_padding + k - pad_start - pad_end. A convolution (or
    pooling) whose last window stops short of the padded input's end (floor division)
    leaves ``(H + pads - k) mod s`` rows no window reads: ``output_padding`` appends
    them, with gradient 0, as our backward's scatter leaves them.
    """
    (top, bottom), (left, right) = pads
    extra = [
        n + p0 + p1 - ((o - 1) * s + k)
        for n, o, k, s, (p0, p1) in zip(in_hw, out_hw, window, strides, pads)
    ]
    assert all(0 <= e < s for e, s in zip(extra, strides)), (extra, strides)
    return {
        "kernel_shape": list(window),
        "strides": list(strides),
        "pads": [top, left, bottom, right],
        "output_padding": extra,
    }


# --8<-- [start:conv_backward_onnx]
def _add_conv_backward(graph: _Graph, step: _Step, dout: str, d_in: str) -> None:
    """conv2d_backward's dx: ConvTranspose with the forward's own OIHW kernel.

    Our ``conv2d_backward`` computes dx by col2im, the adjoint of the forward pass's
    im2col; as lesson 3 derives, that equals a convolution of the stride-dilated, padded
    output gradient with the flipped kernel, its in/out channels swapped. ConvTranspose
    is exactly that operation (the adjoint of Conv with the same pads and strides), and
    ONNX defines its weight as (C_in of the transpose, C_out, kh, kw), the OIHW layout
    the forward Conv's initializer already has. So the node reads ``<name>.weight``
    itself: no flipped copy of the kernel in the file, and no zero-insertion node for a
    strided conv (a plain Conv with the flipped kernel would need both).
    """
    channels, h, w = step.in_shape
    _, ho, wo = step.out_shape
    kernel = np.asarray(step.params["kernel"])
    geo = conv_geometry((1, h, w, channels), kernel.shape, step.layer.strides,
                        step.layer.padding)  # fmt: skip
    attributes = _transpose_geometry((h, w), (ho, wo), geo.window, geo.strides, geo.pads)
    graph.add("ConvTranspose", [dout, f"{step.name}.weight"], d_in, f"grad_{step.name}",
              **attributes)  # fmt: skip


# --8<-- [end:conv_backward_onnx]


# --8<-- [start:max_pool_backward_onnx]
def _add_max_pool_backward(graph: _Graph, step: _Step, dout: str, d_in: str) -> None:
    """max_pool_backward: each window's gradient goes to its first maximum, row-major.

    The forward MaxPool node also writes its ``Indices`` output (``<name>_argmax``): for
    each window, the flat NCHW index ``((n * C + c) * H + h) * W + w`` of its maximum in
    the unpadded input (ONNX's ``storage_order=0``). onnxruntime scans a window row by
    row and replaces its maximum only by a strictly larger value, so a tie goes to the
    first maximum in row-major order: our convention (``max_pool_forward``), which is
    also where ``jax.grad`` sends it. ScatterElements then adds each window's gradient
    into a zero tensor of the input's size at that index (``reduction="add"``:
    overlapping windows may pick the same cell, and then their shares add, as ours do).
    """
    name = step.name
    flat = _int64(graph, f"{name}.flat", [-1])
    graph.add("Shape", [step.input], f"{name}_in_shape", f"{name}_in_shape")
    zero = helper.make_tensor(f"{name}.zero", TensorProto.FLOAT, [1], [0.0])
    graph.add("ConstantOfShape", [f"{name}_in_shape"], f"{name}_zeros", f"{name}_zeros",
              value=zero)  # fmt: skip
    graph.add("Reshape", [f"{name}_zeros", flat], f"{name}_zeros_flat", f"{name}_zeros_flat")
    graph.add("Reshape", [f"{name}_argmax", flat], f"{name}_argmax_flat",
              f"{name}_argmax_flat")  # fmt: skip
    graph.add("Reshape", [dout, flat], f"d_{name}_flat", f"grad_{name}_flat")
    graph.add("ScatterElements", [f"{name}_zeros_flat", f"{name}_argmax_flat",
              f"d_{name}_flat"], f"d_{name}_input_flat", f"grad_{name}_scatter", axis=0,
              reduction="add")  # fmt: skip
    graph.add("Reshape", [f"d_{name}_input_flat", f"{name}_in_shape"], d_in, f"grad_{name}")


# --8<-- [end:max_pool_backward_onnx]


def _add_avg_pool_backward(graph: _Graph, step: _Step, dout: str, d_in: str) -> None:
    """avg_pool_backward: every cell of a window gets 1 / (kh * kw) of its gradient.

    Average pooling with padded cells counted as zeros is a depthwise convolution with a
    constant kernel 1 / (kh * kw); its backward is the ConvTranspose of that kernel, one
    group per channel, with the pooling's pads and strides (as for Conv above).
    """
    channels, h, w = step.in_shape
    _, ho, wo = step.out_shape
    layer = step.layer
    window, strides, pads, _ = pool_geometry((h, w), layer.window, layer.strides, layer.padding)
    share = np.full((channels, 1, *window), 1.0 / (window[0] * window[1]))
    kernel = graph.constant(f"{step.name}.share", share)
    attributes = _transpose_geometry((h, w), (ho, wo), window, strides, pads)
    graph.add("ConvTranspose", [dout, kernel], d_in, f"grad_{step.name}", group=channels,
              **attributes)  # fmt: skip


def build_gradient_onnx(
    model: Sequential,
    params: dict,
    state: dict,
    *,
    model_name: str,
    layout: str = "nhwc",
    metadata: dict | None = None,
) -> onnx.ModelProto:
    """The eval-mode network and its input gradient, as one checked ONNX model.

    Inputs: ``image``, as for ``build_onnx`` (float32 pixels in [0, 1], NHWC or NCHW),
    and ``label`` (batch,) int64, the class whose loss to differentiate (FGSM on a
    reader's digit passes the class the network predicts). Outputs: ``logits``
    (batch, K), ``loss`` (batch,), each example's cross-entropy at its label, and
    ``gradient`` (the image's shape), d loss_i / d image_i: what
    ``attacks.loss_and_gradient`` returns, computed by our backward pass, node by node.
    """
    folded, folded_params = _folded(model, params, state, model_name, layout)
    for name, layer in zip(folded.names, folded.layers):
        _check_differentiable(name, layer, model_name)

    h, w, c = INPUT_SHAPE
    graph = _Graph(tensor=INPUT_NAME, shape=(c, h, w))
    _add_input(graph, layout)
    steps: list[_Step] = []
    for name, layer in zip(folded.names, folded.layers):
        before, in_shape = graph.tensor, graph.shape
        layer_params = folded_params.get(name, {})
        _add_layer(graph, name, layer, layer_params, model_name)
        if type(layer) is MaxPool:
            graph.nodes[-1].output.append(f"{name}_argmax")  # the Indices output
        steps.append(_Step(name, layer, layer_params, before, in_shape, graph.shape))
    if graph.spatial:
        raise ExportError(
            f"cannot export architecture {model_name!r}: its output is a feature map of "
            f"shape {graph.shape}, not one score per class."
        )
    output = graph.tensor
    _rename_output(graph, output, "logits")
    for step in steps:  # a Flatten of an (N, D) activation may have read it
        step.input = "logits" if step.input == output else step.input
    (classes,) = graph.shape

    grad = _add_loss_and_its_gradient(graph, classes)
    for step in reversed(steps):
        grad = _add_backward(graph, step, grad)
    # standardize_unit's backward: (x - mean) / std has derivative 1 / std; the graph's
    # Transpose to NCHW is undone first.
    if layout == "nhwc":
        graph.add("Transpose", [grad], "d_standardized", "grad_to_nhwc", perm=[0, 2, 3, 1])
        grad = "d_standardized"
    graph.add("Div", [grad, "pixel_std"], "gradient", "grad_standardize")

    input_shape = [BATCH, h, w, c] if layout == "nhwc" else [BATCH, c, h, w]
    inputs = [
        _value_info(INPUT_NAME, input_shape),
        helper.make_tensor_value_info(LABEL_NAME, TensorProto.INT64, [BATCH]),
    ]
    outputs = [
        _value_info("logits", [BATCH, classes]),
        _value_info("loss", [BATCH]),
        _value_info("gradient", input_shape),
    ]
    onnx_graph = helper.make_graph(graph.nodes, f"scratchcnn_{model_name}_gradient", inputs,
                                   outputs, initializer=graph.initializers)  # fmt: skip
    names = [o.name for o in outputs]
    props = _metadata(model_name, layout, input_shape, ["logits"], None)
    props.update({
        "label": f"{LABEL_NAME}: int64 (batch), the class whose cross-entropy is differentiated",
        "output_names": ", ".join(names),
        "outputs": json.dumps(GRADIENT_OUTPUT_MEANINGS),
        "gradient": (
            "our hand-written backward pass (scratchcnn/ops/*_backward), exported node by "
            "node; max-pool gradients go to the first maximum of each window, row-major"
        ),
    })  # fmt: skip
    for key, value in (metadata or {}).items():
        if key in props:
            raise ExportError(f"metadata key {key!r} is already set by the export itself.")
        props[str(key)] = value if isinstance(value, str) else json.dumps(value)
    onnx_model = _make_model(onnx_graph, model_name, props)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model
