"""Find MNIST on disk (or download it), verify it, and load it as uint8 arrays.

Where we look:

1. the folder passed as ``data_dir`` (the ``--data-dir`` flag of the commands), else
   the folder in the environment variable ``$SCRATCHCNN_DATA_DIR``. A folder you name
   is the only place searched: when it does not hold MNIST, that is an error, never a
   silent switch to some other copy;
2. otherwise the per-user cache, ``platformdirs.user_cache_dir("scratchcnn")/mnist``, or
   ``$SCRATCHCNN_CACHE_DIR/mnist`` when that variable is set;
3. when the cache is empty, a download into it, by one of two routes (without a
   network, both fail within seconds and leave no folder behind):

   a. the four original files from TFDS's own MNIST mirror, fetched with the
      tensorflow-datasets download manager. This needs no TensorFlow, and gives the
      published files: they are checked against the published digests, and their
      examples come in the original order, so results match any other copy bit for bit;
   b. only if (a) fails: ``tfds.data_source("mnist")``. Preparing the dataset that way
      needs TensorFlow (the TFDS builder reads its downloads with ``tf.io.gfile``), so
      this route only helps where TensorFlow is installed.

A folder that holds some but not all of the MNIST files is an error too: silently using
a different copy would hide the broken one.

A folder can hold MNIST in one of two layouts:

* ``original``: the four gzip files as published, checked against their published
  SHA-256 digests (written below); route (a) writes this layout;
* ``tfds``: the four files uncompressed (same names without ``.gz``) plus a
  ``SHA256SUMS`` manifest, as route (b) writes them. They are checked against the
  manifest. TFDS stores examples in its own order, so such a copy holds the same 70,000
  examples as the original files, but in a different order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import socket
import stat
import tempfile
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import platformdirs

from scratchcnn.data.idx import read_idx, write_idx
from scratchcnn.errors import ChecksumError, DataError
from scratchcnn.files import check_regular_file, os_reason, write_atomically

SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)  # (H, W) of one digit: the project's one place for it
INPUT_SHAPE = (*IMAGE_SHAPE, 1)  # (H, W, C) of one digit as the networks read it (NHWC)
NUM_CLASSES = 10

# The four files of the MNIST database, by (split, kind). "t10k" is the test set.
ORIGINAL_FILES: dict[tuple[str, str], str] = {
    ("train", "images"): "train-images-idx3-ubyte.gz",
    ("train", "labels"): "train-labels-idx1-ubyte.gz",
    ("test", "images"): "t10k-images-idx3-ubyte.gz",
    ("test", "labels"): "t10k-labels-idx1-ubyte.gz",
}

# Their published SHA-256 digests, written the way `sha256sum` prints them (so the text
# can be compared with `sha256sum *.gz` by eye): any other bytes are not the original.
ORIGINAL_SHA256SUMS = """\
8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6  t10k-images-idx3-ubyte.gz
f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6  t10k-labels-idx1-ubyte.gz
440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609  train-images-idx3-ubyte.gz
3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c  train-labels-idx1-ubyte.gz
"""
ORIGINAL_SHA256: dict[str, str] = {
    name: digest for digest, name in (line.split() for line in ORIGINAL_SHA256SUMS.splitlines())
}
_FILE_LIST = ", ".join(ORIGINAL_FILES.values())  # the four names, for error messages

MANIFEST_NAME = "SHA256SUMS"
DATA_DIR_ENV = "SCRATCHCNN_DATA_DIR"
CACHE_DIR_ENV = "SCRATCHCNN_CACHE_DIR"

# How each search rule is described to a person (error messages, `scratchcnn data`).
SOURCE_DESCRIPTIONS: dict[str, str] = {
    "argument": "the data_dir argument (--data-dir)",
    "env": f"${DATA_DIR_ENV}",
    "cache": "the per-user cache",
    "download": "a download through tensorflow-datasets into the per-user cache",
}
# Shorter names for the same rules, used inside longer error sentences.
SOURCE_LABELS: dict[str, str] = {
    "argument": "data_dir argument",
    "env": f"${DATA_DIR_ENV}",
    "cache": "per-user cache",
    "download": "download folder",
}


@dataclass(frozen=True)
class MnistFile:
    """One verified MNIST file: which split and kind it holds, its size and digest."""

    split: str
    kind: str
    path: Path
    size: int
    sha256: str


@dataclass(frozen=True)
class MnistLocation:
    """Where MNIST was found, by which rule, and the four files that were verified there.

    ``source`` is one of ``"argument"``, ``"env"``, ``"cache"`` or ``"download"``;
    ``layout`` is ``"original"`` (the four .gz files) or ``"tfds"`` (raw IDX + manifest).
    """

    directory: Path
    source: str
    layout: str
    files: tuple[MnistFile, ...]

    def path(self, split: str, kind: str) -> Path:
        """The file holding the ``kind`` ("images" or "labels") of ``split``."""
        for file in self.files:
            if (file.split, file.kind) == (split, kind):
                return file.path
        raise KeyError((split, kind))

    @property
    def rule(self) -> str:
        """The search rule that found this copy, in words."""
        return SOURCE_DESCRIPTIONS[self.source]


# --------------------------------------------------------------------------- loading


# --8<-- [start:load_mnist]
def load_mnist(
    split: str, data_dir: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of MNIST: ``images`` uint8 (N, 28, 28) and ``labels`` uint8 (N,).

    ``split`` is "train" (60,000 examples) or "test" (10,000). See the module docstring
    for where the files are looked for and how they are verified.
    """
    check_split(split)
    return read_split(find_mnist(data_dir), split)


