"""Lesson 03: convolution. The definition as loops, the same thing as one matrix multiply
(im2col), and its backward pass, which is itself a convolution: of the stride-dilated
output gradient with the flipped kernel. All of it checked against each other, against
finite differences and against Flax's nnx.Conv, on real MNIST digits.

    python lessons/03_convolution.py           # ~1 min
    python lessons/03_convolution.py --quick   # seconds
"""

import jax

jax.config.update("jax_enable_x64", True)  # float64 on the Flax side too

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from _lesson import Lesson  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from scratchcnn import layers as L  # noqa: E402
from scratchcnn import parity  # noqa: E402
from scratchcnn.data.mnist import load_mnist  # noqa: E402
from scratchcnn.data.preprocess import standardize, to_unit_nhwc  # noqa: E402
from scratchcnn.gradcheck import numerical_gradient, relative_error  # noqa: E402
from scratchcnn.ops.conv import (  # noqa: E402
    conv2d_backward,
    conv2d_forward,
    conv2d_naive_backward,
    conv2d_naive_forward,
    conv_geometry,
)
from scratchcnn.ops.windows import crop_hw, dilate_hw, extract_windows, pad_hw  # noqa: E402
from scratchcnn.viz import save_figure  # noqa: E402

# Hand-made 3x3 kernels: what a first conv layer often learns by itself.
HAND_KERNELS = {
    "vertical edges (Sobel x)": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "horizontal edges (Sobel y)": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "diagonal edges": [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],
    "outline (Laplacian)": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
    "blur (3x3 mean)": [[1 / 9] * 3] * 3,
}


# --8<-- [start:input_grad_by_convolution]
def input_grad_by_convolution(dout, kernel, x_shape, strides, padding):
    """dL/dx of a convolution, computed by running the *forward* loops of a convolution.

    1. dilate: put stride - 1 zeros between neighbouring pixels of the output gradient,
       so every gradient sits where its window started;
    2. pad by kernel - 1 on every side (plus any rows the last window never reached),
       so every window that touched a pixel is seen;
    3. convolve (stride 1, no padding) with the kernel flipped top-bottom and left-right,
       its input and output channels swapped;
    4. crop away the forward pass's padding.
    """
    (kh, kw), (sh, sw), pads, (ho, wo) = conv_geometry(x_shape, kernel.shape, strides, padding)
    hp, wp = (x_shape[1 + a] + sum(pads[a]) for a in (0, 1))  # the padded input's size
    spread = dilate_hw(dout, (sh, sw))
    spread = pad_hw(spread, ((kh - 1, kh - 1 + hp - ((ho - 1) * sh + kh)),
                             (kw - 1, kw - 1 + wp - ((wo - 1) * sw + kw))))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)  # (kh, kw, C_out, C_in)
    dx_padded, _ = conv2d_naive_forward(spread, flipped, padding="VALID")
    return crop_hw(dx_padded, pads)


# --8<-- [end:input_grad_by_convolution]


def kernels_figure(image, path):
    """One digit convolved with each hand-made kernel (SAME padding, stride 1)."""
    kernel = np.stack([np.array(k, np.float32) for k in HAND_KERNELS.values()], axis=-1)
    out, _ = conv2d_forward(image[None], kernel[:, :, None, :])  # (1, 28, 28, 5)
    grid = {"height_ratios": [1, 2.2], "hspace": 0.15}
    figure, axes = plt.subplots(2, 1 + len(HAND_KERNELS), figsize=(13, 4.4), gridspec_kw=grid)
    axes[0, 0].axis("off")
    axes[1, 0].imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)  # white ink on black
    axes[1, 0].set_title("input", fontsize=9)
    for col, (name, k) in enumerate(HAND_KERNELS.items(), start=1):
        k = np.array(k)
        scale = np.abs(k).max()
        axes[0, col].imshow(k, cmap="seismic", vmin=-scale, vmax=scale)
        annotate(axes[0, col], k, "{:.2g}")
        axes[0, col].set_title(name, fontsize=9)
        o = out[0, :, :, col - 1]
        scale = np.abs(o).max()
        axes[1, col].imshow(o, cmap="seismic", vmin=-scale, vmax=scale)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("A digit convolved with hand-made 3x3 kernels (red +, blue -)")
    save_figure(figure, path)


