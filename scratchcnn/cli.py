"""The ``scratchcnn`` command line.

Each command is a small function that parses its flags, calls into the library and
prints the result. Errors the library raises on purpose (:class:`ScratchCNNError`) are
shown as one red line on stderr with exit status 1; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import inspect
import signal
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import typer

from scratchcnn.data.mnist import find_mnist, summarize_mnist
from scratchcnn.errors import InputError, ScratchCNNError
from scratchcnn.files import check_output_file, json_text, os_reason
from scratchcnn.train.config import TEST_IMAGES, TrainConfig, flags

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
KEYWORD_ONLY = inspect.Parameter.KEYWORD_ONLY

MAX_EPS_VALUES = 100  # a curve of --eps values; more would only take longer
SANITY_SUBSET = 500  # images for the 2x stronger ensemble of --sanity (4x the cost)

CHECKPOINT_HELP = (
    "A checkpoint file written by train, or the name of a pretrained network "
    "(scratchcnn models lists the shipped ones)."
)


@app.callback()
def main() -> None:
    """A convolutional network written from scratch in NumPy/JAX, proven equal to Flax."""
    # An explicit callback keeps `scratchcnn data` a subcommand even while it is the
    # only one: with a single command, typer would otherwise make it the whole program.
    flag = empty_path_flag(sys.argv[1:])
    if flag:
        typer.secho(f"error: {flag} is empty; give a file or folder name.", fg="red", err=True)
        raise typer.Exit(code=1)


# Flags that take a path: an empty value would silently mean "." (the current folder).
PATH_FLAGS = ("--output", "-o", "--data-dir", "--kaggle", "--figure", "--save-examples",
              "--transfer-from", "--init")  # fmt: skip


def empty_path_flag(argv: list[str]) -> str | None:
    """The first path flag given an empty value (``--output ""`` or ``--output=``), if any."""
    for flag, value in zip(argv, [*argv[1:], None]):
        if flag in PATH_FLAGS and value == "":
            return flag
        if flag.endswith("=") and flag[:-1] in PATH_FLAGS:
            return flag[:-1]
    return None


# Writing to standard output can fail too: `> /dev/full`, or `| head` closing the pipe.
OUTPUT_FAILURES = (errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EDQUOT)


def reports_errors(command: Command) -> Command:
    """Turn a ScratchCNNError raised by ``command`` into one red line and exit code 1."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ScratchCNNError as error:
            typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code=1) from None
        except OSError as error:
            if error.errno not in OUTPUT_FAILURES:
                raise  # not ours to explain: keep the traceback
            typer.secho(f"error: cannot write the output: {os_reason(error)}.", err=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


class Interrupted(ScratchCNNError):
    """Ctrl-C: said in one line, like any other reason to stop."""


def stop_like_ctrl_c(signum, frame) -> None:
    raise KeyboardInterrupt


def echo_json(payload: Any) -> None:
    """Print ``payload`` as JSON; NaN and infinities become null (JSON has neither)."""
    typer.echo(json_text(payload), nl=False)


def check_between(flag: str, value: float, low: float, high: float) -> None:
    """Refuse a number option outside [low, high]; NaN is outside every range."""
    if not low <= value <= high:
        raise InputError(f"{flag} must be from {low:g} to {high:g}, got {value}.")


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
            help="Folder holding the four MNIST .gz files (the only one searched).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of text.")
    ] = False,
) -> None:
    """Find MNIST, verify its SHA-256 digests and count images, labels and classes.

    Looks only in --data-dir when given, else only in $SCRATCHCNN_DATA_DIR when set,
    else in the per-user cache ($SCRATCHCNN_CACHE_DIR), downloading through
    tensorflow-datasets only when the cache is empty.
    """
    summary = summarize_mnist(find_mnist(data_dir))
    if as_json:
        echo_json(summary)
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
        int,
        typer.Option("--batch-size", help="Real MNIST test images per model check (1 to 10000)."),
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

    check_between("--batch-size", batch_size, 1, TEST_IMAGES)
    for name in model_names or []:
        models.build(name)  # an unknown name fails here, before any work
    images, labels = p.mnist_batch(batch_size, data_dir)
    rows = p.parity_rows(images, labels, model_names=model_names)
    if as_json:
        echo_json([row.as_dict() for row in rows])
    else:
        typer.echo(p.format_table(rows))
    failed = [row for row in rows if not row.ok]
    if failed:
        names = ", ".join(f"{row.name} ({row.dtype})" for row in failed)
        typer.secho(f"error: parity above tolerance for {names}.", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1)
    if not as_json:
        typer.echo(f"all {len(rows)} rows within tolerance (float32 <= 1e-5, float64 <= 1e-10)")


