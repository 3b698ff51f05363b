"""Deployment: export a model that contains :class:`~unicornn.UnICORNN` to a ``torch.export`` program (``.pt2``)
or to ONNX, check the file against PyTorch, and export a trained run's best model.

* :func:`export_pt2` -- :func:`torch.export.export` with a dynamic batch size and sequence length. The
  recurrence stays one ``unicornn::scan`` node per layer and direction (``unicornn::scan_padded`` for a
  batch with lengths) that runs the package's fused kernels: loading the file needs this package imported.
* :func:`export_onnx` -- :func:`torch.onnx.export` (``dynamo=True``) with :func:`onnx_translations`, which
  writes each scan op as one ONNX ``Scan`` over time (the graph's size does not grow with the sequence
  length). The recurrence runs in float64 inside the ``Scan`` (the fused CPU kernels also hold the state in
  float64), its outputs are cast back to the input's dtype. Running the file needs onnxruntime only.
* :func:`verify` -- the largest absolute difference between a file's outputs and the model's.
* :func:`export_run` -- a run directory's ``best.pt``, rebuilt and exported with its task's input shape, then
  verified on the run's own first validation batch.

The input tensors of ``example`` are taken as batch first, (B, N, ...), as the task models take them, and
1-D tensors (lengths) as (B,); pass ``dynamic_shapes`` for other layouts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .modules import UnICORNN

__all__ = [
    "FORMATS",
    "check_exportable",
    "default_dynamic_shapes",
    "export_onnx",
    "export_pt2",
    "export_run",
    "onnx_translations",
    "verify",
]

#: Export formats: ``onnx`` (any ONNX runtime) and ``pt2`` (a torch.export program with the fused kernels).
FORMATS = ("onnx", "pt2")


def check_exportable(model: nn.Module) -> None:
    """Raise ``ValueError`` where an export cannot be what the model computes: a model in training mode
    (over-time dropout draws its masks per call) or a ``memory="lean"`` stack (its chunked custom autograd
    function cannot be traced)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError(
            "model is in training mode: an exported graph is for inference (dropout would be baked in or "
            "dropped); call model.eval() before exporting"
        )
    for name, m in model.named_modules():
        if isinstance(m, UnICORNN) and m.memory == "lean":
            raise ValueError(
                f"{name or 'the model'} is a UnICORNN with memory='lean', whose chunked recomputation cannot "
                f"be exported; set {name or 'model'}.memory = 'standard' first (same weights and results in "
                "inference; lean only saves training memory)"
            )


def default_dynamic_shapes(example: Sequence[Any]) -> tuple:
    """Dynamic dimensions for ``example``: (B, N, ...) for tensors of two or more dimensions, (B,) for 1-D
    tensors (lengths), static for anything else. B >= 1 and N >= 2 (a length-1 example would fix N)."""
    batch = torch.export.Dim("batch", min=1)
    length = torch.export.Dim("length", min=2)
    shapes = []
    for t in example:
        if isinstance(t, Tensor) and t.dim() >= 2:
            shapes.append({0: batch, 1: length})
        elif isinstance(t, Tensor) and t.dim() == 1:
            shapes.append({0: batch})
        else:
            shapes.append(None)
    return tuple(shapes)


def _example(example) -> tuple:
    if isinstance(example, Tensor):
        return (example,)
    if not isinstance(example, (tuple, list)) or not example:
        raise TypeError("example must be a tensor or a non-empty tuple of the model's positional arguments")
    return tuple(example)


def _traceable(example: tuple) -> tuple:
    """``example`` widened where a size would be fixed by tracing (torch.export specialises sizes 0 and 1):
    a batch of one repeated to two, a single step repeated to two steps. Only the shapes matter to tracing;
    the exported program takes any batch size and length."""
    out = []
    for t in example:
        if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == 1:
            t = t.repeat(2, *([1] * (t.dim() - 1)))
        if isinstance(t, Tensor) and t.dim() >= 2 and t.shape[1] == 1:
            t = t.repeat(1, 2, *([1] * (t.dim() - 2)))
        out.append(t)
    return tuple(out)