def im2col_figure(path):
    """A 5x5 image numbered 1..25, its nine 3x3 windows as rows, one row highlighted."""
    x = np.arange(1, 26, dtype=np.float64).reshape(1, 5, 5, 1)
    windows = extract_windows(x, (3, 3), (1, 1), (3, 3))  # (1, 3, 3, 9, 1)
    rows = windows.reshape(9, 9)
    highlight = 5  # window (1, 2)
    hi, hj = divmod(highlight, 3)
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2),
                                         gridspec_kw={"width_ratios": [1, 1.7]})
    left.imshow(np.zeros((5, 5)), cmap="Greys", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(x[0, :, :, 0]):
        left.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=11)
    left.add_patch(Rectangle((hj - 0.5, hi - 0.5), 3, 3, fill=False, ec="tab:red", lw=2.5))
    left.set_title("5x5 image: the window of output pixel (1, 2)", fontsize=10)
    right.imshow(np.zeros((9, 9)), cmap="Greys", vmin=0, vmax=1)
    for (i, j), v in np.ndenumerate(rows):
        right.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=10,
                   color="tab:red" if i == highlight else "black")
    right.add_patch(Rectangle((-0.5, highlight - 0.5), 9, 1, fill=False, ec="tab:red", lw=2.5))
    right.set_yticks(range(9), [f"({i}, {j})" for i in range(3) for j in range(3)])
    right.set_xticks(range(9), [f"{di},{dj}" for di in range(3) for dj in range(3)])
    right.set_xlabel("tap (di, dj): row of the kernel reshaped to (9, C_out)")
    right.set_ylabel("output pixel (i, j)")
    right.set_title("im2col: one row per window (9 x 9)", fontsize=10)
    left.set_xticks(range(5))
    left.set_yticks(range(5))
    save_figure(figure, path)
    return rows


def annotate(ax, a, fmt="{:.0f}"):
    """Write every non-zero value of a small array on its cell, readable on any colour."""
    scale = max(np.abs(a).max(), 1e-12)
    for (i, j), v in np.ndenumerate(a):
        if v:
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7,
                    color="white" if abs(v) > 0.6 * scale else "black")


def backward_figure(kernel, positions, path):
    """dL/dx of a 3x3 stride-2 convolution of an 11x11 image, for an output gradient that
    is 1 at a few pixels: by the loops of the chain rule, and as a convolution."""
    x = np.zeros((1, 11, 11, 1))  # dL/dx does not depend on x: the convolution is linear
    k = kernel[:, :, None, None]
    out, cache = conv2d_naive_forward(x, k, strides=2, padding="SAME")
    dout = np.zeros_like(out)
    for i, j in positions:
        dout[0, i, j, 0] = 1.0
    by_loops, _ = conv2d_naive_backward(dout, cache)
    by_conv = input_grad_by_convolution(dout, k, x.shape, 2, "SAME")
    pads = conv_geometry(x.shape, k.shape, 2, "SAME").pads
    unreached = 11 + sum(pads[0]) - ((out.shape[1] - 1) * 2 + 3)  # 0 here: 11 is odd
    padded = pad_hw(dilate_hw(dout, (2, 2)), ((2, 2 + unreached), (2, 2 + unreached)))
    panels = [
        (kernel, "kernel K"),
        (dout[0, :, :, 0], f"output gradient ({out.shape[1]}x{out.shape[2]})"),
        (padded[0, :, :, 0], f"dilated, padded by 2 ({padded.shape[1]}x{padded.shape[2]})"),
        (kernel[::-1, ::-1], "K flipped"),
        (by_conv[0, :, :, 0], "⋆ flipped K, cropped (11x11)"),
        (by_loops[0, :, :, 0], "dx by the loops (11x11)"),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(16, 3.3),
                                gridspec_kw={"width_ratios": [3, 6, 15, 3, 11, 11]})
    for ax, (a, title) in zip(axes, panels):
        scale = max(np.abs(a).max(), 1e-12)
        ax.imshow(a, cmap="seismic", vmin=-scale, vmax=scale)
        annotate(ax, a)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle("The backward pass of a 3x3 stride-2 convolution: each gradient pixel "
                    "stamps a copy of K onto its window", y=1.02)
    save_figure(figure, path)
    return relative_error(by_loops, by_conv)


def equal_ways(x, kernel, strides, padding) -> dict:
    """Forward: loops vs im2col. Backward: loops vs library vs the flipped-kernel convolution."""
    naive, naive_cache = conv2d_naive_forward(x, kernel, strides=strides, padding=padding)
    im2col, im2col_cache = conv2d_forward(x, kernel, strides=strides, padding=padding)
    dout = np.random.default_rng(1).standard_normal(naive.shape).astype(x.dtype)
    dx_loops, g_loops = conv2d_naive_backward(dout, naive_cache)
    dx_library, g_library = conv2d_backward(dout, im2col_cache)
    dx_conv = input_grad_by_convolution(dout, kernel, x.shape, strides, padding)
    return {
        "forward, im2col vs loops": relative_error(im2col, naive),
        "d input, library vs loops": relative_error(dx_library, dx_loops),
        "d input, flipped-kernel convolution vs loops": relative_error(dx_conv, dx_loops),
        "d kernel, library vs loops": relative_error(g_library["kernel"], g_loops["kernel"]),
    }


