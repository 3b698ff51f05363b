"""Peak training memory against sequence length: UnICORNN standard and lean against an LSTM (Sec. 2.3).

One training step (forward, a cross-entropy loss on the top layer's last state, backward) of

* ``unicornn_standard``: :class:`unicornn.UnICORNN`, ``memory="standard"`` (autograd keeps every layer's
  sequences: O(L N B M), as backpropagation through time);
* ``unicornn_lean``: ``memory="lean"`` (anchors every ``checkpoint_every`` steps, O(N B d + L B M) besides
  one chunk), reading only ``y_N`` (``return_sequence=False``);
* ``unicornn_lean_seq`` (on request): lean with ``return_sequence=True``, the same loss, so the ``N x B x M``
  output sequence and autograd's gradient for it are materialised;
* ``lstm``: :class:`torch.nn.LSTM` of the same size.

Measured as the user's own process sees it:

* CPU: every (model, N) point runs in a fresh Python process started with the caller's interpreter and
  environment, less any glibc allocator setting (``MALLOC_*``, ``GLIBC_TUNABLES``), thread-count variable and
  switch of the CPU backend (:func:`default_env`): a default process. The
  point's memory is the process's peak resident memory (``VmHWM``; ``ru_maxrss`` where there is no /proc)
  minus its resident memory after a warm-up step on a short sequence, with the model and the input already
  allocated. The peak is reset after the warm-up where Linux allows it (``/proc/self/clear_refs``;
  ``peak_reset`` in each row), since otherwise a transient peak of importing torch can exceed a short
  sequence's whole step. Optionally (``allocator_variant``) the lean mode is measured once more per N in a
  process with the given allocator variables, as a labelled extra row (``variant``), for comparison only.
* CUDA: in this process, ``torch.cuda.max_memory_allocated`` minus the memory allocated before the step.

Time per step (median over the full-length steps after the first, which pays first-touch page faults) is
recorded too, and the load average before and after.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..plotting import pyplot, save_figure, write_outputs
from .common import format_load, fused_backend, load_average, machine_info

__all__ = [
    "ALL_MEMORY_MODELS",
    "MEMORY_MODELS",
    "default_env",
    "format_table",
    "measure_in_fresh_process",
    "measure_point",
    "plot_memory",
    "run_memory",
    "summarize",
    "write_memory",
]

#: the default comparison
MEMORY_MODELS = ("unicornn_standard", "unicornn_lean", "lstm")
#: every model a point can measure
ALL_MEMORY_MODELS = ("unicornn_standard", "unicornn_lean", "unicornn_lean_seq", "lstm")
#: the EigenWorms-like setting of the lean-mode benchmark: 3 layers, hidden 128, batch 16, 6 channels
DEFAULTS = {"batch": 16, "hidden": 128, "layers": 3, "input_size": 6, "dt": 0.0343, "alpha": 0.0}
CLASSES = 4
WARMUP_STEPS = 64
_ALLOCATOR_VARS = ("MALLOC_", "GLIBC_TUNABLES")
#: Thread-count variables: a default process leaves the thread count to torch (or to ``threads``).
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _setting_vars() -> tuple[str, ...]:
    """The environment variables a default process has none of besides glibc's: the thread counts and the CPU
    backend's own switches (freed blocks kept, OpenMP team)."""
    try:
        from ..ops import cpu
    except ImportError:  # no numba: no CPU kernels to switch
        return _THREAD_VARS
    return (*_THREAD_VARS, cpu.KEEP_FREED_BLOCKS_ENV, cpu.OPENMP_TEAM_ENV)


