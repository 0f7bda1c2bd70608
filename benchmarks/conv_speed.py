"""One convolution at a time: our passes beside XLA's and PyTorch's, and beside their own
matrix multiplies.

For each convolution of the reference CNN (batch 128, float32, 3x3 SAME) and each pass
(forward, input gradient, weight gradient), one process per implementation times:

  - numpy:          our fast NumPy backend (``scratchcnn/fast/conv.py``), as a training
                    step runs it;
  - numpy products: the same pass's matrix multiply alone, on window rows built
                    beforehand (NumPy's BLAS on both cores): what im2col would cost if
                    its copies were free;
  - jit:            our plain ops (``scratchcnn/ops/conv.py``) under ``jax.jit``;
  - jit tap sum:    the forward pass as a sum of per-tap products (each of the kh*kw
                    taps, a strided slice of the image, times its (C_in, C_out) slice of
                    the kernel), under ``jax.jit``: no window matrix at all;
  - jit products:   that matrix multiply alone, under ``jax.jit``;
  - xla:            ``lax.conv_general_dilated`` and ``jax.vjp`` of it, what Flax runs;
  - torch:          ``torch.nn.functional.conv2d`` and ``torch.nn.grad`` (oneDNN), NCHW.

The implementations take turns, three rounds, and each cell is its median over the rounds
(the machine's speed drifts). A compiled pass returns the sum of its output: inside a compiled
network a layer hands its output on, and returning a fresh output buffer from every call
would cost XLA more than some of the passes (4 ms of conv2's 8.5 ms forward when measured).
If even the products alone are slower than XLA's or PyTorch's whole pass, no
rearrangement of im2col's copies can catch up: the gap is in the multiply.

    python benchmarks/conv_speed.py            # JSON in benchmarks/results/conv_speed.json
    python benchmarks/conv_speed.py --smoke    # the first two convolutions, 2 repetitions, 1 round
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import machine  # noqa: E402  (a sibling script)
from step_speed import median_seconds, take_turns, worker_result  # noqa: E402

OUT = Path(__file__).parent / "results" / "conv_speed.json"
BATCH = 128
# The reference CNN's convolutions: (name, H = W, C_in, C_out), 3x3 kernels, SAME.
CONVS = (("conv1", 28, 1, 32), ("conv2", 28, 32, 32), ("conv3", 14, 32, 64), ("conv4", 14, 64, 64))
PASSES = ("forward", "input gradient", "weight gradient")
IMPLEMENTATIONS = (
    "numpy", "numpy products", "jit", "jit tap sum", "jit products", "xla", "torch",
)  # fmt: skip
REQUIRED = ("numpy", "jit", "xla")  # PyTorch is optional (pip install -e ".[bench]")


def arrays(hw: int, c_in: int, c_out: int):
    """x (N, H, W, C_in), kernel (3, 3, C_in, C_out), dout (N, H, W, C_out), float32."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, hw, hw, c_in), dtype=np.float32)
    kernel = rng.standard_normal((3, 3, c_in, c_out), dtype=np.float32) * 0.1
    dout = rng.standard_normal((BATCH, hw, hw, c_out), dtype=np.float32)
    return x, kernel, dout


def window_rows(x):
    """im2col of a 3x3 SAME convolution: x (N, H, W, C) -> (N*H*W, 9*C), built once."""
    from scratchcnn.ops.conv import conv_geometry
    from scratchcnn.ops.conv import window_rows as rows_of
    from scratchcnn.ops.windows import pad_hw

    geo = conv_geometry(x.shape, (3, 3, x.shape[3], 1), 1, "SAME")
    return np.ascontiguousarray(rows_of(pad_hw(x, geo.pads), geo))


# ------------------------------------------------------------------ one pass, each way


def numpy_passes(x, kernel, dout):
    """{pass: closure}: our fast NumPy backend's forward and backward passes.

    x: (N, H, W, C_in), kernel: (3, 3, C_in, C_out), dout: (N, H, W, C_out).
    """
    from scratchcnn.fast import conv

    cache = conv.conv2d_forward(x, kernel)[1]
    return {
        "forward": lambda: conv.conv2d_forward(x, kernel),
        "weight gradient": lambda: conv.conv2d_backward(dout, cache, input_grad=False),
        # timed as the whole backward pass; the weight gradient is subtracted afterwards
        "input gradient": lambda: conv.conv2d_backward(dout, cache),
    }


