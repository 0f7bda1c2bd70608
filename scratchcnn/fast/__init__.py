"""The fast NumPy backend: the ops of ``scratchcnn.ops`` that dominate a CPU training step,
engineered for speed. Same inputs, same outputs; only NumPy arrays. A cache is private to
its backend: a forward pass on one and a backward pass on the other do not mix.

- ``cores.py``: threads, cache-sized chunks of the batch, BLAS threads, malloc;
- ``windows.py``: im2col as one strided copy, col2im adding in place;
- ``conv.py``, ``pool.py``, ``activations.py``, ``batchnorm.py``: the convolution,
  pooling, ReLU and batch norm.
- ``jit_chunks.py``: not NumPy: jitted eval-mode passes (attacks, evaluation) run a CPU
  batch a chunk of images at a time.

``FastOps`` puts them behind the interface of ``scratchcnn.ops.PlainOps``; the layers
run them on NumPy arrays (``layers.ops_for``). Lesson 13 measures what each trick buys.
"""

from scratchcnn.fast import activations, batchnorm, conv, cores, pool
from scratchcnn.ops import PlainOps


class FastOps(PlainOps):
    """The fast NumPy versions (chunked, threaded, in place). NumPy arrays only."""

    name = "fast numpy"
    relu_forward = staticmethod(activations.relu_forward)
    relu_backward = staticmethod(activations.relu_backward)
    conv2d_forward = staticmethod(conv.conv2d_forward)
    conv2d_backward = staticmethod(conv.conv2d_backward)
    max_pool_forward = staticmethod(pool.max_pool_forward)
    max_pool_backward = staticmethod(pool.max_pool_backward)
    avg_pool_forward = staticmethod(pool.avg_pool_forward)
    avg_pool_backward = staticmethod(pool.avg_pool_backward)
    batchnorm_forward = staticmethod(batchnorm.batchnorm_forward)
    batchnorm_backward = staticmethod(batchnorm.batchnorm_backward)
    # Around a whole pass: single-threaded BLAS (our threads use the cores) and malloc
    # keeping freed memory (see cores.py).
    whole_pass = staticmethod(cores.on_all_cores)
