"""scikit-learn estimators for time-series classification and regression: :class:`UnICORNNClassifier` and
:class:`UnICORNNRegressor` (needs the ``sklearn`` extra: ``pip install "unicornn[sklearn]"``).

X is a collection of series in aeon's formats: a numpy array ``(n_cases, n_channels, n_timepoints)``, a 2-D
array ``(n_cases, n_timepoints)`` (one channel), or a list of ``(n_channels, n_timepoints_i)`` arrays of
unequal length. Unequal-length cases are padded per batch and the model reads each case within its own
length (``lengths``), so padding never changes a prediction.

``fit`` standardises every channel with the training data's mean and standard deviation (over cases and
time points; a regressor's target too), then trains in one of two ways (``training``):

* ``"readout"`` (default): the recurrent layers keep a random initialisation -- for UnICORNN the paper's,
  with every unit's time step ``dt * sigmoid(c)`` drawn log-uniformly between one time point and the whole
  series, and every unit's input gain log-uniformly from [1/3, 3] with a bias drawn from U(-1, 1)
  (:func:`spread_scales`), so that the oscillators cover every time scale of the data; the LSTM
  and GRU baselines keep PyTorch's -- and only the linear read-out of the top layer's states pooled over
  time (mean and maximum per unit, ``readout="pool"``) is fitted, in closed form by ridge regression on the
  standardised features (scikit-learn's ``RidgeClassifierCV`` / ``RidgeCV``, the penalty chosen by
  leave-one-out cross-validation among :data:`RIDGE_ALPHAS`). At prediction every feature is clamped to the
  range seen in training. No gradient, no epochs: a fit takes seconds.
* ``"full"``: every parameter is trained by Adam: ``validation_fraction`` of the cases held out (stratified
  by class for the classifier), at most ``n_epochs`` epochs, the weights of the epoch with the best
  validation metric (accuracy, or RMSE for the regressor; ties broken by the lower validation loss) kept,
  and training stopped once that has not improved for ``patience`` epochs. The epochs are the package's
  training code (:func:`unicornn.training.epoch.train_epoch`, :func:`~unicornn.training.epoch.evaluate`).

The model comes from the package's model registry (``model="unicornn"``, or a baseline: ``"lstm"``,
``"gru"``, ...) in both. Defaults were chosen once on validation splits of the training files of nine
UEA/UCR and Monash data sets (never their test files); the procedure and the numbers are in
``benchmarks/choose_defaults.py`` and the "Your own data" docs page: the chosen ``training="readout"``
settings rank first over the nine sets. ``hidden_size``, ``num_layers``, ``alpha`` and
``readout`` left None take the defaults of the training mode (:data:`MODE_DEFAULTS`). ``dt="auto"`` is 1 for
``"readout"`` (time steps spread over (1/n_timepoints, 0.9)) and length-aware for ``"full"``:
``dt = min(1, DT_HORIZON / n_timepoints)`` for the longest training case, so that the nominal time covered by
a sequence, ``dt * n_timepoints``, is the same for short and long series.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .heads import Clip
from .task_models import build_model
from .tasks.base import TaskSpec
from .tasks.ts_format import RaggedSequenceDataset, SequenceDataset, pad_collate
from .training.distributed import DistContext
from .training.epoch import evaluate, predict_outputs, train_epoch
from .training.progress import Progress
from .training.settings import validate_config
from .training.splits import RunSplits, train_loader
from .training.trainer import make_optimizer
from .validation import check_choice, check_int, check_real

__all__ = [
    "UnICORNNClassifier",
    "UnICORNNRegressor",
    "DT_HORIZON",
    "MODE_DEFAULTS",
    "RIDGE_ALPHAS",
    "auto_dt",
    "as_cases",
    "spread_scales",
]

#: ``dt="auto"``: the nominal time ``dt * n_timepoints`` a sequence covers (chosen on validation data).
DT_HORIZON = 25.0
#: The smallest ``dt`` that ``dt="auto"`` gives (for very long series).
DT_MIN = 1e-4


#: ``training="readout"``: the ridge penalties tried (leave-one-out cross-validation picks one).
RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-3, 3, 10))
#: ``training="readout"``: cases per batch when the pooled states are computed keep N * batch * width below this.
FEATURE_BATCH_ELEMENTS = 1 << 25
#: Defaults of the parameters left None, per ``training`` mode (chosen on validation data, see the module docstring).
MODE_DEFAULTS = {
    "full": {"hidden_size": 128, "num_layers": 2, "alpha": 0.0, "readout": "last", "input_spread": 1.0},
    "readout": {"hidden_size": 1024, "num_layers": 1, "alpha": 3.0, "readout": "pool", "input_spread": 3.0},
}


def spread_scales(rnn, n_timepoints: int, input_spread: float, generator: torch.Generator) -> None:
    """Spread a UnICORNN's units over time scales and input scales (``training="readout"``).

    Every unit's time step ``dt * sigmoid(c)`` is drawn log-uniformly from ``[dt / n_timepoints, 0.9 dt]`` (by
    setting ``c``), so that the time scales span one time point to the whole series. With ``input_spread`` > 1,
    every unit's input weights are also multiplied by a gain drawn log-uniformly from ``[1 / input_spread,
    input_spread]`` and its bias drawn uniformly from ``[-1, 1]``, so that some units respond almost linearly
    to their input and others saturate; ``input_spread`` 1 keeps the initial input weights and biases.
    """
    low, high = math.log(1.0 / max(int(n_timepoints), 2)), math.log(0.9)
    spread = math.log(check_real("input_spread", input_spread, low=1.0))
    with torch.no_grad():
        for p in rnn.all_layer_parameters():
            c = p["c"]
            u = torch.rand(c.shape, generator=generator, dtype=torch.float64)
            frac = torch.exp(low + (high - low) * u)  # sigmoid(c)
            c.copy_(torch.log(frac / (1.0 - frac)).to(c.dtype))
            if spread > 0:
                weight, bias = p["weight_ih"], p["bias_ih"]
                gain = torch.exp(spread * (2 * torch.rand(weight.shape[0], 1, generator=generator) - 1))
                weight.mul_(gain.to(weight))  # dtype and device
                if bias is not None:
                    bias.copy_((2 * torch.rand(bias.shape, generator=generator) - 1).to(bias.dtype))


def auto_dt(n_timepoints: int) -> float:
    """The length-aware time step: ``min(1, max(DT_MIN, DT_HORIZON / n_timepoints))``."""
    return float(min(1.0, max(DT_MIN, DT_HORIZON / max(int(n_timepoints), 1))))


def as_cases(X, name: str = "X") -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """X in an aeon collection format -> ``(cases, lengths)``, time first.

    ``cases``: float32 ``(n_cases, n_timepoints, n_channels)`` when every case has the same length, else a
    list of float32 ``(n_timepoints_i, n_channels)`` arrays; ``lengths``: int64 ``(n_cases,)``. Raises
    ValueError for a wrong rank, an empty collection, mixed channel counts, or NaN/inf (naming the case).
    """
    if isinstance(X, (list, tuple)):
        if len(X) == 0:
            raise ValueError(
                f"{name} is an empty list; expected at least one (n_channels, n_timepoints) array"
            )
        cases = []
        for i, x in enumerate(X):
            x = _numeric(x, f"{name}[{i}]")
            if x.ndim != 2:
                raise ValueError(
                    f"{name}[{i}] has shape {x.shape}; every case of a list must be a 2-D "
                    "(n_channels, n_timepoints) array"
                )
            cases.append(x.T)
        channels = sorted({c.shape[1] for c in cases})
        if len(channels) > 1:
            raise ValueError(f"the cases of {name} have different channel counts {channels}; expected one")
        lengths = np.array([len(c) for c in cases], dtype=np.int64)
        if (lengths == 0).any():
            raise ValueError(f"case {int(np.argmin(lengths))} of {name} has no time points")
        if (lengths == lengths[0]).all():
            cases = np.stack(cases)
    else:
        x = _numeric(X, name)
        if x.ndim == 2:
            x = x[:, None, :]
        if x.ndim != 3:
            raise ValueError(
                f"{name} must be a 3-D array (n_cases, n_channels, n_timepoints), a 2-D array (n_cases, "
                f"n_timepoints) or a list of (n_channels, n_timepoints_i) arrays; got an array of shape {x.shape}"
            )
        if x.shape[0] == 0 or x.shape[2] == 0:
            raise ValueError(f"{name} of shape {x.shape} holds no cases or no time points")
        cases = np.ascontiguousarray(x.transpose(0, 2, 1))
        lengths = np.full(len(cases), cases.shape[1], dtype=np.int64)
    bad = [i for i, c in enumerate(cases) if not np.isfinite(c).all()]
    if bad:
        raise ValueError(
            f"{name} holds NaN or infinite values in case {bad[0]}"
            + (f" (and {len(bad) - 1} more cases)" if len(bad) > 1 else "")
            + "; impute or drop them first (e.g. with an aeon or scikit-learn imputer)"
        )
    return cases, lengths


def _numeric(x, name: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must hold numbers ({err})") from None
    return a


def _n_channels(cases) -> int:
    return cases.shape[2] if isinstance(cases, np.ndarray) else cases[0].shape[1]


class _SequenceEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, data handling, the fit and predict loops."""

    _estimator_type_loss: str
    _metric: str

    def __init__(
        self,
        model: str = "unicornn",
        hidden_size: int | None = None,
        num_layers: int | None = None,
        dt: float | Sequence[float] | str = "auto",
        alpha: float | None = None,
        dropout: float = 0.0,
        lr: float = 3e-3,
        batch_size: int = 16,
        n_epochs: int = 100,
        patience: int | None = 20,
        validation_fraction: float = 0.2,
        device: str = "auto",
        memory: str = "standard",
        bidirectional: bool = False,
        readout: str | None = None,
        training: str = "readout",
        input_spread: float | None = None,
        backend: str = "auto",
        random_state: int | np.random.RandomState | None = None,
        verbose: bool | int = False,
    ) -> None:
        self.model = model
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.dt = dt
        self.alpha = alpha
        self.dropout = dropout
        self.lr = lr
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.device = device
        self.memory = memory
        self.bidirectional = bidirectional
        self.readout = readout
        self.training = training
        self.input_spread = input_spread
        self.backend = backend
        self.random_state = random_state
        self.verbose = verbose

    # ---------------------------------------------------------------------------------------- helpers
    def _device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:k]', got {self.device!r}") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={self.device!r} but CUDA is not available")
        return device

    def _mode(self, name: str):
        """Parameter ``name``, or its default for this ``training`` mode when it is None."""
        check_choice("training", self.training, tuple(MODE_DEFAULTS))
        value = getattr(self, name)
        return MODE_DEFAULTS[self.training][name] if value is None else value

    def _dt(self, n_timepoints: int):
        if isinstance(self.dt, str):
            if self.dt != "auto":
                raise ValueError(f"dt must be 'auto', a float or one float per layer, got {self.dt!r}")
            return auto_dt(n_timepoints) if self.training == "full" else 1.0
        return list(self.dt) if isinstance(self.dt, (list, tuple)) else self.dt

    def _settings(self, seed: int) -> dict[str, Any]:
        """The trainer's settings for this estimator (validated there and by the model)."""
        if self.memory != "standard" and self.model != "unicornn":
            raise ValueError(f"memory={self.memory!r} needs model='unicornn', got model={self.model!r}")
        check_int("patience", self.patience, 1, optional=True)
        check_real("validation_fraction", self.validation_fraction, low=0.0, high=1.0, high_open=True)
        check_real("input_spread", self._mode("input_spread"), low=1.0)
        return validate_config(
            dict(
                model=self.model, hidden_size=self._mode("hidden_size"), num_layers=self._mode("num_layers"),
                dt=self.dt_, alpha=self._mode("alpha"), dropout=self.dropout, lr=self.lr, batch_size=self.batch_size,
                eval_batch_size=max(256, self.batch_size), epochs=self.n_epochs, seed=seed,
                memory=self.memory, bidirectional=self.bidirectional, backend=self.backend,
            )
        )  # fmt: skip

    def _dataset(self, cases, targets):
        """Standardised cases -> a dataset (ragged cases: items with lengths, batched by pad_collate)."""
        if isinstance(cases, np.ndarray):
            return SequenceDataset((cases - self.channel_mean_) / self.channel_std_, targets)
        return RaggedSequenceDataset([(c - self.channel_mean_) / self.channel_std_ for c in cases], targets)

    def _split(self, n: int, y_codes, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation indices (validation stratified by class when the classes allow it)."""
        idx = np.arange(n)
        fraction = check_real(
            "validation_fraction", self.validation_fraction, low=0.0, high=1.0, high_open=True
        )
        n_valid = math.ceil(fraction * n)
        if fraction == 0.0:
            return idx, idx[:0]
        if n - n_valid < 1 or n_valid < 1:
            raise ValueError(
                f"validation_fraction={fraction} leaves no training or no validation case of the {n} cases; "
                "use more cases or validation_fraction=0"
            )
        try:
            train, valid = train_test_split(idx, test_size=n_valid, random_state=seed, stratify=y_codes)
        except ValueError:  # a class too small to stratify: a plain random split
            train, valid = train_test_split(idx, test_size=n_valid, random_state=seed)
        return np.sort(train), np.sort(valid)

    # ---------------------------------------------------------------------------------------- fit / predict
    @staticmethod
    def _checked(X, y: np.ndarray) -> tuple:
        """``as_cases(X)`` after checking that y is 1-D with one entry per case."""
        cases, lengths = as_cases(X)
        if y.ndim != 1:
            raise ValueError(f"y must be a 1-D array with one entry per case, got shape {y.shape}")
        if len(y) != len(lengths):
            raise ValueError(f"y has {len(y)} entries but X has {len(lengths)} cases")
        return cases, lengths

    def _fit(self, data: tuple, targets: np.ndarray, y_codes, spec_kw: dict[str, Any]):
        cases, lengths = data
        rs = self.random_state
        seed = (
            int(rs)
            if isinstance(rs, numbers.Integral) and not isinstance(rs, bool)
            else int(check_random_state(rs).randint(2**31 - 1))
        )
        device = self._device()
        stacked = (
            cases.reshape(-1, cases.shape[2]) if isinstance(cases, np.ndarray) else np.concatenate(cases)
        )
        self.channel_mean_ = stacked.mean(axis=0, dtype=np.float64).astype(np.float32)
        std = stacked.std(axis=0, dtype=np.float64)
        self.channel_std_ = np.where(std > 0, std, 1.0).astype(np.float32)
        self.n_channels_ = _n_channels(cases)
        self.n_timepoints_ = int(lengths.max())
        self.equal_length_ = isinstance(cases, np.ndarray)
        self.dt_ = self._dt(self.n_timepoints_)
        cfg = self._settings(seed)
        readout = self._mode("readout")
        check_choice("readout", readout, ("last", "pool"))
        if self.training == "readout" and readout != "pool":
            raise ValueError(
                f"training='readout' reads pooled states: readout must be 'pool' or None, got {readout!r}"
            )
        spec = TaskSpec(name=type(self).__name__, description="scikit-learn estimator", input_size=self.n_channels_,
                        readout=readout, default_options={}, **spec_kw)  # fmt: skip
        data = self._dataset(cases, targets)
        collate = None if self.equal_length_ else pad_collate
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            model = build_model(spec, cfg).to(device)
            if self.training == "readout":
                self._fit_readout(model, data, collate, targets, spec, seed)
            else:
                self._fit_full(model, data, collate, y_codes, spec, cfg, seed)
        self.model_ = model.cpu().eval()
        return self

    def _fit_readout(self, model, data, collate, targets: np.ndarray, spec: TaskSpec, seed: int) -> None:
        """``training="readout"``: the recurrent layers keep their random initialisation (UnICORNN: time steps
        spread over every time scale and input scale, :func:`spread_scales`); the linear read-out of the pooled states is
        fitted in closed form by ridge regression, its penalty chosen by leave-one-out cross-validation."""
        from sklearn.linear_model import RidgeClassifierCV, RidgeCV

        rnn = model.rnn
        if hasattr(rnn, "all_layer_parameters"):  # UnICORNN
            generator = torch.Generator().manual_seed(seed)
            spread_scales(rnn, self.n_timepoints_, self._mode("input_spread"), generator)
        features = self._features(model, data, collate)
        if not np.isfinite(features).all():
            raise ValueError(
                "the recurrent states became non-finite on the training data: use a smaller dt or alpha"
            )
        mean, std = features.mean(0), features.std(0)
        std = np.where(std > 0, std, 1.0)
        scaled = (features - mean) / std
        if spec.loss == "cross_entropy":
            ridge = RidgeClassifierCV(alphas=RIDGE_ALPHAS).fit(scaled, targets)
            coef, intercept = np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_)
            if coef.shape[0] == 1:  # two classes: one decision value d, logits (0, d)
                coef, intercept = np.vstack([0 * coef, coef]), np.array([0.0, intercept[0]])
        else:
            ridge = RidgeCV(alphas=RIDGE_ALPHAS).fit(scaled, targets[:, 0])
            coef, intercept = np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_)
        self.ridge_alpha_ = float(ridge.alpha_)
        with torch.no_grad():  # the standardisation folded into the linear head
            head = model.head
            head.weight.copy_(torch.as_tensor(coef / std, dtype=head.weight.dtype))
            head.bias.copy_(torch.as_tensor(intercept - (coef / std) @ mean, dtype=head.bias.dtype))
        low, high = (torch.as_tensor(f, dtype=head.weight.dtype) for f in (features.min(0), features.max(0)))
        model.head = torch.nn.Sequential(Clip(low, high), head)  # no extrapolation beyond the training range
        self.history_, self.best_epoch_, self.n_epochs_ = [], 0, 0
        Progress(quiet=True, main=bool(self.verbose)).say(
            f"ridge read-out of {features.shape[1]} pooled features, alpha {self.ridge_alpha_:.3g}"
        )

    def _eval_batch(self, model, n_timepoints: int) -> int:
        """Cases per batch without gradients: at most 256 (or ``batch_size``), fewer for long series and wide
        models, so that a batch's top-layer states hold at most :data:`FEATURE_BATCH_ELEMENTS` numbers."""
        rnn = model.rnn
        width = rnn.hidden_size * (2 if getattr(rnn, "bidirectional", False) else 1)
        return max(
            1, min(max(256, self.batch_size), FEATURE_BATCH_ELEMENTS // (max(n_timepoints, 1) * width))
        )

    def _features(self, model, data, collate) -> np.ndarray:
        """The pooled top-layer states the head reads, (n_cases, 2 * width), float64."""
        head, model.head = model.head, torch.nn.Identity()
        try:
            splits = RunSplits(data, data, data, collate_fn=collate)
            batch = self._eval_batch(model, self.n_timepoints_)
            out = predict_outputs(model, data, batch_size=batch, device=self._device(), splits=splits)
        finally:
            model.head = head
        return out.double().numpy()

    def _fit_full(self, model, data, collate, y_codes, spec: TaskSpec, cfg: dict, seed: int) -> None:
        """``training="full"``: every parameter trained by Adam (the package's epoch code), the epoch with the
        best validation metric kept, early stopping."""
        device = self._device()
        train_idx, valid_idx = self._split(len(data), y_codes, seed)
        sub = torch.utils.data.Subset
        splits = RunSplits(
            sub(data, train_idx), sub(data, valid_idx), sub(data, valid_idx[:0]), collate_fn=collate
        )
        ctx = DistContext(device=device)
        out = Progress(quiet=True, main=bool(self.verbose))
        torch.manual_seed(seed * 1_000_003 + 1)  # dropout masks
        loader, sampler = train_loader(splits, cfg, ctx, torch.Generator().manual_seed(seed))
        optimizer, scheduler = make_optimizer(model, cfg)
        scaler = torch.amp.GradScaler("cuda", enabled=False)
        self.history_, best, since = [], None, 0
        for epoch in range(cfg["epochs"]):
            sampler.set_epoch(epoch)

            def on_nonfinite(what: str, batch: int, epoch=epoch) -> str:
                return (f"non-finite {what} at epoch {epoch + 1}, batch {batch}: training diverged; try a "
                        "smaller lr or dt")  # fmt: skip

            tm = train_epoch(
                model, model, loader, spec, cfg, optimizer, scaler, ctx, on_nonfinite=on_nonfinite
            )
            scheduler.step()
            row = {"epoch": epoch + 1, "train_loss": tm["loss"], f"train_{spec.metric}": tm[spec.metric]}
            if len(valid_idx):
                vm = evaluate(model, splits.valid, spec, batch_size=cfg["eval_batch_size"], device=device,
                              splits=splits)  # fmt: skip
                row.update(valid_loss=vm["loss"], **{f"valid_{spec.metric}": vm[spec.metric]})
                sign = 1.0 if spec.higher_is_better else -1.0
                key = (sign * vm[spec.metric], -vm["loss"])  # the metric first, ties by the loss
                improved = best is None or key > best[0]
            else:
                key, improved = (0.0, 0.0), True
            self.history_.append(row)
            out.say(", ".join(f"{k} {v:.4g}" for k, v in row.items()))
            if improved:
                best, since = (key, epoch + 1, copy.deepcopy(model.state_dict())), 0
            else:
                since += 1
                if self.patience is not None and since >= self.patience:
                    break
        model.load_state_dict(best[2])
        self.best_epoch_, self.n_epochs_ = best[1], len(self.history_)

    def _outputs(self, X) -> np.ndarray:
        """The model's raw outputs (n_cases, output_size) for X."""
        check_is_fitted(self, "model_")
        cases, lengths = as_cases(X)
        if _n_channels(cases) != self.n_channels_:
            raise ValueError(
                f"X has {_n_channels(cases)} channels, the estimator was fitted with {self.n_channels_}"
            )
        data = self._dataset(cases, np.zeros(len(lengths), dtype=np.int64))
        splits = RunSplits(
            data, data, data, collate_fn=None if isinstance(cases, np.ndarray) else pad_collate
        )
        device = self._device()
        model = self.model_.to(device)
        try:
            batch = self._eval_batch(model, int(lengths.max()))
            out = predict_outputs(model, data, batch_size=batch, device=device, splits=splits)
        finally:
            self.model_ = model.cpu()
        return out.double().numpy()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True
        tags.non_deterministic = self.random_state is None
        return tags


class UnICORNNClassifier(ClassifierMixin, _SequenceEstimator):
    """Time-series classifier: a UnICORNN stack (or a baseline, ``model``) with a linear read-out of the top
    layer's states, fitted by ridge regression on random recurrent layers (``training="readout"``, default) or
    trained end to end with cross-entropy (``training="full"``); see the module docstring.

    Args:
        model: ``"unicornn"``, or a baseline of the model registry (``"lstm"``, ``"gru"``, ``"cornn"``,
            ``"indrnn"``), trained the same way.
        training: ``"readout"`` or ``"full"``.
        hidden_size, num_layers: units per layer and layers (None: 1024 and 1 for ``"readout"``, 128 and 2
            for ``"full"``).
        dt: ``"auto"`` (see the module docstring), one float in (0, 1] or one per layer.
        alpha: restoring-force coefficient >= 0 (None: 3 for ``"readout"``, 0 for ``"full"``).
        dropout: over-time dropout in [0, 1) (``"full"``).
        lr, batch_size: Adam's learning rate and the training batch size (``"full"``).
        n_epochs: at most this many epochs; patience: stop after this many epochs without a better
            validation accuracy (ties: a lower validation loss); None: train all ``n_epochs`` (``"full"``).
        validation_fraction: share of the training cases held out (stratified) to pick the best epoch;
            0 keeps the last epoch (``"full"``; ``"readout"`` cross-validates its penalty on every case).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``. memory: ``"standard"`` or
            ``"lean"`` (training memory independent of the series length; UnICORNN only).
        bidirectional: UnICORNN layers that also run backward in time (nn.LSTM's ``bidirectional``; each
            case reversed within its own length; not with ``memory="lean"``).
        input_spread: ``"readout"`` with UnICORNN: each unit's input weights scaled by a gain drawn
            log-uniformly from ``[1 / input_spread, input_spread]`` and its bias drawn from ``U(-1, 1)``; 1
            keeps the paper's input weights and zero biases (None: 3 for ``"readout"``; ``"full"`` ignores it).
        readout: what the linear read-out sees: ``"last"``, the top layer's state at each case's last time
            point; ``"pool"``, the mean and the maximum of the top layer's states over the case's time points
            (None: ``"pool"`` for ``"readout"``, which needs it, ``"last"`` for ``"full"``).
        backend: the recurrence backend (``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"``).
        random_state: an int makes ``fit`` deterministic (on a given device); None draws one.
        verbose: print one line per epoch (``"full"``) or one for the ridge fit (``"readout"``).

    Fitted attributes: ``classes_``, ``model_`` (the fitted torch module, on the CPU), ``best_epoch_``,
    ``n_epochs_``, ``history_`` (one dict per epoch; 0, 0 and empty for ``"readout"``), ``ridge_alpha_``
    (``"readout"``: the penalty chosen), ``dt_``, ``n_channels_``, ``n_timepoints_``, ``channel_mean_``,
    ``channel_std_``. For ``"readout"``, ``predict_proba`` is the softmax of the ridge decision values: a
    ranking of the classes rather than calibrated probabilities.
    """

    def fit(self, X, y) -> UnICORNNClassifier:
        """Fit on X (aeon collection, see the module docstring) and class labels y (n_cases,)."""
        y = np.asarray(y)
        data = self._checked(X, y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"y holds a single class ({str(self.classes_[0])!r}); a classifier needs at least two"
            )
        spec_kw = dict(
            output_size=len(self.classes_), loss="cross_entropy", metric="accuracy", higher_is_better=True
        )
        return self._fit(data, codes.astype(np.int64), codes, spec_kw)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities (n_cases, n_classes), columns in the order of ``classes_``."""
        logits = self._outputs(X)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        """Predicted class labels (n_cases,)."""
        return self.classes_[np.argmax(self._outputs(X), axis=1)]


class UnICORNNRegressor(RegressorMixin, _SequenceEstimator):
    """Time-series regressor: as :class:`UnICORNNClassifier` (same arguments), trained with the mean squared
    error on the standardised target (training mean and standard deviation: ``y_mean_``, ``y_std_``);
    predictions are in the target's own units."""

    def fit(self, X, y) -> UnICORNNRegressor:
        """Fit on X (aeon collection) and real targets y (n_cases,)."""
        try:
            y = np.asarray(y, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"y must hold numbers for a regressor ({err})") from None
        data = self._checked(X, y)
        if not np.isfinite(y).all():
            raise ValueError(
                f"y holds NaN or infinite values (first at index {int(np.argmin(np.isfinite(y)))})"
            )
        self.y_mean_ = float(y.mean()) if len(y) else 0.0
        self.y_std_ = float(y.std()) if len(y) and y.std() > 0 else 1.0
        scaled = ((y - self.y_mean_) / self.y_std_).astype(np.float32)[:, None]
        spec_kw = dict(output_size=1, loss="mse", metric="rmse", higher_is_better=False)
        return self._fit(data, scaled, None, spec_kw)

    def predict(self, X) -> np.ndarray:
        """Predicted targets (n_cases,), in the units of the training targets."""
        return self._outputs(X)[:, 0] * self.y_std_ + self.y_mean_
