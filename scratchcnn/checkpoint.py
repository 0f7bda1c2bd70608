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
non-empty strings without ``"/"``; arrays are bool, integer, float or complex.

``architecture`` holds the registry name, ``repr`` of every layer (its hyperparameters)
and the input shape, so a checkpoint can rebuild its network and notice when the
registered code has changed since it was saved. ``dtype`` is the dtype all parameters
share (``"mixed"`` if they differ, ``null`` if there are none). ``info`` is whatever
JSON-serializable dict the caller passed (epoch, step, seed, RNG state, optimizer
settings, data checksums, metrics, history); NumPy or JAX numbers in it are stored as
JSON numbers, arrays as lists, and dict keys become strings, as JSON requires.

Saving is atomic: the archive is written to a temporary file, flushed to the disk and
renamed over the target (``scratchcnn.files.write_atomically``), so a crash or a full
disk leaves the previous checkpoint intact. Loading reads every member, so the CRC-32
that zip keeps for each member catches flipped bytes, and every problem raises
:class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from scratchcnn import __version__
from scratchcnn.data.mnist import INPUT_SHAPE
from scratchcnn.errors import ScratchCNNError, WriteError
from scratchcnn.files import to_jsonable, write_atomically
from scratchcnn.layers import Sequential
from scratchcnn.models import MODELS, UnknownModelError, build
from scratchcnn.pretrained import NAMES as PRETRAINED_NAMES
from scratchcnn.pretrained import resolve_checkpoint

FORMAT = "scratchcnn-checkpoint"
FORMAT_VERSION = 1
META_ENTRY = "meta.json"
TREE_NAMES = ("params", "state", "opt_state")

# Every zip archive (hence every .npz) starts with these four bytes: "PK\x03\x04".
ZIP_MAGIC = b"PK\x03\x04"

# dtype kinds a .npy member stores without pickle and reads back unchanged:
# bool, signed int, unsigned int, float, complex.
STORABLE_KINDS = "biufc"


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
    """Refuse a target that is a folder, or whose folder does not exist."""
    if path.is_dir():
        raise CheckpointError(f"cannot save checkpoint {path}: it is a directory.")
    if not path.parent.is_dir():
        raise CheckpointError(
            f"cannot save checkpoint {path}: the folder {path.parent} does not exist."
        )


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
    if array.dtype.kind not in STORABLE_KINDS:
        raise CheckpointError(
            f"cannot save checkpoint {path}: {name} has dtype {array.dtype}, which a "
            f"checkpoint cannot store without pickle; convert it to a numeric dtype."
        )
    return array


def describe(array: np.ndarray) -> str:
    """An array's dtype and shape as the metadata writes them: ``"float32[5,5,1,10]"``."""
    return f"{array.dtype.name}[{','.join(str(n) for n in array.shape)}]"


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

    Raises CheckpointError for a missing file, a folder, a file that is not a complete
    zip archive, a corrupt member, bad or missing metadata, an unsupported format
    version, arrays missing from or not listed in the metadata, and arrays that would
    need pickle.
    """
    path = Path(path)
    _check_is_zip_file(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as error:  # zipfile reports a damaged archive in several ways
        raise CheckpointError(
            f"{path} is truncated or not a complete zip archive ({error})."
        ) from error
    with npz:
        meta = _read_meta(npz, path)
        expected = {}
        for tree_name in TREE_NAMES:
            structure = meta["trees"][tree_name]
            if structure is not None:
                expected.update(_entry_names(structure, tree_name, path))
        _check_entries(npz.files, expected, path)
        trees = {
            tree_name: _read_tree(npz, meta["trees"][tree_name], tree_name, path)
            for tree_name in TREE_NAMES
        }
    return Checkpoint(path=path, meta=meta, info=meta["info"], **trees)


def _check_is_zip_file(path: Path) -> None:
    """Fail early, with a clear sentence, on anything that is not a zip archive.

    np.load guesses the format from the first bytes and, for an unknown one, would
    complain about pickle: misleading for a PNG or a text file.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist.")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory, not a checkpoint file.")
    try:
        with path.open("rb") as file:
            head = file.read(len(ZIP_MAGIC))
    except OSError as error:
        reason = error.strerror or error
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}.") from error
    if not head:
        raise CheckpointError(f"checkpoint {path} is an empty file.")
    if head != ZIP_MAGIC:
        raise CheckpointError(
            f"{path} is not a checkpoint: a checkpoint is a zip (.npz) archive, which "
            f"starts with the bytes {ZIP_MAGIC.hex(' ')}, but this file starts with "
            f"{head.hex(' ')}."
        )


def _read_member(npz, key: str, path: Path) -> np.ndarray:
    """One member of the archive as an array, read to its end so its CRC-32 is checked."""
    try:
        value = npz[key]
    except Exception as error:
        # With allow_pickle=False, NumPy refuses an object array with a ValueError that
        # names allow_pickle. Any other failure means damaged bytes: zipfile's CRC check
        # (BadZipFile), a garbled .npy header (ValueError), a cut stream (EOFError)...
        if isinstance(error, ValueError) and "allow_pickle" in str(error):
            raise CheckpointError(
                f"{path} entry {key!r} holds Python objects that only pickle could load, "
                f"and scratchcnn never unpickles because unpickling can run any code."
            ) from error
        raise CheckpointError(
            f"{path} is corrupt: entry {key!r} cannot be read ({error})."
        ) from error
    if not isinstance(value, np.ndarray):  # NpzFile returns raw bytes for a non-.npy member
        raise CheckpointError(f"{path} entry {key!r} is not a NumPy .npy array.")
    if value.dtype.kind not in STORABLE_KINDS:
        raise CheckpointError(
            f"{path} entry {key!r} has dtype {value.dtype}, which is not a numeric dtype."
        )
    return value


