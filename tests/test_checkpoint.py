"""Checkpoints: bit-exact round trips, atomic saves, and one clear error per bad file."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
import warnings
import zipfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from cli_checks import assert_one_line_error, run
from PIL import Image

from scratchcnn import __version__, checkpoint, pretrained
from scratchcnn.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    architecture_of,
    build_from_checkpoint,
    check_compatible,
    describe,
    load_checkpoint,
    load_for_model,
    require_info,
    save_checkpoint,
)
from scratchcnn.errors import ScratchCNNError
from scratchcnn.layers import Conv, Sequential
from scratchcnn.models import build

pytestmark = pytest.mark.lesson05

# ----------------------------------------------------------------------------- helpers


def make_opt_state(params: dict) -> dict:
    """An optimizer state with every awkward case: 0-d arrays, several dtypes, empty dicts."""
    return {
        "step": np.array(7, np.int32),
        "lr_scale": np.array(0.5, np.float32),
        "done": np.array(False),
        "mu": {
            layer: {k: np.full_like(a, 0.25) for k, a in p.items()} for layer, p in params.items()
        },
        "nu": {},
        "deep": {"a": {"b": {}, "c": np.arange(3, dtype=np.int64)}},
    }


def save_model(path: Path, name: str = "lenet", *, opt_state="default", info=None) -> Checkpoint:
    """Save a freshly initialised registered model; returns what was saved, as a Checkpoint."""
    model = build(name)
    params, state = model.init(0)
    if opt_state == "default":
        opt_state = make_opt_state(params)
    save_checkpoint(
        path, model_name=name, model=model, params=params, state=state,
        opt_state=opt_state, info=info,
    )  # fmt: skip
    return Checkpoint(path, {}, params, state, opt_state, info or {})


def assert_trees_identical(got, want, where="tree"):
    """Same keys in the same order, same dtypes and shapes, same bytes (NaN payloads too)."""
    if want is None:
        assert got is None, where
        return
    assert isinstance(got, dict), where
    assert list(got) == list(want), where
    for key in want:
        if isinstance(want[key], dict):
            assert_trees_identical(got[key], want[key], f"{where}/{key}")
        else:
            expected = np.asarray(want[key])
            assert isinstance(got[key], np.ndarray), f"{where}/{key}"
            assert got[key].dtype == expected.dtype, f"{where}/{key}"
            assert got[key].shape == expected.shape, f"{where}/{key}"
            assert got[key].tobytes() == expected.tobytes(), f"{where}/{key}"


def read_entries(path: Path) -> dict[str, np.ndarray]:
    """Every entry of an .npz, as the test's raw material for doctoring a file."""
    with np.load(path, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def meta_entry(meta: dict | str | bytes) -> np.ndarray:
    """The uint8 array that holds ``meta`` (a dict, or already-encoded text/bytes)."""
    if isinstance(meta, dict):
        meta = json.dumps(meta)
    if isinstance(meta, str):
        meta = meta.encode()
    return np.frombuffer(meta, dtype=np.uint8)


def rewrite(path: Path, change) -> None:
    """Rewrite the checkpoint at ``path`` after ``change(entries, meta)`` edits them.

    The edited ``meta`` is written back unless ``change`` removed or replaced the
    ``meta.json`` entry itself.
    """
    entries = read_entries(path)
    original = entries["meta.json"]
    meta = json.loads(original.tobytes())
    change(entries, meta)
    if entries.get("meta.json") is original:
        entries["meta.json"] = meta_entry(meta)
    with path.open("wb") as file:
        np.savez(file, **entries)


def npy_bytes(array: np.ndarray) -> bytes:
    """A lone .npy file's bytes: what np.save writes, not an .npz archive."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A good lenet checkpoint on disk."""
    path = tmp_path / "lenet.npz"
    save_model(path)
    return path


# ----------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", ["lenet", "bn_cnn"])
def test_round_trip_is_bit_exact(tmp_path: Path, name: str):
    path = tmp_path / f"{name}.npz"
    model = build(name)
    params, state = model.init(0)
    # Extreme values, a subnormal and a negative zero are saved as they are, bit for bit.
    first = next(iter(params))
    kernel = params[first]["kernel"]
    kernel.flat[:4] = [np.finfo(kernel.dtype).max, -np.finfo(kernel.dtype).max, 1e-45, -0.0]
    params["empty_layer"] = {}  # a layer with an empty subtree survives too
    opt_state = make_opt_state(params)
    info = {"epoch": 3, "seed": 0, "history": [{"loss": 0.5}], "best": None}
    assert save_checkpoint(
        path, model_name=name, model=model, params=params, state=state,
        opt_state=opt_state, info=info,
    ) == path  # fmt: skip

    ckpt = load_checkpoint(path)
    assert_trees_identical(ckpt.params, params, "params")
    assert_trees_identical(ckpt.state, state, "state")
    assert_trees_identical(ckpt.opt_state, opt_state, "opt_state")
    assert ckpt.info == info
    assert ckpt.model_name == name
    assert (ckpt.state == {}) == (name == "lenet")  # lenet has no BatchNorm: empty state


def test_metadata_is_documented_format(saved: Path):
    meta = load_checkpoint(saved).meta
    assert meta["format"] == FORMAT == "scratchcnn-checkpoint"
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["library_version"] == __version__
    assert meta["dtype"] == "float32"
    assert meta["architecture"] == architecture_of("lenet", build("lenet"))
    assert meta["architecture"]["input_shape"] == [28, 28, 1]
    assert meta["architecture"]["layers"][0].startswith("Conv(features=10, kernel_size=5")
    assert meta["trees"]["params"]["conv1"] == {
        "kernel": "float32[5,5,1,10]",
        "bias": "float32[10]",
    }
    assert meta["trees"]["state"] == {}
    assert meta["trees"]["opt_state"]["step"] == "int32[]"
    assert meta["trees"]["opt_state"]["nu"] == {}
    # Every entry is a plain .npy member; meta.json comes first.
    names = list(read_entries(saved))
    assert names[0] == "meta.json"
    assert "params/conv1/kernel" in names and "opt_state/mu/dense2/bias" in names


def test_no_optimizer_state_round_trips_as_none(tmp_path: Path):
    path = tmp_path / "plain.npz"
    save_model(path, opt_state=None)
    assert load_checkpoint(path).opt_state is None


def test_jax_arrays_and_numpy_scalars_are_accepted(tmp_path: Path):
    path = tmp_path / "jax.npz"
    model = build("flax_cnn")
    params, state = model.init(1)
    jax_params = {layer: {k: jnp.asarray(a) for k, a in p.items()} for layer, p in params.items()}
    opt_state = {"step": jnp.asarray(5, jnp.int32), "lr_scale": np.float32(0.1)}
    info = {"accuracy": np.float32(0.5), "rng_key": jnp.asarray([0, 42], jnp.uint32)}
    save_checkpoint(
        path, model_name="flax_cnn", model=model, params=jax_params, state=state,
        opt_state=opt_state, info=info,
    )  # fmt: skip
    ckpt = load_checkpoint(path)
    assert_trees_identical(ckpt.params, params)
    assert ckpt.opt_state["step"].dtype == np.int32 and ckpt.opt_state["step"].shape == ()
    assert ckpt.info == {"accuracy": 0.5, "rng_key": [0, 42]}


def test_load_for_model_builds_the_saved_network(saved: Path):
    model, ckpt = load_for_model(saved)
    assert model.names == build("lenet").names
    assert ckpt.model_name == "lenet"
    assert load_for_model(saved, "lenet")[1].model_name == "lenet"


# ----------------------------------------------------------------------------- atomicity


@pytest.mark.parametrize("failure", [RuntimeError("interrupted"), OSError(28, "No space left")])
def test_failed_save_leaves_old_file_intact(saved: Path, monkeypatch, failure):
    before = saved.read_bytes()

    def half_written_savez(file, *args, **kwargs):
        file.write(b"PK\x03\x04 a few bytes of a new archive")
        raise failure

    monkeypatch.setattr(np, "savez", half_written_savez)
    expected = CheckpointError if isinstance(failure, OSError) else RuntimeError
    with pytest.raises(expected) as info:
        save_model(saved, name="flax_cnn")
    if expected is CheckpointError:
        assert str(saved) in str(info.value) and "No space left" in str(info.value)
    assert saved.read_bytes() == before
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]  # no temp file


