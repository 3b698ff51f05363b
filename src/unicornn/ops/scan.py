"""``unicornn_scan``: the public entry point for one layer's recurrence, and the fused custom op behind it.

The fused backends run a kernel pair (forward, backward; see :mod:`unicornn.ops.dispatch`) behind one
``torch.library`` custom op, ``unicornn::scan``, whose autograd formula calls ``unicornn::scan_backward``.
The op saves only ``x``, the output ``y``, the parameters, ``y0`` and the final ``z_N``; the backward
rebuilds ``z`` by inversion (paper eq. 7) while reading the stored ``y``. The kernels return the gradient
with respect to the step size ``s = dt * sigmoid(c)``; the autograd formula applies the chain rule to ``c``
once, for every backend. Because it is a registered custom op, ``torch.compile`` captures it as one node.

Eager calls skip the dispatcher: an autograd function runs the same kernel pair, saves the same tensors and
applies the same formula (:func:`_eager_function`), since the op's Python wrappers cost about 0.1 ms per layer
and training step (a one-step training step of two layers: 1.35 ms through the op, 1.06 ms eagerly; 2% at
N = 1000, B = 32; ``benchmarks/cpu_call_overhead.py``). Wherever the call is traced or compiled, runs under a
``torch.func`` transform, or sees fake tensors or tensor subclasses (:func:`_traced`), the op runs instead.
Both paths give bitwise the same results (tested).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor
from torch.autograd.profiler import record_function

from ..validation import check_real
from .dispatch import get_kernels, resolve_backend
from .reference import scan_reference

__all__ = ["unicornn_scan", "unicornn_scan_projected", "check_dt", "check_alpha"]


# --------------------------------------------------------------------------------------------------
# The kernel calls behind the ops (and their eager path)
# --------------------------------------------------------------------------------------------------


def _run_forward(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels: str):
    return get_kernels(kernels).forward(x, weight_hh, c, dt, alpha, y0, z0, bias)


def _run_backward(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias, kernels: str):
    return get_kernels(kernels).backward(
        grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias
    )


def _run_projected_forward(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias, kernels: str):
    forward, _ = get_kernels(kernels).projected
    return forward(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias)


def _run_projected_backward(grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias,
                            kernels: str, grad_x: bool):  # fmt: skip
    _, backward = get_kernels(kernels).projected
    gx, *rest = backward(grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias,
                         grad_x=grad_x)  # fmt: skip
    return (u.new_empty(0) if gx is None else gx), *rest


# --------------------------------------------------------------------------------------------------
# The custom op and its autograd formula
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("unicornn::scan", mutates_args=())
def _scan_op(
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    z0: Tensor,
    bias: Tensor | None,
    kernels: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _run_forward(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels)


@_scan_op.register_fake
def _(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels):
    return torch.empty_like(x), torch.empty_like(y0), torch.empty_like(z0)


@torch.library.custom_op("unicornn::scan_backward", mutates_args=())
def _scan_backward_op(
    grad_y: Tensor | None,
    grad_yN: Tensor,
    grad_zN: Tensor,
    y: Tensor,
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    zN: Tensor,
    bias: Tensor | None,
    kernels: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _run_backward(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias, kernels)


@_scan_backward_op.register_fake
def _(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias, kernels):
    return (
        torch.empty_like(x),
        torch.empty_like(weight_hh),
        torch.empty_like(c),
        torch.empty_like(y0),
        torch.empty_like(y0),
        torch.empty_like(weight_hh),
    )


def _setup_context(ctx, inputs, output):
    x, weight_hh, c, dt, alpha, y0, _z0, bias, kernels = inputs
    y, _yN, zN = output
    ctx.save_for_backward(x, y, weight_hh, c, y0, zN, bias)
    ctx.dt, ctx.alpha, ctx.kernels = dt, alpha, kernels
    ctx.set_materialize_grads(False)  # an output that does not reach the loss gets None, not zeros


def _upstream(grad_y, grad_yN, grad_zN, y, y0, zN):
    """The upstream gradients as the kernels take them: contiguous, in the compute dtype, zeros for unset
    final-state gradients; ``grad_y`` None stays None (only the final state reaches the loss: the kernels then
    do not read a sequence of zeros)."""
    grad_y = None if grad_y is None else grad_y.to(y.dtype).contiguous()
    grad_yN = torch.zeros_like(y0) if grad_yN is None else grad_yN.to(y0.dtype).contiguous()
    grad_zN = torch.zeros_like(zN) if grad_zN is None else grad_zN.to(zN.dtype).contiguous()
    return grad_y, grad_yN, grad_zN


def _grad_c(grad_s: Tensor, c: Tensor, dt: float) -> Tensor:
    """dL/dc from dL/ds, ``s = dt * sigmoid(c)``: the one place of this chain rule."""
    sig = torch.sigmoid(c)
    return grad_s * dt * sig * (1.0 - sig)


def _grads(ctx, grad_y, grad_yN, grad_zN, backward):
    """The autograd formula of the scan, its kernel call being ``backward`` (the backward op, or the kernels
    themselves in eager mode)."""
    x, y, weight_hh, c, y0, zN, bias = ctx.saved_tensors
    grad_y, grad_yN, grad_zN = _upstream(grad_y, grad_yN, grad_zN, y, y0, zN)
    gx, gw, gs, gy0, gz0, gb = backward(
        grad_y, grad_yN, grad_zN, y, x, weight_hh, c, ctx.dt, ctx.alpha, y0, zN, bias, ctx.kernels
    )
    return gx, gw, _grad_c(gs, c, ctx.dt), None, None, gy0, gz0, None if bias is None else gb, None


def _backward(ctx, grad_y, grad_yN, grad_zN):
    return _grads(ctx, grad_y, grad_yN, grad_zN, _scan_backward_op)


torch.library.register_autograd("unicornn::scan", _backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------
# The scan with the input projection inside the kernels (narrow inputs)
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("unicornn::scan_projected", mutates_args=())
def _scan_projected_op(
    u: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    z0: Tensor,
    bias: Tensor | None,
    kernels: str,
) -> tuple[Tensor, Tensor, Tensor]:
    return _run_projected_forward(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias, kernels)


@_scan_projected_op.register_fake
def _(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias, kernels):
    return u.new_empty((*u.shape[:2], weight_ih.shape[0])), torch.empty_like(y0), torch.empty_like(z0)


@torch.library.custom_op("unicornn::scan_projected_backward", mutates_args=())
def _scan_projected_backward_op(
    grad_y: Tensor | None,
    grad_yN: Tensor,
    grad_zN: Tensor,
    y: Tensor,
    u: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    zN: Tensor,
    bias: Tensor | None,
    kernels: str,
    grad_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """As ``unicornn::scan_backward`` with ``grad_weight_ih`` second; ``grad_x`` is an empty tensor unless
    asked for (it is needed only for the gradient of ``u``)."""
    return _run_projected_backward(
        grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias, kernels, grad_x
    )


@_scan_projected_backward_op.register_fake
def _(grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias, kernels, grad_x):
    gx = u.new_empty(y.shape) if grad_x else u.new_empty(0)
    return (gx, torch.empty_like(weight_ih), *(torch.empty_like(weight_hh) for _ in range(2)),
            torch.empty_like(y0), torch.empty_like(y0), torch.empty_like(weight_hh))  # fmt: skip


def _setup_context_projected(ctx, inputs, output):
    u, weight_ih, weight_hh, c, dt, alpha, y0, _z0, bias, kernels = inputs
    y, _yN, zN = output
    ctx.save_for_backward(u, y, weight_ih, weight_hh, c, y0, zN, bias)
    ctx.dt, ctx.alpha, ctx.kernels = dt, alpha, kernels
    ctx.set_materialize_grads(False)


def _grads_projected(ctx, grad_y, grad_yN, grad_zN, backward):
    """The autograd formula of the projected scan, its kernel call being ``backward`` (see :func:`_grads`)."""
    u, y, weight_ih, weight_hh, c, y0, zN, bias = ctx.saved_tensors
    grad_y, grad_yN, grad_zN = _upstream(grad_y, grad_yN, grad_zN, y, y0, zN)
    need_u = ctx.needs_input_grad[0]
    gx, gv, gw, gs, gy0, gz0, gb = backward(
        grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, ctx.dt, ctx.alpha, y0, zN, bias, ctx.kernels,
        need_u,
    )  # fmt: skip
    grad_u = (gx.to(weight_ih.dtype) @ weight_ih).to(u.dtype) if need_u else None
    return (grad_u, gv, gw, _grad_c(gs, c, ctx.dt), None, None, gy0, gz0, None if bias is None else gb, None)


def _backward_projected(ctx, grad_y, grad_yN, grad_zN):
    return _grads_projected(ctx, grad_y, grad_yN, grad_zN, _scan_projected_backward_op)


torch.library.register_autograd(
    "unicornn::scan_projected", _backward_projected, setup_context=_setup_context_projected
)


# --------------------------------------------------------------------------------------------------
# Eager calls: the same kernels and formulas without the dispatcher
# --------------------------------------------------------------------------------------------------


def _profiled(name: str):
    """``record_function(name)`` while torch's profiler records (the op's name for the kernel call of an
    eager step), else nothing: it costs about 5 us a call."""
    return record_function(name) if _profiler_enabled() else nullcontext()


def _profiler_enabled() -> bool:
    enabled = getattr(torch._C._autograd, "_profiler_enabled", None)
    return True if enabled is None else enabled()


def _eager_function(name: str, op: str, run_forward, setup_context, grads, run_backward, backward_op):
    """An autograd function (class ``name``) that runs the custom op ``op`` for eager calls: its kernels
    (``run_forward``, ``run_backward``), saved tensors (``setup_context``) and formula (``grads``), without the
    dispatcher (which costs ~0.1 ms per layer and training step). With ``create_graph=True`` the backward op
    ``backward_op`` runs instead: its gradients then refuse to be differentiated again, as the op's do."""

    def forward(ctx, *inputs):  # the op's inputs (a separate setup_context costs ~20 us a call)
        with _profiled(op):
            output = run_forward(*inputs)
        setup_context(ctx, inputs, output)
        return output

    def backward(ctx, grad_y, grad_yN, grad_zN):
        call = backward_op if torch.is_grad_enabled() else _profiled_call(f"{op}_backward", run_backward)
        return grads(ctx, grad_y, grad_yN, grad_zN, call)

    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                   "backward": staticmethod(backward)})  # fmt: skip


