"""Memory-lean training: the paper's O(N b d + L b m) memory, for stacks of layers (its Sec. 2.3).

In the standard mode autograd keeps, for every layer, its projected input and output sequence: memory grows as
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
hundred thousand steps. ``return_sequence=False`` (read only ``y_n``) avoids materialising the ``N B M`` output.
"""

from __future__ import annotations

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
        N, B, _ = u.shape
        L = module.num_layers
        ys = [None] * L if y0 is None else [t.detach() for t in y0.unbind(0)]
        zs = [None] * L if z0 is None else [t.detach() for t in z0.unbind(0)]
        anchors = []
        outputs = []
        with torch.no_grad():
            for t0 in range(0, N, chunk):
                t1 = min(t0 + chunk, N)
                anchors.append((ys, zs))
                out, ys, zs = module.run_stack(u[t0:t1], ys, zs, _chunk_lengths(lengths, t0, t1), masks)
                if return_sequence:
                    outputs.append(out)
        ctx.module, ctx.lengths, ctx.masks, ctx.chunk = module, lengths, masks, chunk
        ctx.anchors = anchors
        ctx.return_sequence = return_sequence
        ctx.has_state = (y0 is not None, z0 is not None)
        device_type = u.device.type
        ctx.autocast = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        ctx.save_for_backward(u, *flat_params)
        y_n, z_n = torch.stack(ys), torch.stack(zs)
        output = torch.cat(outputs) if return_sequence else u.new_zeros(0)
        if not return_sequence:
            ctx.mark_non_differentiable(output)
        return output, y_n, z_n

    @staticmethod
    def backward(ctx, grad_output, grad_y_n, grad_z_n):
        module = ctx.module
        u, *flat_params = ctx.saved_tensors
        L = module.num_layers
        N = u.shape[0]
        leaves = [p.detach().requires_grad_(p.requires_grad) for p in flat_params]
        params = _unflatten(module, leaves)
        param_grads = [torch.zeros_like(p) if p.requires_grad else None for p in leaves]
        grad_u = torch.zeros_like(u) if ctx.needs_input_grad[1] else None
        gy = [None if grad_y_n is None else grad_y_n[k] for k in range(L)]
        gz = [None if grad_z_n is None else grad_z_n[k] for k in range(L)]
        starts = list(range(0, N, ctx.chunk))
        for index in range(len(starts) - 1, -1, -1):
            t0 = starts[index]
            t1 = min(t0 + ctx.chunk, N)
            ys0, zs0 = ctx.anchors[index]
            ys0 = [None if t is None else t.detach().requires_grad_() for t in ys0]
            zs0 = [None if t is None else t.detach().requires_grad_() for t in zs0]
            u_chunk = u[t0:t1].detach().requires_grad_(grad_u is not None)
            device_type, enabled, dtype = ctx.autocast
            with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
                out, ys1, zs1 = module.run_stack(
                    u_chunk, ys0, zs0, _chunk_lengths(ctx.lengths, t0, t1), ctx.masks, params
                )
            outs, grads = [], []
            for t, g in zip(ys1 + zs1, gy + gz):
                if g is not None:
                    outs.append(t)
                    grads.append(g)
            if ctx.return_sequence and grad_output is not None:
                outs.append(out)
                grads.append(grad_output[t0:t1])
            state_leaves = [t for t in ys0 + zs0 if t is not None]
            inputs = state_leaves + [p for p in leaves if p.requires_grad]
            if grad_u is not None:
                inputs.append(u_chunk)
            if not outs:
                break  # nothing upstream depends on the outputs
            result = list(torch.autograd.grad(outs, inputs, grads, allow_unused=True))
            it = iter(result)
            gy = [None if t is None else next(it) for t in ys0]
            gz = [None if t is None else next(it) for t in zs0]
            for i, p in enumerate(leaves):
                if p.requires_grad:
                    g = next(it)
                    if g is not None:
                        param_grads[i] += g
            if grad_u is not None:
                g = next(it)
                if g is not None:
                    grad_u[t0:t1] = g
        has_y0, has_z0 = ctx.has_state
        grad_y0 = _stack_or_zeros(gy, u, module) if has_y0 and ctx.needs_input_grad[2] else None
        grad_z0 = _stack_or_zeros(gz, u, module) if has_z0 and ctx.needs_input_grad[3] else None
        ctx.anchors = None
        return (None, grad_u, grad_y0, grad_z0, None, None, None, None, *param_grads)


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
