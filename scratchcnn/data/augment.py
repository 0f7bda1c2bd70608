"""Data augmentation by hand: random shifts, rotations, scaling and elastic distortion.

Every transform here works the same way, by *inverse mapping*. To build the output image
we ask, for each output pixel, "which point of the input image lands here?", and read
the input at that point by bilinear interpolation (:func:`bilinear_sample`). Mapping the
other way (pushing each input pixel forward) would leave holes in the output wherever
the transform stretches the image.

Coordinates are (row y, column x) with y pointing *down*, and pixel (i, j) sits at the
point (i, j); the centre of an H x W image is ((H - 1) / 2, (W - 1) / 2), so a 28 x 28
image turns about (13.5, 13.5). A positive angle turns the picture counter-clockwise as
it appears on screen: a rotation by +90 degrees equals ``np.rot90(image)``.

Every random draw comes from an explicit ``numpy.random.Generator``: the same generator
state gives the same augmented batch, and there is no hidden global state.

All functions take float images of shape (N, H, W); :func:`augment_batch` also accepts
the network's NHWC layout (N, H, W, 1) and returns the layout it was given.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scratchcnn.errors import ShapeError

# --------------------------------------------------------------------------- sampling


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The (y, x) coordinates of every pixel: two float64 arrays of shape (H, W)."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return ys.astype(np.float64), xs.astype(np.float64)


def bilinear_sample(images: np.ndarray, coords_y: np.ndarray, coords_x: np.ndarray) -> np.ndarray:
    """Read each image at fractional coordinates, by bilinear interpolation.

    ``images`` (N, H, W) float; ``coords_y`` and ``coords_x`` (N, H', W') say where in
    image n to read output pixel (n, i, j) (usually H' = H and W' = W). Returns an array
    of shape (N, H', W') in the images' float dtype. Points outside the image read 0, as
    if the image lay on an endless black (ink-free) background.

    A point between pixels is a weighted mean of its four neighbours: we interpolate
    along x in the row above and in the row below, then between those two along y. Each
    step, ``a + t * (b - a)`` with t in [0, 1], lands between a and b, so the result
    never leaves the range of its neighbours (and 0): inputs in [0, 1] give outputs in
    [0, 1], even after rounding. The arithmetic runs in the images' float dtype (float32
    for network inputs: half the memory traffic of float64, and 1e-6 pixel is plenty).
    """
    count, height, width = images.shape
    dtype = images.dtype if np.issubdtype(images.dtype, np.floating) else np.float64
    coords_y = np.asarray(coords_y, dtype=dtype)
    coords_x = np.asarray(coords_x, dtype=dtype)
    if coords_y.shape != coords_x.shape or coords_y.ndim != 3 or len(coords_y) != count:
        raise ShapeError(
            f"bilinear_sample needs coords_y and coords_x of one shape (N, H', W') with "
            f"N = {count}, got {coords_y.shape} and {coords_x.shape}."
        )

    # Surround every image with a ring of zeros: pixels -1 and H along y, -1 and W
    # along x. A point beyond the ring reads 0 just as a point on it does, so we clamp
    # points onto the ring; then both neighbours of every point exist in the padded image.
    padded = np.pad(images.astype(dtype, copy=False), ((0, 0), (1, 1), (1, 1)))
    cy = np.clip(coords_y, -1, height)
    cx = np.clip(coords_x, -1, width)

    # The neighbour above-left, and how far past it the point lies (fy, fx in [0, 1]).
    # Capping y0 at H - 1 keeps y0 + 1 on the ring for a point exactly on it (fy = 1).
    y0 = np.minimum(np.floor(cy), height - 1)
    x0 = np.minimum(np.floor(cx), width - 1)
    fy = cy - y0
    fx = cx - x0

    # Flat indexing: padded pixel (y, x) of image n is element n * (H+2) * (W+2) +
    # (y+1) * (W+2) + (x+1) of the flattened batch (the +1s step over the ring), so one
    # fancy-indexing call gathers one neighbour of every point in the batch.
    row = width + 2
    flat = padded.reshape(-1)
    image_start = (np.arange(count) * (height + 2) * row).reshape(count, 1, 1)
    above_left = image_start + (y0.astype(np.int64) + 1) * row + (x0.astype(np.int64) + 1)
    v00, v01 = flat[above_left], flat[above_left + 1]
    v10, v11 = flat[above_left + row], flat[above_left + row + 1]

    upper = v00 + fx * (v01 - v00)
    lower = v10 + fx * (v11 - v10)
    return upper + fy * (lower - upper)


# --------------------------------------------------------------------------- affine


def rotation_scale_matrices(angles_deg: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The 2x2 matrices ``scale * R(angle)`` in (y, x) coordinates: shape (N, 2, 2).

    With y pointing down, turning the picture counter-clockwise by theta sends
    (y, x) to (y cos - x sin, y sin + x cos): the usual rotation matrix, read in (y, x).
    """
    theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    cos, sin = np.cos(theta), np.sin(theta)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    return np.asarray(scales, dtype=np.float64)[:, None, None] * rotation


