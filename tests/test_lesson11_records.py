"""Lesson 11's ensemble evaluation goes through attack records: a re-run of the script
continues from its record without attacking again, another network gets a record of its
own instead of the first one's numbers, and the same weights in another file find theirs."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn import models, robustness
from scratchcnn.checkpoint import save_checkpoint

pytestmark = pytest.mark.lesson11


@pytest.fixture
def lesson(load_lesson):
    """A fresh copy of the lesson script per test (tests patch its globals)."""
    return load_lesson("11_adversarial_training")


def test_the_ensemble_resumes_from_its_record_and_another_network_gets_its_own(
    lesson, first_digits, tmp_path, monkeypatch
):
    x, y = first_digits[0][:8], first_digits[1][:8]
    config = robustness.AttackConfig("autoattack", steps=2, queries=5, batch_size=4)
    records = tmp_path / "records"
    records.mkdir()
    model = models.build("default")

    def network(seed):
        params, state = model.init(seed)
        path = save_checkpoint(tmp_path / f"net{seed}.npz", model_name="default", model=model,
                               params=params, state=state)  # fmt: skip
        return lesson.Trained((model, params, state), path, {})

    first = lesson.ensemble_outcomes("net", network(0), x, y, config, records)
    assert len(first) == len(y) and set(first) <= {"", "clean", *robustness.AUTOATTACK}
    lesson.ensemble_outcomes("net", network(1), x, y, config, records)
    assert len(list(records.glob("net-*.json"))) == 2  # named by the weights' SHA-256

    def no_attack(*args, **kwargs):
        raise AssertionError("a finished record was attacked again")

    monkeypatch.setattr(lesson.attack_record, "batch_outcomes", no_attack)
    again = lesson.ensemble_outcomes("net", network(0), x, y, config, records)
    np.testing.assert_array_equal(again, first)
    # The same weights in another file (a shipped copy of a run's checkpoint, say) are the
    # same network: their record is found, not made again.
    net = network(0).net
    copy = save_checkpoint(tmp_path / "copy.npz", model_name="default", model=model,
                           params=net[1], state=net[2], info={"command": "a copy"})  # fmt: skip
    assert copy.read_bytes() != (tmp_path / "net0.npz").read_bytes()
    shipped = lesson.ensemble_outcomes("net", lesson.Trained(net, copy, {}), x, y, config, records)
    np.testing.assert_array_equal(shipped, first)
