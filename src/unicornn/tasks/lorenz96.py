"""Lorenz-96 one-step-ahead prediction (paper Appendix D; Lorenz, 1996).

Appendix D names the system, the forcings, the sizes and the metric (NRMSE) but not the exact prediction
target or the NRMSE formula: predicting the next sample at every step (below) and the normalisation by the
split's target standard deviation (:func:`nrmse`) are this package's reading of it.

The system, with N = 5 variables and cyclic indices (x_{-1} = x_{N-1}, x_N = x_0, ...):

    dx_j/dt = (x_{j+1} - x_{j-2}) x_{j-1} - x_j + F,        j = 0, ..., N-1.

The paper uses F = 0.9 (just past the Hopf bifurcation of the equilibrium x_j = F at F ≈ 0.894 for N = 5,
so trajectories are not chaotic) and F = 8 (chaotic); option ``F`` (default 8.0).

Data generation (deterministic from the seed):

* initial conditions x_j(0) ~ U(F - 0.5, F + 0.5), i.i.d.;
* integrated in float64 with the classical fixed-step 4th-order Runge-Kutta method, step ``dt / SUBSTEPS``
  (:data:`SUBSTEPS` = 4), sampled every ``dt`` (option, default 0.01 time units); the map from one sample
  to the next is accurate to about 5e-8 for F = 8 (checked against a finer integration in the tests),
  below the float32 resolution of the stored data;
* the first ``burn_in`` samples (option, default 0: sequences start at the random initial condition) are
  dropped; then ``length + 1`` samples x_0 ... x_length (option ``length``, default 2000) are kept;
* one sequence pairs inputs x_0 ... x_{length-1} with targets x_1 ... x_length: float32 ``(length, 5)``
  each, readout at every step, MSE loss.

The paper gives 128 sequences of length 2000 per split (defaults of ``n_train`` / ``n_valid`` /
``n_test``) but not its solver, step or initial-condition law; the ones above are this package's. Initial
conditions come from ``numpy.random.default_rng([seed, stream])``: train (stream 0) and validation
(stream 1) from the run seed, the test set (stream 2) always from :data:`TEST_SEED`.

Option ``standardize`` (default False: raw units): map inputs and targets by (x - m) / s with ``m`` and
``s`` the mean and standard deviation (ddof 0) of the training trajectories pooled over sequences, steps and
variables (two scalars, shared by the three splits). The data vary little around their mean at F = 0.9
(mean 0.88, std 0.13), which a bounded oscillator network resolves poorly in raw units. Because one scalar
affine map is applied to predictions and targets alike, the NRMSE below is unchanged by it: results with
and without it are directly comparable, and so is the persistence baseline (:func:`persistence_nrmse`).

Option ``target``: ``"next"`` (default, the paper's task: the target of step n is the state x_{n+1}) or
``"increment"`` (the target is x_{n+1} - x_n divided by ``r``, the pooled standard deviation (ddof 0) of the
training split's increments). The information given and the quantity predicted are the same (x_n is the
input of step n, so x_{n+1} = x_n + r * prediction); only the output's parametrisation differs, and the
persistence forecast becomes the prediction 0. The trainer then reports the NRMSE of the increments;
multiply it by :func:`state_nrmse_factor` of the split to get the NRMSE of the implied states, the number
comparable with the paper and with :func:`persistence_nrmse`.

Metric (:func:`nrmse`): RMSE over every element of a split (all sequences, steps and variables) divided by
the population standard deviation (ddof = 0) of that split's targets over the same elements:

    NRMSE = sqrt(mean((pred - y)^2)) / sqrt(mean((y - mean(y))^2)).

Accumulated over batches: with S = sum((pred - y)^2), s1 = sum(y), s2 = sum(y^2) and n elements,
NRMSE = sqrt(S / n) / sqrt(s2 / n - (s1 / n)^2) (accumulate in float64).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
import torch
from torch.utils.data import Dataset

from ..validation import ConfigError
from .base import Splits, TaskSpec, check_float, check_int, check_seed, resolve_options

N_VARIABLES = 5
SUBSTEPS = 4
"""RK4 steps per sampling interval ``dt``."""
TEST_SEED = 19960901
"""Seed of the Lorenz-96 test set, independent of the run seed."""

_TRAIN, _VALID, _TEST = 0, 1, 2
TARGETS = ("next", "increment")


@functools.lru_cache(maxsize=8)
def _neighbours(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    j = np.arange(n)
    return (j + 1) % n, (j - 2) % n, (j - 1) % n


def _rhs_first_axis(x: np.ndarray, F: float) -> np.ndarray:
    """Right-hand side for states laid out variables-first, ``(N, ...)``."""
    plus1, minus2, minus1 = _neighbours(x.shape[0])
    return (x[plus1] - x[minus2]) * x[minus1] - x + F


def lorenz96_rhs(x: np.ndarray, F: float) -> np.ndarray:
    """Right-hand side of Lorenz-96 for states ``x`` of shape ``(..., N)`` (cyclic in the last axis)."""
    x = np.asarray(x, dtype=np.float64)
    return np.moveaxis(_rhs_first_axis(np.moveaxis(x, -1, 0), F), 0, -1)


def integrate(x0: np.ndarray, F: float, dt: float, n_samples: int, substeps: int = SUBSTEPS) -> np.ndarray:
    """Classical RK4 with step ``dt / substeps`` from ``x0`` ``(B, N)``, vectorised over the B sequences.

    Returns float64 ``(B, n_samples, N)``: the states at times 0, dt, ..., (n_samples - 1) dt.
    """
    x = np.array(x0, dtype=np.float64).T.copy()  # (N, B): row gathers are cheap
    h = dt / substeps
    out = np.empty((n_samples,) + x.shape, dtype=np.float64)
    out[0] = x
    for n in range(1, n_samples):
        for _ in range(substeps):
            k1 = _rhs_first_axis(x, F)
            k2 = _rhs_first_axis(x + (0.5 * h) * k1, F)
            k3 = _rhs_first_axis(x + (0.5 * h) * k2, F)
            k4 = _rhs_first_axis(x + h * k3, F)
            x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        out[n] = x
    return out.transpose(2, 0, 1).copy()


def initial_conditions(F: float, n: int, seed: int, stream: int) -> np.ndarray:
    """``n`` initial states ``(n, 5)`` drawn i.i.d. from U(F - 0.5, F + 0.5)."""
    rng = np.random.default_rng([seed, stream])
    return F - 0.5 + rng.random((n, N_VARIABLES))


def nrmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NRMSE of ``pred`` against ``target`` (same shape, any): RMSE / population std of ``target``."""
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}"
        )
    p, y = pred.double(), target.double()
    return ((p - y) ** 2).mean().sqrt() / y.std(correction=0)


