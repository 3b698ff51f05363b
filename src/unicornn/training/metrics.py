"""Losses and split metrics, accumulated in float64 and reducible across processes."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSSES", "METRICS", "compute_loss", "SplitMetrics", "is_better"]

LOSSES = ("cross_entropy", "mse")
#: ``accuracy`` is in percent (as in the paper's tables); ``nrmse`` is the RMSE over the whole split divided
#: by the standard deviation of the split's targets (all elements pooled); ``rmse`` is the square root of
#: the MSE over the split (the paper's "L2 error" of Table 4).
METRICS = ("accuracy", "mse", "rmse", "nrmse")


def compute_loss(loss: str, output: Tensor, target: Tensor) -> Tensor:
    """Mean loss of a batch.

    ``cross_entropy``: output (B, C) logits, target (B,) int64. ``mse``: output and target of the same shape,
    (B, K) or (B, N, K); the mean runs over every element.
    """
    if loss == "cross_entropy":
        return F.cross_entropy(output, target)
    if loss == "mse":
        if output.shape != target.shape:
            raise ValueError(f"mse: output shape {tuple(output.shape)} != target shape {tuple(target.shape)}")
        return F.mse_loss(output, target)
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


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

    # indices into the sum vector
    _LOSS, _N, _CORRECT, _SQERR, _ELEMS, _TSUM, _TSQ = range(7)

    def __init__(self, loss: str, metric: str) -> None:
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.loss, self.metric = loss, metric
        self._s = torch.zeros(7, dtype=torch.float64)

    @torch.no_grad()
    def update(self, output: Tensor, target: Tensor, batch_loss: Tensor) -> None:
        """Add a batch: ``batch_loss`` is the batch's mean loss; output/target as in :func:`compute_loss`."""
        b = target.shape[0]
        s = self._s
        s[self._LOSS] += float(batch_loss) * b
        s[self._N] += b
        if self.metric == "accuracy":
            s[self._CORRECT] += float((output.argmax(-1) == target).sum())
        else:
            o, t = output.double(), target.double()
            s[self._SQERR] += float(((o - t) ** 2).sum())
            s[self._ELEMS] += t.numel()
            s[self._TSUM] += float(t.sum())
            s[self._TSQ] += float((t * t).sum())

    def sums(self) -> Tensor:
        """The float64 sum vector (for an all-reduce)."""
        return self._s.clone()

    def load_sums(self, sums: Tensor) -> None:
        """Replace the sums (after an all-reduce)."""
        self._s = sums.detach().to("cpu", torch.float64).clone()

    def compute(self) -> dict[str, float]:
        """``{"loss": mean loss, metric: value}``; NaN where nothing was seen."""
        s = self._s.tolist()
        n = s[self._N]
        out = {"loss": s[self._LOSS] / n if n else math.nan}
        if self.metric == "accuracy":
            out["accuracy"] = 100.0 * s[self._CORRECT] / n if n else math.nan
            return out
        e = s[self._ELEMS]
        mse = s[self._SQERR] / e if e else math.nan
        if self.metric == "mse":
            out["mse"] = mse
        elif self.metric == "rmse":
            out["rmse"] = math.sqrt(mse)
        else:  # nrmse
            mean = s[self._TSUM] / e if e else math.nan
            var = max(s[self._TSQ] / e - mean * mean, 0.0) if e else math.nan
            out["nrmse"] = math.sqrt(mse) / math.sqrt(var) if var > 0 else math.nan
        return out
