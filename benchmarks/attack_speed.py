"""What an attack pays for: input gradients and forward passes per second, side by side.

PGD and APGD spend their time on input gradients (one per image per step); Square on
forward passes (one per image per query). For each network, on one batch of digits in
eval mode, in one run:

  - ours, jax.grad:      ``jax.jit(jax.grad(...))`` of our forward pass (the attacks' path),
                         in chunks of 16 images on the CPU (``scratchcnn/fast/jit_chunks.py``);
  - ours, whole batch:   the same without chunks;
  - ours, by hand, jit:  our hand-written backward pass (``loss_and_gradient_manual``),
                         compiled with ``jax.jit``, in chunks;
  - ours, by hand, NumPy: the same on NumPy arrays (the fast NumPy backend);
  - Flax, jax.grad:      the network's Flax twin, whole batch and in chunks.

Reported as images per second (image-steps per second for gradients) and as a ratio to
Flax's whole batch. Medians of several repetitions after a warm-up (the compile); the
implementations take turns, three rounds, and each keeps its median over the rounds.

    python benchmarks/attack_speed.py                 # default + best, batch 1024, JSON
    python benchmarks/attack_speed.py --smoke         # bn_cnn, batch 64, 2 repetitions
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "attack_speed.json"
sys.path.insert(0, str(Path(__file__).parent))
import machine  # noqa: E402  (a sibling script)
from step_speed import median_seconds, take_turns  # noqa: E402  (a sibling script)


def implementations(model, params, state, x, y):
    """{name: (gradient fn, forward fn or None)}: each computes the whole batch once."""
    import jax

    from scratchcnn import attacks
    from scratchcnn.data.preprocess import standardize_unit
    from scratchcnn.fast.jit_chunks import chunk_size, over_chunks
    from scratchcnn.reference import functional, twin

    chunk = chunk_size()
    loss_of = attacks.LOSS_FUNCTIONS["ce"][0]
    xj, yj = jax.device_put(x), jax.device_put(y.astype(np.int32))

    def ours(p, xb):
        return model.forward(p, state, standardize_unit(xb), train=False)[0]

    apply, flax_params = functional(twin(model))

    def flax(p, xb):
        return apply(p, standardize_unit(xb), False)[0]

    def gradient_of(net, p, chunk):
        def per_chunk(xb, yb):
            return jax.grad(lambda xb: loss_of(net(p, xb), yb, yb).sum())(xb)

        return jax.jit(lambda xb, yb: over_chunks(per_chunk, xb, yb, chunk=chunk))

    def forward_of(net, p, chunk):
        return jax.jit(lambda xb: over_chunks(lambda c: net(p, c), xb, chunk=chunk))

    def by_hand_chunk(xb, yb):
        return attacks.loss_and_gradient_manual(model, params, state, xb, yb, "ce", yb)[1]

    def by_hand(xb, yb):
        return over_chunks(by_hand_chunk, xb, yb, chunk=chunk)

    by_hand_jit = jax.jit(by_hand)

    def run(fn, *args):
        return lambda: jax.block_until_ready(fn(*args))

    library_gradient = attacks._jax_loss_and_gradient(model, "ce")  # what the attacks run
    library_forward = attacks._jax_forward(model)
    return {
        "ours, jax.grad": (run(library_gradient, xj, params, state, yj, yj),
                           run(library_forward, params, state, xj)),
        "ours, whole batch": (run(gradient_of(ours, params, None), xj, yj),
                              run(forward_of(ours, params, None), xj)),
        "ours, by hand, jit": (run(by_hand_jit, xj, yj), None),
        "ours, by hand, NumPy": (
            lambda: attacks.loss_and_gradient(model, params, state, x, y, grad="manual"),
            lambda: attacks.predict_logits(model, params, state, x[..., 0]),
        ),
        "Flax, jax.grad": (run(gradient_of(flax, flax_params, None), xj, yj),
                           run(forward_of(flax, flax_params, None), xj)),
        "Flax, in chunks": (run(gradient_of(flax, flax_params, chunk), xj, yj),
                            run(forward_of(flax, flax_params, chunk), xj)),
    }  # fmt: skip


def measure(name: str, batch: int, repeats: int, rounds: int) -> list[dict]:
    """Rows of images per second, each implementation's median over ``rounds`` turns
    (the implementations take turns: the machine's speed drifts, see step_speed.py)."""
    from scratchcnn import models

    model = models.build(name)
    params, state = model.init(0)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    fns = implementations(model, params, state, x, y)

    def timed(impl):  # (gradient seconds, forward seconds or None): one round
        gradient, forward = fns[impl]
        forward_s = median_seconds(forward, repeats, warmup=1) if forward else None
        return median_seconds(gradient, repeats, warmup=1), forward_s

    seconds = take_turns(timed, list(fns), rounds, required=())
    rows = []
    for impl, rounds_of in seconds.items():
        grad_s = float(np.median([g for g, _ in rounds_of]))
        fwd_s = float(np.median([f for _, f in rounds_of])) if rounds_of[0][1] else None
        rows.append({
            "network": name, "implementation": impl, "batch": batch,
            "gradient_images_per_s": round(batch / grad_s, 1),
            "forward_images_per_s": round(batch / fwd_s, 1) if fwd_s else None,
        })  # fmt: skip
        print(f"{name:<8} {impl:<21} gradient {batch / grad_s:>8.0f} img/s   forward "
              + (f"{batch / fwd_s:>8.0f} img/s" if fwd_s else "       -"), flush=True)  # fmt: skip
    flax = next(r for r in rows if r["implementation"] == "Flax, jax.grad")
    for r in rows:
        r["gradient_ratio_to_flax"] = round(
            r["gradient_images_per_s"] / flax["gradient_images_per_s"], 2
        )
        if r["forward_images_per_s"]:
            r["forward_ratio_to_flax"] = round(
                r["forward_images_per_s"] / flax["forward_images_per_s"], 2
            )
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="default,best")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="bn_cnn, batch 64, 2 repeats, 1 round")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    if args.smoke:
        args.networks, args.batch, args.repeats, args.rounds = "bn_cnn", 64, 2, 1
    import jax

    rows = [
        row
        for name in args.networks.split(",")
        for row in measure(name, args.batch, args.repeats, args.rounds)
    ]
    if not args.smoke:
        from scratchcnn.files import write_json

        write_json(args.out, {
            "machine": {**machine.describe(), "jax_backend": jax.default_backend()},
            "rounds": args.rounds,
            "rows": rows,
        })  # fmt: skip
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