def read_split(location: MnistLocation, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate the images and labels of ``split`` from a found location."""
    check_split(split)
    images_path = location.path(split, "images")
    labels_path = location.path(split, "labels")
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    _check_images(images, images_path)
    _check_labels(labels, labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds "
            f"{len(labels)} labels; the two files of a split must match one to one."
        )
    return images, labels


# --8<-- [end:load_mnist]


def check_split(split: str) -> None:
    """Reject any split name other than "train" and "test"."""
    if split not in SPLITS:
        allowed = " or ".join(repr(s) for s in SPLITS)
        raise DataError(f"unknown MNIST split {split!r}: use {allowed}.")


def _check_images(images: np.ndarray, path: Path) -> None:
    """Images must be a stack of 28x28 uint8 pictures."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{path} holds a {images.dtype} array of shape {images.shape}, "
            f"not MNIST images (uint8, shape (N, 28, 28))."
        )


def _check_labels(labels: np.ndarray, path: Path) -> None:
    """Labels must be one uint8 digit 0..9 per image."""
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{path} holds a {labels.dtype} array of shape {labels.shape}, "
            f"not MNIST labels (uint8, shape (N,))."
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path} holds label {int(labels.max())}, but MNIST labels are the digits 0 to 9."
        )


# --------------------------------------------------------------------------- finding


def find_mnist(
    data_dir: str | os.PathLike | None = None, *, download: bool = True
) -> MnistLocation:
    """Find verified MNIST: in the folder you name, else in the cache, else download it.

    A folder you name (``data_dir``, else ``$SCRATCHCNN_DATA_DIR``) is the only place
    searched: when it holds no MNIST, that is the error, not a quiet switch to another
    copy. Otherwise the per-user cache is used, filled by a download when it is empty
    and ``download`` is true. Raises :class:`DataError` (or :class:`ChecksumError`)
    with one sentence when no verified copy is found.
    """
    if data_dir is not None or os.environ.get(DATA_DIR_ENV):
        source = "argument" if data_dir is not None else "env"
        directory = _absolute(data_dir if data_dir is not None else os.environ[DATA_DIR_ENV])
        location = inspect_location(directory, source)
        if location is None:
            raise DataError(
                f"{directory}, named by {SOURCE_DESCRIPTIONS[source]}, "
                f"{_why_empty(directory)}; put the four MNIST files {_FILE_LIST} there."
            )
        return location

    directory = cache_dir()
    if directory.parent.exists() and not directory.parent.is_dir():
        raise DataError(f"the per-user cache {directory.parent} (${CACHE_DIR_ENV}) is a file, "
                        "not a folder.")  # fmt: skip
    location = inspect_location(directory, "cache")
    if location is not None:
        return location
    fix = (
        f"put the four files {_FILE_LIST} in {directory}, "
        f"or in a folder you name with --data-dir or ${DATA_DIR_ENV}"
    )
    if not download:
        raise DataError(f"no MNIST in the per-user cache {directory}; {fix}.")
    try:
        return download_mnist(directory)
    except _DownloadFailed as failure:
        raise DataError(
            f"no MNIST in the per-user cache {directory} and the download failed "
            f"({failure.reason}); {fix}."
        ) from failure.__cause__


