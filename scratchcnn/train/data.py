"""The images a run sees: the train/validation/test splits, and each epoch's order.

Everything random is drawn from generators derived from ``(seed, epoch, stream)``, never
from a generator that lives across epochs. That is what makes resume exact: a run that
restarts from the checkpoint of epoch *k* draws the same shuffles, augmentations and
dropout masks for epoch *k + 1* as the run that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchcnn.data.digits import digits_checksum, held_out_test, load_digits
from scratchcnn.data.mnist import find_mnist, read_split
from scratchcnn.optim import ConfigError

SPLIT_SEED = 20_031  # fixed, so every run validates on the very same images

# Streams of randomness, each drawn from default_rng([seed, epoch, stream]).
SHUFFLE, AUGMENT, DROPOUT, ROBUST_VALIDATION = 0, 1, 2, 3  # the random streams of an epoch
PER_CLASS = 1_000  # the stream of --per-class's draw: default_rng([seed, PER_CLASS])


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 (N, 28, 28) and their uint8 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split
    test: Split
    checksums: dict[str, str]  # what identifies the data (file name -> SHA-256), for checkpoints


# --8<-- [start:load_splits]
def load_splits(config, data_dir=None) -> Splits:
    """The training images split into train/val (a fixed permutation), and the test set.

    ``config.dataset``: "mnist" (60k training images, 10k test images) or "digits" (the
    UCI digits, ``scratchcnn.data.digits``: a fixed test split of 500, the other 1,297 to
    train on). The validation images are held out of training entirely;
    ``config.per_class`` keeps N images of each class of the remaining training images
    (a draw seeded by ``config.seed``), ``config.train_limit`` the first N of them and
    ``config.test_limit`` the first N test images (for quick runs and tests; the results
    then say so in their config).
    """
    if config.dataset == "digits":
        images, labels, test_images, test_labels, checksums = _digits()
    else:
        images, labels, test_images, test_labels, checksums = _mnist(data_dir)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_val = round(config.val_fraction * len(labels))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.per_class is not None:
        train_idx = per_class(labels, train_idx, config.per_class, config.seed)
    if config.train_limit is not None:
        train_idx = train_idx[: config.train_limit]
    return Splits(
        train=_as_split(images[train_idx], labels[train_idx]),
        val=_as_split(images[val_idx], labels[val_idx]),
        test=_as_split(test_images[: config.test_limit], test_labels[: config.test_limit]),
        checksums=checksums,
    )


# --8<-- [end:load_splits]


def _mnist(data_dir):
    """MNIST's training and test images (uint8) and labels, and the files' SHA-256."""
    location = find_mnist(data_dir)
    images, labels = read_split(location, "train")
    test_images, test_labels = read_split(location, "test")
    checksums = {file.path.name: file.sha256 for file in location.files}
    return images, labels, test_images, test_labels, checksums


def _digits():
    """The UCI digits prepared as MNIST (float32 in [0, 1]): the images outside the fixed
    test split, the test split, and what identifies the data."""
    images, labels = load_digits()
    test = held_out_test(labels)
    rest = np.setdiff1d(np.arange(len(labels)), test)
    return images[rest], labels[rest], images[test], labels[test], digits_checksum()


# --8<-- [start:per_class]
def per_class(labels: np.ndarray, indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of ``indices`` of each class (labels[i]), drawn with ``seed``: sorted indices.

    One seeded shuffle, then the first ``n`` of each class: for one seed, the 10 images
    per class are among the 50 per class (a smaller label budget is a subset of a larger).
    """
    shuffled = np.random.default_rng([seed, PER_CLASS]).permutation(indices)
    chosen = []
    for c in np.unique(labels[indices]):
        of_class = shuffled[labels[shuffled] == c]
        if len(of_class) < n:
            raise ConfigError(
                f"--per-class {n} asks for more images than the {len(of_class)} training "
                f"images of class {c}; use at most {len(of_class)}, or leave it out for all."
            )
        chosen.append(of_class[:n])
    return np.sort(np.concatenate(chosen))


# --8<-- [end:per_class]


def _as_split(images: np.ndarray, labels: np.ndarray) -> Split:
    if images.dtype == np.uint8:  # MNIST's bytes; the digits are float already
        images = (images / np.float32(255)).astype(np.float32)
    return Split(images, labels)


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, stream): the key to exact resume."""
    return np.random.default_rng([seed, epoch, stream])


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Shuffled index batches covering 0..n-1 once; the last one may be smaller."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
