"""Turn any picture of a handwritten digit into an MNIST-style 28 x 28 image.

A network trained on MNIST has only ever seen digits prepared one particular way (LeCun
et al., "Gradient-based learning applied to document recognition", 1998): white ink on
black, the digit scaled (keeping its aspect ratio) to fit a 20 x 20 box, then placed in
a 28 x 28 field so that its centre of mass sits at the centre. A photo or a drawing of a
digit must go through the same steps, or the network sees something it never learned:

1. :func:`load_image` reads the file (any format Pillow reads) as grayscale in [0, 1];
2. :func:`mnistify` makes the ink bright on a black background, crops to the ink, pads
   to a square, resizes to 20 x 20, centres by mass in 28 x 28 and stretches the
   contrast so the darkest ink becomes 1.

Every problem with a file raises :class:`ImageError` with one sentence naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from scratchcnn.data.mnist import IMAGE_SHAPE
from scratchcnn.errors import ScratchCNNError, ShapeError
from scratchcnn.files import check_regular_file, os_reason

MNIST_SIZE = IMAGE_SHAPE[0]  # side of the final image (MNIST digits are square)
DIGIT_BOX = 20  # side of the box the digit is scaled to fit, as in MNIST

# After the background is removed and ink scaled to peak at 1, pixels above this level
# count as ink when we crop. MNIST's own box holds every non-zero pixel, but a JPEG rings
# faintly around its strokes: at 0.05 that ringing widened the box of a JPEG digit by a
# few pixels (and so shrank the digit); at 0.1 it does not. The price: for 0.35% of the
# real MNIST test digits the faint edge falls outside the box, and a round trip through
# mnistify moves them by a pixel.
INK_LEVEL = 0.1
# An image whose ink stands out from the background by less than this (on a 0..1
# scale, about 25 of 255 gray levels) holds no digit we could read.
MIN_CONTRAST = 0.1
# The most pixels we decode. A few hundred bytes of PNG can declare a blank 10000 x 10000
# image, and preparing a digit costs about 30 bytes per pixel (the decoded image, then
# float copies of it): 100 megapixels took 3 GB. 50 megapixels (1.5 GB at most) still
# takes any camera's or phone's full-size photo. We check the size the file's header
# declares, before decoding a single pixel.
MAX_PIXELS = 50_000_000
# The largest square mnistify pads a crop to (about 540 MB as float64). Only a crop of
# the ink wider or taller than this (a long thin drawing, or ink spanning most of a
# 50-megapixel photo) is shrunk first; for every other image the steps are MNIST's.
MAX_SQUARE_SIDE = 8192

# Modes in which Pillow keeps grayscale in more than 8 bits. Its convert("L") clips
# these at 255 rather than scaling them, so we scale by hand.
_HIGH_BIT_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
# Modes that carry an alpha channel (transparency of palette and plain images is
# recorded in image.info["transparency"] instead).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


class ImageError(ScratchCNNError, ValueError):
    """An image file is missing, unreadable, too small, or holds no visible digit."""


# --------------------------------------------------------------------------- loading


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as float32 grayscale (H, W) in [0, 1], 0 black and 1 white.

    Any format Pillow reads works: the EXIF orientation of phone photos is applied,
    transparent pixels are laid over a white background (a transparent PNG of a dark
    digit is a dark digit on white paper), palette and 16-bit images are converted
    without losing their range; only the first frame of an animation is read. Raises
    :class:`ImageError` for a missing, empty, unreadable, truncated, tiny (less than 2
    pixels on a side) or huge (more than ``MAX_PIXELS``) file, and for a float image
    with NaN or infinite pixels.
    """
    path = Path(path)
    _check_is_file(path)
    try:
        file = path.open("rb")
    except OSError as error:
        raise ImageError(f"cannot read {path}: {os_reason(error)}.") from error
    with file:
        gray = _decode(file, path)
    height, width = gray.shape
    if min(height, width) < 2:
        raise ImageError(f"{path} is {width}x{height} pixels, too small to hold a digit.")
    if not np.isfinite(gray).all():  # only float ("F") images can hold NaN or inf
        raise ImageError(f"{path} holds NaN or infinite pixel values, not gray levels.")
    return np.clip(gray, 0, 1)


def _check_is_file(path: Path) -> None:
    """Missing, a folder, a device or empty: say which before Pillow gives a vaguer message."""
    check_regular_file(path, "an image file", ImageError)
    if path.stat().st_size == 0:
        raise ImageError(f"{path} is empty (0 bytes), not an image.")