# --------------------------------------------------------------------------- models


@app.command(name="models", epilog="Example: scratchcnn models --json")
@reports_errors
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List the registered architectures, and the pretrained networks scratchcnn ships."""
    from scratchcnn import models as registry
    from scratchcnn import pretrained
    from scratchcnn.layers import count_params

    shipped = {name: pretrained.manifest()[name] for name in pretrained.available()}
    rows = []
    for name in sorted(registry.MODELS):
        model = registry.build(name)
        params, _ = model.init(0)
        summary = (registry.MODELS[name].__doc__ or "").strip().splitlines()[0]
        trained = [n for n, record in shipped.items() if record["architecture"] == name]
        rows.append({"name": name, "parameters": count_params(params), "summary": summary,
                     "pretrained": trained})  # fmt: skip
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['name']:<10} {row['parameters']:>9,}  {row['summary']}")
    typer.echo("\npretrained networks (use the name wherever a checkpoint goes):")
    for name, record in shipped.items():
        accuracy = f"{record['test_accuracy']:.2%} test accuracy"
        typer.echo(f"{name:<10} {record['architecture']:<10} {accuracy}  {record['description']}")


# --------------------------------------------------------------------------- train


def _option(help_text: str, *names: str, **kw):
    """A typer option whose default (None) means "the recipe's value"."""
    return typer.Option(*names, help=help_text, show_default=False, **kw)


def with_config_options(config_class) -> Callable[[Command], Command]:
    """Give a command that takes ``**options`` one ``--flag`` per field of ``config_class``.

    typer reads a command's options from its signature, so we write that signature: the
    command's own parameters, with the config's fields after the first one.
    """

    def add(command: Command) -> Command:
        own = list(inspect.signature(command, eval_str=True).parameters.values())
        own = [p.replace(kind=KEYWORD_ONLY) for p in own if p.kind is not p.VAR_KEYWORD]
        parameters = [*own[:1], *config_options(config_class), *own[1:]]
        command.__signature__ = inspect.Signature(parameters)
        return command

    return add


def config_options(config_class) -> list[inspect.Parameter]:
    """One option per field of a dataclass such as ``TrainConfig``: its flags and help text
    from the field's metadata (``scratchcnn.train.config.option``), its type from the
    annotation. Every default is None, "the recipe's value"; the config's ``validate``
    checks the values (so a library caller gets the same checks)."""
    hints = typing.get_type_hints(config_class)
    options = []
    for field in dataclasses.fields(config_class):
        option = _option(field.metadata["help"], *flags(field))
        kind = _flag_type(hints[field.name])
        options.append(inspect.Parameter(field.name, KEYWORD_ONLY, default=None,
                                         annotation=Annotated[kind | None, option]))  # fmt: skip
    return options


def _flag_type(hint) -> type:
    """The type typer parses a flag as: int | None -> int; tuple[int, ...] -> str ("5,8")."""
    if typing.get_origin(hint) is tuple:
        return str
    return next(t for t in typing.get_args(hint) or (hint,) if t is not type(None))


def _config_values(config_class, options: dict) -> dict:
    """The options given on the command line (not None), as the config's fields take them."""
    hints = typing.get_type_hints(config_class)
    values = {}
    for field in dataclasses.fields(config_class):
        value = options[field.name]
        if value is not None and typing.get_origin(hints[field.name]) is tuple:
            value = _parse_tuple(value, typing.get_args(hints[field.name])[0], flags(field)[0])
        if value is not None:
            values[field.name] = value
    return values


def _parse_tuple(text: str, item: type, flag: str) -> tuple:
    """ "5,8" -> (5, 8) for a tuple[int, ...] field."""
    try:
        return tuple(item(part.strip()) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{flag} takes comma-separated numbers like 5,8; got {text!r}."
        ) from None


