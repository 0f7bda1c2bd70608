"""Kaggle's "Digit Recognizer" competition: read its test.csv, write a submission.

The competition ships MNIST-style digits as CSV text, one image per line::

    pixel0,pixel1,...,pixel783          header: 784 column names
    0,0,0,...,0                         each row: 784 gray levels 0..255, row by row

(the training file, train.csv, has one more column first: ``label``). A submission is
a CSV with one predicted digit per test image, numbered from 1::

    ImageId,Label
    1,2
    2,0

Every problem with a file raises :class:`KaggleFormatError`, one sentence that names the
file, the line and what is wrong, so a person can open the file and find it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from scratchcnn.data.mnist import IMAGE_SHAPE, NUM_CLASSES
from scratchcnn.errors import DataError, ScratchCNNError
from scratchcnn.files import check_regular_file, os_reason, write_atomically

NUM_PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]  # 784
PIXEL_COLUMNS = tuple(f"pixel{index}" for index in range(NUM_PIXELS))
LABEL_COLUMN = "label"
SUBMISSION_HEADER = "ImageId,Label"

# The most we read of one CSV: Kaggle's files are far smaller (train.csv, the larger,
# is about 75 MB and 42,001 lines). Reading is capped before the text is split into
# lines, so a huge file, /dev/zero or millions of short lines cannot exhaust memory.
MAX_CSV_BYTES = 128 * 2**20
MAX_CSV_LINES = 100_000

# An integer as a CSV field may write it: optional spaces and sign, ASCII digits only.
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")


class KaggleFormatError(ScratchCNNError, ValueError):
    """A Kaggle Digit Recognizer CSV (or the labels for a submission) is malformed."""


# --------------------------------------------------------------------------- reading


# --8<-- [start:read_kaggle_test_csv]
def read_kaggle_test_csv(path: str | os.PathLike) -> np.ndarray:
    """Read Kaggle's test.csv into uint8 images of shape (N, 28, 28).

    The header must be exactly ``pixel0,...,pixel783`` and every row 784 integers 0..255.
    A train.csv (header ``label,pixel0,...,pixel783``) is accepted too: its images are
    returned and its label column is ignored, so the same command can predict either
    file. Reading the 28,000 rows of test.csv takes well under a second.
    """
    path = Path(path)
    lines = _read_lines(path)
    has_label = _check_header(lines[0], path)
    rows = lines[1:]
    if not rows:
        raise KaggleFormatError(f"{path} has a header but no image rows.")
    columns = NUM_PIXELS + has_label
    _check_column_counts(rows, columns, path)
    values = _parse_integers(rows, path)
    pixels = values[:, 1:] if has_label else values
    _check_pixel_range(pixels, path, first_column=1 + has_label)
    return pixels.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)


# --8<-- [end:read_kaggle_test_csv]


def _read_lines(path: Path) -> list[str]:
    """The file's lines, without line endings and without trailing blank lines."""
    check_regular_file(path, "a CSV file", KaggleFormatError)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CSV_BYTES + 1)
    except OSError as error:
        raise KaggleFormatError(f"cannot read {path}: {os_reason(error)}.") from error
    if len(data) > MAX_CSV_BYTES:
        raise KaggleFormatError(
            f"{path} is larger than {MAX_CSV_BYTES:,} bytes, far more than a Kaggle "
            f"Digit Recognizer CSV holds."
        )
    if data.count(b"\n") > MAX_CSV_LINES:
        raise KaggleFormatError(
            f"{path} has more than {MAX_CSV_LINES:,} lines, far more than a Kaggle "
            f"Digit Recognizer CSV holds."
        )
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put first.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise KaggleFormatError(
            f"{path} is not a text file: byte {error.start} is not valid UTF-8."
        ) from error
    # Split at "\n" only, the line ends counted above, and drop Windows' "\r".
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise KaggleFormatError(
            f"{path} is empty; a Kaggle Digit Recognizer CSV starts with the header "
            f"pixel0,...,pixel{NUM_PIXELS - 1}."
        )
    return lines


def _check_header(line: str, path: Path) -> bool:
    """Check line 1; True when it is train.csv's header (a label column first)."""
    names = [name.strip() for name in line.split(",")]
    if names and _INTEGER.fullmatch(names[0]):
        raise KaggleFormatError(
            f"{path} line 1 holds numbers, not the header pixel0,...,pixel{NUM_PIXELS - 1} "
            f"that Kaggle's test.csv starts with."
        )
    # 784 names: test.csv; 785: train.csv, whose first column must then be the label.
    has_label = len(names) == NUM_PIXELS + 1
    expected = ((LABEL_COLUMN,) if has_label else ()) + PIXEL_COLUMNS
    if len(names) != len(expected):
        raise KaggleFormatError(
            f"{path} line 1 (the header) has {len(names)} columns, expected {NUM_PIXELS} "
            f"(pixel0..pixel{NUM_PIXELS - 1}, as in test.csv) or {NUM_PIXELS + 1} "
            f"(label, pixel0..pixel{NUM_PIXELS - 1}, as in train.csv)."
        )
    for number, (name, wanted) in enumerate(zip(names, expected), start=1):
        if name != wanted:
            raise KaggleFormatError(
                f"{path} line 1 (the header) names column {number} {name!r}, expected {wanted!r}."
            )
    return has_label


