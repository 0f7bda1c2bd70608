"""Lesson 13: speed. One convolution written four ways, and where a training step's time goes.

The ladder (the reference CNN's second convolution, 32 -> 32 channels at 28x28, 3x3 SAME,
one batch of 128): the loops of the definition; im2col with one matrix multiply on the
whole batch (the plain op, scratchcnn/ops/conv.py); the same im2col a cache-sized chunk of
images at a time on every core (the fast NumPy backend, scratchcnn/fast/conv.py); the plain
im2col compiled by jax.jit; and, for reference, XLA's
own convolution. Then a per-layer profile of one NumPy training step, and the step
benchmark of benchmarks/step_speed.py drawn as a figure.

    python lessons/13_speed.py           # ~10 s
    python lessons/13_speed.py --quick   # ~5 s
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from _lesson import ROOT, Lesson

from scratchcnn.fast import FastOps
from scratchcnn.fast import conv as fast_conv
from scratchcnn.fast.cores import keep_freed_memory
from scratchcnn.layers import Conv, layer_rng
from scratchcnn.ops import conv
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.viz import save_figure

sys.path.insert(0, str(ROOT / "benchmarks"))
from step_speed import median_seconds, reference_cnn  # noqa: E402

BENCHMARK = ROOT / "benchmarks" / "results" / "step_speed.json"
NAMES = {"scratch-numpy": "scratchcnn NumPy", "scratch-jax": "scratchcnn jax.jit",
         "flax-optax": "Flax + optax", "torch": "PyTorch CPU"}


def median_ms(fn, repeats: int) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    return 1e3 * median_seconds(fn, repeats, warmup=1)


def pure_python_ms(x, kernel, samples: int = 24) -> float:
    """The definition with one Python multiply-add at a time, timed on a few output
    values and extrapolated to the whole batch (the full run would take minutes)."""
    n, h, w, c = x.shape
    x_pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).tolist()
    weights = kernel.tolist()
    start = time.perf_counter()
    for s in range(samples):
        i, j, o = s % h, (3 * s) % w, s % kernel.shape[3]
        total = 0.0
        for di in range(3):
            for dj in range(3):
                for ci in range(c):
                    total += x_pad[0][i + di][j + dj][ci] * weights[di][dj][ci][o]
    per_output = (time.perf_counter() - start) / samples
    return 1e3 * per_output * n * h * w * kernel.shape[3]


def conv_ladder(batch: int, repeats: int, seed: int) -> list[dict]:
    """Forward time of one convolution, implemented five ways, on the same batch."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 28, 28, 32)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, 32, 32)) / 17).astype(np.float32)
    flops = 2 * batch * 28 * 28 * 3 * 3 * 32 * 32
    keep_freed_memory()  # the same malloc for every way (the profile below says why)
    xj, kj = jnp.asarray(x), jnp.asarray(kernel)
    reference = conv.conv2d_forward(x, kernel)[0]
    ways = [
        ("loops over output pixels", lambda: conv.conv2d_naive_forward(x, kernel)[0]),
        ("im2col, whole batch", lambda: conv.conv2d_forward(x, kernel)[0]),  # BLAS on every core
        ("im2col, chunks on every core", lambda: fast_forward(x, kernel)),
        ("im2col, jax.jit", compiled(lambda x, k: conv.conv2d_forward(x, k)[0], xj, kj)),
        ("XLA's own convolution", compiled(xla_conv, xj, kj)),
    ]
    rows = [
        {
            "name": "pure Python, one multiply at a time (extrapolated)",
            "forward_ms": round(pure_python_ms(x, kernel), 1),
        }
    ]
    rows[0]["gflops"] = round(flops / rows[0]["forward_ms"] / 1e6, 3)
    for name, fn in ways:
        output = fn.output() if hasattr(fn, "output") else fn()
        assert np.allclose(np.asarray(output), reference, atol=1e-3), name  # same numbers
        ms = median_ms(fn, 1 if name.startswith("loops") else repeats)
        rows.append({"name": name, "forward_ms": round(ms, 2),
                     "gflops": round(flops / ms / 1e6, 1)})
    return rows


def xla_conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def compiled(conv_fn, x, kernel):
    """conv_fn under jax.jit, timed as a layer inside a compiled network runs: its output
    handed on (here summed), not returned. Returned as the compiled function's result,
    our im2col's product compiled to code about three times slower. ``.output()`` gives
    the output itself, to check it."""
    summed = jax.jit(lambda x, k: conv_fn(x, k).sum())

    def run():
        return summed(x, kernel).block_until_ready()

    run.output = lambda: jax.jit(conv_fn)(x, kernel)
    return run


def fast_forward(x, kernel):
    """The fast backend's convolution, set up as for a whole pass of a network."""
    with FastOps.whole_pass():
        return fast_conv.conv2d_forward(x, kernel)[0]


