"""Baseline recurrent networks the paper compares UnICORNN with, behind UnICORNN's interface.

Every recurrent module here is called as ``module(input, state=None, lengths=None) -> (output, state)``:

* input (N, B, input_size), or (B, N, input_size) with ``batch_first``;
* output: the top layer's hidden sequence, (N, B, H) or (B, N, H), zero past each sequence's length;
* state: the final state of every layer at each sequence's own last step (the layout of each model below).

Models:

* :class:`LSTM`, :class:`GRU` -- :class:`torch.nn.LSTM` / :class:`torch.nn.GRU` (cuDNN on GPU) with a
  ``lengths`` argument; PyTorch's own initialisation ``U(-1/sqrt(H), 1/sqrt(H))``. State: ``(h, c)`` each
  (L, B, H) for the LSTM, ``h`` (L, B, H) for the GRU, as in PyTorch.
* :class:`CoRNN` -- coupled oscillatory RNN (Rusch & Mishra, ICLR 2021). State ``(y, z)``, each (L, B, H).
* :class:`IndRNN` -- independently recurrent network with ReLU (Li et al., CVPR 2018). State ``h`` (L, B, H).

:class:`BaselineSequenceModel` puts a linear head on any of them (the task-model contract of
:class:`unicornn.heads.SequenceHead`), and :data:`FACTORIES` builds one from a task spec and trainer settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from .heads import SequenceHead
from .modules import check_lengths, check_state_tensor, dropout_over_time
from .validation import check_choice, check_int, check_real

__all__ = [
    "BASELINE_DEFAULTS",
    "FACTORIES",
    "BaselineSequenceModel",
    "CoRNN",
    "GRU",
    "IndRNN",
    "LSTM",
    "build_baseline",
]


# --------------------------------------------------------------------------------------------------
# argument checks shared by the modules (unicornn.validation)
# --------------------------------------------------------------------------------------------------


def _check_dropout(dropout) -> float:
    return check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)


def _check_input(input, input_size: int, batch_first: bool) -> tuple[int, int]:
    """Validate a sequence batch; return (N, B)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"input must be a Tensor, got {type(input).__name__}")
    layout = "(B, N, input_size)" if batch_first else "(N, B, input_size)"
    if input.dim() != 3:
        raise ValueError(f"input must be 3-D {layout}, got shape {tuple(input.shape)}")
    if input.shape[-1] != input_size:
        raise ValueError(f"input's last dimension must be input_size={input_size}, got {input.shape[-1]}")
    return (input.shape[1], input.shape[0]) if batch_first else (input.shape[0], input.shape[1])


# --------------------------------------------------------------------------------------------------
# LSTM and GRU: torch.nn with lengths
# --------------------------------------------------------------------------------------------------


