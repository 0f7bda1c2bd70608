"""Checkpoints: bit-exact round trips, atomic saves, and one clear error per bad file."""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from scratchcnn import __version__
from scratchcnn.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Checkpoint,
    CheckpointError,
    architecture_of,
    build_from_checkpoint,
    check_compatible,
    load_checkpoint,
    load_for_model,
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
    # Non-finite values and a negative zero are saved as they are, bit for bit.
    first = next(iter(params))
    params[first]["kernel"].flat[:3] = [np.nan, -np.inf, -0.0]
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
    "directory": (lambda p: (p.unlink(), p.mkdir()), "is a directory"),
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
        "is float64[10], but meta.json says float32[10]",
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
    with pytest.raises(CheckpointError, match="is a directory"):
        save_model(tmp_path)


@pytest.mark.parametrize(
    ("opt_state", "words"),
    [
        ({"a/b": np.zeros(1)}, "without '/'"),
        ({"": np.zeros(1)}, "non-empty string"),
        ({1: np.zeros(1)}, "non-empty string"),
        ({"mu": (np.zeros(1), np.zeros(1))}, "opt_state/mu is a tuple"),
        ({"mu": None}, "opt_state/mu is a NoneType"),
        ({"mu": np.array([{}], dtype=object)}, "dtype object"),
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
    with pytest.raises(CheckpointError, match="'my_net', which is not registered"):
        build_from_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match="'my_net', which is not registered"):
        load_for_model(path)