def export_pt2(model: nn.Module, example, path=None, *, dynamic_shapes=None) -> torch.export.ExportedProgram:
    """``torch.export.export`` of ``model`` on ``example`` (a tensor or a tuple of positional arguments) with
    a dynamic batch size and sequence length (:func:`default_dynamic_shapes`); saved to ``path`` (``.pt2``)
    when given. Returns the ExportedProgram."""
    check_exportable(model)
    example = _example(example)
    if dynamic_shapes is None:
        example = _traceable(example)
    shapes = default_dynamic_shapes(example) if dynamic_shapes is None else dynamic_shapes
    with torch.no_grad():
        program = torch.export.export(model, example, dynamic_shapes=shapes)
    if path is not None:
        torch.export.save(program, os.fspath(path))
    return program


def export_onnx(
    model: nn.Module, example, path, *, dynamic_shapes=None, opset_version: int | None = None
) -> Path:
    """``torch.onnx.export(..., dynamo=True)`` of ``model`` on ``example`` to ``path`` (one self-contained
    file), with a dynamic batch size and sequence length and every UnICORNN recurrence as an ONNX ``Scan``.
    Returns the path."""
    check_exportable(model)
    _require("onnx", "onnxscript")
    _node_builder()
    example = _example(example)
    if dynamic_shapes is None:
        example = _traceable(example)
    shapes = default_dynamic_shapes(example) if dynamic_shapes is None else dynamic_shapes
    path = Path(path)
    with torch.no_grad(), _quiet_onnx_exporter():
        program = torch.onnx.export(
            model,
            example,
            dynamo=True,
            dynamic_shapes=shapes,
            custom_translation_table=onnx_translations(),
            opset_version=opset_version,
            optimize=True,
            verbose=False,
        )
    program.save(os.fspath(path), external_data=False)
    return path


def _node_builder():
    """The ONNX exporter's helper that adds one node with several outputs (``call_op``), for the ``Scan``:
    onnxscript's ``op.Scan`` gives one output under torch's exporter. It is internal to torch, hence this
    check up front: ImportError naming the torch version when this torch has no such helper."""
    try:
        from torch.onnx._internal.exporter._torchlib.ops.hop import call_op
    except ImportError as err:
        raise ImportError(
            f"ONNX export writes the recurrence as an ONNX Scan with a helper of torch's ONNX exporter that "
            f"torch {torch.__version__} does not have ({err}); the export is tested with torch 2.13: "
            "upgrade torch, or export a torch.export program with export_pt2"
        ) from err
    return call_op


def _require(*packages: str) -> None:
    """ImportError naming the missing packages of the ONNX path and the extra that installs them."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ImportError(
            f"ONNX export and checks need {', '.join(packages)} (missing: {', '.join(missing)}); install them "
            'with pip install "unicornn[export]"'
        )


@contextlib.contextmanager
def _quiet_onnx_exporter():
    """The ONNX exporter's progress lines and notes about optional packages (torchvision) at ERROR level."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecations inside the exporter's own code
            yield
    finally:
        logger.setLevel(level)


def verify(path, model: nn.Module, inputs) -> float:
    """The largest absolute difference between the outputs of the exported file ``path`` (``.onnx`` through
    onnxruntime, ``.pt2`` through :func:`torch.export.load`) and ``model``'s on ``inputs`` (a tensor or a
    tuple of positional arguments)."""
    inputs = _example(inputs)
    with torch.no_grad():
        expected = model(*inputs)
    expected = [expected] if isinstance(expected, Tensor) else list(expected)
    path = Path(path)
    if path.suffix == ".onnx":
        got = [torch.from_numpy(a) for a in run_onnx(path, inputs)]
    else:
        with torch.no_grad():
            got = torch.export.load(os.fspath(path)).module()(*inputs)
        got = [got] if isinstance(got, Tensor) else list(got)
    if len(got) != len(expected):
        raise RuntimeError(f"{path} gives {len(got)} outputs, the model {len(expected)}")
    return max(
        float((g.double() - e.double()).abs().max()) if e.numel() else 0.0 for g, e in zip(got, expected)
    )


