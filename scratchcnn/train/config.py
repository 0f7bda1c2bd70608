"""What a training run is made of: ``TrainConfig`` (every choice, with its help text) and
the named ``RECIPES`` that ``scratchcnn train --recipe`` starts from.

Each field's help text lives next to its default, in the field's metadata; the
``scratchcnn train`` command builds one ``--flag`` per field from them, so adding an
option is adding a field here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from scratchcnn import attacks, models, optim
from scratchcnn.data.augment import AUGMENTATIONS
from scratchcnn.optim import ConfigError

BACKENDS = ("numpy", "jax")
SCHEDULES = ("constant", "milestones", "cosine", "one_cycle")


def option(default, help: str, *flags: str, min: float | None = None):
    """A config field with its command-line help (and ``flags``, the ``--spellings`` when
    not just ``--field-name``; ``min``, a bound the command line checks first)."""
    return dataclasses.field(default=default, metadata={"help": help, "flags": flags, "min": min})


def flags(field: dataclasses.Field) -> tuple[str, ...]:
    """The command-line spellings of a config field: its own ``flags``, or ``--field-name``."""
    return field.metadata["flags"] or ("--" + field.name.replace("_", "-"),)


def listing(names) -> str:
    """("a", "b", "c") -> "a, b or c"."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


@dataclass(frozen=True)
class TrainConfig:
    """Every choice that shapes a run. Saved in each checkpoint; resume checks it."""

    model: str = option("default", "Architecture (see scratchcnn models).")
    epochs: int = option(2, "Passes over the training set.", min=1)
    batch_size: int = option(128, "Images per step.", min=1)
    optimizer: str = option("adam", f"Optimizer: {listing(optim.OPTIMIZERS)}.")
    learning_rate: float = option(3e-3, "Peak learning rate.", "--lr", "--learning-rate")
    schedule: str = option("one_cycle", f"Learning-rate schedule: {listing(SCHEDULES)}.")
    warmup_epochs: float = option(0.0, "Linear warm-up length in epochs.", min=0)
    milestones: tuple[int, ...] = option((), "Epochs where lr is multiplied by gamma, e.g. 5,8.")
    gamma: float = option(0.1, "What --schedule milestones multiplies lr by.")
    weight_decay: float = option(0.0, "Weight decay of the kernels.", min=0)
    clip_norm: float | None = option(None, "Clip gradients to this global norm.")
    label_smoothing: float = option(0.0, "Label smoothing in [0, 1).")
    augment: str = option("none", f"Augmentation: {listing(AUGMENTATIONS)}.")
    val_fraction: float = option(0.1, "Share of training images held out for validation.")
    early_stopping: int | None = option(
        None, "Stop after this many epochs without a lower validation loss."
    )
    plateau_patience: int | None = option(
        None,
        "Multiply lr by --plateau-factor after this many epochs without progress.",
        "--plateau",
    )
    plateau_factor: float = option(0.5, "What --plateau multiplies lr by.")
    adversarial: str = option(
        "none", f"Adversarial training: {listing(attacks.ADVERSARIAL)} (see lesson 11)."
    )
    adversarial_eps: float = option(0.3, "L-infinity budget of the training attack.")
    adversarial_steps: int = option(7, "PGD steps per batch (--adversarial pgd).")
    seed: int = option(0, "Seed of every random choice.")
    backend: str = option("numpy", "numpy, or jax (the same step, compiled).")
    train_limit: int | None = option(None, "Train on the first N training images only.")
    test_limit: int | None = option(None, "Evaluate on the first N test images only.")
    eval_batch_size: int = option(1000, "Images per evaluation batch.", min=1)
    init_from: str | None = option(
        None,
        "Fine-tune: start from this checkpoint's (or pretrained network's) weights, "
        "with a fresh optimizer.",
        "--init",
    )

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
