"""Save and load a network's weights and training state: one ``.npz`` file, no pickle.

Why not pickle (``torch.save``, ``pickle.dump``)? Loading a pickle runs whatever code
the file's author put in it, so a checkpoint downloaded from the web could do anything
to your machine. A scratchcnn checkpoint is plain numbers and JSON, read with
``np.load(path, allow_pickle=False)``: the worst a bad file can do is fail to load, with
one sentence that names the file and the problem.

The format (version 1)
----------------------
A checkpoint is a single ``.npz`` file: a zip archive (stored, not compressed) whose
members are ``.npy`` arrays, exactly what ``np.savez`` writes and ``np.load`` reads. Any
zip tool can list it (``unzip -l model.npz``). Its entries:

``meta.json``
    A 1-D ``uint8`` array holding UTF-8 JSON (``unzip -p model.npz meta.json.npy``
    shows it after a short ``.npy`` header)::

        {
          "format": "scratchcnn-checkpoint",
          "format_version": 1,
          "library_version": "0.1.0",
          "architecture": {
            "name": "lenet",
            "layers": ["Conv(features=10, kernel_size=5, strides=1, ...)", ...],
            "input_shape": [28, 28, 1]
          },
          "dtype": "float32",
          "trees": {
            "params": {"conv1": {"kernel": "float32[5,5,1,10]", "bias": "float32[10]"},
                       ...},
            "state": {},
            "opt_state": {"step": "int32[]", "mu": {"conv1": {...}, ...}, ...}
          },
          "info": {"epoch": 3, "seed": 0, "history": [...], ...}
        }

``params/<layer>/<name>``
    Every parameter array, e.g. ``params/conv1/kernel`` (HWIO) and ``params/conv1/bias``.
``state/<layer>/<name>``
    Every array of the state that is not trained, e.g. BatchNorm's ``state/batchnorm1/mean``.
``opt_state/<key>/.../<key>``
    Every array of the optimizer state, at any depth: ``opt_state/step`` (a 0-d int32),
    ``opt_state/mu/conv1/kernel``...

``trees`` records the exact nested-dict structure of the three pytrees: each key maps
either to a subtree (a JSON object, possibly empty) or to a leaf, written as the array's
dtype and shape (``"float32[5,5,1,10]"``; ``"int32[]"`` for a 0-d array). A zip archive
has no entry for an empty dict, so this is what lets ``state == {}`` or an empty layer
subtree survive the round trip, and what lets loading say which array is missing or
unexpected. ``opt_state`` is ``null`` when no optimizer state was saved. Keys are
non-empty strings without ``"/"``. ``params`` and ``state`` arrays are float32 or float64;
``opt_state`` arrays are bool, integer or real floating point. Saving keeps any values
(the weights of a run that diverged can still be inspected with ``np.load``), but
loading refuses NaN, infinities, and a negative BatchNorm variance, Adam second moment,
step count or learning-rate scale: no network or optimizer can use them.

``architecture`` holds the registry name, ``repr`` of every layer (its hyperparameters)
and the input shape, so a checkpoint can rebuild its network and notice when the
registered code has changed since it was saved. ``dtype`` is the dtype all parameters
share (``"mixed"`` if they differ, ``null`` if there are none). ``info`` is whatever
JSON-serializable dict the caller passed (epoch, step, seed, RNG state, optimizer
settings, data checksums, metrics, history); NumPy or JAX numbers in it are stored as
JSON numbers, arrays as lists, and dict keys become strings, as JSON requires.

Saving is atomic: the archive is written to a temporary file, flushed to the disk and
renamed over the target (``scratchcnn.files.write_atomically``), so a crash or a full
disk leaves the previous checkpoint intact.

Loading trusts nothing in the file, because a checkpoint may come from anywhere. It
refuses anything but a regular file before reading a byte (a named pipe would make it
wait forever). Members must be stored, not compressed, so none can unpack into more
bytes than the file holds. ``meta.json`` may hold at most 16 MiB of JSON nested at most
64 levels deep. Each member's ``.npy`` header (its dtype and shape) is checked against
``meta.json`` and against the member's size *before* its data is read. Every member is
read to its end, so the CRC-32 that zip keeps for each one catches flipped bytes, and
every array's values are checked. Every problem raises :class:`CheckpointError`.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import reprlib
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any, BinaryIO, get_args

import numpy as np

from scratchcnn import __version__
from scratchcnn.data.mnist import INPUT_SHAPE
from scratchcnn.errors import ScratchCNNError, WriteError
from scratchcnn.files import (
    check_output_file,
    kind_of_file,
    os_reason,
    to_jsonable,
    write_atomically,
)
from scratchcnn.layers import Sequential
from scratchcnn.models import UnknownModelError, build
from scratchcnn.pretrained import resolve_checkpoint

FORMAT = "scratchcnn-checkpoint"
FORMAT_VERSION = 1
META_ENTRY = "meta.json"
TREE_NAMES = ("params", "state", "opt_state")

# Every zip archive (hence every .npz) starts with these four bytes: "PK\x03\x04".
ZIP_MAGIC = b"PK\x03\x04"

# A real meta.json is a few kB (its history grows by about 1 kB an epoch) and nests 6
# levels deep. The limits stop a hostile one before it eats the memory or Python's stack.
MAX_META_BYTES = 16 * 2**20
MAX_META_DEPTH = 64
MAX_NAME_LENGTH = 100  # of an architecture, a layer, an array: messages quote them

# The arrays whose values can never be negative (fnmatch patterns; "*" spans levels).
NON_NEGATIVE = {
    "state/*/var": "a BatchNorm variance",
    "opt_state/nu/*": "Adam's second moment (a running mean of squared gradients)",
    "opt_state/step": "a step count",
    "opt_state/lr_scale": "a learning-rate scale",
}


class CheckpointError(ScratchCNNError, ValueError):
    """A checkpoint cannot be saved, read, or used with the network at hand."""


@dataclass(frozen=True)
class Checkpoint:
    """What ``load_checkpoint`` read: the three pytrees, the metadata and the caller's info."""

    path: Path
    meta: dict
    params: dict
    state: dict
    opt_state: dict | None
    info: dict

    @property
    def model_name(self) -> str:
        """The registry name of the architecture the checkpoint was saved from."""
        return self.meta["architecture"]["name"]