def _is_setting(name: str) -> bool:
    return name.startswith(_ALLOCATOR_VARS) or name in _setting_vars()


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
    """Peak resident memory: VmHWM where /proc has it (follows a reset; ``ru_maxrss`` can carry the forking
    parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _check_model(model: str) -> None:
    if model not in ALL_MEMORY_MODELS:
        raise ValueError(f"model must be one of {ALL_MEMORY_MODELS}, got {model!r}")


def _build(model: str, input_size, hidden, layers, dt, alpha, checkpoint_every, device):
    from .. import UnICORNN
    from ..baselines import LSTM

    if model == "lstm":
        rnn = LSTM(input_size, hidden, layers)
    else:
        memory = "standard" if model == "unicornn_standard" else "lean"
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
    """Measure one (model, N) point in this process: a warm-up step on ``min(N, 64)`` steps, then ``repeats``
    full-length steps on an input of shape ``(N, batch, input_size)``.

    On CPU call it in a fresh process (:func:`measure_in_fresh_process`): the peak resident memory of a
    process never goes down. Returns a JSON-able dict: ``peak_bytes``, ``input_bytes``, ``output_bytes``
    (one ``N x batch x hidden`` float32 sequence), ``step_s``, ``runs_s``, ``backend``, ``allocator_env`` (the
    glibc allocator variables this process runs with), ``settings_env`` (thread-count variables and the CPU
    backend's switches it runs with) and ``threads_used`` (torch's thread count).
    """
    _check_model(model)
    dev = torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    rnn, head = _build(model, input_size, hidden, layers, dt, alpha, checkpoint_every, dev)
    x = torch.randn(N, batch, input_size, device=dev)
    target = torch.randint(0, CLASSES, (batch,), device=dev)
    return_sequence = model == "unicornn_lean_seq"

    def step(u):
        if model == "lstm":
            out, (h_n, _) = rnn(u)
        else:
            out, (h_n, _) = rnn(u, return_sequence=return_sequence)
        F.cross_entropy(head(h_n[-1]), target).backward()  # `out` stays alive, as in a user's step
        del out
        rnn.zero_grad(set_to_none=False)
        head.zero_grad(set_to_none=False)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    step(x[: min(N, WARMUP_STEPS)])  # compiles kernels, allocates gradients, without the long sequence's peak
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
        "output_bytes": N * batch * hidden * 4,
        "step_s": statistics.median(times[1:] if len(times) > 1 else times),
        "runs_s": times,
        "backend": getattr(rnn, "backend", "torch"),
        "allocator_env": {k: v for k, v in os.environ.items() if k.startswith(_ALLOCATOR_VARS)},
        "settings_env": {k: v for k, v in os.environ.items() if k in _setting_vars()},
        "threads_used": torch.get_num_threads(),
        **({} if dev.type == "cuda" else {"peak_reset": peak_reset}),
    }


def default_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment less glibc allocator settings (``MALLOC_*``, ``GLIBC_TUNABLES``), thread-count
    variables and the CPU backend's switches (``UNICORNN_KEEP_FREED_BLOCKS``, ``UNICORNN_CPU_OPENMP``), with
    this copy of :mod:`unicornn` first on ``PYTHONPATH``, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not _is_setting(k)}
    src = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    env.update(extra or {})
    return env


def measure_in_fresh_process(
    point: Mapping[str, Any], env_extra: Mapping[str, str] | None = None, timeout: float | None = None
) -> dict[str, Any]:
    """Run :func:`measure_point` (keyword arguments ``point``) in a new interpreter (this one's executable,
    :func:`default_env` plus ``env_extra``). Returns its row, or ``{"model", "N", "error"}`` on failure."""
    cmd = [sys.executable, "-m", "unicornn.bench._memory_worker", json.dumps(dict(point))]
    try:
        done = subprocess.run(
            cmd, capture_output=True, text=True, env=default_env(env_extra), timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"model": point["model"], "N": point["N"], "error": f"timed out after {timeout} s"}
    if done.returncode != 0:
        return {"model": point["model"], "N": point["N"], "error": done.stderr[-2000:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_memory(
    lengths: Sequence[int] = (500, 1000, 2000, 4000),
    models: Sequence[str] = MEMORY_MODELS,
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
    allocator_variant: Mapping[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Peak training memory of every model at every length; see the module docstring.

    ``repeats``: full-length steps per point (the step time is the median of those after the first when
    there are two or more). ``threads``: torch threads of each measurement (default: torch's own choice).
    ``allocator_variant``: environment variables (e.g. ``{"MALLOC_MMAP_THRESHOLD_": "65536"}``) of one extra
    ``unicornn_lean`` row per N, labelled ``variant`` (CPU only). ``log``: receives a line as each point starts.

    Returns:
        dict: ``settings``, ``machine``, ``load_average_before``/``_after``, ``rows`` (per model and N:
        ``peak_bytes``, ``peak_MiB``, ``input_bytes``, ``output_bytes``, ``step_s``; or ``error``) and
        ``summary`` (:func:`summarize`).
    """
    for m in models:
        _check_model(m)
    if not models:
        raise ValueError("models must name at least one model")
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of ints >= 1, got {lengths!r}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    dev = torch.device(device)
    if allocator_variant and dev.type != "cpu":
        raise ValueError(f"allocator_variant applies to CPU processes only, got device {device!r}")
    common = {"device": str(dev), "batch": batch, "hidden": hidden, "layers": layers, "input_size": input_size,
              "dt": dt, "alpha": alpha, "checkpoint_every": checkpoint_every, "repeats": repeats, "threads": threads}  # fmt: skip
    measure = (
        "peak resident memory (VmHWM, reset after warm-up) minus resident memory after warm-up, "
        "fresh default process per point"
        if dev.type == "cpu"
        else "max_memory_allocated minus memory allocated before the step"
    )
    result = {"benchmark": "memory", "settings": {**common, "lengths": list(lengths), "models": list(models),
              "loss": "cross_entropy(Linear(hidden, 4)(y_N[-1]))", "warmup_steps": WARMUP_STEPS,
              "measure": measure, "environment_variables": "none of MALLOC_*, GLIBC_TUNABLES (except variant rows)" if dev.type == "cpu" else "this process's",
              "allocator_variant": dict(allocator_variant or {}) or None, "unicornn_backend": fused_backend(dev)},
              "machine": machine_info(str(dev)), "load_average_before": load_average(), "rows": []}  # fmt: skip
    extra = [("unicornn_lean", allocator_variant)] if allocator_variant else []
    for N, (m, variant) in [(N, job) for N in lengths for job in [*((m, None) for m in models), *extra]]:
        if log is not None:
            log(f"measuring {m} N={N}" + (f" with {dict(variant)}" if variant else "") + " ...")
        point = {"model": m, "N": N, **common}
        if dev.type == "cpu":
            row = measure_in_fresh_process(point, variant)
        else:
            row = measure_point(**{k: v for k, v in point.items() if k != "threads"})
            torch.cuda.empty_cache()
        if "peak_bytes" in row:
            row["peak_MiB"] = row["peak_bytes"] / 2**20
        if variant:
            row["variant"] = dict(variant)
        result["rows"].append(row)
    result["load_average_after"] = load_average()
    result.update(summarize(result))
    return result


