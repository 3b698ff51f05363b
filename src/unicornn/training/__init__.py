"""Training: settings, presets (the paper's hyper-parameters), the trainer and its pieces, checkpoints, DDP,
reports."""

from .presets import PRESETS, TRAIN_DEFAULTS, Preset, get_preset, presets_for
from .run import RunExistsError
from .seeds import run_dir_for, train_seeds
from .trainer import NonFiniteError, build_model, evaluate, train_run

__all__ = [
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
    "train_seeds",
    "run_dir_for",
]