# --------------------------------------------------------------------------- saving


def architecture_of(name: str, model: Sequential, input_shape=INPUT_SHAPE) -> dict:
    """The ``architecture`` metadata: registry name, every layer's repr, input shape.

    A layer's repr lists all its hyperparameters (``Conv(features=32, kernel_size=3,
    ...)``), so comparing reprs tells whether two networks are built the same way.
    """
    return {
        "name": name,
        "layers": [repr(layer) for layer in model.layers],
        "input_shape": [int(n) for n in input_shape],
    }


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model_name: str,
    model: Sequential,
    params: Mapping,
    state: Mapping,
    opt_state: Mapping | None = None,
    info: dict | None = None,
    input_shape=INPUT_SHAPE,
) -> Path:
    """Write a checkpoint to ``path`` atomically and return the path.

    ``params``, ``state`` and ``opt_state`` are nested dicts of NumPy or JAX arrays;
    ``info`` is any JSON-serializable dict (epoch, seed, metrics...). The parent folder
    must exist. If anything fails, an existing file at ``path`` is left untouched.
    """
    path = Path(path)
    _check_save_target(path)
    trees, arrays = {}, {}
    for tree_name, tree in (("params", params), ("state", state), ("opt_state", opt_state)):
        if tree is None and tree_name == "opt_state":
            trees[tree_name] = None  # "no optimizer state", distinct from an empty one
            continue
        if not isinstance(tree, Mapping):
            raise CheckpointError(
                f"cannot save checkpoint {path}: {tree_name} must be a dict of arrays, "
                f"not a {type(tree).__name__}."
            )
        trees[tree_name], tree_arrays = _flatten(tree, tree_name, path)
        arrays.update(tree_arrays)
    if info is not None and not isinstance(info, dict):
        raise CheckpointError(
            f"cannot save checkpoint {path}: info must be a dict, not a {type(info).__name__}."
        )
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "library_version": __version__,
        "architecture": architecture_of(model_name, model, input_shape),
        "dtype": _params_dtype(arrays),
        "trees": trees,
        "info": {} if info is None else info,
    }
    # meta.json goes first, so that `unzip -l` lists it at the top.
    entries = {META_ENTRY: np.frombuffer(_encode_meta(meta, path), dtype=np.uint8), **arrays}
    try:
        # allow_pickle=False: refuse to write anything that would need pickle to read.
        write_atomically(path, lambda file: np.savez(file, allow_pickle=False, **entries))
    except WriteError as error:  # the OS refused (no space, no permission...)
        raise CheckpointError(str(error)) from error
    return path


