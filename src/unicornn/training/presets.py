"""Hyper-parameter presets: the one place where the paper's settings live.

Every preset cites its source. Paper values come from Rusch & Mishra (ICML 2021):

* Table 6: learning rate, dropout, batch size, dt and alpha of the best model of each experiment;
* Appendix A: epochs and the learning-rate reduction (divided by 10) and the separate first-layer dt of IMDB
  (6.6e-3) and EigenWorms (2.81e-5);
* Tables 1-5 and 7: units and layers.

A preset is a flat mapping of settings (see :data:`TRAIN_DEFAULTS`) plus task options (``task_options``).
``unicornn train TASK --preset NAME --set key=value`` starts from the preset and overrides single keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = [
    "TRAIN_DEFAULTS",
    "TRAIN_KEY_HELP",
    "Experiment",
    "Preset",
    "EXPERIMENTS",
    "PRESETS",
    "get_preset",
    "presets_for",
]

#: Trainer settings every preset provides (after defaults), with their default values.
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
}

#: One line of help per trainer setting (shown by ``unicornn train --help`` and ``unicornn tasks``).
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
}


@dataclass(frozen=True)
class Experiment:
    """A task of the paper (or of this package) and what the paper reports for it."""

    name: str
    title: str
    paper_tables: str
    metric: str  # what the paper reports: "accuracy", "nrmse", "rmse", "mse"
    default_preset: str = "paper"


@dataclass(frozen=True)
class Preset:
    """A named set of hyper-parameters for one task, with its source."""

    task: str
    name: str
    source: str
    settings: MappingProxyType
    task_options: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    paper_result: str | None = None
    note: str = ""

    def config(self) -> dict[str, Any]:
        """Trainer settings: :data:`TRAIN_DEFAULTS` overridden by this preset's settings."""
        cfg = dict(TRAIN_DEFAULTS)
        cfg.update(self.settings)
        return cfg


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in [
        Experiment(
            "adding",
            "adding problem (coRNN paper's setup; not an experiment of the UnICORNN paper)",
            "-",
            "mse",
            default_preset="small",
        ),
        Experiment("psmnist", "permuted sequential MNIST", "Tables 1, 6, 8", "accuracy"),
        Experiment("smnist", "sequential MNIST (not an experiment of the UnICORNN paper)", "-", "accuracy"),
        Experiment("noisy-cifar10", "noise padded CIFAR-10", "Tables 2, 6, 8", "accuracy"),
        Experiment("eigenworms", "EigenWorms (UEA archive)", "Tables 3, 6", "accuracy"),
        Experiment("bidmc-rr", "BIDMC vital signs: respiratory rate", "Tables 4, 6", "rmse"),
        Experiment("bidmc-hr", "BIDMC vital signs: heart rate", "Tables 4, 6", "rmse"),
        Experiment("imdb", "IMDB sentiment analysis", "Tables 5, 6, 8", "accuracy"),
        Experiment("lorenz96", "Lorenz-96 one-step-ahead prediction", "Table 7, Appendix D", "nrmse"),
    ]
}

_APPX_A_PSMNIST = "Appendix A: 650 epochs, then lr/10 for 3 x 650 more (2600 in all)"
_APPX_A_OTHER = "Appendix A: 250 epochs, then lr/10 for 250 more (500 in all)"
# Lorenz-96, both forcings: units and layers of Table 7; the paper gives no Table 6 row for this task.
# Table 6 row "psMNIST (#units = 256)" with Table 1's 3 layers and the Appendix A schedule (also used for sMNIST).
_PSMNIST_256 = dict(hidden_size=256, num_layers=3, lr=2.51e-3, dropout=0.1, batch_size=32, dt=0.19, alpha=30.65,
                    eval_batch_size=1000, epochs=2600, lr_reduce_epoch=650)  # fmt: skip
# CPU-sized MNIST runs (psMNIST and sMNIST): the Table 6 "#units = 128" dt, alpha on a 4,000-sequence subset.
_MNIST_SMALL = dict(hidden_size=64, num_layers=2, lr=2e-3, dropout=0.0, batch_size=64, dt=0.482, alpha=12.53,
                    eval_batch_size=500, epochs=3, train_subset=4000, eval_subset=1000)  # fmt: skip
_LORENZ_SOURCE = (
    "90 units, 2 layers: Table 7; " + _APPX_A_OTHER + ". The paper has no Table 6 row for "
    "Lorenz-96: lr, batch size, dt and alpha are this package's choice"
)
_LORENZ_PAPER = dict(hidden_size=90, num_layers=2, lr=3e-3, dropout=0.0, batch_size=16, dt=0.1, alpha=1.0,
                     eval_batch_size=128, epochs=500, lr_reduce_epoch=250)  # fmt: skip


