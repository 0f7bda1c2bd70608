"""The training loop: shuffled mini-batches -> the train step -> validation -> files.

``train`` runs whole epochs of ``train_one_epoch``; after each one it measures the
validation split, decides about early stopping and reduce-on-plateau (``after_epoch``)
and saves the run's folder. Every random draw depends only on ``(seed, epoch, stream)``
(``scratchcnn.train.data``), so a run resumed after epoch *k* ends with the same weights,
bit for bit, as the run that never stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from scratchcnn import attacks, models, optim
from scratchcnn.checkpoint import check_compatible, load_checkpoint
from scratchcnn.data.augment import AUGMENTATIONS, augment_batch
from scratchcnn.errors import ScratchCNNError
from scratchcnn.inference import without_overflow_warnings
from scratchcnn.layers import named_arrays
from scratchcnn.metrics import evaluate_logits
from scratchcnn.pretrained import resolve_checkpoint
from scratchcnn.train.config import TrainConfig
from scratchcnn.train.data import (
    AUGMENT,
    ROBUST_VALIDATION,
    SHUFFLE,
    Split,
    batches,
    epoch_rng,
    load_splits,
)
from scratchcnn.train.progress import ProgressBar, format_epoch
from scratchcnn.train.runs import (
    RunFolder,
    RunState,
    TrainResult,
    check_folder_options,
    prepare_output_dir,
)
from scratchcnn.train.step import evaluate_split, make_backend, make_run_optimizer, make_schedule

# on_step(run, loss, accuracy): called after every step, e.g. to record each step's loss.
OnStep = Callable[[RunState, float, float], None]
# on_epoch(run, record): called after each epoch is saved, with its history record; it may
# raise to end the run there (a hyperparameter search stops a hopeless trial this way).
OnEpoch = Callable[[RunState, dict], None]


# --8<-- [start:train]
def train(
    config: TrainConfig,
    *,
    data_dir=None,
    output_dir=None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_step: OnStep | None = None,
    on_epoch: OnEpoch | None = None,
) -> TrainResult:
    """Train ``config.model`` on ``config.dataset`` (MNIST unless it says "digits"),
    evaluate on the test set, return the result.

    ``output_dir`` receives checkpoints and the history; ``resume`` continues the run
    saved there, ``overwrite`` replaces it. With validation data, the best epoch's weights
    (lowest validation loss) are the ones evaluated and returned, unless ``config.keep``
    is "last".
    """
    config.validate()
    check_folder_options(output_dir, resume, overwrite)
    splits = load_splits(config, data_dir)  # before any folder is made: data may be missing
    model = models.build(config.model)
    initial = None if resume else initial_weights(model, config)  # a bad --init stops here
    path = prepare_output_dir(output_dir, resume, overwrite)
    folder = RunFolder(path, config, model, splits.checksums) if path else None
    steps_per_epoch = -(-len(splits.train) // config.batch_size)  # ceil
    schedule = make_schedule(config, steps_per_epoch)
    optimizer = make_run_optimizer(config, schedule, model)
    backend = make_backend(model, optimizer, config)  # our step; jax.jit on "jax"
    plateau = make_plateau(config)
    if resume:
        run = folder.resume(plateau)
        log(f"resuming {path} after epoch {run.epoch} of {config.epochs}")
    else:
        params, state = initial
        run = RunState(params, state, optimizer.init(params))
    best = folder.best_weights() if resume else (run.params, run.state)

    run.params, run.state = backend.to_device(run.params), backend.to_device(run.state)
    run.opt_state = backend.to_device(run.opt_state)
    while run.epoch < config.epochs and not run.stopped_early:
        started = time.perf_counter()
        record = train_one_epoch(run, backend, splits.train, config, progress, on_step)
        check_weights_finite(run, backend)
        if len(splits.val):
            val = evaluate_split(
                backend, model, run.params, run.state, splits.val, config.eval_batch_size
            )
            record.update(val_loss=val.loss, val_accuracy=val.accuracy)
            if config.adversarial != "none":
                host = backend.to_host((run.params, run.state))
                record.update(robust_validation(model, *host, splits.val, config, run.epoch))
        record["lr"] = float(optim.current_lr(schedule, backend.to_host(run.opt_state)))
        seconds = time.perf_counter() - started
        run.train_seconds += seconds
        record["seconds"] = round(seconds, 3)
        run.epoch += 1
        # Without validation data the latest epoch counts as the best one.
        improved = after_epoch(run, record, config, plateau) or not len(splits.val)
        if improved:
            best = (run.params, run.state)
        run.history.append(record)
        if folder:
            folder.save(run, backend.to_host, plateau, improved)
        log(format_epoch(record, config.epochs))
        if on_epoch is not None:
            on_epoch(run, record)

    params, state = best
    test = evaluate_split(backend, model, params, state, splits.test, config.eval_batch_size)
    result = TrainResult(
        config,
        backend.to_host(params),
        backend.to_host(state),
        run.history,
        test,
        run.train_seconds,
        run.best_epoch if len(splits.val) else run.epoch,
        run.stopped_early,
        path,
    )
    if folder:
        folder.write_summary(result)
    return result


# --8<-- [end:train]


# --8<-- [start:train_one_epoch]
def train_one_epoch(
    run: RunState,
    backend,
    split: Split,
    config: TrainConfig,
    progress: bool = False,
    on_step: OnStep | None = None,
) -> dict:
    """One pass over the shuffled training images. Returns the epoch's history record."""
    shuffle = epoch_rng(config.seed, run.epoch, SHUFFLE)  # a fresh stream per epoch
    augment = epoch_rng(config.seed, run.epoch, AUGMENT)
    dropout = backend.dropout_source(run.epoch)
    total_loss, total_correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    bar = ProgressBar(progress, len(split), run.epoch + 1, config.epochs)
    with bar, without_overflow_warnings():  # a diverging loss is reported below, in words
        for i, idx in enumerate(batches(len(split), config.batch_size, shuffle)):
            images = augment_batch(split.images[idx], augment, AUGMENTATIONS[config.augment])
            x = backend.to_device(images[..., None])  # (B, 28, 28, 1) in [0, 1]
            y = backend.to_device(split.labels[idx].astype(np.int32))
            run.params, run.state, run.opt_state, loss, accuracy = backend.train_step(
                run.params, run.state, run.opt_state, x, y, dropout(i)
            )
            run.step += 1
            loss, accuracy = float(loss), float(accuracy)
            check_loss_finite(loss, run.epoch + 1, i + 1)
            total_loss += loss * len(idx)
            total_correct += accuracy * len(idx)
            seen += len(idx)
            speed = seen / (time.perf_counter() - started)
            bar.advance(len(idx), total_loss / seen, total_correct / seen, speed)
            if on_step is not None:
                on_step(run, loss, accuracy)
    return {
        "epoch": run.epoch + 1,
        "train_loss": total_loss / seen,
        "train_accuracy": total_correct / seen,
        "images_per_second": round(seen / (time.perf_counter() - started), 1),
    }