def cache_dir() -> Path:
    """The per-user MNIST cache: ``<$SCRATCHCNN_CACHE_DIR or user cache dir>/mnist``."""
    root = os.environ.get(CACHE_DIR_ENV) or platformdirs.user_cache_dir("scratchcnn")
    return _absolute(root) / "mnist"


def inspect_location(directory: Path, source: str) -> MnistLocation | None:
    """Verify the MNIST files in ``directory``; None when it holds none of them."""
    if not directory.is_dir():
        return None
    try:
        os.listdir(directory)  # a folder we may not read: say so, not "no MNIST files"
    except OSError as error:
        raise DataError(f"cannot read the MNIST folder {directory}: {os_reason(error)}.") from error
    original = [directory / name for name in ORIGINAL_FILES.values()]
    if any(path.exists() for path in original):
        _require_all(directory, original, source)
        digests = ORIGINAL_SHA256
        layout = "original"
        reference = "the published MNIST digest"
    else:
        raw = [directory / _raw_name(name) for name in ORIGINAL_FILES.values()]
        if not any(path.exists() for path in raw):
            return None
        manifest = directory / MANIFEST_NAME
        _require_all(directory, [*raw, manifest], source)
        digests = read_manifest(manifest)
        layout = "tfds"
        reference = f"the digest in {manifest}"

    files = []
    for (split, kind), name in ORIGINAL_FILES.items():
        file_name = name if layout == "original" else _raw_name(name)
        if file_name not in digests:
            raise DataError(f"{directory / MANIFEST_NAME} has no digest for {file_name}.")
        path = directory / file_name
        digest = verify_sha256(path, digests[file_name], reference)
        files.append(MnistFile(split, kind, path, path.stat().st_size, digest))
    return MnistLocation(directory, source, layout, tuple(files))


def _require_all(directory: Path, paths: Sequence[Path], source: str) -> None:
    """A folder with some MNIST files must have all of them: name the missing ones."""
    for path in paths:
        if path.exists() and not path.is_file():
            check_regular_file(
                path, f"the MNIST file {path.name}", DataError
            )  # a folder or a device
    missing = [path.name for path in paths if not path.is_file()]
    if not missing:
        return
    files = "file" if len(missing) == 1 else "files"
    # Only the cache is ours to repair: deleting it makes the next run download again.
    hint = "; delete the folder to download MNIST again" if source == "cache" else ""
    raise DataError(
        f"the MNIST folder {directory} ({SOURCE_LABELS[source]}) is incomplete: "
        f"missing {files} {', '.join(missing)}{hint}."
    )


def _why_empty(directory: Path) -> str:
    """Why a named folder holds no MNIST, for the error message."""
    try:
        is_folder = stat.S_ISDIR(directory.stat().st_mode)
    except FileNotFoundError:
        return "does not exist"
    except OSError as error:  # a symbolic link loop
        return f"cannot be read ({os_reason(error)})"
    return "holds no MNIST files" if is_folder else "is a file, not a folder"


def _raw_name(name: str) -> str:
    """The name of the uncompressed copy: 'train-images-idx3-ubyte.gz' -> '...-ubyte'."""
    return name.removesuffix(".gz")


def _absolute(path: str | os.PathLike) -> Path:
    """An absolute, normalised path, so messages say exactly which folder was used."""
    path = Path(path).expanduser()
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop: keep the name as given
        return path.absolute()


# --------------------------------------------------------------------------- verifying

