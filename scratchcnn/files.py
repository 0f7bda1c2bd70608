"""Writing files safely, and turning results into JSON: the two chores every command shares.

Every file scratchcnn writes (IDX files, checkpoints, histories, figures, ONNX models,
manifests) goes through :func:`write_atomically`, so a crash at any instant leaves either
the old file or the complete new one. Every JSON file goes through :func:`to_jsonable`,
which turns NumPy numbers and arrays into plain ones and NaN/inf into null (JSON has none).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from scratchcnn.errors import ScratchCNNError, WriteError


# --8<-- [start:write_atomically]
def write_atomically(path: str | os.PathLike, write_body: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` with the bytes ``write_body(file)`` writes, all or nothing.

    We write into a temporary file in the same folder, flush it to the disk (fsync),
    and only then rename it over ``path``. A rename within one file system is atomic,
    so a reader (or a crash) sees either the old file or the complete new one, never
    half a file. If anything fails, the temporary file is removed and the old file is
    left as it was.
    """
    path = Path(path)
    check_output_file(path, overwrite=True)  # never rename over a folder or a device
    remove_stale_temporaries(path)
    temp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        # O_EXCL: never reuse an existing file. Mode 0o666 is filtered by the umask,
        # so the result gets the same permissions as any ordinary new file.
        fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise WriteError(f"cannot write {path}: {os_reason(error)}.") from error
    try:
        with os.fdopen(fd, "wb") as file:
            write_body(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException as error:
        temp_path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise WriteError(f"cannot write {path}: {os_reason(error)}.") from error
        raise
    _fsync_directory(path.parent)


# --8<-- [end:write_atomically]


def check_regular_file(path: Path, noun: str, error: type[ScratchCNNError]) -> None:
    """Refuse, with one sentence, a path that is not a file we can read.

    ``noun`` says what it should be ("an IDX file"); ``error`` is the class to raise. A
    folder or a device is named as such: reading /dev/zero or a pipe would never end.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError as caught:
        raise error(f"{path} does not exist.") from caught
    except OSError as caught:  # a symbolic link loop, a folder we may not enter
        raise error(f"cannot read {path}: {os_reason(caught)}.") from caught
    if not stat.S_ISREG(mode):
        raise error(f"{path} is {kind_of_file(mode)}, not {noun}.")


def kind_of_file(mode: int) -> str:
    """What a file that is not a regular one is: "a folder", "a named pipe (FIFO)"..."""
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ]
    return next((words for is_kind, words in kinds if is_kind(mode)), "a special file")


def check_output_file(path: Path, *, overwrite: bool, inputs: tuple = (), flag: str = "") -> Path:
    """Refuse, before any work, an output file that cannot or should not be written.

    A folder, a device or a missing folder cannot be; an existing file should not be
    replaced unless the user asked (``overwrite``), and never when it is one of the
    command's own ``inputs`` (writing a figure over the checkpoint it came from).
    """
    path = Path(path)
    name = f"{flag} {path}".strip()
    if os.path.lexists(path) and not path.is_file():
        kind = kind_of_file(path.stat().st_mode) if path.exists() else "a broken link"
        raise WriteError(f"cannot write {name}: it is {kind}, not a file.")
    parent = path.parent
    if not parent.is_dir():
        why = (
            f"{parent} is not a folder"
            if parent.exists()
            else f"the folder {parent} does not exist"
        )
        raise WriteError(f"cannot write {name}: {why}.")
    for other in inputs:
        if (
            other is not None
            and path.exists()
            and os.path.exists(other)
            and os.path.samefile(path, other)
        ):
            raise WriteError(f"{name} is also an input of this command; choose another file.")
    if path.exists() and not overwrite:
        raise WriteError(f"{name} already exists; pass --overwrite to replace it.")
    return path


def _same_file(path: Path, other) -> bool:
    return os.path.exists(other) and os.path.samefile(path, other)


def remove_stale_temporaries(path: str | os.PathLike) -> None:
    """Delete the temporary files of ``path`` that a killed writer left behind."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to delete
            stale.unlink()


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """``write_atomically`` for text, encoded as UTF-8."""
    data = text.encode("utf-8")
    write_atomically(path, lambda file: file.write(data))


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically; NumPy values and NaN as ``to_jsonable``."""
    write_text_atomically(path, json_text(payload))


def json_text(payload: Any) -> str:
    """``payload`` as indented JSON text (after ``to_jsonable``), ending in a newline."""
    return json.dumps(to_jsonable(payload), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def to_jsonable(value: Any) -> Any:
    """Dicts, lists, strings, bools, ints and floats only: NumPy/JAX numbers and arrays become
    plain ones, tuples lists, and NaN and infinities None (JSON has none)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, str | None):
        return value
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if hasattr(value, "__array__"):  # NumPy and JAX arrays
        return to_jsonable(np.asarray(value).tolist())
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def os_reason(error: OSError) -> str:
    """The human part of an OSError ('No such file or directory'), without the path."""
    return error.strerror or str(error)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable on POSIX; skipped where a folder cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    with contextlib.suppress(OSError):
        os.fsync(fd)
    os.close(fd)
