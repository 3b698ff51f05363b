"""Memory-lean training: the paper's O(N b d + L b m) memory, for stacks of layers (its Sec. 2.3).

In the standard mode autograd keeps, for every layer, its projected input (except for a narrow input projected
inside the CPU kernels) and output sequence: memory grows as
``L * N * B * M``. Here the forward pass runs the whole stack chunk by chunk (``K`` steps at a time) without
autograd and keeps only

* the input sequence (the caller holds it anyway),
* every layer's state ``(y, z)`` at the start of each chunk (anchors, ``2 L B M`` numbers per chunk),
* the dropout masks and the final states.

The backward pass walks the chunks from last to first. For each chunk it rebuilds every layer's states from the
anchor by re-running the chunk forward (one projection matmul per layer and the fused scan, whose own backward
then rebuilds ``z`` by inversion from the chunk's stored ``y``), backpropagates the chunk, and carries the adjoint
states ``(dL/dy, dL/dz)`` of every layer to the previous chunk.

Why re-run forward from anchors rather than invert backward across chunks: inverting the recurrence over long
stretches accumulates rounding (at 18k steps the gradients of ``w`` and ``c`` lose more than an order of
magnitude of accuracy), while re-running from the anchor reproduces exactly the values of the forward pass, so
the lean gradients equal the standard ones to rounding. The cost is one extra forward pass.

Memory is ``O(N B d)`` for the input, ``O(N/K * L B M)`` for the anchors and ``O(K * L B M)`` for one chunk's
working set; with the default ``K = 2048`` the anchors are small next to the working set up to N of a few
hundred thousand steps. ``return_sequence=False`` (read only ``y_n``) avoids materialising the ``N B M`` output;
with ``return_sequence=True`` the output is written chunk by chunk into one preallocated (N, B, M) tensor.

Memory in an ordinary CPU process (``docs/lean_memory.md`` has the measurements). A chunk's buffers are large
(``K B M`` numbers: 16 MiB at the default) and freed after every chunk. glibc serves such blocks from its heap
once its dynamic mmap threshold has risen, and keeps freed heap pages resident; small blocks that outlive a
chunk (anchors, carried gradients) land in the holes the chunk buffers leave, so the next chunk's buffers no
longer fit there and the heap grows with every chunk. Two measures make the resident memory follow the live
tensors without any allocator setting:

* every tensor that outlives a chunk is allocated once, before the first chunk: one tensor for all anchors,
  the output sequence, the input and parameter gradients, the adjoint states carried between chunks (the
  fresh small gradients of each chunk are copied into it and freed at once);
* at chunk boundaries, and in the backward pass each time a node that saved a chunk-sized tensor is reached
  (the buffers of the nodes after it have just been freed), the free pages of the C heap are handed back
  to the system with glibc's ``malloc_trim(0)``. It changes no setting and releases only memory that is
  already free; it is skipped for non-CPU tensors and where the C library has no ``malloc_trim``.
"""

from __future__ import annotations

import ctypes
import sys

import torch
from torch import Tensor

__all__ = ["lean_stack"]


def _chunk_lengths(lengths: Tensor | None, t0: int, t1: int) -> Tensor | None:
    """Valid steps of each sequence within [t0, t1), or None if all are valid."""
    if lengths is None:
        return None
    rel = (lengths - t0).clamp(0, t1 - t0)
    return None if int(rel.min()) == t1 - t0 else rel