def test_successful_save_replaces_old_file(saved: Path):
    save_model(saved, name="flax_cnn")
    assert load_checkpoint(saved).model_name == "flax_cnn"
    assert sorted(p.name for p in saved.parent.iterdir()) == [saved.name]


# ----------------------------------------------------------------------------- bad files


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4] = bytes(b ^ 0xFF for b in data[middle : middle + 4])
    path.write_bytes(bytes(data))


def _object_array(entries: dict, meta: dict) -> None:
    entries["params/conv1/bias"] = np.array([{"evil": 1}], dtype=object)
    meta["trees"]["params"]["conv1"]["bias"] = "object[1]"


BAD_FILES = {
    # name: (how to damage a good file, words the message must contain)
    "missing": (lambda p: p.unlink(), "does not exist"),
    "directory": (lambda p: (p.unlink(), p.mkdir()), "is a folder"),
    "empty": (lambda p: p.write_bytes(b""), "empty file"),
    "png": (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64)), "89 50 4e 47"),
    "text": (lambda p: p.write_text("epoch,loss\n1,0.5\n"), "not a checkpoint"),
    "npy": (lambda p: p.write_bytes(npy_bytes(np.zeros(3))), "starts with the bytes 50 4b 03 04"),
    "truncated": (
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "truncated or not a complete zip archive",
    ),
    "corrupt member": (_flip_middle, "corrupt"),
    "no meta.json": (lambda p: rewrite(p, lambda e, m: e.pop("meta.json")), "no meta.json"),
    "meta not json": (
        lambda p: rewrite(p, lambda e, m: e.update({"meta.json": meta_entry("{not json")})),
        "not valid UTF-8 JSON",
    ),
    "meta not utf-8": (
        lambda p: rewrite(p, lambda e, m: e.update({"meta.json": meta_entry(b"\xff\xfe{}")})),
        "not valid UTF-8 JSON",
    ),
    "meta not uint8": (
        lambda p: rewrite(p, lambda e, m: e.update({"meta.json": np.zeros(3)})),
        "not the expected uint8",
    ),
    "wrong format": (
        lambda p: rewrite(p, lambda e, m: m.update(format="other-tool")),
        "not a scratchcnn checkpoint",
    ),
    "format version 2": (
        lambda p: rewrite(p, lambda e, m: m.update(format_version=2)),
        "format version 2, but scratchcnn 0.1.0 supports only format version 1",
    ),
    "no trees": (lambda p: rewrite(p, lambda e, m: m.pop("trees")), "without valid 'trees'"),
    "no architecture": (
        lambda p: rewrite(p, lambda e, m: m.pop("architecture")),
        "without a valid 'architecture'",
    ),
    "missing array": (
        lambda p: rewrite(p, lambda e, m: e.pop("params/dense1/kernel")),
        "missing 1 array listed in meta.json: params/dense1/kernel",
    ),
    "extra array": (
        lambda p: rewrite(p, lambda e, m: e.update({"params/conv9/kernel": np.zeros(2)})),
        "1 entry not listed in meta.json: params/conv9/kernel",
    ),
    "array differs from meta": (
        lambda p: rewrite(p, lambda e, m: e.update({"params/conv1/bias": np.zeros(10)})),
        "is float64[10], but meta.json says 'float32[10]'",
    ),
    "object array": (lambda p: rewrite(p, _object_array), "only pickle could load"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_file_raises_one_clear_error(saved: Path, case: str):
    damage, words = BAD_FILES[case]
    damage(saved)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    message = str(info.value)
    assert str(saved) in message, message
    assert words in message, message
    assert "\n" not in message
    assert isinstance(info.value, ScratchCNNError) and isinstance(info.value, ValueError)


def test_corrupt_bytes_anywhere_in_the_data_are_caught(tmp_path: Path):
    """Flipping one byte inside any array's data fails the member's CRC-32 check."""
    path = tmp_path / "lenet.npz"
    save_model(path)
    good = path.read_bytes()
    # The first kernel value's bytes (5*5*1*10 float32 = 1000 bytes of data).
    start = good.index(load_checkpoint(path).params["conv1"]["kernel"].tobytes())
    for offset in (start, start + 500, start + 999):
        damaged = bytearray(good)
        damaged[offset] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(CheckpointError, match="corrupt: entry 'params/conv1/kernel'"):
            load_checkpoint(path)


def test_loader_never_unpickles(saved: Path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was called")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    ckpt = load_checkpoint(saved)
    assert ckpt.params["conv1"]["kernel"].shape == (5, 5, 1, 10)


# ----------------------------------------------------------------------------- bad saves


def test_save_needs_an_existing_folder(tmp_path: Path):
    path = tmp_path / "no" / "such" / "folder" / "ckpt.npz"
    with pytest.raises(CheckpointError, match="folder .* does not exist"):
        save_model(path)
    with pytest.raises(CheckpointError, match="is a folder"):
        save_model(tmp_path)


@pytest.mark.parametrize(
    ("opt_state", "words"),
    [
        ({"a/b": np.zeros(1)}, "without '/'"),
        ({"": np.zeros(1)}, "non-empty string"),
        ({1: np.zeros(1)}, "non-empty string"),
        ({"mu": (np.zeros(1), np.zeros(1))}, "opt_state/mu is a tuple"),
        ({"mu": None}, "opt_state/mu is a NoneType"),
        ({"mu": np.array([{}], dtype=object)}, "only pickle could load"),
        ({"mu": "text"}, "opt_state/mu is a str"),
    ],
)
def test_save_refuses_what_a_checkpoint_cannot_hold(tmp_path: Path, opt_state, words):
    path = tmp_path / "bad.npz"
    with pytest.raises(CheckpointError) as info:
        save_model(path, opt_state=opt_state)
    assert str(path) in str(info.value) and words in str(info.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_save_refuses_info_that_is_not_json(tmp_path: Path):
    with pytest.raises(CheckpointError, match="info is not JSON-serializable"):
        save_model(tmp_path / "x.npz", info={"callback": print})
    with pytest.raises(CheckpointError, match="info must be a dict"):
        save_model(tmp_path / "x.npz", info=[1, 2])


# ----------------------------------------------------------------------------- compatibility


def test_other_architecture_is_named(saved: Path):
    ckpt = load_checkpoint(saved)
    with pytest.raises(CheckpointError, match="architecture 'lenet', not for 'flax_cnn'"):
        check_compatible(ckpt, "flax_cnn", build("flax_cnn"))
    with pytest.raises(CheckpointError, match="architecture 'lenet', not for 'flax_cnn'"):
        load_for_model(saved, "flax_cnn")


def test_changed_registered_layer_is_named(saved: Path):
    ckpt = load_checkpoint(saved)
    changed = Sequential([Conv(12, 5, padding="VALID"), *build("lenet").layers[1:]])
    with pytest.raises(CheckpointError) as info:
        check_compatible(ckpt, "lenet", changed)
    message = str(info.value)
    assert "layer 1: saved Conv(features=10, kernel_size=5" in message
    assert "but the registered lenet has Conv(features=12, kernel_size=5" in message
    shorter = Sequential(build("lenet").layers[:-1])
    with pytest.raises(CheckpointError, match="layer 12: saved Dense.* has no such layer"):
        check_compatible(ckpt, "lenet", shorter)


def test_missing_unexpected_and_misshapen_arrays_are_named(saved: Path):
    ckpt = load_checkpoint(saved)
    params = {layer: dict(p) for layer, p in ckpt.params.items()}
    params["conv1"]["kernel"] = np.zeros((3, 3, 1, 10), np.float32)
    del params["dense2"]["bias"]
    params["dense9"] = {"kernel": np.zeros(1)}
    doctored = dataclasses.replace(ckpt, params=params)
    with pytest.raises(CheckpointError) as info:
        check_compatible(doctored, "lenet", build("lenet"))
    message = str(info.value)
    assert str(saved) in message
    assert "params/conv1/kernel has shape (3, 3, 1, 10) in the file" in message
    assert "but (5, 5, 1, 10) in architecture lenet" in message
    assert "lacks params/dense2/bias" in message
    assert "unexpected params/dense9/kernel" in message


def test_other_input_shape_is_refused(saved: Path):
    with pytest.raises(CheckpointError, match=r"input shape \(28, 28, 1\), not \(32, 32, 1\)"):
        check_compatible(load_checkpoint(saved), "lenet", build("lenet"), (32, 32, 1))


def test_unregistered_architecture_cannot_be_built(tmp_path: Path):
    path = tmp_path / "custom.npz"
    model = build("lenet")
    params, state = model.init(0)
    save_checkpoint(path, model_name="my_net", model=model, params=params, state=state)
    ckpt = load_checkpoint(path)
    with pytest.raises(CheckpointError, match="'my_net', which cannot be built here: unknown"):
        build_from_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="'my_net', which cannot be built here: unknown"):
        load_for_model(path)


def test_a_network_name_with_bad_options_says_what_is_wrong(tmp_path: Path):
    path = tmp_path / "wide.npz"
    model = build("default")
    params, state = model.init(0)
    save_checkpoint(path, model_name="default(width=9)", model=model, params=params, state=state)
    with pytest.raises(CheckpointError, match="cannot be built here: .*width must be from"):
        load_for_model(path)


# ----------------------------------------------------------------------------- hostile contents


def member_bytes(path: Path) -> list[tuple[str, bytes]]:
    """Every member of an .npz as (entry name, the exact bytes of its .npy file)."""
    with zipfile.ZipFile(path) as archive:
        return [(i.filename.removesuffix(".npy"), archive.read(i)) for i in archive.infolist()]


def write_members(path: Path, members: list[tuple[str, bytes]], deflated=()) -> None:
    """An .npz written by hand, member by member: stored, or deflated if named in ``deflated``."""
    with zipfile.ZipFile(path, "w") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": one test wants a duplicate
        for name, data in members:
            kind = zipfile.ZIP_DEFLATED if name in deflated else zipfile.ZIP_STORED
            archive.writestr(name + ".npy", data, compress_type=kind)


def add_file(path: Path, filename: str, data: bytes) -> None:
    """Append a member named exactly ``filename`` to the archive."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(filename, data)


def npy_header(dtype: str, shape: tuple) -> bytes:
    """The header of a .npy file (magic, version 1.0, dict), without any data."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def listed(meta: dict, name: str) -> dict:
    """The subtree of meta.json's trees that lists ``name``'s leaf (made if missing)."""
    node = meta["trees"]
    for key in name.split("/")[:-1]:
        node = node.setdefault(key, {})
    return node


def set_array(name: str, edit):
    """A change for ``rewrite``: the array ``name`` becomes ``edit(array)``, listed so."""

    def change(entries: dict, meta: dict) -> None:
        entries[name] = edit(entries.get(name, np.zeros(3, np.float32)))
        listed(meta, name)[name.rsplit("/", 1)[1]] = describe(entries[name])

    return change


def first_to(value):
    """An edit for ``set_array``: a copy whose first value is ``value``."""

    def edit(array: np.ndarray) -> np.ndarray:
        array = array.copy()
        array.flat[0] = value
        return array

    return edit


def set_meta_text(text: str | bytes):
    """A change for ``rewrite``: meta.json becomes exactly ``text``."""
    return lambda entries, meta: entries.update({"meta.json": meta_entry(text)})


def set_member(name: str, data: bytes):
    """Damage for a saved file: member ``name`` becomes exactly ``data``, stored."""

    def damage(path: Path) -> None:
        members = member_bytes(path)
        write_members(path, [(n, data if n == name else d) for n, d in members])

    return damage


def meta_with(**architecture):
    """A change for ``rewrite``: meta.json's architecture with these fields replaced."""
    return lambda entries, meta: meta["architecture"].update(architecture)


DEEP = 100_000
HUGE_SHAPE = (2**28,)  # a GiB of float32 declared in a member of a few bytes

HOSTILE_FILES = {
    # name: (how to change a good lenet file, words the message must contain)
    "NaN weight": (
        lambda p: rewrite(p, set_array("params/conv1/kernel", first_to(np.nan))),
        "entry 'params/conv1/kernel' holds 1 NaN or infinite value (of 250)",
    ),
    "infinite bias": (
        lambda p: rewrite(p, set_array("params/dense2/bias", first_to(-np.inf))),
        "entry 'params/dense2/bias' holds 1 NaN or infinite value (of 10)",
    ),
    "complex kernel": (
        lambda p: rewrite(p, set_array("params/conv1/kernel", lambda a: a.astype(np.complex64))),
        "has dtype complex64, but network parameters and state must be float32 or float64",
    ),
    "bool kernel": (
        lambda p: rewrite(p, set_array("params/conv1/kernel", lambda a: a > 0)),
        "has dtype bool, but network parameters",
    ),
    "int8 kernel": (
        lambda p: rewrite(p, set_array("params/conv1/kernel", lambda a: a.astype(np.int8))),
        "has dtype int8, but network parameters",
    ),
    "float16 kernel": (
        lambda p: rewrite(p, set_array("params/conv1/kernel", lambda a: a.astype(np.float16))),
        "has dtype float16, but network parameters",
    ),
    "NaN Adam moment": (
        lambda p: rewrite(p, set_array("opt_state/mu/conv1/kernel", first_to(np.nan))),
        "entry 'opt_state/mu/conv1/kernel' holds 1 NaN or infinite value",
    ),
    "negative Adam second moment": (
        lambda p: rewrite(p, set_array("opt_state/nu/conv1/bias", lambda a: -np.ones(10, "f4"))),
        "holds 10 negative values (of 10), but Adam's second moment",
    ),
    "negative step count": (
        lambda p: rewrite(p, set_array("opt_state/step", lambda a: np.array(-1, np.int32))),
        "entry 'opt_state/step' holds 1 negative value (of 1), but a step count",
    ),
    "complex optimizer state": (
        lambda p: rewrite(p, set_array("opt_state/lr_scale", lambda a: a.astype(np.complex64))),
        "has dtype complex64, but optimizer state must be bool, integer or real float",
    ),
    "input shape of strings": (
        lambda p: rewrite(p, meta_with(input_shape=["a", None])),
        "input_shape ['a', None] is not three positive whole numbers",
    ),
    "negative input shape": (
        lambda p: rewrite(p, meta_with(input_shape=[28, -28, 1])),
        "input_shape [28, -28, 1] is not three positive whole numbers",
    ),
    "layers that are not text": (
        lambda p: rewrite(p, meta_with(layers=[1, 2])),
        "without a valid 'architecture'",
    ),
    "100,000 nested lists": (
        lambda p: rewrite(p, set_meta_text("[" * DEEP + "]" * DEEP)),
        "nested more than 64 levels deep",
    ),
    "info nested 100 deep": (
        lambda p: rewrite(p, lambda e, m: m.update(info={"x": json.loads("[" * 99 + "]" * 99)})),
        "nested more than 64 levels deep",
    ),
    "NaN in meta.json": (
        lambda p: rewrite(p, lambda e, m: m["info"].update(loss=float("nan"))),
        "NaN is not a finite number",
    ),
    "1e999 in meta.json": (
        lambda p: rewrite(p, set_meta_text('{"format": "scratchcnn-checkpoint", "x": 1e999}')),
        "1e999 is not a finite number",
    ),
    "a 5,000-digit number in meta.json": (
        lambda p: rewrite(p, set_meta_text('{"epoch": ' + "9" * 5000 + "}")),
        "not valid UTF-8 JSON",
    ),
    "compressed member": (
        lambda p: write_members(p, member_bytes(p), deflated={"params/conv1/bias"}),
        "entry 'params/conv1/bias' is compressed",
    ),
    "header promising a GiB": (
        set_member("params/conv1/bias", npy_header("<f4", HUGE_SHAPE) + bytes(40)),
        "declares float32[268435456] (1,073,741,824 bytes), but holds 40 bytes of data",
    ),
    "bytes after the data": (
        set_member("params/conv1/bias", npy_bytes(np.zeros(10, np.float32)) + bytes(4)),
        "declares float32[10] (40 bytes), but holds 44 bytes of data",
    ),
    ".npy format version 3": (
        # bytes 6 and 7 of a .npy file are its format version
        set_member("params/conv1/bias", b"\x93NUMPY\x03\x00" + npy_header("<f4", (10,))[8:]),
        "version 3.0 is not supported",
    ),
    "member that is no .npy": (
        lambda p: add_file(p, "notes.txt", b"hello"),
        "holds 'notes.txt', which is not a NumPy .npy array",
    ),
    "two members of one name": (
        lambda p: write_members(p, [*member_bytes(p), member_bytes(p)[1]]),
        "it holds two entries named",
    ),
    "array name of 1,000 characters": (
        lambda p: rewrite(p, lambda e, m: m["trees"]["state"].update({"x" * 1000: {}})),
        "lists a badly named array 'state/xxxx",
    ),
    "architecture name of 1,000 characters": (
        lambda p: rewrite(p, meta_with(name="x" * 1000)),
        "without a valid 'architecture'",
    ),
    "member name of 5,000 characters": (
        lambda p: add_file(p, "z" * 5000 + ".npy", npy_bytes(np.zeros(1, np.float32))),
        "holds 1 entry not listed in meta.json: zzzz",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_contents_raise_one_clear_error(saved: Path, case: str):
    damage, words = HOSTILE_FILES[case]
    damage(saved)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    message = str(info.value)
    assert str(saved) in message and words in message, message
    assert "\n" not in message and len(message) < 400, message


def test_big_endian_arrays_load_in_the_machines_byte_order(saved: Path):
    """A file from a big-endian machine: NumPy would cope with ">f4", but JAX refuses it."""
    kernel = load_checkpoint(saved).params["conv1"]["kernel"]
    rewrite(saved, set_array("params/conv1/kernel", lambda a: a.astype(">f4")))
    loaded = load_checkpoint(saved).params["conv1"]["kernel"]
    assert loaded.dtype.isnative and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, kernel)
    jnp.asarray(loaded)


def test_a_long_layer_text_is_cut_in_the_message(saved: Path):
    rewrite(saved, meta_with(layers=["Conv(" + "x" * 10_000 + ")"]))
    with pytest.raises(CheckpointError) as info:
        load_for_model(saved)
    assert "layer 1: saved Conv(xxxx" in str(info.value) and len(str(info.value)) < 1000


def test_negative_batchnorm_variance_is_refused(tmp_path: Path):
    path = tmp_path / "bn.npz"
    save_model(path, "bn_cnn", opt_state=None)
    rewrite(path, set_array("state/batchnorm2/var", first_to(-0.5)))
    with pytest.raises(CheckpointError, match=r"1 negative value \(of 64\), but a BatchNorm var"):
        load_checkpoint(path)


def test_meta_json_larger_than_the_limit_is_not_parsed(saved: Path, monkeypatch):
    monkeypatch.setattr(checkpoint, "MAX_META_BYTES", 1000)
    parsed = []
    monkeypatch.setattr(json, "loads", lambda *a, **k: parsed.append(a))
    with pytest.raises(CheckpointError, match=r"meta.json of [0-9,]+ bytes, more than the 1,000"):
        load_checkpoint(saved)
    assert not parsed


def test_a_deflate_bomb_is_refused_before_it_is_inflated(saved: Path):
    """32 MiB of zeros deflate into 32 kB; loading must not inflate them to find out."""
    bomb = saved.with_name("bomb.npz")
    shape = (2**23,)
    members = dict(member_bytes(saved))
    meta = json.loads(read_entries(saved)["meta.json"].tobytes())
    meta["trees"]["params"]["conv1"]["bias"] = f"float32[{shape[0]}]"  # as the header says
    members["meta.json"] = npy_bytes(meta_entry(meta))
    with zipfile.ZipFile(bomb, "w") as archive:
        for name, data in members.items():
            if name != "params/conv1/bias":
                archive.writestr(name + ".npy", data)
        info = zipfile.ZipInfo("params/conv1/bias.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as member:
            member.write(npy_header("<f4", shape))
            for _ in range(32):
                member.write(bytes(2**20))
    with zipfile.ZipFile(bomb) as archive:
        assert archive.getinfo("params/conv1/bias.npy").compress_size < 50_000
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="'params/conv1/bias' is compressed"):
            load_checkpoint(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak:,} bytes allocated"


def test_a_header_promising_a_gibibyte_allocates_nothing(saved: Path):
    def promise(entries: dict, meta: dict) -> None:
        meta["trees"]["params"]["conv1"]["bias"] = f"float32[{HUGE_SHAPE[0]}]"

    rewrite(saved, promise)
    set_member("params/conv1/bias", npy_header("<f4", HUGE_SHAPE) + bytes(40))(saved)
    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="declares float32"):
            load_checkpoint(saved)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak:,} bytes allocated"


def test_files_that_are_not_regular_are_refused(tmp_path: Path, saved: Path):
    link = tmp_path / "link.npz"
    link.symlink_to(saved)
    assert load_checkpoint(link).model_name == "lenet"  # a symlink to a file is fine
    loop = tmp_path / "loop.npz"
    loop.symlink_to(loop)
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*loop.npz: Too many levels"):
        load_checkpoint(loop)
    if Path("/dev/null").exists():
        with pytest.raises(CheckpointError, match="/dev/null is a device, not a checkpoint file"):
            load_checkpoint("/dev/null")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX")
def test_a_named_pipe_is_refused_without_waiting(tmp_path: Path):
    """A plain open() of a FIFO waits forever for a writer: the command must not."""
    fifo = tmp_path / "model.npz"
    os.mkfifo(fifo)
    command = [sys.executable, "-m", "scratchcnn.cli", "evaluate", str(fifo)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: checkpoint {fifo} is a named pipe (FIFO), not a checkpoint file."
    ]


# ----------------------------------------------------------------------------- on the command line


@pytest.fixture
def digit(tmp_path: Path) -> Path:
    path = tmp_path / "digit.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("NaN weight", "holds 1 NaN or infinite value"),
        ("complex kernel", "has dtype complex64"),
        ("bool kernel", "has dtype bool"),
        ("int8 kernel", "has dtype int8"),
        ("input shape of strings", "input_shape ['a', None]"),
        ("100,000 nested lists", "nested more than 64 levels deep"),
    ],
)
def test_commands_refuse_a_hostile_checkpoint(saved: Path, digit: Path, case: str, words: str):
    HOSTILE_FILES[case][0](saved)
    assert_one_line_error(run("evaluate", saved, "--json"), str(saved), words)
    assert_one_line_error(run("predict", saved, digit, "--json"), str(saved), words)


