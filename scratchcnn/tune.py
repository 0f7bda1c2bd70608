"""Hyperparameter search with Optuna: which learning rate, batch size, width... train best?

Optuna is not the lesson, so we use it as it comes; what we write is the part that is ours:

- the **search space**: for each hyperparameter, a range (``{"low": 1e-4, "high": 1e-2,
  "log": true}``) or a list of choices (``{"choices": [32, 64, 128]}``), checked before any
  work (:func:`check_space`);
- the **objective**: one trial trains a network with the values Optuna suggests and returns
  its validation accuracy. After every epoch it reports that accuracy, so a *pruner* can
  stop a trial that is clearly behind the others at the same epoch;
- the **study** lives in an SQLite file: every finished trial is on disk, so a search that
  was stopped continues where it was when run again;
- the **recipe**: the best trial's ``TrainConfig`` as a JSON file that
  ``scratchcnn train --recipe FILE`` reads (:func:`read_recipe` checks it).

The test set is never looked at: a trial stops ``train()`` right after its last epoch,
before ``train()`` would measure the test images.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import time
import typing
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import sqlalchemy.exc

from scratchcnn import models
from scratchcnn.errors import ScratchCNNError
from scratchcnn.files import check_output_file, check_regular_file, write_atomically
from scratchcnn.train import TrainConfig, train
from scratchcnn.train.loop import TrainingDiverged

optuna.logging.set_verbosity(optuna.logging.WARNING)  # we print our own line per trial

MAX_TRIALS = 10_000


class TuneError(ScratchCNNError, ValueError):
    """A search space, a study file or a recipe file that cannot be used."""


# --8<-- [start:space]
# The type of each searchable hyperparameter (float, int or str). width and dropout are
# options of the network (its name carries them: "default(width=1.5,dropout=0.2)"); the
# others are TrainConfig fields of the same name.
PARAMETERS = {
    "learning_rate": float,
    "batch_size": int,
    "weight_decay": float,
    "dropout": float,
    "width": float,
    "augment": str,
    "label_smoothing": float,
}
MODEL_OPTIONS = ("width", "dropout")

# The search space `scratchcnn tune` uses without --space.
SPACE = {
    "learning_rate": {"low": 3e-4, "high": 3e-2, "log": True},
    "batch_size": {"choices": [32, 64, 128, 256]},
    "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
    "dropout": {"low": 0.0, "high": 0.6},
    "width": {"low": 0.5, "high": 1.5},
    "augment": {"choices": ["none", "affine", "elastic"]},  # no, mild and strong distortion
    "label_smoothing": {"low": 0.0, "high": 0.2},
}
# --8<-- [end:space]


def check_space(space, base: TrainConfig) -> dict:
    """Refuse, in one sentence, a search space that is empty, names an unknown
    hyperparameter, has a range whose low is above its high (or a log range reaching 0),
    or has a value that ``base`` cannot train with. Returns the space."""
    if not isinstance(space, dict) or not space:
        raise TuneError("the search space is empty; give at least one hyperparameter to search.")
    for name, spec in space.items():
        if name not in PARAMETERS:
            raise TuneError(
                f"the search space names {name!r}; searchable: {', '.join(PARAMETERS)}."
            )
        for value in _spec_values(name, spec):
            try:
                trial_config(base, {name: value}).validate()
            except ScratchCNNError as error:
                message = f"the search space's {name} = {value!r} cannot train: {error}"
                raise TuneError(message) from None
    return space


def _spec_values(name: str, spec) -> list:
    """The values a spec can reach at its edges: both ends of a range, every choice."""
    kind = PARAMETERS[name]
    where = f"the search space's {name}"
    if isinstance(spec, dict) and set(spec) == {"choices"}:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise TuneError(f"{where} has no choices; list at least one.")
        if not all(_is_kind(c, kind) for c in choices) or len(set(choices)) < len(choices):
            raise TuneError(f"{where} choices must be distinct {kind.__name__} values.")
        return choices
    if not (isinstance(spec, dict) and {"low", "high"} <= set(spec) <= {"low", "high", "log"}):
        raise TuneError(f"{where} must be {{'low': ..., 'high': ...}} or {{'choices': [...]}}.")
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    if kind is str or not (_is_kind(low, kind) and _is_kind(high, kind) and log in (True, False)):
        raise TuneError(f"{where} range needs {kind.__name__} low and high (and log true/false).")
    if low > high:
        raise TuneError(f"{where} range is empty: low {low} is above high {high}.")
    if log and low <= 0:
        raise TuneError(f"{where} is a log range, so low must be above 0, got {low}.")
    return [low, high]


def _is_kind(value, kind: type) -> bool:
    """Is a JSON value a float (any finite number), an int (not a bool) or a str?"""
    if kind is str:
        return isinstance(value, str)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    return isinstance(value, numbers.Integral) if kind is int else math.isfinite(value)


# --8<-- [start:objective]
def suggest(trial: optuna.Trial, space: dict) -> dict:
    """One value per searched hyperparameter, drawn by the study's sampler."""
    values = {}
    for name, spec in space.items():
        if "choices" in spec:
            values[name] = trial.suggest_categorical(name, spec["choices"])
        elif PARAMETERS[name] is int:
            low, high, log = spec["low"], spec["high"], spec.get("log", False)
            values[name] = trial.suggest_int(name, low, high, log=log)
        else:
            low, high, log = float(spec["low"]), float(spec["high"]), spec.get("log", False)
            values[name] = trial.suggest_float(name, low, high, log=log)
    return values


