"""`scratchcnn attack --record`: an evaluation stopped at any batch resumes to the numbers
of an uninterrupted one, and a record that does not match the command is refused."""

from __future__ import annotations

import json

import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import attack_record, pretrained, robustness

pytestmark = pytest.mark.lesson10

CONFIG = robustness.AttackConfig("pgd", steps=5, step_size=0.03, batch_size=8)
EPS = (0.0, 0.1)


@pytest.fixture(scope="module")
def setting(first_digits):
    x, y = first_digits
    return pretrained.load("default"), x[:20], y[:20]


def new_record(path, x, y):
    ident = attack_record.identity(pretrained.load("default"), CONFIG, EPS, x, y)
    return attack_record.open_record(path, ident, resume=True), ident


def test_a_recorded_evaluation_equals_the_plain_one(setting, tmp_path):
    network, x, y = setting
    record, _ = new_record(tmp_path / "r.json", x, y)
    curves = attack_record.run(network, x, y, EPS, CONFIG, record, log=lambda line: None)
    assert curves == {"pgd": robustness.accuracy_curve(*network, x, y, EPS, CONFIG)}
    saved = json.loads((tmp_path / "r.json").read_text())
    assert sorted(saved["done"]["0.1"], key=int) == ["0", "8", "16"]


@pytest.mark.parametrize("stop_after", [1, 2, 4, 5])
def test_a_stopped_evaluation_resumes_to_the_same_record(setting, tmp_path, monkeypatch,
                                                         stop_after):  # fmt: skip
    network, x, y = setting
    whole, _ = new_record(tmp_path / "whole.json", x, y)
    attack_record.run(network, x, y, EPS, CONFIG, whole, log=lambda line: None)

    saved_batches = []

    def stop(line):
        saved_batches.append(line)
        if len(saved_batches) == stop_after:
            raise KeyboardInterrupt

    record, _ = new_record(tmp_path / "stopped.json", x, y)
    with pytest.raises(KeyboardInterrupt):
        attack_record.run(network, x, y, EPS, CONFIG, record, log=stop)
    attacked = []
    original = attack_record.batch_outcomes
    monkeypatch.setattr(attack_record, "batch_outcomes",
                        lambda *a: attacked.append(a[-1]) or original(*a))  # fmt: skip
    resumed, _ = new_record(tmp_path / "stopped.json", x, y)
    attack_record.run(network, x, y, EPS, CONFIG, resumed, log=lambda line: None)
    assert len(attacked) == 6 - stop_after  # 2 eps x 3 batches, the saved ones skipped
    assert json.loads((tmp_path / "stopped.json").read_text()) == json.loads(
        (tmp_path / "whole.json").read_text())  # fmt: skip


def attack(*args):
    return run("attack", "default", "--attack", "pgd", "--steps", "3", "--limit", "10", *args)


def test_the_command_refuses_to_lose_or_misuse_a_record(tmp_path, mnist_dir):
    path = tmp_path / "r.json"
    first = attack("--eps", "0,0.1", "--record", path, "--data-dir", mnist_dir)
    assert first.exit_code == 0, first.output
    again = attack("--eps", "0,0.1", "--record", path, "--data-dir", mnist_dir)
    assert_one_line_error(again, "already exists", "--overwrite")
    resumed = attack("--eps", "0,0.1", "--record", path, "--resume", "--data-dir", mnist_dir)
    assert resumed.exit_code == 0 and resumed.stdout == first.stdout, resumed.output
    other = attack("--eps", "0,0.2", "--record", path, "--resume", "--data-dir", mnist_dir)
    assert_one_line_error(other, "cannot resume", "another eps", "--overwrite")
    assert_one_line_error(attack("--resume", "--data-dir", mnist_dir), "add --record")


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        ("{not json", "it is not JSON"),
        ('{"version": 7}', "not a version-2 attack record"),
        ("[]", "not a version-2 attack record"),
    ],
)
def test_a_broken_record_is_refused_in_one_sentence(tmp_path, mnist_dir, text, phrase):
    path = tmp_path / "r.json"
    path.write_text(text)
    result = attack("--eps", "0.1", "--record", path, "--resume", "--data-dir", mnist_dir)
    assert_one_line_error(result, str(path), phrase)


def test_a_record_with_a_batch_that_does_not_fit_is_refused(setting, tmp_path):
    network, x, y = setting
    record, ident = new_record(tmp_path / "r.json", x, y)
    attack_record.run(network, x, y, EPS, CONFIG, record, log=lambda line: None)
    saved = json.loads(record.path.read_text())
    for broken in ({"0.1": {"3": ["", ""]}}, {"0.1": {"0": ["", "nope"]}}, {"0.7": {}}, []):
        record.path.write_text(json.dumps({**saved, "done": broken}))
        with pytest.raises(attack_record.RecordError, match="start again with --overwrite"):
            attack_record.open_record(record.path, ident, resume=True)