def _check_save_target(path: Path) -> None:
    """Refuse a target that is a folder or a device, or whose folder does not exist."""
    try:
        check_output_file(path, overwrite=True)  # a checkpoint replaces its last version
    except WriteError as error:
        raise CheckpointError(str(error)) from None


def _flatten(tree: Mapping, prefix: str, path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Split a nested dict into (structure, {"prefix/key/.../key": array}).

    The structure is the same nesting with every array replaced by its description
    (``"float32[5,5,1,10]"``); it keeps empty dicts, which have no arrays of their own.
    """
    structure: dict = {}
    arrays: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if not isinstance(key, str) or not key or "/" in key:
            raise CheckpointError(
                f"cannot save checkpoint {path}: the key {key!r} in {prefix} must be a "
                f"non-empty string without '/', because '/' separates the levels of a name."
            )
        if isinstance(value, Mapping):
            structure[key], sub_arrays = _flatten(value, name, path)
            arrays.update(sub_arrays)
        else:
            arrays[name] = _storable_array(value, name, path)
            structure[key] = describe(arrays[name])
    return structure, arrays


def _storable_array(value: Any, name: str, path: Path) -> np.ndarray:
    """``value`` as a NumPy array, or a CheckpointError if a checkpoint cannot hold it."""
    # Arrays (NumPy, JAX) and numbers only: np.asarray would quietly turn a tuple of
    # arrays into one stacked array, and None into an object array.
    if not (hasattr(value, "__array__") or isinstance(value, bool | int | float | complex)):
        raise CheckpointError(
            f"cannot save checkpoint {path}: {name} is a {type(value).__name__}, but a "
            f"checkpoint holds only nested dicts of arrays."
        )
    array = np.asarray(value)
    problem = _dtype_problem(name, array.dtype)
    if problem:
        raise CheckpointError(f"cannot save checkpoint {path}: {name} {problem}.")
    return array


def _dtype_problem(name: str, dtype: np.dtype) -> str | None:
    """Why the array ``name`` cannot have this dtype in a checkpoint (None: it can).

    A network computes in float32 or float64: a bool, int8 or complex kernel would run,
    and predict nonsense. An optimizer state also keeps counters and flags.
    """
    if dtype.hasobject:
        return (
            "holds Python objects that only pickle could load, and scratchcnn never "
            "unpickles because unpickling can run any code"
        )
    if name.startswith("opt_state/"):
        if dtype.kind in "biuf":  # bool, signed and unsigned int, real float
            return None
        return f"has dtype {dtype}, but optimizer state must be bool, integer or real float"
    if dtype.name in ("float32", "float64"):
        return None
    return f"has dtype {dtype}, but network parameters and state must be float32 or float64"


def _value_problem(name: str, array: np.ndarray) -> str | None:
    """Why the values of the array ``name`` are unusable (None: they are fine).

    A single NaN or infinity spreads to every output of a network, and a NaN moment of
    Adam to every weight it updates; a negative variance has no square root.
    """
    if array.dtype.kind == "f":
        bad = array.size - np.count_nonzero(np.isfinite(array))
        if bad:
            return f"holds {_count(bad, 'NaN or infinite value')} (of {array.size:,})"
    for pattern, what in NON_NEGATIVE.items():
        if fnmatch.fnmatchcase(name, pattern) and array.dtype.kind in "if":
            negative = np.count_nonzero(array < 0)
            if negative:
                return (
                    f"holds {_count(negative, 'negative value')} (of {array.size:,}), "
                    f"but {what} is never negative"
                )
    return None


def describe(array: np.ndarray) -> str:
    """An array's dtype and shape as the metadata writes them: ``"float32[5,5,1,10]"``."""
    return _description(array.dtype, array.shape)


def _description(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    """``"float32[5,5,1,10]"`` from a dtype and a shape."""
    return f"{dtype.name}[{','.join(str(n) for n in shape)}]"


def _params_dtype(arrays: dict[str, np.ndarray]) -> str | None:
    """The dtype all params share, "mixed" if they differ, None if there are no params."""
    dtypes = {a.dtype.name for name, a in arrays.items() if name.startswith("params/")}
    if not dtypes:
        return None
    return dtypes.pop() if len(dtypes) == 1 else "mixed"


def _encode_meta(meta: dict, path: Path) -> bytes:
    """The metadata as UTF-8 JSON; CheckpointError if ``info`` holds something JSON cannot."""
    try:
        return json.dumps(to_jsonable(meta), indent=2, ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"cannot save checkpoint {path}: info is not JSON-serializable ({error})."
        ) from error


# --------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate the checkpoint at ``path``; never unpickles anything.

    Raises CheckpointError for a missing file, anything but a regular file, a file that
    is not a complete zip archive, a compressed or corrupt member, bad or missing
    metadata, an unsupported format version, arrays missing from or not listed in the
    metadata or unlike their listing, dtypes a network cannot use, NaN and infinities,
    and negative variances.
    """
    path = Path(path)
    with _open_regular_file(path) as file:
        _check_zip_magic(file, path)
        try:
            archive = zipfile.ZipFile(file)
        except Exception as error:  # zipfile reports a damaged archive in several ways
            raise CheckpointError(
                f"{path} is truncated or not a complete zip archive ({error})."
            ) from error
        with archive:
            members = _members(archive, os.fstat(file.fileno()).st_size, path)
            meta = _read_meta(archive, members, path)
            expected = {}
            for tree_name in TREE_NAMES:
                structure = meta["trees"][tree_name]
                if structure is not None:
                    expected.update(_entry_names(structure, tree_name, path))
            _check_entries(members, expected, path)
            trees = {
                tree_name: _read_tree(archive, members, meta["trees"][tree_name], tree_name, path)
                for tree_name in TREE_NAMES
            }
    return Checkpoint(path=path, meta=meta, info=meta["info"], **trees)


def _open_regular_file(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file (a symlink to one is fine).

    A plain open() of a named pipe (FIFO) waits, forever, for someone to write into it.
    So the file is opened without waiting (O_NONBLOCK), and asked what it is (fstat)
    before anything is read from it.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist.") from None
    except OSError as error:  # no permission, a symlink loop...
        raise CheckpointError(f"cannot read checkpoint {path}: {os_reason(error)}.") from error
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(f"checkpoint {path} is {kind_of_file(mode)}, not a checkpoint file.")
    return os.fdopen(fd, "rb")


def _check_zip_magic(file: BinaryIO, path: Path) -> None:
    """Fail early, with a clear sentence, on anything that is not a zip archive.

    zipfile would only say "File is not a zip file"; naming the first bytes tells a PNG
    or a lone .npy file apart from a damaged checkpoint.
    """
    head = file.read(len(ZIP_MAGIC))
    file.seek(0)
    if not head:
        raise CheckpointError(f"checkpoint {path} is an empty file.")
    if head != ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint: a checkpoint is a zip (.npz) archive, which "
            f"starts with the bytes {ZIP_MAGIC.hex(' ')}, but this file starts with "
            f"{head.hex(' ')}."
        )


def _members(archive: zipfile.ZipFile, file_size: int, path: Path) -> dict[str, zipfile.ZipInfo]:
    """{entry name: its zip record}, once every member is an uncompressed ``.npy`` file.

    A compressed member could unpack a few kB into gigabytes; a stored one holds its
    bytes in the file, so reading it costs at most the size of the file.
    """
    members = {}
    for info in archive.infolist():
        name = _clip(info.filename.removesuffix(".npy"))  # a zip name may be 64 kB long
        if not info.filename.endswith(".npy"):
            raise CheckpointError(f"{path} holds {name!r}, which is not a NumPy .npy array.")
        if name in members:
            raise CheckpointError(f"{path} is corrupt: it holds two entries named {name!r}.")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(
                f"{path} entry {name!r} is compressed, but a checkpoint stores its entries "
                f"uncompressed, so that a small file cannot unpack into gigabytes."
            )
        if info.file_size > file_size:
            raise CheckpointError(
                f"{path} is corrupt: its entry {name!r} claims {info.file_size:,} bytes, "
                f"more than the whole file ({file_size:,} bytes)."
            )
        members[name] = info
    return members


def _member_header(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: Path
) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape a member's ``.npy`` header declares, read without its data.

    The data must fill the rest of the member exactly: a header may not promise more
    bytes than the file holds, since reading the data allocates what the header says.
    """
    try:
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(stream)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(stream)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
            header_size = stream.tell()
    except Exception as error:  # a garbled header (ValueError), a cut file (EOFError)...
        raise CheckpointError(
            f"{path} is corrupt: entry {name!r} has no valid .npy header ({error})."
        ) from error
    if dtype.hasobject:  # its data is a pickle, whose size says nothing
        raise CheckpointError(f"{path} entry {name!r} {_dtype_problem(name, dtype)}.")
    data_size = dtype.itemsize * math.prod(shape)
    if header_size + data_size != info.file_size:
        raise CheckpointError(
            f"{path} is corrupt: entry {name!r} declares {_description(dtype, shape)} "
            f"({data_size:,} bytes), but holds {info.file_size - header_size:,} bytes of data."
        )
    return dtype, shape


def _member_data(archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, path: Path):
    """A member's array in this machine's byte order, read to the end (which checks the CRC)."""
    try:
        with archive.open(info) as stream:
            array = np.lib.format.read_array(stream, allow_pickle=False)
            stream.read()  # nothing is left; reaching the end is what checks the CRC-32
    except Exception as error:  # a failed CRC check (BadZipFile), a cut stream...
        raise CheckpointError(
            f"{path} is corrupt: entry {name!r} cannot be read ({error})."
        ) from error
    # A file from a big-endian machine holds ">f4" floats: NumPy copes, JAX refuses them.
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _read_meta(archive: zipfile.ZipFile, members: dict, path: Path) -> dict:
    """The parsed and validated ``meta.json`` entry."""
    if META_ENTRY not in members:
        raise CheckpointError(
            f"{path} is not a scratchcnn checkpoint: it has no {META_ENTRY} entry."
        )
    dtype, shape = _member_header(archive, members[META_ENTRY], META_ENTRY, path)
    if dtype != np.uint8 or len(shape) != 1:
        raise CheckpointError(
            f"{path} has a {META_ENTRY} entry of {_description(dtype, shape)}, "
            f"not the expected uint8 bytes."
        )
    if shape[0] > MAX_META_BYTES:
        raise CheckpointError(
            f"{path} has a {META_ENTRY} of {shape[0]:,} bytes, more than the "
            f"{MAX_META_BYTES:,} that scratchcnn reads."
        )
    meta = _parse_meta(_member_data(archive, members[META_ENTRY], META_ENTRY, path), path)
    _check_format(meta, path)
    _check_meta_fields(meta, path)
    return meta


def _parse_meta(raw: np.ndarray, path: Path) -> dict:
    """The JSON object in ``meta.json``: finite numbers only, nested at most MAX_META_DEPTH."""
    too_deep = CheckpointError(
        f"{path} has a {META_ENTRY} nested more than {MAX_META_DEPTH} levels deep."
    )
    try:
        meta = json.loads(
            raw.tobytes().decode("utf-8"),
            parse_float=_finite_number,
            parse_constant=_finite_number,  # NaN, Infinity: Python's json accepts them
        )
    except RecursionError:  # the parser recurses once per level
        raise too_deep from None
    except ValueError as error:  # not UTF-8, not JSON, NaN, an int of 5,000 digits...
        raise CheckpointError(
            f"{path} has a {META_ENTRY} that is not valid UTF-8 JSON ({error})."
        ) from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has a {META_ENTRY} that is not a JSON object.")
    if _nesting_depth(meta) > MAX_META_DEPTH:  # so that no recursion below can overflow
        raise too_deep
    return meta


def _finite_number(text: str) -> float:
    """A JSON number as a float; NaN, Infinity and 1e999 (which overflows) are refused."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _nesting_depth(value: Any) -> int:
    """How many levels of lists and dicts ``value`` nests (a number: 0), without recursion."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        node, depth = pending.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth + 1)
            children = node.values() if isinstance(node, dict) else node
            pending.extend((child, depth + 1) for child in children)
    return deepest


def _check_format(meta: dict, path: Path) -> None:
    """Is this our format, in a version this code reads?"""
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a scratchcnn checkpoint: its {META_ENTRY} says format "
            f"{reprlib.repr(meta.get('format'))}, expected {FORMAT!r}."
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"{path} has checkpoint format version {reprlib.repr(version)}, but scratchcnn "
            f"{__version__} supports only format version {FORMAT_VERSION}."
        )


def _check_meta_fields(meta: dict, path: Path) -> None:
    """The fields the rest of the code relies on exist and have the right JSON types."""
    arch = meta.get("architecture")
    if not (
        isinstance(arch, dict)
        and isinstance(arch.get("name"), str)
        and 0 < len(arch["name"]) <= MAX_NAME_LENGTH
        and isinstance(arch.get("layers"), list)
        and all(isinstance(layer, str) for layer in arch["layers"])
    ):
        raise CheckpointError(
            f"{path} has a {META_ENTRY} without a valid 'architecture' "
            f"(a name, a list of layers and an input shape)."
        )
    shape = arch.get("input_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise CheckpointError(
            f"{path} has a {META_ENTRY} whose input_shape {reprlib.repr(shape)} is not "
            f"three positive whole numbers (height, width, channels)."
        )
    trees = meta.get("trees")
    if not (
        isinstance(trees, dict)
        and set(trees) == set(TREE_NAMES)
        and isinstance(trees["params"], dict)
        and isinstance(trees["state"], dict)
        and isinstance(trees["opt_state"], dict | None)
    ):
        raise CheckpointError(
            f"{path} has a {META_ENTRY} without valid 'trees' "
            f"(the structure of params, state and opt_state)."
        )
    if not isinstance(meta.get("info"), dict):
        raise CheckpointError(f"{path} has a {META_ENTRY} whose 'info' is not a JSON object.")


def _entry_names(structure: dict, prefix: str, path: Path) -> dict[str, str]:
    """Every array the structure lists: {"params/conv1/kernel": "float32[5,5,1,10]", ...}."""
    names: dict[str, str] = {}
    for key, node in structure.items():
        name = f"{prefix}/{key}"
        if not key or "/" in key or len(key) > MAX_NAME_LENGTH:
            raise CheckpointError(
                f"{path} lists a badly named array {_clip(name)!r} in {META_ENTRY}."
            )
        if isinstance(node, dict):
            names.update(_entry_names(node, name, path))
        elif isinstance(node, str):
            names[name] = node
        else:
            raise CheckpointError(
                f"{path} has a {META_ENTRY} whose entry for {name} is neither a subtree "
                f"nor an array description."
            )
    return names


def _check_entries(members: dict, expected: dict[str, str], path: Path) -> None:
    """The archive holds exactly the arrays the metadata lists, no fewer and no more."""
    present = set(members) - {META_ENTRY}
    missing = [name for name in expected if name not in present]
    if missing:
        raise CheckpointError(
            f"{path} is missing {_count(len(missing), 'array')} listed in {META_ENTRY}: "
            f"{_listing(missing)}."
        )
    unexpected = sorted(_clip(name) for name in present - set(expected))  # any zip name
    if unexpected:
        raise CheckpointError(
            f"{path} holds {_count(len(unexpected), 'entry', 'entries')} not listed in "
            f"{META_ENTRY}: {_listing(unexpected)}."
        )


def _read_tree(
    archive: zipfile.ZipFile, members: dict, structure: dict | None, prefix: str, path: Path
) -> dict | None:
    """Rebuild one nested dict from its structure, reading each array it lists."""
    if structure is None:
        return None
    tree = {}
    for key, node in structure.items():
        name = f"{prefix}/{key}"
        if isinstance(node, dict):
            tree[key] = _read_tree(archive, members, node, name, path)
        else:
            tree[key] = _read_array(archive, members[name], name, node, path)
    return tree


def _read_array(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, listed: str, path: Path
) -> np.ndarray:
    """One array, checked against its listing in meta.json before its data is read."""
    dtype, shape = _member_header(archive, info, name, path)
    if _description(dtype, shape) != listed:
        raise CheckpointError(
            f"{path} entry {name!r} is {_description(dtype, shape)}, "
            f"but {META_ENTRY} says {reprlib.repr(listed)}."
        )
    problem = _dtype_problem(name, dtype)
    if problem:
        raise CheckpointError(f"{path} entry {name!r} {problem}.")
    array = _member_data(archive, info, name, path)
    problem = _value_problem(name, array)
    if problem:
        raise CheckpointError(f"{path} entry {name!r} {problem}.")
    return array


def require_info(ckpt: Checkpoint, fields: Mapping[str, Any]) -> dict:
    """The ``info`` fields a caller relies on, checked: ``{name: value}``.

    ``fields`` maps each name to the JSON type its value must have: ``int``, ``float``
    (a whole number will do), ``bool``, ``str``, ``list``, ``dict``, or a union such as
    ``float | None``. Numbers must not be negative: the fields training keeps are counts,
    seconds and losses. A missing or wrong field raises CheckpointError naming the file
    and the field. What resuming a run reads, for example::

        require_info(ckpt, {"epoch": int, "history": list, "best_val_loss": float | None})
    """
    values = {}
    for name, kind in fields.items():
        if name not in ckpt.info:
            raise CheckpointError(f"{ckpt.path} has no {name!r} in the info of its {META_ENTRY}.")
        value = ckpt.info[name]
        if not _is_json_type(value, kind):
            raise CheckpointError(
                f"{ckpt.path} has {name!r} = {reprlib.repr(value)} in the info of its "
                f"{META_ENTRY}, but it must be {_json_type_words(kind)}."
            )
        values[name] = value
    return values


def _is_json_type(value: Any, kind: Any) -> bool:
    """isinstance for JSON values: true is no number here, and a whole number is a float."""
    kinds = get_args(kind) or (kind,)  # float | None -> (float, NoneType)
    if isinstance(value, bool):
        return bool in kinds
    if isinstance(value, int | float):
        fits = type(value) in kinds or (isinstance(value, int) and float in kinds)
        return fits and value >= 0
    return isinstance(value, kinds)


def _json_type_words(kind: Any) -> str:
    """``float | None`` -> "a number (0 or more) or null"."""
    words = {
        int: "a whole number (0 or more)",
        float: "a number (0 or more)",
        bool: "true or false",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return " or ".join(words.get(k, k.__name__) for k in get_args(kind) or (kind,))


# --------------------------------------------------------------------------- using


def build_from_checkpoint(ckpt: Checkpoint) -> Sequential:
    """The registered network the checkpoint names (not yet checked against it)."""
    try:
        return build(ckpt.model_name)
    except UnknownModelError as error:
        raise CheckpointError(
            f"{ckpt.path} was saved from architecture {ckpt.model_name!r}, which cannot be "
            f"built here: {error}"
        ) from error


def check_compatible(
    ckpt: Checkpoint, model_name: str, model: Sequential, input_shape=INPUT_SHAPE
) -> None:
    """Raise CheckpointError unless ``ckpt`` holds weights for exactly this network.

    Checked in order: the architecture name, the input shape, every layer's
    hyperparameters (its repr: the registered code may have changed since saving), and
    finally every params/state name and shape against a fresh ``model.init``.
    """
    saved = ckpt.meta["architecture"]
    current = architecture_of(model_name, model, input_shape)
    if saved["name"] != model_name:
        raise CheckpointError(
            f"{ckpt.path} holds weights for architecture {saved['name']!r}, not for {model_name!r}."
        )
    if saved["input_shape"] != current["input_shape"]:
        raise CheckpointError(
            f"{ckpt.path} was saved for input shape {tuple(saved['input_shape'])}, "
            f"not {tuple(current['input_shape'])}."
        )
    differences = _layer_differences(saved["layers"], current["layers"], model_name)
    if differences:
        raise CheckpointError(
            f"{ckpt.path} does not match architecture {model_name} as registered now: "
            f"{_listing(differences, sep='; ')}."
        )
    params, state = model.init(0, input_shape)
    problems = []
    for tree_name, tree, expected in (
        ("params", ckpt.params, params),
        ("state", ckpt.state, state),
    ):
        problems += _shape_problems(
            _shapes(tree, tree_name), _shapes(expected, tree_name), model_name
        )
    if problems:
        raise CheckpointError(
            f"{ckpt.path} does not fit architecture {model_name}: {_listing(problems, sep='; ')}."
        )


def load_for_model(
    path: str | os.PathLike, model_name: str | None = None
) -> tuple[Sequential, Checkpoint]:
    """Load a checkpoint, build its network and check they fit: ``(model, checkpoint)``.

    ``path`` is a checkpoint file or the name of a shipped network (``"default"``, see
    :mod:`scratchcnn.pretrained`). With ``model_name``, the checkpoint must have been
    saved from that architecture. The network must read MNIST's (28, 28, 1) images.
    """
    if model_name is not None:
        build(model_name)  # an unknown architecture name is refused before any file is read
    ckpt = load_checkpoint(resolve_checkpoint(path))
    if model_name is not None and model_name != ckpt.model_name:
        raise CheckpointError(
            f"{ckpt.path} holds weights for architecture {ckpt.model_name!r}, "
            f"not for {model_name!r}."
        )
    model = build_from_checkpoint(ckpt)
    check_compatible(ckpt, ckpt.model_name, model)  # every command feeds MNIST's 28x28x1
    return model, ckpt


def _layer_differences(saved: list[str], current: list[str], model_name: str) -> list[str]:
    """One phrase per layer whose repr changed: "layer 3 (conv2): saved ... but ... has ..."."""
    differences = []
    for number, (old, new) in enumerate(zip_longest(saved, current), start=1):
        if old != new:
            old_text = _clip(old) if old is not None else "no such layer"
            new_text = new if new is not None else "no such layer"
            differences.append(
                f"layer {number}: saved {old_text} but the registered {model_name} has {new_text}"
            )
    return differences


def _shapes(tree: Mapping, prefix: str) -> dict[str, tuple[int, ...]]:
    """{"params/conv1/kernel": (5, 5, 1, 10), ...} for every array of a nested dict."""
    shapes = {}
    for key, value in tree.items():
        name = f"{prefix}/{key}"
        if isinstance(value, Mapping):
            shapes.update(_shapes(value, name))
        else:
            shapes[name] = tuple(int(n) for n in np.shape(value))
    return shapes


def _shape_problems(found: dict, expected: dict, model_name: str) -> list[str]:
    """Missing names, unexpected names and shape mismatches, one phrase each."""
    problems = []
    missing = [name for name in expected if name not in found]
    if missing:
        problems.append(f"the file lacks {_listing(missing)}")
    unexpected = [name for name in found if name not in expected]
    if unexpected:
        problems.append(f"the file has unexpected {_listing(unexpected)}")
    for name in expected:
        if name in found and found[name] != expected[name]:
            problems.append(
                f"{name} has shape {found[name]} in the file but {expected[name]} "
                f"in architecture {model_name}"
            )
    return problems


def _count(number: int, singular: str, plural: str | None = None) -> str:
    """ "1 array", "3 arrays", "1,024 arrays"."""
    word = singular if number == 1 else (plural or singular + "s")
    return f"{number:,} {word}"


def _clip(text: str, limit: int = 160) -> str:
    """``text``, cut to ``limit`` characters: a file's strings may be any length."""
    return text if len(text) <= limit else text[:limit] + "..."


def _listing(items: list[str], limit: int = 5, sep: str = ", ") -> str:
    """The first few items joined, and how many more there are: messages stay one line."""
    shown = sep.join(items[:limit])
    if len(items) > limit:
        shown += f"{sep}and {len(items) - limit} more"
    return shown