def numpy_products(x, kernel, dout):
    """{pass: closure}: each pass's matrix multiply alone on NumPy, windows built first."""
    rows, k = window_rows(x), kernel.reshape(-1, kernel.shape[3])
    d = dout.reshape(-1, kernel.shape[3])
    return {
        "forward": lambda: rows @ k,  # (NHW, 9C) @ (9C, O)
        "input gradient": lambda: d @ k.T,  # every window's gradient, before col2im
        "weight gradient": lambda: rows.T @ d,
    }


def jit_passes(x, kernel, dout):
    """{pass: closure}: our plain ops (im2col, col2im) under ``jax.jit``."""
    from scratchcnn.ops import conv

    def backward(x, kernel, dout, input_grad):
        cache = conv.conv2d_forward(x, kernel)[1]
        dx, grads = conv.conv2d_backward(dout, cache, input_grad=input_grad)
        return dx.sum() if input_grad else grads["kernel"].sum()

    return _compiled({
        "forward": lambda x, k, d: conv.conv2d_forward(x, k)[0].sum(),
        "input gradient": lambda x, k, d: backward(x, k, d, True),
        "weight gradient": lambda x, k, d: backward(x, k, d, False),
    }, x, kernel, dout)  # fmt: skip


def jit_tap_sum(x, kernel, dout):
    """Forward only: the formulation that builds no windows, for inference."""
    from scratchcnn.ops.conv import conv_geometry
    from scratchcnn.ops.windows import pad_hw, window_taps

    def forward(x, k, d):
        geo = conv_geometry(x.shape, k.shape, 1, "SAME")
        taps = window_taps(pad_hw(x, geo.pads), geo.window, geo.strides, geo.out_hw)
        kernel_taps = k.reshape(len(taps), k.shape[2], k.shape[3])  # (kh*kw, C_in, C_out)
        return sum(tap @ k_tap for tap, k_tap in zip(taps, kernel_taps)).sum()

    return _compiled({"forward": forward}, x, kernel, dout)


def jit_products(x, kernel, dout):
    """{pass: closure}: each pass's matrix multiply alone under ``jax.jit``."""
    c_out = kernel.shape[3]
    rows = window_rows(x)
    return _compiled({
        "forward": lambda r, k, d: (r @ k.reshape(-1, c_out)).sum(),
        "input gradient": lambda r, k, d: (d.reshape(-1, c_out) @ k.reshape(-1, c_out).T).sum(),
        "weight gradient": lambda r, k, d: (r.T @ d.reshape(-1, c_out)).sum(),
    }, rows, kernel, dout)  # fmt: skip


def xla_passes(x, kernel, dout):
    """{pass: closure}: XLA's own convolution and its ``jax.vjp``, as Flax runs them."""
    import jax

    def conv(x, k):
        return jax.lax.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )

    return _compiled({
        "forward": lambda x, k, d: conv(x, k).sum(),
        "input gradient": lambda x, k, d: jax.vjp(lambda x: conv(x, k), x)[1](d)[0].sum(),
        "weight gradient": lambda x, k, d: jax.vjp(lambda k: conv(x, k), k)[1](d)[0].sum(),
    }, x, kernel, dout)  # fmt: skip


def torch_passes(x, kernel, dout):
    """{pass: closure}: PyTorch's convolution and its gradients, on NCHW copies."""
    import torch

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    xt, dt = nchw(x), nchw(dout)
    kt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))  # OIHW
    conv, grad = torch.nn.functional.conv2d, torch.nn.grad

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()

        return run

    return {
        "forward": no_grad(lambda: conv(xt, kt, padding=1)),
        "input gradient": no_grad(lambda: grad.conv2d_input(xt.shape, kt, dt, padding=1)),
        "weight gradient": no_grad(lambda: grad.conv2d_weight(xt, kt.shape, dt, padding=1)),
    }