def step_profile(batch: int, repeats: int, seed: int) -> list[dict]:
    """Milliseconds per layer, forward and backward, of one NumPy step of the reference CNN."""
    model = reference_cnn()
    params, state = model.init(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, batch)
    forward, backward = {n: [] for n in model.names}, {n: [] for n in model.names}
    with FastOps.whole_pass():  # NumPy arrays: the layers run the fast backend
        for _ in range(repeats + 1):  # the first pass warms up, its times are dropped
            h, caches = x, []
            for i, (name, layer) in enumerate(zip(model.names, model.layers)):
                start = time.perf_counter()
                h, _, cache = layer.forward(params.get(name, {}), state.get(name, {}), h,
                                            train=True, rng=layer_rng(rng, i))
                forward[name].append(time.perf_counter() - start)
                caches.append(cache)
            _, loss_cache = softmax_cross_entropy_forward(h, labels)
            d = softmax_cross_entropy_backward(1.0, loss_cache)[0]
            for i in reversed(range(len(model.layers))):
                name, layer = model.names[i], model.layers[i]
                start = time.perf_counter()
                if i == 0 and isinstance(layer, Conv):
                    d, _ = layer.backward(d, caches[i], input_grad=False)
                else:
                    d, _ = layer.backward(d, caches[i])
                backward[name].append(time.perf_counter() - start)
    return [
        {"layer": n, "forward_ms": round(1e3 * float(np.median(forward[n][1:])), 2),
         "backward_ms": round(1e3 * float(np.median(backward[n][1:])), 2)}
        for n in model.names if n != "flatten1"
    ]


def ladder_figure(rows, path):
    figure, axes = plt.subplots(figsize=(7, 3))
    names = [r["name"] for r in rows][::-1]
    values = [r["forward_ms"] for r in rows][::-1]
    bars = axes.barh(names, values, color="tab:blue")
    axes.bar_label(bars, [f"{v:,.1f} ms" for v in values], padding=3, fontsize=8)
    axes.set_xscale("log")
    axes.set_xlabel("forward time for the batch (ms, log scale)")
    axes.set_title("One 3x3 convolution, 32 -> 32 channels at 28x28")
    axes.margins(x=0.25)
    save_figure(figure, path)


def profile_figure(rows, batch, path):
    figure, axes = plt.subplots(figsize=(7, 3.6))
    names = [r["layer"] for r in rows][::-1]
    fwd = np.array([r["forward_ms"] for r in rows][::-1])
    bwd = np.array([r["backward_ms"] for r in rows][::-1])
    axes.barh(names, fwd, label="forward", color="tab:blue")
    axes.barh(names, bwd, left=fwd, label="backward", color="tab:orange")
    axes.set_xlabel(f"milliseconds per batch of {batch}")
    axes.set_title("One NumPy training step of the reference CNN, layer by layer")
    axes.legend(loc="lower right")
    save_figure(figure, path)


def benchmark_figure(bench, path):
    rows = [r for r in bench["rows"] if r["network"] == "reference"]
    figure, axes = plt.subplots(figsize=(7, 2.8))
    names = [NAMES[r["implementation"]] for r in rows][::-1]
    values = [r["train_images_per_second"] for r in rows][::-1]
    bars = axes.barh(names, values, color="tab:green")
    axes.bar_label(bars, [f"{v:,.0f}" for v in values], padding=3, fontsize=8)
    axes.set_xlabel("training images per second (batch 128, float32)")
    axes.set_title("Reference CNN, one training step (forward, backward, Adam)")
    axes.margins(x=0.15)
    save_figure(figure, path)


def main():
    lesson = Lesson(__file__, __doc__.splitlines()[0])
    batch, repeats = (16, 2) if lesson.quick else (128, 15)
    ladder = conv_ladder(batch, repeats, lesson.seed)
    ladder_figure(ladder, lesson.path("conv_ladder.png"))
    profile = step_profile(batch, repeats, lesson.seed)
    profile_figure(profile, batch, lesson.path("step_profile.png"))
    bench = json.loads(BENCHMARK.read_text())
    benchmark_figure(bench, lesson.path("step_benchmark.png"))
    total = sum(r["forward_ms"] + r["backward_ms"] for r in profile)
    convs = sum(
        r["forward_ms"] + r["backward_ms"] for r in profile if r["layer"].startswith("conv")
    )
    by_name = {r["name"]: r for r in ladder}
    lesson.finish({
        "batch": batch,
        "conv_ladder": ladder,
        "speedup_python_to_chunks": round(
            by_name["pure Python, one multiply at a time (extrapolated)"]["forward_ms"]
            / by_name["im2col, chunks on every core"]["forward_ms"]),
        "speedup_loops_to_chunks": round(
            by_name["loops over output pixels"]["forward_ms"]
            / by_name["im2col, chunks on every core"]["forward_ms"], 1),
        "speedup_whole_to_chunks": round(
            by_name["im2col, whole batch"]["forward_ms"]
            / by_name["im2col, chunks on every core"]["forward_ms"], 1),
        "step_profile": profile,
        "profile_total_ms": round(total, 1),
        "conv_share_percent": round(100 * convs / total, 1),
    })


if __name__ == "__main__":
    main()
