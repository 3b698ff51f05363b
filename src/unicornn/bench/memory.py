"""Peak training memory against sequence length: UnICORNN standard and lean against an LSTM (Sec. 2.3).

One training step (forward, a cross-entropy loss on the top layer's last state, backward) of

* ``unicornn_standard``: :class:`unicornn.UnICORNN`, ``memory="standard"`` (autograd keeps every layer's
  sequences: O(L N B M), as backpropagation through time);
* ``unicornn_lean``: ``memory="lean"`` (anchors every ``checkpoint_every`` steps, O(N B d + L B M) besides
  one chunk), reading only ``y_N`` (``return_sequence=False``);
* ``lstm``: :class:`torch.nn.LSTM` of the same size.

Measured as the user's own process sees it:

* CPU: every (model, N) point runs in a fresh Python process started with the caller's interpreter and
  environment unchanged (no allocator settings); the point's memory is the process's peak resident memory
  (``ru_maxrss``, read as ``VmHWM``) minus its resident memory after a warm-up step on a short sequence, with
  the model and the input already allocated. The peak is reset after the warm-up where Linux allows it
  (``/proc/self/clear_refs``; ``peak_reset`` in each row), since otherwise a transient peak of importing
  torch can exceed a short sequence's whole step. The input's own bytes are reported separately.
* CUDA: in this process, ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.

Time per step (median over ``repeats`` steps) is recorded too.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .common import fused_backend, load_average, machine_info, pyplot, write_outputs

__all__ = ["MODELS", "format_table", "measure_point", "plot_memory", "run_memory", "write_memory"]

MODELS = ("unicornn_standard", "unicornn_lean", "lstm")
#: the EigenWorms-like setting of the lean-mode benchmark: 3 layers, hidden 128, batch 16, 6 channels
DEFAULTS = {"batch": 16, "hidden": 128, "layers": 3, "input_size": 6, "dt": 0.0343, "alpha": 0.0}
CLASSES = 4


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> bool:
    """Reset this process's peak resident memory to its current value (Linux >= 4.0), so that the peak read
    afterwards belongs to what runs next rather than to imports or set-up; False where not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    """Peak resident memory: VmHWM where /proc has it (follows a reset), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _build(model: str, input_size, hidden, layers, dt, alpha, checkpoint_every, device):
    from .. import UnICORNN
    from ..baselines import LSTM

    if model == "lstm":
        rnn = LSTM(input_size, hidden, layers)
    else:
        memory = "lean" if model == "unicornn_lean" else "standard"
        rnn = UnICORNN(input_size, hidden, layers, dt=dt, alpha=alpha, memory=memory,
                       checkpoint_every=checkpoint_every, backend=fused_backend(device))  # fmt: skip
    return rnn.to(device), torch.nn.Linear(hidden, CLASSES).to(device)


def measure_point(
    model: str,
    N: int,
    device: str = "cpu",
    batch: int = DEFAULTS["batch"],
    hidden: int = DEFAULTS["hidden"],
    layers: int = DEFAULTS["layers"],
    input_size: int = DEFAULTS["input_size"],
    dt: float = DEFAULTS["dt"],
    alpha: float = DEFAULTS["alpha"],
    checkpoint_every: int = 2048,
    repeats: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Measure one (model, N) point in this process (on CPU, call it in a fresh process: the peak resident
    memory of a process never goes down). Returns a JSON-able dict with ``peak_bytes``."""
    if model not in MODELS:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    dev = torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rnn, head = _build(model, input_size, hidden, layers, dt, alpha, checkpoint_every, dev)
    x = torch.randn(N, batch, input_size, device=dev)
    target = torch.randint(0, CLASSES, (batch,), device=dev)

    def step(u):
        if model == "lstm":
            _, (h_n, _) = rnn(u)
        else:
            _, (h_n, _) = rnn(u, return_sequence=False)
        F.cross_entropy(head(h_n[-1]), target).backward()
        rnn.zero_grad(set_to_none=False)
        head.zero_grad(set_to_none=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step(x[: min(N, 64)])  # warm-up: compiles kernels, allocates gradients, without the long sequence's peak
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
    else:
        peak_reset = _reset_peak()
        before = _rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) - before
    else:
        peak = max(0, _peak_rss_bytes() - before)
    return {
        "model": model,
        "N": N,
        "peak_bytes": peak,
        "input_bytes": x.numel() * x.element_size(),
        "step_s": statistics.median(times),
        "runs_s": times,
        **({} if dev.type == "cuda" else {"peak_reset": peak_reset}),
    }