class _LeanStack(torch.autograd.Function):
    @staticmethod
    def forward(ctx, module, u, y0, z0, lengths, masks, chunk, return_sequence, *flat_params):
        N = u.shape[0]
        L = module.num_layers
        starts = range(0, N, chunk)
        # Every long-lived tensor is allocated here, before the first chunk's buffers (see the module notes).
        anchors = _new_anchors(len(starts), L, module.hidden_size, u, flat_params)
        ys = [None] * L if y0 is None else [t.detach() for t in y0.unbind(0)]
        zs = [None] * L if z0 is None else [t.detach() for t in z0.unbind(0)]
        first = ys + zs
        state_dtypes = None
        output = None
        with torch.no_grad():
            for index, t0 in enumerate(starts):
                t1 = min(t0 + chunk, N)
                if index > 0:
                    _store_states(anchors[index - 1], ys, zs)
                _release_free_heap(u)
                out, ys, zs = module.run_stack(u[t0:t1], ys, zs, _chunk_lengths(lengths, t0, t1), masks)
                if return_sequence:
                    if output is None:
                        output = out.new_empty((N, *out.shape[1:]))
                    output[t0:t1] = out
                del out
                if state_dtypes is None:
                    state_dtypes = [t.dtype for t in ys + zs]
        ctx.module, ctx.lengths, ctx.masks, ctx.chunk = module, lengths, masks, chunk
        ctx.state_dtypes = state_dtypes
        ctx.return_sequence = return_sequence
        ctx.has_state = (y0 is not None, z0 is not None)
        ctx.first = first
        device_type = u.device.type
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        ctx.save_for_backward(u, anchors, *flat_params)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for an unused output sequence
        y_n, z_n = torch.stack(ys), torch.stack(zs)
        if not return_sequence:
            output = u.new_zeros(0)
            ctx.mark_non_differentiable(output)
        return output, y_n, z_n

    @staticmethod
    def backward(ctx, grad_output, grad_y_n, grad_z_n):
        if torch.is_grad_enabled():
            raise RuntimeError(
                'UnICORNN(memory="lean") does not support double backward (a backward with '
                'create_graph=True through the module); use memory="standard" with backend="reference" '
                "for higher-order gradients"
            )
        module = ctx.module
        u, anchors, *flat_params = ctx.saved_tensors
        L = module.num_layers
        N = u.shape[0]
        leaves = [p.detach().requires_grad_(p.requires_grad) for p in flat_params]
        params = _unflatten(module, leaves)
        # Long-lived buffers of the backward pass, allocated before any chunk's buffers: the parameter and
        # input gradients, and the adjoint states carried from chunk to chunk (2L slots, None: no gradient).
        param_grads = [torch.zeros_like(p) if p.requires_grad else None for p in leaves]
        grad_u = torch.zeros_like(u) if ctx.needs_input_grad[1] else None
        carry = torch.zeros_like(anchors[0]) if anchors.shape[0] else None
        adjoints = [None if grad_y_n is None else grad_y_n[k] for k in range(L)]
        adjoints += [None if grad_z_n is None else grad_z_n[k] for k in range(L)]
        starts = list(range(0, N, ctx.chunk))
        device_type, enabled, dtype = ctx.autocast
        for index in range(len(starts) - 1, -1, -1):
            t0 = starts[index]
            t1 = min(t0 + ctx.chunk, N)
            if index > 0:
                states = [
                    t.to(d).detach().requires_grad_() for t, d in zip(anchors[index - 1], ctx.state_dtypes)
                ]
            else:
                states = [None if t is None else t.detach().requires_grad_() for t in ctx.first]
            _release_free_heap(u)
            u_chunk = u[t0:t1].detach().requires_grad_(grad_u is not None)
            with (
                torch.enable_grad(),
                torch.autocast(device_type, dtype=dtype, enabled=enabled),
                torch.autograd.graph.saved_tensors_hooks(_keep, _unpack_hook(u)),
            ):
                out, ys1, zs1 = module.run_stack(
                    u_chunk, states[:L], states[L:], _chunk_lengths(ctx.lengths, t0, t1), ctx.masks, params
                )
            outs, grads = [], []
            for t, g in zip(ys1 + zs1, adjoints):
                if g is not None:
                    outs.append(t)
                    grads.append(g)
            if ctx.return_sequence and grad_output is not None:
                outs.append(out)
                grads.append(grad_output[t0:t1])
            if not outs:
                break  # nothing upstream depends on the outputs
            state_leaves = [t for t in states if t is not None]
            inputs = state_leaves + [p for p in leaves if p.requires_grad]
            if grad_u is not None:
                inputs.append(u_chunk)
            _release_free_heap(u)
            result = list(torch.autograd.grad(outs, inputs, grads, allow_unused=True))
            del out, ys1, zs1, outs, grads
            it = iter(result)
            new_adjoints = [None if t is None else next(it) for t in states]
            for i, p in enumerate(leaves):
                if p.requires_grad:
                    g = next(it)
                    if g is not None:
                        param_grads[i] += g
            if grad_u is not None:
                g = next(it)
                if g is not None:
                    grad_u[t0:t1] = g
            del result, it
            if index > 0:
                # Carry the adjoints in the preallocated slots; the fresh small tensors are freed at once.
                adjoints = [None if g is None else carry[j].copy_(g) for j, g in enumerate(new_adjoints)]
            else:
                adjoints = new_adjoints
            del new_adjoints, states
        has_y0, has_z0 = ctx.has_state
        grad_y0 = _stack_or_zeros(adjoints[:L], u, module) if has_y0 and ctx.needs_input_grad[2] else None
        grad_z0 = _stack_or_zeros(adjoints[L:], u, module) if has_z0 and ctx.needs_input_grad[3] else None
        return (None, grad_u, grad_y0, grad_z0, None, None, None, None, *param_grads)


