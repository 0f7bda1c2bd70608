"""`scratchcnn data`: the report on success, one red line and exit 1 on failure."""

from __future__ import annotations

import json

import numpy as np
import pytest
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


def test_data_fails_with_one_line_when_nothing_is_found(
    tmp_path, isolated_mnist_search, monkeypatch
):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(tfds, "data_source", offline)
    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    bad_dir = tmp_path / "not-here"
    result = run("data", "--data-dir", str(bad_dir))
    assert_one_line_error(
        result, "no MNIST found", str(bad_dir), "name resolution", "SCRATCHCNN_DATA_DIR"
    )


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
