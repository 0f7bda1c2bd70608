"""Finding, verifying and loading MNIST: the real files, the search order, bad folders,
and the two download routes through tensorflow-datasets (mocked: these machines are
offline)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import platformdirs
import pytest

from scratchcnn.data import mnist
from scratchcnn.data.idx import write_idx
from scratchcnn.data.mnist import (
    MANIFEST_NAME,
    ORIGINAL_FILES,
    ORIGINAL_SHA256,
    cache_dir,
    find_mnist,
    load_mnist,
    read_manifest,
    save_prepared,
    write_manifest,
)
from scratchcnn.errors import ChecksumError, DataError

pytestmark = pytest.mark.lesson01

TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_CLASS_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
ORIGINAL_NAMES = tuple(ORIGINAL_FILES.values())
RAW_NAMES = [name.removesuffix(".gz") for name in ORIGINAL_NAMES]


def fake_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` random 28x28 uint8 images and digit labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=count, dtype=np.uint8)
    return images, labels


def make_prepared(directory: Path, train: int = 3, test: int = 2, seed: int = 0) -> Path:
    """A small MNIST folder in the ``tfds`` layout: four raw IDX files + SHA256SUMS."""
    save_prepared(directory, {"train": fake_split(train, seed), "test": fake_split(test, seed + 1)})
    return directory


def make_fake_originals(directory: Path, names=ORIGINAL_NAMES) -> Path:
    """Files with the canonical .gz names but not the canonical bytes."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        write_idx(directory / name, np.zeros(3, np.uint8))
    return directory


def error_message(error_type, function, *args, **kwargs) -> str:
    """Call ``function``, expect ``error_type``, and return its one-line message."""
    with pytest.raises(error_type) as caught:
        function(*args, **kwargs)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the real files


def test_real_training_split(mnist_train):
    images, labels = mnist_train
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TRAIN_CLASS_COUNTS
    assert images.mean(dtype=np.float64) == pytest.approx(33.318, abs=5e-4)


def test_real_test_split(mnist_test):
    images, labels = mnist_test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == TEST_CLASS_COUNTS


def test_real_folder_is_found_through_the_environment(mnist_dir, monkeypatch):
    monkeypatch.setenv(mnist.DATA_DIR_ENV, str(mnist_dir))
    location = find_mnist()
    assert (location.directory, location.source, location.layout) == (mnist_dir, "env", "original")
    assert {f.path.name: f.sha256 for f in location.files} == ORIGINAL_SHA256
    assert location.path("test", "labels") == mnist_dir / "t10k-labels-idx1-ubyte.gz"


# --------------------------------------------------------------------------- search order


def test_argument_comes_before_environment_and_cache(tmp_path, isolated_mnist_search, monkeypatch):
    make_prepared(isolated_mnist_search)
    monkeypatch.setenv(mnist.DATA_DIR_ENV, str(make_prepared(tmp_path / "env")))
    location = find_mnist(make_prepared(tmp_path / "arg"))
    assert (location.source, location.directory) == ("argument", (tmp_path / "arg").resolve())


def test_environment_comes_before_cache(tmp_path, isolated_mnist_search, monkeypatch):
    make_prepared(isolated_mnist_search)
    monkeypatch.setenv(mnist.DATA_DIR_ENV, str(make_prepared(tmp_path / "env")))
    assert find_mnist().source == "env"


def test_a_named_folder_without_mnist_is_an_error_not_a_fallback(
    tmp_path, isolated_mnist_search, monkeypatch
):
    make_prepared(isolated_mnist_search, train=4)  # a good cache that must not be used
    (tmp_path / "empty").mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(mnist.DATA_DIR_ENV, str(make_prepared(tmp_path / "env")))
    for folder, why in [
        (tmp_path / "empty", "holds no MNIST files"),
        (tmp_path / "does-not-exist", "does not exist"),
        (tmp_path / "a-file", "is a file, not a folder"),
    ]:
        message = error_message(DataError, load_mnist, "train", folder)
        assert message.startswith(f"{folder}, named by the data_dir argument (--data-dir), {why}")
        assert "put the four MNIST files train-images-idx3-ubyte.gz" in message
    monkeypatch.setenv(mnist.DATA_DIR_ENV, str(tmp_path / "does-not-exist"))
    message = error_message(DataError, find_mnist)
    assert message.startswith(f"{tmp_path / 'does-not-exist'}, named by $SCRATCHCNN_DATA_DIR")
    monkeypatch.delenv(mnist.DATA_DIR_ENV)
    assert find_mnist().source == "cache"


