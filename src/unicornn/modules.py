"""``UnICORNN``: a stack of UnICORNN layers with the interface of :class:`torch.nn.LSTM`.

Layer ``l`` (1-based) maps the sequence below it, ``y^{l-1}`` (``y^0`` = the input ``u``), to its own:

    x^l_n = V^l y^{l-1}_n + b^l  (+ Lambda^l y^{l-S-1}_n for residual stacking, l > S)
    z^l_n = z^l_{n-1} - s^l * (tanh(w^l * y^l_{n-1} + x^l_n) + alpha * y^l_{n-1})
    y^l_n = y^l_{n-1} + s^l * z^l_n,        s^l = dt_l * sigmoid(c^l)

The projection is one matmul over all steps; the recurrence runs through :func:`unicornn.unicornn_scan`, which
also adds the bias ``b^l`` (inside the fused kernels, so the matmul output is not written twice).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .lean import lean_stack
from .ops.dispatch import backend_available, check_backend
from .ops.scan import check_alpha, check_dt, scan_padded, unicornn_scan, unicornn_scan_projected
from .validation import check_choice, check_int, check_real

__all__ = ["UnICORNN", "dropout_over_time"]


def dropout_over_time(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Variational dropout: one Bernoulli mask per sequence and unit, shared by every time step.

    Args:
        x: (N, B, M) time-major sequence.
        p: drop probability in [0, 1]; 1 drops everything (zeros, as ``nn.Dropout(1.0)`` gives).
        training: apply only when True.

    Returns:
        (N, B, M): ``x * mask / (1 - p)`` with ``mask`` of shape (B, M) broadcast over time (``x * 0`` for
        p = 1).
    """
    p = check_real("dropout_over_time: p", p, low=0.0, high=1.0)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return x * _dropout_mask(x.shape[1:], p, x.device, x.dtype)


def _dropout_mask(shape, p: float, device, dtype) -> Tensor:
    """Bernoulli(1 - p) mask of ``shape`` scaled by 1 / (1 - p)."""
    keep = 1.0 - p
    return torch.empty(shape, device=device, dtype=dtype).bernoulli_(keep) / keep