@app.command(
    epilog=(
        "Examples: scratchcnn train  (the default network, about 2 minutes)  |  "
        "scratchcnn train --recipe best --seed 1 --output runs/best-1  |  "
        "scratchcnn train --model lenet --epochs 10 --optimizer sgd --lr 0.01 "
        "--schedule constant --backend jax --output runs/lenet  |  "
        "scratchcnn train --output runs/lenet --resume ..."
    )
)
@with_config_options(TrainConfig)
@reports_errors
def train(
    recipe: Annotated[
        str,
        typer.Option(
            "--recipe",
            help="Start from a recipe: default, best, a seed network's (lenet, flax_cnn, "
            "bn_cnn, keras_cnn), or a recipe file (FILE.json, as scratchcnn tune writes); "
            "the options below override it.",
        ),
    ] = "default",
    output: Annotated[
        Path | None, _option("Folder for checkpoints and history.", "--output", "-o")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace the run in --output (its last.npz, best.npz and history.json) "
            "instead of refusing.",
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, _option("Folder holding the four MNIST .gz files.", "--data-dir")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    **options: Any,
) -> None:
    """Train a network on MNIST and print its test accuracy.

    Every option not given comes from --recipe ("default": 2 epochs, under 2 minutes
    on two cores; "best": our best single network, see RESULTS.md). With --output, the
    best and last checkpoints and the history are written there after every epoch;
    --resume continues that run exactly where it stopped.
    """
    from scratchcnn.train import train as run_training

    config = dataclasses.replace(load_recipe(recipe), **_config_values(TrainConfig, options))
    config.validate()  # before any data is read
    signal.signal(signal.SIGTERM, stop_like_ctrl_c)  # `kill`: the same clean stop as Ctrl-C
    try:
        result = run_training(
            config,
            data_dir=data_dir,
            output_dir=output,
            resume=resume,
            overwrite=overwrite,
            progress=not (quiet or as_json),
            log=(lambda text: None) if as_json else typer.echo,
        )
    except KeyboardInterrupt:
        kept = f"{output} keeps every finished epoch (continue with --resume)" if output else (
            "nothing was saved (no --output)")  # fmt: skip
        raise Interrupted(f"interrupted; {kept}.") from None
    if as_json:
        echo_json(result.summary())
    else:
        typer.echo(
            f"test accuracy {result.test.accuracy:.2%} (loss {result.test.loss:.4f}) after "
            f"{len(result.history)} epoch{'s' * (len(result.history) != 1)}, "
            f"{result.train_seconds:.0f} s of training"
        )


def load_recipe(recipe: str) -> TrainConfig:
    """--recipe: a named recipe (RECIPES), or a recipe file (.json) such as tune writes."""
    from scratchcnn.train import RECIPES

    if recipe in RECIPES:
        return RECIPES[recipe]
    if recipe.endswith(".json") or Path(recipe).is_file():
        from scratchcnn.tune import read_recipe

        return read_recipe(Path(recipe))
    raise typer.BadParameter(
        f"unknown recipe {recipe!r}; choose one of: {', '.join(RECIPES)}, or a recipe file "
        "(FILE.json).",
        param_hint="--recipe",
    )


# --------------------------------------------------------------------------- tune


@app.command(
    epilog=(
        "Examples: scratchcnn tune --n-trials 20 --output runs/tune  "
        "(then: scratchcnn train --recipe runs/tune/recipe.json)  |  "
        "scratchcnn tune --space space.json --sampler random --pruner none  |  "
        "run the same command again to continue a stopped search"
    )
)
@reports_errors
def tune(
    n_trials: Annotated[
        int,
        typer.Option(
            "--n-trials",
            help="Trials the study should hold (failed ones count, interrupted ones not).",
        ),
    ] = 20,
    space_file: Annotated[
        Path | None,
        _option(
            "Search space, a JSON object: {name: {low, high[, log]} or {choices: [...]}} "
            "(default: scratchcnn.tune.SPACE).",
            "--space",
        ),
    ] = None,
    recipe: Annotated[
        str, typer.Option("--recipe", help="The recipe the trials start from.")
    ] = "default",
    epochs: Annotated[int, typer.Option("--epochs", help="Epochs per trial.")] = 3,
    train_limit: Annotated[
        int, typer.Option("--train-limit", help="Training images per trial.")
    ] = 2000,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of training images to validate on.")
    ] = 0.02,
    backend: Annotated[str, typer.Option("--backend", help="numpy or jax.")] = "numpy",
    sampler: Annotated[str, typer.Option("--sampler", help="tpe or random.")] = "tpe",
    pruner: Annotated[
        str, typer.Option("--pruner", help="none, halving or hyperband.")
    ] = "halving",
    seed: Annotated[int, typer.Option("--seed", help="The sampler's seed.")] = 0,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for the study and recipe.json.")
    ] = Path("runs/tune"),
    storage: Annotated[
        Path | None, _option("The study's SQLite file (default: OUTPUT/study.db).", "--storage")
    ] = None,
    study_name: Annotated[str, typer.Option("--study-name", help="The study's name.")] = "tune",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUTPUT/recipe.json.")
    ] = False,
    data_dir: Annotated[
        Path | None, _option("Folder holding the four MNIST .gz files.", "--data-dir")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
) -> None:
    """Search hyperparameters with Optuna; write the best trial as a recipe file.

    Each trial trains on --train-limit images for --epochs and is scored by its
    validation accuracy (never the test set); the pruner stops trials that trail
    after an epoch. The study is kept in --storage, so running the same command
    again continues it.
    """
    import json

    from scratchcnn import tune as t
    from scratchcnn.data.mnist import find_mnist

    check_between("--n-trials", n_trials, 1, t.MAX_TRIALS)
    if not 0 <= seed < 2**32:  # NumPy's generators take unsigned 32-bit seeds
        raise InputError(f"--seed must be from 0 to {2**32 - 1}, got {seed}.")
    if val_fraction == 0:
        raise InputError("tune scores trials on validation images; give --val-fraction above 0.")
    base = dataclasses.replace(load_recipe(recipe), epochs=epochs, train_limit=train_limit,
                               val_fraction=val_fraction, backend=backend).validate()  # fmt: skip
    space = t.SPACE
    if space_file is not None:
        try:
            space = json.loads(space_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise t.TuneError(f"cannot read the search space {space_file}: {error}.") from None
    t.check_space(space, base)
    samplers = t.make_sampler(sampler, seed), t.make_pruner(pruner, epochs)
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output} is not a folder.")
    recipe_path = output / "recipe.json"
    if output.is_dir():  # refuse now, not after an hour of trials
        check_output_file(recipe_path, overwrite=overwrite, flag="--output")
    if storage is None:
        storage = output / "study.db"  # a new file when the folder is new
    else:
        t.check_storage(storage)
    if base.dataset == "mnist":
        find_mnist(data_dir)  # missing data stops here, before a study file exists
    if storage.parent == output:
        output.mkdir(parents=True, exist_ok=True)
    study = t.open_study(storage, study_name, base, space, *samplers)
    output.mkdir(parents=True, exist_ok=True)  # only once the study opened
    if study.trials:  # continued: a seed of its own, or it would draw the same trials again
        study.sampler = t.make_sampler(sampler, seed, len(study.trials))
    done = len(t.finished(study))
    if done and not as_json:
        typer.echo(f"continuing the study in {storage}: {done} trials finished")

    def show(study, trial):
        if not as_json:
            complete = [x.value for x in t.finished(study) if x.value is not None]
            typer.echo(t.describe_trial(trial, max(complete, default=None)))

    signal.signal(signal.SIGTERM, stop_like_ctrl_c)
    try:
        t.search(study, base, space, n_trials, data_dir=data_dir, on_trial=show)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted; {storage} keeps every finished trial (run the same command to continue)."
        ) from None
    best = t.best_recipe(study, base)
    t.write_recipe(recipe_path, best, overwrite=overwrite)
    summary = {"study": str(storage), "trials": len(t.finished(study)),
               "best_trial": study.best_trial.number, "best_val_accuracy": study.best_value,
               "best_params": study.best_trial.params, "recipe": str(recipe_path)}  # fmt: skip
    if as_json:
        echo_json(summary)
        return
    typer.echo(
        f"best trial {summary['best_trial']}: validation accuracy {study.best_value:.2%}; "
        f"wrote {recipe_path} (train it: scratchcnn train --recipe {recipe_path})"
    )


