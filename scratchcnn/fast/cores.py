"""Spread the images of a batch over the CPU cores (NumPy only).

A convolution on a whole batch at once builds its window matrix (im2col) for every
image: 115 MB for a batch of 128 MNIST-sized maps with 32 channels. Writing and reading
that much memory costs more than the matrix multiply itself. Working on a few images at
a time keeps each chunk's windows in the core's cache, and giving the chunks to one
thread per core runs the copies (single-threaded in NumPy) on every core at once.
NumPy releases the GIL inside copies and matrix multiplies, so plain threads suffice.

BLAS must run on one thread meanwhile: the parallelism is already across chunks, and
two BLAS threads per chunk thread fight over the cores (the step gets 1.5x slower).
``on_all_cores()`` sets that for a whole forward or backward pass (``FastOps.whole_pass``);
outside it, ``for_each_chunk`` sets it for each call, which costs waking BLAS's threads
afterwards.

One more cost is outside NumPy: glibc's malloc hands every large freed array back to the
kernel, so the next step's arrays of the same size fault their pages in again: about
16,000 page faults per training step of the reference CNN, 15% of its time.
``on_all_cores()`` therefore also asks malloc, once, to keep freed memory for reuse. XLA's
CPU buffers come from the same malloc, so the jax training backend and the jitted attacks
(``train/step.py``, ``attacks.py``) ask for it too: without it, a jitted forward pass of
the default network takes about twice as long on this project's 2-core machine. XLA's
worker threads also need the one shared heap: glibc gives each thread its own heap
(arena), and those shrink on free whatever the trim setting says: with them lenet's
jitted training step faulted ~10,000 pages (~40 MB) back in on every call, and the default
network's trained at about half speed (2,200 against 4,000 images/s).
"""

import ctypes
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np  # noqa: F401  (loads NumPy's BLAS, so the controller below finds it)
from threadpoolctl import ThreadpoolController

CORES = os.cpu_count() or 1
WINDOW_VALUES_PER_CHUNK = 4096 * 288  # ~4.7 MB of float32: 4096 im2col rows of 3x3x32

_threads = ThreadPoolExecutor(CORES, thread_name_prefix="scratchcnn")
_blas = ThreadpoolController()  # the BLAS libraries loaded by now: NumPy's
_blas_limited = False
_memory_kept = False


def images_per_chunk(values_per_image: int, n: int) -> int:
    """How many of n images make one cache-sized chunk, aiming at a number of chunks the
    cores share evenly (3 chunks on 2 cores would leave one core idle for the last).

    values_per_image: what one image's chunk holds, e.g. its im2col rows times their width.
    Sizing by values, not rows, gives a one-channel layer (9-value rows) chunks 32 times
    as many images as a 32-channel one; with rows it got chunks so small that handing
    them to the threads cost more than the work in them.
    """
    largest = max(1, WINDOW_VALUES_PER_CHUNK // values_per_image)
    chunks = -(-max(n, 1) // largest)
    chunks = -(-chunks // CORES) * CORES  # a multiple of the number of cores
    return max(1, -(-n // chunks))


# --8<-- [start:for_each_chunk]
def for_each_chunk(work, n: int, chunk: int) -> list:
    """Call ``work(batch_slice)`` for consecutive slices of ``range(n)``, on every core.

    Returns the results in batch order. ``work`` must only write to its own slice.
    """
    slices = [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    if len(slices) == 1:
        return [work(slices[0])]
    with nullcontext() if _blas_limited else _blas.limit(limits=1, user_api="blas"):
        return list(_threads.map(work, slices))


# --8<-- [end:for_each_chunk]


def split_per_core(work, array) -> None:
    """``work(batch_slice)`` on one slice of ``array``'s batch per core, for element-wise
    work: it has no cache-sized working set, and gains from every core's memory
    bandwidth. Small arrays are not worth the threads' hand-over (~0.1 ms)."""
    n = len(array)
    for_each_chunk(work, n, n if array.size < 2**16 else -(-n // CORES))


@contextmanager
def on_all_cores():
    """Run the block with single-threaded BLAS (our chunk threads use the cores instead)."""
    global _blas_limited
    keep_freed_memory()
    if _blas_limited:
        yield
        return
    with _blas.limit(limits=1, user_api="blas"):
        _blas_limited = True
        try:
            yield
        finally:
            _blas_limited = False


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed arrays instead of returning them to the kernel.

    Process-wide and one-way, like the caching allocators of PyTorch and JAX: the
    process keeps its peak memory. A no-op where the C library is not glibc.
    """
    global _memory_kept
    if _memory_kept:
        return
    _memory_kept = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8  # from <malloc.h>
    libc.mallopt(m_mmap_threshold, 1 << 30)  # serve blocks up to 1 GiB from the heap...
    libc.mallopt(m_trim_threshold, 2**31 - 1)  # ...and never give the heap back...
    libc.mallopt(m_arena_max, 1)  # ...and one heap for all threads (see the top of the file)
