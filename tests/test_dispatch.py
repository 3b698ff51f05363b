"""Backend choice: every rule of ``resolve_backend``, and the errors ``unicornn_scan`` gives for them."""

from __future__ import annotations

import pytest
import torch
from helpers import fused_backends

from unicornn import BACKENDS, backend_available, unicornn_scan
from unicornn.ops import dispatch
from unicornn.ops.dispatch import resolve_backend

CPU = torch.device("cpu")
F32, F64 = torch.float32, torch.float64
needs_cpu = pytest.mark.skipif(not backend_available("cpu"), reason="needs numba")
needs_triton = pytest.mark.skipif(
    "triton" not in fused_backends(), reason="needs Triton (GPU or interpreter)"
)


def test_names():
    assert BACKENDS == ("auto", "reference", "cpu", "triton")
    assert backend_available("reference") and not backend_available("fast")
    for bad in ("fast", None, 3):
        with pytest.raises(ValueError, match="backend must be one of"):
            resolve_backend(bad, CPU, F32)


@needs_cpu
@pytest.mark.parametrize("dtype", [F64, F32, torch.float16, torch.bfloat16])
def test_auto_is_cpu_for_cpu_tensors(dtype):
    assert resolve_backend("auto", CPU, dtype) == "cpu"


def test_reference_takes_anything():
    assert resolve_backend("reference", CPU, F64) == "reference"
    assert resolve_backend("reference", torch.device("meta"), torch.float16) == "reference"


@needs_triton
def test_explicit_triton_refuses_float64_with_a_pointer_to_other_backends():
    with pytest.raises(TypeError, match="float64.*reference"):
        resolve_backend("triton", torch.device("cuda"), F64)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.zeros(3, 2, 4, dtype=F64, device=dev)
    w = torch.zeros(4, dtype=F64, device=dev)
    with pytest.raises(TypeError, match="float64.*reference"):
        unicornn_scan(x, w, w, 0.1, 0.0, backend="triton")


@needs_triton
def test_auto_on_cuda_takes_triton_except_for_float64():
    cuda = torch.device("cuda")
    for dtype in (F32, torch.float16, torch.bfloat16):
        assert resolve_backend("auto", cuda, dtype) == "triton"
    assert resolve_backend("auto", cuda, F64) == "reference"  # Triton computes in float32


@needs_cpu
def test_explicit_backend_on_the_wrong_device_is_a_clear_error():
    with pytest.raises(RuntimeError, match="backend 'cpu' needs cpu tensors"):
        resolve_backend("cpu", torch.device("cuda"), F32)


@needs_triton
def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    kernels = dispatch.get_kernels("triton")
    monkeypatch.setitem(dispatch._KERNELS, "triton", kernels._replace(devices=("cuda",)))
    with pytest.raises(RuntimeError, match="needs cuda tensors, or TRITON_INTERPRET=1"):
        resolve_backend("triton", CPU, F32)


def test_unavailable_backend_is_a_clear_error(monkeypatch):
    monkeypatch.delitem(dispatch._KERNELS, "cpu", raising=False)
    monkeypatch.setitem(dispatch._IMPORT_ERRORS, "cpu", "the fused CPU backend needs numba")
    assert not backend_available("cpu")
    with pytest.raises(RuntimeError, match="backend 'cpu' is not available: .*numba"):
        resolve_backend("cpu", CPU, F32)
    assert resolve_backend("auto", CPU, F32) == "reference"


def test_auto_on_cuda_without_triton_warns_once_and_falls_back(monkeypatch):
    monkeypatch.delitem(dispatch._KERNELS, "triton", raising=False)
    monkeypatch.setitem(dispatch._IMPORT_ERRORS, "triton", "no triton")
    monkeypatch.setattr(dispatch, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match="pip install triton"):
        assert resolve_backend("auto", torch.device("cuda"), F32) == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.device("cuda"), F32) == "reference"