# --8<-- [start:affine_source_coords]
def affine_source_coords(
    coords_y: np.ndarray,
    coords_x: np.ndarray,
    matrices: np.ndarray,
    offsets: np.ndarray,
    center: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Where in the input each output point comes from, under a forward affine map.

    The forward map (input point p -> output point q) is ``q = A (p - c) + c + t`` with
    ``matrices`` A (N, 2, 2), ``offsets`` t (N, 2) as (dy, dx) and ``center`` c. We need
    the inverse, ``p = A^-1 (q - c - t) + c``, applied to output points ``coords_y``,
    ``coords_x`` of shape (N, H, W). Returns the input points, two arrays (N, H, W).
    """
    inverse = np.linalg.inv(matrices)  # (N, 2, 2): one small inverse per image
    offsets = np.asarray(offsets, dtype=np.float64)
    qy = coords_y - center[0] - offsets[:, 0, None, None]
    qx = coords_x - center[1] - offsets[:, 1, None, None]
    py = inverse[:, 0, 0, None, None] * qy + inverse[:, 0, 1, None, None] * qx + center[0]
    px = inverse[:, 1, 0, None, None] * qy + inverse[:, 1, 1, None, None] * qx + center[1]
    return py, px


# --8<-- [end:affine_source_coords]


def affine_transform(images: np.ndarray, matrices: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Apply one affine map per image, about the image centre: (N, H, W) -> (N, H, W).

    ``matrices`` (N, 2, 2) and ``offsets`` (N, 2) (in pixels, as (dy, dx)) define where
    each input point goes (see :func:`affine_source_coords`); the identity matrix and a
    zero offset return the images unchanged. An offset of (0, 2) moves the picture two
    pixels to the right, like ``np.roll(images, 2, axis=2)`` but with zeros coming in.
    """
    count, height, width = images.shape
    ys, xs = pixel_grid(height, width)
    grid_y = np.broadcast_to(ys, (count, height, width))
    grid_x = np.broadcast_to(xs, (count, height, width))
    py, px = affine_source_coords(grid_y, grid_x, matrices, offsets, _center(height, width))
    return bilinear_sample(images, py, px)


def random_affine_params(
    rng: np.random.Generator,
    count: int,
    *,
    max_shift: float = 2.0,
    max_rotation: float = 10.0,
    scale_range: tuple[float, float] = (0.9, 1.1),
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``count`` random maps: matrices (N, 2, 2) and offsets (N, 2).

    Angle uniform in [-max_rotation, max_rotation] degrees, one scale factor for both
    axes uniform in ``scale_range``, shift uniform in [-max_shift, max_shift] pixels
    along each axis.
    """
    angles = rng.uniform(-max_rotation, max_rotation, size=count)
    scales = rng.uniform(scale_range[0], scale_range[1], size=count)
    offsets = rng.uniform(-max_shift, max_shift, size=(count, 2))
    return rotation_scale_matrices(angles, scales), offsets


# --------------------------------------------------------------------------- elastic


def gaussian_kernel(sigma: float, radius: int | None = None) -> np.ndarray:
    """A 1-D Gaussian of standard deviation ``sigma``, cut at ``radius``, summing to 1.

    The default radius, ``ceil(3 * sigma)``, keeps all but 0.3% of the curve's area;
    renormalising makes up for the cut tails. Shape (2 * radius + 1,).
    """
    if radius is None:
        radius = int(np.ceil(3 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def convolution_matrix(kernel: np.ndarray, length: int) -> np.ndarray:
    """The (L, L) matrix M for which ``M @ v`` is the 1-D "same" convolution of v.

    Output i is ``sum_k kernel[k] * v[i + k - r]`` (r = len(kernel) // 2), with v taken
    as 0 beyond its ends (zero padding): row i of M holds the kernel centred on column i,
    cut off at the edges. As a matrix, one product convolves every column of a whole
    stack of fields at once. (The Gaussian kernel is symmetric, so flipping it - the
    difference between convolution and correlation - changes nothing.)
    """
    radius = len(kernel) // 2
    tap = np.arange(length)[None, :] - np.arange(length)[:, None] + radius
    inside = (tap >= 0) & (tap < len(kernel))
    return np.where(inside, kernel[np.clip(tap, 0, len(kernel) - 1)], 0.0)


def gaussian_blur(fields: np.ndarray, sigma: float) -> np.ndarray:
    """Blur each 2-D field of a stack (..., H, W) with a Gaussian of std ``sigma`` pixels.

    A 2-D Gaussian is a product g(y) g(x), so a 1-D blur along y (each column) followed by
    one along x (each row) is the full 2-D blur: two short passes instead of one
    (2r + 1) x (2r + 1) window per pixel. With the matrices of :func:`convolution_matrix`
    the two passes are two matrix products, ``M_y @ field @ M_x.T``. Beyond the edges
    the field counts as 0 (zero padding, like the usual implementation of Simard et
    al.'s method), so displacements fade a little near the border, where MNIST digits
    have no ink anyway.
    """
    height, width = fields.shape[-2:]
    kernel = gaussian_kernel(sigma)
    along_y = convolution_matrix(kernel, height)
    along_x = convolution_matrix(kernel, width)
    return along_y @ fields @ along_x.T


# --8<-- [start:elastic_displacements]
def elastic_displacements(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    *,
    alpha: float = 34.0,
    sigma: float = 4.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Random smooth displacement fields (dy, dx), each of ``shape`` (N, H, W), in pixels.

    Simard, Steinkraus & Platt (2003): draw each pixel's displacement uniformly in
    [-1, 1], smooth the field with a Gaussian of std ``sigma`` (neighbours then move
    together, like a rubber sheet), and multiply by ``alpha``. With a small sigma the
    field stays almost random and the pixels scatter; with a large one the random values
    average out and hardly anything moves. The blur shrinks the values a lot, which is
    why alpha is large: with sigma = 4 a pixel in the middle of a 28 x 28 image moves
    by about alpha / 25 pixels (standard deviation along each axis).
    """
    noise = rng.uniform(-1.0, 1.0, size=(2, *shape))
    dy, dx = alpha * gaussian_blur(noise, sigma)
    return dy, dx


# --8<-- [end:elastic_displacements]


# --------------------------------------------------------------------------- batches


@dataclass(frozen=True)
class AugmentConfig:
    """How strongly :func:`augment_batch` distorts a batch.

    ``shift`` max pixels along each axis, ``rotation`` max degrees either way, ``scale``
    the (low, high) range of the zoom factor; ``elastic_alpha`` and ``elastic_sigma`` the
    elastic field (see :func:`elastic_displacements`), applied to each image with
    probability ``elastic_probability``.
    """

    shift: float = 0.0
    rotation: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)
    elastic_alpha: float = 0.0
    elastic_sigma: float = 4.0
    elastic_probability: float = 0.0

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation: :func:`augment_batch` returns a copy of its input."""
        return cls()

    @property
    def has_affine(self) -> bool:
        """True when the random affine map can differ from the identity."""
        return self.shift != 0 or self.rotation != 0 or tuple(self.scale) != (1.0, 1.0)

    @property
    def has_elastic(self) -> bool:
        """True when some images may be elastically distorted."""
        return self.elastic_alpha != 0 and self.elastic_probability > 0


# The named presets (for flags such as ``--augment affine``). The ranges are the usual
# ones for MNIST: a digit moved by 2 pixels, turned by 10 degrees or zoomed by 10% is
# still clearly the same digit. Simard et al. found alpha = 34, sigma = 4 best on MNIST;
# distorting half the images keeps undistorted digits in every batch.
AUGMENTATIONS: dict[str, AugmentConfig] = {
    "none": AugmentConfig.none(),
    "affine": AugmentConfig(shift=2.0, rotation=10.0, scale=(0.9, 1.1)),
    "elastic": AugmentConfig(
        shift=2.0,
        rotation=10.0,
        scale=(0.9, 1.1),
        elastic_alpha=34.0,
        elastic_sigma=4.0,
        elastic_probability=0.5,
    ),
}


def augment_batch(
    images: np.ndarray, rng: np.random.Generator, config: AugmentConfig
) -> np.ndarray:
    """Randomly distort a batch: float (N, H, W) or NHWC (N, H, W, 1), same layout out.

    Each image gets its own random affine map; with probability
    ``config.elastic_probability`` it is also distorted elastically (after the affine
    map). Both are folded into one field of source coordinates, so every image is
    resampled once, however many transforms it gets. Inputs in [0, 1] stay in [0, 1].
    The random draws happen in a fixed order, so the same generator state always gives
    the same batch.
    """
    images = np.asarray(images)
    stack = _as_stack(images)
    count, height, width = stack.shape
    if not (config.has_affine or config.has_elastic):
        return images.copy()

    ys, xs = pixel_grid(height, width)
    # Output point q first moves along the elastic field (q + d(q)), and that point is
    # then traced back through the affine map: out(q) = in(A^-1(q + d(q) - c - t) + c).
    coords_y = np.repeat(ys[None], count, axis=0)
    coords_x = np.repeat(xs[None], count, axis=0)
    if config.has_elastic:
        distorted = rng.random(count) < config.elastic_probability
        dy, dx = elastic_displacements(
            rng,
            (int(distorted.sum()), height, width),
            alpha=config.elastic_alpha,
            sigma=config.elastic_sigma,
        )
        coords_y[distorted] += dy
        coords_x[distorted] += dx
    if config.has_affine:
        matrices, offsets = random_affine_params(
            rng,
            count,
            max_shift=config.shift,
            max_rotation=config.rotation,
            scale_range=config.scale,
        )
        coords_y, coords_x = affine_source_coords(
            coords_y, coords_x, matrices, offsets, _center(height, width)
        )
    return bilinear_sample(stack, coords_y, coords_x).reshape(images.shape)


def _as_stack(images: np.ndarray) -> np.ndarray:
    """View (N, H, W) or (N, H, W, 1) images as (N, H, W); reject anything else."""
    if images.ndim == 4 and images.shape[-1] == 1:
        return images[..., 0]
    if images.ndim == 3:
        return images
    raise ShapeError(
        f"augment_batch needs images of shape (N, H, W) or (N, H, W, 1), got {images.shape}."
    )


def _center(height: int, width: int) -> tuple[float, float]:
    """The point images turn about: halfway between the middle pixels of an even side."""
    return (height - 1) / 2, (width - 1) / 2
