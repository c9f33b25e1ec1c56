"""Training the interaction model on gym sessions (issue 8). ``python -m microturn.train --preset tiny-cpu``;
see docs/TRAINING.md."""

from microturn.train.data import Example, SessionBank, TrainBatch, collate, loss_weights, sample_batch
from microturn.train.loop import Trainer
from microturn.train.objective import compute_losses
from microturn.train.presets import PRESETS, TrainPreset, train_preset

__all__ = [
    "PRESETS",
    "Example",
    "SessionBank",
    "TrainBatch",
    "TrainPreset",
    "Trainer",
    "collate",
    "compute_losses",
    "loss_weights",
    "sample_batch",
    "train_preset",
]
