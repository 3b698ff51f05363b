"""Readouts, losses and split metrics: how a task model's output is read (:data:`READOUTS`) and scored (the
registries :data:`LOSSES` and :data:`METRICS`, accumulated in float64).

Readouts: ``"last"`` predicts from the top layer's state at each sequence's last step, ``"all"`` at every step,
``"pool"`` from the mean and the maximum of the top layer's states over each sequence's valid steps.

Losses (``output`` is what the model returns, ``target`` what the dataset yields, batched):

* ``cross_entropy``: output (B, C) logits, target (B,) int64 class indices;
* ``binary_cross_entropy``: output (B, 1) or (B,) logit, target of B elements, float 0/1 (binary
  classification with one logit; a logit > 0 predicts class 1);
* ``mse``: output and target of the same shape, (B, K) or (B, N, K); the mean runs over every element.

Metrics: ``accuracy`` in percent (as in the paper's tables; needs a classification loss); ``mse``; ``rmse``,
the square root of the MSE over the split (the paper's "L2 error" of Table 4); ``nrmse``, the RMSE over the
whole split divided by the standard deviation of the split's targets (all elements pooled). The paper states
no formula for its Lorenz-96 NRMSE (Table 7, Appendix D): this normalisation is this package's reading.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .registry import Registry
from .validation import ConfigError

__all__ = ["READOUTS", "Loss", "Metric", "LOSSES", "METRICS", "compute_loss", "SplitMetrics", "is_better"]


@dataclass(frozen=True)
class Loss:
    """A training loss: ``fn(output, target)`` is the batch mean. A classification loss also has
    ``predict(output)`` and ``classes(target)``, both (B,) int64 (None for a regression loss)."""

    name: str
    fn: Callable[[Tensor, Tensor], Tensor]
    predict: Callable[[Tensor], Tensor] | None = None
    classes: Callable[[Tensor], Tensor] | None = None


@dataclass(frozen=True)
class Metric:
    """A split metric computed from the float64 sums of :class:`SplitMetrics` (see ``_from_sums``)."""

    name: str
    higher_is_better: bool
    needs_classes: bool
    from_sums: Callable[[dict[str, float]], float]


#: How a model reads its output: from the top layer's last state, or at every step.
READOUTS = ("last", "all", "pool")

LOSSES: Registry[Loss] = Registry("loss")
METRICS: Registry[Metric] = Registry("metric")


def _same_shape(name: str, output: Tensor, target: Tensor) -> None:
    if output.shape != target.shape:
        raise ValueError(f"{name}: output shape {tuple(output.shape)} != target shape {tuple(target.shape)}")


def _mse(output: Tensor, target: Tensor) -> Tensor:
    _same_shape("mse", output, target)
    return F.mse_loss(output, target)


def _logit(output: Tensor, target: Tensor) -> Tensor:
    """(B, 1) or (B,) logit -> (B,), checked against the target's B elements."""
    if output.dim() == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if output.dim() != 1 or target.numel() != output.shape[0]:
        raise ValueError(
            f"binary_cross_entropy: output must be (B, 1) or (B,) with B = {target.numel()} targets, "
            f"got shape {tuple(output.shape)}"
        )
    return output


def _bce(output: Tensor, target: Tensor) -> Tensor:
    logit = _logit(output, target)
    return F.binary_cross_entropy_with_logits(logit, target.reshape(-1).to(logit.dtype))


LOSSES.register(
    "cross_entropy", Loss("cross_entropy", F.cross_entropy, lambda out: out.argmax(-1), lambda t: t.long())
)
LOSSES.register(
    "binary_cross_entropy",
    Loss(
        "binary_cross_entropy",
        _bce,
        lambda out: (out.reshape(out.shape[0], -1)[:, 0] > 0).long(),  # logit > 0: class 1
        lambda t: (t.reshape(-1) > 0.5).long(),
    ),
)
LOSSES.register("mse", Loss("mse", _mse))


def _nrmse(s: dict[str, float]) -> float:
    e = s["elems"]
    if not e:
        return math.nan
    mean = s["tsum"] / e
    var = max(s["tsq"] / e - mean * mean, 0.0)
    return math.sqrt(s["sqerr"] / e) / math.sqrt(var) if var > 0 else math.nan


def _ratio(num: str, den: str, scale: float = 1.0) -> Callable[[dict[str, float]], float]:
    return lambda s: scale * s[num] / s[den] if s[den] else math.nan


METRICS.register("accuracy", Metric("accuracy", True, True, _ratio("correct", "n", 100.0)))
METRICS.register("mse", Metric("mse", False, False, _ratio("sqerr", "elems")))
METRICS.register("rmse", Metric("rmse", False, False, lambda s: math.sqrt(_ratio("sqerr", "elems")(s))))
METRICS.register("nrmse", Metric("nrmse", False, False, _nrmse))


def check_pairing(loss: str, metric: str) -> None:
    """Raise :class:`~unicornn.validation.ConfigError` unless ``loss`` and ``metric`` are known and fit."""
    lo, me = LOSSES.get(loss), METRICS.get(metric)
    if me.needs_classes and lo.predict is None:
        raise ConfigError(f"metric {metric!r} needs a classification loss, got loss {loss!r}")
    if not me.needs_classes and lo.predict is not None:
        raise ConfigError(f"metric {metric!r} needs a regression loss (mse), got loss {loss!r}")


def compute_loss(loss: str, output: Tensor, target: Tensor) -> Tensor:
    """Mean loss ``loss`` (a name in :data:`LOSSES`) of a batch; shapes as in the module docstring."""
    return LOSSES.get(loss).fn(output, target)


def is_better(new: float, old: float | None, higher_is_better: bool) -> bool:
    """True if metric value ``new`` improves on ``old`` (None: nothing yet)."""
    if old is None:
        return True
    return new > old if higher_is_better else new < old


class SplitMetrics:
    """Running sums for one pass over a split: the loss and the task metric.

    All sums live in one float64 tensor, so a distributed run reduces them with a single all-reduce
    (:meth:`sums` / :meth:`load_sums`).
    """

    _NAMES = ("loss", "n", "correct", "sqerr", "elems", "tsum", "tsq")

    def __init__(self, loss: str, metric: str) -> None:
        check_pairing(loss, metric)
        self.loss, self.metric = loss, metric
        self._loss, self._metric = LOSSES.get(loss), METRICS.get(metric)
        self._s = torch.zeros(len(self._NAMES), dtype=torch.float64)

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor, batch_loss: Tensor) -> None:
        """Add a batch: ``batch_loss`` is the batch's mean loss; output/target as for the loss."""
        b = target.shape[0]
        s = self._s
        s[0] += float(batch_loss) * b
        s[1] += b
        if self._metric.needs_classes:
            s[2] += float((self._loss.predict(output) == self._loss.classes(target)).sum())
        else:
            o, t = output.double(), target.double()
            s[3] += float(((o - t) ** 2).sum())
            s[4] += t.numel()
            s[5] += float(t.sum())
            s[6] += float((t * t).sum())

    def sums(self) -> Tensor:
        """The float64 sum vector (for an all-reduce)."""
        return self._s.clone()

    def load_sums(self, sums: Tensor) -> None:
        """Replace the sums (after an all-reduce)."""
        self._s = sums.detach().to("cpu", torch.float64).clone()

    def compute(self) -> dict[str, float]:
        """``{"loss": mean loss, metric: value}``; NaN where nothing was seen."""
        s = dict(zip(self._NAMES, self._s.tolist(), strict=True))
        return {"loss": s["loss"] / s["n"] if s["n"] else math.nan, self.metric: self._metric.from_sums(s)}
