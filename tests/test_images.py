"""Images to MNIST-style digits: polarity, cropping, centring, formats, and bad files."""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from scratchcnn.data import images
from scratchcnn.data.images import (
    INK_LEVEL,
    ImageError,
    load_image,
    mnistify,
    prepare_image,
    prepare_images,
)
from scratchcnn.errors import ScratchCNNError, ShapeError

pytestmark = pytest.mark.lesson12


def draw_nine(size=(120, 160), box=(20, 20, 100, 140), ink=0, paper=255, mode="L"):
    """A '9' (a loop and a tail) drawn with Pillow: an image of ``size``, digit in ``box``."""
    image = Image.new(mode, size, paper)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = box
    width = max(2, (right - left) // 8)
    middle = top + (bottom - top) * 0.45
    draw.ellipse((left, top, right, middle), outline=ink, width=width)
    draw.line(
        (right - width // 2, (top + middle) / 2, left + (right - left) * 0.3, bottom), ink, width
    )
    return image


def save(image: Image.Image, path, **options):
    image.save(path, **options)
    return path


def center_of_mass(digit: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(digit.shape)
    return (rows * digit).sum() / digit.sum(), (cols * digit).sum() / digit.sum()


def ink_box(digit: np.ndarray, level: float = INK_LEVEL) -> tuple[int, int]:
    """(height, width) of the bounding box of the pixels above ``level``."""
    rows = np.flatnonzero((digit > level).any(axis=1))
    cols = np.flatnonzero((digit > level).any(axis=0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture
def reference(tmp_path) -> np.ndarray:
    """The '9', dark on white, as a PNG and then through the whole pipeline."""
    return prepare_image(save(draw_nine(), tmp_path / "reference.png"))


# --------------------------------------------------------------------------- the steps


def test_result_is_an_mnist_style_digit(reference):
    assert reference.shape == (28, 28) and reference.dtype == np.float32
    assert reference.min() == 0 and reference.max() == 1
    # MNIST's frame: the border stays black, the digit fits 20 x 20.
    assert max(ink_box(reference)) in (19, 20, 21)
    center_y, center_x = center_of_mass(reference)
    assert abs(center_y - 14) <= 1 and abs(center_x - 14) <= 1


def test_dark_on_white_and_white_on_black_agree(tmp_path, reference):
    light = prepare_image(save(draw_nine(ink=255, paper=0), tmp_path / "light.png"))
    np.testing.assert_allclose(light, reference, atol=1e-5)


def test_gray_paper_and_gray_ink_agree(tmp_path, reference):
    # A photo's paper is rarely white: the background is removed, the contrast stretched.
    dull = prepare_image(save(draw_nine(ink=60, paper=200), tmp_path / "dull.png"))
    np.testing.assert_allclose(dull, reference, atol=1e-5)


def test_small_off_centre_digit_on_a_large_canvas_ends_centred_and_20_pixels(tmp_path):
    image = draw_nine(size=(500, 300), box=(400, 20, 440, 80))
    digit = prepare_image(save(image, tmp_path / "wide.png"))
    center_y, center_x = center_of_mass(digit)
    assert abs(center_y - 14) <= 1 and abs(center_x - 14) <= 1
    assert max(ink_box(digit)) in (19, 20, 21)
    # The aspect ratio survives: the '9' stays taller than wide.
    height, width = ink_box(digit)
    assert height > width


def test_wide_digit_keeps_its_aspect_ratio():
    gray = np.ones((50, 200))
    gray[20:30, 20:180] = 0  # a dash 160 wide and 10 tall
    digit = mnistify(gray)
    height, width = ink_box(digit)
    assert width in (19, 20, 21) and height <= 3


def test_mnistify_rejects_non_grayscale_arrays():
    with pytest.raises(ShapeError, match=r"\(H, W\)"):
        mnistify(np.zeros((10, 10, 3)))


# --------------------------------------------------------------------------- formats


def test_transparent_png_of_a_dark_digit(tmp_path, reference):
    # Transparent pixels here are black with alpha 0: dropping alpha would make the
    # whole background ink. Composited over white they become paper.
    image = draw_nine(ink=(0, 0, 0, 255), paper=(0, 0, 0, 0), mode="RGBA")
    digit = prepare_image(save(image, tmp_path / "transparent.png"))
    np.testing.assert_allclose(digit, reference, atol=1e-5)


def test_gray_with_alpha_and_palette_images(tmp_path, reference):
    la = draw_nine(ink=(0, 255), paper=(0, 0), mode="LA")
    np.testing.assert_allclose(prepare_image(save(la, tmp_path / "la.png")), reference, atol=1e-5)
    palette = draw_nine(mode="RGB", ink=(0, 0, 128), paper=(255, 255, 255)).convert("P")
    digit = prepare_image(save(palette, tmp_path / "palette.gif"))
    assert correlation(digit, reference) > 0.99


def test_rgb_jpeg(tmp_path, reference):
    image = draw_nine(mode="RGB", ink=(20, 20, 90), paper=(250, 245, 235))
    digit = prepare_image(save(image, tmp_path / "photo.jpg", quality=85))
    # JPEG rings around strokes; the crop must not mistake that for ink.
    assert correlation(digit, reference) > 0.98


def test_16_bit_grayscale_png(tmp_path, reference):
    gray8 = np.asarray(draw_nine(), dtype=np.uint16)
    image = Image.fromarray(gray8 * 257)  # 0..255 -> 0..65535, mode I;16
    path = save(image, tmp_path / "deep.png")
    assert Image.open(path).mode.startswith("I")
    loaded = load_image(path)
    assert loaded.min() == 0 and loaded.max() == 1  # scaled, not clipped at 255
    np.testing.assert_allclose(prepare_image(path), reference, atol=1e-5)


def test_exif_orientation_is_applied(tmp_path):
    image = draw_nine(size=(90, 60), box=(10, 5, 50, 55))
    plain = load_image(save(image, tmp_path / "plain.jpg", quality=95))
    exif = Image.Exif()
    exif[0x0112] = 6  # "the camera was turned: rotate 90 degrees clockwise to view"
    turned = load_image(save(image, tmp_path / "turned.jpg", quality=95, exif=exif))
    np.testing.assert_array_equal(turned, np.rot90(plain, -1))


def test_load_image_range_and_dtype(tmp_path):
    gray = load_image(save(draw_nine(), tmp_path / "a.png"))
    assert gray.shape == (160, 120) and gray.dtype == np.float32
    assert gray.min() == 0 and gray.max() == 1


# --------------------------------------------------------------------------- bad input


def assert_image_error(path, *phrases, prepare=False):
    """Loading ``path`` raises ImageError, one sentence that names the file."""
    with pytest.raises(ImageError) as caught:
        prepare_image(path) if prepare else load_image(path)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message
    assert isinstance(caught.value, ScratchCNNError) and isinstance(caught.value, ValueError)


def test_missing_file_and_folder(tmp_path):
    assert_image_error(tmp_path / "nowhere.png", "does not exist")
    assert_image_error(tmp_path, "is a folder")


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is text, not pixels\n")
    assert_image_error(path, "not an image file")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    assert_image_error(path, "empty")


def test_truncated_png(tmp_path):
    whole = save(draw_nine(), tmp_path / "whole.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(whole[: len(whole) // 2])
    assert_image_error(path, "truncated or corrupt")


def test_one_pixel_image(tmp_path):
    path = save(Image.new("L", (1, 1), 0), tmp_path / "dot.png")
    assert_image_error(path, "1x1 pixels", "too small to hold a digit")


def test_blank_images(tmp_path):
    white = save(Image.new("L", (64, 64), 255), tmp_path / "white.png")
    assert_image_error(white, "contains no visible digit", prepare=True)
    # Faint JPEG noise on blank paper is not a digit either.
    speckled = np.full((64, 64), 250, dtype=np.uint8)
    speckled[::7, ::5] = 245
    path = save(Image.fromarray(speckled), tmp_path / "speckled.jpg")
    assert_image_error(path, "contains no visible digit", prepare=True)


def test_prepare_images_stacks_and_names_the_bad_file(tmp_path):
    good = save(draw_nine(), tmp_path / "good.png")
    stack = prepare_images([good, good])
    assert stack.shape == (2, 28, 28) and stack.dtype == np.float32
    assert prepare_images([]).shape == (0, 28, 28)
    blank = save(Image.new("L", (30, 30), 0), tmp_path / "blank.png")
    with pytest.raises(ImageError, match="blank.png contains no visible digit"):
        prepare_images([good, blank])


# --------------------------------------------------------------------------- real MNIST


def test_real_mnist_digits_survive_the_round_trip(tmp_path, mnist_test):
    # An MNIST digit is already MNIST-style: drawn black on white, saved and prepared
    # again, it must come back (nearly) as it was. (A few in a thousand come back one
    # pixel off: see INK_LEVEL. None of the first 50 does.)
    images, _ = mnist_test
    originals = images[:50]
    paths = []
    for index, digit in enumerate(originals):
        paths.append(save(Image.fromarray(255 - digit), tmp_path / f"mnist_{index}.png"))
    prepared = prepare_images(paths)
    correlations = [
        correlation(original / 255, digit) for original, digit in zip(originals, prepared)
    ]
    assert min(correlations) > 0.99


# --------------------------------------------------------------------------- hostile files


def float_nine(tmp_path, name, bad_value):
    """The '9' as a float ("F") TIFF, gray levels 0..1, with one pixel set to ``bad_value``."""
    gray = np.asarray(draw_nine(), dtype=np.float32) / 255
    gray[5, 5] = bad_value
    return save(Image.fromarray(gray, "F"), tmp_path / name)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_a_nan_or_inf_pixel(tmp_path, bad_value):
    path = float_nine(tmp_path, "bad.tif", bad_value)
    assert_image_error(path, "NaN or infinite", prepare=True)


def test_float_tiff_of_finite_values_is_clipped_to_gray(tmp_path, reference):
    gray = np.asarray(draw_nine(), dtype=np.float32) / 255 * 3 - 1  # -1..2
    path = save(Image.fromarray(gray, "F"), tmp_path / "wide.tif")
    assert load_image(path).min() == 0 and load_image(path).max() == 1
    assert correlation(prepare_image(path), reference) > 0.99


def test_mnistify_refuses_nan():
    gray = np.zeros((30, 30))
    gray[10:20, 10:20] = 1
    gray[0, 0] = np.nan
    with pytest.raises(ImageError, match="my array holds NaN or infinite pixel values"):
        mnistify(gray, name="my array")


def test_huge_image_is_refused_from_its_header_before_decoding(tmp_path):
    # 10000 x 10000 blank pixels compress to ~120 KB; decoding them took 3 GB.
    path = save(Image.new("1", (10_000, 10_000), 1), tmp_path / "huge.png")
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Pillow's own DecompressionBombWarning included
            assert_image_error(path, "10000x10000 pixels", "at most 50,000,000 pixels")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000


def test_image_above_twice_pillows_limit(tmp_path, monkeypatch):
    # Pillow itself refuses this one while opening it: the same advice, without the size.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 200 x 200 is above 2 x 1000
    path = save(Image.new("1", (200, 200), 1), tmp_path / "giant.png")
    assert_image_error(path, "larger than 2,000 pixels", "at most 50,000,000 pixels")


def test_image_just_under_the_cap_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 120 * 160)
    assert load_image(save(draw_nine(), tmp_path / "ok.png")).shape == (160, 120)
    monkeypatch.setattr(images, "MAX_PIXELS", 120 * 160 - 1)
    assert_image_error(tmp_path / "ok.png", "120x160 pixels", "at most 19,199 pixels")


def test_device_pipe_and_symlink_loop(tmp_path):
    assert_image_error(Path("/dev/zero"), "is a device")
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert_image_error(fifo, "is a named pipe (FIFO)")
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    assert_image_error(tmp_path / "a.png", "cannot read", "symbolic links")


def test_color_mode_pillow_cannot_convert(tmp_path):
    path = save(draw_nine().convert("RGB").convert("LAB"), tmp_path / "lab.tif")
    assert_image_error(path, "LAB image", "cannot turn into gray")


@pytest.mark.parametrize(
    ("mode", "name"),
    [("CMYK", "cmyk.jpg"), ("CMYK", "cmyk.tif"), ("1", "bw.png"), ("YCbCr", "ycc.tif")],
)
def test_other_color_modes(tmp_path, reference, mode, name):
    path = save(draw_nine().convert("RGB").convert(mode), tmp_path / name)
    assert correlation(prepare_image(path), reference) > 0.98


def test_animated_gif_uses_its_first_frame(tmp_path, reference):
    blank = Image.new("L", draw_nine().size, 255)
    path = save(draw_nine(), tmp_path / "anim.gif", save_all=True, append_images=[blank])
    assert correlation(prepare_image(path), reference) > 0.99


@pytest.mark.parametrize("name", ["truncated.jpg", "truncated.tif", "truncated.gif"])
def test_other_truncated_formats(tmp_path, name):
    whole = save(draw_nine(), tmp_path / ("whole" + Path(name).suffix)).read_bytes()
    path = tmp_path / name
    path.write_bytes(whole[: len(whole) // 2])
    assert_image_error(path, "truncated or corrupt")


def test_a_long_thin_drawing_is_shrunk_before_it_is_padded_to_a_square(monkeypatch):
    # A 20000 x 40 line (800 kilopixels) used to become a 20000 x 20000 float square: 3 GB.
    line = np.ones((40, 2000))
    line[18:22, 10:1990] = 0
    monkeypatch.setattr(images, "MAX_SQUARE_SIDE", 200)
    tracemalloc.start()
    try:
        digit = mnistify(line)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # the 1980 x 1980 square alone took 31 MB
    assert digit.shape == (28, 28) and digit.max() == 1
    assert ink_box(digit)[1] == 20  # still a horizontal stroke, 20 pixels wide


def test_shrink_to_fit_leaves_images_that_fit_alone():
    image = np.random.default_rng(0).random((30, 50))
    assert images.shrink_to_fit(image, 50) is image
    assert images.shrink_to_fit(image, 25).shape == (15, 25)
