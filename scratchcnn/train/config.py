"""What a training run is made of: ``TrainConfig`` (every choice, with its help text) and
the named ``RECIPES`` that ``scratchcnn train --recipe`` starts from.

Each field's help text lives next to its default, in the field's metadata; the
``scratchcnn train`` command builds one ``--flag`` per field from them, so adding an
option is adding a field here.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass

from scratchcnn import attacks, models, optim
from scratchcnn.data.augment import AUGMENTATIONS
from scratchcnn.data.digits import TRAIN_DIGITS
from scratchcnn.optim import ConfigError

BACKENDS = ("numpy", "jax")
SCHEDULES = ("constant", "milestones", "cosine", "one_cycle")
KEEP = ("best", "last")  # which epoch's weights a run ends with


def option(default, help: str, *flags: str):
    """A config field with its command-line help (and ``flags``, the ``--spellings`` when
    not just ``--field-name``). ``TrainConfig.validate`` checks the values."""
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags})


def flags(field: dataclasses.Field) -> tuple[str, ...]:
    """The command-line spellings of a config field: its own ``flags``, or ``--field-name``."""
    return field.metadata["flags"] or ("--" + field.name.replace("_", "-"),)


def listing(names) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


# The largest values the options take (larger ones would overflow, or mean nothing):
MAX_EPOCHS = 10_000  # 10,000 epochs of 60,000 steps (batch 1) stay below 2**31 steps
TRAIN_IMAGES, TEST_IMAGES = 60_000, 10_000  # MNIST's: a larger batch or limit means nothing
MAX_SEED = 2**32 - 1  # NumPy's and JAX's random keys take unsigned 32-bit seeds
MAX_ATTACK_STEPS = 1_000
DATASETS = {"mnist": TRAIN_IMAGES, "digits": TRAIN_DIGITS}  # name -> its training images


def whole(value, low: int, high: int) -> bool:
    """Is ``value`` an integer (not a bool) from ``low`` to ``high``?"""
    return (
        isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high
    )


def finite(value) -> bool:
    """Is ``value`` a number (not a bool) other than NaN and the infinities?"""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def shown(value) -> str:
    """A value as a user typed it: (5, 8) -> "5,8", 0.5 -> "0.5", "adam" -> "'adam'"; a long
    tuple by its first 8 values and its length."""
    if isinstance(value, tuple):
        head = ",".join(map(str, value[:8])) or "(none)"
        return head if len(value) <= 8 else f"{head},... ({len(value)} values)"
    return repr(value)


def flag(name: str) -> str:
    """The command-line spelling of TrainConfig field ``name``: "learning_rate" -> "--lr"."""
    return flags(next(f for f in dataclasses.fields(TrainConfig) if f.name == name))[0]


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes a run. Saved in each checkpoint; resume checks it."""

    model: str = option("default", "Architecture (see scratchcnn models).")
    epochs: int = option(2, "Passes over the training set.")
    batch_size: int = option(128, "Images per step.")
    optimizer: str = option("adam", f"Optimizer: {listing(optim.OPTIMIZERS)}.")
    learning_rate: float = option(3e-3, "Peak learning rate.", "--lr", "--learning-rate")
    schedule: str = option("one_cycle", f"Learning-rate schedule: {listing(SCHEDULES)}.")
    warmup_epochs: float = option(0.0, "Linear warm-up length in epochs.")
    milestones: tuple[int, ...] = option((), "Epochs where lr is multiplied by gamma, e.g. 5,8.")
    gamma: float = option(0.1, "What --schedule milestones multiplies lr by.")
    weight_decay: float = option(0.0, "Weight decay of the kernels.")
    clip_norm: float | None = option(None, "Clip gradients to this global norm.")
    label_smoothing: float = option(0.0, "Label smoothing in [0, 1).")
    augment: str = option("none", f"Augmentation: {listing(AUGMENTATIONS)}.")
    val_fraction: float = option(0.1, "Share of training images held out for validation.")
    early_stopping: int | None = option(
        None,
        "Stop after this many epochs without a lower validation loss (on the attacked "
        "validation images with --adversarial).",
    )
    plateau_patience: int | None = option(
        None,
        "Multiply lr by --plateau-factor after this many epochs without progress.",
        "--plateau",
    )
    plateau_factor: float = option(0.5, "What --plateau multiplies lr by.")
    keep: str = option(
        "best",
        "The weights a run ends with (and tests): best, the epoch with the lowest "
        "validation loss (attacked, with --adversarial); or last, the final epoch (for "
        "schedules that anneal to the end).",
    )
    adversarial: str = option(
        "none", f"Adversarial training: {listing(attacks.ADVERSARIAL)} (see lesson 11)."
    )
    adversarial_eps: float = option(0.3, "L-infinity budget of the training attack.")
    adversarial_steps: int = option(7, "PGD steps per batch (--adversarial pgd, trades).")
    trades_beta: float = option(
        6.0, "TRADES' weight of the robustness term (--adversarial trades): more is more robust."
    )
    seed: int = option(0, f"Seed of every random choice (0 to {MAX_SEED}).")
    backend: str = option("numpy", "numpy, or jax (the same step, compiled).")
    train_limit: int | None = option(None, "Train on the first N training images only.")
    test_limit: int | None = option(None, "Evaluate on the first N test images only.")
    eval_batch_size: int = option(1000, "Images per evaluation batch.")
    init_from: str | None = option(
        None,
        "Fine-tune: start from this checkpoint's (or pretrained network's) weights, "
        "with a fresh optimizer.",
        "--init",
    )
    dataset: str = option(
        "mnist",
        f"Data: {listing(DATASETS)} (scikit-learn's UCI digits, prepared as MNIST; lesson 17).",
    )
    per_class: int | None = option(
        None, "Train on N images of each class (a draw seeded by --seed), not all of them."
    )
    freeze: tuple[str, ...] = option(
        (), "Layers to keep fixed, named as in checkpoints: e.g. conv1,batchnorm1 (lesson 17)."
    )
    body_lr_scale: float = option(
        1.0, "Fine-tuning: every layer but the last learns at --lr times this."
    )
    new_head: bool = option(
        False, "With --init: fresh random weights for the last layer (a new head)."
    )

    def validate(self) -> TrainConfig:
        """Raise ConfigError with one sentence for the first bad option; else self."""
        try:
            models.build(self.model)  # a registered name, with options its builder accepts
        except models.UnknownModelError as error:
            raise ConfigError(str(error)) from None
        names = [
            (self.schedule in SCHEDULES, f"unknown schedule {self.schedule!r}; choose one of: "
             f"{', '.join(SCHEDULES)}"),
            (self.optimizer in optim.OPTIMIZERS, f"unknown optimizer {self.optimizer!r}; "
             f"choose one of: {', '.join(optim.OPTIMIZERS)}"),
            (self.adversarial in attacks.ADVERSARIAL, f"unknown adversarial training "
             f"{self.adversarial!r}; choose one of: {', '.join(attacks.ADVERSARIAL)}"),
            (self.backend in BACKENDS, f"unknown backend {self.backend!r}; choose numpy or jax"),
            (self.augment in AUGMENTATIONS, f"unknown augmentation {self.augment!r}; choose "
             f"one of: {', '.join(AUGMENTATIONS)}"),
            (self.keep in KEEP, f"unknown --keep {self.keep!r}; choose best or last"),
            (self.init_from is None or str(self.init_from).strip() != "", "--init needs a "
             "checkpoint file or a pretrained network's name, got an empty one"),
            (self.dataset in DATASETS, f"unknown dataset {self.dataset!r}; choose one of: "
             f"{', '.join(DATASETS)}"),
            (not self.new_head or self.init_from is not None, "--new-head replaces the last "
             "layer of the network --init starts from, so it needs --init"),
            (not self.freeze or self.init_from is not None, "--freeze keeps layers at the "
             "weights they start from, random ones without --init; give --init"),
        ]  # fmt: skip
        for ok, message in names:
            if not ok:
                raise ConfigError(message + ".")
        for name, ok, requirement in self._ranges():
            if not ok:
                raise ConfigError(
                    f"{flag(name)} must be {requirement}, got {shown(getattr(self, name))}."
                )
        self._check_together()
        return self

    def _ranges(self) -> list[tuple[str, bool, str]]:
        """(field, is its value allowed, what it must be): one row per number option."""
        epochs, train, test = (
            f"an integer from 1 to {n}" for n in (MAX_EPOCHS, TRAIN_IMAGES, TEST_IMAGES)
        )
        return [
            ("epochs", whole(self.epochs, 1, MAX_EPOCHS), epochs),
            ("batch_size", whole(self.batch_size, 1, TRAIN_IMAGES), train),
            ("eval_batch_size", whole(self.eval_batch_size, 1, TRAIN_IMAGES), train),
            ("train_limit", self.train_limit is None or whole(self.train_limit, 1, TRAIN_IMAGES),
             train + " (MNIST's training images)"),
            ("test_limit", self.test_limit is None or whole(self.test_limit, 1, TEST_IMAGES),
             test + " (MNIST's test images)"),
            ("early_stopping", self.early_stopping is None or
             whole(self.early_stopping, 1, MAX_EPOCHS), epochs),
            ("plateau_patience", self.plateau_patience is None or
             whole(self.plateau_patience, 1, MAX_EPOCHS), epochs),
            ("milestones", isinstance(self.milestones, tuple) and
             all(whole(m, 1, MAX_EPOCHS) for m in self.milestones), "integers from 1 to "
             f"{MAX_EPOCHS}, like 5,8"),
            ("adversarial_steps", whole(self.adversarial_steps, 1, MAX_ATTACK_STEPS),
             f"an integer from 1 to {MAX_ATTACK_STEPS}"),
            ("seed", whole(self.seed, 0, MAX_SEED), f"an integer from 0 to {MAX_SEED}"),
            ("learning_rate", finite(self.learning_rate) and self.learning_rate > 0,
             "a finite number above 0"),
            ("gamma", finite(self.gamma) and self.gamma > 0, "a finite number above 0"),
            ("weight_decay", finite(self.weight_decay) and self.weight_decay >= 0,
             "a finite number >= 0"),
            ("clip_norm", self.clip_norm is None or finite(self.clip_norm) and self.clip_norm > 0,
             "a finite number above 0"),
            ("warmup_epochs", finite(self.warmup_epochs) and self.warmup_epochs >= 0,
             "a finite number >= 0"),
            ("label_smoothing", finite(self.label_smoothing) and 0 <= self.label_smoothing < 1,
             "in [0, 1)"),
            ("val_fraction", finite(self.val_fraction) and 0 <= self.val_fraction < 1,
             "in [0, 1)"),
            ("plateau_factor", finite(self.plateau_factor) and 0 < self.plateau_factor < 1,
             "in (0, 1)"),
            ("adversarial_eps", finite(self.adversarial_eps) and 0 < self.adversarial_eps <= 1,
             "in (0, 1] (pixels are in [0, 1])"),
            ("trades_beta", finite(self.trades_beta) and self.trades_beta >= 0,
             "a finite number >= 0"),
            ("per_class", self.per_class is None or whole(self.per_class, 1, TRAIN_IMAGES),
             train),
            ("body_lr_scale", finite(self.body_lr_scale) and self.body_lr_scale > 0,
             "a finite number above 0 (to keep layers fixed, name them in --freeze)"),
        ]  # fmt: skip

    def _check_together(self) -> None:
        """The options that only make sense together: warm-up, milestones, validation."""
        if self.warmup_epochs > self.epochs:
            raise ConfigError(
                f"--warmup-epochs {self.warmup_epochs:g} is longer than the run "
                f"(--epochs {self.epochs})."
            )
        if self.warmup_epochs and self.schedule == "one_cycle":
            raise ConfigError(
                "--warmup-epochs does nothing with --schedule one_cycle (it has its own "
                "warm-up); use constant, milestones or cosine, or leave it out."
            )
        self._check_milestones()
        self._check_freeze()
        images = DATASETS[self.dataset]
        held_out = round(self.val_fraction * images)  # as train.data.load_splits does
        if self.val_fraction > 0 and not 1 <= held_out < images:
            raise ConfigError(
                f"--val-fraction {self.val_fraction:g} holds out {held_out} of the "
                f"{images} training images; it must hold out at least one and keep one."
            )
        if self.keep == "last" and self.early_stopping is not None:
            raise ConfigError(
                "--early-stopping stops a run once the validation loss has stopped falling, "
                "and --keep last would then keep the worse weights of those last epochs; "
                "use --keep best with it."
            )
        watching = self.early_stopping is not None or self.plateau_patience is not None
        if self.val_fraction == 0 and watching:
            raise ConfigError(
                "--early-stopping and --plateau watch the validation loss, so they need "
                "a validation fraction (--val-fraction) above 0."
            )

    def _check_milestones(self) -> None:
        """Milestones in increasing order; with --schedule milestones, each one an epoch
        inside the run and after the warm-up."""
        given = shown(self.milestones)
        if list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"--milestones must increase, without repeats; got {given}.")
        if self.schedule != "milestones":
            return  # unused (a recipe's milestones stay harmless under another --schedule)
        if any(m >= self.epochs for m in self.milestones):
            raise ConfigError(
                f"--milestones {given} must all fall inside the run: below --epochs "
                f"{self.epochs} (a milestone at epoch m lowers lr from epoch m + 1)."
            )
        if any(m < self.warmup_epochs for m in self.milestones):
            raise ConfigError(
                f"--milestones {given} must not fall inside the warm-up "
                f"(--warmup-epochs {self.warmup_epochs:g})."
            )

    # --8<-- [start:check_freeze]
    def _check_freeze(self) -> None:
        """Every --freeze name is a layer of the model that holds weights, and one such
        layer is left to train."""
        if not self.freeze:
            return
        layers = list(models.build(self.model).init(0)[0])  # names of layers with weights
        unknown = [name for name in self.freeze if name not in layers]
        if unknown:
            raise ConfigError(
                f"--freeze {unknown[0]!r} is not a layer of {self.model} with weights; "
                f"its layers are: {', '.join(layers)}."
            )
        if set(layers) <= set(self.freeze):
            raise ConfigError(f"--freeze names every layer of {self.model}: none is left to train.")

    # --8<-- [end:check_freeze]

    def adversarial_training(self) -> attacks.AdversarialTraining | None:
        if self.adversarial == "none":
            return None
        return attacks.AdversarialTraining(
            self.adversarial, self.adversarial_eps, self.adversarial_steps, self.trades_beta
        )

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_json(cls, saved: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items()}
        return cls(**{k: v for k, v in values.items() if k in known})


# Lesson 19's later members: twice the epochs, and the last epoch's weights kept (one-cycle
# ends at a tiny learning rate; with label smoothing the lowest validation loss came at
# epoch 19 of 30, at 99.72% validation accuracy against the last epoch's 99.83%).
LONGER_MEMBER = dict(epochs=30, augment="affine", label_smoothing=0.1, keep="last", backend="jax")

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
    # Lesson 19's ensemble members: the best recipe with its default 10% validation split.
    "best_val": TrainConfig(
        model="best", epochs=15, augment="affine", label_smoothing=0.1, backend="jax"
    ),
    "resnet_val": TrainConfig(
        model="resnet", epochs=15, augment="affine", label_smoothing=0.1, backend="jax"
    ),
    # Lesson 19's later members (LONGER_MEMBER), the elastic one for other errors.
    "resnet_long_val": TrainConfig(model="resnet", **LONGER_MEMBER),
    "resnet_elastic_val": TrainConfig(model="resnet", **LONGER_MEMBER | {"augment": "elastic"}),
    "best_long_val": TrainConfig(model="best", **LONGER_MEMBER),
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
