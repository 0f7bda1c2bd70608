"""Using a trained network: logits and probabilities for a stack of digit images."""

import contextlib
import warnings
from collections.abc import Callable

import numpy as np

from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.errors import WeightError
from scratchcnn.metrics import softmax


def as_unit_images(images) -> np.ndarray:
    """uint8 (N, 28, 28) in 0..255, or floats already in [0, 1] -> float32 in [0, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255)
    return images.astype(np.float32)


def make_eval_step(model) -> Callable:
    """(params, state, x) -> logits, in eval mode (running BatchNorm statistics, no dropout)."""

    def eval_step(params, state, x):
        logits, _, _ = model.forward(params, state, x, train=False)
        return logits

    return eval_step


def predict_logits(
    model,
    params,
    state,
    images,
    *,
    batch_size: int = 1000,
    eval_step: Callable | None = None,
    to_device: Callable = np.asarray,
) -> np.ndarray:
    """images: (N, 28, 28) uint8 or [0, 1] floats -> logits (N, K) float32, in eval mode.

    ``eval_step(params, state, x)`` defaults to our NumPy forward pass; the training loop
    passes its jitted one. Batches keep memory flat whatever N is.
    """
    eval_step = eval_step or make_eval_step(model)
    unit = as_unit_images(images)
    with without_overflow_warnings():  # non-finite outputs are reported below, in words
        out = [
            np.asarray(eval_step(params, state, to_device(standardize_unit(x[..., None]))))
            for x in (unit[i : i + batch_size] for i in range(0, len(unit), batch_size))
        ]
    logits = np.concatenate(out).astype(np.float32) if out else np.zeros((0, 10), np.float32)
    check_finite_outputs(logits)
    return logits


@contextlib.contextmanager
def without_overflow_warnings():
    """Silence NumPy's 'overflow encountered' warnings (in every thread of the fast ops):
    they would come before, and only repeat, the sentence we raise about it."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", r"(overflow|invalid value|divide by zero) encountered", RuntimeWarning
        )
        yield


def check_finite_outputs(logits: np.ndarray) -> None:
    """Finite weights can still be large enough to overflow float32: say so in words."""
    bad = np.count_nonzero(~np.isfinite(logits).all(axis=1))
    if bad:
        raise WeightError(
            f"the network's outputs are NaN or infinite for {bad:,} of {len(logits):,} "
            "images: its weights are too large, or broken, to be used."
        )


def predict_probabilities(model, params, state, images, **kw) -> np.ndarray:
    """images: (N, 28, 28) -> class probabilities (N, K)."""
    return softmax(predict_logits(model, params, state, images, **kw).astype(np.float64))