def finite_differences(seed) -> dict:
    """Backprop vs central differences, float64, a small strided convolution."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 7, 6, 2))
    kernel = rng.standard_normal((3, 3, 2, 3))
    out, cache = conv2d_forward(x, kernel, strides=2, padding="SAME")
    dout = rng.standard_normal(out.shape)
    dx, grads = conv2d_backward(dout, cache)

    def loss_x(xx):
        return float(np.sum(conv2d_forward(xx, kernel, strides=2, padding="SAME")[0] * dout))

    def loss_k(kk):
        return float(np.sum(conv2d_forward(x, kk, strides=2, padding="SAME")[0] * dout))

    return {
        "d input": relative_error(dx, numerical_gradient(loss_x, x.copy())),
        "d kernel": relative_error(grads["kernel"], numerical_gradient(loss_k, kernel.copy())),
    }


def flax_parity(images, dtypes, seed) -> dict:
    """Our conv against nnx.Conv: the random-shape cases of ``scratchcnn parity``, and a
    32-channel 3x3 layer on real digits. Worst relative difference per quantity."""
    rows = {}
    cases = [case for case in parity.OP_CASES if case[0].startswith("conv")]
    for dtype in dtypes:
        worst = {}
        for name, layer, in_shape, train in cases:
            for quantity, value in parity.op_row(name, layer, in_shape, train, dtype).diffs.items():
                key = quantity.replace("conv1.", "")
                worst[key] = max(worst.get(key, 0.0), value)
        rows[f"{len(cases)} shapes, strides and paddings, {dtype}"] = worst
        model = L.Sequential([L.Conv(32, 3)])
        params, state = model.init(seed, images.shape[1:], dtype)
        rng = np.random.default_rng(seed)
        params["conv1"]["bias"] = rng.standard_normal(32).astype(dtype)
        out_shape = (len(images), 28, 28, 32)
        diffs = parity.compare_network(
            model, params, state, images.astype(dtype), train=False, key=jax.random.key(0),
            dout=rng.standard_normal(out_shape).astype(dtype),
        )
        rows[f"3x3, 1 -> 32 channels, {len(images)} digits, {dtype}"] = {
            k.replace("conv1.", ""): v for k, v in diffs.items()
        }
    return {k: {q: float(f"{v:.2e}") for q, v in d.items()} for k, d in rows.items()}


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    images, labels = load_mnist("test")
    count = 32 if lesson.quick else 256
    unit = to_unit_nhwc(images[:count])  # [0, 1], for pictures
    x32 = standardize(images[:count])

    kernels_figure(unit[0], lesson.path("kernels.png"))
    rows = im2col_figure(lesson.path("im2col.png"))

    asymmetric = np.array([[1, 2, 0], [0, 1, 0], [0, -1, -3]], np.float64)
    deltas = [(1, 1), (1, 4), (4, 2)]  # output pixels whose gradient is 1
    figure_diff = backward_figure(asymmetric, deltas, lesson.path("backward_conv.png"))

    rng = np.random.default_rng(lesson.seed)
    k1 = (rng.standard_normal((3, 3, 1, 8)) / 3).astype(np.float32)
    k2 = (rng.standard_normal((3, 3, 8, 16)) / 8.5).astype(np.float32)
    hidden = np.maximum(conv2d_forward(x32, k1)[0], 0)  # a real 8-channel feature map
    ways = {}
    for dtype in (np.float32, np.float64):
        name = np.dtype(dtype).name
        h, k = hidden.astype(dtype), k2.astype(dtype)
        ways[f"3x3 stride 1 SAME, 8 -> 16 channels, {name}"] = equal_ways(h, k, 1, "SAME")
        ways[f"3x3 stride 2 SAME, 8 -> 16 channels, {name}"] = equal_ways(h, k, 2, "SAME")
    ways = {k: {q: float(f"{v:.2e}") for q, v in d.items()} for k, d in ways.items()}

    dtypes = ("float32",) if lesson.quick else ("float32", "float64")  # XLA compiles a lot
    flax = flax_parity(x32[: 8 if lesson.quick else 64], dtypes, lesson.seed)

    lesson.finish({
        "batch": count,
        "im2col_rows": rows.astype(int).tolist(),
        "backward_figure_difference": float(f"{figure_diff:.2e}"),
        "equal_ways": ways,
        "equal_ways_worst": {
            dtype: float(f"{max(v for k, d in ways.items() if dtype in k for v in d.values()):.2e}")
            for dtype in ("float32", "float64")
        },
        "finite_differences": {k: float(f"{v:.2e}") for k, v in finite_differences(0).items()},
        "flax": flax,
    })


if __name__ == "__main__":
    main()
