"""Kaggle Digit Recognizer files: test.csv in, submission out, and every way they go wrong."""

from __future__ import annotations

import os
import stat
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from scratchcnn import files
from scratchcnn.data import kaggle
from scratchcnn.data.kaggle import (
    PIXEL_COLUMNS,
    KaggleFormatError,
    read_kaggle_test_csv,
    submission_text,
    write_submission,
)
from scratchcnn.errors import DataError, ScratchCNNError, WriteError

pytestmark = pytest.mark.lesson12

HEADER = ",".join(PIXEL_COLUMNS)


def random_images(count: int, seed: int = 0) -> np.ndarray:
    """``count`` uint8 (28, 28) images that include the extremes 0 and 255."""
    images = np.random.default_rng(seed).integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    images[0, 0, :2] = (0, 255)
    return images


def csv_rows(images: np.ndarray, labels: np.ndarray | None = None) -> list[str]:
    """One CSV line per image, as Kaggle writes them (label first for train.csv)."""
    rows = []
    for index, image in enumerate(images):
        values = [str(v) for v in image.reshape(-1)]
        if labels is not None:
            values.insert(0, str(labels[index]))
        rows.append(",".join(values))
    return rows


def write_csv(path, header: str, rows: list[str], ending: str = "\n"):
    path.write_text(ending.join([header, *rows]) + ending)
    return path


def assert_format_error(path, *phrases: str) -> str:
    """Reading ``path`` raises KaggleFormatError: one sentence naming the file and phrases."""
    with pytest.raises(KaggleFormatError) as caught:
        read_kaggle_test_csv(path)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    for phrase in phrases:
        assert phrase in message, message
    assert isinstance(caught.value, ScratchCNNError) and isinstance(caught.value, ValueError)
    return message


# --------------------------------------------------------------------------- reading


def test_round_trip_of_a_small_test_csv(tmp_path):
    images = random_images(5)
    path = write_csv(tmp_path / "test.csv", HEADER, csv_rows(images))
    read = read_kaggle_test_csv(path)
    assert read.dtype == np.uint8 and read.shape == (5, 28, 28)
    np.testing.assert_array_equal(read, images)


def test_windows_line_endings_byte_order_mark_and_trailing_blank_lines(tmp_path):
    images = random_images(3, seed=1)
    path = tmp_path / "test.csv"
    path.write_bytes(("\ufeff" + "\r\n".join([HEADER, *csv_rows(images)]) + "\r\n\r\n").encode())
    np.testing.assert_array_equal(read_kaggle_test_csv(path), images)


def test_train_csv_images_are_read_and_labels_ignored(tmp_path):
    images = random_images(4, seed=2)
    labels = np.array([3, 1, 4, 1])
    path = write_csv(tmp_path / "train.csv", "label," + HEADER, csv_rows(images, labels))
    np.testing.assert_array_equal(read_kaggle_test_csv(path), images)


def test_single_row(tmp_path):
    images = random_images(1, seed=3)
    path = write_csv(tmp_path / "one.csv", HEADER, csv_rows(images))
    assert read_kaggle_test_csv(path).shape == (1, 28, 28)


def test_wrong_column_count_names_the_line(tmp_path):
    rows = csv_rows(random_images(4))
    rows[1] = rows[1].rsplit(",", 1)[0]  # drop the last value of the second row
    path = write_csv(tmp_path / "short.csv", HEADER, rows)
    assert_format_error(path, "line 3 has 783 values, expected 784")

    rows = csv_rows(random_images(2))
    rows[0] += ",0"
    path = write_csv(tmp_path / "long.csv", HEADER, rows)
    assert_format_error(path, "line 2 has 785 values, expected 784")


def test_blank_line_in_the_middle(tmp_path):
    rows = csv_rows(random_images(3))
    path = write_csv(tmp_path / "gap.csv", HEADER, [rows[0], "", rows[1]])
    assert_format_error(path, "line 3 is empty")


@pytest.mark.parametrize(
    ("header", "phrases"),
    [
        (",".join(PIXEL_COLUMNS[:-1]), ["line 1 (the header) has 783 columns", "784"]),
        ("ImageId," + HEADER, ["column 1 'ImageId', expected 'label'"]),
        (HEADER.replace("pixel17,", "pxl17,"), ["column 18 'pxl17', expected 'pixel17'"]),
        (",".join(["0"] * 784), ["line 1 holds numbers, not the header"]),
    ],
    ids=["missing-column", "extra-column", "misnamed-column", "no-header"],
)
def test_bad_headers(tmp_path, header, phrases):
    path = write_csv(tmp_path / "bad_header.csv", header, csv_rows(random_images(1)))
    assert_format_error(path, *phrases)


@pytest.mark.parametrize(
    ("value", "phrase"),
    [
        ("256", "line 3, column 11 (pixel10) holds 256, outside 0..255"),
        ("-1", "line 3, column 11 (pixel10) holds -1, outside 0..255"),
        ("12.5", "line 3, column 11 holds '12.5', not an integer"),
        ("", "line 3, column 11 holds '', not an integer"),
        ("x", "line 3, column 11 holds 'x', not an integer"),
        ("99999999999999999999", "line 3, column 11 holds 99999999999999999999, outside"),
    ],
)
def test_bad_values_name_line_and_column(tmp_path, value, phrase):
    rows = csv_rows(random_images(3))
    fields = rows[1].split(",")
    fields[10] = value
    rows[1] = ",".join(fields)
    path = write_csv(tmp_path / "bad_value.csv", HEADER, rows)
    assert_format_error(path, phrase)


