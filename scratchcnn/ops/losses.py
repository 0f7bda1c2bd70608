"""Softmax cross-entropy from logits, numerically stable, with optional label smoothing."""

import numpy as np

from scratchcnn.errors import InputError, ShapeError
from scratchcnn.ops._xp import namespace


def check_labels(labels: np.ndarray, logits_shape) -> None:
    """Labels must be integers, one per example, each a valid class index.

    An out-of-range label would otherwise become an all-zero target row and silently
    contribute nothing to the loss.
    """
    n, k = logits_shape
    if labels.shape != (n,):
        raise ShapeError(f"labels must be {n} integers for logits of shape {logits_shape}, "
                         f"got an array of shape {labels.shape}.")  # fmt: skip
    if not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels must be integers, got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise InputError(
            f"labels must lie in [0, {k}), got values from {labels.min()} to {labels.max()}."
        )


# --8<-- [start:log_softmax]
def log_softmax(logits):
    """log p = z - logsumexp(z), with the max subtracted first so exp never overflows.

    logits: (N, K) -> (N, K).
    """
    xp = namespace(logits)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax(logits):
    """Probabilities p = exp(log p), each row summing to 1. logits: (N, K) -> (N, K)."""
    return namespace(logits).exp(log_softmax(logits))


# --8<-- [end:log_softmax]


# --8<-- [start:smooth_targets]
def smooth_targets(labels, num_classes, label_smoothing, dtype, xp):
    """One-hot targets mixed with the uniform distribution (optax's ``smooth_labels``).

    labels: (N,) ints -> (N, K): ``(1 - a) * one_hot + a / K``.
    """
    one_hot = (labels[:, None] == xp.arange(num_classes)[None, :]).astype(dtype)
    return (1 - label_smoothing) * one_hot + label_smoothing / num_classes


# --8<-- [end:smooth_targets]


# --8<-- [start:softmax_cross_entropy]
def softmax_cross_entropy_forward(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy between softmax(logits) and the (smoothed) labels.

    logits: (N, K), labels: (N,) ints in [0, K) -> loss: scalar.
    """
    xp = namespace(logits)
    if isinstance(labels, np.ndarray | list | tuple):  # concrete labels: check them here
        check_labels(np.asarray(labels), logits.shape)
    log_probs = log_softmax(logits)
    targets = smooth_targets(xp.asarray(labels), logits.shape[1], label_smoothing, logits.dtype, xp)
    loss = -xp.sum(targets * log_probs) / logits.shape[0]
    return loss, (log_probs, targets)


def softmax_cross_entropy_backward(dloss, cache):
    """The famous simple gradient: dlogits = (softmax - targets) / N, times dloss."""
    log_probs, targets = cache
    xp = namespace(log_probs)
    return dloss * (xp.exp(log_probs) - targets) / log_probs.shape[0], {}


# --8<-- [end:softmax_cross_entropy]
