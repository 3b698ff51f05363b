"""Task models and their registry :data:`MODELS`: a UnICORNN stack with a linear read-out (``unicornn``),
and the baselines of :mod:`unicornn.baselines` (``lstm``, ``gru``, ``cornn``, ``indrnn``).

A model factory is registered by name and called as ``factory(spec, cfg, **model_args)`` with the task's
:class:`~unicornn.tasks.base.TaskSpec`, the run's (flat) settings and the keyword arguments the task built
from its data (``Splits.model_args``, usually none); it returns an ``nn.Module`` whose
``forward(inputs, lengths=None)`` maps inputs (B, N, d) (or whatever the task yields) and optional
lengths (B,) int64 to (B, output_size) for readout ``"last"`` or (B, N, output_size) for ``"all"``. The
model validates its own arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import FACTORIES
from .modules import UnICORNN, dropout_over_time
from .registry import Registry, check_choice
from .tasks.base import READOUTS

__all__ = ["SequenceModel", "EmbeddingSequenceModel", "MODELS", "READOUTS", "count_parameters"]

#: Model factories: ``factory(spec, cfg) -> nn.Module`` (see the module docstring).
MODELS: Registry[Callable[[Any, Mapping[str, Any]], nn.Module]] = Registry("model")


class SequenceModel(nn.Module):
    """UnICORNN stack + over-time dropout on the top layer's output + linear head.

    The stack applies its over-time dropout between layers; this model applies it once more to the top
    layer's output, so that (as in the authors' code) dropout follows every layer. The head is
    Kaiming-normal initialised with a zero bias: that comes from the authors' published code (the paper's
    Appendix A gives no initialisation for the read-out).

    Args:
        input_size: features per step ``d``.
        output_size: classes (classification) or regression outputs.
        hidden_size, num_layers, dt, alpha, dropout, residual_skip, backend, input_gain, memory: as in
            :class:`UnICORNN`, which validates them.
        readout: ``"last"`` reads the top layer's ``y_N``; ``"all"`` reads every step.
        bidirectional: a bidirectional stack (see :class:`UnICORNN`); the head then reads both directions:
            for ``"last"`` the top layer's final state of each (the backward one after reading step 1).

    Shapes:
        input (B, N, d), batch first (as a DataLoader yields it); lengths (B,) int64 or None (then every
        sequence has N valid steps; otherwise ``"last"`` reads the state at step ``lengths - 1``). Output
        (B, output_size) for ``"last"``, (B, N, output_size) for ``"all"``.
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
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        check_choice("readout", readout, READOUTS)
        self.readout = readout
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
            input_gain=input_gain,
            bidirectional=bidirectional,
        )
        self.dropout = self.rnn.dropout
        self.head = nn.Linear(self.rnn.num_directions * hidden_size, output_size)
        # Kaiming-normal weight, zero bias: the authors' code (not stated in the paper)
        nn.init.kaiming_normal_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, input: Tensor, lengths: Tensor | None = None) -> Tensor:
        """input (B, N, d), lengths (B,) or None -> (B, output_size) or (B, N, output_size)."""
        if input.dim() != 3:
            raise ValueError(f"input must be (B, N, d), got shape {tuple(input.shape)}")
        B, N = input.shape[:2]
        if lengths is not None and (
            lengths.shape != (B,)
            # the values are unknown while torch.export traces: the stack's exported op checks them
            or not (torch.compiler.is_exporting() or ((lengths >= 1) & (lengths <= N)).all())
        ):
            raise ValueError(f"lengths must be (B,) = ({B},) with values in [1, {N}], got {lengths!r}")
        if self.readout == "last" and self.rnn.bidirectional:  # each direction's final state
            _, (y_n, _) = self.rnn(input.transpose(0, 1), lengths=lengths, return_sequence=False)
            top = dropout_over_time(torch.cat([y_n[-2], y_n[-1]], dim=-1)[None], self.dropout, self.training)
            return self.head(top[0])
        if self.readout == "last" and lengths is None:
            _, (y_n, _) = self.rnn(input.transpose(0, 1), return_sequence=False)
            top = dropout_over_time(y_n[-1:], self.dropout, self.training)  # (1, B, M)
            return self.head(top[0])
        out, _ = self.rnn(input.transpose(0, 1))  # (N, B, M)
        if self.readout == "last":  # the state at each sequence's last valid step
            last = out[lengths.to(out.device) - 1, torch.arange(B, device=out.device)]  # (B, M)
            return self.head(dropout_over_time(last[None], self.dropout, self.training)[0])
        top = dropout_over_time(out, self.dropout, self.training)
        return self.head(top).transpose(0, 1)


