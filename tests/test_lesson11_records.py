"""Lesson 11's ensemble evaluation goes through attack records: a re-run of the script
continues from its record without attacking again, another network gets a record of its
own instead of the first one's numbers, and the same weights in another file find theirs."""

from __future__ import annotations

import numpy as np
import pytest

from scratchcnn import models, pretrained, robustness
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


def test_worst_case_restarts_continue_where_a_stopped_run_ended(
    lesson, first_digits, tmp_path, monkeypatch
):
    """A run stopped during restart 3 of 4 continues from its file, attacks only restarts
    3 and 4 again, and ends where an unbroken run ends."""
    x, y = first_digits[0][:16], first_digits[1][:16]
    config = robustness.AttackConfig("pgd", steps=2, step_size=0.05)
    network = lesson.load_network(pretrained.path("default"))
    unbroken = lesson.worst_case_accuracy(network.net, x, y, 0.15, config, 4)
    assert 0 < unbroken[-1] < unbroken[0] < 1  # images fall, but some stand to the end

    def kept():
        return lesson.KeptRestarts.of("net", network, x, y, config, 4, tmp_path)

    class Stop(Exception):
        pass

    attack, calls = lesson.robustness.adversarial_examples, []

    def counted(*args, **kwargs):
        calls.append(1)
        if stop_at and len(calls) == stop_at:
            raise Stop
        return attack(*args, **kwargs)

    monkeypatch.setattr(lesson.robustness, "adversarial_examples", counted)
    stop_at = 3
    with pytest.raises(Stop):
        lesson.worst_case_accuracy(network.net, x, y, 0.15, config, 4, kept())
    assert len(kept().restored()[0]) == 2
    calls.clear()
    stop_at = None
    assert lesson.worst_case_accuracy(network.net, x, y, 0.15, config, 4, kept()) == unbroken
    assert len(calls) == 2
    # Another number of restarts is another measurement: nothing kept is reused.
    other = lesson.KeptRestarts.of("net", network, x, y, config, 5, tmp_path)
    assert other.restored() == ([], None)
