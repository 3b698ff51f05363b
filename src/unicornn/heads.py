"""The task-model head shared by UnICORNN and the baselines: a time-major recurrent stack, over-time dropout
on the top layer's output and a linear read-out.

:class:`SequenceHead` is the common contract of every task model (:class:`unicornn.task_models.SequenceModel`,
:class:`unicornn.baselines.BaselineSequenceModel`): ``forward(input (B, N, d), lengths=None)`` returns
(B, output_size) for readout ``"last"`` (the top layer's hidden state at each sequence's last valid step) and
``"pool"`` (the mean and the maximum of the top layer's hidden states over each sequence's valid steps,
:func:`pool_over_time`), or (B, N, output_size) for ``"all"``. The head is Kaiming-normal initialised with a zero bias: that comes from
the authors' published UnICORNN code (the paper gives no initialisation for the read-out).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .metrics import READOUTS
from .modules import check_lengths, dropout_over_time
from .validation import check_choice, check_int, check_real

__all__ = ["Clip", "SequenceHead", "pool_over_time", "top_state"]


def top_state(state) -> Tensor:
    """The hidden-state part (L, B, H) of any model's final state: the first part of a tuple state (``y`` of
    UnICORNN and coRNN, ``h`` of the LSTM), or the state itself (GRU, IndRNN)."""
    return state[0] if isinstance(state, (tuple, list)) else state


def pool_over_time(states: Tensor, lengths: Tensor | None) -> Tensor:
    """(N, B, H) time-major states -> (B, 2H): their mean and their maximum over each sequence's valid steps
    (the first ``lengths[b]`` steps of sequence b; all N for ``lengths`` None), concatenated."""
    if lengths is None:
        return torch.cat([states.mean(0), states.amax(0)], dim=-1)
    lengths = lengths.to(states.device)
    valid = (torch.arange(states.shape[0], device=states.device)[:, None] < lengths[None, :])[..., None]
    mean = (states * valid).sum(0) / lengths[:, None].to(states.dtype)
    return torch.cat([mean, states.masked_fill(~valid, float("-inf")).amax(0)], dim=-1)


class Clip(nn.Module):
    """Clamp every feature to its own range: (..., F) -> (..., F), ``low`` and ``high`` (F,) buffers. A read-out
    fitted on features seen in training then does not extrapolate linearly far outside them."""

    def __init__(self, low: Tensor, high: Tensor) -> None:
        super().__init__()
        self.register_buffer("low", torch.as_tensor(low).clone())
        self.register_buffer("high", torch.as_tensor(high).clone())

    def forward(self, x: Tensor) -> Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)


class SequenceHead(nn.Module):
    """A recurrent stack ``rnn`` + over-time dropout on its top layer's output + linear head.

    Args:
        rnn: a time-major recurrent module (``batch_first=False``) with an int ``hidden_size``, called as
            ``rnn(input (N, B, d), lengths=lengths) -> (output (N, B, H), state)`` (the baselines' contract;
            a subclass whose stack is called differently overrides :meth:`features`); H is twice
            ``hidden_size`` for a stack with ``bidirectional`` True.
        output_size: classes (classification) or regression outputs.
        readout: ``"last"``, ``"all"`` or ``"pool"`` (:data:`unicornn.metrics.READOUTS`).
        dropout: over-time dropout on the top layer's output, in [0, 1).

    Shapes: input (B, N, d), batch first (as a DataLoader yields it); lengths (B,) integers in [1, N] or None
    (every sequence has N valid steps); :meth:`features` receives them as CPU int64, or None when nothing is
    padded. Output (B, output_size) for ``"last"`` and ``"pool"``, (B, N, output_size) for ``"all"``.
    """

    def __init__(self, rnn: nn.Module, output_size: int, readout: str, dropout: float = 0.0) -> None:
        super().__init__()
        check_choice("readout", readout, READOUTS)
        if getattr(rnn, "batch_first", False):
            raise ValueError("rnn must be time-major (batch_first=False)")
        self.rnn = rnn
        self.readout = readout
        self.dropout = check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)
        width = rnn.hidden_size * (2 if getattr(rnn, "bidirectional", False) else 1)  # nn.LSTM's convention
        width *= 2 if readout == "pool" else 1  # mean and maximum
        self.head = nn.Linear(width, check_int("output_size", output_size, 1))
        nn.init.kaiming_normal_(self.head.weight)  # the authors' code (not stated in the paper)
        nn.init.zeros_(self.head.bias)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Bring the stack's parameters back into their allowed set after an optimiser step (IndRNN's
        recurrent-weight bound; nothing for the other models). The trainer calls it after every step."""
        constrain = getattr(self.rnn, "constrain_", None)
        if constrain is not None:
            constrain()

    def features(self, seq: Tensor, lengths: Tensor | None) -> Tensor:
        """The top layer's hidden states the head reads: (B, H) at each sequence's last valid step for
        ``"last"``, (N, B, H) for ``"all"`` and ``"pool"``; ``seq`` is the time-major input (N, B, d)."""
        out, state = self.rnn(seq, lengths=lengths)
        return top_state(state)[-1] if self.readout == "last" else out

    def forward(self, input: Tensor, lengths: Tensor | None = None) -> Tensor:
        """input (B, N, d), lengths (B,) or None -> (B, output_size) or (B, N, output_size)."""
        if not isinstance(input, Tensor) or input.dim() != 3:
            shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
            raise ValueError(f"input must be (B, N, d), got shape {shape}")
        B, N = input.shape[:2]
        lengths = check_lengths(lengths, N, B)  # None when absent or when nothing is padded
        top = self.features(input.transpose(0, 1), lengths)
        if self.readout == "pool":
            top = pool_over_time(top, lengths)
        if self.readout != "all":  # (B, H): dropout with one mask per sequence and unit
            return self.head(dropout_over_time(top[None], self.dropout, self.training)[0])
        return self.head(dropout_over_time(top, self.dropout, self.training)).transpose(0, 1)