def test_cache_dir_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(mnist.CACHE_DIR_ENV, raising=False)
    assert cache_dir() == Path(platformdirs.user_cache_dir("scratchcnn")).resolve() / "mnist"
    monkeypatch.setenv(mnist.CACHE_DIR_ENV, str(tmp_path))
    assert cache_dir() == tmp_path.resolve() / "mnist"


def test_prepared_copy_loads_what_was_saved(tmp_path):
    train, test = fake_split(5, 0), fake_split(3, 1)
    save_prepared(tmp_path, {"train": train, "test": test})
    for split, (images, labels) in [("train", train), ("test", test)]:
        loaded_images, loaded_labels = load_mnist(split, tmp_path)
        np.testing.assert_array_equal(loaded_images, images)
        np.testing.assert_array_equal(loaded_labels, labels)


def test_digests_are_computed_once_per_file_version(tmp_path, monkeypatch):
    folder = make_prepared(tmp_path / "m")
    # A fresh, empty digest cache for this test only (the real files' digests stay put).
    monkeypatch.setattr(mnist, "_DIGEST_CACHE", {})
    hashed = []
    real_file_digest = hashlib.file_digest
    monkeypatch.setattr(
        mnist.hashlib, "file_digest", lambda f, d: hashed.append(f.name) or real_file_digest(f, d)
    )
    load_mnist("train", folder)
    assert len(hashed) == 4  # all four files are verified before anything is read
    load_mnist("train", folder)
    load_mnist("test", folder)
    assert len(hashed) == 4  # nothing re-hashed on later loads
    # Changing a file changes its size and mtime, so it is hashed again and rejected.
    write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    with pytest.raises(ChecksumError):
        load_mnist("test", folder)
    assert len(hashed) == 5


# --------------------------------------------------------------------------- bad folders


def test_unknown_split_names_the_allowed_ones(tmp_path):
    message = error_message(ValueError, load_mnist, "valid", tmp_path)
    assert "'valid'" in message and "'train' or 'test'" in message
    with pytest.raises(DataError):
        load_mnist("TRAIN", tmp_path)


def test_partial_original_folder_names_the_missing_files(tmp_path):
    folder = make_fake_originals(tmp_path, ["train-images-idx3-ubyte.gz"])
    message = error_message(DataError, find_mnist, folder)
    assert str(folder) in message and "incomplete: missing files" in message
    for name in ORIGINAL_NAMES:
        assert (name in message) == (name != "train-images-idx3-ubyte.gz")


def test_partial_prepared_folder_names_the_missing_file(tmp_path):
    folder = make_prepared(tmp_path / "m")
    (folder / "t10k-images-idx3-ubyte").unlink()
    message = error_message(DataError, find_mnist, folder)
    assert "missing file t10k-images-idx3-ubyte" in message and str(folder) in message


def test_a_folder_or_a_pipe_in_place_of_a_data_file_is_named_as_such(tmp_path):
    folder = make_fake_originals(tmp_path / "m")
    labels = folder / "t10k-labels-idx1-ubyte.gz"
    labels.unlink()
    labels.mkdir()
    message = error_message(DataError, find_mnist, folder)
    assert message == f"{labels} is a folder, not the MNIST file {labels.name}."
    labels.rmdir()
    os.mkfifo(labels)  # hashing a pipe would block forever
    message = error_message(DataError, find_mnist, folder)
    assert message == f"{labels} is a named pipe (FIFO), not the MNIST file {labels.name}."


def test_a_symlink_loop_or_an_unreadable_folder(tmp_path, monkeypatch):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    message = error_message(DataError, find_mnist, loop)
    assert message.startswith(f"{loop}, named by the data_dir argument (--data-dir), cannot be")
    assert "symbolic links" in message

    def no_permission(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "listdir", no_permission)
    message = error_message(DataError, find_mnist, tmp_path)
    assert message == f"cannot read the MNIST folder {tmp_path}: Permission denied."