class _TorchRNN:
    """Mixin: ``forward(input, state=None, lengths=None)`` over :class:`torch.nn.RNNBase` (cuDNN on GPU).

    Right-padded batches are packed, so padding never enters the recurrence and the final state is taken at
    each sequence's own last step; the output is zero past each length.
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dropout: float = 0.0,
                 batch_first: bool = False) -> None:  # fmt: skip
        super().__init__(
            check_int("input_size", input_size, 1), check_int("hidden_size", hidden_size, 1),
            num_layers=check_int("num_layers", num_layers, 1), dropout=_check_dropout(dropout),
            batch_first=bool(batch_first),
        )  # fmt: skip

    def forward(self, input, state=None, lengths=None):
        """``(input, state=None, lengths=None) -> (output, state)``; see the class docstring."""
        N, B = _check_input(input, self.input_size, self.batch_first)
        lengths = check_lengths(lengths, N, B)
        if lengths is None:
            return super().forward(input, state)
        packed = pack_padded_sequence(input, lengths, batch_first=self.batch_first, enforce_sorted=False)
        out, state = super().forward(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=N)
        return out, state


class LSTM(_TorchRNN, nn.LSTM):
    """:class:`torch.nn.LSTM` (cuDNN on GPU) with UnICORNN's call signature.

    Args: input_size, hidden_size, num_layers, dropout (PyTorch's between-layer dropout), batch_first.
    Initialisation: PyTorch's ``U(-1/sqrt(H), 1/sqrt(H))`` for every weight and bias.
    Call: ``(input, state=None, lengths=None) -> (output, (h_n, c_n))``; shapes in the module docstring.
    """


class GRU(_TorchRNN, nn.GRU):
    """:class:`torch.nn.GRU` (cuDNN on GPU) with UnICORNN's call signature.

    Args and initialisation as :class:`LSTM`. Call: ``(input, state=None, lengths=None) -> (output, h_n)``.
    """


# --------------------------------------------------------------------------------------------------
# per-step recurrences: coRNN and IndRNN
# --------------------------------------------------------------------------------------------------


class _SteppedStack(nn.Module):
    """A stack of layers, each a per-step recurrence on an input projected for all steps at once.

    Subclasses define ``state_parts`` (number of (L, B, H) tensors in the state), ``project(k, seq)`` (the
    layer's input projection of a whole (T, B, in) sequence) and ``step(k, x_t, parts)`` (one step of layer
    ``k`` on the projected input x_t (B, H) and its state parts, returning the new parts; ``parts[0]`` is the
    layer's output). Over-time dropout is applied to every layer's output except the top one.
    """

    state_parts = 1

    def __init__(self, input_size, hidden_size, num_layers, dropout, batch_first) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        self.dropout = _check_dropout(dropout)
        self.batch_first = bool(batch_first)

    def project(self, k: int, seq: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self, k: int, x_t: Tensor, parts: list[Tensor]) -> list[Tensor]:
        raise NotImplementedError

    def _initial_state(self, state, B: int, ref: Tensor) -> list[list[Tensor]]:
        """Per layer, the list of its state parts (B, H)."""
        L, H = self.num_layers, self.hidden_size
        if state is None:
            zeros = ref.new_zeros(B, H)
            return [[zeros] * self.state_parts for _ in range(L)]
        tensors = (state,) if self.state_parts == 1 and isinstance(state, Tensor) else state
        if not isinstance(tensors, (tuple, list)) or len(tensors) != self.state_parts:
            what = "a tensor" if self.state_parts == 1 else f"a tuple of {self.state_parts} tensors"
            raise TypeError(f"state must be {what}, each (num_layers, B, hidden_size)")
        tensors = [check_state_tensor(f"state[{i}]", t, (L, B, H)) for i, t in enumerate(tensors)]
        return [[t[k] for t in tensors] for k in range(L)]

    def forward(self, input: Tensor, state=None, lengths=None):
        """input (N, B, d) or (B, N, d) -> (output (N, B, H) or (B, N, H), state); see the module docstring."""
        N, B = _check_input(input, self.input_size, self.batch_first)
        lengths = check_lengths(lengths, N, B)
        seq = input.transpose(0, 1) if self.batch_first else input
        layers_state = self._initial_state(state, B, seq)
        valid = None
        if lengths is not None:  # (N, B, 1): True where step n is inside sequence b
            valid = (torch.arange(N).unsqueeze(1) < lengths.unsqueeze(0)).unsqueeze(-1).to(seq.device)
        finals = []
        for k in range(self.num_layers):
            x = self.project(k, seq)
            parts = layers_state[k]
            outs = []
            # unbind, not x[n]: each x[n] would cost a full-size zero gradient in the backward pass (O(N^2))
            for n, x_n in enumerate(x.unbind(0)):
                new = self.step(k, x_n, parts)
                if valid is not None:  # a finished sequence keeps its state
                    new = [torch.where(valid[n], a, b) for a, b in zip(new, parts, strict=True)]
                parts = new
                outs.append(parts[0])
            seq = torch.stack(outs) if N else x.new_zeros(0, B, self.hidden_size)
            if valid is not None:
                seq = seq * valid
            finals.append(parts)
            if k < self.num_layers - 1:
                seq = dropout_over_time(seq, self.dropout, self.training)
        state = tuple(torch.stack([f[i] for f in finals]) for i in range(self.state_parts))
        output = seq.transpose(0, 1) if self.batch_first else seq
        return output, state[0] if self.state_parts == 1 else state


#: coRNN damping schemes (see :class:`CoRNN`).
DAMPINGS = ("explicit", "implicit")


class CoRNN(_SteppedStack):
    r"""Coupled oscillatory RNN (Rusch & Mishra, ICLR 2021), stacked.

    Per layer (hidden ``y``, its velocity ``z``; ``u_n`` the layer's input)::

        z_n = z_{n-1} + dt * ( tanh(W y_{n-1} + Wz z_{n-1} + V u_n + b) - gamma * y_{n-1} - epsilon * z_d )
        y_n = y_{n-1} + dt * z_n

    The paper's scheme (its eq. 3) leaves the damping index open: ``z_d = z_{n-1}`` (explicit) or
    ``z_d = z_n`` (implicit, then ``z_n`` is divided by ``1 + dt * epsilon``); the authors' code uses the
    explicit form, our default. Choose with ``damping="explicit" | "implicit"``.

    Initialisation as in the authors' code: ``V``, ``W``, ``Wz`` and ``b`` form one linear map of the
    concatenated ``(u_n, z_{n-1}, y_{n-1})`` with PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
    ``fan_in = input width + 2 H``. The paper's coRNN has one layer; ``num_layers > 1`` stacks layers
    (each layer's ``y`` sequence feeds the next) so that sizes can be matched with the other models.

    Args:
        input_size, hidden_size, num_layers, dropout (over time, between layers), batch_first.
        dt, gamma, epsilon: time step in (0, 1] and the two damping/stiffness constants >= 0 (defaults: the
            authors' psMNIST setting dt=0.076, gamma=0.4, epsilon=8.0).
        damping: ``"explicit"`` or ``"implicit"`` (see above).

    Parameters of layer ``k``: ``weight_ih_l{k}`` (H, in), ``weight_hy_l{k}`` (H, H), ``weight_hz_l{k}``
    (H, H), ``bias_l{k}`` (H,). State ``(y, z)``, each (L, B, H).
    """

    state_parts = 2

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, dt: float = 0.076,
                 gamma: float = 0.4, epsilon: float = 8.0, dropout: float = 0.0, batch_first: bool = False,
                 damping: str = "explicit") -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, num_layers, dropout, batch_first)
        self.dt = check_real("dt", dt, low=0.0, low_open=True, high=1.0)
        self.gamma = check_real("gamma", gamma, low=0.0)
        self.epsilon = check_real("epsilon", epsilon, low=0.0)
        check_choice("damping", damping, DAMPINGS)
        self.damping = damping
        H = self.hidden_size
        for k in range(self.num_layers):
            width = self.input_size if k == 0 else H
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(H, width)))
            self.register_parameter(f"weight_hy_l{k}", nn.Parameter(torch.empty(H, H)))
            self.register_parameter(f"weight_hz_l{k}", nn.Parameter(torch.empty(H, H)))
            self.register_parameter(f"bias_l{k}", nn.Parameter(torch.empty(H)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for every weight and bias, fan_in = width + 2 H."""
        for k in range(self.num_layers):
            width = self.input_size if k == 0 else self.hidden_size
            bound = 1.0 / math.sqrt(width + 2 * self.hidden_size)
            for name in ("weight_ih", "weight_hy", "weight_hz", "bias"):
                nn.init.uniform_(getattr(self, f"{name}_l{k}"), -bound, bound)

    def project(self, k, seq):
        return F.linear(seq, getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_l{k}"))

    def step(self, k, x_t, parts):
        y, z = parts
        drive = torch.tanh(
            x_t
            + F.linear(y, getattr(self, f"weight_hy_l{k}"))
            + F.linear(z, getattr(self, f"weight_hz_l{k}"))
        )
        if self.damping == "explicit":
            z = z + self.dt * (drive - self.gamma * y - self.epsilon * z)
        else:
            z = (z + self.dt * (drive - self.gamma * y)) / (1.0 + self.dt * self.epsilon)
        return [y + self.dt * z, z]

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, dt={self.dt}, "
            f"gamma={self.gamma}, epsilon={self.epsilon}, damping={self.damping!r}"
        )


class IndRNN(_SteppedStack):
    r"""Independently recurrent network with ReLU (Li et al., CVPR 2018), stacked.

    Per layer: ``h_n = relu(W u_n + b + u * h_{n-1})`` with a per-unit recurrent weight vector ``u``.

    Following the paper, the recurrent weights are kept in ``[-u_max, u_max]`` with
    ``u_max = gamma ** (1 / max_steps)`` (``gamma = 2``: a unit's state may grow at most by a factor 2 over
    ``max_steps`` steps), so gradients neither explode nor vanish over the sequence. The forward pass uses the
    clipped weights, and :meth:`constrain_` clips the stored ones (call it after each optimiser step, as the
    paper does). Initialisation, after the paper's adding-problem experiments: biases 0, small Gaussian input
    weights ``N(0, input_std^2)`` (``input_std = 0.001``), recurrent weights ``U(0, 1)`` in every layer but
    the last, whose weights start in ``U(last_min ** (1/max_steps), u_max)`` (``last_min = 0.5``) so that
    the top layer keeps its memory over the whole sequence. The last-layer range and ``input_std`` are the
    values of the widely used public port of that experiment; each is an argument. The paper's batch
    normalisation between layers (for deep stacks) is not included.

    Args:
        input_size, hidden_size, num_layers, dropout (over time, between layers), batch_first.
        max_steps: the sequence length ``T`` the constraint is set for.
        gamma, last_min, input_std: as above.

    Parameters of layer ``k``: ``weight_ih_l{k}`` (H, in), ``bias_l{k}`` (H,), ``weight_hh_l{k}`` (H,).
    State ``h`` (L, B, H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, max_steps: int = 1000,
                 gamma: float = 2.0, last_min: float = 0.5, input_std: float = 0.001, dropout: float = 0.0,
                 batch_first: bool = False) -> None:  # fmt: skip
        super().__init__(input_size, hidden_size, num_layers, dropout, batch_first)
        self.max_steps = check_int("max_steps", max_steps, 1)
        self.gamma = check_real("gamma", gamma, low=1.0)
        self.last_min = check_real("last_min", last_min, low=0.0, low_open=True, high=1.0)
        self.input_std = check_real("input_std", input_std, low=0.0, low_open=True)
        self.recurrent_max = self.gamma ** (1.0 / self.max_steps)
        H = self.hidden_size
        for k in range(self.num_layers):
            width = self.input_size if k == 0 else H
            self.register_parameter(f"weight_ih_l{k}", nn.Parameter(torch.empty(H, width)))
            self.register_parameter(f"bias_l{k}", nn.Parameter(torch.empty(H)))
            self.register_parameter(f"weight_hh_l{k}", nn.Parameter(torch.empty(H)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (see the class docstring)."""
        for k in range(self.num_layers):
            nn.init.normal_(getattr(self, f"weight_ih_l{k}"), 0.0, self.input_std)
            nn.init.zeros_(getattr(self, f"bias_l{k}"))
            if k == self.num_layers - 1:
                lo = self.last_min ** (1.0 / self.max_steps)
                nn.init.uniform_(getattr(self, f"weight_hh_l{k}"), lo, self.recurrent_max)
            else:
                nn.init.uniform_(getattr(self, f"weight_hh_l{k}"), 0.0, 1.0)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Clip the stored recurrent weights to ``[-u_max, u_max]``."""
        for k in range(self.num_layers):
            getattr(self, f"weight_hh_l{k}").clamp_(-self.recurrent_max, self.recurrent_max)

    def project(self, k, seq):
        return F.linear(seq, getattr(self, f"weight_ih_l{k}"), getattr(self, f"bias_l{k}"))

    def step(self, k, x_t, parts):
        u = getattr(self, f"weight_hh_l{k}").clamp(-self.recurrent_max, self.recurrent_max)
        return [torch.relu(x_t + u * parts[0])]

    def extra_repr(self) -> str:
        return (
            f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, max_steps={self.max_steps}, "
            f"recurrent_max={self.recurrent_max:.6g}"
        )


# --------------------------------------------------------------------------------------------------
# task models
# --------------------------------------------------------------------------------------------------


class BaselineSequenceModel(SequenceHead):
    """A baseline recurrent stack + over-time dropout on the top layer's output + linear head: the task-model
    contract and head of :class:`unicornn.heads.SequenceHead` (readout ``"last"`` reads the top layer's
    hidden state at each sequence's own last step).

    Args:
        rnn: a time-major recurrent module of this file (``batch_first=False``).
        output_size: classes or regression outputs.
        readout: ``"last"`` or ``"all"``.
        dropout: over-time dropout on the top layer's output, in [0, 1).
    """


#: Baseline-specific trainer settings and their defaults (all other settings are shared with UnICORNN:
#: hidden_size, num_layers, dropout, and dt for coRNN).
BASELINE_DEFAULTS: dict[str, Any] = {
    "cornn_gamma": 0.4,
    "cornn_epsilon": 8.0,
    "cornn_damping": "explicit",
    "indrnn_max_steps": 1000,
    "indrnn_gamma": 2.0,
}


def _setting(cfg: Mapping[str, Any], key: str):
    """Baseline setting ``key`` of ``cfg`` (default from :data:`BASELINE_DEFAULTS`), checked here, where it is
    consumed, with an error naming the setting."""
    value = cfg.get(key, BASELINE_DEFAULTS[key])
    name = f"setting {key!r}"
    if key == "cornn_damping":
        check_choice(name, value, DAMPINGS)
    elif key == "indrnn_max_steps":
        check_int(name, value, 1)
    else:  # cornn_gamma, cornn_epsilon >= 0; indrnn_gamma >= 1 (the largest gain over max_steps steps)
        value = check_real(name, value, low=1.0 if key == "indrnn_gamma" else 0.0)
    return value


def _between_layers(cfg) -> float:
    """PyTorch's LSTM/GRU dropout acts between layers only (and warns when there is one layer)."""
    return cfg.get("dropout", 0.0) if cfg["num_layers"] > 1 else 0.0


def _lstm(spec, cfg) -> nn.Module:
    return LSTM(spec.input_size, cfg["hidden_size"], cfg["num_layers"], dropout=_between_layers(cfg))


def _gru(spec, cfg) -> nn.Module:
    return GRU(spec.input_size, cfg["hidden_size"], cfg["num_layers"], dropout=_between_layers(cfg))


def _cornn(spec, cfg) -> nn.Module:
    dt = cfg.get("dt", 0.076)
    if isinstance(dt, (list, tuple)):
        raise ValueError(
            f"setting 'dt' must be one number for coRNN (one time step for all layers), got {dt!r}"
        )
    return CoRNN(
        spec.input_size, cfg["hidden_size"], cfg["num_layers"], dt=dt, gamma=_setting(cfg, "cornn_gamma"),
        epsilon=_setting(cfg, "cornn_epsilon"), damping=_setting(cfg, "cornn_damping"),
        dropout=cfg.get("dropout", 0.0),
    )  # fmt: skip


def _indrnn(spec, cfg) -> nn.Module:
    return IndRNN(
        spec.input_size, cfg["hidden_size"], cfg["num_layers"], max_steps=_setting(cfg, "indrnn_max_steps"),
        gamma=_setting(cfg, "indrnn_gamma"), dropout=cfg.get("dropout", 0.0),
    )  # fmt: skip


_RNNS: dict[str, Callable[[Any, Mapping[str, Any]], nn.Module]] = {
    "lstm": _lstm,
    "gru": _gru,
    "cornn": _cornn,
    "indrnn": _indrnn,
}


def build_baseline(name: str, spec, cfg: Mapping[str, Any], **model_args) -> BaselineSequenceModel:
    """The task model of baseline ``name`` for task ``spec`` (input_size, output_size, readout) and trainer
    settings ``cfg`` (hidden_size, num_layers, dropout, dt, and the keys of :data:`BASELINE_DEFAULTS`).

    ``model_args``: extra arguments a task builds from its data (a token task's embedding); the baselines
    read real-valued inputs (B, N, d) only, so any such argument is an error."""
    if name not in _RNNS:
        raise ValueError(f"model must be one of {sorted(_RNNS)}, got {name!r}")
    if model_args:
        raise ValueError(
            f"model {name!r} reads real-valued inputs (B, N, d) and takes no task arguments; task "
            f"{getattr(spec, 'name', '?')!r} hands it {', '.join(sorted(model_args))}"
        )
    rnn = _RNNS[name](spec, cfg)
    return BaselineSequenceModel(rnn, spec.output_size, spec.readout, dropout=cfg.get("dropout", 0.0))


def _factory(name: str) -> Callable[..., BaselineSequenceModel]:
    def factory(spec, cfg, **model_args):
        return build_baseline(name, spec, cfg, **model_args)

    factory.__name__ = f"build_{name}"
    factory.__doc__ = f"``factory(spec, cfg)`` for the {name} baseline (see :func:`build_baseline`)."
    return factory


#: Model factories ``factory(spec, cfg) -> nn.Module`` by model name.
FACTORIES: dict[str, Callable[[Any, Mapping[str, Any]], BaselineSequenceModel]] = {
    name: _factory(name) for name in _RNNS
}
