"""One training step, and the two backends that run it.

One hand-written step (``make_train_step``) runs on NumPy arrays as it is, and compiled
by ``jax.jit`` on JAX arrays (``backend="jax"``): the very same forward and backward
code, only the array library changes. Also here: the schedule and optimizer a config
asks for, and the evaluation of a split with the backend's own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from scratchcnn import attacks, optim, trades
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.fast.cores import keep_freed_memory
from scratchcnn.inference import make_eval_step, predict_logits
from scratchcnn.metrics import Evaluation, evaluate_logits
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.train.config import TrainConfig
from scratchcnn.train.data import DROPOUT, Split, epoch_rng

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

    (params, state, opt_state, images: (N, H, W, C) in [0, 1], labels: (N,), rng)
        -> (params, state, opt_state, loss, accuracy on the batch)
    With ``adversarial`` (an ``attacks.AdversarialTraining``) the images are attacked
    first, in [0, 1] where the budget eps is measured; either way the step standardizes
    them itself. rng drives dropout (and the attack's random start): a NumPy Generator,
    or a JAX key under jit. TRADES has a loss of its own: ``trades.make_train_step``.
    """
    if adversarial is not None and adversarial.method == "trades":
        return trades.make_train_step(model, optimizer, adversarial, label_smoothing)

    def train_step(params, state, opt_state, images, labels, rng):
        if adversarial is not None:
            images, labels = attacks.training_batch(
                model, params, state, images, labels, attacks.attack_rng(rng), adversarial
            )
        x = standardize_unit(images)
        logits, new_state, caches = model.forward(params, state, x, train=True, rng=rng)
        loss, loss_cache = softmax_cross_entropy_forward(logits, labels, label_smoothing)
        dlogits, _ = softmax_cross_entropy_backward(1.0, loss_cache)
        _, grads = model.backward(dlogits, caches, input_grad=False)
        params, opt_state = optimizer.update(grads, opt_state, params)
        accuracy = (logits.argmax(axis=1) == labels).mean()
        return params, new_state, opt_state, loss, accuracy

    return train_step


# --8<-- [end:train_step]


# --------------------------------------------------------------------------- backends


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

        keep_freed_memory()  # XLA's CPU buffers come from malloc too: 2x on this step
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


def make_backend(model, optimizer, config: TrainConfig) -> NumpyBackend | JaxBackend:
    """The config's backend, holding the train step and the eval step it runs."""
    backend = JaxBackend if config.backend == "jax" else NumpyBackend
    return backend(
        make_train_step(model, optimizer, config.label_smoothing, config.adversarial_training()),
        make_eval_step(model),
        config.seed,
    )


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