def trial_config(base: TrainConfig, values: dict) -> TrainConfig:
    """``base`` with the suggested values: width and dropout go into the model's name."""
    name, options = models.parse_name(base.model)
    options |= {k: round(float(v), 3) for k, v in values.items() if k in MODEL_OPTIONS}
    if options:
        name += "(" + ",".join(f"{k}={v:g}" for k, v in options.items()) + ")"
    fields = {k: v for k, v in values.items() if k not in MODEL_OPTIONS}
    return dataclasses.replace(base, model=name, **fields)


class LastEpoch(Exception):
    """Raised after a trial's last epoch: ends train() before it looks at the test set."""


def objective(trial: optuna.Trial, base: TrainConfig, space: dict, data_dir=None) -> float:
    """Train with the suggested values; return the last epoch's validation accuracy.

    After each epoch the validation accuracy is reported to the pruner, which may stop a
    trial that trails the others at that epoch (``optuna.TrialPruned``)."""
    config = trial_config(base, suggest(trial, space))
    trial.set_user_attr("model", config.model)
    started = time.process_time()  # CPU seconds of this process, all its threads

    def on_epoch(run, record):
        trial.set_user_attr("cpu_seconds", time.process_time() - started)
        trial.report(record["val_accuracy"], record["epoch"])
        if record["epoch"] == config.epochs or run.stopped_early:
            raise LastEpoch(record["val_accuracy"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"behind the others after epoch {record['epoch']}")

    try:
        train(config, data_dir=data_dir, progress=False, log=lambda _: None, on_epoch=on_epoch)
    except LastEpoch as last:
        return last.args[0]
    raise AssertionError("train() ended without its last epoch")  # cannot happen


# --8<-- [end:objective]


# --------------------------------------------------------------------------- the study


def make_sampler(name: str, seed: int, trials_so_far: int = 0) -> optuna.samplers.BaseSampler:
    """random: every trial drawn independently; tpe: drawn where good trials were.

    ``trials_so_far``: a continued study gets a seed of its own, derived from ``seed``
    and its number of trials, or it would draw again the very trials it already ran.
    """
    if trials_so_far:
        seed = int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    raise TuneError(f"unknown sampler {name!r}; choose tpe or random.")


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """none; halving: after epochs 1, 3, 9... keep the best third; hyperband: several
    halving schedules side by side, from eager to patient."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs)
    raise TuneError(f"unknown pruner {name!r}; choose none, halving or hyperband.")


def check_storage(path: Path) -> None:
    """The study file's folder must exist, and the path must not be a folder."""
    path = Path(path)
    if not path.parent.is_dir():
        raise TuneError(
            f"cannot keep the study in {path}: the folder {path.parent} does not exist."
        )
    if path.exists() and not path.is_file():
        raise TuneError(f"cannot keep the study in {path}: it is not a file.")


def open_study(
    storage: Path, name: str, base: TrainConfig, space: dict, sampler, pruner
) -> optuna.Study:
    """Create the study in ``storage`` (SQLite), or load it to continue it. A trial left
    running by a search that was killed is marked failed; a study made with another
    search space or base recipe is refused (its trials would not compare)."""
    try:
        rdb = optuna.storages.RDBStorage(f"sqlite:///{Path(storage).resolve()}")
        study = optuna.create_study(
            study_name=name,
            storage=rdb,
            sampler=sampler,
            pruner=pruner,
            direction="maximize",
            load_if_exists=True,
        )
    except (sqlalchemy.exc.SQLAlchemyError, RuntimeError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise TuneError(f"cannot open the study in {storage}: {reason}.") from None
    made_with = {
        "space": space,
        "base": base.to_json(),  # and how it draws and stops trials:
        "sampler": type(sampler).__name__,
        "pruner": type(pruner).__name__,
    }
    if not study.user_attrs:  # a new study: remember what it searches
        for key, value in made_with.items():
            study.set_user_attr(key, value)
    elif {k: study.user_attrs.get(k) for k in made_with} != json.loads(json.dumps(made_with)):
        raise TuneError(
            f"the study {name!r} in {storage} searched another space or base recipe, or with "
            "another sampler or pruner; give another --storage or --study-name."
        )
    study_id = rdb.get_study_id_from_name(name)
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        rdb.set_trial_user_attr(trial_id, "interrupted", True)  # not counted: see counted()
        rdb.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
    return study


def finished(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran to their end or were pruned (not the failed ones)."""
    states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return study.get_trials(deepcopy=False, states=states)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count toward --n-trials: every one but those a stop interrupted."""
    return [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("interrupted")]


# --8<-- [start:search]
def search(
    study: optuna.Study,
    base: TrainConfig,
    space: dict,
    n_trials: int,
    *,
    cpu_budget: float | None = None,
    data_dir=None,
    on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
) -> optuna.Study:
    """Run trials until the study holds ``n_trials`` (a resumed study counts those it has;
    a failed trial, e.g. a learning rate that diverged, counts too, but not one a stop
    interrupted), or until ``cpu_budget`` CPU seconds are spent."""
    started = time.process_time()

    def after_trial(study, trial):
        if on_trial is not None:
            on_trial(study, trial)
        if cpu_budget is not None and time.process_time() - started >= cpu_budget:
            study.stop()

    study.optimize(
        lambda trial: objective(trial, base, space, data_dir),
        n_trials=max(0, n_trials - len(counted(study))),
        callbacks=[after_trial],
        catch=(TrainingDiverged,),  # a learning rate too high fails its trial, not the search
    )
    return study


# --8<-- [end:search]


def best_recipe(study: optuna.Study, base: TrainConfig) -> TrainConfig:
    """The best finished trial's TrainConfig: ``base`` with its values."""
    complete = [t for t in finished(study) if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise TuneError("no trial ran to its end, so there is no best recipe to write.")
    return trial_config(base, study.best_trial.params)


def describe_trial(trial: optuna.trial.FrozenTrial, best: float | None) -> str:
    """One line for the progress display: number, outcome, values, CPU time."""
    values = "  ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial.params.items()
    )
    cpu = trial.user_attrs.get("cpu_seconds", 0.0)
    if trial.state == optuna.trial.TrialState.COMPLETE:
        outcome = f"val {trial.value:.2%}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        outcome = f"pruned after epoch {trial.last_step}"
    else:
        outcome = "failed"
    best_text = f"  (best {best:.2%})" if best is not None else ""
    return f"trial {trial.number:>3}  {outcome}{best_text}  {cpu:.0f} CPU-s  {values}"


# --------------------------------------------------------------------------- recipe files


# --8<-- [start:recipe]
def write_recipe(path: Path, config: TrainConfig, overwrite: bool = False) -> None:
    """Write ``config`` as a recipe file, all at once; an existing file only if asked."""
    check_output_file(Path(path), overwrite=overwrite, flag="recipe")
    text = json.dumps(config.to_json(), indent=2) + "\n"
    write_atomically(path, lambda file: file.write(text.encode()))


def read_recipe(path: Path) -> TrainConfig:
    """A recipe file: a JSON object of TrainConfig fields (the missing ones keep their
    defaults). Unknown fields, values of the wrong type and bad values are refused."""
    path = Path(path)
    check_regular_file(path, "a recipe file", TuneError)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TuneError(f"recipe file {path} is not JSON: {error}.") from None
    if not isinstance(saved, dict):
        raise TuneError(f"recipe file {path} must hold a JSON object of training options.")
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(saved) - set(hints))
    if unknown:
        raise TuneError(f"recipe file {path} has unknown options: {', '.join(unknown)}.")
    for name, value in saved.items():
        if not _fits(value, hints[name]):
            raise TuneError(
                f"recipe file {path}: {name} must be {_type_words(hints[name])}, got {value!r}."
            )
    return TrainConfig.from_json(saved).validate()


# --8<-- [end:recipe]


def _fits(value, hint) -> bool:
    """Does a JSON value fit a TrainConfig annotation: bool, int, float, str, X | None,
    or tuple[X, ...] (a JSON list)?"""
    if typing.get_origin(hint) is tuple:
        item = typing.get_args(hint)[0]
        return isinstance(value, list) and all(_fits(v, item) for v in value)
    kinds = typing.get_args(hint) or (hint,)
    if value is None:
        return type(None) in kinds
    kind = next(k for k in kinds if k is not type(None))
    return isinstance(value, bool) if kind is bool else _is_kind(value, kind)


WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _type_words(hint) -> str:
    """int | None -> "an integer or null"; tuple[int, ...] -> "a list of: an integer"."""
    if typing.get_origin(hint) is tuple:
        return "a list of: " + _type_words(typing.get_args(hint)[0])
    kinds = typing.get_args(hint) or (hint,)
    text = WORDS[next(k for k in kinds if k is not type(None))]
    return text + " or null" if type(None) in kinds else text