_EagerScan = _eager_function(
    "_EagerScan", "unicornn::scan", _run_forward, _setup_context, _grads, _run_backward, _scan_backward_op
)
_EagerScanProjected = _eager_function(
    "_EagerScanProjected", "unicornn::scan_projected", _run_projected_forward, _setup_context_projected,
    _grads_projected, _run_projected_backward, _scan_projected_backward_op,
)  # fmt: skip


def _profiled_call(name: str, fn):
    """``fn`` run under :func:`_profiled` ``(name)``."""

    def call(*args):
        with _profiled(name):
            return fn(*args)

    return call


def _traced(tensors) -> bool:
    """Whether a call on ``tensors`` is being traced or compiled (``torch.compile``, ``torch.export``,
    ``torch.jit.trace``, a dispatch mode such as ``make_fx`` or fake tensors), runs under a ``torch.func``
    transform (``vmap``) or involves tensor subclasses: then the registered op runs, which every tracer records
    as one node."""
    return (
        torch.compiler.is_compiling()
        or torch.compiler.is_exporting()
        or torch.jit.is_tracing()
        or torch._C._len_torch_dispatch_stack() > 0
        or torch._C._are_functorch_transforms_active()
        or torch.overrides.has_torch_function(tensors)
    )


def _scan(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels: str):
    """``unicornn::scan``, through the dispatcher only where it is traced (see :func:`_traced`)."""
    if _traced((x, weight_hh, c, y0, z0)):
        return _scan_op(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels)
    return _EagerScan.apply(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels)


