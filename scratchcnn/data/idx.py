"""Read and write the IDX format, the file format of the MNIST database.

An IDX file is a tiny header followed by the raw numbers of one n-dimensional array::

    byte 0-1    0x00 0x00          two zero bytes (the "magic" that marks an IDX file)
    byte 2      dtype code         0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                   0x0D float32, 0x0E float64
    byte 3      ndim               how many dimensions follow
    byte 4...   ndim x uint32      the size of each dimension, big-endian
    then        the payload        prod(dims) numbers, big-endian, in C (row-major) order

MNIST ships its files gzip-compressed (``train-images-idx3-ubyte.gz``). We recognise
gzip by its own magic bytes ``1f 8b`` rather than by the file name, so a renamed or
already-decompressed file still reads correctly. We decompress as we read, and read no
more than the header announces: a few kilobytes of gzip can unpack to gigabytes.

Every problem with a file raises :class:`~scratchcnn.errors.DataError` with one sentence
that names the file and what is wrong, never a bare traceback from NumPy or gzip.
"""

from __future__ import annotations

import contextlib
import gzip
import math
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from scratchcnn.errors import DataError
from scratchcnn.files import check_regular_file, os_reason, write_atomically

# --8<-- [start:dtype_codes]
# The dtype each code stands for. ">" means big-endian: IDX stores multi-byte numbers
# most significant byte first, whatever the machine that wrote them.
DTYPE_BY_CODE: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# --8<-- [end:dtype_codes]

# The reverse table, keyed by the native-endian dtype a caller hands to write_idx.
CODE_BY_DTYPE: dict[np.dtype, int] = {
    dtype.newbyteorder("="): code for code, dtype in DTYPE_BY_CODE.items()
}

GZIP_MAGIC = b"\x1f\x8b"

# Bytes before the dimensions: two zero bytes, the dtype code and ndim.
_PREAMBLE_SIZE = 4
_DIM_SIZE = 4  # each dimension is a big-endian uint32

# The largest payload read_idx accepts: five times MNIST's largest file (the training
# images, 47 MB). A header can announce up to 2**32 items per dimension; without a cap a
# tiny file could make us try to allocate far more memory than the machine has.
MAX_PAYLOAD_BYTES = 256 * 2**20


@dataclass(frozen=True)
class IdxHeader:
    """What the header of an IDX file says about the array that follows it.

    ``dtype`` is the big-endian dtype as stored on disk; ``shape`` the array's shape.
    """

    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Length of the header itself, in bytes."""
        return _PREAMBLE_SIZE + _DIM_SIZE * len(self.shape)

    @property
    def payload_nbytes(self) -> int:
        """Length the payload must have: one item per array element."""
        return math.prod(self.shape) * self.dtype.itemsize


# --------------------------------------------------------------------------- reading


# --8<-- [start:parse_idx_header]
def parse_idx_header(data: bytes, path: str | os.PathLike = "<bytes>") -> IdxHeader:
    """Decode the header at the start of ``data`` (the decompressed file contents).

    ``path`` is only used in error messages, so they can name the file.
    """
    if len(data) < _PREAMBLE_SIZE:
        raise DataError(
            f"{path} is too short to be an IDX file: it holds {len(data)} bytes, "
            f"fewer than the {_PREAMBLE_SIZE} of the smallest header."
        )
    zero1, zero2, code, ndim = data[:_PREAMBLE_SIZE]
    if (zero1, zero2) != (0, 0):
        raise DataError(f"{path} is not an IDX file: {_describe_bad_magic(data, path)}.")
    if code not in DTYPE_BY_CODE:
        known = ", ".join(f"0x{c:02X}" for c in DTYPE_BY_CODE)
        raise DataError(f"{path} has unknown IDX dtype code 0x{code:02X} (known: {known}).")
    if ndim < 1:
        raise DataError(f"{path} declares an IDX array with 0 dimensions; at least 1 is needed.")

    header_end = _PREAMBLE_SIZE + _DIM_SIZE * ndim
    if len(data) < header_end:
        raise DataError(
            f"{path} is truncated inside its IDX header: {ndim} dimensions need "
            f"{header_end} header bytes but the file holds {len(data)}."
        )
    # ">" big-endian, "I" unsigned 32-bit integer, repeated ndim times.
    shape = struct.unpack(f">{ndim}I", data[_PREAMBLE_SIZE:header_end])
    return IdxHeader(dtype=DTYPE_BY_CODE[code], shape=tuple(shape))


# --8<-- [end:parse_idx_header]


# --8<-- [start:decode_idx]
def decode_idx(data: bytes, path: str | os.PathLike = "<bytes>") -> np.ndarray:
    """Turn the (decompressed) bytes of an IDX file into a native-endian NumPy array."""
    header = parse_idx_header(data, path)
    payload = memoryview(data)[header.nbytes :]
    expected = header.payload_nbytes
    if len(payload) < expected:
        raise DataError(
            f"{path} is truncated: its header announces shape {header.shape} "
            f"({expected} payload bytes) but only {len(payload)} follow."
        )
    if len(payload) > expected:
        raise DataError(
            f"{path} holds more than the {expected} payload bytes its header announces "
            f"for shape {header.shape}."
        )
    stored = np.frombuffer(payload, dtype=header.dtype).reshape(header.shape)
    # astype copies into a fresh, writable array in the machine's own byte order, so
    # callers never meet big-endian dtypes or read-only views of the file's bytes.
    return stored.astype(header.dtype.newbyteorder("="))


# --8<-- [end:decode_idx]


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, gzip-compressed or raw, into a native-endian NumPy array."""
    path = Path(path)
    return decode_idx(read_idx_bytes(path), path)


