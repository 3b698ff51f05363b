"""Task models: a UnICORNN stack with a linear read-out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .modules import UnICORNN, dropout_over_time

__all__ = ["SequenceModel", "READOUTS", "count_parameters"]

READOUTS = ("last", "all")


class SequenceModel(nn.Module):
    """UnICORNN stack + over-time dropout on the top layer's output + linear head.

    The stack applies its over-time dropout between layers; this model applies it once more to the top
    layer's output, so that (as in the authors' code) dropout follows every layer. The head is
    Kaiming-normal initialised with a zero bias (paper, Appendix A).

    Args:
        input_size: features per step ``d``.
        output_size: classes (classification) or regression outputs.
        hidden_size, num_layers, dt, alpha, dropout, residual_skip, backend: as in :class:`UnICORNN`;
            ``dt`` is a float or one float per layer.
        readout: ``"last"`` reads the top layer's ``y_N``; ``"all"`` reads every step.
        input_gain: factor applied to the first layer's input projection ``V`` after the paper's
            initialisation (1: unchanged). The paper's Kaiming-uniform ``a=8`` keeps ``tanh`` nearly linear for
            inputs of order one; a gain of ~30 lets a marker input saturate it (the adding problem needs that).
        memory: ``"standard"`` or ``"lean"`` (see :class:`UnICORNN`); with ``"last"`` the output sequence is
            never materialised.

    Shapes:
        input (B, N, d), batch first (as a DataLoader yields it). Output (B, output_size) for ``"last"``,
        (B, N, output_size) for ``"all"``.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        hidden_size: int,
        num_layers: int,
        dt: float | Sequence[float],
        alpha: float,
        dropout: float,
        readout: str,
        residual_skip: int | None = None,
        backend: str = "auto",
        input_gain: float = 1.0,
        memory: str = "standard",
    ) -> None:
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {readout!r}")
        if isinstance(dropout, bool) or not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if isinstance(dt, Sequence) and not isinstance(dt, str):
            dt = [float(v) for v in dt]
        self.readout = readout
        self.dropout = float(dropout)
        self.rnn = UnICORNN(
            input_size,
            hidden_size,
            num_layers=num_layers,
            dt=dt,
            alpha=alpha,
            dropout=dropout,
            batch_first=False,
            residual_skip=residual_skip,
            backend=backend,
            memory=memory,
        )
        if not float(input_gain) > 0:
            raise ValueError(f"input_gain must be > 0, got {input_gain!r}")
        with torch.no_grad():
            self.rnn.weight_ih_l0.mul_(float(input_gain))
        self.head = nn.Linear(hidden_size, output_size)
        nn.init.kaiming_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input: Tensor) -> Tensor:
        """input (B, N, d) -> (B, output_size) or (B, N, output_size)."""
        if input.dim() != 3:
            raise ValueError(f"input must be (B, N, d), got shape {tuple(input.shape)}")
        if self.readout == "last":
            _, (y_n, _) = self.rnn(input.transpose(0, 1), return_sequence=False)
            top = dropout_over_time(y_n[-1:], self.dropout, self.training)  # (1, B, M)
            return self.head(top[0])
        out, _ = self.rnn(input.transpose(0, 1))  # (N, B, M)
        top = dropout_over_time(out, self.dropout, self.training)
        return self.head(top).transpose(0, 1)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
