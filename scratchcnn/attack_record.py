"""An attack evaluation that survives being stopped.

AutoAttack on all 10,000 test digits of a defended network takes hours on a CPU. With a
record file (``scratchcnn attack ... --record FILE``) the test set is attacked batch by
batch, and after each batch the record is rewritten atomically with who fooled each of its
examples. ``--resume`` skips the batches the record holds. Each batch's attack draws its
randomness from (seed, first index) only, so a resumed evaluation ends with exactly the
numbers an uninterrupted one would have.

A record names what it measured (the network: its layers and a digest of its weights, so
the same weights in another file, such as a shipped copy of a run's checkpoint, are the same
network; the attack's settings, the eps values, the test images' digest); resuming with
anything else is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scratchcnn import attacks, robustness
from scratchcnn.errors import InputError
from scratchcnn.files import check_regular_file, write_json
from scratchcnn.train.runs import weights_digest

VERSION = 2  # 1 named the checkpoint file instead of the network
MAX_BYTES = 50_000_000  # 10,000 examples x a few eps values is well under 1 MB
OUTCOMES = ("", "clean", *robustness.ATTACKS)  # robust; wrong already; fooled by that attack


class RecordError(InputError):
    """A record file that cannot be resumed."""


def network_identity(network) -> dict:
    """What names a network (model, params, state): its layers and its weights' digest."""
    model, params, state = network
    return {"layers_sha256": hashlib.sha256(repr(model.layers).encode()).hexdigest(),
            "weights_sha256": weights_digest(params, state)}  # fmt: skip


def identity(network, config: robustness.AttackConfig, eps_values, x, y) -> dict:
    """What a record measured: network (model, params, state), attack, budgets and images."""
    images = hashlib.sha256(np.ascontiguousarray(x).tobytes() + np.asarray(y).tobytes())
    return {
        "network": network_identity(network),
        "attack": config.__dict__,
        "eps": [float(e) for e in eps_values],
        "images": len(y),
        "images_sha256": images.hexdigest(),
    }


@dataclass
class AttackRecord:
    """The outcome of each finished batch: ``done[eps][first index]`` is a list of
    ``OUTCOMES`` strings, one per example of the batch."""

    path: Path
    identity: dict
    done: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    def save(self) -> None:
        write_json(self.path, {"version": VERSION, "identity": self.identity, "done": self.done})

    def outcomes(self, eps: float) -> np.ndarray:
        """Every example's outcome at eps, in test-set order (N,)."""
        parts = self.done.get(repr(float(eps)), {})
        return np.array([o for start in sorted(parts, key=int) for o in parts[start]], dtype=object)


def open_record(path: Path, ident: dict, *, resume: bool) -> AttackRecord:
    """A new record at ``path``, or with ``resume`` the one there (checked against
    ``ident``). The caller has already refused to overwrite a record without being asked."""
    path = Path(path)
    if not resume or not path.exists():
        return AttackRecord(path, ident)
    check_regular_file(path, "an attack record", RecordError)
    if path.stat().st_size > MAX_BYTES:
        raise RecordError(f"cannot resume {path}: at {path.stat().st_size:,} bytes it is not "
                          "an attack record.")  # fmt: skip
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RecordError(f"cannot resume {path}: it is not JSON ({error}).") from None
    if not isinstance(saved, dict) or saved.get("version") != VERSION:
        raise RecordError(f"cannot resume {path}: it is not a version-{VERSION} attack record.")
    if saved.get("identity") != json.loads(json.dumps(ident)):
        why = _difference(saved.get("identity"), ident)
        raise RecordError(f"cannot resume {path}: {why}; start again with --overwrite, or "
                          "choose another --record file.")  # fmt: skip
    record = AttackRecord(path, ident, saved.get("done"))
    _check_done(record)
    return record


def _difference(saved, now: dict) -> str:
    if not isinstance(saved, dict):
        return "it names no network or attack"
    changed = [key for key in now if saved.get(key) != json.loads(json.dumps(now[key]))]
    return f"it measured another {', '.join(changed) or 'setting'} than this command asks for"


def _check_done(record: AttackRecord) -> None:
    """Every saved batch: a known eps, a batch start, a list of known outcomes that fits."""
    batch, total = record.identity["attack"]["batch_size"], record.identity["images"]
    eps_keys = {repr(float(e)) for e in record.identity["eps"]}
    problem = None
    if not isinstance(record.done, dict) or not set(record.done) <= eps_keys:
        problem = "its finished batches are not keyed by this command's eps values"
    else:
        for parts in record.done.values():
            for start, outcomes in parts.items() if isinstance(parts, dict) else [(None, None)]:
                size = _batch_size(start, batch, total)
                if size is None or not isinstance(outcomes, list) or len(outcomes) != size or \
                        not set(outcomes) <= set(OUTCOMES):  # fmt: skip
                    problem = f"its batch starting at {start!r} does not fit the test images"
    if problem:
        raise RecordError(f"cannot resume {record.path}: {problem}; start again with --overwrite.")


def _batch_size(start, batch: int, total: int) -> int | None:
    """The size of the batch starting at ``start`` (a string), or None if none does."""
    if not isinstance(start, str) or not start.isdigit() or int(start) % batch or \
            int(start) >= total:  # fmt: skip
        return None
    return min(batch, total - int(start))


# --8<-- [start:outcomes]
def batch_outcomes(network, x, y, eps: float, config: robustness.AttackConfig, start: int):
    """Who fooled each example of one batch (its first index: ``start``), with the random
    stream ``adversarial_examples`` gives that batch: (N,) strings of OUTCOMES."""
    rng = [config.seed, start]
    if config.attack == "autoattack":
        return robustness.autoattack_with_breakdown(*network, x, y, eps, config, rng)[1]
    adv = robustness.attack_batch(*network, x, y, eps, config, rng)
    right, still_right = (attacks.predict(*network, images) == y for images in (x, adv))
    return np.where(right, np.where(still_right, "", config.attack), "clean").astype(object)


# --8<-- [end:outcomes]


def run(network, x, y, eps_values, config, record: AttackRecord, log: Callable = print):
    """Attack every batch the record lacks, saving after each; returns {attack: curve}
    as ``robustness.accuracy_curve`` gives it."""
    size = config.batch_size
    for eps in eps_values:
        parts = record.done.setdefault(repr(float(eps)), {})
        for start in range(0, len(y), size):
            if str(start) in parts:
                continue
            outcomes = batch_outcomes(network, x[start : start + size], y[start : start + size],
                                      eps, config, start)  # fmt: skip
            parts[str(start)] = [str(o) for o in outcomes]
            record.save()
            log(f"eps {eps:g}: images {start + 1:,}-{start + len(outcomes):,} of {len(y):,} "
                f"done, {np.mean(outcomes == ''):.1%} robust")  # fmt: skip
    curve = [{"eps": float(e), "accuracy": float(np.mean(record.outcomes(e) == ""))}
             for e in eps_values]  # fmt: skip
    return {config.attack: curve}