def _new_anchors(chunks: int, L: int, M: int, u: Tensor, flat_params) -> Tensor:
    """Storage for every layer's (y, z) at the start of chunks 1..chunks-1: (chunks - 1, 2L, B, M).

    float64 when the input or a parameter is float64, else float32, which holds float32, float16 and bfloat16
    states exactly (each slot is cast back to its state's dtype when the chunk is replayed)."""
    wide = u.dtype == torch.float64 or any(p.dtype == torch.float64 for p in flat_params)
    dtype = torch.float64 if wide else torch.float32
    return u.new_empty((max(chunks - 1, 0), 2 * L, u.shape[1], M), dtype=dtype)


def _store_states(slot: Tensor, ys: list[Tensor], zs: list[Tensor]) -> None:
    """Copy every layer's state into one anchor slot (2L, B, M)."""
    for j, t in enumerate(ys + zs):
        slot[j].copy_(t)


_MALLOC_TRIM = None


def _keep(t: Tensor) -> Tensor:
    """Saved-tensor pack hook that keeps the tensor as it is."""
    return t


def _unpack_hook(u: Tensor):
    """Saved-tensor unpack hook of a chunk's replay: each time the backward pass reaches a node that saved a
    chunk-sized tensor, the buffers of the nodes after it (in forward order) have just been freed: release
    their pages."""
    size = u.shape[1] * 1024  # a chunk of 1,024 steps of one unit per sequence: far above any state

    def unpack(t: Tensor) -> Tensor:
        if t.numel() >= size:
            _release_free_heap(t)
        return t

    return unpack


def _release_free_heap(u: Tensor) -> None:
    """Hand the free pages of the C heap back to the system (glibc's ``malloc_trim(0)``); CPU tensors only.

    Called at chunk boundaries: the previous chunk's buffers have just been freed, and without this glibc
    keeps their pages resident (see the module notes). A no-op on other devices and C libraries. Changes no
    allocator setting: it only releases memory that is already free.
    """
    global _MALLOC_TRIM
    if u.device.type != "cpu":
        return
    if _MALLOC_TRIM is None:
        _MALLOC_TRIM = False
        if sys.platform.startswith("linux"):
            try:
                _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
                _MALLOC_TRIM.argtypes = [ctypes.c_size_t]
                _MALLOC_TRIM.restype = ctypes.c_int
            except (OSError, AttributeError):  # not glibc
                _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def _stack_or_zeros(grads, u, module):
    B = u.shape[1]
    return torch.stack([g if g is not None else u.new_zeros(B, module.hidden_size) for g in grads])


def _flatten(module) -> list[Tensor]:
    """The module's parameters in a fixed order: per layer, its present parameters by role."""
    flat = []
    for k in range(module.num_layers):
        flat.extend(t for t in module.layer_parameters(k).values() if t is not None)
    return flat


def _unflatten(module, flat: list[Tensor]) -> list[dict[str, Tensor | None]]:
    it = iter(flat)
    params = []
    for k in range(module.num_layers):
        roles = module.layer_parameters(k)
        params.append({role: (None if t is None else next(it)) for role, t in roles.items()})
    return params


def lean_stack(module, u, y0, z0, lengths, masks, chunk, return_sequence):
    """Run ``module``'s stack over u (N, B, d) in the lean mode.

    Returns (output (N, B, M) or None, y_n (L, B, M), z_n (L, B, M)). Under ``torch.no_grad`` (or when
    nothing requires a gradient) it is simply a chunked forward pass.
    """
    output, y_n, z_n = _LeanStack.apply(
        module, u, y0, z0, lengths, masks, chunk, return_sequence, *_flatten(module)
    )
    return (output if return_sequence else None), y_n, z_n