def read_idx_bytes(path: str | os.PathLike) -> bytes:
    """The (decompressed) bytes of ``path``: its header, then the payload it announces.

    We read the header first and then at most one byte more than the payload it
    announces (that byte reveals a file longer than announced), so a gzip bomb or a
    huge file costs no more memory than the array it claims to hold, itself capped at
    ``MAX_PAYLOAD_BYTES``.
    """
    path = Path(path)
    try:
        with _open_decompressed(path) as stream:
            head = stream.read(_PREAMBLE_SIZE)
            if len(head) == _PREAMBLE_SIZE:
                head += stream.read(_DIM_SIZE * head[3])  # byte 3 is ndim
            header = parse_idx_header(head, path)
            if header.payload_nbytes > MAX_PAYLOAD_BYTES:
                raise DataError(
                    f"{path} announces shape {header.shape}, {header.payload_nbytes:,} "
                    f"bytes, more than the {MAX_PAYLOAD_BYTES:,} read_idx accepts."
                )
            return head + stream.read(header.payload_nbytes + 1)
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:
        # gzip reports a cut-off stream as EOFError, a bad header or checksum as
        # BadGzipFile and damaged compressed data as zlib.error.
        raise DataError(f"{path} is a truncated or corrupt gzip stream ({error}).") from error
    except OSError as error:
        raise DataError(f"cannot read {path}: {os_reason(error)}.") from error


@contextlib.contextmanager
def _open_decompressed(path: Path) -> Iterator[BinaryIO]:
    """Open a file for reading, through gzip when it starts with gzip's magic."""
    check_regular_file(path, "an IDX file", DataError)
    with path.open("rb") as file:
        if is_gzip(file.read(2)):
            file.seek(0)
            with gzip.GzipFile(fileobj=file, mode="rb") as gz:
                yield gz
        else:
            file.seek(0)
            yield file


def is_gzip(data: bytes) -> bool:
    """True when ``data`` starts with the two magic bytes of every gzip stream."""
    return data[:2] == GZIP_MAGIC


def _describe_bad_magic(data: bytes, path: str | os.PathLike) -> str:
    """Say what the first bytes are, with a hint for the common `.gz` mix-up."""
    found = data[:_PREAMBLE_SIZE].hex(" ")
    description = f"it starts with bytes {found} instead of 00 00 <dtype> <ndim>"
    if str(path).endswith(".gz"):
        description += " (its name ends in .gz but it does not hold gzip data either)"
    return description


# --------------------------------------------------------------------------- writing


def encode_idx_header(array: np.ndarray, path: str | os.PathLike = "<bytes>") -> bytes:
    """The IDX header bytes for ``array``; rejects dtypes and shapes IDX cannot hold."""
    native = array.dtype.newbyteorder("=")
    if native not in CODE_BY_DTYPE:
        allowed = ", ".join(str(d) for d in CODE_BY_DTYPE)
        raise DataError(f"cannot write {path}: dtype {array.dtype} has no IDX code ({allowed}).")
    if not 1 <= array.ndim <= 255:
        raise DataError(f"cannot write {path}: IDX needs 1 to 255 dimensions, not {array.ndim}.")
    if any(size >= 2**32 for size in array.shape):
        raise DataError(
            f"cannot write {path}: shape {array.shape} has a dimension of 2**32 or more."
        )
    preamble = bytes([0, 0, CODE_BY_DTYPE[native], array.ndim])
    return preamble + struct.pack(f">{array.ndim}I", *array.shape)


def encode_idx_payload(array: np.ndarray) -> bytes:
    """The array's numbers as big-endian bytes in C order, ready to follow the header."""
    big_endian = array.dtype.newbyteorder(">")
    return np.ascontiguousarray(array, dtype=big_endian).tobytes()


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` to ``path`` as an IDX file, atomically, and return the path.

    ``compress=None`` gzips when the name ends in ``.gz``; True or False force it. The
    file appears complete or not at all (see :func:`write_atomically`), and the gzip
    output is byte-for-byte reproducible because its header timestamp is fixed at 0.
    """
    path = Path(path)
    array = np.asarray(array)
    header = encode_idx_header(array, path)  # validate before touching the disk
    if compress is None:
        compress = path.name.endswith(".gz")

    def write_body(file: BinaryIO) -> None:
        if compress:
            # filename="" keeps the temporary file's name out of the gzip header, and
            # mtime=0 keeps the current time out, so equal arrays give equal bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=file, mtime=0) as gz:
                _write_payload(gz, header, array)
        else:
            _write_payload(file, header, array)

    write_atomically(path, write_body)
    return path


def _write_payload(file: BinaryIO, header: bytes, array: np.ndarray) -> None:
    """Write the header and then the numbers of ``array`` to an open binary file."""
    file.write(header)
    file.write(encode_idx_payload(array))
