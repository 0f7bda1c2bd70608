"""Data augmentation: exact identities, the direction conventions, determinism, ranges."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn.data.augment import (
    AUGMENTATIONS,
    AugmentConfig,
    affine_transform,
    augment_batch,
    bilinear_sample,
    convolution_matrix,
    elastic_displacements,
    gaussian_blur,
    gaussian_kernel,
    pixel_grid,
    rotation_scale_matrices,
)
from scratchcnn.errors import ShapeError

pytestmark = pytest.mark.lesson07


def digit_like(count: int = 8, size: int = 28, seed: int = 0) -> np.ndarray:
    """float32 (N, size, size) in [0, 1]: random blobs of ink, away from the border."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size), dtype=np.float32)
    inner = rng.random((count, size - 12, size - 12)).astype(np.float32)
    images[:, 6:-6, 6:-6] = np.where(inner > 0.6, inner, 0)
    images[:, 10, 8:20] = 1.0  # a horizontal stroke of full ink
    return images


def identity(count: int) -> tuple[np.ndarray, np.ndarray]:
    """Identity matrices (N, 2, 2) and zero offsets (N, 2)."""
    return np.tile(np.eye(2), (count, 1, 1)), np.zeros((count, 2))


def shifted_with_zeros(images: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """np.roll along y and x, with the pixels that wrap around set to 0."""
    rolled = np.roll(images, (dy, dx), axis=(1, 2))
    if dy > 0:
        rolled[:, :dy] = 0
    elif dy < 0:
        rolled[:, dy:] = 0
    if dx > 0:
        rolled[:, :, :dx] = 0
    elif dx < 0:
        rolled[:, :, dx:] = 0
    return rolled


# --------------------------------------------------------------------------- sampling


def test_bilinear_sample_at_pixel_centres_reads_the_pixels():
    images = digit_like(3)
    ys, xs = pixel_grid(28, 28)
    grid = (np.broadcast_to(ys, images.shape), np.broadcast_to(xs, images.shape))
    out = bilinear_sample(images, *grid)
    np.testing.assert_array_equal(out, images)
    assert out.dtype == np.float32


def test_bilinear_sample_at_half_pixels_averages_the_neighbours():
    images = np.random.default_rng(1).random((2, 5, 6))
    ys, xs = pixel_grid(4, 5)  # the points between pixels, inside the image
    ys, xs = np.broadcast_to(ys + 0.5, (2, 4, 5)), np.broadcast_to(xs + 0.5, (2, 4, 5))
    out = bilinear_sample(images, ys, xs)
    mean_of_four = (
        images[:, :-1, :-1] + images[:, :-1, 1:] + images[:, 1:, :-1] + images[:, 1:, 1:]
    ) / 4
    np.testing.assert_allclose(out, mean_of_four, rtol=1e-12)

    # Halfway along one axis only: the mean of two neighbours.
    out = bilinear_sample(images, np.full((2, 1, 1), 2.0), np.full((2, 1, 1), 3.5))
    np.testing.assert_allclose(out[:, 0, 0], (images[:, 2, 3] + images[:, 2, 4]) / 2)


def test_bilinear_sample_outside_the_image_reads_zero():
    images = np.ones((1, 4, 4))
    ys = np.array([[[-0.5, -1.0, -7.0, 3.5, 4.0, 100.0, 1.0, 1.0]]])
    xs = np.array([[[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -0.25, 3.75]]])
    out = bilinear_sample(images, ys, xs)
    # Half a pixel off the edge is halfway between the edge pixel (1) and the zero ring.
    np.testing.assert_allclose(out[0, 0], [0.5, 0, 0, 0.5, 0, 0, 0.75, 0.25])


def test_bilinear_sample_rejects_mismatched_coordinates():
    with pytest.raises(ShapeError, match="coords_y and coords_x"):
        bilinear_sample(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), np.zeros((2, 4, 3)))
    with pytest.raises(ShapeError, match="N = 2"):
        bilinear_sample(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)), np.zeros((3, 4, 4)))


