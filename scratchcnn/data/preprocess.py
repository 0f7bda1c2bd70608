"""From uint8 images to the float NHWC batches the network reads."""

import numpy as np

# Mean and standard deviation of the 60,000 training pixels, scaled to [0, 1].
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


# --8<-- [start:preprocess]
def to_unit_nhwc(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 (N, 28, 28) -> float (N, 28, 28, 1) in [0, 1], the scale attacks work in."""
    return (images.astype(dtype) / 255)[..., None]


def standardize(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """uint8 (N, 28, 28) -> float (N, 28, 28, 1), zero mean and unit variance overall."""
    return standardize_unit(to_unit_nhwc(images, dtype))


def standardize_unit(unit_images):
    """Images in [0, 1], any shape (NumPy or JAX) -> the network's input scale.

    Kept apart from the uint8 path because augmentation and attacks work on [0, 1]
    images and only then hand them to the network.
    """
    dtype = unit_images.dtype
    return ((unit_images - MNIST_MEAN) / MNIST_STD).astype(dtype)


# --8<-- [end:preprocess]
