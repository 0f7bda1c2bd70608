"""Training-step and inference speed, side by side in one run: ours vs Flax vs PyTorch.

For each network and each implementation, one process (so peak memory is its own):
  - scratchcnn NumPy: our hand-written forward, backward and Adam on NumPy arrays;
  - scratchcnn JAX:   the very same step function, compiled with ``jax.jit``;
  - Flax + optax:     the network's Flax twin, ``jax.grad`` + ``optax.adam``, ``jax.jit``;
  - PyTorch (CPU):    the same layers in ``torch.nn`` with ``torch.optim.Adam``, if torch
                      is installed (``pip install -e ".[bench]"``).
Batch 128, float32, median of several repetitions after warm-up; the implementations take
turns, three rounds each, and each keeps its median over the rounds. Effective GFLOP/s counts
the multiply-adds of convolutions and dense layers (training = 3x the forward pass:
forward, input gradient, weight gradient), and is also given as a fraction of this
machine's single-precision matrix-multiply rate, measured in the same run.

    python benchmarks/step_speed.py                 # all networks, table + JSON
    python benchmarks/step_speed.py --smoke         # one small network, 2 repetitions, 1 round
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import machine  # a sibling script (the script's folder is on sys.path)
import numpy as np

BATCH = 128
OUT = Path(__file__).parent / "results" / "step_speed.json"
IMPLEMENTATIONS = ("scratch-numpy", "scratch-jax", "flax-optax", "torch")
REQUIRED = IMPLEMENTATIONS[:3]  # PyTorch is optional (pip install -e ".[bench]")


def reference_cnn():
    """conv32-conv32-pool-conv64-conv64-pool-dense256-dense10, 3x3 SAME (the issue's)."""
    from scratchcnn.layers import Conv, Dense, Flatten, MaxPool, ReLU, Sequential

    return Sequential([
        Conv(32), ReLU(), Conv(32), ReLU(), MaxPool(2),
        Conv(64), ReLU(), Conv(64), ReLU(), MaxPool(2),
        Flatten(), Dense(256), ReLU(), Dense(10),
    ])  # fmt: skip


def build(name: str):
    from scratchcnn import models

    return reference_cnn() if name == "reference" else models.build(name)


def forward_flops(model, in_shape=(28, 28, 1)) -> int:
    """Multiply-adds x 2 of every conv and dense layer, for one image (residual blocks'
    branches included)."""
    from scratchcnn.layers import Conv, Dense
    from scratchcnn.ops.windows import as_pair
    from scratchcnn.residual import Residual

    flops, shape = 0, tuple(in_shape)
    for layer, (_, out_shape) in zip(model.layers, model.shapes(in_shape)):
        if isinstance(layer, Conv):
            kh, kw = as_pair(layer.kernel_size, "kernel_size")
            flops += 2 * out_shape[0] * out_shape[1] * kh * kw * shape[-1] * layer.features
        elif isinstance(layer, Dense):
            flops += 2 * shape[-1] * layer.features
        elif isinstance(layer, Residual):
            flops += sum(forward_flops(b, shape) for b in layer.branches().values())
        shape = out_shape
    return flops


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """This machine's single-precision matrix-multiply rate (NumPy's BLAS)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    return 2 * n**3 / median_seconds(lambda: a @ b, repeats) / 1e9


def median_seconds(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, BATCH).astype(np.int32)
    return x, y


# --------------------------------------------------------------------------- workers


def scratch_steps(model, backend: str):
    """(train, infer) closures of our step on NumPy or jitted on JAX."""
    from scratchcnn import optim
    from scratchcnn.inference import make_eval_step
    from scratchcnn.train import make_train_step

    optimizer = optim.Adam(1e-3)
    params, state = model.init(0)
    opt_state = optimizer.init(params)
    train_step, eval_step = make_train_step(model, optimizer), make_eval_step(model)
    x, y = batch()
    if backend == "numpy":
        rng = np.random.default_rng(0)
        return (lambda: train_step(params, state, opt_state, x, y, rng),
                lambda: eval_step(params, state, x))  # fmt: skip
    import jax

    from scratchcnn.fast.cores import keep_freed_memory
    from scratchcnn.fast.jit_chunks import eval_in_chunks

    keep_freed_memory()  # as the jax training backend does (scratchcnn/train/step.py)
    train_step, eval_step = jax.jit(train_step), jax.jit(eval_in_chunks(eval_step))
    params, state, opt_state, x, y = jax.device_put((params, state, opt_state, x, y))
    key = jax.random.key(0)
    return (lambda: jax.block_until_ready(train_step(params, state, opt_state, x, y, key)),
            lambda: jax.block_until_ready(eval_step(params, state, x)))  # fmt: skip


def flax_steps(model):
    import jax
    import optax

    from scratchcnn.reference import flax_softmax_cross_entropy, functional, twin

    apply, params = functional(twin(model))
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits, new_state = apply(p, x, True, key)
            return flax_softmax_cross_entropy(logits, y), new_state

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, new_state

    @jax.jit
    def eval_step(params, x):
        return apply(params, x, False)[0]

    x, y = jax.device_put(batch())
    key = jax.random.key(0)
    return (lambda: jax.block_until_ready(train_step(params, opt_state, x, y, key)),
            lambda: jax.block_until_ready(eval_step(params, x)))  # fmt: skip


def torch_modules(layers, in_shape) -> list:
    """Our layers (a network's, or a residual branch's) as ``torch.nn`` modules, NCHW."""
    from torch import nn

    from scratchcnn import layers as L
    from scratchcnn.ops.windows import as_pair
    from scratchcnn.residual import Residual

    modules, shape = [], tuple(in_shape)
    for layer, (_, out_shape) in zip(layers, L.Sequential(list(layers)).shapes(shape)):
        if isinstance(layer, Residual):
            modules.append(TorchResidual(torch_modules(layer.body, shape),
                                         torch_modules(layer.shortcut, shape)))  # fmt: skip
        elif isinstance(layer, L.Conv):
            k = as_pair(layer.kernel_size, "kernel_size")
            pad = (k[0] // 2, k[1] // 2) if layer.padding == "SAME" else 0
            modules.append(nn.Conv2d(shape[-1], layer.features, k, layer.strides, pad,
                                     bias=layer.use_bias))  # fmt: skip
        elif isinstance(layer, L.Dense):
            modules.append(nn.Linear(shape[-1], layer.features, bias=layer.use_bias))
        elif isinstance(layer, L.BatchNorm):
            modules.append(nn.BatchNorm2d(shape[-1]) if len(shape) == 3
                           else nn.BatchNorm1d(shape[-1]))  # fmt: skip
        elif isinstance(layer, L.MaxPool | L.AvgPool):
            pool = nn.MaxPool2d if isinstance(layer, L.MaxPool) else nn.AvgPool2d
            modules.append(pool(layer.window))
        elif isinstance(layer, L.GlobalAvgPool):
            modules += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        elif isinstance(layer, L.ChannelDropout):
            modules.append(nn.Dropout2d(layer.rate))
        elif isinstance(layer, L.Dropout):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, L.ReLU):
            modules.append(nn.ReLU())
        elif isinstance(layer, L.Flatten):
            modules.append(nn.Flatten())  # NCHW order: fine for timing, not for parity
        shape = out_shape
    return modules


def TorchResidual(body: list, shortcut: list):  # noqa: N802  (builds a torch.nn.Module)
    """``ReLU(body(x) + shortcut(x))`` in torch; an empty shortcut is the identity."""
    from torch import nn

    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.shortcut = nn.Sequential(*body), nn.Sequential(*shortcut)

        def forward(self, x):
            return nn.functional.relu(self.body(x) + self.shortcut(x))

    return Residual()


def torch_steps(model):
    import torch
    from torch import nn

    modules = torch_modules(model.layers, (28, 28, 1))
    net = nn.Sequential(*modules)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x_np, y_np = batch()
    x, y = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y_np).long()

    def train():
        net.train()
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()

    def infer():
        net.eval()
        with torch.no_grad():
            net(x)

    return train, infer


def worker(implementation: str, network: str, repeats: int) -> dict:
    """Time one implementation on one network (run in its own process)."""
    model = build(network)
    if implementation == "scratch-numpy":
        train, infer = scratch_steps(model, "numpy")
    elif implementation == "scratch-jax":
        train, infer = scratch_steps(model, "jax")
    elif implementation == "flax-optax":
        train, infer = flax_steps(model)
    else:
        train, infer = torch_steps(model)
    train_s, infer_s = median_seconds(train, repeats), median_seconds(infer, repeats)
    return {
        "train_seconds": train_s,
        "infer_seconds": infer_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- driver


def worker_result(command: list[str], label: str) -> dict | None:
    """Run a worker process and read the JSON of its last line; None (and why, on stderr)
    if it failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"  {label}: skipped ({reason})", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def take_turns(run_one, implementations, rounds: int, required) -> dict[str, list]:
    """{implementation: [result of each round]}: ``run_one(implementation)`` for each
    implementation in turn, ``rounds`` times, starting one later each round.

    On a shared machine the speed drifts from minute to minute (between runs of the same
    worker, by a fifth for the larger networks and over a third for ``lenet``): taking
    turns exposes every implementation to the same drift, and the median over the
    rounds keeps one slow minute from deciding a ratio. Implementations whose every run
    failed are left out; if one of ``required`` is among them, the benchmark stops.
    """
    runs = {impl: [] for impl in implementations}
    for round_ in range(rounds):
        shift = round_ % len(implementations)
        for impl in implementations[shift:] + implementations[:shift]:
            if (result := run_one(impl)) is not None:
                runs[impl].append(result)
    if missing := [impl for impl in required if not runs[impl]]:
        raise SystemExit(f"benchmark failed: no result from {', '.join(missing)} (see above).")
    return {impl: results for impl, results in runs.items() if results}


def run_worker(implementation: str, network: str, repeats: int) -> dict | None:
    command = [sys.executable, __file__, "--worker", implementation, network, str(repeats)]
    return worker_result(command, f"{implementation} on {network}")


def rounds_of_workers(network: str, repeats: int, rounds: int) -> dict:
    """{implementation: timings}: each implementation's medians over ``rounds`` runs."""
    runs = take_turns(
        lambda impl: run_worker(impl, network, repeats), IMPLEMENTATIONS, rounds, REQUIRED
    )
    return {
        impl: {
            "train_seconds": float(np.median([t["train_seconds"] for t in ts])),
            "infer_seconds": float(np.median([t["infer_seconds"] for t in ts])),
            "peak_rss_mb": max(t["peak_rss_mb"] for t in ts),
            "train_seconds_by_round": [round(t["train_seconds"], 5) for t in ts],
        }
        for impl, ts in runs.items()
    }


def measure(networks: list[str], repeats: int, rounds: int) -> dict:
    matmul = matmul_gflops()
    rows = []
    for network in networks:
        flops = forward_flops(build(network))
        timings = rounds_of_workers(network, repeats, rounds)
        flax = timings.get("flax-optax")
        for impl, t in timings.items():
            train_ips, infer_ips = BATCH / t["train_seconds"], BATCH / t["infer_seconds"]
            gflops = 3 * flops * train_ips / 1e9
            rows.append({
                "network": network,
                "implementation": impl,
                "train_images_per_second": round(train_ips, 1),
                "infer_images_per_second": round(infer_ips, 1),
                "train_ratio_to_flax": round(flax["train_seconds"] / t["train_seconds"], 3)
                if flax else None,
                "infer_ratio_to_flax": round(flax["infer_seconds"] / t["infer_seconds"], 3)
                if flax else None,
                "train_gflops": round(gflops, 1),
                "fraction_of_matmul_rate": round(gflops / matmul, 3),
                "peak_rss_mb": round(t["peak_rss_mb"], 1),
                "train_images_per_second_by_round": [
                    round(BATCH / seconds, 1) for seconds in t["train_seconds_by_round"]
                ],
            })  # fmt: skip
    return {
        "machine": machine.describe(),
        "batch_size": BATCH,
        "dtype": "float32",
        "repeats": repeats,
        "rounds": rounds,
        "matmul_gflops": round(matmul, 1),
        "forward_mflops_per_image": {n: round(forward_flops(build(n)) / 1e6, 2) for n in networks},
        "rows": rows,
    }


def format_table(result: dict) -> str:
    lines = [
        f"{result['machine']['cpu']}, {result['machine']['cores']} cores; "
        f"batch {result['batch_size']}, float32, median of {result['repeats']} steps, "
        f"median of {result['rounds']} rounds; "
        f"NumPy matmul rate {result['matmul_gflops']} GFLOP/s",
        f"{'network':<10} {'implementation':<14} {'train img/s':>11} {'x Flax':>7} "
        f"{'GFLOP/s':>8} {'% matmul':>8} {'infer img/s':>11} {'x Flax':>7} {'peak MB':>8}",
    ]
    for r in result["rows"]:
        lines.append(
            f"{r['network']:<10} {r['implementation']:<14} {r['train_images_per_second']:>11,.0f} "
            f"{r['train_ratio_to_flax'] or 0:>7.2f} {r['train_gflops']:>8.1f} "
            f"{100 * r['fraction_of_matmul_rate']:>7.1f}% {r['infer_images_per_second']:>11,.0f} "
            f"{r['infer_ratio_to_flax'] or 0:>7.2f} {r['peak_rss_mb']:>8.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="lenet only, 2 repetitions")
    parser.add_argument("--repeats", type=int, default=7, help="timed steps per worker")
    parser.add_argument("--rounds", type=int, default=3, help="workers per implementation")
    parser.add_argument("--networks", nargs="*", default=None)
    parser.add_argument("--output", type=Path, default=OUT)
    parser.add_argument("--worker", nargs=3, metavar=("IMPL", "NETWORK", "REPEATS"))
    args = parser.parse_args()
    if args.worker:
        impl, network, repeats = args.worker
        print(json.dumps(worker(impl, network, int(repeats))))
        return
    from scratchcnn import models

    networks = args.networks or (["lenet"] if args.smoke else ["reference", *sorted(models.MODELS)])
    result = measure(networks, *((2, 1) if args.smoke else (args.repeats, args.rounds)))
    print(format_table(result))
    if not args.smoke:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