# --------------------------------------------------------------------------- evaluate


@app.command(
    epilog=(
        "Examples: scratchcnn evaluate default  (a pretrained network)  |  "
        "scratchcnn evaluate runs/default/best.npz --json --misclassified 20"
    )
)
@reports_errors
def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP)],
    data_dir: Annotated[
        Path | None, _option("Folder holding the four MNIST .gz files.", "--data-dir")
    ] = None,
    misclassified: Annotated[
        int, typer.Option("--misclassified", min=0, help="List this many test mistakes.")
    ] = 10,
    model_name: Annotated[
        str | None, _option("Refuse a checkpoint of any other architecture.", "--model")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON.")] = False,
) -> None:
    """Evaluate a checkpoint on the 10,000 MNIST test images.

    Prints accuracy, loss, expected calibration error, the confusion matrix, the
    per-class precision/recall/F1 report and the most confident mistakes.
    """
    from scratchcnn.checkpoint import load_for_model
    from scratchcnn.data.mnist import load_mnist
    from scratchcnn.inference import predict_logits
    from scratchcnn.metrics import evaluate_logits

    model, ckpt = load_for_model(checkpoint, model_name)
    images, labels = load_mnist("test", data_dir)
    evaluation = evaluate_logits(predict_logits(model, ckpt.params, ckpt.state, images), labels)
    if as_json:
        echo_json({"checkpoint": str(checkpoint), **evaluation.to_json()})
        return
    config = ckpt.info.get("config")
    trained_on = config.get("dataset", "mnist") if isinstance(config, dict) else "mnist"
    other = f" (it was trained on {trained_on})" if trained_on != "mnist" else ""
    typer.echo(f"{checkpoint} ({ckpt.model_name}) on the MNIST test set{other}")
    typer.echo(evaluation.format())
    if misclassified:
        typer.echo(f"most confident mistakes (of {len(evaluation.misclassified)}):")
        for item in evaluation.misclassified[:misclassified]:
            typer.echo(
                f"  test image {item['index']:>5}: label {item['label']}, "
                f"predicted {item['prediction']} ({item['confidence']:.1%})"
            )


