"""`scratchcnn parity`: the table, the JSON, and a non-zero exit above tolerance."""

import json

import pytest
from cli_checks import assert_one_line_error
from typer.testing import CliRunner

from scratchcnn import parity
from scratchcnn.cli import app

pytestmark = pytest.mark.lesson04

runner = CliRunner()


@pytest.mark.slow
def test_parity_json_covers_every_op_both_dtypes_and_passes(mnist_dir):
    result = runner.invoke(
        app,
        ["parity", "--json", "--model", "lenet", "--batch-size", "4", "--data-dir", str(mnist_dir)],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    names = {row["name"] for row in rows}
    assert {case[0] for case in parity.OP_CASES} <= names
    assert {"model lenet (eval)", "model lenet (train)", "softmax cross-entropy"} <= names
    assert {row["dtype"] for row in rows} == {"float32", "float64"}
    lenet_train = next(r for r in rows if r["name"] == "model lenet (train)")
    assert {"d conv1.kernel", "d dense2.bias", "d input", "loss"} <= set(lenet_train["diffs"])
    assert all(row["ok"] for row in rows)
    for row in rows:
        assert max(row["diffs"].values()) <= row["tolerance"]


def test_parity_exits_non_zero_when_a_row_exceeds_its_tolerance(mnist_dir, monkeypatch):
    monkeypatch.setitem(parity.TOLERANCE, "float64", 0.0)  # nothing is exactly equal
    monkeypatch.setattr(parity, "OP_CASES", parity.OP_CASES[:1])  # the exit code is the point
    result = runner.invoke(
        app, ["parity", "--model", "lenet", "--batch-size", "2", "--data-dir", str(mnist_dir)]
    )
    assert result.exit_code == 1
    assert "error: parity above tolerance for" in result.stderr
    assert "model lenet (train) (float64)" in result.stderr
    assert "Traceback" not in result.output


def test_parity_rejects_an_unknown_model_before_any_work():
    result = runner.invoke(app, ["parity", "--model", "vgg"])
    assert result.exit_code == 1
    assert "unknown architecture 'vgg'" in result.stderr


@pytest.mark.parametrize("size", ["0", "-1", "10001", "18446744073709551616"])
def test_parity_refuses_a_batch_size_outside_the_test_set(size):
    assert_one_line_error(runner.invoke(app, ["parity", "--batch-size", size]), "--batch-size")