def _fresh_process(point: dict[str, Any]) -> dict[str, Any]:
    """Run :func:`measure_point` in a new interpreter (the caller's, environment unchanged)."""
    cmd = [sys.executable, "-m", "unicornn.bench._memory_worker", json.dumps(point)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return {"model": point["model"], "N": point["N"], "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_memory(
    lengths: Sequence[int] = (500, 1000, 2000, 4000),
    models: Sequence[str] = MODELS,
    device: str = "cpu",
    batch: int = DEFAULTS["batch"],
    hidden: int = DEFAULTS["hidden"],
    layers: int = DEFAULTS["layers"],
    input_size: int = DEFAULTS["input_size"],
    dt: float = DEFAULTS["dt"],
    alpha: float = DEFAULTS["alpha"],
    checkpoint_every: int = 2048,
    repeats: int = 1,
    threads: int | None = None,
) -> dict[str, Any]:
    """Peak training memory of every model at every length; see the module docstring.

    ``threads``: torch threads of each measurement (default: torch's own choice).

    Returns:
        dict: ``settings``, ``machine``, load averages, ``rows`` (per model and N: ``peak_bytes``,
        ``peak_MiB``, ``input_bytes``, ``step_s``; or ``error``).
    """
    for m in models:
        if m not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {m!r}")
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of ints >= 1, got {lengths!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    dev = torch.device(device)
    common = {"device": str(dev), "batch": batch, "hidden": hidden, "layers": layers, "input_size": input_size,
              "dt": dt, "alpha": alpha, "checkpoint_every": checkpoint_every, "repeats": repeats, "threads": threads}  # fmt: skip
    measure = (
        "peak resident memory minus resident memory after warm-up, fresh process per point"
        if dev.type == "cpu"
        else "max_memory_allocated minus memory allocated before the step"
    )
    result = {"benchmark": "memory", "settings": {**common, "lengths": list(lengths), "models": list(models),
              "measure": measure, "unicornn_backend": fused_backend(dev)},
              "machine": machine_info(str(dev)), "load_average_before": load_average(), "rows": []}  # fmt: skip
    for N in lengths:
        for m in models:
            point = {"model": m, "N": N, **common}
            if dev.type == "cpu":
                row = _fresh_process(point)
            else:
                row = measure_point(**{k: v for k, v in point.items() if k != "threads"})
                torch.cuda.empty_cache()
            if "peak_bytes" in row:
                row["peak_MiB"] = row["peak_bytes"] / 2**20
            result["rows"].append(row)
    result["load_average_after"] = load_average()
    return result


def _row(result, model, N):
    return next((r for r in result["rows"] if r["model"] == model and r["N"] == N), {})


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per N, peak MiB and step time per model, and the lean/standard ratio."""
    s = result["settings"]
    models = s["models"]
    lines = [
        f"peak training memory (MiB; {s['measure']}), B={s['batch']}, hidden={s['hidden']}, layers={s['layers']}, "
        f"input width {s['input_size']}, {s['device']}; load average {result.get('load_average_before')} -> "
        f"{result.get('load_average_after')}",
        "",
        "| N | " + " | ".join(f"{m} MiB (s/step)" for m in models) + " | lean / standard |",
        "| --- |" + " --- |" * (len(models) + 1),
    ]
    for N in s["lengths"]:
        cells = []
        for m in models:
            r = _row(result, m, N)
            cells.append(f"{r['peak_MiB']:.1f} ({r['step_s']:.2f})" if "peak_MiB" in r else "error")
        std, lean = _row(result, "unicornn_standard", N), _row(result, "unicornn_lean", N)
        ratio = "-"
        if std.get("peak_bytes") and "peak_bytes" in lean:
            ratio = f"{lean['peak_bytes'] / std['peak_bytes']:.3f}"
        lines.append(f"| {N} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines)


def plot_memory(result: dict[str, Any], path: Path) -> None:
    """Peak memory against N, log-log, one line per model."""
    plt = pyplot()
    s = result["settings"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m, marker in zip(s["models"], "osd^v"):
        pts = [(r["N"], r["peak_MiB"]) for r in result["rows"] if r["model"] == m and "peak_MiB" in r]
        if pts:
            ax.loglog(*zip(*pts), marker + "-", label=m)
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("peak training memory (MiB, input excluded)")
    ax.set_title(f"{s['layers']} layers, hidden {s['hidden']}, B={s['batch']}, {s['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_memory(result: dict[str, Any], out_dir, stem: str = "memory") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.txt`` and ``<stem>.png`` under ``out_dir``; returns the paths."""
    return write_outputs(result, out_dir, stem, format_table(result), plot_memory)