# --------------------------------------------------------------------------- predict


@app.command(
    epilog=(
        "Examples: scratchcnn predict best my_digit.png  (a pretrained network)  |  "
        "scratchcnn predict runs/default/best.npz my_digit.png  |  "
        "scratchcnn predict best.npz a.jpg b.png --json  |  "
        "scratchcnn predict best.npz --kaggle test.csv --output submission.csv"
    )
)
@reports_errors
def predict(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP)],
    images: Annotated[
        list[Path] | None, typer.Argument(help="Image files (any format Pillow reads).")
    ] = None,
    kaggle: Annotated[
        Path | None, _option("Kaggle Digit Recognizer test.csv to label.", "--kaggle")
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Where --kaggle writes the submission.")
    ] = Path("submission.csv"),
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing --output file.")
    ] = False,
    model_name: Annotated[
        str | None, _option("Refuse a checkpoint of any other architecture.", "--model")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print predictions as JSON.")] = False,
) -> None:
    """Read handwritten digits and print what the network sees.

    Each image is made to look like MNIST first: grayscale, inverted if dark on light,
    cropped to the ink, fitted in 20x20 and centred by centre of mass in 28x28.
    """
    from scratchcnn.checkpoint import load_for_model
    from scratchcnn.inference import predict_probabilities

    if not images and kaggle is None:
        raise typer.BadParameter("give at least one IMAGE, or --kaggle test.csv.")
    if images and kaggle is not None:
        raise typer.BadParameter("give IMAGE files or --kaggle, not both.")
    if kaggle is not None:
        from scratchcnn.data.kaggle import read_kaggle_test_csv, write_submission

        check_output_file(output, overwrite=overwrite, inputs=(kaggle, checkpoint), flag="--output")
        digits = read_kaggle_test_csv(kaggle)
        model, ckpt = load_for_model(checkpoint, model_name)
        probs = predict_probabilities(model, ckpt.params, ckpt.state, digits)
        write_submission(output, probs.argmax(axis=1))
        if as_json:
            echo_json({"output": str(output), "predictions": len(digits)})
        else:
            typer.echo(f"wrote {len(digits):,} prediction{'s' * (len(digits) != 1)} to {output}")
        return
    from scratchcnn.data.images import prepare_images

    model, ckpt = load_for_model(checkpoint, model_name)
    digits = prepare_images(images)
    probs = predict_probabilities(model, ckpt.params, ckpt.state, digits)
    rows = [
        {
            "image": str(path),
            "digit": int(p.argmax()),
            "probabilities": [round(float(v), 6) for v in p],
        }
        for path, p in zip(images, probs)
    ]
    if as_json:
        echo_json(rows)
        return
    for row in rows:
        top = row["probabilities"][row["digit"]]
        spread = "  ".join(f"{d}:{v:.2f}" for d, v in enumerate(row["probabilities"]))
        typer.echo(f"{row['image']}: {row['digit']} ({top:.1%})   {spread}")


# --------------------------------------------------------------------------- export