def _decode(file: BinaryIO, path: Path) -> np.ndarray:
    """Decode the open image file into float32 grayscale (H, W), unclipped."""
    try:
        with warnings.catch_warnings():
            # Pillow warns about images above its own limit (89 megapixels); ours,
            # MAX_PIXELS, is lower and says so in one sentence instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
        with image:
            _check_pixel_count(image.size, path)
            # Pillow decodes lazily: open() reads only the header. load() decodes the
            # pixels now, inside this try, so a truncated file fails here, not later.
            image.load()
            upright = ImageOps.exif_transpose(image)  # a copy, usable after the file closes
    except ImageError:
        raise  # _check_pixel_count's refusal (an ImageError is a ValueError too)
    except UnidentifiedImageError as error:
        raise ImageError(f"{path} is not an image file Pillow can read.") from error
    except Image.DecompressionBombError as error:  # above twice Pillow's limit
        raise ImageError(
            f"{path} is larger than {2 * Image.MAX_IMAGE_PIXELS:,} pixels; scratchcnn reads "
            f"images of at most {MAX_PIXELS:,} pixels, so scale it down first."
        ) from error
    # Damaged data surfaces from Pillow's decoders as OSError ("image file is
    # truncated"), SyntaxError ("broken PNG file"), EOFError or ValueError.
    except (OSError, SyntaxError, EOFError, ValueError) as error:
        raise ImageError(f"{path} is truncated or corrupt: Pillow says {error}.") from error
    try:
        return _to_gray(upright)
    except ValueError as error:  # "conversion from LAB to RGB not supported"
        raise ImageError(
            f"{path} is a {upright.mode} image, a color mode Pillow cannot turn into gray."
        ) from error


def _check_pixel_count(size: tuple[int, int], path: Path) -> None:
    """Refuse an image above MAX_PIXELS from the size its header declares."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{path} is {width}x{height} pixels; scratchcnn reads images of at most "
            f"{MAX_PIXELS:,} pixels, so scale it down first."
        )


def _to_gray(image: Image.Image) -> np.ndarray:
    """A Pillow image of any mode -> float32 grayscale (H, W), 0 black and 1 white.

    Not clipped to [0, 1] yet: load_image does that after refusing NaN and inf.
    """
    if image.mode in _HIGH_BIT_GRAY_MODES:
        # 16-bit grayscale (PNG, TIFF): 65535 is white.
        return np.asarray(image, dtype=np.float32) / 65535
    if image.mode == "F":  # float TIFFs
        return np.asarray(image, dtype=np.float32)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        image = _over_white(image)
    # convert("L") weighs red, green and blue as the eye does (ITU-R 601-2 luma).
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def _over_white(image: Image.Image) -> Image.Image:
    """Composite an image with transparency over a white background (RGBA -> RGBA).

    A transparent pixel's own color is arbitrary (often black), so dropping the alpha
    channel instead could turn the whole background into "ink".
    """
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba)


# --------------------------------------------------------------------------- MNIST style


# --8<-- [start:mnistify]
def mnistify(gray: np.ndarray, *, name: str = "the image") -> np.ndarray:
    """Preprocess a grayscale digit (H, W) in [0, 1] as MNIST was: float32 (28, 28) in [0, 1].

    Steps: make the ink bright on black (:func:`ink_on_black`); crop to the ink's
    bounding box (shrunk first if a side exceeds ``MAX_SQUARE_SIDE``); pad to a square,
    so the aspect ratio survives; resize to 20 x 20; place
    in a 28 x 28 field with the centre of mass at pixel (14, 14); stretch so the
    brightest ink is 1. ``name`` names the image in errors: :class:`ImageError` when it
    holds no visible digit.
    """
    gray = np.asarray(gray, dtype=np.float64)
    if gray.ndim != 2:
        raise ShapeError(f"mnistify needs a grayscale image of shape (H, W), got {gray.shape}.")
    if min(gray.shape) < 2:
        height, width = gray.shape
        raise ImageError(f"{name} is {width}x{height} pixels, too small to hold a digit.")
    if not np.isfinite(gray).all():
        raise ImageError(f"{name} holds NaN or infinite pixel values, not gray levels.")

    ink = ink_on_black(gray)
    if ink.max() < MIN_CONTRAST:
        raise ImageError(
            f"{name} contains no visible digit: no pixel differs from the background by "
            f"{MIN_CONTRAST:.0%} of the full gray range or more."
        )
    digit = crop_to_ink(ink / ink.max())
    digit = pad_to_square(shrink_to_fit(digit, MAX_SQUARE_SIDE))
    digit = resize(digit, DIGIT_BOX)
    canvas = center_by_mass(digit, MNIST_SIZE)
    return (canvas / canvas.max()).astype(np.float32)


# --8<-- [end:mnistify]


# --8<-- [start:ink_on_black]
def ink_on_black(gray: np.ndarray) -> np.ndarray:
    """Bright ink on a black (0) background, whatever the picture's polarity: (H, W).

    The rule: the border of a picture is background. When its median gray is above 0.5
    the paper is light and the ink dark, so we invert (1 - gray). Then we subtract the
    background level (the border median again) and clip at 0, so gray paper or a
    dark-gray board becomes exactly 0, as MNIST's background is. The median, not the
    mean, ignores a stroke that touches the border.
    """
    border = np.concatenate([gray[0], gray[-1], gray[1:-1, 0], gray[1:-1, -1]])
    if np.median(border) > 0.5:
        gray = 1 - gray
        border = 1 - border
    return np.clip(gray - np.median(border), 0, None)


# --8<-- [end:ink_on_black]


def crop_to_ink(ink: np.ndarray, level: float = INK_LEVEL) -> np.ndarray:
    """The smallest rectangle holding every pixel above ``level``: (h, w) <= (H, W).

    Only the box is chosen by the threshold; the pixels inside keep their gray values.
    """
    rows = np.flatnonzero((ink > level).any(axis=1))
    cols = np.flatnonzero((ink > level).any(axis=0))
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def shrink_to_fit(image: np.ndarray, side: int) -> np.ndarray:
    """Shrink (h, w) with Lanczos so neither side exceeds ``side``, keeping the aspect ratio.

    An image that already fits is returned as it is. Padding a long, thin crop to a
    square would otherwise take side² pixels: a 20000 x 40 line drawing became a 3 GB
    square.
    """
    height, width = image.shape
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    shrunk = Image.fromarray(image.astype(np.float32)).resize(size, Image.Resampling.LANCZOS)
    return np.clip(np.asarray(shrunk, dtype=np.float64), 0, None)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad the shorter side with black, equally on both sides: (h, w) -> (s, s), s = max."""
    height, width = image.shape
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    square = np.zeros((side, side), dtype=image.dtype)
    square[top : top + height, left : left + width] = image
    return square