def persistence_nrmse(dataset: TrajectoryDataset) -> float:
    """NRMSE of the persistence forecast x_{n+1} = x_n on ``dataset``: the trivial baseline of this task.

    Every target x_{n+1} is predicted by the input of the same step, x_n; the metric is :func:`nrmse` over
    the whole split (the trainer's metric), so a model must score below this to have learnt anything
    beyond "the state does not move". On the package's data (defaults, seed 0) it is about 0.0137 at
    F = 0.9 and 0.058 at F = 8 (test split).
    """
    traj = dataset.trajectories.double()
    return float(nrmse(traj[:, :-1], traj[:, 1:]))


def _increments(traj: torch.Tensor) -> torch.Tensor:
    return traj[:, 1:] - traj[:, :-1]


def state_nrmse_factor(dataset: TrajectoryDataset) -> float:
    """For ``target="increment"``: state NRMSE = (reported increment NRMSE) x this factor.

    With d = x_{n+1} - x_n over the split, the state error equals the increment error, so the factor is the
    pooled std of d divided by the pooled std of the state targets x_{n+1} (both ddof 0). For
    ``target="next"`` the factor is 1.
    """
    if dataset.increment_scale is None:
        return 1.0
    traj = dataset.trajectories.double()
    return float(_increments(traj).std(correction=0) / traj[:, 1:].std(correction=0))


def persistence_baseline(options: dict | None = None, seed: int = 0) -> dict[str, float]:
    """Persistence NRMSE of the train, valid and test splits built with ``options`` and ``seed``."""
    splits = Lorenz96Task().build(dict(options or {}), None, seed)
    return {name: persistence_nrmse(getattr(splits, name)) for name in ("train", "valid", "test")}


#: The options that determine the test trajectories (the test split does not depend on the run seed).
_TEST_DATA_OPTIONS = ("F", "length", "dt", "burn_in", "n_test")


@functools.lru_cache(maxsize=16)
def _test_reference(data_options: tuple) -> tuple[float, float]:
    """(persistence NRMSE, state NRMSE / increment NRMSE) of the test split of ``data_options``."""
    opts = dict(data_options, n_train=1, n_valid=1, target="increment")
    test = Lorenz96Task().build(opts, None, 0).test
    return persistence_nrmse(test), state_nrmse_factor(test)


class TrajectoryDataset(Dataset):
    """Sampled trajectories ``(n, length + 1, 5)`` (kept in raw units in ``trajectories``).

    Item ``i`` is ``(x[i, :-1], x[i, 1:])`` mapped by ``(x - shift) / scale``: inputs and one-step-ahead
    targets, float32 ``(length, 5)``. ``shift`` = 0 and ``scale`` = 1 (the default) give raw units. With
    ``increment_scale`` set, the targets are ``(x[i, 1:] - x[i, :-1]) / increment_scale`` instead.
    """

    def __init__(
        self,
        trajectories: np.ndarray | torch.Tensor,
        shift: float = 0.0,
        scale: float = 1.0,
        increment_scale: float | None = None,
    ) -> None:
        traj = torch.as_tensor(trajectories, dtype=torch.float32)
        if traj.ndim != 3 or traj.shape[1] < 2:
            raise ValueError(
                f"trajectories must have shape (n, length + 1, N) with length >= 1, got {tuple(traj.shape)}"
            )
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        if increment_scale is not None and not increment_scale > 0:
            raise ValueError(f"increment_scale must be > 0 or None, got {increment_scale}")
        self.trajectories = traj
        self.shift, self.scale = float(shift), float(scale)
        self.increment_scale = None if increment_scale is None else float(increment_scale)

    def __len__(self) -> int:
        return self.trajectories.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.trajectories[index]
        seq = raw if self.shift == 0.0 and self.scale == 1.0 else (raw - self.shift) / self.scale
        if self.increment_scale is not None:
            return seq[:-1], (raw[1:] - raw[:-1]) / self.increment_scale
        return seq[:-1], seq[1:]


