"""Networks trained by this project, shipped with it: use one without training it.

    from scratchcnn import pretrained
    model, params, state = pretrained.load("default")

and on the command line any checkpoint argument takes a name as well as a file:
``scratchcnn evaluate default``, ``scratchcnn predict best my_digit.png``.

Each network is one checkpoint file in this folder (``<name>.npz``: float32 params and
BatchNorm state, no optimizer state), read by the same pickle-free loader as any other
checkpoint. ``MANIFEST.json`` records for each one its SHA-256 (checked on every load),
its size, the exact command and commit that trained it, and the test accuracy measured
then; ``tests/test_pretrained.py`` measures that accuracy again on the 10,000 test images.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from scratchcnn.errors import ScratchCNNError

FOLDER = Path(__file__).resolve().parent
MANIFEST = FOLDER / "MANIFEST.json"

# What each name holds; the manifest says how it was trained and what it scored.
DESCRIPTIONS = {
    "default": "the default network: 2 epochs of the default recipe, seed 0",
    "best": "the best recipe, seed 0: 15 epochs with augmentation and label smoothing",
    "defended": "the default network adversarially trained (lesson 11): PGD-7 at eps 0.3 for "
    "10 epochs, then 8 epochs of fine-tuning with the exact input gradient",
    # Lesson 19's ensemble members: trained with the same 10% validation split held out, so
    # the ensemble can be chosen on images none of them saw.
    "best_val-s0": "the best_val recipe (best, 10% held out for validation), seed 0",
    "best_val-s1": "the best_val recipe (best, 10% held out for validation), seed 1",
    "best_val-s2": "the best_val recipe (best, 10% held out for validation), seed 2",
    "resnet_val-s0": "the resnet_val recipe (the resnet with the best recipe, 10% held out "
    "for validation), seed 0",
    "resnet_long_val-s0": "the resnet_long_val recipe (resnet_val for 30 epochs, the last "
    "epoch kept), seed 0",
    "resnet_long_val-s1": "the resnet_long_val recipe (resnet_val for 30 epochs, the last "
    "epoch kept), seed 1",
    "resnet_long_val-s2": "the resnet_long_val recipe (resnet_val for 30 epochs, the last "
    "epoch kept), seed 2",
    "resnet_elastic_val-s0": "the resnet_elastic_val recipe (resnet_long_val with elastic "
    "distortions), seed 0",
    "best_long_val-s0": "the best_long_val recipe (best_val for 30 epochs, the last epoch "
    "kept), seed 0",
    "best_long_val-s1": "the best_long_val recipe (best_val for 30 epochs, the last epoch "
    "kept), seed 1",
    "best_long_val-s2": "the best_long_val recipe (best_val for 30 epochs, the last epoch "
    "kept), seed 2",
}
NAMES = tuple(DESCRIPTIONS)


class PretrainedError(ScratchCNNError, ValueError):
    """A pretrained name is unknown, or its shipped file is missing or altered."""


def manifest() -> dict:
    """{name: record} of the networks shipped in this copy of scratchcnn."""
    if not MANIFEST.is_file():
        return {}
    try:
        records = json.loads(MANIFEST.read_text())
        if not all(isinstance(r, dict) and "sha256" in r for r in records.values()):
            raise ValueError("a record without its SHA-256")
    except (ValueError, AttributeError) as error:
        raise PretrainedError(f"{MANIFEST} is not a valid manifest ({error}).") from None
    return records


def available() -> list[str]:
    """The names whose files this copy of scratchcnn holds."""
    return [name for name in NAMES if name in manifest() and (FOLDER / f"{name}.npz").is_file()]


def path(name: str) -> Path:
    """The verified checkpoint file of pretrained network ``name``."""
    if name not in NAMES:
        raise PretrainedError(
            f"{name!r} is not a pretrained network; choose one of: {', '.join(NAMES)}."
        )
    record = manifest().get(name)
    file = FOLDER / f"{name}.npz"
    if record is None or not file.is_file():
        raise PretrainedError(
            f"pretrained network {name!r} is not shipped in this copy of scratchcnn "
            f"(have: {', '.join(available()) or 'none'})."
        )
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != record["sha256"]:
        raise PretrainedError(
            f"{file} has SHA-256 {digest[:12]}..., not the {record['sha256'][:12]}... "
            "MANIFEST.json records: the file was altered."
        )
    return file


def resolve_checkpoint(argument: str | os.PathLike) -> Path:
    """A checkpoint argument as a file: an existing file as is, else a pretrained name.

    A file wins over a name, so a checkpoint a user saved as ``./best`` still loads; a
    folder does not (``scratchcnn train --output default`` makes one). An argument that
    is neither is refused with both readings, since either may be what the user meant.
    """
    candidate = Path(argument)
    if str(argument) in NAMES and not candidate.is_file():
        return path(str(argument))
    if not os.path.lexists(candidate):  # lexists: a broken link is the loader's to explain
        raise PretrainedError(
            f"checkpoint {argument} does not exist, and it is not the name of a pretrained "
            f"network ({', '.join(available()) or 'none is shipped'})."
        )
    return candidate


def load(name: str) -> tuple:
    """``(model, params, state)`` of pretrained network ``name``, ready for eval mode.

    model: a ``Sequential``; params and state: ``{layer: {array name: float32 array}}``,
    as ``model.init`` makes them (the model reads (N, 28, 28, 1) standardized images).
    """
    from scratchcnn.checkpoint import load_for_model

    model, checkpoint = load_for_model(path(name))
    return model, checkpoint.params, checkpoint.state
