"""Jitted passes over a batch, a cache-sized chunk of images at a time (JAX on the CPU).

An attack runs our forward pass (and ``jax.grad`` of it) on thousands of images in eval
mode, where each image's output depends on that image alone. Compiled by XLA for the CPU
as one batch, every layer writes activations for the whole batch before the next layer
reads them back from memory; compiled as a loop over chunks (``jax.lax.map``), a chunk's
activations stay in the CPU's cache from the first layer to the last.
``benchmarks/attack_speed.py`` measures what it buys: on 2 cores, for ``default``, 4.4x the
images per second of our forward pass and 2.9x of its input gradient
(``benchmarks/results/attack_speed.json``).

On a GPU the whole batch at once is what keeps the device busy, so nothing is chunked.
"""

from __future__ import annotations

CPU_CHUNK = 16  # images per chunk: the fastest of 8, 16, 32 and 64 when first measured


def chunk_size() -> int | None:
    """Images per chunk for the backend JAX computes on: CPU_CHUNK on a CPU, else None."""
    import jax

    return CPU_CHUNK if jax.default_backend() == "cpu" else None


def over_chunks(per_chunk, *batched, chunk: int | None):
    """``per_chunk(*batched)``, computed ``chunk`` images at a time. Call it inside jax.jit.

    batched: arrays whose first axis is the batch (N, ...); per_chunk maps arrays of
    ``chunk`` images to an output (or a tuple of outputs) whose first axis is the chunk.
    Only valid when each image's output depends on that image alone (eval mode). The batch
    is padded with zeros to a whole number of chunks, and the padding's outputs dropped.
    """
    import jax
    import jax.numpy as jnp

    n = batched[0].shape[0]
    if chunk is None or n <= chunk:
        return per_chunk(*batched)
    n_chunks = -(-n // chunk)
    padding = n_chunks * chunk - n

    def split(a):  # (N, ...) -> (n_chunks, chunk, ...)
        a = jnp.pad(a, [(0, padding)] + [(0, 0)] * (a.ndim - 1))
        return a.reshape(n_chunks, chunk, *a.shape[1:])

    def join(out):  # (n_chunks, chunk, ...) -> (N, ...)
        return out.reshape(n_chunks * chunk, *out.shape[2:])[:n]

    outputs = jax.lax.map(lambda parts: per_chunk(*parts), tuple(split(a) for a in batched))
    return jax.tree.map(join, outputs)


def eval_in_chunks(step):
    """``step(params, state, x) -> out (N, ...)`` in eval mode, rewritten to compute x
    chunk by chunk (on a CPU; the whole batch elsewhere). Wrap it in ``jax.jit``."""

    def chunked(params, state, x):
        return over_chunks(lambda part: step(params, state, part), x, chunk=chunk_size())

    return chunked
