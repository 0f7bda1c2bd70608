"""The ``scratchcnn`` command line.

Each command is a small function that parses its flags, calls into the library and
prints the result. Errors the library raises on purpose (:class:`ScratchCNNError`) are
shown as one red line on stderr with exit status 1; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from scratchcnn.data.mnist import find_mnist, summarize_mnist
from scratchcnn.errors import ScratchCNNError

app = typer.Typer(
    name="scratchcnn",
    help="A convolutional network written from scratch in NumPy/JAX, proven equal to Flax.",
    epilog="Example: scratchcnn data --data-dir ../shared/data/mnist",
    no_args_is_help=True,
    add_completion=False,
    # Tracebacks of real bugs should not dump every local variable (arrays are huge).
    pretty_exceptions_show_locals=False,
)

Command = TypeVar("Command", bound=Callable[..., Any])


@app.callback()
def main() -> None:
    """A convolutional network written from scratch in NumPy/JAX, proven equal to Flax."""
    # An explicit callback keeps `scratchcnn data` a subcommand even while it is the
    # only one: with a single command, typer would otherwise make it the whole program.


def reports_errors(command: Command) -> Command:
    """Turn a ScratchCNNError raised by ``command`` into one red line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ScratchCNNError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


# --------------------------------------------------------------------------- data


@app.command(
    epilog=(
        "Example: scratchcnn data --data-dir ../shared/data/mnist  "
        "(or: SCRATCHCNN_DATA_DIR=../shared/data/mnist scratchcnn data --json)"
    )
)
@reports_errors
def data(
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Folder holding the four MNIST .gz files (searched first).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of text.")
    ] = False,
) -> None:
    """Find MNIST, verify its SHA-256 digests and count images, labels and classes.

    Looks in --data-dir, then $SCRATCHCNN_DATA_DIR, then the per-user cache
    ($SCRATCHCNN_CACHE_DIR), and downloads through tensorflow-datasets only when
    none of them holds MNIST.
    """
    summary = summarize_mnist(find_mnist(data_dir))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        typer.echo(format_data_summary(summary))


def format_data_summary(summary: dict) -> str:
    """The text report of ``scratchcnn data``: location, files, counts per split."""
    lines = [
        f"MNIST found in {summary['directory']}",
        f"  found by: {summary['rule']}",
        f"  layout:   {summary['layout']}",
        "  files:",
    ]
    width = max(len(file["name"]) for file in summary["files"])
    for file in summary["files"]:
        lines.append(f"    {file['name']:<{width}}  {file['bytes']:>10,} bytes  SHA-256 ok")
    for split, counts in summary["splits"].items():
        lines.append(f"  {split}: {counts['images']:,} images, {counts['labels']:,} labels")
        per_class = "  ".join(f"{digit}:{n}" for digit, n in enumerate(counts["class_counts"]))
        lines.append(f"    class counts  {per_class}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- parity


@app.command(
    epilog=(
        "Example: SCRATCHCNN_DATA_DIR=../shared/data/mnist scratchcnn parity  "
        "(or: scratchcnn parity --json --batch-size 8)"
    )
)
@reports_errors
def parity(
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Real MNIST test images per model check.")
    ] = 32,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Folder holding the four MNIST .gz files.", show_default=False
        ),
    ] = None,
    model_names: Annotated[
        list[str] | None,
        typer.Option(
            "--model", help="Check only this registered model (repeatable).", show_default=False
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
) -> None:
    """Compare every op and model with its Flax twin, forward and backward.

    For each op (on random input) and each registered model (on real MNIST test images,
    in train and eval mode), in float32 and float64: the largest relative difference of
    the output and of every gradient. Exits with status 1 if any row exceeds its
    tolerance (1e-5 in float32, 1e-10 in float64).
    """
    from scratchcnn import models
    from scratchcnn import parity as p  # imports JAX and Flax: only when asked for

    for name in model_names or []:
        models.build(name)  # an unknown name fails here, before any work
    images, labels = p.mnist_batch(batch_size, data_dir)
    rows = p.parity_rows(images, labels, model_names=model_names)
    if as_json:
        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        typer.echo(p.format_table(rows))
    failed = [row for row in rows if not row.ok]
    if failed:
        names = ", ".join(f"{row.name} ({row.dtype})" for row in failed)
        typer.secho(f"error: parity above tolerance for {names}.", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    if not as_json:
        typer.echo(f"all {len(rows)} rows within tolerance (float32 <= 1e-5, float64 <= 1e-10)")


if __name__ == "__main__":
    app()
