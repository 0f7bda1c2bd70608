"""One training step, and the two backends that run it.

One hand-written step (``make_train_step``) runs on NumPy arrays as it is, and compiled
by ``jax.jit`` on JAX arrays (``backend="jax"``): the very same forward and backward
code, only the array library changes. Also here: the schedule and optimizer a config
asks for (with frozen layers and a smaller learning rate for a pretrained body, when
fine-tuning), and the evaluation of a split with the backend's own forward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from scratchcnn import attacks, optim, trades
from scratchcnn.data.preprocess import standardize_unit
from scratchcnn.fast.cores import keep_freed_memory
from scratchcnn.fast.jit_chunks import eval_in_chunks
from scratchcnn.inference import make_eval_step, predict_logits
from scratchcnn.layers import BatchNorm, Sequential
from scratchcnn.metrics import Evaluation, evaluate_logits
from scratchcnn.ops.losses import softmax_cross_entropy_backward, softmax_cross_entropy_forward
from scratchcnn.residual import Residual
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


def make_run_optimizer(config: TrainConfig, schedule: optim.Schedule, model):
    """The optimizer named in the config, following ``schedule``; with ``--freeze`` or
    ``--body-lr-scale``, its step scaled layer by layer (``PerLayerScale``)."""
    options = {"weight_decay": config.weight_decay, "clip_norm": config.clip_norm}
    if config.optimizer == "adamw" and config.weight_decay == 0.0:
        del options["weight_decay"]  # AdamW without decay is Adam: keep AdamW's default
    optimizer = optim.make_optimizer(config.optimizer, schedule, **options)
    if not config.freeze and config.body_lr_scale == 1:
        return optimizer
    *body, head = model.init(0)[0]  # the names of the layers with weights, in order
    scales = {name: config.body_lr_scale for name in body}
    scales.update({name: 0.0 for name in config.freeze})
    return PerLayerScale(optimizer, scales)


# --8<-- [start:per_layer_scale]
@dataclass(frozen=True)
class PerLayerScale:
    """An optimizer whose step is scaled layer by layer: ``p <- p + scale * (p_new - p)``.

    Every optimizer here moves a parameter by ``lr_t`` times a direction that does not
    depend on the learning rate, so scaling the move is scaling the learning rate: a
    scale of 0.1 makes a layer learn ten times slower (fine-tuning a pretrained body),
    and a scale of 0 keeps it fixed: its params come back as they went in, bit for bit.
    """

    inner: optim.SGD | optim.Adam
    scales: dict[str, float]  # layer name -> scale; a layer not named gets 1 (the head)

    def init(self, params):
        return self.inner.init(params)

    def update(self, grads, opt_state, params):
        # A frozen layer's gradient must not count anywhere: not in the global norm that
        # --clip-norm scales every gradient by, not in Adam's moments.
        grads = {
            name: optim.zeros_like_tree(g) if self.scales.get(name, 1.0) == 0 else g
            for name, g in grads.items()
        }
        new_params, opt_state = self.inner.update(grads, opt_state, params)
        return {
            name: scaled_step(params[name], new, self.scales.get(name, 1.0))
            for name, new in new_params.items()
        }, opt_state


def scaled_step(old, new, scale: float):
    """A layer's params (dicts of arrays) moved ``scale`` times the optimizer's step."""
    if scale == 0:
        return old  # frozen: not even rounded
    if scale == 1:
        return new
    return optim.tree_map(lambda p, q: p + scale * (q - p), old, new)


# --8<-- [end:per_layer_scale]


# --8<-- [start:fixed_statistics]
@dataclass(frozen=True)
class FixedBatchNorm(BatchNorm):
    """A frozen BatchNorm: it normalises with its running statistics in training too.

    Left in train mode, a frozen BatchNorm would normalise each batch of the new data
    with that batch's own statistics, while the test would use the running ones (still
    MNIST's): the layer would compute one function in training and another at test time.
    In eval mode it computes the function it learnt on MNIST, and its state never changes.
    """

    def forward(self, params, state, x, *, train, rng=None):
        return super().forward(params, state, x, train=False, rng=rng)


def fixed_statistics(layer):
    """``layer`` with every BatchNorm in it (a residual block's too) a ``FixedBatchNorm``."""
    if isinstance(layer, BatchNorm):
        return FixedBatchNorm(layer.momentum, layer.epsilon)
    if isinstance(layer, Residual):
        return replace(layer, body=tuple(map(fixed_statistics, layer.body)),
                       shortcut=tuple(map(fixed_statistics, layer.shortcut)))  # fmt: skip
    return layer


def frozen_model(model: Sequential, freeze: tuple[str, ...]) -> Sequential:
    """The network the train step runs: the frozen layers' BatchNorms in eval mode."""
    if not freeze:
        return model
    return Sequential([fixed_statistics(layer) if name in freeze else layer
                       for name, layer in zip(model.names, model.layers)])  # fmt: skip


# --8<-- [end:fixed_statistics]


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
        self.eval_step = jax.jit(eval_in_chunks(eval_step))  # see fast/jit_chunks.py
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
    trained = frozen_model(model, config.freeze)
    return backend(
        make_train_step(trained, optimizer, config.label_smoothing, config.adversarial_training()),
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