def test_a_huge_manifest_is_refused(tmp_path, monkeypatch):
    folder = make_prepared(tmp_path / "m")
    monkeypatch.setattr(mnist, "MAX_MANIFEST_BYTES", 100)
    message = error_message(DataError, find_mnist, folder)
    assert (
        message
        == f"{folder / MANIFEST_NAME} is larger than 100 bytes, not a manifest of four digests."
    )


def test_prepared_folder_without_manifest_is_incomplete(tmp_path):
    folder = make_prepared(tmp_path / "m")
    (folder / MANIFEST_NAME).unlink()
    assert f"missing file {MANIFEST_NAME}" in error_message(DataError, find_mnist, folder)


def test_checksum_mismatch_with_the_published_digest(tmp_path):
    folder = make_fake_originals(tmp_path)
    message = error_message(ChecksumError, find_mnist, folder)
    bad = folder / "train-images-idx3-ubyte.gz"  # the first file checked
    assert str(bad) in message
    assert ORIGINAL_SHA256[bad.name] in message
    assert hashlib.sha256(bad.read_bytes()).hexdigest() in message


def test_checksum_mismatch_with_the_manifest(tmp_path):
    folder = make_prepared(tmp_path / "m")
    expected = read_manifest(folder / MANIFEST_NAME)["train-labels-idx1-ubyte"]
    write_idx(folder / "train-labels-idx1-ubyte", np.full(3, 7, np.uint8))
    message = error_message(ChecksumError, load_mnist, "train", folder)
    assert str(folder / "train-labels-idx1-ubyte") in message
    assert expected in message and str(folder / MANIFEST_NAME) in message


def test_malformed_manifest(tmp_path):
    folder = make_prepared(tmp_path / "m")
    (folder / MANIFEST_NAME).write_text("not a digest  train-images-idx3-ubyte\n")
    message = error_message(DataError, find_mnist, folder)
    assert str(folder / MANIFEST_NAME) in message and "line 1" in message


def write_split_files(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """A prepared folder whose training files hold exactly these arrays."""
    make_prepared(folder)
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", labels)
    write_manifest(folder, RAW_NAMES)
    return folder


def test_image_and_label_counts_must_match(tmp_path):
    images, labels = fake_split(3, 0)
    folder = write_split_files(tmp_path / "m", images, labels[:2])
    message = error_message(DataError, load_mnist, "train", folder)
    assert str(folder / "train-images-idx3-ubyte") in message and "3 images" in message
    assert str(folder / "train-labels-idx1-ubyte") in message and "2 labels" in message


def test_labels_must_be_digits(tmp_path):
    images, _ = fake_split(3, 0)
    folder = write_split_files(tmp_path / "m", images, np.array([1, 12, 3], np.uint8))
    message = error_message(DataError, load_mnist, "train", folder)
    assert str(folder / "train-labels-idx1-ubyte") in message and "label 12" in message


def test_images_must_be_28_by_28_uint8(tmp_path):
    _, labels = fake_split(3, 0)
    folder = write_split_files(tmp_path / "m", np.zeros((3, 28, 27), np.uint8), labels)
    message = error_message(DataError, load_mnist, "train", folder)
    assert str(folder / "train-images-idx3-ubyte") in message and "(3, 28, 27)" in message


# --------------------------------------------------------------------------- downloading


def offline(*args, **kwargs):
    """A download that fails the way it does without a network."""
    raise ConnectionError("Network is unreachable")


def forbidden(*args, **kwargs):
    raise AssertionError("no download expected here")


@pytest.fixture
def server_reachable(monkeypatch):
    """Pretend the download server answers: the quick check before a download passes."""
    monkeypatch.setattr(mnist, "_check_reachable", lambda url: None)


@pytest.fixture
def tfds(monkeypatch, server_reachable):
    """tensorflow-datasets with both download routes forbidden until a test allows one."""
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds.download.DownloadManager, "download", forbidden)
    monkeypatch.setattr(tfds, "data_source", forbidden)
    return tfds


def serve_files_from(monkeypatch, tfds, folder: Path) -> list[str]:
    """Make DownloadManager.download copy the requested files from ``folder`` into its
    download folder and return their paths, as the real one does. Returns the URLs asked
    for, as they are asked for."""
    requested = []

    def download(self, urls):
        requested.extend(urls.values())
        paths = {}
        for key, url in urls.items():
            name = url.rsplit("/", 1)[-1]
            paths[key] = self.download_dir / f"cvdf-datasets_mnist_{name}"  # a TFDS-like name
            shutil.copyfile(folder / name, paths[key])
        return paths

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    return requested