# Digests already computed in this process, by (path, size, modification time, inode):
# hashing the 10 MB training images again on every load would waste time, and any
# change to the file (or its atomic replacement) changes one of these, making a new key.
_DIGEST_CACHE: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes, computed at most once per version."""
    try:
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        if key not in _DIGEST_CACHE:
            with path.open("rb") as file:
                _DIGEST_CACHE[key] = hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}.") from error
    return _DIGEST_CACHE[key]


def verify_sha256(path: Path, expected: str, reference: str = "the expected digest") -> str:
    """Check a file's SHA-256 against ``expected``; return the digest when they agree."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{path} is not the expected file: its SHA-256 is {actual} but "
            f"{reference} is {expected}."
        )
    return actual


# Four lines of about 90 characters: anything much longer is not our manifest.
MAX_MANIFEST_BYTES = 2**16
# A manifest line, as written by `sha256sum`: 64 hex digits, two spaces, a file name.
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def read_manifest(path: Path) -> dict[str, str]:
    """Read a ``SHA256SUMS`` file into {file name: hex digest}."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_MANIFEST_BYTES + 1)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read the manifest {path}: {error}.") from error
    if len(data) > MAX_MANIFEST_BYTES:
        raise DataError(
            f"{path} is larger than {MAX_MANIFEST_BYTES:,} bytes, not a manifest of four digests."
        )
    return parse_manifest(text, path)


def parse_manifest(text: str, path: str | os.PathLike = "<manifest>") -> dict[str, str]:
    """Parse ``sha256sum``-style lines into {file name: hex digest}; blank lines are skipped."""
    digests = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = _MANIFEST_LINE.match(line)
        if match is None:
            raise DataError(
                f"{path} line {number} is not '<sha256 hex digest>  <file name>': {line!r}."
            )
        digest, name = match.groups()
        digests[name] = digest
    return digests


def write_manifest(directory: Path, names: Sequence[str]) -> Path:
    """Write ``directory/SHA256SUMS`` with the digests of the named files, atomically."""
    lines = [f"{sha256_file(directory / name)}  {name}\n" for name in names]
    manifest = directory / MANIFEST_NAME
    write_atomically(manifest, lambda file: file.write("".join(lines).encode("utf-8")))
    return manifest


# --------------------------------------------------------------------------- downloading


# TFDS's own copy of the original files: its MNIST builder downloads from here too.
MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"


class _DownloadFailed(Exception):
    """Internal: a download route could not deliver MNIST; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def download_mnist(directory: Path) -> MnistLocation:
    """Download MNIST into ``directory``: the original files, else through ``tfds``.

    See the module docstring for the two routes and the layout each one writes. Both
    work in a temporary folder inside ``directory``, removed afterwards, and a
    ``directory`` left empty by a failure is removed too: no half-filled cache remains.
    """
    _check_reachable(MNIST_URL)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            f"cannot create the MNIST folder {directory}: {os_reason(error)}."
        ) from error
    try:
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as scratch:
            _download_into(directory, Path(scratch))
    except BaseException:
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty: it never removes a file
        raise
    location = inspect_location(directory, "download")
    if location is None:  # only if something deleted the files we have just written
        raise DataError(f"the MNIST files written to {directory} disappeared after the download.")
    return location