def _p(task, name, source, settings, task_options=None, paper_result=None, note=""):
    unknown = set(settings) - set(TRAIN_DEFAULTS)
    if unknown:  # a typo in this file must not pass silently
        raise KeyError(f"preset {task}/{name}: unknown settings {sorted(unknown)}")
    return Preset(
        task=task,
        name=name,
        source=source,
        settings=MappingProxyType(dict(settings)),
        task_options=MappingProxyType(dict(task_options or {})),
        paper_result=paper_result,
        note=note,
    )


_PRESET_LIST: list[Preset] = [
    # ---------------------------------------------------------------- adding problem (not in the paper)
    _p(
        "adding",
        "small",
        "not a paper experiment: task as in the coRNN paper (Rusch & Mishra, ICLR 2021, adding problem) at "
        "T=200; recipe measured by this package (tests/test_training_adding.py): one layer of 32 units, "
        "alpha=0, dt=0.1, input projection 30x the paper's initial scale so that a marker saturates tanh, "
        "5,000 Adam steps of batch 64 with lr/10 after 3,000; held-out MSE ~0.04 (trivial: 0.167)",
        dict(
            hidden_size=32,
            num_layers=1,
            dt=0.1,
            alpha=0.0,
            input_gain=30.0,
            dropout=0.0,
            lr=1e-2,
            batch_size=64,
            eval_batch_size=500,
            epochs=5,
            lr_reduce_epoch=3,
        ),
        task_options={"T": 200, "n_train": 64000, "n_valid": 1000, "n_test": 1000},
        note="quick-start default of `unicornn train adding`",
    ),
    _p(
        "adding",
        "paper",
        "not a paper experiment: task as in the coRNN paper (Rusch & Mishra, ICLR 2021, adding problem, "
        "T=1000, 50,000 training sequences); the `small` recipe (T=200) carried to T=1000 by keeping "
        "dt x T at 20 (dt=0.02; dt=0.1 diverges at T=1000), with lr/10 after half of the epochs (the "
        "paper's Appendix A pattern); not yet measured to reach a given error",
        dict(
            hidden_size=64,
            num_layers=1,
            dt=0.02,
            alpha=0.0,
            input_gain=30.0,
            dropout=0.0,
            lr=3e-3,
            batch_size=50,
            eval_batch_size=500,
            epochs=60,
            lr_reduce_epoch=30,
            grad_clip=1.0,
        ),
        task_options={"T": 1000},
    ),
    # ---------------------------------------------------------------- psMNIST (Tables 1, 6, 8)
    _p(
        "psmnist",
        "paper",
        "Table 6 row 'psMNIST (#units = 256)'; 256 units, 3 layers: Table 1; " + _APPX_A_PSMNIST,
        dict(_PSMNIST_256),
        paper_result="98.4% test accuracy (Table 1); 98.2% +- 0.22% over 10 seeds (Table 8)",
    ),
    _p(
        "psmnist",
        "paper-128",
        "Table 6 row 'psMNIST (#units = 128)'; 128 units, 3 layers: Table 1; " + _APPX_A_PSMNIST,
        dict(
            hidden_size=128,
            num_layers=3,
            lr=1.14e-3,
            dropout=0.1,
            batch_size=64,
            dt=0.482,
            alpha=12.53,
            eval_batch_size=1000,
            epochs=2600,
            lr_reduce_epoch=650,
        ),
        paper_result="97.8% test accuracy (Table 1); 97.7% +- 0.09% over 10 seeds (Table 8)",
    ),
    _p(
        "psmnist",
        "small",
        "this package: a CPU-sized version of the Table 6 'psMNIST (#units = 128)' row (same dt, alpha, lr) "
        "on a 4,000-sequence training subset",
        dict(_MNIST_SMALL),
    ),
    # ---------------------------------------------------------------- sMNIST (not in the paper)
    _p(
        "smnist",
        "paper",
        "not a paper experiment: sequential MNIST with the hyper-parameters of the Table 6 row "
        "'psMNIST (#units = 256)' and its schedule (" + _APPX_A_PSMNIST + ")",
        dict(_PSMNIST_256),
    ),
    _p(
        "smnist",
        "small",
        "this package: a CPU-sized version of the psMNIST 'small' preset for unpermuted MNIST",
        dict(_MNIST_SMALL),
    ),
    # ---------------------------------------------------------------- Lorenz-96 (Table 7, Appendix D)
    _p(
        "lorenz96",
        "paper",
        "F = 0.9; " + _LORENZ_SOURCE,
        dict(_LORENZ_PAPER),
        task_options={"F": 0.9},
        paper_result="test NRMSE 2.2e-2 (Table 7, F = 0.9)",
    ),
    _p(
        "lorenz96",
        "paper-f8",
        "F = 8; " + _LORENZ_SOURCE,
        dict(_LORENZ_PAPER),
        task_options={"F": 8.0},
        paper_result="test NRMSE 3.1e-1 (Table 7, F = 8)",
    ),
    _p(
        "lorenz96",
        "small",
        "this package: CPU-sized Lorenz-96 run (F = 0.9, 2 x 32 units, 100 epochs with lr/10 after 70); "
        "about 2 minutes on 2 CPU cores, test NRMSE ~0.7 (the paper's 90-unit model reaches 2.2e-2 after "
        "500 epochs)",
        dict(
            hidden_size=32,
            num_layers=2,
            lr=5e-3,
            dropout=0.0,
            batch_size=16,
            dt=0.1,
            alpha=1.0,
            eval_batch_size=128,
            epochs=100,
            lr_reduce_epoch=70,
        ),
        task_options={"F": 0.9},
    ),
    # ---------------------------------------------------------------- tasks whose data pipeline is not here yet
    _p(
        "noisy-cifar10",
        "paper",
        "Table 6 row 'noise padded CIFAR-10'; 128 units, 3 layers: Table 2; " + _APPX_A_OTHER,
        dict(
            hidden_size=128,
            num_layers=3,
            lr=3.14e-2,
            dropout=0.1,
            batch_size=30,
            dt=0.126,
            alpha=13.0,
            eval_batch_size=1000,
            epochs=500,
            lr_reduce_epoch=250,
        ),
        paper_result="62.4% test accuracy (Table 2); 61.5% +- 0.52% over 10 seeds (Table 8)",
    ),
    _p(
        "eigenworms",
        "paper",
        "Table 6 row 'EigenWorms' (first-layer dt 2.81e-5: Appendix A); 32 units, 2 layers: Table 3; "
        "Appendix A: 250 epochs in all (no reduction)",
        dict(
            hidden_size=32,
            num_layers=2,
            lr=8.59e-3,
            dropout=0.0,
            batch_size=8,
            dt=(2.81e-5, 3.43e-2),
            alpha=0.0,
            eval_batch_size=64,
            epochs=250,
            lr_reduce_epoch=None,
        ),
        paper_result="90.3% +- 3.0% test accuracy over 5 seeds (Table 3)",
    ),
    _p(
        "bidmc-rr",
        "paper",
        "Table 6 row 'Healthcare: RR'; 3 layers: Table 4 (the paper gives no unit count; 128 is the "
        "default of the authors' published script); " + _APPX_A_OTHER,
        dict(
            hidden_size=128,
            num_layers=3,
            lr=3.98e-3,
            dropout=0.1,
            batch_size=32,
            dt=1.1e-2,
            alpha=9.0,
            eval_batch_size=100,
            epochs=500,
            lr_reduce_epoch=250,
        ),
        paper_result="test L2 error (RMSE) 1.06 +- 0.03 over 5 seeds (Table 4)",
    ),
    _p(
        "bidmc-hr",
        "paper",
        "Table 6 row 'Healthcare: HR'; 3 layers: Table 4 (the paper gives no unit count; 128 is the "
        "default of the authors' published script); " + _APPX_A_OTHER,
        dict(
            hidden_size=128,
            num_layers=3,
            lr=2.88e-3,
            dropout=0.1,
            batch_size=32,
            dt=4.6e-2,
            alpha=10.0,
            eval_batch_size=100,
            epochs=500,
            lr_reduce_epoch=250,
        ),
        paper_result="test L2 error (RMSE) 1.39 +- 0.09 over 5 seeds (Table 4)",
    ),
    _p(
        "imdb",
        "paper",
        "Table 6 row 'IMDB' (first-layer dt 6.6e-3 and embedding dropout 0.65: Appendix A); 128 units, "
        "2 layers: Table 5; Appendix A: 50 epochs in all (no reduction)",
        dict(
            hidden_size=128,
            num_layers=2,
            lr=1.67e-4,
            dropout=0.61,
            batch_size=32,
            dt=(6.6e-3, 2.05e-1),
            alpha=0.0,
            eval_batch_size=256,
            epochs=50,
            lr_reduce_epoch=None,
        ),
        task_options={"embedding_dropout": 0.65, "embedding_dim": 100, "vocab_size": 25000},
        paper_result="88.4% test accuracy (Table 5); 88.1% +- 0.19% over 10 seeds (Table 8)",
    ),
]

PRESETS: dict[tuple[str, str], Preset] = {(p.task, p.name): p for p in _PRESET_LIST}


def presets_for(task: str) -> list[Preset]:
    """All presets of ``task`` (in definition order)."""
    return [p for p in _PRESET_LIST if p.task == task]


def get_preset(task: str, name: str) -> Preset:
    """The preset ``name`` of ``task``; ``KeyError`` listing the valid names otherwise."""
    if task not in EXPERIMENTS:
        raise KeyError(f"unknown task {task!r}; valid tasks: {', '.join(EXPERIMENTS)}")
    try:
        return PRESETS[(task, name)]
    except KeyError:
        valid = ", ".join(p.name for p in presets_for(task))
        raise KeyError(f"unknown preset {name!r} for task {task!r}; valid presets: {valid}") from None
