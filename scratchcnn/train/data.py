"""The images a run sees: the train/validation/test splits, and each epoch's order.

Everything random is drawn from generators derived from ``(seed, epoch, stream)``, never
from a generator that lives across epochs. That is what makes resume exact: a run that
restarts from the checkpoint of epoch *k* draws the same shuffles, augmentations and
dropout masks for epoch *k + 1* as the run that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchcnn.data.mnist import find_mnist, read_split

SPLIT_SEED = 20_031  # fixed, so every run validates on the very same images

# Streams of randomness, each drawn from default_rng([seed, epoch, stream]).
SHUFFLE, AUGMENT, DROPOUT = 0, 1, 2


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 (N, 28, 28) and their uint8 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MnistSplits:
    train: Split
    val: Split
    test: Split
    checksums: dict[str, str]  # file name -> SHA-256, recorded in checkpoints


def load_splits(config, data_dir=None) -> MnistSplits:
    """The 60k training images split into train/val (a fixed permutation), and the test set.

    The validation images are held out of training entirely; ``config.train_limit`` keeps
    the first N of the remaining training images and ``config.test_limit`` the first N test
    images (for quick runs and tests; the results then say so in their config).
    """
    location = find_mnist(data_dir)
    images, labels = read_split(location, "train")
    test_images, test_labels = read_split(location, "test")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_val = round(config.val_fraction * len(labels))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.train_limit is not None:
        train_idx = train_idx[: config.train_limit]
    return MnistSplits(
        train=_as_split(images[train_idx], labels[train_idx]),
        val=_as_split(images[val_idx], labels[val_idx]),
        test=_as_split(test_images[: config.test_limit], test_labels[: config.test_limit]),
        checksums={file.path.name: file.sha256 for file in location.files},
    )


def _as_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split((images / np.float32(255)).astype(np.float32), labels)


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, stream): the key to exact resume."""
    return np.random.default_rng([seed, epoch, stream])


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Shuffled index batches covering 0..n-1 once; the last one may be smaller."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]