def run_onnx(path, inputs: Sequence[Tensor]) -> list:
    """Run the ONNX file ``path`` on ``inputs`` with onnxruntime (CPU); returns its outputs (NumPy arrays)."""
    _require("onnxruntime")
    import onnxruntime

    session = onnxruntime.InferenceSession(os.fspath(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {n: t.detach().cpu().numpy() for n, t in zip(names, inputs)})


# --------------------------------------------------------------------------------------------------
# ONNX: the scan ops as a Scan over time
# --------------------------------------------------------------------------------------------------


def _step_graph(alpha: float, masked: bool):
    """The body of the ONNX ``Scan``: one step of the recurrence in float64.

    State in: y, z (B, M), w, s (M,); scan input: x_n (B, M) (the projection plus bias), and with ``masked``
    m_n (B, 1) (step n is within the sequence's length). A masked step keeps the state and outputs zeros,
    so that each sequence's final state is the one at its own last step.
    """
    import onnx_ir as ir
    from onnx import TensorProto, helper

    def value(name, dtype=TensorProto.DOUBLE):
        return helper.make_tensor_value_info(name, dtype, None)

    def node(op, inputs, output, **attrs):
        return helper.make_node(op, inputs, [output], **attrs)

    def constant(name, number):
        return node("Constant", [], name, value=helper.make_tensor(name, TensorProto.DOUBLE, [], [number]))

    inputs = [value("y"), value("z"), value("w"), value("s"), value("x")]
    nodes = [node("Mul", ["w", "y"], "wy"), node("Add", ["wy", "x"], "a"), node("Tanh", ["a"], "force")]
    if alpha:  # force = tanh(w y + x) + alpha y
        nodes += [
            constant("alpha", alpha),
            node("Mul", ["alpha", "y"], "ay"),
            node("Add", ["force", "ay"], "f"),
        ]
    f = "f" if alpha else "force"
    nodes += [  # z' = z - s force; y' = y + s z'
        node("Mul", ["s", f], "sf"),
        node("Sub", ["z", "sf"], "z1"),
        node("Mul", ["s", "z1"], "sz"),
        node("Add", ["y", "sz"], "y1"),
    ]
    if masked:
        inputs.append(value("m", TensorProto.BOOL))
        nodes += [
            node("Where", ["m", "y1", "y"], "y_out"),
            node("Where", ["m", "z1", "z"], "z_out"),
            constant("zero", 0.0),
            node("Where", ["m", "y1", "zero"], "y_n"),
        ]
    else:
        nodes += [
            node("Identity", ["y1"], "y_out"),
            node("Identity", ["z1"], "z_out"),
            node("Identity", ["y1"], "y_n"),
        ]
    nodes += [node("Identity", ["w"], "w_out"), node("Identity", ["s"], "s_out")]
    outputs = [value(n) for n in ("y_out", "z_out", "w_out", "s_out", "y_n")]
    return ir.serde.deserialize_graph(helper.make_graph(nodes, "unicornn_step", inputs, outputs))


def _onnx_scan(x, weight_hh, c, dt, alpha, y0, z0, bias, mask):
    """The recurrence as one ONNX Scan (see :func:`_step_graph`); returns y (N, B, M), y_N, z_N (B, M)."""
    from onnx import TensorProto, helper
    from onnxscript import opset18 as op

    call_op = _node_builder()
    f64 = TensorProto.DOUBLE
    xd = op.Cast(x, to=f64)
    if bias is not None:
        xd = op.Add(xd, op.Cast(bias, to=f64))
    dt_const = op.Constant(value=helper.make_tensor("dt", f64, [], [float(dt)]))
    s = op.Mul(op.Sigmoid(op.Cast(c, to=f64)), dt_const)
    scanned = [xd] if mask is None else [xd, mask]
    yN, zN, _, _, y = call_op(
        "Scan",
        op.Cast(y0, to=f64),
        op.Cast(z0, to=f64),
        op.Cast(weight_hh, to=f64),
        s,
        *scanned,
        _num_outputs=5,
        body=_step_graph(float(alpha), mask is not None),
        num_scan_inputs=len(scanned),
    )
    return op.Cast(y, to=x.dtype.value), op.Cast(yN, to=y0.dtype.value), op.Cast(zN, to=z0.dtype.value)


def _scan_to_onnx(x, weight_hh, c, dt: float, alpha: float, y0, z0, bias=None, kernels: str = ""):
    return _onnx_scan(x, weight_hh, c, dt, alpha, y0, z0, bias, None)


def _scan_padded_to_onnx(x, weight_hh, c, dt: float, alpha: float, y0, z0, bias, lengths, backend: str = ""):
    from onnxscript import opset18 as op

    steps = op.Range(
        op.Constant(value_int=0), op.Gather(op.Shape(x), op.Constant(value_int=0)), op.Constant(value_int=1)
    )
    valid = op.Less(
        op.Unsqueeze(steps, op.Constant(value_ints=[1])),
        op.Unsqueeze(op.Cast(lengths, to=7), op.Constant(value_ints=[0])),
    )
    mask = op.Unsqueeze(valid, op.Constant(value_ints=[2]))  # (N, B, 1): step n < length
    return _onnx_scan(x, weight_hh, c, dt, alpha, y0, z0, bias, mask)


def onnx_translations() -> dict:
    """``custom_translation_table`` for :func:`torch.onnx.export`: the ``unicornn::scan`` and
    ``unicornn::scan_padded`` ops as an ONNX ``Scan`` over time."""
    import torch.ops  # noqa: F401  (the ops are registered by importing unicornn)

    return {
        torch.ops.unicornn.scan.default: _scan_to_onnx,
        torch.ops.unicornn.scan_padded.default: _scan_padded_to_onnx,
    }


# --------------------------------------------------------------------------------------------------
# A trained run
# --------------------------------------------------------------------------------------------------


def export_run(run_dir, fmt: str, out=None, *, data_dir=None, max_batch: int = 64) -> tuple[Path, float]:
    """Export the best model of the run in ``run_dir`` to ``fmt`` (``"onnx"`` or ``"pt2"``) and verify it.

    The model is rebuilt from the run's settings (in inference form: ``memory="standard"``, the fused
    backend), loaded from ``best.pt``, exported with the shape of its task's inputs and a dynamic batch size
    and sequence length, and run on the first batch (at most ``max_batch`` sequences) of the run's own
    validation split, against PyTorch. ``out``: the file (default ``RUN/model.onnx`` or ``RUN/model.pt2``).
    Returns the file and the largest absolute difference of its outputs from PyTorch's.
    """
    from .validation import check_choice

    check_choice("format", fmt, FORMATS)
    model, batch = load_run_model(run_dir, data_dir=data_dir, max_batch=max_batch)
    path = Path(out) if out is not None else Path(run_dir) / f"model.{fmt}"
    if path.suffix != f".{fmt}":
        raise ValueError(f"the output file of format {fmt!r} must end in .{fmt}, got {path}")
    if fmt == "onnx":
        export_onnx(model, batch, path)
    else:
        export_pt2(model, batch, path)
    return path, verify(path, model, batch)


def load_run_model(run_dir, *, data_dir=None, max_batch: int = 64) -> tuple[nn.Module, tuple]:
    """The best model of a run directory, in evaluation mode for inference (``memory="standard"``, backend
    ``"auto"``), and its inputs of the first validation batch (``(x,)`` or ``(x, lengths)``, at most
    ``max_batch`` sequences). Raises :class:`~unicornn.training.errors.RunFileError` for a directory without
    a best model."""
    from .training.distributed import DistContext
    from .training.errors import RunFileError
    from .training.loading import load_run
    from .training.splits import eval_loader, unpack

    if not Path(run_dir).is_dir():
        raise RunFileError(f"{run_dir} is not a run directory")
    run = load_run(run_dir, data_dir, "cpu", memory="standard", backend="auto")
    model = run.model.eval()
    device = torch.device("cpu")
    batch = min(max_batch, run.settings["eval_batch_size"])
    loader = eval_loader(run.splits.get("valid"), batch, DistContext(device=device), 0, run.splits)
    x, _, lengths = unpack(next(iter(loader)), device)
    return model, ((x,) if lengths is None else (x, lengths))