def check_lengths(lengths, N: int, B: int) -> Tensor | None:
    """Validate per-sequence lengths of a right-padded batch: (B,) integers in [1, N].

    Returns them as int64 on the CPU, or None when absent or when nothing is padded (all equal N). While
    :func:`torch.export.export` traces, only the dtype and shape are checked and the tensor is kept (int64).
    """
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"lengths must hold integers, got dtype {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape (B,) = ({B},), got {tuple(lengths.shape)}")
    if torch.compiler.is_exporting():  # values are not known while tracing: the exported op checks them
        return lengths.to(torch.long)
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > N):
        raise ValueError(
            f"lengths must lie in [1, N] = [1, {N}], got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    lengths = lengths.to(device="cpu", dtype=torch.long)
    return None if B == 0 or int(lengths.min()) == N else lengths


def _import_kernels(backend: str) -> None:
    """Import the fused kernels ``backend`` may run now, not on the first forward pass: that pass may be
    traced by :func:`torch.export.export`, under which importing numba or Triton fails."""
    names = {"auto": ["cpu"] + (["triton"] if torch.cuda.is_available() else []), "cpu": ["cpu"]}
    for name in names.get(backend, [backend] if backend == "triton" else []):
        backend_available(name)


def check_state_tensor(
    name: str, t, expected: tuple[int, ...], meaning: str = "(num_layers, B, hidden_size)"
) -> Tensor:
    """Validate one initial-state tensor of shape ``expected`` (``meaning`` names its dimensions)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {meaning} = {expected}, got {tuple(t.shape)}")
    return t


class UnICORNN(nn.Module):
    r"""Multi-layer UnICORNN (Rusch & Mishra, ICML 2021), a drop-in for :class:`torch.nn.LSTM`.

    Args:
        input_size: features of the input ``u_n``.
        hidden_size: units ``M`` per layer.
        num_layers: stacked layers ``L``. Default: 1
        dt: nominal time step in (0, 1]; one float for all layers or a sequence of ``num_layers`` floats
            (the paper's IMDB and EigenWorms runs give layer 1 its own ``dt``). Default: 0.1
        alpha: restoring-force coefficient, finite and >= 0, shared by all layers. Default: 0.0
        dropout: over-time (variational) dropout on each layer's output except the last, in [0, 1).
            Default: 0.0
        batch_first: input and output are (B, N, *) instead of (N, B, *). Default: ``False``
        bias: learn the projection bias ``b``. Default: ``True``
        residual_skip: ``S`` in [2, num_layers) for the residual stacking of the paper's Appendix C.5
            (layer ``l > S`` also receives ``Lambda^l y^{l-S-1}``), or None. Default: None
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (see :func:`unicornn.unicornn_scan`).
            Default: ``"auto"``
        memory: ``"standard"`` (autograd keeps every layer's sequences) or ``"lean"`` (training keeps only the
            input, the dropout masks and every layer's state every ``checkpoint_every`` steps, and recomputes
            the rest chunk by chunk in the backward pass; see :mod:`unicornn.lean`). Default: ``"standard"``
        checkpoint_every: chunk length ``K`` of the lean mode. Default: 2048
        input_gain: factor, finite and > 0, on the first layer's input projection ``V^1`` after the paper's
            initialisation, applied by :meth:`reset_parameters`. 1.0 is the paper's (and the authors' code's)
            initialisation; a larger gain helps when the inputs are small, e.g. the adding problem trained
            from scratch. Default: 1.0
        bidirectional: every layer also runs backward in time, with its own parameters (suffix ``_reverse``),
            as in :class:`torch.nn.LSTM`; the layer's output is both directions concatenated (forward first),
            and the next layer reads that ``2 * hidden_size`` wide output. With ``lengths`` (or a
            :class:`~torch.nn.utils.rnn.PackedSequence`) the backward direction of each sequence starts at its
            own last valid step. Not with ``memory="lean"`` (whose chunks run forward in time). Default: ``False``

    Shapes (``N`` steps, ``B`` batch, ``M`` = hidden_size, ``L`` = num_layers, ``D`` = 2 if bidirectional
    else 1):
        - input: (N, B, input_size), or (B, N, input_size) with ``batch_first``; or a
          :class:`~torch.nn.utils.rnn.PackedSequence` (any ``enforce_sorted``), which gives a PackedSequence
          output with the input's ordering, as :class:`torch.nn.LSTM` does.
        - state: optional pair ``(y_0, z_0)``, each (D*L, B, M); zeros when omitted. Rows in nn.LSTM's order:
          layer 0 forward, layer 0 backward, layer 1 forward, ...
        - lengths: optional (B,) integers in [1, N] for right-padded batches.
        - output: the top layer's ``y_1..y_N``, (N, B, D*M) or (B, N, D*M); zero past each sequence's length;
          None when ``forward(..., return_sequence=False)``.
        - ``(y_n, z_n)``: each (D*L, B, M), every layer's state at each sequence's own last step (for the
          backward direction: after it has read the sequence's first step).

    Parameters of layer ``k`` (0-based): ``weight_ih_l{k}`` (M, in), ``bias_ih_l{k}`` (M,),
    ``weight_hh_l{k}`` (M,) (the paper's ``w``), ``c_l{k}`` (M,), and for residual layers
    ``weight_skip_l{k}`` (M, width of ``y^{k-S}``); the backward direction's have the suffix ``_reverse``.

    :meth:`step` advances the stack by one time step (streaming inference), equal to :meth:`forward` over
    the same steps.

    The input's dtype must be the parameters' (``float32`` by default; ``model.double()`` for float64), except
    under :func:`torch.autocast`.

    Example::

        >>> rnn = UnICORNN(input_size=10, hidden_size=20, num_layers=2, dt=0.1, alpha=1.0)
        >>> u = torch.randn(5, 3, 10)  # (N, B, input_size)
        >>> output, (y_n, z_n) = rnn(u)
        >>> output.shape, y_n.shape, z_n.shape
        (torch.Size([5, 3, 20]), torch.Size([2, 3, 20]), torch.Size([2, 3, 20]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        dt: float | Sequence[float] = 0.1,
        alpha: float = 0.0,
        dropout: float = 0.0,
        batch_first: bool = False,
        bias: bool = True,
        residual_skip: int | None = None,
        backend: str = "auto",
        memory: str = "standard",
        checkpoint_every: int = 2048,
        input_gain: float = 1.0,
        bidirectional: bool = False,
    ) -> None:
        super().__init__()
        self.input_size = check_int("input_size", input_size, 1)
        self.hidden_size = check_int("hidden_size", hidden_size, 1)
        self.num_layers = check_int("num_layers", num_layers, 1)
        if isinstance(dt, (numbers.Real, Tensor)) and not isinstance(dt, bool):
            dts = [dt] * self.num_layers
        elif isinstance(dt, Sequence) and not isinstance(dt, str):
            if len(dt) != self.num_layers:
                raise ValueError(
                    f"dt must be one float or {self.num_layers} floats (one per layer), got {len(dt)}"
                )
            dts = list(dt)
        else:
            raise TypeError(f"dt must be a float or a sequence of floats, got {type(dt).__name__}")
        self.dt = tuple(check_dt(float(d) if isinstance(d, Tensor) else d, "dt") for d in dts)
        self.alpha = check_alpha(alpha)
        self.dropout = check_real("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.batch_first = bool(batch_first)
        self.bias = bool(bias)
        if residual_skip is not None:
            residual_skip = check_int("residual_skip", residual_skip, optional=True)
            if not 2 <= residual_skip < self.num_layers:
                raise ValueError(
                    f"residual_skip must be in [2, num_layers) = [2, {self.num_layers}) or None, "
                    f"got {residual_skip}"
                )
        self.residual_skip = residual_skip
        self.backend = check_backend(backend)
        _import_kernels(self.backend)
        check_choice("memory", memory, ("standard", "lean"))
        self.memory = memory
        self.checkpoint_every = check_int("checkpoint_every", checkpoint_every, 1)
        self.input_gain = check_real("input_gain", input_gain, low=0.0, low_open=True)
        if not isinstance(bidirectional, bool):
            raise TypeError(f"bidirectional must be True or False, got {bidirectional!r}")
        self.bidirectional = bidirectional
        self._check_memory()
        self.num_directions = 2 if bidirectional else 1

        M = self.hidden_size
        wide = self.num_directions * M  # width of every layer's output
        for k in range(self.num_layers):
            for reverse in (False, True)[: self.num_directions]:
                sfx = "_reverse" if reverse else ""
                width = self.input_size if k == 0 else wide
                self.register_parameter(f"weight_ih_l{k}{sfx}", nn.Parameter(torch.empty(M, width)))
                bias = nn.Parameter(torch.empty(M)) if self.bias else None
                self.register_parameter(f"bias_ih_l{k}{sfx}", bias)
                self.register_parameter(f"weight_hh_l{k}{sfx}", nn.Parameter(torch.empty(M)))
                self.register_parameter(f"c_l{k}{sfx}", nn.Parameter(torch.empty(M)))
                source = self.skip_source(k)
                if source is not None:
                    skip_width = self.input_size if source == 0 else wide
                    self.register_parameter(
                        f"weight_skip_l{k}{sfx}", nn.Parameter(torch.empty(M, skip_width))
                    )
        self.reset_parameters()

    def _check_memory(self) -> None:
        if self.bidirectional and self.memory == "lean":
            raise ValueError(
                'bidirectional=True cannot be combined with memory="lean": the lean mode recomputes the stack '
                "chunk by chunk forward in time, and the backward direction needs the whole sequence; use "
                'memory="standard"'
            )

    # ------------------------------------------------------------------------------------------
    def skip_source(self, k: int) -> int | None:
        """Index into ``[u, y^1, ..., y^L]`` of the sequence the residual connection feeds into layer ``k``
        (0-based), or None. Layer ``l = k + 1 > S`` receives ``y^{l-S-1}``."""
        S = self.residual_skip
        if S is None or k + 1 <= S:
            return None
        return k - S

    def layer_parameters(self, k: int, reverse: bool = False) -> dict[str, Tensor | None]:
        """Parameters of layer ``k`` (0-based) by role: weight_ih, bias_ih, weight_hh, c, weight_skip; with
        ``reverse``, those of its backward direction (bidirectional stacks only)."""
        if reverse and not self.bidirectional:
            raise ValueError("reverse=True: this stack is not bidirectional")
        sfx = "_reverse" if reverse else ""
        return {
            "weight_ih": getattr(self, f"weight_ih_l{k}{sfx}"),
            "bias_ih": getattr(self, f"bias_ih_l{k}{sfx}"),
            "weight_hh": getattr(self, f"weight_hh_l{k}{sfx}"),
            "c": getattr(self, f"c_l{k}{sfx}"),
            "weight_skip": getattr(self, f"weight_skip_l{k}{sfx}", None),
        }

    def all_layer_parameters(self) -> list[dict[str, Tensor | None]]:
        """:meth:`layer_parameters` of every layer and direction, in the order of the state's rows (layer 0
        forward, layer 0 backward, layer 1 forward, ...)."""
        return [
            self.layer_parameters(k, reverse)
            for k in range(self.num_layers)
            for reverse in (False, True)[: self.num_directions]
        ]

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The paper's initialisation (Appendix A): ``V`` Kaiming-uniform with ``a=8`` (fan_in), biases 0,
        ``w ~ U(0, 1)``, ``c ~ U(-0.1, 0.1)``; then the first layer's ``V`` times ``input_gain``.

        The residual skip weights ``Lambda`` (``weight_skip_l{k}``) get the same Kaiming-uniform ``a=8`` as
        ``V``: the paper gives no initialisation for them, so this is this package's choice, not the paper's.
        """
        for j, p in enumerate(self.all_layer_parameters()):
            nn.init.kaiming_uniform_(p["weight_ih"], a=8)
            if j < self.num_directions:  # the first layer
                p["weight_ih"].mul_(self.input_gain)
            if p["bias_ih"] is not None:
                nn.init.zeros_(p["bias_ih"])
            nn.init.uniform_(p["weight_hh"], 0.0, 1.0)
            nn.init.uniform_(p["c"], -0.1, 0.1)
            if p["weight_skip"] is not None:
                nn.init.kaiming_uniform_(p["weight_skip"], a=8)

    @torch.no_grad()
    def effective_time_steps(self) -> Tensor:
        """Per-unit effective time steps ``dt_l * sigmoid(c^l)`` (the paper's Fig. 5), shape (D*L, M) in the
        order of the state's rows."""
        D = self.num_directions
        return torch.stack(
            [self.dt[j // D] * torch.sigmoid(p["c"]) for j, p in enumerate(self.all_layer_parameters())]
        )

    def extra_repr(self) -> str:
        dt = self.dt[0] if len(set(self.dt)) == 1 else list(self.dt)
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, dt={dt}, alpha={self.alpha}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.batch_first:
            s += ", batch_first=True"
        if not self.bias:
            s += ", bias=False"
        if self.residual_skip is not None:
            s += f", residual_skip={self.residual_skip}"
        if self.memory != "standard":
            s += f", memory={self.memory!r}, checkpoint_every={self.checkpoint_every}"
        if self.input_gain != 1.0:
            s += f", input_gain={self.input_gain}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", backend={self.backend!r}"

    # ------------------------------------------------------------------------------------------
    def _check_dtype(self, name: str, input: Tensor) -> None:
        """``input`` must be floating point of the parameters' dtype (any dtype under autocast)."""
        param_dtype = self.weight_ih_l0.dtype
        if not input.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor of the module's dtype {param_dtype}, got "
                f"{input.dtype}: convert it, e.g. x.to({param_dtype})"
            )
        if input.dtype != param_dtype and not torch.is_autocast_enabled(input.device.type):
            fix = {torch.float64: "model.double()", torch.float32: "model.float()"}.get(input.dtype)
            module_fix = f"convert the module ({fix}) or " if fix else ""
            raise TypeError(
                f"{name} has dtype {input.dtype} but the module's parameters have dtype {param_dtype}: "
                f"{module_fix}the input (x.to({param_dtype})), or run under torch.autocast"
            )

    def _check_state(self, state, B: int) -> tuple[Tensor | None, Tensor | None]:
        """Validate an optional initial state: a pair of (D*L, B, M) tensors."""
        if state is None:
            return None, None
        expected = (self.num_directions * self.num_layers, B, self.hidden_size)
        shape = "(2*num_layers, B, hidden_size)" if self.bidirectional else "(num_layers, B, hidden_size)"
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError(f"state must be a pair (y_0, z_0) of tensors, each {shape} = {expected}")
        y0, z0 = state
        for name, t in (("state[0] (y_0)", y0), ("state[1] (z_0)", z0)):
            check_state_tensor(name, t, expected, shape)
        return y0, z0

    def _check_inputs(self, input, state, lengths) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a Tensor or a PackedSequence, got {type(input).__name__}")
        layout = "(B, N, input_size)" if self.batch_first else "(N, B, input_size)"
        if input.dim() != 3:
            raise ValueError(f"input must be 3-D {layout}, got shape {tuple(input.shape)}")
        self._check_dtype("input", input)
        if input.shape[-1] != self.input_size:
            raise ValueError(
                f"input's last dimension must be input_size={self.input_size}, got {input.shape[-1]}"
            )
        B = input.shape[0] if self.batch_first else input.shape[1]
        N = input.shape[1] if self.batch_first else input.shape[0]
        y0, z0 = self._check_state(state, B)
        return y0, z0, check_lengths(lengths, N, B)

    def dropout_masks(self, B: int, device, dtype) -> list[Tensor | None]:
        """One over-time dropout mask (B, D*M) per layer, scaled by 1/(1-p); None where no dropout applies
        (the top layer, evaluation mode, p = 0)."""
        masks: list[Tensor | None] = [None] * self.num_layers
        if self.training and self.dropout > 0.0:
            for k in range(self.num_layers - 1):
                masks[k] = _dropout_mask(
                    (B, self.num_directions * self.hidden_size), self.dropout, device, dtype
                )
        return masks

    def run_stack(
        self,
        u: Tensor,
        y0: list[Tensor | None],
        z0: list[Tensor | None],
        lengths: Tensor | None,
        masks: list[Tensor | None],
        params: list[dict[str, Tensor | None]] | None = None,
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """All layers over one stretch of time: the single place where the stack is computed.

        Args:
            u: (T, B, input_size) time-major input.
            y0, z0: per layer and direction (the state's row order), the (B, M) state at the stretch's start
                or None for zeros.
            lengths: (B,) int64, each sequence's number of valid steps within the stretch (0..T), or None
                when all T steps are valid.
            masks: per layer, the (B, D*M) dropout mask applied to its output, or None.
            params: per layer and direction, the parameters by role (default: this module's,
                :meth:`all_layer_parameters`).

        Returns:
            top layer's output (T, B, D*M), and per layer and direction y_T and z_T (B, M).
        """
        if params is None:
            params = self.all_layer_parameters()
        D = self.num_directions
        order = None if D == 1 else reversal_index(u.shape[0], u.shape[1], lengths, u.device)
        sequences = [u]  # [u, y^1, ..., y^L] after dropout, for the residual connections
        y_last, z_last = [], []
        for k in range(self.num_layers):
            source = self.skip_source(k)
            outputs = []
            for d in range(D):
                j = k * D + d
                p = params[j]
                # The bias goes to the scan, whose kernels add it as they read x (and sum its gradient as they
                # write grad_x): the projection stays a plain matmul and x + b is never written.
                args = (p["weight_hh"], p["c"], self.dt[k], self.alpha, y0[j], z0[j])
                kw = dict(backend=self.backend, bias=p["bias_ih"])
                if source is None:
                    # A narrow input is projected inside the fused kernels (x is never written), else a matmul;
                    # the backward direction reverses each sequence within its length.
                    inp = sequences[-1] if d == 0 else reverse_in_time(sequences[-1], order)
                    if lengths is None:
                        y, yN, zN = unicornn_scan_projected(inp, p["weight_ih"], *args, **kw)
                    else:
                        y, yN, zN = scan_padded(inp, *args, lengths=lengths, weight_ih=p["weight_ih"], **kw)
                else:  # a residual skip adds a second projection: both are matmuls
                    x = F.linear(sequences[-1], p["weight_ih"]) + F.linear(
                        sequences[source], p["weight_skip"]
                    )
                    if d == 1:  # the backward direction: each sequence reversed within its length
                        x = reverse_in_time(x, order)
                    if lengths is None:
                        y, yN, zN = unicornn_scan(x, *args, **kw)
                    else:
                        y, yN, zN = scan_padded(x, *args, lengths=lengths, **kw)
                outputs.append(y if d == 0 else reverse_in_time(y, order))
                y_last.append(yN)
                z_last.append(zN)
            y = outputs[0] if D == 1 else torch.cat(outputs, dim=-1)
            if masks[k] is not None:
                y = y * masks[k].to(y.dtype)
            sequences.append(y)
        return sequences[-1], y_last, z_last

    def forward(
        self,
        input: Tensor | PackedSequence,
        state: tuple[Tensor, Tensor] | None = None,
        lengths: Tensor | Sequence[int] | None = None,
        return_sequence: bool = True,
    ) -> tuple[Tensor | PackedSequence | None, tuple[Tensor, Tensor]]:
        """Run the stack. See the class docstring for shapes. Returns ``(output, (y_n, z_n))``.

        A :class:`~torch.nn.utils.rnn.PackedSequence` input (no ``lengths`` then: it carries them) gives a
        PackedSequence output with the input's ``batch_sizes``, ``sorted_indices`` and ``unsorted_indices``;
        ``state`` and ``(y_n, z_n)`` follow the batch's original order, as with :class:`torch.nn.LSTM`.

        With ``return_sequence=False`` the output sequence is not returned (``output`` is None): in
        ``memory="lean"`` mode this keeps training memory independent of the sequence length.
        """
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, state, lengths, return_sequence)
        y0, z0, lengths = self._check_inputs(input, state, lengths)
        u = input.transpose(0, 1) if self.batch_first else input
        output, y_n, z_n = self._forward_time_major(u, y0, z0, lengths, return_sequence)
        if output is not None and self.batch_first:
            output = output.transpose(0, 1)
        return output, (y_n, z_n)

    def _forward_time_major(self, u, y0, z0, lengths, return_sequence):
        """forward on checked arguments: u (N, B, input_size) -> (output (N, B, D*M) or None, y_n, z_n)."""
        masks = self.dropout_masks(u.shape[1], u.device, self.layer_parameters(0)["weight_ih"].dtype)
        if self.memory == "lean":
            self._check_memory()  # memory may have been changed after construction
            return lean_stack(self, u, y0, z0, lengths, masks, self.checkpoint_every, return_sequence)
        rows = self.num_directions * self.num_layers
        y0s = [None] * rows if y0 is None else list(y0.unbind(0))
        z0s = [None] * rows if z0 is None else list(z0.unbind(0))
        output, ys, zs = self.run_stack(u, y0s, z0s, lengths, masks)
        return (output if return_sequence else None), torch.stack(ys), torch.stack(zs)

    def _forward_packed(self, packed: PackedSequence, state, lengths, return_sequence):
        if lengths is not None:
            raise ValueError("lengths must be None for a PackedSequence input: it carries its own lengths")
        padded, lens = pad_packed_sequence(packed)  # (N, B, input_size) in the batch's original order
        layout, self.batch_first = self.batch_first, False  # a PackedSequence has no batch_first layout
        try:
            y0, z0, checked = self._check_inputs(padded, state, lens)
        finally:
            self.batch_first = layout
        output, y_n, z_n = self._forward_time_major(padded, y0, z0, checked, return_sequence)
        if output is not None:  # back to the packed order of the input
            order = packed.sorted_indices
            if order is not None:
                output, lens = output.index_select(1, order), lens.index_select(0, order.cpu())
            data = pack_padded_sequence(output, lens).data
            output = PackedSequence(data, packed.batch_sizes, packed.sorted_indices, packed.unsorted_indices)
        return output, (y_n, z_n)

    # ------------------------------------------------------------------------------------------
    def step(
        self, input_t: Tensor, state: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Advance the stack by one time step: streaming inference.

        ``step`` over the steps of a sequence, one at a time with the state carried, gives what
        :meth:`forward` gives over the whole sequence (the same recurrence as :func:`unicornn.ops.reference.step`).
        No dropout is applied: call it in evaluation mode (``model.eval()``) when the stack has dropout.

        Args:
            input_t: (B, input_size) the input of one step, of the parameters' dtype.
            state: optional pair ``(y, z)``, each (num_layers, B, hidden_size); zeros when omitted.

        Returns:
            ``(output_t, (y, z))``: the top layer's new ``y`` (B, hidden_size) and every layer's new state,
            each (num_layers, B, hidden_size).
        """
        if self.bidirectional:
            raise RuntimeError(
                "step() is not available for a bidirectional stack: its backward direction needs the whole "
                "sequence; run forward() over the sequence instead"
            )
        if self.training and self.dropout > 0.0:
            raise RuntimeError(
                "step() applies no dropout, but this stack has dropout and is in training mode: call "
                "model.eval() first (over-time dropout needs one mask for the whole sequence)"
            )
        if not isinstance(input_t, Tensor):
            raise TypeError(f"input_t must be a Tensor (B, input_size), got {type(input_t).__name__}")
        if input_t.dim() != 2 or input_t.shape[1] != self.input_size:
            raise ValueError(
                f"input_t must have shape (B, input_size) = (B, {self.input_size}), got {tuple(input_t.shape)}"
            )
        self._check_dtype("input_t", input_t)
        B = input_t.shape[0]
        y0, z0 = self._check_state(state, B)
        if y0 is None:
            y0 = z0 = input_t.new_zeros(self.num_layers, B, self.hidden_size)
        below = [input_t]  # [u_t, y^1_t, ..., y^L_t], for the residual connections
        ys, zs = [], []
        for k, (weight_ih, bias_ih, weight_skip, weight_hh, s) in enumerate(self._step_parameters()):
            x = F.linear(below[-1], weight_ih, bias_ih)
            if weight_skip is not None:
                x = x + F.linear(below[self.skip_source(k)], weight_skip)
            y, z = _step(x, y0[k], z0[k], weight_hh, s, self.alpha)
            ys.append(y)
            zs.append(z)
            below.append(y)
        return below[-1], (torch.stack(ys), torch.stack(zs))

    def _step_parameters(self) -> list[tuple]:
        """Per layer ``(weight_ih, bias_ih, weight_skip, weight_hh, s)`` with ``s = dt * sigmoid(c)`` (M,).

        At batch 1 a step costs microseconds, so ``s`` is kept between steps while ``c`` is unchanged (same
        storage, same version counter) and no gradient of ``c`` is being recorded."""
        cache = self.__dict__.setdefault("_step_cache", {})
        inference = torch.is_inference_mode_enabled()
        out = []
        for k in range(self.num_layers):
            P = self._parameters
            c = P[f"c_l{k}"]
            fresh = c.is_inference() or (torch.is_grad_enabled() and c.requires_grad)  # no version / a graph
            key = None if fresh else (c.data_ptr(), c._version, c.dtype, c.device, inference)
            if fresh:
                s = self.dt[k] * torch.sigmoid(c)
            elif cache.get(k, (None,))[0] == key:
                s = cache[k][1]
            else:
                with torch.no_grad():
                    s = self.dt[k] * torch.sigmoid(c)
                cache[k] = (key, s)
            out.append(
                (
                    P[f"weight_ih_l{k}"],
                    P[f"bias_ih_l{k}"],
                    P.get(f"weight_skip_l{k}"),
                    P[f"weight_hh_l{k}"],
                    s,
                )
            )
        return out


def _step(
    x: Tensor, y: Tensor, z: Tensor, weight_hh: Tensor, s: Tensor, alpha: float
) -> tuple[Tensor, Tensor]:
    """:func:`unicornn.ops.reference.step` in fewer kernel launches (fused multiply-adds): what a streaming
    step at batch 1 costs is mostly launches. x, y, z (B, M); weight_hh, s (M,)."""
    force = torch.tanh(torch.addcmul(x, weight_hh, y))  # tanh(w * y + x)
    if alpha:
        force = force.add(y, alpha=alpha)
    z = torch.addcmul(z, s, force, value=-1.0)
    return torch.addcmul(y, s, z), z


def reversal_index(N: int, B: int, lengths: Tensor | None, device) -> Tensor | None:
    """(N, B) time index that reverses each sequence within its length and leaves its padding in place (its
    own inverse), or None without ``lengths`` (then the whole sequence is reversed)."""
    if lengths is None:
        return None
    t = torch.arange(N, device=device)[:, None]
    n = lengths.to(device)[None, :]
    return torch.where(t < n, n - 1 - t, t)


def reverse_in_time(x: Tensor, index: Tensor | None) -> Tensor:
    """x (N, B, W) with each sequence's valid steps in reverse order (:func:`reversal_index`)."""
    if index is None:
        return x.flip(0)
    return x.gather(0, index[:, :, None].expand(x.shape))