def resize(square: np.ndarray, size: int) -> np.ndarray:
    """Resize a square image to (size, size) with Pillow's Lanczos filter; float64.

    Lanczos averages over many source pixels when shrinking (anti-aliasing, which gives
    MNIST its soft gray edges) and interpolates smoothly when enlarging. It can ring
    slightly below 0 next to sharp edges, so we clip.
    """
    image = Image.fromarray(square.astype(np.float32))  # mode "F"
    resized = image.resize((size, size), Image.Resampling.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float64), 0, None)


# --8<-- [start:center_by_mass]
def center_by_mass(digit: np.ndarray, size: int = MNIST_SIZE) -> np.ndarray:
    """Place ``digit`` (h, w) in a black (size, size) field, centre of mass at (14, 14).

    The centre of mass is the intensity-weighted mean pixel position; it goes to pixel
    (size / 2, size / 2), where MNIST's digits have theirs (measured over the test set:
    13.99, 14.00), not the geometric centre (13.5, 13.5). We shift by whole
    pixels (rounding), as MNIST did; ink that would land outside the field (only for a
    digit whose mass sits very near one edge of its box) is cut off.
    """
    rows, cols = np.indices(digit.shape)
    mass = digit.sum()
    center_y, center_x = (rows * digit).sum() / mass, (cols * digit).sum() / mass
    top = round(size / 2 - center_y)
    left = round(size / 2 - center_x)
    return _paste(np.zeros((size, size)), digit, top, left)


# --8<-- [end:center_by_mass]


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> np.ndarray:
    """Copy ``patch`` into ``canvas`` with its corner at (top, left), clipped to the canvas."""
    height, width = patch.shape
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, canvas.shape[0]), min(left + width, canvas.shape[1])
    canvas[y0:y1, x0:x1] = patch[y0 - top : y1 - top, x0 - left : x1 - left]
    return canvas


# --------------------------------------------------------------------------- files


def prepare_image(path: str | os.PathLike) -> np.ndarray:
    """Load one image file and preprocess it as MNIST: float32 (28, 28) in [0, 1]."""
    return mnistify(load_image(path), name=str(path))


def prepare_images(paths: Iterable[str | os.PathLike]) -> np.ndarray:
    """Load and preprocess many image files: float32 (N, 28, 28) in [0, 1]."""
    digits = [prepare_image(path) for path in paths]
    if not digits:
        return np.zeros((0, MNIST_SIZE, MNIST_SIZE), dtype=np.float32)
    return np.stack(digits)