class Lorenz96Task:
    """Lorenz-96 (N = 5) one-step-ahead prediction; options F, length, dt, burn_in, n_train/n_valid/n_test,
    standardize, target."""

    spec = TaskSpec(
        name="lorenz96",
        description="Lorenz-96 (5 variables, forcing F): predict x_{n+1} from x_0..x_n at every step",
        input_size=N_VARIABLES,
        output_size=N_VARIABLES,
        readout="all",  # one-step-ahead at every step: this package's reading of Appendix D
        loss="mse",
        metric="nrmse",  # formula: this package's reading of Appendix D (see the module docstring)
        higher_is_better=False,
        default_options={
            "F": 8.0,
            "length": 2000,
            "dt": 0.01,
            "burn_in": 0,
            "n_train": 128,
            "n_valid": 128,
            "n_test": 128,
            "standardize": False,
            "target": "next",
        },
        paper_tables="Table 7, Appendix D",
    )

    def _reference(self, options: dict | None) -> tuple[float, float]:
        """(persistence test NRMSE, :func:`state_nrmse_factor` of the test split) for task ``options``."""
        opts = resolve_options(self.spec, options)
        persistence, ratio = _test_reference(tuple((k, opts[k]) for k in _TEST_DATA_OPTIONS))
        return persistence, ratio if opts["target"] == "increment" else 1.0

    def baseline_note(self, options: dict | None = None) -> str:
        """The persistence baseline on the test data of ``options``, in words (for ``unicornn tasks``)."""
        return (
            f"persistence x_{{n+1}} = x_n scores test NRMSE {self._reference(options)[0]:.4g} on these test "
            "data (state NRMSE; a model must score below it)"
        )

    def result_extras(self, options: dict, seed: int, test: float) -> dict[str, float]:
        """Columns beside a run's test NRMSE ``test`` in ``unicornn report``: the state NRMSE (``test`` times
        :func:`state_nrmse_factor` for ``target="increment"``, else ``test`` itself) and the persistence
        baseline's test NRMSE on the same test data (which do not depend on ``seed``)."""
        persistence, factor = self._reference(options)
        return {"test state nrmse": test * factor, "persistence test nrmse": persistence}

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Integrate the three splits in one vectorised run; nothing is read from ``data_dir``."""
        opts = resolve_options(self.spec, options)
        seed = check_seed(seed)
        F = check_float("F", opts["F"])
        dt = check_float("dt", opts["dt"])
        if not 0 < dt <= 0.1:
            raise ConfigError(f"option 'dt' must be in (0, 0.1] (RK4 accuracy), got {dt}")
        length = check_int("length", opts["length"], 1)
        burn_in = check_int("burn_in", opts["burn_in"], 0)
        if not isinstance(opts["standardize"], bool):
            raise TypeError(f"option 'standardize' must be a bool, got {opts['standardize']!r}")
        if opts["target"] not in TARGETS:
            raise ValueError(f"option 'target' must be one of {TARGETS}, got {opts['target']!r}")
        sizes = [check_int(k, opts[k], 1) for k in ("n_train", "n_valid", "n_test")]
        x0 = np.concatenate(
            [
                initial_conditions(F, sizes[0], seed, _TRAIN),
                initial_conditions(F, sizes[1], seed, _VALID),
                initial_conditions(F, sizes[2], TEST_SEED, _TEST),
            ]
        )
        traj = integrate(x0, F, dt, burn_in + length + 1)[:, burn_in:]
        if not np.isfinite(traj).all():
            raise ConfigError(f"Lorenz-96 integration diverged for F={F}, dt={dt}; use a smaller 'dt'")
        a, b = sizes[0], sizes[0] + sizes[1]
        shift, scale, inc = 0.0, 1.0, None
        if opts["standardize"]:
            shift, scale = float(traj[:a].mean()), float(traj[:a].std())
        if opts["target"] == "increment":
            inc = float(np.diff(traj[:a], axis=1).std())
        return Splits(
            train=TrajectoryDataset(traj[:a], shift, scale, inc),
            valid=TrajectoryDataset(traj[a:b], shift, scale, inc),
            test=TrajectoryDataset(traj[b:], shift, scale, inc),
        )
