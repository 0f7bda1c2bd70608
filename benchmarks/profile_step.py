"""Where a training step's time goes, pass by pass: a profile of our step, NumPy and jitted.

One training step of a network (batch 128, float32) cut into the parts issue 17 asks
about, each timed on its own (median of several repetitions after a warm-up):

  - forward:         the convolutions' and dense layers' forward pass;
  - input gradient:  their backward pass to the input (none for the first layer: training
                     never needs the data's gradient);
  - weight gradient: their backward pass to the kernels and biases;
  - element-wise:    every other layer forward and backward (ReLU, pooling, BatchNorm,
                     dropout, flatten) and the loss;
  - optimizer:       Adam's update of every parameter.

On NumPy the layers run the fast backend (``scratchcnn/fast/``), as a training step does.
Under ``jax.jit`` each part is compiled on its own: XLA cannot fuse across the cuts, so the
element-wise parts cost more than inside the whole compiled step, which is timed too, for
scale. The parts' sum beside the whole step says how much the cuts add.

    python benchmarks/profile_step.py                     # reference CNN and default, JSON
    python benchmarks/profile_step.py --smoke             # bn_cnn, 2 repetitions
"""

from __future__ import annotations

import argparse
import sys
from contextlib import nullcontext
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "profile_step.json"
BATCH = 128
sys.path.insert(0, str(Path(__file__).parent))
import machine  # noqa: E402  (a sibling script)
from step_speed import build, median_seconds, scratch_steps  # noqa: E402  (a sibling script)

PARTS = ("forward", "input gradient", "weight gradient", "element-wise", "optimizer")


def median_ms(fn, repeats: int) -> float:
    return 1e3 * median_seconds(fn, repeats, warmup=1)


def layer_calls(model, params, state, x, labels, backend):
    """[(part, layer name, fn)]: every piece of one step, each a closure that runs it once.

    NumPy: each backward pass is timed from the cache its forward pass kept; a conv layer's
    weight gradient by its backward pass without the input gradient (``input_grad=False``),
    its input gradient as the full pass less that (a dense layer's: its kernel gradient's
    matrix multiply). Under ``jax.jit`` each backward part is
    compiled together with the forward pass that makes its cache, and returns only its own
    gradient: XLA drops whatever of the forward pass that gradient does not need (for a
    convolution, all of it but the padded input)."""
    from scratchcnn.layers import Conv, Dense
    from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward

    calls, h, rng = [], x, np.random.default_rng(0)
    for i, (name, layer) in enumerate(zip(model.names, model.layers)):
        p, s = params.get(name, {}), state.get(name, {})
        source = _jax_key(i) if backend == "jax" else rng

        def forward(h, layer=layer, p=p, s=s, source=source):
            return layer.forward(p, s, h, train=True, rng=source)

        out = forward(h)[0]
        dout = out * 0 + 1e-3  # any output gradient: the cost does not depend on its values
        heavy = isinstance(layer, (Conv, Dense))
        calls.append(("forward" if heavy else "element-wise", name,
                      _timed(lambda h, f=forward: f(h)[0], backend, h)))  # fmt: skip
        pieces = {"element-wise": lambda c, d, layer=layer: layer.backward(d, c)}
        if heavy:
            pieces = {
                "weight gradient": lambda c, d, layer=layer: _weights_only(layer, d, c),
                "input gradient": lambda c, d, layer=layer: layer.backward(d, c)[0],
            }
            if i == 0:  # training never computes the data's gradient
                del pieces["input gradient"]
        for part, piece in pieces.items():
            if backend == "jax":
                fn = _timed(lambda h, d, f=forward, piece=piece: piece(f(h)[2], d), "jax", h, dout)
            else:
                fn = _timed(piece, "numpy", forward(h)[2], dout)
            calls.append((part, name, fn))
        h = out

    def loss(logits, labels):
        value, cache = softmax_cross_entropy_forward(logits, labels)
        return value, softmax_cross_entropy_backward(1.0, cache)[0]

    calls.append(("element-wise", "loss", _timed(loss, backend, h, labels)))
    return calls