def _compiled(fns: dict, *args) -> dict:
    """Each pass jitted, on device arrays, awaited."""
    import jax

    args = jax.device_put(args)
    compiled = {name: jax.jit(fn) for name, fn in fns.items()}
    return {name: (lambda f=f: jax.block_until_ready(f(*args))) for name, f in compiled.items()}


PASS_MAKERS = {
    "numpy": numpy_passes,
    "numpy products": numpy_products,
    "jit": jit_passes,
    "jit tap sum": jit_tap_sum,
    "jit products": jit_products,
    "xla": xla_passes,
    "torch": torch_passes,
}


def worker(implementation: str, repeats: int, convs) -> dict:
    """{conv name: {pass: ms}} for one implementation, in this process."""
    from contextlib import nullcontext

    from scratchcnn.fast import FastOps
    from scratchcnn.fast.cores import keep_freed_memory

    keep_freed_memory()  # as our NumPy and jitted training steps do
    context = FastOps.whole_pass() if implementation == "numpy" else nullcontext()
    timings = {}
    with context:
        for name, hw, c_in, c_out in convs:
            passes = PASS_MAKERS[implementation](*arrays(hw, c_in, c_out))
            ms = {p: 1e3 * median_seconds(fn, repeats) for p, fn in passes.items()}
            if implementation == "numpy":  # the whole backward pass less its weight gradient
                ms["input gradient"] = max(ms["input gradient"] - ms["weight gradient"], 1e-3)
            timings[name] = ms
    return timings


# ------------------------------------------------------------------------------ driver


def run_worker(implementation: str, repeats: int, smoke: bool) -> dict | None:
    command = [sys.executable, __file__, "--worker", implementation, "--repeats", str(repeats)]
    return worker_result(command + (["--smoke"] if smoke else []), implementation)


def measure(repeats: int, rounds: int, smoke: bool) -> dict:
    """The implementations take turns, ``rounds`` times; each cell is the median over them."""
    convs = CONVS[:2] if smoke else CONVS
    runs = take_turns(
        lambda impl: run_worker(impl, repeats, smoke), IMPLEMENTATIONS, rounds, REQUIRED
    )
    timings = {
        impl: {name: {part: float(np.median([t[name][part] for t in ts])) for part in ts[0][name]}
               for name, *_ in convs}
        for impl, ts in runs.items()
    }  # fmt: skip
    rows = []
    for name, hw, c_in, c_out in convs:
        gflop = 2 * BATCH * hw * hw * 9 * c_in * c_out / 1e9
        for impl, by_conv in timings.items():
            for part in (p for p in PASSES if p in by_conv[name]):
                ms = by_conv[name][part]
                rows.append({"conv": name, "shape": [hw, hw, c_in, c_out], "pass": part,
                             "implementation": impl, "ms": round(ms, 3),
                             "gflops": round(gflop / ms * 1e3, 1)})  # fmt: skip
    return {"machine": machine.describe(), "batch_size": BATCH, "dtype": "float32",
            "repeats": repeats, "rounds": rounds, "rows": rows}  # fmt: skip


def print_table(result: dict) -> None:
    print(f"{'conv':<6} {'pass':<16} " + " ".join(f"{i:>14}" for i in IMPLEMENTATIONS) + "  (ms)")
    keys = dict.fromkeys((r["conv"], r["pass"]) for r in result["rows"])
    for conv, part in keys:
        ms = {r["implementation"]: r["ms"] for r in result["rows"]
              if (r["conv"], r["pass"]) == (conv, part)}  # fmt: skip
        cells = " ".join(f"{ms[i]:>14.2f}" if i in ms else f"{'-':>14}" for i in IMPLEMENTATIONS)
        print(f"{conv:<6} {part:<16} {cells}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per worker")
    parser.add_argument("--rounds", type=int, default=3, help="workers per implementation")
    parser.add_argument("--smoke", action="store_true", help="two convolutions, 2 repetitions")
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats, args.rounds = 2, 1
    if args.worker:
        convs = CONVS[:2] if args.smoke else CONVS
        print(json.dumps(worker(args.worker, args.repeats, convs)))
        return
    result = measure(args.repeats, args.rounds, args.smoke)
    print_table(result)
    if not args.smoke:
        from scratchcnn.files import write_json

        write_json(args.output, result)
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