def test_pixel_column_numbers_count_the_label_column_in_train_csv(tmp_path):
    rows = csv_rows(random_images(2), labels=np.array([1, 2]))
    fields = rows[0].split(",")
    fields[1] = "300"  # the first pixel, second column
    rows[0] = ",".join(fields)
    path = write_csv(tmp_path / "train.csv", "label," + HEADER, rows)
    assert_format_error(path, "line 2, column 2 (pixel0) holds 300")


def test_empty_file_header_only_missing_file_and_folder(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert_format_error(empty, "is empty")
    blank = tmp_path / "blank.csv"
    blank.write_text("\n\n")
    assert_format_error(blank, "is empty")
    header_only = write_csv(tmp_path / "header.csv", HEADER, [])
    assert_format_error(header_only, "no image rows")
    assert_format_error(tmp_path / "missing.csv", "does not exist")
    assert_format_error(tmp_path, "is a folder")


def test_devices_and_pipes_are_refused_without_reading(tmp_path):
    # /dev/zero never ends: reading it all ended in MemoryError; a pipe would block.
    assert_format_error(Path("/dev/zero"), "is a device, not a CSV file")
    fifo = tmp_path / "test.csv"
    os.mkfifo(fifo)
    assert_format_error(fifo, "is a named pipe (FIFO)")


def test_size_and_line_caps(tmp_path, monkeypatch):
    path = write_csv(tmp_path / "test.csv", HEADER, csv_rows(random_images(3)))
    monkeypatch.setattr(kaggle, "MAX_CSV_BYTES", path.stat().st_size - 1)
    assert_format_error(path, f"larger than {path.stat().st_size - 1:,} bytes")
    monkeypatch.setattr(kaggle, "MAX_CSV_BYTES", path.stat().st_size)
    assert read_kaggle_test_csv(path).shape == (3, 28, 28)
    monkeypatch.setattr(kaggle, "MAX_CSV_LINES", 3)
    assert_format_error(path, "more than 3 lines")


def test_a_huge_file_is_refused_after_reading_only_the_cap(tmp_path, monkeypatch):
    path = tmp_path / "test.csv"
    path.write_bytes(b"0," * 2_000_000)  # 4 MB
    monkeypatch.setattr(kaggle, "MAX_CSV_BYTES", 100_000)
    tracemalloc.start()
    try:
        assert_format_error(path, "larger than 100,000 bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000


def test_binary_file(tmp_path):
    path = tmp_path / "test.csv"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert_format_error(path, "not a text file")


# --------------------------------------------------------------------------- writing


def test_submission_content(tmp_path):
    path = write_submission(tmp_path / "submission.csv", np.array([7, 2, 1, 0], dtype=np.uint8))
    assert path.read_text() == "ImageId,Label\n1,7\n2,2\n3,1\n4,0\n"
    assert submission_text(np.arange(10)).splitlines()[-1] == "10,9"


def test_submission_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "submission.csv"
    path.write_text("old\n")
    write_submission(path, [5])
    assert path.read_text() == "ImageId,Label\n1,5\n"


@pytest.mark.parametrize("failing", ["fsync", "replace"])
def test_failed_write_leaves_the_old_file_untouched(tmp_path, monkeypatch, failing):
    path = tmp_path / "submission.csv"
    path.write_text("ImageId,Label\n1,3\n")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    # write_atomically calls os.fsync after writing the temporary file and os.replace
    # to move it into place: a failure at either step must change nothing.
    monkeypatch.setattr(files.os, failing, fail)
    with pytest.raises(WriteError, match="No space left on device"):
        write_submission(path, np.array([1, 2, 3]))
    monkeypatch.undo()
    assert path.read_text() == "ImageId,Label\n1,3\n"
    assert sorted(os.listdir(tmp_path)) == ["submission.csv"]  # no temporary file left


def test_missing_folder_is_refused(tmp_path):
    path = tmp_path / "no" / "such" / "submission.csv"
    with pytest.raises(DataError, match="folder .* does not exist"):
        write_submission(path, np.array([1]))
    assert not (tmp_path / "no").exists()
    with pytest.raises(WriteError, match="it is a folder, not a file"):
        write_submission(tmp_path, np.array([1]))


def test_a_device_or_pipe_is_not_replaced_by_the_submission(tmp_path):
    # Renaming a new file over /dev/null (as root) would have replaced the device.
    fifo = tmp_path / "submission.csv"
    os.mkfifo(fifo)
    with pytest.raises(WriteError, match=r"it is a named pipe \(FIFO\), not a file"):
        write_submission(fifo, np.array([1]))
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize(
    ("labels", "phrase"),
    [
        (np.array([], dtype=np.int64), "shape (0,)"),
        (np.zeros((2, 3), dtype=np.int64), "shape (2, 3)"),
        (np.array([0.0, 1.0]), "dtype float64"),
        (np.array([1, 10, 2]), "ImageId 2 is 10, not a digit"),
        (np.array([-1]), "ImageId 1 is -1, not a digit"),
    ],
)
def test_bad_labels_are_refused(tmp_path, labels, phrase):
    path = tmp_path / "submission.csv"
    with pytest.raises(KaggleFormatError) as caught:
        write_submission(path, labels)
    assert phrase in str(caught.value)
    assert not path.exists()
