"""The UCI handwritten digits (scikit-learn's ``load_digits``), prepared the MNIST way.

1,797 digits written by 43 people who are not MNIST's writers, scanned on other
equipment: each 32 x 32 bitmap was cut into 4 x 4 blocks and each block's count of ink
pixels kept, so an image is 8 x 8 with values 0..16. A network trained on MNIST reads
28 x 28 digits in [0, 1], scaled to a 20 x 20 box and centred by mass, so we prepare
these with the very steps that prepare a user's photo (``scratchcnn.data.images.mnistify``):
crop to the ink, pad to a square, resize to 20 x 20 (the 8 x 8 grid is enlarged 2.5
times: blurry strokes), centre by mass in 28 x 28.

``held_out_test`` is the fixed test split (the same 50 images of each class for every
run); ``scratchcnn.train.data`` trains and validates on the rest. The data come with
scikit-learn, so nothing is downloaded; ``digits_checksum`` identifies them (a hash of
the arrays and scikit-learn's version), for checkpoints to record.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np

from scratchcnn.data.images import mnistify

DIGITS = 1_797  # images in the data set
INK_LEVELS = 16  # an 8 x 8 pixel counts the ink pixels of a 4 x 4 block: 0..16
TEST_PER_CLASS = 50  # the fixed test split: 50 images of each digit, 500 in all
TEST_SPLIT_SEED = 1_797  # fixed: every run is tested on the very same images
TRAIN_DIGITS = DIGITS - 10 * TEST_PER_CLASS  # 1,297 left to train and validate on


@functools.cache
def raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's arrays as it returns them: images (1797, 8, 8) float64 in 0..16,
    target (1797,) int."""
    from sklearn.datasets import load_digits  # imported here: only this dataset needs it

    bunch = load_digits()
    return bunch.images, bunch.target


# --8<-- [start:prepare_digits]
def prepare_digits(images: np.ndarray) -> np.ndarray:
    """8 x 8 digits (N, 8, 8) with values 0..16 -> float32 (N, 28, 28) in [0, 1], as MNIST.

    Each image goes through ``mnistify``: ink already bright on black, cropped to the
    ink, padded square, resized to 20 x 20, centred by mass at (14, 14), the brightest
    pixel stretched to 1.
    """
    return np.stack([mnistify(image / INK_LEVELS, name="a UCI digit") for image in images])


# --8<-- [end:prepare_digits]


@functools.cache
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits prepared: images float32 (1797, 28, 28) in [0, 1], labels uint8
    (1797,). Prepared once per process (about a second)."""
    images, target = raw_digits()
    return prepare_digits(images), target.astype(np.uint8)


def digits_checksum() -> dict[str, str]:
    """What identifies the data: SHA-256 of the arrays scikit-learn returns (dtype, shape,
    bytes), and scikit-learn's version. A checkpoint records it; resume compares it."""
    import sklearn

    digest = hashlib.sha256()
    for array in raw_digits():
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return {"sklearn load_digits": digest.hexdigest(), "scikit-learn": sklearn.__version__}


# --8<-- [start:test_split]
def held_out_test(labels: np.ndarray, per_class: int = TEST_PER_CLASS) -> np.ndarray:
    """The fixed test split: ``per_class`` images of each digit, drawn once with a fixed
    seed (never the run's seed), so every run and every method is tested on the same
    images. Sorted indices into ``labels``."""
    rng = np.random.default_rng(TEST_SPLIT_SEED)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)]
    return np.sort(np.concatenate(chosen))


# --8<-- [end:test_split]