def _stack_arguments(spec, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`SequenceModel` arguments (after its input and output sizes) that come from settings ``cfg``."""
    return dict(
        hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_layers"],
        dt=cfg["dt"],
        alpha=cfg["alpha"],
        dropout=cfg["dropout"],
        readout=spec.readout,
        residual_skip=cfg["residual_skip"],
        backend=cfg["backend"],
        input_gain=cfg["input_gain"],
        memory=cfg["memory"],
        bidirectional=cfg.get("bidirectional", False),
    )


def _apply_learn_time_steps(rnn: UnICORNN, cfg: Mapping[str, Any]) -> None:
    """Setting ``learn_time_steps=False`` freezes every layer's ``c`` (``requires_grad=False``): the time steps
    ``dt * sigmoid(c)`` stay at their initial values, the "without learned multi-scale time steps" ablation of
    the paper's Fig. 6."""
    learn = cfg.get("learn_time_steps", True)
    if not isinstance(learn, bool):
        raise ValueError(f"setting 'learn_time_steps' must be true or false, got {learn!r}")
    if not learn:
        for p in rnn.all_layer_parameters():
            p["c"].requires_grad_(False)


@MODELS.register("unicornn")
def build_unicornn(spec, cfg: Mapping[str, Any]) -> SequenceModel:
    """The :class:`SequenceModel` for task ``spec`` and settings ``cfg`` (``learn_time_steps`` included)."""
    model = SequenceModel(spec.input_size, spec.output_size, **_stack_arguments(spec, cfg))
    _apply_learn_time_steps(model.rnn, cfg)
    return model


# the baselines of the paper's comparisons (LSTM, GRU, coRNN, IndRNN), trained by the same trainer
for _name, _factory in FACTORIES.items():
    MODELS.register(_name, _factory)


class EmbeddingSequenceModel(nn.Module):
    """Token ids -> trainable word embedding (with embedding dropout) -> :class:`SequenceModel`.

    Embedding dropout drops whole rows of the embedding matrix: in training, every vocabulary row is zeroed
    with probability ``embedding_dropout`` (one draw per row and batch, so every occurrence of a dropped word
    in the batch vanishes) and the kept rows are scaled by 1 / (1 - ``embedding_dropout``).

    Args:
        embedding: float (V, E) initial embedding matrix (e.g. GloVe vectors), copied into the trainable
            ``embedding.weight``.
        embedding_dropout: probability in [0, 1) of dropping a word row.
        pad_index: row of the padding token (its gradient is zero, its row stays as given).
        output_size, hidden_size, ... readout: as in :class:`SequenceModel`, with ``input_size`` = E.

    Shapes: tokens (B, N) int64 in [0, V), lengths (B,) or None -> as :class:`SequenceModel`.
    """

    def __init__(self, embedding: Tensor, embedding_dropout: float, pad_index: int, output_size: int,
                 **sequence_model) -> None:  # fmt: skip
        super().__init__()
        embedding = torch.as_tensor(embedding)
        if embedding.dim() != 2 or not embedding.is_floating_point():
            raise ValueError(
                f"embedding must be a float (V, E) matrix, got {embedding.dtype} {tuple(embedding.shape)}"
            )
        if not 0.0 <= embedding_dropout < 1.0:
            raise ValueError(f"embedding_dropout must be in [0, 1), got {embedding_dropout}")
        if not 0 <= pad_index < embedding.shape[0]:
            raise ValueError(f"pad_index must be in [0, {embedding.shape[0]}), got {pad_index}")
        self.embedding = nn.Embedding.from_pretrained(
            embedding.float().clone(), freeze=False, padding_idx=pad_index
        )
        self.embedding_dropout = embedding_dropout
        self.body = SequenceModel(embedding.shape[1], output_size, **sequence_model)

    def embed(self, tokens: Tensor) -> Tensor:
        """tokens (B, N) -> embeddings (B, N, E), with row dropout in training."""
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"tokens must be (B, N) integer ids, got {tokens.dtype} {tuple(tokens.shape)}")
        weight = self.embedding.weight
        p = self.embedding_dropout
        if self.training and p > 0:
            keep = torch.empty((weight.shape[0], 1), device=weight.device, dtype=weight.dtype).bernoulli_(
                1 - p
            )
            weight = weight * keep / (1 - p)
        return F.embedding(tokens, weight, self.embedding.padding_idx)

    def forward(self, tokens: Tensor, lengths: Tensor | None = None) -> Tensor:
        """tokens (B, N), lengths (B,) or None -> (B, output_size) (readout "last")."""
        return self.body(self.embed(tokens), lengths=lengths)


@MODELS.register("embedding-unicornn")
def build_embedding_unicornn(
    spec, cfg: Mapping[str, Any], *, embedding: Tensor, embedding_dropout: float, pad_index: int
) -> EmbeddingSequenceModel:
    """The :class:`EmbeddingSequenceModel` of a token task (IMDB): the task hands ``embedding``,
    ``embedding_dropout`` and ``pad_index`` in ``Splits.model_args``; the rest comes from ``cfg``."""
    if embedding.shape[1] != spec.input_size:
        raise ValueError(
            f"embedding has {embedding.shape[1]} columns, task {spec.name!r} expects {spec.input_size}"
        )
    model = EmbeddingSequenceModel(
        embedding, embedding_dropout, pad_index, spec.output_size, **_stack_arguments(spec, cfg)
    )
    _apply_learn_time_steps(model.body.rnn, cfg)
    return model


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
