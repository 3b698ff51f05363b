"""Task models (a recurrent stack with a read-out, trained on a task) and their registry :data:`MODELS`: a
UnICORNN stack with a linear read-out (``unicornn``), the same behind a word embedding
(``embedding-unicornn``), and the baselines of :mod:`unicornn.baselines` (``lstm``, ``gru``, ``cornn``,
``indrnn``). :func:`build_model` builds one from a task spec and run settings. (The recurrent layer itself,
:class:`unicornn.UnICORNN`, is in :mod:`unicornn.modules`.)

A model factory is registered by name and called as ``factory(spec, cfg, **model_args)`` with the task's
:class:`~unicornn.tasks.base.TaskSpec`, the run's (flat) settings and the keyword arguments the task built
from its data (``Splits.model_args``, usually none); it returns an ``nn.Module`` whose
``forward(inputs, lengths=None)`` maps inputs (B, N, d) (or whatever the task yields) and optional
lengths (B,) int64 to (B, output_size) for readout ``"last"`` or ``"pool"``, or (B, N, output_size) for ``"all"``. The
model validates its own arguments.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .baselines import FACTORIES
from .heads import SequenceHead
from .modules import UnICORNN
from .registry import Registry
from .validation import ConfigError

__all__ = [
    "MODELS",
    "EmbeddingSequenceModel",
    "SequenceModel",
    "build_model",
    "count_parameters",
    "recurrent_weight_norms",
    "weight_norms",
]

#: Model factories: ``factory(spec, cfg) -> nn.Module`` (see the module docstring).
MODELS: Registry[Callable[[Any, Mapping[str, Any]], nn.Module]] = Registry("model")


class SequenceModel(SequenceHead):
    """UnICORNN stack + over-time dropout on the top layer's output + linear head (:class:`SequenceHead`).

    The stack applies its over-time dropout between layers; the head applies it once more to the top
    layer's output, so that (as in the authors' code) dropout follows every layer.

    Args:
        input_size: features per step ``d``.
        output_size: classes (classification) or regression outputs.
        hidden_size, num_layers, dt, alpha, dropout, residual_skip, backend, input_gain, memory: as in
            :class:`UnICORNN`, which validates them.
        readout: ``"last"`` reads the top layer's ``y_N``; ``"all"`` reads every step; ``"pool"`` the mean and
            the maximum of the top layer's ``y`` over each sequence's valid steps.
        bidirectional: a bidirectional stack (see :class:`UnICORNN`); the head then reads both directions:
            for ``"last"`` the top layer's final state of each (the backward one after reading step 1).

    Shapes: as :class:`SequenceHead` (input (B, N, d), lengths (B,) or None).
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
        rnn = UnICORNN(
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
        super().__init__(rnn, output_size, readout, rnn.dropout)

    def features(self, seq: Tensor, lengths: Tensor | None) -> Tensor:
        """(N, B, d) -> the top layer's ``y`` at each sequence's last valid step (B, D*M), or every step
        (N, B, D*M); bidirectional ``"last"``: each direction's final state (the backward one after step 1)."""
        if self.readout == "last" and self.rnn.bidirectional:
            _, (y_n, _) = self.rnn(seq, lengths=lengths, return_sequence=False)
            return torch.cat([y_n[-2], y_n[-1]], dim=-1)
        if self.readout == "last" and lengths is None:
            _, (y_n, _) = self.rnn(seq, return_sequence=False)
            return y_n[-1]
        if self.readout == "pool" and self.rnn.bidirectional:  # each sequence reversed within its length
            return self.rnn(seq, lengths=lengths)[0]
        out, _ = self.rnn(seq)  # (N, B, M); steps past a sequence's length are not read
        if self.readout == "last":  # the state at each sequence's last valid step
            return out[lengths.to(out.device) - 1, torch.arange(out.shape[1], device=out.device)]
        return out


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


_RECURRENT_WEIGHT = re.compile(r"(?:^|\.)weight_h[hyz]_l(\d+)$")


def recurrent_weight_norms(state: Mapping[str, Tensor]) -> list[float]:
    """Largest absolute recurrent weight of every layer, from a model's ``state_dict``.

    Recurrent weights are the entries named ``weight_hh_l{k}`` (UnICORNN's ``w^l`` (M,), IndRNN's, and
    LSTM/GRU's matrices) or ``weight_hy_l{k}`` / ``weight_hz_l{k}`` (coRNN), at any prefix (``rnn.``).
    For UnICORNN this is the paper's ``||w^l||_inf`` (Fig. 7); for a matrix it is the largest entry, not
    the operator norm. Returns one float per layer (layer k at index k; empty if there are none).
    """
    peaks: dict[int, float] = {}
    for key, value in state.items():
        match = _RECURRENT_WEIGHT.search(key)
        if match is not None:
            k = int(match.group(1))
            peaks[k] = max(peaks.get(k, 0.0), float(value.detach().abs().max()))
    return [peaks[k] for k in sorted(peaks)]


def weight_norms(model: nn.Module) -> list[float]:
    """``||w^l||_inf`` (largest absolute recurrent weight) of every layer of ``model`` (a UnICORNN stack, a
    task model or a baseline; see :func:`recurrent_weight_norms`)."""
    return recurrent_weight_norms(model.state_dict())


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def build_model(spec, cfg: Mapping[str, Any], model_args: Mapping[str, Any] | None = None) -> nn.Module:
    """The model ``cfg["model"]`` for task ``spec``; its own errors about its arguments become ConfigError.

    ``model_args``: the task's extra keyword arguments for the factory (``Splits.model_args``).
    """
    factory = MODELS.get(cfg.get("model", "unicornn"))
    try:
        return factory(spec, cfg, **(model_args or {}))
    except (ValueError, TypeError) as err:  # the model validates its arguments (dt, alpha, ...)
        raise ConfigError(f"model {cfg.get('model', 'unicornn')!r}: {err}") from err