# --------------------------------------------------------------------------- affine


def test_identity_affine_returns_the_input_exactly():
    images = digit_like(4)
    np.testing.assert_array_equal(affine_transform(images, *identity(4)), images)


@pytest.mark.parametrize(("dy", "dx"), [(0, 2), (2, 0), (-3, 1), (1, -2), (0, -5)])
def test_integer_shift_equals_roll_with_zero_fill(dy, dx):
    images = digit_like(3)
    matrices, offsets = identity(3)
    offsets[:] = (dy, dx)
    out = affine_transform(images, matrices, offsets)
    np.testing.assert_array_equal(out, shifted_with_zeros(images, dy, dx))


@pytest.mark.parametrize("quarter_turns", [1, 2, 3, -1])
def test_quarter_turns_equal_rot90(quarter_turns):
    # Positive angles turn the picture counter-clockwise on screen, as np.rot90 does.
    images = np.random.default_rng(2).random((2, 28, 28)).astype(np.float32)
    matrices = rotation_scale_matrices(np.full(2, 90.0 * quarter_turns), np.ones(2))
    out = affine_transform(images, matrices, np.zeros((2, 2)))
    expected = np.rot90(images, quarter_turns, axes=(1, 2))
    np.testing.assert_allclose(out, expected, atol=1e-6)


def test_rotation_direction_on_a_marked_corner():
    image = np.zeros((1, 5, 5))
    image[0, 0, 4] = 1.0  # top right
    out = affine_transform(image, rotation_scale_matrices(np.array([90.0]), np.ones(1)), [[0, 0]])
    assert np.unravel_index(np.argmax(out[0]), (5, 5)) == (0, 0)  # now top left


def test_scaling_by_two_magnifies_about_the_centre():
    image = np.zeros((1, 9, 9))
    image[0, 4, 4] = 1.0
    image[0, 4, 5] = 1.0
    out = affine_transform(image, rotation_scale_matrices(np.zeros(1), np.full(1, 2.0)), [[0, 0]])
    # Pixel (4, 5) is one pixel right of the centre (4, 4): twice as far after scaling.
    assert out[0, 4, 6] == 1.0
    assert out[0, 4, 4] == 1.0


def test_random_affine_keeps_each_images_ink_and_range():
    images = digit_like(64)
    out = augment_batch(images, np.random.default_rng(3), AUGMENTATIONS["affine"])
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    ratio = out.sum(axis=(1, 2)) / images.sum(axis=(1, 2))
    # Scaling by s changes the ink by s^2 (0.81 to 1.21); smoothing loses a little more.
    assert np.all((ratio > 0.7) & (ratio < 1.3))
    assert abs(ratio.mean() - 1) < 0.08


# --------------------------------------------------------------------------- elastic


def test_gaussian_kernel_is_normalised_and_symmetric():
    kernel = gaussian_kernel(4.0)
    assert kernel.shape == (25,)
    assert kernel.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(kernel, kernel[::-1])
    assert np.argmax(kernel) == 12


def test_convolution_matrix_equals_numpy_convolve():
    rng = np.random.default_rng(4)
    kernel = rng.random(7)
    vector = rng.random(20)
    np.testing.assert_allclose(
        convolution_matrix(kernel, 20) @ vector,
        np.convolve(vector, kernel[::-1], mode="same"),  # flip: we correlate
        rtol=1e-12,
    )


def test_gaussian_blur_equals_row_and_column_convolutions():
    rng = np.random.default_rng(5)
    fields = rng.uniform(-1, 1, size=(3, 28, 28))
    kernel = gaussian_kernel(2.0)
    expected = np.apply_along_axis(np.convolve, 1, fields, kernel, mode="same")
    expected = np.apply_along_axis(np.convolve, 2, expected, kernel, mode="same")
    np.testing.assert_allclose(gaussian_blur(fields, 2.0), expected, atol=1e-12)


