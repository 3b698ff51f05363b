"""Streaming inference: the cost of advancing a recurrent stack by one step, and chunked streaming throughput.

* **Per-step latency** -- :meth:`unicornn.UnICORNN.step` against stacks of :class:`torch.nn.LSTMCell` and
  :class:`torch.nn.GRUCell` stepped the same way (one call per layer, the state carried), and against one-step
  chunks through ``forward`` (UnICORNN on its fused backend, :class:`torch.nn.LSTM`). Batch 1 by default: a
  model serving one stream.
* **Chunked throughput** -- a stream of ``stream_length`` steps fed in chunks of ``chunk_sizes`` steps through
  ``forward`` with the state carried (UnICORNN on its fused backend, :class:`torch.nn.LSTM`), in steps per
  second.

Everything runs in one process under :func:`torch.inference_mode` with the default thread count. The rounds
are interleaved (round r times every model once); a model's figure is the median over rounds, its ratio to
``lstmcell`` (latency) or to ``lstm`` (throughput) the median of the per-round ratios. The 1-minute load
average is recorded before and after.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import UnICORNN
from ..plotting import write_outputs
from .common import format_load, fused_backend, load_average, machine_info, torch_threads

__all__ = ["run_streaming", "format_streaming_table", "write_streaming"]


def _cell_stack(cls, input_size: int, hidden: int, layers: int) -> nn.ModuleList:
    return nn.ModuleList([cls(input_size if k == 0 else hidden, hidden) for k in range(layers)])


def _steppers(input_size: int, hidden: int, layers: int, batch: int) -> dict[str, Callable[[int], None]]:
    """name -> ``run(n)``: n consecutive steps of one stream (state carried), each on fresh-free fixed input."""
    u = torch.randn(batch, input_size)
    backend = fused_backend(torch.device("cpu"))
    rnn = UnICORNN(input_size, hidden, layers, backend=backend).eval()
    lstm_cells = _cell_stack(nn.LSTMCell, input_size, hidden, layers).eval()
    gru_cells = _cell_stack(nn.GRUCell, input_size, hidden, layers).eval()
    lstm = nn.LSTM(input_size, hidden, layers).eval()

    def unicornn_step(n):
        state = None
        for _ in range(n):
            _, state = rnn.step(u, state)

    def unicornn_forward(n):
        state, x = None, u[None]
        for _ in range(n):
            _, state = rnn(x, state)

    def lstmcell(n):
        hs = [None] * layers
        for _ in range(n):
            inp = u
            for k, cell in enumerate(lstm_cells):
                hs[k] = cell(inp, hs[k])
                inp = hs[k][0]

    def grucell(n):
        hs = [None] * layers
        for _ in range(n):
            inp = u
            for k, cell in enumerate(gru_cells):
                hs[k] = cell(inp, hs[k])
                inp = hs[k]

    def lstm_forward(n):
        state, x = None, u[None]
        for _ in range(n):
            _, state = lstm(x, state)

    return {
        "unicornn_step": unicornn_step,
        "lstmcell": lstmcell,
        "grucell": grucell,
        f"unicornn_forward_{backend}": unicornn_forward,
        "lstm_forward": lstm_forward,
    }


def _chunked(input_size: int, hidden: int, layers: int, batch: int, stream: torch.Tensor) -> dict:
    backend = fused_backend(torch.device("cpu"))
    models = {
        f"unicornn_{backend}": UnICORNN(input_size, hidden, layers, backend=backend).eval(),
        "lstm": nn.LSTM(input_size, hidden, layers).eval(),
    }

    def feeder(model):
        def run(chunk: int) -> None:
            state = None
            for t in range(0, stream.shape[0], chunk):
                _, state = model(stream[t : t + chunk], state)

        return run

    return {name: feeder(m) for name, m in models.items()}


def _interleaved(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds of every ``fn()`` per round, after one untimed round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r:
                times[name].append(time.perf_counter() - start)
    return times


def _paired(times: Sequence[float], base: Sequence[float]) -> float:
    return statistics.median(t / b for t, b in zip(times, base))


def run_streaming(
    hidden: int = 128,
    layers: int = 2,
    input_size: int | None = None,
    batch: int = 1,
    steps: int = 2000,
    chunk_sizes: Sequence[int] = (1, 16, 256),
    stream_length: int = 4096,
    rounds: int = 7,
    seed: int = 0,
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure per-step latency and chunked streaming throughput on the CPU (see the module notes).

    Args:
        hidden, layers: every model's width and depth. input_size: features per step (default ``hidden``).
        batch: streams advanced together (1: one stream).
        steps: steps per timed latency run. chunk_sizes, stream_length: the throughput runs.
        rounds: interleaved timed rounds (after one untimed).
        threads: torch threads during the run (restored after); default torch's own choice.

    Returns:
        A JSON-ready dict: ``settings``, ``machine``, ``latency`` rows (model, median microseconds per step,
        ratio to ``lstmcell``), ``throughput`` rows (model, chunk, median steps per second, ratio to
        ``lstm``), load averages.
    """
    with torch_threads(threads):
        return _measure(hidden, layers, hidden if input_size is None else input_size, batch, steps, chunk_sizes,
                        stream_length, rounds, seed)  # fmt: skip