def _row(result, model, N, variant=False):
    return next(
        (r for r in result["rows"] if r["model"] == model and r["N"] == N and ("variant" in r) == variant), {}
    )


def _mib(row):
    return row["peak_bytes"] / 2**20 if "peak_bytes" in row else None


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    """Per N: each model's peak MiB, lean/standard memory and step-time ratios, and the lean peak's relative
    growth from the shortest to the longest length of at least one chunk (``N >= checkpoint_every``; shorter
    sequences are a single, shorter chunk). Returns ``{"summary": [...], "lean_growth": ...}``."""
    summary = []
    for N in result["settings"]["lengths"]:
        std, lean = _row(result, "unicornn_standard", N), _row(result, "unicornn_lean", N)
        seq, lstm = _row(result, "unicornn_lean_seq", N), _row(result, "lstm", N)
        var = _row(result, "unicornn_lean", N, variant=True)
        both = "peak_bytes" in std and "peak_bytes" in lean
        summary.append({
            "N": N, "standard_MiB": _mib(std), "lean_MiB": _mib(lean),
            "memory_ratio": lean["peak_bytes"] / std["peak_bytes"] if both and std["peak_bytes"] else None,
            "lean_seq_MiB": _mib(seq), "output_MiB": N * result["settings"]["batch"] * result["settings"]["hidden"] * 4 / 2**20,
            "lean_variant_MiB": _mib(var), "lstm_MiB": _mib(lstm),
            "standard_s": std.get("step_s"), "lean_s": lean.get("step_s"), "lstm_s": lstm.get("step_s"),
            "time_ratio": lean["step_s"] / std["step_s"] if both else None,
        })  # fmt: skip
    full = result["settings"].get("checkpoint_every") or 0  # below one chunk, lean grows like standard
    lean = [(r["N"], r["lean_MiB"]) for r in summary if r["lean_MiB"] and r["N"] >= full]
    growth = None
    if len(lean) >= 2 and lean[0][0] != lean[-1][0]:
        (n0, m0), (n1, m1) = min(lean), max(lean)
        growth = {"from_N": n0, "to_N": n1, "relative": m1 / m0 - 1.0}
    return {"summary": summary, "lean_growth": growth}


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per N, peak MiB and step time per model (and the allocator variant's lean
    row), the lean/standard memory and time ratios; the load average and the lean growth underneath."""
    s = result["settings"]
    models = s["models"]
    variant = s.get("allocator_variant")
    cols = [
        *models,
        *(["unicornn_lean " + " ".join(f"{k}={v}" for k, v in variant.items())] if variant else []),
    ]
    lines = [
        f"peak training memory (MiB; {s['measure']}), B={s['batch']}, hidden={s['hidden']}, layers={s['layers']}, "
        f"input width {s['input_size']}, {s['device']}",
        "",
        "| N | "
        + " | ".join(f"{m} MiB (s/step)" for m in cols)
        + " | lean / standard | time lean / standard |",
        "| --- |" + " --- |" * (len(cols) + 2),
    ]
    for N, summ in zip(s["lengths"], result["summary"]):
        rows = [_row(result, m, N) for m in models] + (
            [_row(result, "unicornn_lean", N, True)] if variant else []
        )
        cells = [
            f"{r['peak_MiB']:.1f} ({r['step_s']:.2f})" if "peak_MiB" in r else "error" if r else "-"
            for r in rows
        ]
        ratios = [f"{summ[k]:.3f}" if summ[k] is not None else "-" for k in ("memory_ratio", "time_ratio")]
        lines.append(f"| {N} | " + " | ".join(cells + ratios) + " |")
    g = result.get("lean_growth")
    if g:
        lines += ["", f"lean peak growth from N={g['from_N']} to N={g['to_N']}: {100 * g['relative']:.1f}%"]
    lines += ["", f"load average (1, 5, 15 min): before {format_load(result.get('load_average_before'))}, "
              f"after {format_load(result.get('load_average_after'))}"]  # fmt: skip
    return "\n".join(lines)


def plot_memory(result: dict[str, Any], path: Path) -> None:
    """Peak memory against N, log-log, one line per model (and the allocator variant's, dashed)."""
    plt = pyplot()
    s = result["settings"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for m, marker in zip(s["models"], "os^dv"):
        pts = [(r["N"], r["peak_MiB"]) for r in result["rows"]
               if r["model"] == m and "peak_MiB" in r and "variant" not in r]  # fmt: skip
        if pts:
            ax.loglog(*zip(*pts), marker + "-", label=m)
    pts = [(r["N"], r["peak_MiB"]) for r in result["rows"] if "variant" in r and "peak_MiB" in r]
    if pts:
        label = "unicornn_lean, " + ", ".join(f"{k}={v}" for k, v in s["allocator_variant"].items())
        ax.loglog(*zip(*pts), "x--", label=label)
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("extra peak memory of one training step (MiB)")
    ax.set_title(f"{s['layers']} layers, hidden {s['hidden']}, B={s['batch']}, {s['device']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


def write_memory(result: dict[str, Any], out_dir, stem: str = "memory") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.txt`` and ``<stem>.png`` under ``out_dir``; returns the paths."""
    return write_outputs(result, out_dir, stem, format_table(result), plot_memory)