@app.command(
    epilog=(
        "Examples: scratchcnn export runs/default/best.npz  (writes best.onnx here)  |  "
        "scratchcnn export best.npz --output site/mnist.onnx --features --overwrite  |  "
        "scratchcnn export best.npz --layout nchw --no-softmax --json  |  "
        "scratchcnn export default --int8 --output default-int8.onnx"
    )
)
@reports_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP)],
    fmt: Annotated[str, typer.Option("--format", help="The file format: onnx.")] = "onnx",
    output: Annotated[
        Path | None, _option("Where to write (default: <name>.onnx here).", "--output", "-o")
    ] = None,
    force: Annotated[
        bool, typer.Option("--overwrite", "--force", help="Replace an existing file.")
    ] = False,
    no_softmax: Annotated[
        bool, typer.Option("--no-softmax", help="Leave out the probabilities output.")
    ] = False,
    features: Annotated[
        bool, typer.Option("--features", help="Add the first ReLU's feature maps as an output.")
    ] = False,
    layout: Annotated[
        str, typer.Option("--layout", help="Input layout: nhwc (N, 28, 28, 1) or nchw.")
    ] = "nhwc",
    int8: Annotated[
        bool, typer.Option("--int8", help="Quantize: int8 weights and activations (QDQ).")
    ] = False,
    calibration: Annotated[
        int, typer.Option("--calibration", min=1, help="--int8: training images to calibrate on.")
    ] = 1000,
    data_dir: Annotated[
        Path | None, _option("--int8: folder holding the four MNIST .gz files.", "--data-dir")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Export a checkpoint as an ONNX model that onnxruntime (and the browser) can run.

    The graph takes float32 pixels in [0, 1] (ink 1, background 0), standardizes them
    itself, and outputs logits and probabilities. BatchNorm is folded into the layer
    before it; the source checkpoint's SHA-256 is recorded in the model's metadata.
    --int8 stores int8 weights (one scale per output channel) and rounds every layer's
    input to int8 with a scale calibrated on the first --calibration training images.
    """
    from scratchcnn.checkpoint import load_for_model
    from scratchcnn.data.mnist import sha256_file
    from scratchcnn.export import FORMATS, ExportError, build_onnx, check_target, save_onnx

    if fmt.lower() not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    check_between("--calibration", calibration, 1, 60_000)  # MNIST's training images
    if not int8 and (calibration != 1000 or data_dir is not None):
        raise ExportError("--calibration and --data-dir only apply with --int8.")
    target = output if output is not None else Path(f"{Path(checkpoint).stem}.onnx")
    check_target(target, force=force)  # refuse before the work, and again when writing
    model, ckpt = load_for_model(checkpoint)
    if target.resolve() == ckpt.path.resolve():
        raise ExportError(f"{target} is the checkpoint being exported; choose another --output.")
    source = {"source_checkpoint": ckpt.path.name, "source_sha256": sha256_file(ckpt.path)}
    if int8:
        source["quantization"] = (
            f"int8 QDQ: per-output-channel symmetric int8 weights, int32 biases, int8 "
            f"activations (zero point 0) with scales calibrated on the first "
            f"{min(calibration, 60_000)} MNIST training images"
        )
    onnx_model = build_onnx(model, ckpt.params, ckpt.state, model_name=ckpt.model_name,
                            softmax=not no_softmax, features=features,
                            layout=layout.lower(), metadata=source)  # fmt: skip
    if int8:
        from scratchcnn.data.mnist import load_mnist
        from scratchcnn.quantize import quantize_network, quantized_onnx

        train_images, _ = load_mnist("train", data_dir)
        qnet = quantize_network(model, ckpt.params, ckpt.state, train_images[:calibration])
        onnx_model = quantized_onnx(onnx_model, qnet)
    save_onnx(onnx_model, target, force=force)
    graph = onnx_model.graph
    shapes = {
        v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    summary = {"output": str(target), "format": "onnx", "int8": int8,
               "bytes": target.stat().st_size,
               "architecture": ckpt.model_name, "opset": onnx_model.opset_import[0].version,
               "inputs": {v.name: shapes[v.name] for v in graph.input},
               "outputs": {v.name: shapes[v.name] for v in graph.output}}  # fmt: skip
    if as_json:
        echo_json(summary)
        return

    def listing(names: dict) -> str:
        return ", ".join(f"{n} ({', '.join(map(str, shape))})" for n, shape in names.items())

    typer.echo(
        f"wrote {target} ({summary['bytes'] / 1e6:.2f} MB, {'int8 ' if int8 else ''}ONNX "
        f"opset {summary['opset']}, "
        f"{ckpt.model_name}): input {listing(summary['inputs'])}; "
        f"outputs {listing(summary['outputs'])}"
    )


# --------------------------------------------------------------------------- attack


@app.command(
    epilog=(
        "Examples: scratchcnn attack runs/default/best.npz --attack fgsm  |  "
        "scratchcnn attack best.npz --attack pgd --eps 0,0.1,0.2,0.3 --steps 40 "
        "--figure acc.png --save-examples grid.png  |  "
        "scratchcnn attack best.npz --sanity --limit 1000 --transfer-from other.npz"
    )
)
@reports_errors
def attack(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP)],
    method: Annotated[
        str,
        typer.Option(
            "--attack",
            help="fgsm, pgd, apgd-ce, apgd-t (targeted DLR, 9 targets), square (no gradients), "
            "or autoattack (apgd-ce, apgd-t, square in turn, each example's worst case).",
        ),
    ] = "fgsm",
    eps: Annotated[
        str, typer.Option("--eps", help="Comma-separated L-infinity budgets.")
    ] = "0,0.05,0.1,0.15,0.2,0.25,0.3",
    steps: Annotated[
        int | None,
        typer.Option("--steps", help="PGD/APGD steps, 1 to 10000 (default: PGD 40, APGD 100)."),
    ] = None,
    queries: Annotated[
        int, typer.Option("--queries", help="Square: queries per image (1 to 100000).")
    ] = 5000,
    loss: Annotated[
        str, typer.Option("--loss", help="What FGSM/PGD climb: ce, cw (margin) or dlr.")
    ] = "ce",
    step_size: Annotated[
        float, typer.Option("--step-size", help="PGD step size, in (0, 1].")
    ] = 0.01,
    restarts: Annotated[int, typer.Option("--restarts", help="PGD restarts (1 to 100).")] = 1,
    grad: Annotated[
        str, typer.Option("--grad", help="jax (jax.grad, jitted) or manual (our backward).")
    ] = "jax",
    limit: Annotated[int | None, _option("Attack the first N test images only.", "--limit")] = None,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size",
            help="Images attacked together (1 to 10000); a --record's batches, and part of "
            "what it records (its random streams).",
        ),
    ] = 500,  # AttackConfig.batch_size
    sanity: Annotated[
        bool, typer.Option("--sanity", help="Run the checks against gradient masking.")
    ] = False,
    transfer_from: Annotated[
        Path | None, _option("Another checkpoint, for the transfer check.", "--transfer-from")
    ] = None,
    figure: Annotated[Path | None, _option("Write the accuracy-vs-eps plot.", "--figure")] = None,
    save_examples: Annotated[
        Path | None, _option("Write a grid of clean/perturbation/adversarial.", "--save-examples")
    ] = None,
    record: Annotated[
        Path | None,
        _option(
            "Save each finished batch to this JSON file, so --resume can continue.", "--record"
        ),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the evaluation the --record file holds.")
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace existing --figure, --save-examples, --record files."
        ),
    ] = False,
    data_dir: Annotated[
        Path | None, _option("Folder holding the four MNIST .gz files.", "--data-dir")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Accuracy of a checkpoint under attack, eps by eps (L-infinity, pixels in [0, 1]).

    The network is attacked in eval mode, on its logits, with labels from the test set.
    --sanity adds the checks that tell robustness from gradient masking, around the
    autoattack ensemble at the largest --eps (its 2x stronger run and eps 0.5 on the first
    500 images), and exits with status 1 if one fails.
    """
    from scratchcnn import attack_record, robustness, viz
    from scratchcnn.checkpoint import load_for_model
    from scratchcnn.data.mnist import load_mnist
    from scratchcnn.data.preprocess import to_unit_nhwc

    eps_values = _parse_floats(eps, "--eps")
    ensemble_steps = steps or 100  # --sanity's ensemble: AutoAttack runs APGD for 100
    if steps is None:
        steps = 40 if method in ("fgsm", "pgd") else 100
    if transfer_from is not None and not sanity:
        raise InputError("--transfer-from is used by the --sanity checks only; add --sanity.")
    check_attack_options(eps_values, limit)
    check_between("--batch-size", batch_size, 1, TEST_IMAGES)
    if resume and record is None:
        raise InputError("--resume continues the evaluation of a --record file; add --record.")
    outputs = (("--figure", figure), ("--save-examples", save_examples), ("--record", record))
    for flag, path in outputs:
        if path is not None:  # refuse now, not after minutes of attacks
            inputs = (checkpoint, transfer_from)
            again = overwrite or (resume and flag == "--record")
            check_output_file(path, overwrite=again, inputs=inputs, flag=flag)
    if (
        figure is not None
        and save_examples is not None
        and figure.resolve() == save_examples.resolve()
    ):
        raise InputError("--figure and --save-examples name the same file; give two names.")
    config = robustness.AttackConfig(
        attack=method,
        steps=steps,
        step_size=step_size,
        restarts=restarts,
        grad=grad,
        queries=queries,
        loss=loss,
        batch_size=batch_size,
    ).validate()
    model, ckpt = load_for_model(checkpoint)
    source = None
    if transfer_from is not None:
        other, other_ckpt = load_for_model(transfer_from)
        source = (other, other_ckpt.params, other_ckpt.state)
    images, labels = load_mnist("test", data_dir)
    x = to_unit_nhwc(images[:limit])
    y = labels[:limit].astype(np.int64)
    params, state = ckpt.params, ckpt.state
    fooled_by = None  # the ensemble's outcomes at the largest eps, if the record holds them
    if record is None:
        curves = {method: robustness.accuracy_curve(model, params, state, x, y, eps_values, config)}
    else:
        ident = attack_record.identity((model, params, state), config, eps_values, x, y)
        progress = attack_record.open_record(record, ident, resume=resume)
        curves = attack_record.run((model, params, state), x, y, eps_values, config, progress,
                                   log=lambda line: typer.echo(line, err=True))  # fmt: skip
        if method == "autoattack":  # the same batches and streams --sanity would attack again
            fooled_by = progress.outcomes(max(eps_values))
    report = details = None
    if sanity:
        report, details = robustness.sanity_checks(
            model, params, state, x, y, max(eps_values),
            dataclasses.replace(config, steps=ensemble_steps),
            transfer_from=source, subset=SANITY_SUBSET, fooled_by=fooled_by,
        )  # fmt: skip
    result = {"checkpoint": str(checkpoint), "images": len(y), "config": config.__dict__,
              "curves": curves, "sanity": report.checks if report else None,
              "sanity_details": details}  # fmt: skip
    if figure is not None:
        viz.accuracy_vs_eps(curves, figure, title=f"{ckpt.model_name}, {len(y):,} test images")
    if save_examples is not None:
        worst = max(eps_values)
        adv = robustness.adversarial_examples(model, params, state, x[:8], y[:8], worst, config)
        viz.adversarial_grid(
            x[:8], adv, robustness.attacks.predict(model, params, state, x[:8]),
            robustness.attacks.predict(model, params, state, adv), save_examples,
        )  # fmt: skip
    if as_json:
        echo_json(result)
    else:
        for name, rows in curves.items():
            typer.echo(f"{name.upper()} on {len(y):,} test images ({ckpt.model_name})")
            for row in rows:
                typer.echo(f"  eps {row['eps']:<5g} accuracy {row['accuracy']:.2%}")
        if report:
            typer.echo(report.format())
    if report and not report.ok:
        raise typer.Exit(code=1)


# --------------------------------------------------------------------------- verify


@app.command(
    epilog=(
        "Examples: scratchcnn verify defended --eps 0,0.005,0.01,0.02  |  "
        "scratchcnn verify runs/robust-s0/best.npz --eps 0.01 --limit 1000 --json"
    )
)
@reports_errors
def verify(
    checkpoint: Annotated[Path, typer.Argument(help=CHECKPOINT_HELP)],
    eps: Annotated[
        str, typer.Option("--eps", help="Comma-separated L-infinity budgets.")
    ] = "0,0.005,0.01,0.02,0.05",
    limit: Annotated[int | None, _option("Verify the first N test images only.", "--limit")] = None,
    data_dir: Annotated[
        Path | None, _option("Folder holding the four MNIST .gz files.", "--data-dir")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Verified accuracy by interval bound propagation: a lower bound on robust accuracy.

    An image counts when interval arithmetic through every layer proves that no image
    within --eps of it (L-infinity, pixels in [0, 1]) changes the prediction from the
    true label. An attack's accuracy is an upper bound; the truth lies between the two.
    """
    from scratchcnn import verify as ibp
    from scratchcnn.checkpoint import load_for_model
    from scratchcnn.data.mnist import load_mnist
    from scratchcnn.data.preprocess import to_unit_nhwc

    eps_values = _parse_floats(eps, "--eps")
    check_attack_options(eps_values, limit)
    model, ckpt = load_for_model(checkpoint)
    images, labels = load_mnist("test", data_dir)
    x, y = to_unit_nhwc(images[:limit]), labels[:limit].astype(np.int64)
    rows = [{"eps": value, "verified_accuracy": ibp.verified_accuracy(model, ckpt.params,
             ckpt.state, x, y, value)} for value in eps_values]  # fmt: skip
    if as_json:
        echo_json({"checkpoint": str(checkpoint), "images": len(y), "rows": rows})
        return
    typer.echo(f"interval bound propagation on {len(y):,} test images ({ckpt.model_name})")
    for row in rows:
        typer.echo(f"  eps {row['eps']:<6g} verified {row['verified_accuracy']:.2%}")


def check_attack_options(eps_values, limit) -> None:
    """Refuse, before any work, the --eps and --limit values that would crash or mean
    nothing (AttackConfig.validate checks the rest)."""
    if len(eps_values) > MAX_EPS_VALUES:
        raise InputError(f"--eps takes at most {MAX_EPS_VALUES} values, got {len(eps_values)}.")
    for value in eps_values:  # L-infinity budgets: pixel changes, pixels are in [0, 1]
        check_between("--eps", value, 0, 1)
        if eps_values.count(value) > 1:
            raise InputError(f"--eps names {value:g} twice.")
    if limit is not None:
        check_between("--limit", limit, 1, TEST_IMAGES)


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        raise typer.BadParameter(f"{flag} takes comma-separated numbers; got {text!r}.") from None
    return values


if __name__ == "__main__":
    app()