# --8<-- [end:train_one_epoch]


# --8<-- [start:early_stopping]
def after_epoch(run: RunState, record: dict, config: TrainConfig, plateau) -> bool:
    """Early stopping and reduce-on-plateau bookkeeping. Returns: is this the best epoch?

    The best epoch has the lowest validation loss: on the attacked validation images for
    an adversarially trained network (``robust_validation``), else on the clean ones. With
    ``--keep last`` every epoch is the best so far (config refuses early stopping with it).
    """
    if "val_loss" not in record:
        return False
    val_loss = record.get("val_robust_loss", record["val_loss"])
    improved = val_loss < run.best_val_loss or config.keep == "last"
    if improved:
        run.best_val_loss, run.best_epoch, run.bad_epochs = val_loss, run.epoch, 0
    else:
        run.bad_epochs += 1
    if config.early_stopping is not None and run.bad_epochs >= config.early_stopping:
        run.stopped_early = True
    if plateau is not None:
        scale = plateau.step(val_loss)
        run.opt_state = optim.set_lr_scale(run.opt_state, scale)
    return improved


# --8<-- [end:early_stopping]


VALIDATION_BATCH = 1_000  # attacked in chunks: a whole split's activations at once are GBs


def robust_validation(model, params, state, split: Split, config: TrainConfig, epoch: int):
    """Loss and accuracy on the validation images attacked as the training batches are
    (PGD with the training's eps, steps and step size, from a random start that depends
    only on the seed and the epoch, so a resumed run measures the same).

    An adversarially trained network is chosen by these, not by its clean validation loss:
    TRADES gives up clean accuracy for robustness on purpose, and its clean loss would pick
    the first epoch (Rice et al. 2020 early-stop on the robust one).
    """
    training = config.adversarial_training()
    rng = epoch_rng(config.seed, epoch, ROBUST_VALIDATION)
    logits = []
    for start in range(0, len(split), VALIDATION_BATCH):
        x = split.images[start : start + VALIDATION_BATCH, ..., None]
        y = split.labels[start : start + VALIDATION_BATCH]
        adv = attacks.pgd(model, params, state, x, y, training.eps, steps=training.attack_steps,
                          step_size=training.step_size, rng=rng)  # fmt: skip
        logits.append(attacks.attack_logits(model, params, state, adv))
    robust = evaluate_logits(np.concatenate(logits), split.labels)
    return {"val_robust_loss": robust.loss, "val_robust_accuracy": robust.accuracy}


class TrainingDiverged(ScratchCNNError, ArithmeticError):
    """The loss or the weights became NaN or infinite."""


def check_loss_finite(loss: float, epoch: int, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingDiverged(
            f"training diverged at epoch {epoch}, step {step}: the loss is {loss}, so this "
            "epoch is not saved and earlier checkpoints stay as they were; try a lower --lr."
        )


def check_weights_finite(run: RunState, backend) -> None:
    """The last step of an epoch can leave NaN weights behind a finite loss: look."""
    params = backend.to_host(run.params)
    leaves = [np.asarray(a) for a in named_arrays(params).values()]
    if not all(np.isfinite(a).all() for a in leaves):
        raise TrainingDiverged(
            f"training diverged in epoch {run.epoch + 1}: its weights became NaN or infinite, "
            "so this epoch is not saved and earlier checkpoints stay as they were; "
            "try a lower --lr."
        )


def make_plateau(config: TrainConfig) -> optim.ReduceOnPlateau | None:
    if config.plateau_patience is None:
        return None
    return optim.ReduceOnPlateau(factor=config.plateau_factor, patience=config.plateau_patience)


# --8<-- [start:initial_weights]
def initial_weights(model, config: TrainConfig):
    """Fresh random weights, or (``init_from``) a checkpoint's weights and BatchNorm
    statistics to fine-tune, with fresh random weights for the last layer if
    ``new_head``; the optimizer and the schedule start afresh either way."""
    if config.init_from is None:
        return model.init(config.seed)
    ckpt = load_checkpoint(resolve_checkpoint(config.init_from))
    check_compatible(ckpt, config.model, model)
    params = ckpt.params
    if config.new_head:
        fresh, _ = model.init(config.seed)
        head = list(fresh)[-1]  # the last layer with weights
        params = {**params, head: fresh[head]}
    return params, ckpt.state


# --8<-- [end:initial_weights]
