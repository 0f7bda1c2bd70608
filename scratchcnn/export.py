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
from scratchcnn.data.idx import write_atomically
from scratchcnn.data.preprocess import MNIST_MEAN, MNIST_STD
from scratchcnn.errors import ScratchCNNError, ShapeError
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

FORMATS = ("onnx",)
LAYOUTS = ("nhwc", "nchw")

# Opset 17 has every operator we use in its present form, and IR version 8 (the smallest
# that carries opset 17) loads in every onnxruntime since 1.12, onnxruntime-web included.
OPSET = 17
IMAGE_SHAPE = (28, 28, 1)  # (H, W, C) of one MNIST digit
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


def _add_layer(graph: _Graph, name: str, layer: Layer, params: dict, model_name: str) -> None:
    """Append the nodes of one folded layer. Exact types only: a subclass may compute
    something else, and a silently wrong graph is worse than a refusal."""
    kind = type(layer)
    if kind in (Conv, MaxPool, AvgPool, GlobalAvgPool) and not graph.spatial:
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
    else:
        raise ExportError(
            f"cannot export layer {name} ({kind.__name__}) of architecture {model_name!r} to "
            "ONNX: only Conv, Dense, ReLU, MaxPool, AvgPool, GlobalAvgPool, Flatten, "
            "BatchNorm and Dropout are supported."
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
    if layout not in LAYOUTS:
        raise ExportError(f"unknown layout {layout!r}; choose one of: {', '.join(LAYOUTS)}.")
    try:
        folded, folded_params = fold_batchnorm(model, params, state)
    except ShapeError as error:
        raise ExportError(f"cannot export architecture {model_name!r}: {error}") from error
    feature_source = _features_layer(folded) if features else None
    if features and feature_source is None:
        raise ExportError(
            f"architecture {model_name!r} has no ReLU after a Conv layer to export as features."
        )

    h, w, c = IMAGE_SHAPE
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
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"cannot write {path}: it is a directory.")
    if not path.parent.is_dir():
        raise ExportError(f"cannot write {path}: the folder {path.parent} does not exist.")
    if path.exists() and not force:
        raise ExportError(f"{path} already exists; use --force (force=True) to overwrite it.")
    return path


def save_onnx(onnx_model: onnx.ModelProto, path: str | Path, *, force: bool = False) -> Path:
    """Write ``onnx_model`` to ``path`` atomically (all or nothing) and return the path."""
    path = check_target(path, force=force)
    data = onnx_model.SerializeToString()  # before the file exists: no half-written file
    write_atomically(path, lambda file: file.write(data))
    return path