def _measure(hidden, layers, input_size, batch, steps, chunk_sizes, stream_length, rounds, seed):
    torch.manual_seed(seed)
    load_before = load_average()
    latency, throughput = [], []
    steppers = _steppers(input_size, hidden, layers, batch)  # built as a user builds them, run for inference
    stream = torch.randn(stream_length, batch, input_size)
    feeders = _chunked(input_size, hidden, layers, batch, stream)
    with torch.inference_mode():
        times = _interleaved({name: (lambda f=f: f(steps)) for name, f in steppers.items()}, rounds)
        for name, ts in times.items():
            latency.append({"model": name, "us_per_step": statistics.median(ts) / steps * 1e6,
                            "ratio_to_lstmcell": _paired(ts, times["lstmcell"])})  # fmt: skip
        for chunk in chunk_sizes:
            times = _interleaved({name: (lambda f=f, c=chunk: f(c)) for name, f in feeders.items()}, rounds)
            for name, ts in times.items():
                throughput.append({"model": name, "chunk": chunk, "steps_per_s": stream_length / statistics.median(ts),
                                   "ratio_to_lstm": _paired(times["lstm"], ts)})  # fmt: skip
    return {
        "settings": dict(
            hidden=hidden,
            layers=layers,
            input_size=input_size,
            batch=batch,
            steps=steps,
            chunk_sizes=list(chunk_sizes),
            stream_length=stream_length,
            rounds=rounds,
            unicornn_backend=fused_backend(torch.device("cpu")),
            device="cpu",
        ),  # fmt: skip
        "machine": machine_info("cpu"),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "latency": latency,
        "throughput": throughput,
    }


def format_streaming_table(result: dict[str, Any]) -> str:
    """Two Markdown tables: per-step latency (us, and x the lstmcell stack) and chunked throughput (steps/s,
    and x nn.LSTM)."""
    s = result["settings"]
    lines = [
        f"streaming on {result['machine'].get('cpu')} ({result['machine'].get('torch_threads')} torch threads), "
        f"B={s['batch']}, hidden={s['hidden']}, layers={s['layers']}, input width {s['input_size']}; "
        f"load average (1, 5, 15 min) {format_load(result.get('load_average_before'))} -> "
        f"{format_load(result.get('load_average_after'))}",
        "",
        "| one step of the stack | us per step | x lstmcell |",
        "| --- | --- | --- |",
    ]
    for row in result["latency"]:
        lines.append(f"| {row['model']} | {row['us_per_step']:.1f} | {row['ratio_to_lstmcell']:.2f} |")
    chunks = s["chunk_sizes"]
    names = list(dict.fromkeys(r["model"] for r in result["throughput"]))
    lines += [
        "",
        f"| chunked stream of {s['stream_length']} steps, steps/s (x lstm) | "
        + " | ".join(f"chunk {c}" for c in chunks)
        + " |",
        "| --- |" + " --- |" * len(chunks),
    ]
    for name in names:
        cells = []
        for c in chunks:
            row = next(r for r in result["throughput"] if r["model"] == name and r["chunk"] == c)
            cells.append(f"{row['steps_per_s']:,.0f} ({row['ratio_to_lstm']:.2f})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_streaming(result: dict[str, Any], out_dir, stem: str = "streaming") -> dict[str, Path]:
    """Write ``<stem>.json`` and ``<stem>.txt`` under ``out_dir``; returns the paths."""
    return write_outputs(result, out_dir, stem, format_streaming_table(result), None)
