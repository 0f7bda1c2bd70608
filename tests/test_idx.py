"""The IDX reader and writer: exact bytes, round trips, and every way a file can be bad."""

from __future__ import annotations

import gzip
import os
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from scratchcnn import files
from scratchcnn.data import idx
from scratchcnn.data.idx import IdxHeader, parse_idx_header, read_idx, write_idx
from scratchcnn.errors import DataError, WriteError

pytestmark = pytest.mark.lesson01

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(7,), (3, 4), (2, 3, 5), (2, 1, 3, 2)]


def sample_array(dtype, shape, seed=0) -> np.ndarray:
    """Random values of ``dtype`` that include the extremes, where byte order matters."""
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        values = rng.standard_normal(shape) * 1e3
        flat = values.reshape(-1)
        flat[: min(3, flat.size)] = [np.inf, -0.0, np.nan][: min(3, flat.size)]
    else:
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, endpoint=True)
        flat = values.reshape(-1)
        flat[: min(2, flat.size)] = [info.min, info.max][: min(2, flat.size)]
    return values.astype(dtype)


def idx_bytes(code: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    """Hand-assemble an IDX file: zero bytes, dtype code, ndim, dims, payload."""
    return bytes([0, 0, code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + payload


def assert_data_error(path: Path, *phrases: str) -> str:
    """read_idx(path) raises DataError naming the file and every phrase; returns the text."""
    with pytest.raises(DataError) as caught:
        read_idx(path)
    message = str(caught.value)
    assert str(path) in message
    for phrase in phrases:
        assert phrase in message
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- the format


def test_exact_bytes_of_a_small_int16_matrix(tmp_path):
    path = write_idx(tmp_path / "m.idx", np.array([[1, 2], [3, -1]], dtype=np.int16))
    assert path.read_bytes() == bytes.fromhex(
        "00 00 0b 02"  # zero, zero, dtype int16, 2 dimensions
        "00000002 00000002"  # dims 2 x 2, big-endian uint32
        "0001 0002 0003 ffff"  # payload, big-endian, row-major
    )


def test_parse_idx_header_reads_dtype_and_shape():
    header = parse_idx_header(idx_bytes(0x08, (60000, 28, 28), b""))
    assert header == IdxHeader(dtype=np.dtype(">u1"), shape=(60000, 28, 28))
    assert header.nbytes == 16
    assert header.payload_nbytes == 60000 * 28 * 28


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip(tmp_path, dtype, shape, compress):
    array = sample_array(dtype, shape)
    path = write_idx(tmp_path / "a.idx", array, compress=compress)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype)
    assert back.dtype.isnative
    assert back.shape == shape
    assert back.flags.writeable
    np.testing.assert_array_equal(back, array)


def test_big_endian_and_non_contiguous_inputs_round_trip(tmp_path):
    array = sample_array(np.int32, (4, 6)).astype(">i4").T  # big-endian and transposed
    back = read_idx(write_idx(tmp_path / "t.idx", array))
    assert back.dtype == np.int32 and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


def test_gzip_is_detected_by_magic_bytes_not_by_name(tmp_path):
    array = sample_array(np.uint8, (3, 4))
    gzipped = write_idx(tmp_path / "no-suffix", array, compress=True)
    raw = write_idx(tmp_path / "looks-compressed.gz", array, compress=False)
    assert gzipped.read_bytes()[:2] == b"\x1f\x8b"
    assert raw.read_bytes()[:2] == b"\x00\x00"
    np.testing.assert_array_equal(read_idx(gzipped), array)
    np.testing.assert_array_equal(read_idx(raw), array)


def test_compress_none_follows_the_file_name(tmp_path):
    array = sample_array(np.float32, (5,))
    assert write_idx(tmp_path / "a.gz", array).read_bytes()[:2] == b"\x1f\x8b"
    assert write_idx(tmp_path / "a.idx", array).read_bytes()[:2] == b"\x00\x00"


def test_gzip_output_is_deterministic(tmp_path):
    array = sample_array(np.float64, (4, 4))
    first = write_idx(tmp_path / "one.gz", array).read_bytes()
    second = write_idx(tmp_path / "two.gz", array).read_bytes()
    assert first == second  # no timestamp and no (temporary) file name in the header


# --------------------------------------------------------------------------- bad files


def test_wrong_magic(tmp_path):
    path = tmp_path / "bad-magic.idx"
    path.write_bytes(b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00")
    assert_data_error(path, "not an IDX file", "01 02 08 01")


def test_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad-dtype.idx"
    path.write_bytes(idx_bytes(0x0A, (1,), b"\x00"))
    assert_data_error(path, "unknown IDX dtype code 0x0A")


def test_zero_dimensions(tmp_path):
    path = tmp_path / "scalar.idx"
    path.write_bytes(idx_bytes(0x08, (), b"\x00"))
    assert_data_error(path, "0 dimensions")


def test_too_short_for_a_header(tmp_path):
    path = tmp_path / "tiny.idx"
    path.write_bytes(b"\x00\x00")
    assert_data_error(path, "too short")


def test_truncated_dimensions(tmp_path):
    path = tmp_path / "cut-header.idx"
    path.write_bytes(bytes([0, 0, 0x08, 3]) + struct.pack(">I", 10))
    assert_data_error(path, "truncated inside its IDX header")


def test_truncated_payload(tmp_path):
    path = tmp_path / "cut.idx"
    path.write_bytes(idx_bytes(0x0C, (2, 3), b"\x00" * 23))  # needs 2*3*4 = 24 bytes
    assert_data_error(path, "truncated", "(2, 3)", "24 payload bytes", "only 23")


def test_trailing_bytes(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(0x08, (4,), b"\x01\x02\x03\x04" + b"junk"))
    assert_data_error(path, "holds more than the 4 payload bytes", "shape (4,)")


def test_garbage_named_gz(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"<html>404 Not Found</html>")
    assert_data_error(path, "not an IDX file", "ends in .gz", "not hold gzip data")


def test_truncated_gzip_stream(tmp_path):
    path = tmp_path / "cut.gz"
    whole = gzip.compress(idx_bytes(0x08, (1000,), bytes(range(256)) * 3 + bytes(232)))
    path.write_bytes(whole[: len(whole) // 2])
    assert_data_error(path, "truncated or corrupt gzip stream")


def test_corrupt_gzip_stream(tmp_path):
    path = tmp_path / "corrupt.gz"
    whole = bytearray(gzip.compress(idx_bytes(0x08, (4,), b"\x01\x02\x03\x04")))
    whole[-8] ^= 0xFF  # break the CRC-32 stored at the end of the stream
    path.write_bytes(bytes(whole))
    assert_data_error(path, "truncated or corrupt gzip stream")


def test_gzip_holding_a_bad_idx_names_the_file(tmp_path):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (10,), b"\x00" * 9)))
    assert_data_error(path, "truncated", "only 9")


def test_missing_file(tmp_path):
    assert_data_error(tmp_path / "nope.idx", "does not exist")


def test_folder_device_and_pipe(tmp_path):
    assert_data_error(tmp_path, "is a folder, not an IDX file")
    assert_data_error(Path("/dev/zero"), "is a device, not an IDX file")
    fifo = tmp_path / "pipe.idx"
    os.mkfifo(fifo)
    assert_data_error(fifo, "is a named pipe (FIFO)")  # opening it would block


def peak_memory(function, *args) -> int:
    """The most bytes Python allocated at once while ``function(*args)`` ran."""
    tracemalloc.start()
    try:
        function(*args)
    except DataError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_gzip_bomb_stops_at_the_announced_size(tmp_path):
    # 16 bytes of payload announced, 8 MB of zeros behind them: 8 KB compressed.
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(idx_bytes(0x08, (16,), bytes(8 * 2**20))))
    assert path.stat().st_size < 20_000
    assert_data_error(path, "holds more than the 16 payload bytes")
    assert peak_memory(read_idx, path) < 1_000_000  # reading it all took 8 MB


def test_announced_payload_above_the_cap(tmp_path, monkeypatch):
    huge = tmp_path / "huge.idx"
    huge.write_bytes(idx_bytes(0x0E, (2**32 - 1, 2**32 - 1), b""))  # 2**67 bytes announced
    assert_data_error(huge, "announces shape (4294967295, 4294967295)", "more than the")
    # The cap holds even where the file really holds what its header announces.
    path = write_idx(tmp_path / "big.idx.gz", np.zeros(5000, np.uint8))
    monkeypatch.setattr(idx, "MAX_PAYLOAD_BYTES", 4999)
    assert_data_error(path, "announces shape (5000,), 5,000 bytes, more than the 4,999")
    monkeypatch.setattr(idx, "MAX_PAYLOAD_BYTES", 5000)
    assert read_idx(path).shape == (5000,)


@pytest.mark.parametrize("array", [np.zeros(3, np.int64), np.zeros(2, bool), np.float32(1.0)])
def test_write_rejects_arrays_idx_cannot_hold(tmp_path, array):
    path = tmp_path / "out.idx"
    with pytest.raises(DataError) as caught:
        write_idx(path, array)
    assert str(path) in str(caught.value)
    assert not path.exists()


def test_write_into_a_missing_folder(tmp_path):
    path = tmp_path / "no-such-folder" / "a.idx"
    with pytest.raises(WriteError, match="cannot write .*no-such-folder"):
        write_idx(path, np.zeros(3, np.uint8))


# --------------------------------------------------------------------------- atomic writes


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "labels.idx"
    old = np.arange(5, dtype=np.uint8)
    write_idx(path, old)
    before = path.read_bytes()

    def write_half_then_fail(file, header, array):
        file.write(header)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(idx, "_write_payload", write_half_then_fail)
    with pytest.raises(WriteError, match="cannot write .*No space left on device"):
        write_idx(path, np.arange(100, dtype=np.uint8))

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.idx"]


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_interrupted_write_cleans_up_and_reraises(tmp_path, monkeypatch, compress):
    path = tmp_path / "images.idx"
    write_idx(path, np.zeros((2, 2), np.uint8))
    before = path.read_bytes()

    def interrupted(fd):
        raise KeyboardInterrupt  # not an OSError: passed on untouched

    monkeypatch.setattr(files.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_idx(path, np.ones((2, 2), np.uint8), compress=compress)

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.idx"]


def test_written_files_get_ordinary_permissions(tmp_path):
    ordinary = tmp_path / "ordinary"
    ordinary.write_bytes(b"")
    written = write_idx(tmp_path / "written.idx", np.zeros(1, np.uint8))
    assert os.stat(written).st_mode == os.stat(ordinary).st_mode
