"""The training loop: shuffled mini-batches -> forward -> loss -> backward -> optimizer.

One hand-written training step (``make_train_step``) runs on NumPy arrays as it is, and
compiled by ``jax.jit`` on JAX arrays (``backend="jax"``): the very same forward and
backward code, only the array library changes.

Everything random is drawn from generators derived from ``(seed, epoch, stream)``, never
from a generator that lives across epochs. That is what makes resume exact: a run that
restarts from the checkpoint of epoch *k* draws the same shuffles, augmentations and
dropout masks for epoch *k + 1* as the run that never stopped, so it ends with the same
weights, bit for bit.

Files written to ``output_dir`` (each atomically: a crash leaves the previous version):

- ``last.npz``   the checkpoint after the latest finished epoch (resume from it)
- ``best.npz``   the checkpoint with the lowest validation loss so far
- ``history.json`` the per-epoch history, and the final test metrics when done
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scratchcnn import __version__, attacks, models, optim
from scratchcnn.checkpoint import check_compatible, load_checkpoint, save_checkpoint
from scratchcnn.data.augment import AUGMENTATIONS, augment_batch
from scratchcnn.data.mnist import find_mnist, read_split
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.errors import ScratchCNNError
from scratchcnn.files import write_atomically
from scratchcnn.inference import make_eval_step, predict_logits
from scratchcnn.metrics import Evaluation, evaluate_logits
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.optim import ConfigError
from scratchcnn.pretrained import resolve_checkpoint

BACKENDS = ("numpy", "jax")
SCHEDULES = ("constant", "milestones", "cosine", "one_cycle")
SPLIT_SEED = 20_031  # fixed, so every run validates on the very same images

# Streams of randomness, each drawn from default_rng([seed, epoch, stream]).
SHUFFLE, AUGMENT, DROPOUT = 0, 1, 2


class ResumeError(ScratchCNNError, ValueError):
    """A run cannot be resumed from the given folder."""


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes a run. Saved in each checkpoint; resume checks it."""

    model: str = "default"
    epochs: int = 2
    batch_size: int = 128
    optimizer: str = "adam"
    learning_rate: float = 3e-3
    schedule: str = "one_cycle"
    warmup_epochs: float = 0.0
    milestones: tuple[int, ...] = ()  # epochs at which "milestones" multiplies lr by gamma
    gamma: float = 0.1
    weight_decay: float = 0.0
    clip_norm: float | None = None
    label_smoothing: float = 0.0
    augment: str = "none"
    val_fraction: float = 0.1
    early_stopping: int | None = None  # patience in epochs without a better val loss
    plateau_patience: int | None = None  # epochs before reduce-on-plateau halves lr
    plateau_factor: float = 0.5
    adversarial: str = "none"  # none, fgsm, pgd or mixed (see attacks.AdversarialTraining)
    adversarial_eps: float = 0.3
    adversarial_steps: int = 7  # PGD steps per batch (adversarial="pgd")
    seed: int = 0
    backend: str = "numpy"
    train_limit: int | None = None  # use only this many training images (quick runs)
    test_limit: int | None = None  # evaluate on the first N test images only (quick runs)
    eval_batch_size: int = 1000
    init_from: str | None = None  # start from this checkpoint's weights (fine-tuning)

    def validate(self) -> TrainConfig:
        """Raise ConfigError with one sentence for the first bad option; else self."""
        if self.model not in models.MODELS:
            raise ConfigError(
                f"unknown architecture {self.model!r}; "
                f"choose one of: {', '.join(sorted(models.MODELS))}."
            )
        checks = [
            (self.epochs >= 1, f"epochs must be at least 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.learning_rate > 0, f"learning rate must be positive, got {self.learning_rate}"),
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of: "
             f"{', '.join(SCHEDULES)}"),
            (self.optimizer in optim.OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; "
             f"choose one of: {', '.join(optim.OPTIMIZERS)}"),
            (self.adversarial in attacks.ADVERSARIAL, f"unknown adversarial training "
             f"{self.adversarial!r}; choose one of: {', '.join(attacks.ADVERSARIAL)}"),
            (0 < self.adversarial_eps <= 1,
             f"adversarial eps must be in (0, 1], got {self.adversarial_eps}"),
            (self.adversarial_steps >= 1,
             f"adversarial steps must be at least 1, got {self.adversarial_steps}"),
            (self.backend in BACKENDS, f"unknown backend {self.backend!r}; choose numpy or jax"),
            (self.augment in AUGMENTATIONS, f"unknown augmentation {self.augment!r}; choose "
             f"one of: {', '.join(AUGMENTATIONS)}"),
            (0.0 <= self.val_fraction < 1.0,
             f"validation fraction must be in [0, 1), got {self.val_fraction}"),
            (0.0 <= self.label_smoothing < 1.0,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.warmup_epochs >= 0, f"warmup epochs must be >= 0, got {self.warmup_epochs}"),
            (self.train_limit is None or self.train_limit >= 1,
             f"train limit must be at least 1, got {self.train_limit}"),
            (self.clip_norm is None or self.clip_norm > 0,
             f"clip norm must be positive, got {self.clip_norm}"),
            (self.test_limit is None or self.test_limit >= 1,
             f"test limit must be at least 1, got {self.test_limit}"),
            (self.eval_batch_size >= 1,
             f"eval batch size must be at least 1, got {self.eval_batch_size}"),
            (self.early_stopping is None or self.early_stopping >= 1,
             f"early-stopping patience must be at least 1, got {self.early_stopping}"),
            (self.plateau_patience is None or self.plateau_patience >= 1,
             f"plateau patience must be at least 1, got {self.plateau_patience}"),
            (0.0 < self.plateau_factor < 1.0,
             f"plateau factor must be in (0, 1), got {self.plateau_factor}"),
            (self.val_fraction > 0 or (self.early_stopping is None and
                                        self.plateau_patience is None),
             "early stopping and reduce-on-plateau watch the validation loss, so they need "
             "a validation fraction above 0"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message + ".")
        return self

    def adversarial_training(self) -> attacks.AdversarialTraining | None:
        if self.adversarial == "none":
            return None
        return attacks.AdversarialTraining(
            self.adversarial, self.adversarial_eps, self.adversarial_steps
        )

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, saved: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        return cls(**{k: v for k, v in values.items() if k in known})


# Named starting points for ``scratchcnn train --recipe NAME``; flags override them.
RECIPES: dict[str, TrainConfig] = {
    "default": TrainConfig(backend="jax"),
    "best": TrainConfig(
        model="best",
        epochs=15,
        augment="affine",
        label_smoothing=0.1,
        val_fraction=0.0,
        backend="jax",
    ),
    # The seed networks, trained as their sources train them (as far as our optimizers go).
    "flax_cnn": TrainConfig(  # Flax examples/mnist: SGD momentum 0.9, lr 0.1, 10 epochs
        model="flax_cnn",
        epochs=10,
        optimizer="momentum",
        learning_rate=0.1,
        schedule="constant",
        val_fraction=0.0,
        backend="jax",
    ),
    "lenet": TrainConfig(  # PyTorch examples/mnist: 14 epochs, batch 64, lr x 0.7 per epoch
        model="lenet",  # (PyTorch uses Adadelta, lr 1.0; we use Adam, lr 1e-3)
        epochs=14,
        batch_size=64,
        learning_rate=1e-3,
        schedule="milestones",
        milestones=tuple(range(1, 14)),
        gamma=0.7,
        val_fraction=0.0,
        backend="jax",
    ),
    "bn_cnn": TrainConfig(model="bn_cnn", epochs=10, val_fraction=0.0, backend="jax"),
    "keras_cnn": TrainConfig(  # the 99.57% network; its source trained with augmentation
        model="keras_cnn", epochs=6, augment="affine", val_fraction=0.0, backend="jax"
    ),
}


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Split:
    """Images in [0, 1] as float32 (N, 28, 28) and their uint8 labels (N,)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class MnistSplits:
    train: Split
    val: Split
    test: Split
    checksums: dict[str, str]  # file name -> SHA-256, recorded in checkpoints


def load_splits(config: TrainConfig, data_dir=None) -> MnistSplits:
    """The 60k training images split into train/val (a fixed permutation), and the test set.

    The validation images are held out of training entirely; ``train_limit`` keeps the
    first N of the remaining training images and ``test_limit`` the first N test images
    (for quick runs and tests; the results then say so in their config).
    """
    location = find_mnist(data_dir)
    images, labels = read_split(location, "train")
    test_images, test_labels = read_split(location, "test")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_val = round(config.val_fraction * len(labels))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.train_limit is not None:
        train_idx = train_idx[: config.train_limit]
    return MnistSplits(
        train=_as_split(images[train_idx], labels[train_idx]),
        val=_as_split(images[val_idx], labels[val_idx]),
        test=_as_split(test_images[: config.test_limit], test_labels[: config.test_limit]),
        checksums={file.path.name: file.sha256 for file in location.files},
    )


def _as_split(images: np.ndarray, labels: np.ndarray) -> Split:
    return Split((images / np.float32(255)).astype(np.float32), labels)


def epoch_rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    """A generator that depends only on (seed, epoch, stream): the key to exact resume."""
    return np.random.default_rng([seed, epoch, stream])


def batches(n: int, batch_size: int, rng: np.random.Generator):
    """Shuffled index batches covering 0..n-1 once; the last one may be smaller."""
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


# --------------------------------------------------------------------------- optimizer


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> optim.Schedule:
    """The learning-rate schedule over the run's total number of steps."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    lr = config.learning_rate
    if config.schedule == "one_cycle":
        return optim.one_cycle(total, lr)  # has its own warm-up phase
    if config.schedule == "cosine":
        schedule = optim.cosine(lr, max(total - warmup, 1))
    elif config.schedule == "milestones":
        boundaries = [m * steps_per_epoch - warmup for m in config.milestones]
        schedule = optim.milestones(lr, boundaries, config.gamma)
    else:
        schedule = optim.constant(lr)
    return optim.warmup(schedule, warmup) if warmup > 0 else schedule


def make_run_optimizer(config: TrainConfig, schedule: optim.Schedule):
    """The optimizer named in the config, following ``schedule``."""
    options = {"weight_decay": config.weight_decay, "clip_norm": config.clip_norm}
    if config.optimizer == "adamw" and config.weight_decay == 0.0:
        del options["weight_decay"]  # AdamW without decay is Adam: keep AdamW's default
    return optim.make_optimizer(config.optimizer, schedule, **options)


# --------------------------------------------------------------------------- the step


# --8<-- [start:train_step]
def make_train_step(model, optimizer, label_smoothing: float = 0.0, adversarial=None) -> Callable:
    """One training step, written once for NumPy and for ``jax.jit``.

    (params, state, opt_state, x: (N, H, W, C), labels: (N,), rng)
        -> (params, state, opt_state, loss, accuracy on the batch)
    x is standardized; with ``adversarial`` (an ``attacks.AdversarialTraining``) it is in
    [0, 1] instead, attacked first and standardized here. rng drives dropout (and the
    attack's random start): a NumPy Generator, or a JAX key under jit.
    """

    def train_step(params, state, opt_state, x, labels, rng):
        if adversarial is not None:
            x, labels = attacks.training_batch(
                model, params, state, x, labels, _attack_rng(rng), adversarial
            )
            x = standardize_unit(x)
        logits, new_state, caches = model.forward(params, state, x, train=True, rng=rng)
        loss, loss_cache = softmax_cross_entropy_forward(logits, labels, label_smoothing)
        dlogits, _ = softmax_cross_entropy_backward(1.0, loss_cache)
        _, grads = model.backward(dlogits, caches, input_grad=False)
        params, opt_state = optimizer.update(grads, opt_state, params)
        accuracy = (logits.argmax(axis=1) == labels).mean()
        return params, new_state, opt_state, loss, accuracy

    return train_step


# --8<-- [end:train_step]


def _attack_rng(rng):
    """The attack's own random stream: the Generator itself, or a key folded apart from
    the ones dropout layers fold in (their layer index)."""
    if rng is None or isinstance(rng, np.random.Generator):
        return rng
    import jax

    return jax.random.fold_in(rng, 1_000_003)


class NumpyBackend:
    """Run the steps as they are, on NumPy arrays."""

    name = "numpy"

    def __init__(self, train_step, eval_step, seed: int):
        self.train_step, self.eval_step, self.seed = train_step, eval_step, seed

    def to_device(self, tree):
        return tree

    def to_host(self, tree):
        return tree

    def dropout_source(self, epoch: int):
        """One generator per epoch; its draws continue from batch to batch."""
        generator = epoch_rng(self.seed, epoch, DROPOUT)
        return lambda batch_index: generator


class JaxBackend:
    """The same steps compiled with ``jax.jit`` and run on JAX arrays."""

    name = "jax"

    def __init__(self, train_step, eval_step, seed: int):
        import jax

        self.jax = jax
        self.train_step = jax.jit(train_step)
        self.eval_step = jax.jit(eval_step)
        self.seed = seed

    def to_device(self, tree):
        return self.jax.tree.map(self.jax.numpy.asarray, tree)

    def to_host(self, tree):
        return self.jax.tree.map(np.asarray, tree)

    def dropout_source(self, epoch: int):
        """A key per (seed, epoch, batch): pure functions of the position in the run."""
        epoch_key = self.jax.random.fold_in(self.jax.random.key(self.seed), epoch)
        return lambda batch_index: self.jax.random.fold_in(epoch_key, batch_index)


def make_backend(model, optimizer, config: TrainConfig):
    backend = JaxBackend if config.backend == "jax" else NumpyBackend
    return backend(
        make_train_step(model, optimizer, config.label_smoothing, config.adversarial_training()),
        make_eval_step(model),
        config.seed,
    )


# --------------------------------------------------------------------------- evaluation


def evaluate_split(backend, model, params, state, split: Split, batch_size: int) -> Evaluation:
    """Metrics of the network on one split, in eval mode."""
    logits = predict_logits(
        model,
        params,
        state,
        split.images,
        batch_size=batch_size,
        eval_step=backend.eval_step,
        to_device=backend.to_device,
    )
    return evaluate_logits(logits, split.labels)


# --------------------------------------------------------------------------- the loop


@dataclass
class RunState:
    """Everything that changes during a run (and is saved to resume it)."""

    params: Any
    state: Any
    opt_state: Any
    epoch: int = 0  # epochs finished
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best_val_loss: float = float("inf")
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0


@dataclass
class TrainResult:
    config: TrainConfig
    params: Any
    state: Any
    history: list[dict]
    test: Evaluation
    train_seconds: float
    best_epoch: int
    stopped_early: bool
    output_dir: Path | None

    def summary(self) -> dict:
        """The JSON summary ``scratchcnn train --json`` prints."""
        return {
            "config": self.config.to_json(),
            "test_accuracy": self.test.accuracy,
            "test_loss": self.test.loss,
            "train_seconds": round(self.train_seconds, 2),
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "history": self.history,
            "output_dir": str(self.output_dir) if self.output_dir else None,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
            "library_version": __version__,
        }


def train(
    config: TrainConfig,
    *,
    data_dir=None,
    output_dir=None,
    resume: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train ``config.model`` on MNIST, evaluate on the test set, return the result.

    ``output_dir`` receives checkpoints and the history; ``resume`` continues the run
    saved there. With validation data, the best epoch's weights (lowest validation loss)
    are the ones evaluated and returned.
    """
    config.validate()
    splits = load_splits(config, data_dir)  # before any folder is made: data may be missing
    model = models.build(config.model)
    initial = None if resume else _initial_weights(model, config)  # a bad --init stops here
    output_dir = _prepare_output_dir(output_dir, resume)
    steps_per_epoch = -(-len(splits.train) // config.batch_size)
    schedule = make_schedule(config, steps_per_epoch)
    optimizer = make_run_optimizer(config, schedule)
    backend = make_backend(model, optimizer, config)
    plateau = _make_plateau(config)

    if resume:
        run = _resume_run(output_dir, config, splits, plateau)
        log(f"resuming {output_dir} after epoch {run.epoch} of {config.epochs}")
    else:
        params, state = initial
        run = RunState(params, state, optimizer.init(params))
    best = _load_best(output_dir) if resume and run.best_epoch else None
    best = best or (run.params, run.state)

    run.params, run.state = backend.to_device(run.params), backend.to_device(run.state)
    run.opt_state = backend.to_device(run.opt_state)
    while run.epoch < config.epochs and not run.stopped_early:
        started = time.perf_counter()
        record = _train_one_epoch(run, backend, splits.train, config, progress)
        if len(splits.val):
            val = evaluate_split(
                backend, model, run.params, run.state, splits.val, config.eval_batch_size
            )
            record.update(val_loss=val.loss, val_accuracy=val.accuracy)
        record["lr"] = float(optim.current_lr(schedule, backend.to_host(run.opt_state)))
        run.train_seconds += time.perf_counter() - started
        record["seconds"] = round(time.perf_counter() - started, 3)
        run.epoch += 1
        # Without validation data the latest epoch counts as the best one.
        improved = _after_epoch(run, record, config, plateau) or not len(splits.val)
        if improved:
            best = (run.params, run.state)
        run.history.append(record)
        if output_dir:
            _save_run(output_dir, run, backend, model, config, splits, plateau, improved)
        log(_format_epoch(record, config.epochs))

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
        output_dir,
    )
    if output_dir:
        _write_json(output_dir / "history.json", {**result.summary(), "test": test.to_json()})
    return result


def _initial_weights(model, config: TrainConfig):
    """Fresh random weights, or (``init_from``) a checkpoint's weights and BatchNorm
    statistics to fine-tune; the optimizer and the schedule start afresh either way."""
    if config.init_from is None:
        return model.init(config.seed)
    ckpt = load_checkpoint(resolve_checkpoint(config.init_from))
    check_compatible(ckpt, config.model, model)
    return ckpt.params, ckpt.state


def _train_one_epoch(run: RunState, backend, split: Split, config: TrainConfig, progress):
    """One pass over the shuffled training images. Returns the epoch's history record."""
    shuffle = epoch_rng(config.seed, run.epoch, SHUFFLE)
    augment_rng = epoch_rng(config.seed, run.epoch, AUGMENT)
    augmentation = AUGMENTATIONS[config.augment]
    dropout = backend.dropout_source(run.epoch)
    total_loss, total_correct, seen = 0.0, 0, 0
    started = time.perf_counter()
    with _ProgressBar(progress, len(split), run.epoch + 1, config.epochs) as bar:
        for batch_index, idx in enumerate(batches(len(split), config.batch_size, shuffle)):
            images = augment_batch(split.images[idx], augment_rng, augmentation)
            x = (
                images[..., None]
                if config.adversarial != "none"
                else standardize_unit(images[..., None])
            )  # adversarial steps attack the [0, 1] images and standardize themselves
            y = backend.to_device(split.labels[idx].astype(np.int32))
            run.params, run.state, run.opt_state, loss, accuracy = backend.train_step(
                run.params, run.state, run.opt_state, backend.to_device(x), y, dropout(batch_index)
            )
            run.step += 1
            total_loss += float(loss) * len(idx)
            total_correct += float(accuracy) * len(idx)
            seen += len(idx)
            elapsed = time.perf_counter() - started
            bar.advance(len(idx), total_loss / seen, total_correct / seen, seen / elapsed)
    return {
        "epoch": run.epoch + 1,
        "train_loss": total_loss / seen,
        "train_accuracy": total_correct / seen,
        "images_per_second": round(seen / (time.perf_counter() - started), 1),
    }


# --8<-- [start:early_stopping]
def _after_epoch(run: RunState, record: dict, config: TrainConfig, plateau) -> bool:
    """Early stopping and reduce-on-plateau bookkeeping. Returns: is this the best epoch?"""
    if "val_loss" not in record:
        return False
    improved = record["val_loss"] < run.best_val_loss
    if improved:
        run.best_val_loss, run.best_epoch, run.bad_epochs = record["val_loss"], run.epoch, 0
    else:
        run.bad_epochs += 1
    if config.early_stopping is not None and run.bad_epochs >= config.early_stopping:
        run.stopped_early = True
    if plateau is not None:
        scale = plateau.step(record["val_loss"])
        run.opt_state = optim.set_lr_scale(run.opt_state, scale)
    return improved


# --8<-- [end:early_stopping]


def _make_plateau(config: TrainConfig):
    if config.plateau_patience is None:
        return None
    return optim.ReduceOnPlateau(factor=config.plateau_factor, patience=config.plateau_patience)


def _format_epoch(record: dict, epochs: int) -> str:
    text = (
        f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} "
        f"acc {record['train_accuracy']:.2%}"
    )
    if "val_loss" in record:
        text += f"  val loss {record['val_loss']:.4f} acc {record['val_accuracy']:.2%}"
    return text + f"  {record['images_per_second']:,.0f} img/s  {record['seconds']:.1f} s"


# --------------------------------------------------------------------------- files


def _prepare_output_dir(output_dir, resume: bool) -> Path | None:
    if output_dir is None:
        if resume:
            raise ResumeError("--resume needs the --output folder of the run to continue.")
        return None
    output_dir = Path(output_dir)
    if resume:
        if not (output_dir / "last.npz").is_file():
            raise ResumeError(f"cannot resume: {output_dir / 'last.npz'} does not exist.")
        return output_dir
    if (output_dir / "last.npz").exists():
        raise ResumeError(
            f"{output_dir} already holds a run (last.npz); pass --resume to continue it "
            "or choose another --output folder."
        )
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ResumeError(f"cannot create the output folder {output_dir}: {error}.") from error
    return output_dir


def _run_info(run: RunState, config: TrainConfig, splits: MnistSplits, plateau) -> dict:
    return {
        "config": config.to_json(),
        "epoch": run.epoch,
        "step": run.step,
        "history": run.history,
        "best_val_loss": run.best_val_loss if run.best_epoch else None,
        "best_epoch": run.best_epoch,
        "bad_epochs": run.bad_epochs,
        "stopped_early": run.stopped_early,
        "train_seconds": run.train_seconds,
        "plateau": plateau.state_dict() if plateau is not None else None,
        "rng": {"seed": config.seed, "streams": "numpy default_rng([seed, epoch, stream])"},
        "data_sha256": splits.checksums,
        "metrics": run.history[-1] if run.history else {},
    }


def _save_run(output_dir, run, backend, model, config, splits, plateau, improved) -> None:
    """Write last.npz (and best.npz when this epoch is the best so far)."""
    names = ["last.npz", "best.npz"] if improved else ["last.npz"]
    for name in names:
        save_checkpoint(
            output_dir / name,
            model_name=config.model,
            model=model,
            params=backend.to_host(run.params),
            state=backend.to_host(run.state),
            opt_state=backend.to_host(run.opt_state),
            info=_run_info(run, config, splits, plateau),
        )
    _write_json(output_dir / "history.json", {"config": config.to_json(), "history": run.history})


def _resume_run(output_dir: Path, config: TrainConfig, splits, plateau) -> RunState:
    checkpoint = load_checkpoint(output_dir / "last.npz")
    info = checkpoint.info
    saved = TrainConfig.from_json(info.get("config", {}))
    different = [
        f"{name} (saved {getattr(saved, name)!r}, now {getattr(config, name)!r})"
        for name in TrainConfig.__dataclass_fields__
        if getattr(saved, name) != getattr(config, name)
    ]
    if different:
        raise ResumeError(
            f"cannot resume {output_dir}: the options differ from the saved run: "
            + "; ".join(different)
            + "."
        )
    if info.get("data_sha256") != splits.checksums:
        raise ResumeError(f"cannot resume {output_dir}: it was trained on other MNIST files.")
    if plateau is not None and info.get("plateau"):
        plateau.load_state_dict(info["plateau"])
    return RunState(
        params=checkpoint.params,
        state=checkpoint.state,
        opt_state=checkpoint.opt_state,
        epoch=info["epoch"],
        step=info["step"],
        history=info["history"],
        best_val_loss=info["best_val_loss"] if info["best_val_loss"] is not None else np.inf,
        best_epoch=info["best_epoch"],
        bad_epochs=info["bad_epochs"],
        stopped_early=info["stopped_early"],
        train_seconds=info["train_seconds"],
    )


def _load_best(output_dir: Path):
    path = output_dir / "best.npz"
    if not path.is_file():
        return None
    checkpoint = load_checkpoint(path)
    return checkpoint.params, checkpoint.state


def _write_json(path: Path, payload: dict) -> None:
    text = json.dumps(payload, indent=2, allow_nan=False, default=_json_default)
    write_atomically(path, lambda file: file.write(text.encode()))


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serializable: {type(value).__name__}")


# --------------------------------------------------------------------------- progress


class _ProgressBar:
    """A rich progress bar for one epoch showing loss, accuracy and images/s."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int):
        self.enabled = enabled
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,}"),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}"),
            TextColumn("{task.fields[speed]:,.0f} img/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("train", total=total, loss=0.0, acc=0.0, speed=0.0)

    def __enter__(self):
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self.progress.stop()

    def advance(self, n: int, loss: float, accuracy: float, speed: float) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=n, loss=loss, acc=accuracy, speed=speed)
