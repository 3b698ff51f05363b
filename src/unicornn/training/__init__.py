"""Training: settings, presets (the paper's hyper-parameters), the trainer and its pieces, checkpoints, DDP,
reports.

The names below are imported on first use, so that importing a light submodule (``presets``, ``run``) does
not import the trainer and the models. Losses and metrics are in :mod:`unicornn.metrics`, the task models and
:func:`~unicornn.task_models.build_model` in :mod:`unicornn.task_models`.
"""

from importlib import import_module

_EXPORTS = {
    "PRESETS": "presets",
    "TRAIN_DEFAULTS": "settings",
    "Preset": "presets",
    "get_preset": "presets",
    "presets_for": "presets",
    "NonFiniteError": "epoch",
    "RunExistsError": "errors",
    "RunLockedError": "errors",
    "RunFileError": "errors",
    "RunDirError": "errors",
    "Requested": "run",
    "evaluate": "epoch",
    "train_run": "trainer",
    "train_seeds": "seeds",
    "run_dir_for": "seeds",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
