"""Shared test utilities: random problems and the list of backends to compare."""

from __future__ import annotations

import os

import torch

from unicornn import backend_available


def fused_backends() -> list[str]:
    """Fused backends that can run in this environment (Triton only on CUDA or under its interpreter)."""
    names = []
    if backend_available("cpu"):
        names.append("cpu")
    if (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1") and backend_available(
        "triton"
    ):
        names.append("triton")
    return names


def random_scan_inputs(N, B, M, dtype=torch.float64, seed=0, requires_grad=True, states=True):
    """x ~ N(0,1) (N,B,M), w ~ U(0,1), c ~ U(-0.1,0.1) (M,), y0, z0 ~ N(0,1) (B,M) or None."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, B, M, generator=g, dtype=dtype)
    w = torch.rand(M, generator=g, dtype=dtype)
    c = torch.rand(M, generator=g, dtype=dtype) * 0.2 - 0.1
    y0 = torch.randn(B, M, generator=g, dtype=dtype) if states else None
    z0 = torch.randn(B, M, generator=g, dtype=dtype) if states else None
    tensors = [x, w, c, y0, z0]
    if requires_grad:
        for t in tensors:
            if t is not None:
                t.requires_grad_(True)
    return tensors


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| computed in float64."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm())
