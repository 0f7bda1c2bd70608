"""`scratchcnn attack`: accuracy per eps, figures, sanity checks, refusals (small and quick)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_checks import assert_one_line_error, run

from scratchcnn import attacks

pytestmark = pytest.mark.lesson10


# Two independently trained networks: the shipped default and best (the transfer check
# needs a second one; training them here would cost a minute).
checkpoints = ["default", "best"]


@pytest.mark.slow
def test_attack_table_json_and_figures(mnist_dir, tmp_path):
    figure, grid = tmp_path / "acc.png", tmp_path / "grid.png"
    result = run("attack", checkpoints[0], "--attack", "pgd", "--eps", "0,0.1,0.3",
                 "--steps", "5", "--step-size", "0.1", "--limit", "100", "--json",
                 "--figure", figure, "--save-examples", grid, "--data-dir", mnist_dir)  # fmt: skip
    assert result.exit_code == 0, result.output
    curve = json.loads(result.stdout)["curves"]["pgd"]
    accs = [row["accuracy"] for row in curve]
    assert [row["eps"] for row in curve] == [0.0, 0.1, 0.3]
    assert accs[0] > 0.5 and accs[2] < accs[0]
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sanity_checks_run_and_report(mnist_dir):
    result = run("attack", checkpoints[0], "--sanity", "--eps", "0,0.2", "--steps", "5",
                 "--queries", "50", "--limit", "50", "--transfer-from", checkpoints[1],
                 "--data-dir", mnist_dir, "--json")  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    checks = {c["check"]: c for c in json.loads(result.stdout)["sanity"]}
    assert len(checks) == 6
    assert checks["eps = 0.5 leaves (almost) nothing"]["ok"]
    assert checks["one FGSM step is not stronger than the ensemble"]["ok"]


def test_sanity_takes_the_ensemble_from_the_record(mnist_dir, tmp_path, monkeypatch):
    """With --attack autoattack --record, --sanity reads the ensemble's outcomes from the
    record instead of attacking every image again: only the 2x stronger ensemble's two
    restarts call autoattack_breakdown, and the numbers are those of the record."""
    from scratchcnn import robustness

    calls = []
    real = robustness.autoattack_breakdown
    monkeypatch.setattr(robustness, "autoattack_breakdown",
                        lambda *a, **k: calls.append(len(a[4])) or real(*a, **k))  # fmt: skip
    result = run("attack", checkpoints[0], "--attack", "autoattack", "--sanity", "--eps", "0.3",
                 "--steps", "3", "--queries", "10", "--limit", "20", "--record",
                 tmp_path / "r.json", "--data-dir", mnist_dir, "--json")  # fmt: skip
    assert result.exit_code in (0, 1), result.output
    assert len(calls) == 2, calls
    out = json.loads(result.stdout)
    assert out["curves"]["autoattack"][0]["accuracy"] == out["sanity_details"]["ensemble"]


@pytest.mark.parametrize(
    ("flags", "phrase"),
    [(["--attack", "cw"], "unknown attack"), (["--eps", "0,1.5"], "eps")],
)
def test_bad_attack_flags(mnist_dir, flags, phrase):
    result = run("attack", checkpoints[0], *flags, "--limit", "10", "--data-dir", mnist_dir)
    assert result.exit_code == 1
    assert phrase in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("flags", "phrases"),
    [
        (["--eps", "nan"], ["--eps", "nan"]),
        (["--eps", "0,inf"], ["--eps", "inf"]),
        (["--eps", "1e400"], ["--eps", "inf"]),
        (["--eps", "-0.1"], ["--eps", "-0.1"]),
        (["--eps", ",".join(["0.1"] * 1000)], ["--eps", "1000"]),
        (["--step-size", "nan"], ["--step-size", "nan"]),
        (["--attack", "pgd", "--step-size", "inf"], ["--step-size", "inf"]),
        (["--step-size", "0"], ["--step-size"]),
        (["--step-size", "2"], ["--step-size"]),
        (["--steps", "0"], ["--steps", "got 0"]),
        (["--steps", "99999999999999999999"], ["--steps"]),
        (["--restarts", "0"], ["--restarts"]),
        (["--restarts", "18446744073709551616"], ["--restarts"]),
        (["--limit", "0"], ["--limit"]),
        (["--limit", "18446744073709551616"], ["--limit"]),
        (["--batch-size", "0"], ["--batch-size", "got 0"]),
        (["--batch-size", "10001"], ["--batch-size", "10001"]),
        (["--grad", "torch"], ["--grad", "torch"]),
        (["--attack", ""], ["unknown attack ''"]),
        (["--figure", ""], ["--figure", "folder"]),
        (["--save-examples", "no/such/folder/grid.png"], ["--save-examples", "does not exist"]),
    ],
)
def test_hostile_attack_flags_are_one_line(flags, phrases, tmp_path):
    """Refused before the checkpoint is even opened (it does not exist)."""
    result = run("attack", tmp_path / "never-opened.npz", *flags)
    assert_one_line_error(result, *phrases)


@pytest.mark.parametrize("attack", [attacks.fgsm, attacks.pgd])
def test_the_library_refuses_a_nan_budget(attack):
    """NaN passes `eps < 0 or eps > 1`; the checks must catch it before any work."""
    with pytest.raises(attacks.AttackError, match="eps"):
        attack(None, None, None, np.zeros((1, 28, 28, 1)), np.zeros(1, int), float("nan"))
    with pytest.raises(attacks.AttackError, match="step size"):
        attacks.pgd(None, None, None, np.zeros((1, 28, 28, 1)), None, 0.1, step_size=np.nan)
