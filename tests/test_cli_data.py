"""`scratchcnn data`: the report on success, one red line and exit 1 on failure."""

from __future__ import annotations

import json
import socket
import time
import warnings

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from scratchcnn.cli import app
from scratchcnn.data.idx import write_idx
from scratchcnn.data.mnist import DATA_DIR_ENV, ORIGINAL_FILES, save_prepared

pytestmark = pytest.mark.lesson01

runner = CliRunner()


def run(*args: str):
    """Invoke the command line in-process, as `scratchcnn ARGS...` would."""
    return runner.invoke(app, list(args))


def assert_one_line_error(result, *phrases: str) -> None:
    """Exit status 1, a single 'error: ...' line on stderr, no traceback anywhere."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    for phrase in phrases:
        assert phrase in lines[0]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_data_reports_the_real_files(mnist_dir, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))
    result = run("data")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"MNIST found in {mnist_dir}" in out
    assert "$SCRATCHCNN_DATA_DIR" in out
    assert out.count("SHA-256 ok") == 4
    assert "9,912,422 bytes" in out  # train-images-idx3-ubyte.gz
    assert "train: 60,000 images, 60,000 labels" in out
    assert "test: 10,000 images, 10,000 labels" in out
    assert "1:6742" in out and "1:1135" in out


def test_data_json(tmp_path, isolated_mnist_search):
    images = np.zeros((4, 28, 28), np.uint8)
    save_prepared(
        tmp_path / "m",
        {
            "train": (images, np.array([0, 1, 1, 9], np.uint8)),
            "test": (images[:1], np.zeros(1, np.uint8)),
        },
    )
    result = run("data", "--data-dir", str(tmp_path / "m"), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["source"] == "argument" and report["layout"] == "tfds"
    assert report["directory"] == str((tmp_path / "m").resolve())
    assert [f["name"] for f in report["files"]] == [
        n.removesuffix(".gz") for n in ORIGINAL_FILES.values()
    ]
    assert all(f["sha256_ok"] for f in report["files"])
    assert report["splits"]["train"] == {
        "images": 4,
        "labels": 4,
        "class_counts": [1, 2, 0, 0, 0, 0, 0, 0, 0, 1],
    }


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_bad_data_dir_is_refused_not_replaced(tmp_path, mnist_dir, monkeypatch, kind):
    monkeypatch.setenv(DATA_DIR_ENV, str(mnist_dir))  # a good copy it must not fall back to
    bad_dir = tmp_path / "not-here"
    if kind == "file":
        bad_dir.write_text("not a folder")
    why = "does not exist" if kind == "missing" else "is a file, not a folder"
    result = run("data", "--data-dir", str(bad_dir))
    assert_one_line_error(result, f"{bad_dir}, named by the data_dir argument (--data-dir), {why}")


def test_no_data_and_no_network_fails_in_seconds_and_leaves_no_folder(
    isolated_mnist_search, monkeypatch
):
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    start = time.monotonic()
    result = run("data")
    assert time.monotonic() - start < 10
    assert_one_line_error(
        result,
        "cannot reach storage.googleapis.com",
        f"put the four files {', '.join(ORIGINAL_FILES.values())} in {isolated_mnist_search}",
        "--data-dir or $SCRATCHCNN_DATA_DIR",
    )
    assert not isolated_mnist_search.parent.exists()


def test_a_folder_in_place_of_a_data_file(tmp_path, isolated_mnist_search):
    for name in ORIGINAL_FILES.values():
        (tmp_path / name).mkdir()
    result = run("data", "--data-dir", str(tmp_path))
    assert_one_line_error(result, f"{tmp_path / 'train-images-idx3-ubyte.gz'} is a folder")


def test_data_fails_with_one_line_on_a_checksum_mismatch(tmp_path, isolated_mnist_search):
    for name in ORIGINAL_FILES.values():
        write_idx(tmp_path / name, np.zeros(3, np.uint8))
    result = run("data", "--data-dir", str(tmp_path))
    assert_one_line_error(result, str(tmp_path / "train-images-idx3-ubyte.gz"), "SHA-256")


@pytest.mark.parametrize("args", [["--help"], ["data", "--help"]])
def test_help_shows_an_example(args):
    result = run(*args)
    assert result.exit_code == 0
    assert "Example: scratchcnn data --data-dir" in result.stdout


# --------------------------------------------------------------------------- predict inputs


def nine() -> Image.Image:
    """A dark '9'-ish stroke on white paper."""
    image = Image.new("L", (60, 80), 255)
    ImageDraw.Draw(image).ellipse((15, 10, 45, 40), outline=0, width=5)
    ImageDraw.Draw(image).line((44, 25, 25, 70), fill=0, width=5)
    return image


def test_predict_refuses_a_float_tiff_with_a_nan_pixel(tmp_path):
    gray = np.asarray(nine(), dtype=np.float32) / 255
    gray[3, 3] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(gray, "F").save(path)
    result = run("predict", "default", str(path))
    assert_one_line_error(result, f"{path} holds NaN or infinite pixel values")


def test_predict_refuses_a_huge_image_without_decoding_it(tmp_path):
    path = tmp_path / "blank.png"
    Image.new("1", (10_000, 10_000), 1).save(path)  # about 120 KB, 100 megapixels
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        result = run("predict", "default", str(path))
    assert_one_line_error(result, f"{path} is 10000x10000 pixels", "at most 50,000,000 pixels")


def test_predict_refuses_a_device_as_kaggle_csv(tmp_path):
    result = run("predict", "default", "--kaggle", "/dev/zero", "-o", str(tmp_path / "s.csv"))
    assert_one_line_error(result, "/dev/zero is a device, not a CSV file")
    assert not (tmp_path / "s.csv").exists()
