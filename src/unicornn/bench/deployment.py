"""Inference speed of an exported model: onnxruntime on the ONNX file against the package's own kernel.

The model is a batch-first UnICORNN stack with a linear head on the top layer's final state (a sequence
classifier, as the task models). It is exported with :func:`unicornn.export.export_onnx` (the recurrence as
one ONNX ``Scan`` per layer, computed in float64) and run by onnxruntime's CPU provider with its default
session options, beside the eager model on the package's fused CPU kernel, under
:func:`torch.inference_mode`, in one process with the default thread count. Rounds are interleaved; each
figure is the median over rounds, the ratio the median of per-round ratios. The outputs' largest relative
difference is recorded too.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import UnICORNN
from ..plotting import write_outputs
from .common import format_load, fused_backend, load_average, machine_info, torch_threads

__all__ = ["run_onnx_speed", "format_onnx_table", "write_onnx_speed"]


class _Classifier(nn.Module):
    def __init__(self, input_size: int, hidden: int, layers: int, classes: int, backend: str) -> None:
        super().__init__()
        self.rnn = UnICORNN(input_size, hidden, layers, batch_first=True, backend=backend)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        _, (y_n, _) = self.rnn(x, return_sequence=False)
        return self.head(y_n[-1])


def run_onnx_speed(
    N: int = 1000, batch: int = 32, hidden: int = 128, layers: int = 2, input_size: int = 1, rounds: int = 5,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Time one forward pass of (batch, N, input_size) through onnxruntime and through the package's kernel.

    Returns a JSON-ready dict: ``settings``, ``machine``, ``rows`` (runtime, median seconds, ratio to the
    package's kernel), ``max_rel_diff`` of the outputs, load averages. ``threads``: torch threads during the
    run (restored after; onnxruntime keeps its own default).
    """
    with torch_threads(threads):
        return _measure(N, batch, hidden, layers, input_size, rounds, seed)


def _measure(N, batch, hidden, layers, input_size, rounds, seed):
    import onnxruntime

    from ..export import export_onnx

    torch.manual_seed(seed)
    backend = fused_backend(torch.device("cpu"))
    model = _Classifier(input_size, hidden, layers, 10, backend).eval()
    x = torch.randn(batch, N, input_size)
    load_before = load_average()
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(model, (x[:2, : min(N, 16)],), Path(tmp) / "model.onnx")
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x.numpy()}
    runs = {f"unicornn ({backend} kernel)": lambda: model(x), "onnxruntime": lambda: session.run(None, feed)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        expected = model(x)
        got = torch.from_numpy(session.run(None, feed)[0])
        for _ in range(rounds):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    base = times[f"unicornn ({backend} kernel)"]
    rows = [{"runtime": name, "median_s": statistics.median(ts),
             "ratio_to_package": statistics.median(t / b for t, b in zip(ts, base))} for name, ts in times.items()]  # fmt: skip
    return {
        "settings": dict(
            N=N,
            batch=batch,
            hidden=hidden,
            layers=layers,
            input_size=input_size,
            rounds=rounds,
            unicornn_backend=backend,
            onnxruntime=onnxruntime.__version__,
            device="cpu",
        ),  # fmt: skip
        "machine": machine_info("cpu"),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "rows": rows,
        "max_rel_diff": float((got - expected).abs().max() / expected.abs().max()),
    }


def format_onnx_table(result: dict[str, Any]) -> str:
    """A Markdown table: median milliseconds per forward pass and the ratio to the package's kernel."""
    s = result["settings"]
    lines = [
        f"inference, B={s['batch']}, N={s['N']}, hidden={s['hidden']}, layers={s['layers']}, input width "
        f"{s['input_size']}, CPU {result['machine'].get('cpu')} ({result['machine'].get('torch_threads')} torch "
        f"threads), onnxruntime {s['onnxruntime']}; outputs differ by {result['max_rel_diff']:.1e} (relative); "
        f"load average (1, 5, 15 min) {format_load(result.get('load_average_before'))} -> "
        f"{format_load(result.get('load_average_after'))}",
        "",
        "| runtime | ms per forward | x package kernel |",
        "| --- | --- | --- |",
    ]
    for row in result["rows"]:
        lines.append(f"| {row['runtime']} | {row['median_s'] * 1e3:.1f} | {row['ratio_to_package']:.2f} |")
    return "\n".join(lines)


def write_onnx_speed(result: dict[str, Any], out_dir, stem: str = "onnx_speed") -> dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.txt`` under ``out_dir``; returns the paths."""
    return write_outputs(result, out_dir, stem, format_onnx_table(result), None)