def test_predict_names_an_unknown_architecture(saved: Path, digit: Path):
    result = run("predict", saved, digit, "--model", "nosuch")
    assert_one_line_error(result, "unknown architecture 'nosuch'; choose one of:", "lenet")


def test_a_missing_checkpoint_is_neither_a_file_nor_a_name(tmp_path: Path, digit: Path):
    missing = tmp_path / "nosuch.npz"
    for command in ("evaluate", "predict"):
        result = run(command, missing, digit) if command == "predict" else run(command, missing)
        assert_one_line_error(
            result,
            f"checkpoint {missing} does not exist, and it is not the name of a pretrained "
            f"network ({', '.join(pretrained.available())}).",
        )


# -------------------------------------------------------------- saving: dtypes refused, values kept


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda a: a.astype(np.float16), "params/conv1/kernel has dtype float16"),
        (lambda a: a.astype(np.complex64), "params/conv1/kernel has dtype complex64"),
        (lambda a: a.astype(np.int8), "params/conv1/kernel has dtype int8"),
    ],
)
def test_save_refuses_dtypes_no_load_would_accept(tmp_path: Path, edit, words):
    path = tmp_path / "bad.npz"
    model = build("lenet")
    params, state = model.init(0)
    params["conv1"]["kernel"] = edit(params["conv1"]["kernel"])
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, model_name="lenet", model=model, params=params, state=state)
    assert f"cannot save checkpoint {path}: {words}" in str(info.value)
    assert not path.exists()


