"""Training a network on MNIST, one responsibility per module:

- ``config``   ``TrainConfig`` (every choice of a run, with its help text) and ``RECIPES``;
- ``data``     the train/validation/test splits, and each epoch's shuffled batches;
- ``step``     the train step (NumPy, or compiled by ``jax.jit``), its optimizer and schedule;
- ``loop``     ``train``: epochs, validation, early stopping;
- ``runs``     the run's state and result, its folder (checkpoints, history), resume;
- ``progress`` the progress bar and the line printed after each epoch.

``from scratchcnn.train import TrainConfig, train`` is all a script needs.
"""

from scratchcnn.train.config import RECIPES, TrainConfig
from scratchcnn.train.loop import train
from scratchcnn.train.runs import ResumeError, TrainResult
from scratchcnn.train.step import make_train_step

__all__ = ["RECIPES", "ResumeError", "TrainConfig", "TrainResult", "make_train_step", "train"]