def test_download_gets_the_original_files(
    mnist_dir, mnist_test, isolated_mnist_search, tfds, monkeypatch
):
    requested = serve_files_from(monkeypatch, tfds, mnist_dir)
    images, labels = load_mnist("test")
    assert requested == [mnist.MNIST_URL + name for name in ORIGINAL_NAMES]
    # The four published files under their own names, and nothing else (no TFDS folder).
    assert sorted(p.name for p in isolated_mnist_search.iterdir()) == sorted(ORIGINAL_NAMES)
    assert find_mnist().layout == "original"
    # In the original order: the very arrays of the shared copy.
    assert np.bincount(labels, minlength=10).tolist() == TEST_CLASS_COUNTS
    np.testing.assert_array_equal(images, mnist_test[0])
    np.testing.assert_array_equal(labels, mnist_test[1])

    load_mnist("test")
    assert find_mnist().source == "cache"
    assert len(requested) == 4  # downloaded once


def test_corrupt_download_is_rejected_and_not_kept(
    tmp_path, isolated_mnist_search, tfds, monkeypatch
):
    serve_files_from(monkeypatch, tfds, make_fake_originals(tmp_path / "server"))
    message = error_message(ChecksumError, load_mnist, "test")
    assert "train-images-idx3-ubyte.gz" in message  # the first file checked
    assert ORIGINAL_SHA256["train-images-idx3-ubyte.gz"] in message
    assert not isolated_mnist_search.exists()


def test_tfds_fallback_writes_raw_idx_and_manifest_then_reads_the_cache(
    isolated_mnist_search, server_reachable, monkeypatch
):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    with tfds.testing.mock_data(num_examples=6):
        location = find_mnist()
    assert (location.source, location.layout) == ("download", "tfds")
    assert location.directory == isolated_mnist_search

    manifest = read_manifest(isolated_mnist_search / MANIFEST_NAME)
    assert sorted(manifest) == sorted(RAW_NAMES)
    assert sorted(p.name for p in isolated_mnist_search.iterdir()) == sorted(
        [*RAW_NAMES, MANIFEST_NAME]
    )  # TFDS's own files were in a temporary folder, now gone
    for name, digest in manifest.items():
        assert hashlib.sha256((isolated_mnist_search / name).read_bytes()).hexdigest() == digest

    monkeypatch.setattr(tfds, "data_source", forbidden)
    assert find_mnist().source == "cache"
    images, labels = load_mnist("train")
    assert images.shape == (6, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (6,) and labels.max() <= 9


def test_failed_download_explains_the_fix_and_leaves_no_folder(
    isolated_mnist_search, tfds, monkeypatch
):
    def no_tensorflow(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    monkeypatch.setattr(tfds, "data_source", no_tensorflow)
    message = error_message(DataError, load_mnist, "test")
    assert message.startswith(f"no MNIST in the per-user cache {isolated_mnist_search}")
    assert (
        "download failed (ConnectionError: Network is unreachable; "
        "TFDS fallback: ModuleNotFoundError: No module named 'tensorflow')" in message
    )
    assert f"put the four files {', '.join(ORIGINAL_NAMES)} in {isolated_mnist_search}" in message
    assert not isolated_mnist_search.exists()


def test_without_a_network_the_download_fails_in_seconds(isolated_mnist_search, monkeypatch):
    # Without a network TFDS retried each file for minutes; we try one connection first.
    def no_network(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        pass
    else:
        monkeypatch.setattr(tfds.download.DownloadManager, "download", forbidden)
        monkeypatch.setattr(tfds, "data_source", forbidden)
    message = error_message(DataError, find_mnist)
    assert "download failed (cannot reach storage.googleapis.com: Name or service not known)" in (
        message
    )
    assert not isolated_mnist_search.exists() and not isolated_mnist_search.parent.exists()


def test_no_download_when_told_not_to(isolated_mnist_search, tfds):
    message = error_message(DataError, find_mnist, download=False)
    assert message.startswith(f"no MNIST in the per-user cache {isolated_mnist_search}; put")