def _scan_projected(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias, kernels: str):
    """``unicornn::scan_projected``, through the dispatcher only where it is traced (see :func:`_traced`)."""
    if _traced((u, weight_ih, weight_hh, c, y0, z0)):
        return _scan_projected_op(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias, kernels)
    return _EagerScanProjected.apply(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias, kernels)


def refuse_gradient(op: str, message: str) -> None:
    """Register for ``op`` an autograd formula that raises ``RuntimeError(message)``: asking for its gradient
    gets that message instead of PyTorch's generic "no autograd formula was registered"."""

    def refuse(ctx, *grads):
        raise RuntimeError(message)

    torch.library.register_autograd(op, refuse, setup_context=lambda ctx, inputs, output: None)


# The backward ops are differentiable only in name.
for _op in ("unicornn::scan_backward", "unicornn::scan_projected_backward"):
    refuse_gradient(
        _op,
        "unicornn: double backward (differentiating a gradient computed with create_graph=True) is not "
        "supported by the fused backends; use backend='reference' (plain autograd) for it",
    )


# --------------------------------------------------------------------------------------------------
# The padded scan as one op: what torch.export records for a batch with lengths
# --------------------------------------------------------------------------------------------------


@torch.library.custom_op("unicornn::scan_padded", mutates_args=())
def _scan_padded_op(
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor,
    z0: Tensor,
    bias: Tensor | None,
    lengths: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`scan_padded` behind one node: its cut at each distinct length depends on the values of
    ``lengths``, which an exported graph cannot hold, so the graph keeps this op and it runs eagerly (with the
    fused kernels of ``backend``) when the exported program runs. Inference only."""
    N, B = x.shape[:2]
    lengths = lengths.to(device="cpu", dtype=torch.long)
    if B and (int(lengths.min()) < 1 or int(lengths.max()) > N):
        raise ValueError(
            f"lengths must lie in [1, N] = [1, {N}], got min {int(lengths.min())}, max {int(lengths.max())}"
        )
    with torch.no_grad():
        y, yN, zN = scan_padded(
            x, weight_hh, c, dt, alpha, y0, z0, lengths=lengths, backend=backend, bias=bias
        )
    return y.clone() if y is x else y, yN.clone(), zN.clone()


@_scan_padded_op.register_fake
def _(x, weight_hh, c, dt, alpha, y0, z0, bias, lengths, backend):
    return torch.empty_like(x), torch.empty_like(y0), torch.empty_like(z0)


refuse_gradient(
    "unicornn::scan_padded",
    "unicornn::scan_padded is the inference form of a padded batch in an exported program; it has no "
    "gradient. Train the eager module (UnICORNN.forward with lengths) instead",
)


def fused_scan(x, weight_hh, c, dt, alpha, y0, z0, kernels: str, bias=None):
    """The fused scan (eager, or the custom op where traced) with an explicit kernel pair (``"loop"`` included)
    and no validation: for tests.

    Tensors as the kernel contract wants them (see :func:`unicornn.ops.dispatch.register_kernels`).
    """
    return _scan(x, weight_hh, c, dt, alpha, y0, z0, bias, kernels)


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def _scalar(value):
    """A one-element tensor that needs no gradient as its Python number; anything else unchanged."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.requires_grad:
        return value.item()
    return value


def check_dt(dt, name: str = "dt") -> float:
    """Validate a nominal time step: a finite real number in (0, 1]."""
    return check_real(name, _scalar(dt), low=0.0, low_open=True, high=1.0)


def check_alpha(alpha, name: str = "alpha") -> float:
    """Validate the restoring-force coefficient: a finite real number >= 0."""
    return check_real(name, _scalar(alpha), low=0.0)


def _check_tensor(name: str, t, shape: tuple[int, ...], x: Tensor, meaning: str, x_name: str = "x") -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor of shape {meaning} = {shape}, got {type(t).__name__}")
    if tuple(t.shape) != shape:
        raise ValueError(f"{name} must have shape {meaning} = {shape}, got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{name} is on {t.device} but {x_name} is on {x.device}")


# --------------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------------


def unicornn_scan(
    x: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor | None = None,
    z0: Tensor | None = None,
    backend: str = "auto",
    *,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run one UnICORNN layer's recurrence over a whole sequence.

    Args:
        x: (N, B, M) time-major, already projected input of the layer: ``V u_n + b``, or ``V u_n`` with
            ``b`` given as ``bias``.
        weight_hh: (M,) per-unit frequency weights ``w``.
        c: (M,) time-step parameters; the effective step is ``dt * sigmoid(c)``.
        dt: nominal time step in (0, 1].
        alpha: restoring-force coefficient, >= 0 and finite.
        y0, z0: (B, M) initial states, or None for zeros.
        backend: ``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"`` (rules:
            :func:`unicornn.ops.dispatch.resolve_backend`).
        bias: (M,) added to every ``x_n``, or None. The fused kernels add it as they read ``x`` and sum its
            gradient as they write ``grad_x``: cheaper than a projection with a bias, which writes ``x + b``.

    Returns:
        ``(y, y_N, z_N)``: y (N, B, M) holds y_1..y_N; y_N and z_N are (B, M). Differentiable in x,
        weight_hh, c, y0, z0 and bias. float16/bfloat16 inputs are computed in float32: y has x's dtype, the final
        states stay in float32 (so that carrying them loses nothing).
    """
    _check_input("x", x, "(N, B, M)")
    N, B, M = x.shape
    name, weight_hh, c, dt, alpha, y0, z0, bias = _checked(
        x, M, weight_hh, c, dt, alpha, y0, z0, backend, bias
    )
    compute = y0.dtype
    if name == "reference" and torch.compiler.is_exporting():
        # A Python loop over a symbolic number of steps cannot be exported: the readable loop kernels run
        # behind the custom op instead (same arithmetic).
        return _scan_op(x.to(compute), weight_hh, c, dt, alpha, y0, z0, bias, "loop")
    if name == "reference":
        y, yN, zN = scan_reference(x.to(compute), weight_hh, c, dt, alpha, y0, z0, bias)
        return y.to(x.dtype), yN, zN
    if N == 0 and not torch.compiler.is_exporting():
        return x.new_zeros(x.shape), y0.clone(), z0.clone()
    return _scan(x.contiguous(), weight_hh, c, dt, alpha, y0.contiguous(), z0.contiguous(), bias, name)


def unicornn_scan_projected(
    u: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    c: Tensor,
    dt: float,
    alpha: float,
    y0: Tensor | None = None,
    z0: Tensor | None = None,
    backend: str = "auto",
    *,
    bias: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`unicornn_scan` of the projected input ``x = u weight_ih^T``, projected inside the kernels where
    the backend can and the input is narrow.

    For a layer input at most a few features wide (the CPU backend: ``unicornn.ops.cpu.max_projected_width``),
    the fused kernels compute each step's ``x_n = V u_n`` as they go and, in the backward pass, multiply its
    gradient into ``dL/dV`` instead of writing it: ``x`` and ``grad_x`` (N, B, M) are never stored, which
    saves their memory and three passes over them. Everywhere else (other backends, wider inputs, while
    ``torch.export`` traces) this is ``unicornn_scan(F.linear(u, weight_ih), ...)``.

    Args:
        u: (N, B, d) time-major input of the layer.
        weight_ih: (M, d) projection ``V``.
        weight_hh, c, dt, alpha, y0, z0, backend, bias: as in :func:`unicornn_scan`.

    Returns:
        ``(y, y_N, z_N)`` as :func:`unicornn_scan`; differentiable in ``u`` and ``weight_ih`` too.
    """
    _check_input("u", u, "(N, B, d)")
    if not isinstance(weight_ih, Tensor) or weight_ih.dim() != 2 or weight_ih.shape[1] != u.shape[2]:
        got = tuple(weight_ih.shape) if isinstance(weight_ih, Tensor) else type(weight_ih).__name__
        raise ValueError(
            f"weight_ih must be a Tensor of shape (M, d) with d = {u.shape[2]} (u's width), got {got}"
        )
    M = weight_ih.shape[0]
    _check_tensor("weight_ih", weight_ih, (M, u.shape[2]), u, "(M, d)", "u")
    N, d = u.shape[0], u.shape[2]
    name, weight_hh, c, dt, alpha, y0, z0, bias = _checked(
        u, M, weight_hh, c, dt, alpha, y0, z0, backend, bias, "u"
    )
    projected = name != "reference" and d <= get_kernels(name).max_projected_width(M)
    if not projected or N == 0 or torch.compiler.is_exporting():
        x = torch.nn.functional.linear(u, weight_ih)
        return unicornn_scan(x, weight_hh, c, dt, alpha, y0, z0, backend=name, bias=bias)
    return _scan_projected(
        u.contiguous(), weight_ih.to(y0.dtype), weight_hh, c, dt, alpha, y0.contiguous(), z0.contiguous(), bias,
        name,
    )  # fmt: skip


def _check_input(name: str, t, meaning: str) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{name} must be 3-D {meaning}, got shape {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _checked(inp: Tensor, M: int, weight_hh, c, dt, alpha, y0, z0, backend: str, bias, inp_name: str = "x"):
    """Validate what every scan takes besides its input ``inp`` (N, B, .) for M units, and convert it: the
    backend's name, then weight_hh, c, dt, alpha, y0, z0 (zeros for None) and bias in the compute dtype
    (float64 for float64 input, float32 otherwise)."""
    N, B = inp.shape[:2]
    _check_tensor("weight_hh", weight_hh, (M,), inp, "(M,)", inp_name)
    _check_tensor("c", c, (M,), inp, "(M,)", inp_name)
    for label, state in (("y0", y0), ("z0", z0)):
        if state is not None:
            _check_tensor(label, state, (B, M), inp, "(B, M)", inp_name)
    if bias is not None:
        _check_tensor("bias", bias, (M,), inp, "(M,)", inp_name)
    dt = check_dt(dt)
    alpha = check_alpha(alpha)
    name = resolve_backend(backend, inp.device, inp.dtype)
    compute = torch.float64 if inp.dtype == torch.float64 else torch.float32
    y0 = inp.new_zeros((B, M), dtype=compute) if y0 is None else y0.to(compute)
    z0 = inp.new_zeros((B, M), dtype=compute) if z0 is None else z0.to(compute)
    bias = None if bias is None else bias.to(compute)
    return name, weight_hh.to(compute), c.to(compute), dt, alpha, y0, z0, bias


def scan_padded(
    x,
    weight_hh,
    c,
    dt,
    alpha,
    y0=None,
    z0=None,
    *,
    lengths: Tensor,
    backend: str = "auto",
    bias=None,
    weight_ih=None,
):
    """:func:`unicornn_scan` over a right-padded batch, exact per sequence.

    The batch is cut at each distinct length: every segment runs only the sequences still active, so padding
    never enters a computation, and each sequence's final state is taken at its own last step. Costs one
    scan per distinct length (while :func:`torch.export.export` traces, one ``unicornn::scan_padded`` op that
    does this when the exported program runs). x: (N, B, M); lengths: (B,) int64 on CPU in [0, N] (0: the state passes
    through unchanged); bias: (M,) or None, as in :func:`unicornn_scan`. With ``weight_ih`` (M, d), ``x`` is the
    layer's input ``u`` (N, B, d) and each segment runs :func:`unicornn_scan_projected`. Returns y (N, B, M)
    zero past each length, and y_n, z_n (B, M).
    """
    if weight_ih is not None and torch.compiler.is_exporting():
        x, weight_ih = torch.nn.functional.linear(x, weight_ih), None  # the exported graph keeps the matmul
    N, B = x.shape[:2]
    M = x.shape[2] if weight_ih is None else weight_ih.shape[0]

    def scan(inp, y_start, z_start):
        if weight_ih is None:
            return unicornn_scan(inp, weight_hh, c, dt, alpha, y_start, z_start, backend=backend, bias=bias)
        return unicornn_scan_projected(
            inp, weight_ih, weight_hh, c, dt, alpha, y_start, z_start, backend=backend, bias=bias
        )

    if torch.compiler.is_exporting():
        state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        y0 = x.new_zeros(B, M, dtype=state_dtype) if y0 is None else y0.to(state_dtype)
        z0 = x.new_zeros(B, M, dtype=state_dtype) if z0 is None else z0.to(state_dtype)
        name = resolve_backend(backend, x.device, x.dtype)
        return _scan_padded_op(x, weight_hh, c, dt, alpha, y0, z0, bias, lengths, name)
    if int(lengths.min()) >= N:
        return scan(x, y0, z0)
    device = x.device
    state_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    yc = x.new_zeros(B, M, dtype=state_dtype) if y0 is None else y0.to(state_dtype)
    zc = x.new_zeros(B, M, dtype=state_dtype) if z0 is None else z0.to(state_dtype)
    pieces = []
    start = 0
    for end in torch.unique(lengths).tolist():
        if end == 0:
            continue  # sequences that already ended: their state passes through
        active = torch.nonzero(lengths >= end).flatten().to(device)
        y_seg, yN, zN = scan(
            x[start:end].index_select(1, active), yc.index_select(0, active), zc.index_select(0, active)
        )
        pieces.append(x.new_zeros(end - start, B, M).index_copy(1, active, y_seg))
        yc = yc.index_copy(0, active, yN)
        zc = zc.index_copy(0, active, zN)
        start = end
    if start < N:
        pieces.append(x.new_zeros(N - start, B, M))
    return torch.cat(pieces), yc, zc