def _check_reachable(url: str, timeout: float = 5.0) -> None:
    """Fail in seconds when the download server cannot be reached (no network).

    TFDS would retry every file for minutes, printing a warning at each attempt.
    """
    host = urllib.parse.urlsplit(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as error:
        raise _DownloadFailed(f"cannot reach {host}: {os_reason(error)}") from error


def _download_into(directory: Path, scratch: Path) -> None:
    """Try the two routes in turn, downloading into ``scratch``, writing into ``directory``."""
    try:
        _download_original(directory, scratch)
    except _DownloadFailed as failure:
        try:
            save_prepared(directory, _download_with_tfds(scratch / "tfds"))
        except _DownloadFailed as fallback:
            reason = f"{failure.reason}; TFDS fallback: {fallback.reason}"
            raise _DownloadFailed(reason) from fallback.__cause__


def _download_original(directory: Path, scratch: Path) -> None:
    """Fetch the four original .gz files into ``scratch``, verify them, move them over."""
    paths = _fetch_original(scratch)
    for name, path in paths.items():
        verify_sha256(path, ORIGINAL_SHA256[name], f"the published digest of {name}")
    for name in ORIGINAL_FILES.values():
        os.replace(paths[name], directory / name)  # atomic: same file system


def _fetch_original(download_dir: Path) -> dict[str, Path]:
    """Download the four original files with TFDS's download manager: {name: path}.

    Unlike ``tfds.data_source``, this needs no TensorFlow. Any failure becomes
    ``_DownloadFailed``.
    """
    try:
        import tensorflow_datasets as tfds  # imported here: slow, and rarely needed

        try:
            from tensorflow_datasets.image_classification.mnist import _MNIST_URL as url
        except ImportError:  # a private name: it may move in a later release
            url = MNIST_URL
        # TFDS knows these URLs' checksums and checks them itself; with
        # force_checksums_validation=False it would also accept a URL it does not know.
        manager = tfds.download.DownloadManager(
            download_dir=download_dir, force_checksums_validation=False
        )
        paths = manager.download({name: url + name for name in ORIGINAL_FILES.values()})
    except Exception as error:  # any failure at all means "no download"
        raise _DownloadFailed(_reason(error)) from error
    return {name: Path(path) for name, path in paths.items()}


def _download_with_tfds(tfds_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fetch both splits with ``tfds.data_source`` (TensorFlow needed to prepare them).

    Any failure (no network, no package, no TensorFlow) becomes ``_DownloadFailed``.
    """
    try:
        import tensorflow_datasets as tfds

        sources = tfds.data_source(
            "mnist",
            split={"train": "train", "test": "test"},
            data_dir=str(tfds_dir),
            download=True,
            # data_source reads by index, which needs the array_record format; TFDS
            # only picks it by itself when no data_dir is given.
            builder_kwargs={"file_format": "array_record"},
        )
        return {split: _examples_to_arrays(sources[split]) for split in SPLITS}
    except Exception as error:  # any failure at all means "no download"
        raise _DownloadFailed(_reason(error)) from error


def _reason(error: Exception) -> str:
    """An exception as 'TypeName: first line of its message', to fit in one sentence."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


def _examples_to_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    """Copy a TFDS data source of {"image": (28, 28, 1), "label": int} into two arrays."""
    count = len(source)
    images = np.empty((count, *IMAGE_SHAPE), dtype=np.uint8)
    labels = np.empty(count, dtype=np.uint8)
    for index in range(count):
        example = source[index]
        images[index] = np.asarray(example["image"]).reshape(IMAGE_SHAPE)
        labels[index] = example["label"]
    return images, labels


def save_prepared(directory: Path, splits: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Write splits as raw IDX files with the canonical names, then the manifest.

    The manifest goes last, so a folder whose writing was interrupted has no manifest
    and is reported as incomplete instead of being trusted.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"cannot create the MNIST folder {directory}: {error.strerror}.") from error
    (directory / MANIFEST_NAME).unlink(missing_ok=True)
    names = []
    for (split, kind), name in ORIGINAL_FILES.items():
        images, labels = splits[split]
        array = images if kind == "images" else labels
        raw_name = _raw_name(name)
        write_idx(directory / raw_name, array, compress=False)
        names.append(raw_name)
    write_manifest(directory, names)


# --------------------------------------------------------------------------- summary


def summarize_mnist(location: MnistLocation) -> dict:
    """A JSON-ready description of a found copy: files, sizes, digests, class counts."""
    splits = {}
    for split in SPLITS:
        images, labels = read_split(location, split)
        splits[split] = {
            "images": int(len(images)),
            "labels": int(len(labels)),
            "class_counts": np.bincount(labels, minlength=NUM_CLASSES).tolist(),
        }
    return {
        "directory": str(location.directory),
        "source": location.source,
        "rule": location.rule,
        "layout": location.layout,
        "files": [
            {
                "name": file.path.name,
                "split": file.split,
                "kind": file.kind,
                "bytes": file.size,
                "sha256": file.sha256,
                "sha256_ok": True,
            }
            for file in location.files
        ],
        "splits": splits,
    }
