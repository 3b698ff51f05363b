"""Trainer settings: their defaults, one line of help each, and their validation.

Settings are flat: the trainer's own ones (optimiser, schedule, batches, seed, subsets, ...) and the model's
(``hidden_size``, ``dt``, ...), which the model picked by ``model`` validates when it is built (see
:data:`MODEL_KEYS`); :func:`validate_config` checks only the trainer's own ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..baselines import BASELINE_DEFAULTS
from ..validation import ConfigError, check_choice, check_int, check_real

__all__ = ["TRAIN_DEFAULTS", "TRAIN_KEY_HELP", "MODEL_KEYS", "RESUME_MUTABLE_KEYS", "AMP", "validate_config"]

#: Every setting, with its default value (presets override them, ``--set`` overrides presets).
TRAIN_DEFAULTS: dict[str, Any] = {
    "hidden_size": 128,
    "num_layers": 2,
    "dt": 0.1,
    "alpha": 0.0,
    "dropout": 0.0,
    "residual_skip": None,
    "input_gain": 1.0,
    "memory": "standard",
    "lr": 1e-3,
    "batch_size": 32,
    "eval_batch_size": 256,
    "epochs": 10,
    "lr_reduce_epoch": None,
    "lr_reduce_factor": 0.1,
    "grad_clip": None,
    "amp": "off",
    "seed": 0,
    "backend": "auto",
    "train_subset": None,
    "eval_subset": None,
    "num_workers": 0,
    "model": "unicornn",
    "learn_time_steps": True,
    **BASELINE_DEFAULTS,  # cornn_*, indrnn_*: read by the baselines' factories
}

#: Settings handed to the model factory and validated by the model, not by the trainer.
MODEL_KEYS = frozenset(
    {
        "hidden_size",
        "num_layers",
        "dt",
        "alpha",
        "dropout",
        "residual_skip",
        "input_gain",
        "memory",
        "backend",
        "learn_time_steps",
        *BASELINE_DEFAULTS,
    }
)

#: One line of help per setting (shown by ``unicornn train --help``).
TRAIN_KEY_HELP: dict[str, str] = {
    "hidden_size": "units per layer (int)",
    "num_layers": "number of stacked UnICORNN layers (int)",
    "dt": "nominal time step in (0, 1]: one float for all layers, or a comma list, one per layer",
    "alpha": "restoring-force coefficient alpha >= 0, shared by the layers",
    "dropout": "over-time (variational) dropout after every layer, in [0, 1)",
    "residual_skip": "res-UnICORNN: skip S layers (Appendix C.5), or none",
    "input_gain": "factor on the first layer's input projection at initialisation (1: the paper's)",
    "memory": "standard, or lean: training memory independent of the sequence length (recomputes)",
    "lr": "Adam learning rate",
    "batch_size": "training batch size (global: split over the processes under torchrun)",
    "eval_batch_size": "batch size for validation and test",
    "epochs": "total number of epochs",
    "lr_reduce_epoch": "after this many epochs the learning rate is multiplied by lr_reduce_factor, or none",
    "lr_reduce_factor": "factor applied at lr_reduce_epoch (the paper divides by 10)",
    "grad_clip": "clip the global gradient norm to this value, or none",
    "amp": "automatic mixed precision on CUDA: off, bf16 or fp16",
    "seed": "random seed of the first run (run k uses seed + k)",
    "backend": "recurrence backend: auto, reference, cpu or triton",
    "train_subset": "train on a fixed random subset of this many training sequences, or none (all)",
    "eval_subset": "evaluate on a fixed random subset of this many validation/test sequences, or none",
    "num_workers": "DataLoader worker processes",
    "model": "the model: unicornn (hidden_size ... input_gain, memory, backend are its arguments), or a "
    "baseline: lstm, gru (hidden_size, num_layers, dropout), cornn (also dt and cornn_*), indrnn (indrnn_*)",
    "learn_time_steps": "unicornn: false freezes every layer's c (fixed time steps dt * sigmoid(c); Fig. 6 ablation)",
    "cornn_gamma": "coRNN: gamma >= 0 (default 0.4, the authors' psMNIST value)",
    "cornn_epsilon": "coRNN: epsilon >= 0 (default 8.0, the authors' psMNIST value)",
    "cornn_damping": "coRNN: explicit (the authors' code) or implicit (the coRNN paper's IMEX scheme)",
    "indrnn_max_steps": "IndRNN: T of the recurrent-weight bound |u| <= indrnn_gamma^(1/T) (sequence length)",
    "indrnn_gamma": "IndRNN: the largest gain over indrnn_max_steps steps, >= 1 (default 2.0)",
}

#: Settings that ``--resume --set`` may change (the change is recorded in config.json); a resumed run keeps its
#: own value of every other setting, and asking for a different one is refused.
RESUME_MUTABLE_KEYS = frozenset({"epochs", "eval_batch_size", "num_workers"})

AMP = ("off", "bf16", "fp16")


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check the trainer's own settings; return a copy completed from :data:`TRAIN_DEFAULTS`.

    Model settings (:data:`MODEL_KEYS`) are passed on unchecked: the model validates them. Raises
    :class:`~unicornn.validation.ConfigError` naming the setting and what was expected.
    """
    unknown = sorted(set(cfg) - set(TRAIN_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"unknown setting(s) {', '.join(unknown)}; valid settings: {', '.join(TRAIN_DEFAULTS)}"
        )
    out = dict(TRAIN_DEFAULTS)
    out.update(cfg)

    def name(k: str) -> str:
        return f"setting {k!r}"

    from ..task_models import MODELS

    check_choice(name("model"), out["model"], MODELS)
    for k in ("batch_size", "eval_batch_size", "epochs"):
        check_int(name(k), out[k], 1)
    for k in ("seed", "num_workers"):
        check_int(name(k), out[k], 0)
    for k in ("lr_reduce_epoch", "train_subset", "eval_subset"):
        check_int(name(k), out[k], 1, optional=True)
    for k in ("lr", "lr_reduce_factor"):
        out[k] = check_real(name(k), out[k], low=0.0, low_open=True)
    out["grad_clip"] = check_real(name("grad_clip"), out["grad_clip"], low=0.0, low_open=True, optional=True)
    check_choice(name("amp"), out["amp"], AMP)
    for k, v in out.items():  # the JSON form, so that a resumed run compares equal to the recorded one
        if isinstance(v, tuple):
            out[k] = list(v)
    return out