def _read_meta(npz, path: Path) -> dict:
    """The parsed and validated ``meta.json`` entry."""
    if META_ENTRY not in npz.files:
        raise CheckpointError(
            f"{path} is not a scratchcnn checkpoint: it has no {META_ENTRY} entry."
        )
    raw = _read_member(npz, META_ENTRY, path)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(
            f"{path} has a {META_ENTRY} entry of {describe(raw)}, not the expected uint8 bytes."
        )
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"{path} has a {META_ENTRY} that is not valid UTF-8 JSON ({error})."
        ) from error
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} has a {META_ENTRY} that is not a JSON object.")
    _check_format(meta, path)
    _check_meta_fields(meta, path)
    return meta


def _check_format(meta: dict, path: Path) -> None:
    """Is this our format, in a version this code reads?"""
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a scratchcnn checkpoint: its {META_ENTRY} says format "
            f"{meta.get('format')!r}, expected {FORMAT!r}."
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, but scratchcnn "
            f"{__version__} supports only format version {FORMAT_VERSION}."
        )


def _check_meta_fields(meta: dict, path: Path) -> None:
    """The fields the rest of the code relies on exist and have the right JSON types."""
    arch = meta.get("architecture")
    if not (
        isinstance(arch, dict)
        and isinstance(arch.get("name"), str)
        and isinstance(arch.get("layers"), list)
        and isinstance(arch.get("input_shape"), list)
    ):
        raise CheckpointError(
            f"{path} has a {META_ENTRY} without a valid 'architecture' "
            f"(a name, a list of layers and an input shape)."
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
        if not key or "/" in key:
            raise CheckpointError(f"{path} lists a badly named array {name!r} in {META_ENTRY}.")
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


def _check_entries(files: list[str], expected: dict[str, str], path: Path) -> None:
    """The archive holds exactly the arrays the metadata lists, no fewer and no more."""
    present = set(files) - {META_ENTRY}
    missing = [name for name in expected if name not in present]
    if missing:
        raise CheckpointError(
            f"{path} is missing {_count(missing, 'array')} listed in {META_ENTRY}: "
            f"{_listing(missing)}."
        )
    unexpected = sorted(present - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{path} holds {_count(unexpected, 'entry', 'entries')} not listed in "
            f"{META_ENTRY}: {_listing(unexpected)}."
        )


def _read_tree(npz, structure: dict | None, prefix: str, path: Path) -> dict | None:
    """Rebuild one nested dict from its structure, reading each array it lists."""
    if structure is None:
        return None
    tree = {}
    for key, node in structure.items():
        name = f"{prefix}/{key}"
        if isinstance(node, dict):
            tree[key] = _read_tree(npz, node, name, path)
        else:
            array = _read_member(npz, name, path)
            if describe(array) != node:
                raise CheckpointError(
                    f"{path} entry {name!r} is {describe(array)}, but {META_ENTRY} says {node}."
                )
            tree[key] = array
    return tree


# --------------------------------------------------------------------------- using


def build_from_checkpoint(ckpt: Checkpoint) -> Sequential:
    """The registered network the checkpoint names (not yet checked against it)."""
    try:
        return build(ckpt.model_name)
    except UnknownModelError as error:
        raise CheckpointError(
            f"{ckpt.path} was saved from architecture {ckpt.model_name!r}, which is not "
            f"registered; registered architectures: {', '.join(sorted(MODELS))}."
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
    saved from that architecture.
    """
    path = resolve_checkpoint(path)
    looks_like_a_name = len(path.parts) == 1 and not path.suffix
    if not path.exists() and looks_like_a_name:
        raise CheckpointError(
            f"checkpoint {path} does not exist, and it is not the name of a pretrained "
            f"network ({', '.join(PRETRAINED_NAMES)})."
        )
    ckpt = load_checkpoint(path)
    if model_name is not None and model_name != ckpt.model_name:
        raise CheckpointError(
            f"{ckpt.path} holds weights for architecture {ckpt.model_name!r}, "
            f"not for {model_name!r}."
        )
    model = build_from_checkpoint(ckpt)
    input_shape = tuple(ckpt.meta["architecture"]["input_shape"])
    check_compatible(ckpt, ckpt.model_name, model, input_shape)
    return model, ckpt


def _layer_differences(saved: list[str], current: list[str], model_name: str) -> list[str]:
    """One phrase per layer whose repr changed: "layer 3 (conv2): saved ... but ... has ..."."""
    differences = []
    for number, (old, new) in enumerate(zip_longest(saved, current), start=1):
        if old != new:
            old_text = old if old is not None else "no such layer"
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


def _count(items: list, singular: str, plural: str | None = None) -> str:
    """ "1 array", "3 arrays"."""
    word = singular if len(items) == 1 else (plural or singular + "s")
    return f"{len(items)} {word}"


def _listing(items: list[str], limit: int = 5, sep: str = ", ") -> str:
    """The first few items joined, and how many more there are: messages stay one line."""
    shown = sep.join(items[:limit])
    if len(items) > limit:
        shown += f"{sep}and {len(items) - limit} more"
    return shown