def _weights_only(layer, dout, cache):
    """The kernel (and bias) gradient of a conv or dense layer, without its input gradient."""
    from scratchcnn.layers import Conv

    if isinstance(layer, Conv):
        return layer.backward(dout, cache, input_grad=False)[1]
    return cache[0].T @ dout  # dense: ops/dense.py's kernel gradient


def _jax_key(index: int):
    import jax

    return jax.random.key(index)


def _timed(fn, backend, *args):
    """A closure running fn(*args) once: as it is on NumPy, compiled and awaited on JAX."""
    if backend == "numpy":
        return lambda: fn(*args)
    import jax

    jitted = jax.jit(fn)
    return lambda: jax.block_until_ready(jitted(*args))


def optimizer_call(params, backend):
    from scratchcnn import optim

    adam = optim.Adam(1e-3)
    opt_state = adam.init(params)
    grads = {k: {n: a * 0 + 1e-3 for n, a in v.items()} for k, v in params.items()}
    if backend == "jax":
        import jax

        update = jax.jit(adam.update)
        return lambda: jax.block_until_ready(update(grads, opt_state, params))
    return lambda: adam.update(grads, opt_state, params)


def profile(name: str, backend: str, repeats: int) -> dict:
    from scratchcnn.fast import FastOps

    model = build(name)
    params, state = model.init(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 28, 28, 1)).astype(np.float32)
    labels = rng.integers(0, 10, BATCH)
    if backend == "jax":
        import jax

        params, state, x, labels = jax.device_put((params, state, x, labels))
    rows = []
    with FastOps.whole_pass() if backend == "numpy" else nullcontext():
        for part, layer, fn in layer_calls(model, params, state, x, labels, backend):
            rows.append({"part": part, "layer": layer, "ms": median_ms(fn, repeats)})
        rows.append({"part": "optimizer", "layer": "adam",
                     "ms": median_ms(optimizer_call(params, backend), repeats)})  # fmt: skip
        step_ms = median_ms(scratch_steps(model, backend)[0], repeats)  # same batch size
    if backend == "numpy":  # the NumPy "input gradient" timed the whole backward pass
        _subtract_weights(rows)
    by_part = {p: round(sum(r["ms"] for r in rows if r["part"] == p), 2) for p in PARTS}
    return {"network": name, "backend": backend, "batch": BATCH, "rows": rows,
            "by_part_ms": by_part, "sum_of_parts_ms": round(sum(by_part.values()), 2),
            "whole_step_ms": round(step_ms, 2)}  # fmt: skip


def _subtract_weights(rows) -> None:
    """On NumPy a layer's full backward pass computes both gradients: its input gradient
    is the full pass's time less the weight-only pass's."""
    weights = {r["layer"]: r["ms"] for r in rows if r["part"] == "weight gradient"}
    for r in rows:
        if r["part"] == "input gradient":
            r["ms"] = max(r["ms"] - weights[r["layer"]], 0.0)


def print_table(results: list[dict]) -> None:
    print(f"{'network':<10} {'backend':<7} " + " ".join(f"{p:>15}" for p in PARTS)
          + f" {'sum':>8} {'step':>8}")  # fmt: skip
    for r in results:
        parts = " ".join(f"{r['by_part_ms'][p]:>12.1f} ms" for p in PARTS)
        print(f"{r['network']:<10} {r['backend']:<7} {parts} {r['sum_of_parts_ms']:>8.1f} "
              f"{r['whole_step_ms']:>8.1f}")  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="reference,default")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--smoke", action="store_true", help="bn_cnn, 2 repetitions, no JSON")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.smoke:
        args.networks, args.repeats = "bn_cnn", 2
    results = [profile(name, backend, args.repeats)
               for name in args.networks.split(",") for backend in ("numpy", "jax")]  # fmt: skip
    print_table(results)
    if not args.smoke:
        from scratchcnn.files import write_json

        write_json(args.out, {"machine": machine.describe(), "profiles": results})
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