def _check_column_counts(rows: list[str], columns: int, path: Path) -> None:
    """Every row must hold exactly ``columns`` comma-separated values."""
    counts = np.array([row.count(",") + 1 for row in rows])
    wrong = np.flatnonzero(counts != columns)
    if wrong.size == 0:
        return
    index = int(wrong[0])
    line = index + 2  # line 1 is the header
    if not rows[index].strip():
        raise KaggleFormatError(f"{path} line {line} is empty, expected {columns} values.")
    raise KaggleFormatError(f"{path} line {line} has {counts[index]} values, expected {columns}.")


def _parse_integers(rows: list[str], path: Path) -> np.ndarray:
    """Parse the rows (all of equal length) into an int64 array (N, columns).

    NumPy's C parser does the work (about 0.5 s for test.csv); when it refuses a value,
    we look for the first bad field ourselves, to name its line and column.
    """
    try:
        return np.loadtxt(rows, delimiter=",", dtype=np.int64, comments=None, ndmin=2)
    except ValueError as error:
        _raise_first_bad_value(rows, path)
        raise KaggleFormatError(f"{path} is not a valid CSV of integers ({error}).") from error


def _raise_first_bad_value(rows: list[str], path: Path) -> None:
    """Find the first field that is not a 64-bit integer and raise an error naming it."""
    for line, row in enumerate(rows, start=2):
        for column, field in enumerate(row.split(","), start=1):
            if not _INTEGER.fullmatch(field):
                raise KaggleFormatError(
                    f"{path} line {line}, column {column} holds {field!r}, not an integer."
                )
            if abs(int(field)) >= 2**63:
                raise KaggleFormatError(
                    f"{path} line {line}, column {column} holds {field.strip()}, outside 0..255."
                )


def _check_pixel_range(pixels: np.ndarray, path: Path, first_column: int) -> None:
    """Every pixel must be a gray level 0..255; name the first one that is not."""
    outside = (pixels < 0) | (pixels > 255)
    if not outside.any():
        return
    row, column = np.argwhere(outside)[0]
    raise KaggleFormatError(
        f"{path} line {row + 2}, column {column + first_column} "
        f"({PIXEL_COLUMNS[column]}) holds {pixels[row, column]}, outside 0..255."
    )


# --------------------------------------------------------------------------- writing


# --8<-- [start:write_submission]
def write_submission(path: str | os.PathLike, labels: np.ndarray) -> Path:
    """Write a Kaggle submission: ``ImageId,Label``, one line per label, ImageId from 1.

    ``labels`` (N,) are the predicted digits 0..9 of the test images, in file order. The
    file appears complete or not at all (see :func:`~scratchcnn.files.write_atomically`):
    a failed write leaves an existing file untouched. Raises :class:`KaggleFormatError`
    for labels that are not digits and :class:`~scratchcnn.errors.DataError` when the
    file cannot be written (its folder does not exist) and ``WriteError`` when the path is a
    folder or a device.
    """
    path = Path(path)
    labels = _check_labels(labels)
    if not path.parent.is_dir():
        raise DataError(
            f"cannot write the submission {path}: the folder {path.parent} does not exist."
        )
    text = submission_text(labels)
    write_atomically(path, lambda file: file.write(text.encode("ascii")))
    return path


# --8<-- [end:write_submission]


# --8<-- [start:submission_text]
def submission_text(labels: np.ndarray) -> str:
    """The submission CSV for ``labels`` (N,), as one string ending in a newline."""
    lines = [SUBMISSION_HEADER]
    lines += [f"{image_id},{label}" for image_id, label in enumerate(labels.tolist(), start=1)]
    return "\n".join(lines) + "\n"


# --8<-- [end:submission_text]


def _check_labels(labels: np.ndarray) -> np.ndarray:
    """Labels must be a non-empty 1-D array of integers 0..9."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise KaggleFormatError(
            f"a submission needs a 1-D array with one label per test image, "
            f"got an array of shape {labels.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise KaggleFormatError(
            f"submission labels must be integer digits, got dtype {labels.dtype} "
            f"(take the argmax of the network's scores first)."
        )
    outside = (labels < 0) | (labels >= NUM_CLASSES)
    if outside.any():
        index = int(np.flatnonzero(outside)[0])
        raise KaggleFormatError(
            f"the submission label for ImageId {index + 1} is {labels[index]}, not a digit 0..9."
        )
    return labels