def test_nan_weights_are_saved_for_inspection_but_never_loaded(tmp_path: Path):
    """The weights of a run that diverged stay readable with np.load, not with the loader."""
    path = tmp_path / "diverged.npz"
    model = build("lenet")
    params, state = model.init(0)
    params["conv1"]["kernel"][...] = np.nan
    save_checkpoint(path, model_name="lenet", model=model, params=params, state=state)
    with np.load(path, allow_pickle=False) as npz:
        assert np.isnan(npz["params/conv1/kernel"]).all()
    with pytest.raises(CheckpointError, match=r"holds 250 NaN or infinite values \(of 250\)"):
        load_checkpoint(path)


# ----------------------------------------------------------------------------- require_info

RESUME_FIELDS = {"epoch": int, "step": int, "history": list, "best_val_loss": float | None,
                 "stopped_early": bool, "train_seconds": float}  # fmt: skip
GOOD_INFO = {"epoch": 2, "step": 100, "history": [], "best_val_loss": None,
             "stopped_early": False, "train_seconds": 12}  # fmt: skip


def test_require_info_returns_the_fields(tmp_path: Path):
    save_model(tmp_path / "last.npz", info={**GOOD_INFO, "other": "kept"})
    assert require_info(load_checkpoint(tmp_path / "last.npz"), RESUME_FIELDS) == GOOD_INFO


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"step": None}, "has no 'step' in the info of its meta.json."),
        ({"epoch": "3"}, "'epoch' = '3' in the info of its meta.json, but it must be a whole"),
        ({"epoch": 1.5}, "'epoch' = 1.5"),
        ({"epoch": True}, "'epoch' = True"),
        ({"step": -1}, "'step' = -1"),
        ({"stopped_early": 0}, "'stopped_early' = 0 in the info of its meta.json, but it"),
        ({"stopped_early": 1}, "must be true or false."),
        ({"best_val_loss": "low"}, "must be a number (0 or more) or null."),
        ({"history": {}}, "must be a list."),
    ],
)
def test_require_info_names_the_file_and_the_field(tmp_path: Path, change: dict, words: str):
    info = {**GOOD_INFO, **change}
    info = {key: value for key, value in info.items() if value is not None or key != "step"}
    path = tmp_path / "last.npz"
    save_model(path, info=info)
    with pytest.raises(CheckpointError) as error:
        require_info(load_checkpoint(path), RESUME_FIELDS)
    assert str(path) in str(error.value) and words in str(error.value), str(error.value)
