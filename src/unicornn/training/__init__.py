"""Training: presets (the paper's hyper-parameters), the trainer, checkpoints, DDP, reports."""

from .presets import EXPERIMENTS, PRESETS, TRAIN_DEFAULTS, Preset, get_preset, presets_for
from .trainer import NonFiniteError, RunExistsError, build_model, evaluate, train_run

__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "TRAIN_DEFAULTS",
    "Preset",
    "get_preset",
    "presets_for",
    "NonFiniteError",
    "RunExistsError",
    "build_model",
    "evaluate",
    "train_run",
]