def test_elastic_field_size_matches_alpha_over_25():
    # Uniform(-1, 1) noise blurred by sigma=4 keeps about 1/25 of its spread in the
    # middle of the image; near the border zero padding makes it smaller.
    dy, dx = elastic_displacements(np.random.default_rng(6), (200, 28, 28), alpha=34.0)
    middle = np.concatenate([dy[:, 10:18, 10:18].ravel(), dx[:, 10:18, 10:18].ravel()])
    assert 34 / 25 * 0.8 < middle.std() < 34 / 25 * 1.2


def test_elastic_with_alpha_zero_moves_nothing():
    dy, dx = elastic_displacements(np.random.default_rng(0), (5, 28, 28), alpha=0.0)
    assert not dy.any() and not dx.any()


def test_elastic_distortion_moves_pixels_but_keeps_ink():
    images = digit_like(32)
    every = AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0, elastic_probability=1.0)
    out = augment_batch(images, np.random.default_rng(7), every)
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert not np.allclose(out, images)
    ratio = out.sum() / images.sum()
    assert 0.9 < ratio < 1.1


# --------------------------------------------------------------------------- batches


def test_presets():
    assert AUGMENTATIONS["none"] == AugmentConfig.none()
    affine = AUGMENTATIONS["affine"]
    assert (affine.shift, affine.rotation, affine.scale) == (2.0, 10.0, (0.9, 1.1))
    assert not affine.has_elastic
    elastic = AUGMENTATIONS["elastic"]
    assert elastic.has_affine and elastic.has_elastic
    assert (elastic.elastic_alpha, elastic.elastic_sigma) == (34.0, 4.0)
    assert elastic.elastic_probability == 0.5


def test_none_returns_an_equal_copy():
    images = digit_like(4)
    out = augment_batch(images, np.random.default_rng(0), AugmentConfig.none())
    np.testing.assert_array_equal(out, images)
    assert out is not images


@pytest.mark.parametrize("name", ["affine", "elastic"])
@pytest.mark.parametrize("nhwc", [False, True])
def test_layout_dtype_range_and_ink(name, nhwc):
    images = digit_like(64)
    if nhwc:
        images = images[..., None]
    out = augment_batch(images, np.random.default_rng(8), AUGMENTATIONS[name])
    assert out.shape == images.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1
    assert abs(out.sum() / images.sum() - 1) < 0.1
    changed = ~np.all(np.isclose(out, images), axis=tuple(range(1, images.ndim)))
    assert changed.all()


@pytest.mark.parametrize("name", ["affine", "elastic"])
def test_same_seed_same_batch_other_seed_other_batch(name):
    images = digit_like(16)
    config = AUGMENTATIONS[name]
    first = augment_batch(images, np.random.default_rng(42), config)
    again = augment_batch(images, np.random.default_rng(42), config)
    other = augment_batch(images, np.random.default_rng(43), config)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


def test_elastic_probability_picks_about_half_the_images():
    images = digit_like(200)
    config = AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0, elastic_probability=0.5)
    out = augment_batch(images, np.random.default_rng(9), config)
    unchanged = np.all(out == images, axis=(1, 2))
    assert 60 < unchanged.sum() < 140
    every = AugmentConfig(elastic_alpha=34.0, elastic_sigma=4.0, elastic_probability=1.0)
    out = augment_batch(images, np.random.default_rng(9), every)
    assert not np.any(np.all(out == images, axis=(1, 2)))


def test_output_stays_in_unit_range_for_full_ink():
    # All-ones images are the hardest case for rounding: every output is a mean of ones.
    images = np.ones((128, 28, 28), dtype=np.float32)
    out = augment_batch(images, np.random.default_rng(10), AUGMENTATIONS["elastic"])
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("shape", [(28, 28), (4, 28, 28, 3), (4, 1, 28, 28, 1)])
def test_rejects_other_layouts(shape):
    with pytest.raises(ShapeError, match=r"\(N, H, W\) or \(N, H, W, 1\)"):
        images = np.zeros(shape, np.float32)
        augment_batch(images, np.random.default_rng(0), AUGMENTATIONS["affine"])
