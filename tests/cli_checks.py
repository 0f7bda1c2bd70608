"""What the command-line tests share: run a command in-process, check a refusal."""

from typer.testing import CliRunner

from scratchcnn.cli import app

runner = CliRunner()


def run(*args):
    """Invoke the command line in-process, as `scratchcnn ARGS...` would."""
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *phrases: str) -> None:
    """Exit status 1, a single 'error: ...' line on stderr naming the phrases, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    assert "Traceback" not in result.output
