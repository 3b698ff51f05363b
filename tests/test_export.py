"""Deployment: torch.export (.pt2) and ONNX export of models containing UnICORNN, and export of a trained run.

The exported programs are traced at one length and run at lengths they were not traced at, with and without
``lengths``, unidirectional and bidirectional.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from helpers import fused_backends, rel_err
from torch import nn

from unicornn import UnICORNN
from unicornn.export import check_exportable, export_onnx, export_pt2, export_run, run_onnx, verify
from unicornn.task_models import SequenceModel
from unicornn.tasks import get_task
from unicornn.training.errors import RunFileError

logging.getLogger("torch.onnx").setLevel(logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore")


class Stack(nn.Module):
    """A batch-first model around a UnICORNN that returns the output sequence and both final states."""

    def __init__(self, dt=0.2, alpha=1.0, **kw):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = UnICORNN(3, 8, 2, dt=dt, alpha=alpha, batch_first=True, **kw)

    def forward(self, x, lengths=None):
        out, (y, z) = self.rnn(x, lengths=lengths)
        return out, y, z


def _inputs(B, N, with_lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g)
    if not with_lengths:
        return (x,)
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    lengths[0] = N
    return x, lengths


CASES = [(bi, ln) for bi in (False, True) for ln in (False, True)]


@pytest.mark.parametrize("bidirectional,with_lengths", CASES)
def test_torch_export_runs_at_lengths_it_was_not_traced_at(tmp_path, bidirectional, with_lengths):
    model = Stack(bidirectional=bidirectional).eval()
    program = export_pt2(model, _inputs(3, 20, with_lengths), tmp_path / "m.pt2")
    ops = [str(n.target) for n in program.graph.nodes if "unicornn" in str(n.target)]
    op = "unicornn.scan_padded.default" if with_lengths else "unicornn.scan.default"
    assert ops == [op] * (4 if bidirectional else 2)  # one fused op per layer and direction
    kernels = "cpu" if "cpu" in fused_backends() else "loop"
    assert all(kernels in map(str, n.args) for n in program.graph.nodes if "unicornn" in str(n.target))
    loaded = torch.export.load(str(tmp_path / "m.pt2")).module()
    for B, N in ((5, 7), (2, 61)):
        inputs = _inputs(B, N, with_lengths, seed=N)
        with torch.no_grad():
            for a, b in zip(loaded(*inputs), model(*inputs)):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("with_lengths", [False, True])
def test_an_example_of_one_sequence_or_one_step_still_exports_dynamic_shapes(tmp_path, with_lengths):
    """A batch of one and a single step would be fixed by tracing: the exporters trace a widened copy."""
    model = Stack().eval()
    for B, N in ((1, 7), (2, 1)):
        program = export_pt2(model, _inputs(B, N, with_lengths), tmp_path / f"m{B}{N}.pt2")
        for args in (_inputs(4, 9, with_lengths, seed=2), _inputs(1, 3, with_lengths, seed=3)):
            got, want = program.module()(*args), model(*args)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_torch_export_of_a_task_model_with_the_reference_backend(tmp_path):
    """backend='reference' exports too: the readable loop kernels run behind the custom op."""
    model = SequenceModel(3, 2, 6, 2, 0.2, 1.0, 0.0, "last", backend="reference").eval()
    program = export_pt2(model, (torch.randn(2, 9, 3),))
    x = torch.randn(4, 30, 3)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), model(x), rtol=1e-6, atol=1e-7)


def _onnx_ops(path):
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


@pytest.mark.parametrize("bidirectional,with_lengths", CASES)
def test_onnx_export_is_a_scan_that_onnxruntime_runs_at_any_length(tmp_path, bidirectional, with_lengths):
    pytest.importorskip("onnxruntime")
    model = Stack(bidirectional=bidirectional).eval()
    path = export_onnx(model, _inputs(3, 20, with_lengths), tmp_path / "m.onnx")
    ops = _onnx_ops(path)
    assert ops.count("Scan") == (4 if bidirectional else 2)
    assert len(ops) < 120  # the recurrence is not unrolled
    for B, N in ((5, 10), (2, 1000)):
        inputs = _inputs(B, N, with_lengths, seed=N)
        got = run_onnx(path, inputs)
        with torch.no_grad():
            expected = model(*inputs)
        for a, b in zip(got, expected):
            assert rel_err(torch.from_numpy(a), b) < 1e-5


def test_onnx_of_a_float64_model_matches_to_rounding(tmp_path):
    """In float64 nothing but the order of operations differs: the Scan body is the recurrence itself."""
    pytest.importorskip("onnxruntime")
    model = Stack(bidirectional=True).double().eval()
    example = _inputs(2, 12, True)
    path = export_onnx(model, (example[0].double(), example[1]), tmp_path / "m.onnx")
    inputs = _inputs(4, 300, True, seed=3)
    inputs = (inputs[0].double(), inputs[1])
    with torch.no_grad():
        expected = model(*inputs)
    for a, b in zip(run_onnx(path, inputs), expected):
        assert rel_err(torch.from_numpy(a), b) < 1e-12


def _long_sequence_model():
    """The long-sequence case of docs/accuracy.md (EigenWorms: dt = 0.0343, alpha = 0) in a task model."""
    return SequenceModel(3, 4, 16, 2, 0.0343, 0.0, 0.0, "last").eval()


@pytest.mark.slow
@pytest.mark.parametrize("with_lengths", [False, True])
def test_onnx_matches_pytorch_after_20000_steps(tmp_path, with_lengths):
    pytest.importorskip("onnxruntime")
    model = _long_sequence_model()
    path = export_onnx(model, _inputs(2, 16, with_lengths), tmp_path / "m.onnx")
    inputs = _inputs(4, 20_000, with_lengths, seed=7)
    (got,) = run_onnx(path, inputs)
    with torch.no_grad():
        expected = model(*inputs)
    assert rel_err(torch.from_numpy(got), expected) < 1e-5


def test_verify_reports_the_largest_difference(tmp_path):
    model = Stack().eval()
    path = tmp_path / "m.pt2"
    export_pt2(model, _inputs(3, 20, False), path)
    assert verify(path, model, _inputs(2, 33, False)) < 1e-6
    with torch.no_grad():
        model.rnn.c_l0.add_(1.0)  # the file keeps the old weights
    assert verify(path, model, _inputs(2, 33, False)) > 1e-4


def test_export_errors(tmp_path):
    model = Stack(dropout=0.2)
    with pytest.raises(ValueError, match="training mode.*model.eval\\(\\)"):
        export_pt2(model, _inputs(2, 5, False))
    lean = Stack(memory="lean").eval()
    with pytest.raises(ValueError, match="memory='lean'.*rnn.memory = 'standard'"):
        export_onnx(lean, _inputs(2, 5, False), tmp_path / "m.onnx")
    lean.rnn.memory = "standard"
    check_exportable(lean)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        check_exportable(lambda x: x)
    with pytest.raises(ValueError, match="format.*onnx.*pt2"):
        export_run(tmp_path, "tflite")
    with pytest.raises(RunFileError, match="no best.pt"):
        export_run(tmp_path, "onnx")
    with pytest.raises(RunFileError, match="not a run directory"):
        export_run(tmp_path / "missing", "pt2")


@pytest.mark.parametrize("bidirectional", [False, True])
def test_export_run_verifies_on_the_runs_validation_batch(tmp_path, quiet_run, bidirectional):
    pytest.importorskip("onnxruntime")
    cfg = dict(hidden_size=6, num_layers=2, epochs=1, batch_size=8, eval_batch_size=16, dropout=0.1,
               backend="reference", bidirectional=bidirectional)  # fmt: skip
    run = tmp_path / "run"
    quiet_run(get_task("adding"), cfg, {"T": 10, "n_train": 32, "n_valid": 16, "n_test": 16}, run)
    for fmt in ("onnx", "pt2"):
        path, diff = export_run(run, fmt)
        assert path == run / f"model.{fmt}" and path.exists()
        assert diff < 1e-5
    path, _ = export_run(run, "onnx", tmp_path / "elsewhere.onnx")
    assert path.exists()
    with pytest.raises(ValueError, match="must end in .pt2"):
        export_run(run, "pt2", tmp_path / "model.onnx")


def test_cli_export_command(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from helpers import tiny_train_argv

    from unicornn.cli import main

    assert main(tiny_train_argv(tmp_path, "--quiet")) == 0
    run = tmp_path / "adding" / "seed-0"
    capsys.readouterr()
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    out = capsys.readouterr().out
    assert "m.onnx" in out and "largest difference from PyTorch" in out
    assert main(["export", str(run), "--format", "pt2"]) == 0 and (run / "model.pt2").exists()
    assert main(["export", str(tmp_path), "--format", "pt2"]) == 2
    assert "no best.pt" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "pt2", "--out", str(tmp_path / "m.onnx")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(run), "--format", "tflite"])
    assert exit_info.value.code == 2


def test_missing_onnx_packages_name_the_extra(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"missing: onnxscript.*unicornn\[export\]"):
        export_onnx(Stack().eval(), _inputs(2, 5, False), tmp_path / "m.onnx")


def test_a_torch_without_the_exporters_node_helper_is_named(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch.onnx._internal.exporter._torchlib.ops.hop", None)  # import fails
    with pytest.raises(ImportError, match=rf"torch {re.escape(torch.__version__)} does not have.*export_pt2"):
        export_onnx(Stack().eval(), _inputs(2, 5, False), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_the_padded_op_of_an_exported_program_refuses_a_gradient():
    x = torch.randn(5, 2, 3, requires_grad=True)
    w, c, y0, z0 = torch.rand(3), torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 3)
    y, _, _ = torch.ops.unicornn.scan_padded(
        x, w, c, 0.1, 1.0, y0, z0, None, torch.tensor([5, 3]), "reference"
    )
    with pytest.raises(RuntimeError, match="inference form of a padded batch"):
        y.sum().backward()
