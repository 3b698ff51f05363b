"""Forward+backward time against sequence length: UnICORNN against the usual recurrent networks (Fig. 2).

Every model is the recurrent stack plus a 10-class linear head on the last step, trained on a cross-entropy
loss; one timed step is ``zero_grad``, forward, loss and backward (synchronised on CUDA). All models run in
one process on the same inputs; the repeats are interleaved (round r times every model once) so that load
changes on a shared machine hit all models alike. Each model's time is the median over its rounds, and its
ratio to the reference model (``ratio_to``, default ``unicornn``) is the median over rounds of its time
divided by that model's time in the same round (paired ratios: a load change during one round cancels). The
1-minute load average is recorded before, after every round and after.

Models (``name`` or ``name:L`` to give that model L layers instead of the common ``layers``):

* ``unicornn``: :class:`unicornn.UnICORNN` on the fused backend (``cpu`` kernels on CPU, ``triton`` on CUDA),
  head on ``output[-1]``;
* ``unicornn_final``: the same, called with ``return_sequence=False``, head on the top layer's final state
  ``y_n[-1]`` (the way to classify sequences: the top layer's output sequence is never written to autograd);
* ``unicornn_reference``: the same on the pure-PyTorch reference loop;
* ``lstm``, ``gru``: cuDNN on GPU; ``cornn``, ``indrnn``: :mod:`unicornn.baselines` (per-step PyTorch);
* ``torchrecurrent``: ``torchrecurrent.UnICORNN`` (PyPI ``torchrecurrent==0.2.5``), skipped when not installed.

With ``floor=True`` a ``floor`` row is added per length (:func:`step_floor`): the least time a fused
UnICORNN step of that shape can take on this machine -- the projection matmuls (timed) plus one pass over
every (N, B, M) tensor the recurrence kernels must read or write, at the measured memory-copy bandwidth.
Its parts are timed once per round, right after the models, and its ratio is paired like theirs: the
median over rounds of that round's floor over that round's step (a floor timed apart from the steps, at
another moment's load, made the ratio depend on when each ran).

The paper's setting (:data:`PAPER_SETTING`): B=128, 2 layers, N=1000 and 2000, on a GPU. The default
(:data:`CPU_SETTING`) is sized for a CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import UnICORNN
from ..baselines import GRU, LSTM, CoRNN, IndRNN
from ..plotting import pyplot, save_figure, write_outputs
from .common import format_load, fused_backend, load_average, machine_info

__all__ = ["CPU_SETTING", "SPEED_MODELS", "PAPER_SETTING", "PSMNIST_SETTING", "build_timed_model", "copy_bandwidth",
           "format_table", "plot_speed", "profile_step", "run_speed", "step_floor", "thread_scaling",
           "write_speed"]  # fmt: skip

SPEED_MODELS = (
    "unicornn",
    "unicornn_final",
    "unicornn_reference",
    "lstm",
    "gru",
    "cornn",
    "indrnn",
    "torchrecurrent",
)
DEFAULT_SPEED_MODELS = ("unicornn", "lstm", "gru", "cornn", "indrnn", "torchrecurrent")
#: models run by a per-step Python loop: by default timed in the first ``slow_repeats`` rounds only
SLOW = ("unicornn_reference", "cornn", "torchrecurrent")

PAPER_SETTING = {"lengths": (1000, 2000), "batch": 128, "hidden": 256, "layers": 2, "input_size": 1}
CPU_SETTING = {"lengths": (1000, 2000), "batch": 32, "hidden": 128, "layers": 2, "input_size": 1}
#: UnICORNN's psMNIST training step (paper, Table 8): B=120, hidden 256, 3 layers, 784 pixels one at a time.
PSMNIST_SETTING = {"lengths": (784,), "batch": 120, "hidden": 256, "layers": 3, "input_size": 1}
DT, ALPHA = 0.19, 30.65  # UnICORNN's psMNIST setting (the time does not depend on them)
CLASSES = 10


class _LastStep(nn.Module):
    """A time-major recurrent stack followed by a linear head on its last output step (N, B, H) -> (B, 10),
    or with ``final_state`` on the top layer's final state ``y_n[-1]`` of a ``return_sequence=False`` call."""

    def __init__(self, rnn: nn.Module, hidden: int, final_state: bool = False) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, CLASSES)
        self.final_state = final_state

    def forward(self, u):
        if self.final_state:
            _, (y_n, _) = self.rnn(u, return_sequence=False)
            return self.head(y_n[-1])
        out, _ = self.rnn(u)
        return self.head(out[-1])


def _parse(name: str, layers: int) -> tuple[str, int]:
    base, _, count = name.partition(":")
    if base not in SPEED_MODELS:
        raise ValueError(f"model must be one of {SPEED_MODELS} (optionally ':layers'), got {name!r}")
    if count:
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"the layer count after ':' must be an int >= 1, got {name!r}")
        return base, int(count)
    return base, layers


def build_timed_model(name: str, input_size: int, hidden: int, layers: int, device: torch.device,
                max_steps: int = 1000) -> nn.Module | str:  # fmt: skip
    """The benchmark model ``name`` (see the module docstring), or a string saying why it is skipped.

    ``max_steps`` sets IndRNN's weight constraint (the sequence length)."""
    base, layers = _parse(name, layers)
    if base.startswith("unicornn"):
        backend = "reference" if base == "unicornn_reference" else fused_backend(device)
        rnn = UnICORNN(input_size, hidden, layers, dt=DT, alpha=ALPHA, backend=backend)
    elif base == "lstm":
        rnn = LSTM(input_size, hidden, layers)
    elif base == "gru":
        rnn = GRU(input_size, hidden, layers)
    elif base == "cornn":
        rnn = CoRNN(input_size, hidden, layers)
    elif base == "indrnn":
        rnn = IndRNN(input_size, hidden, layers, max_steps=max_steps)
    else:
        try:
            import torchrecurrent
        except ImportError as err:
            return f"not installed ({err}); pip install torchrecurrent==0.2.5"
        rnn = torchrecurrent.UnICORNN(input_size, hidden, num_layers=layers, dt=DT, alpha=ALPHA)
    return _LastStep(rnn, hidden, final_state=base == "unicornn_final").to(device)


def _time_step(model: nn.Module, u, target, device: torch.device) -> float:
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    F.cross_entropy(model(u), target).backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _median_time(fn, device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one untimed call (synchronised on CUDA)."""
    times = []
    for r in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if r:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, nbytes: int = 64 * 2**20, repeats: int = 5) -> float:
    """Memory bandwidth in bytes/s of a ``nbytes`` float32 copy, counting the bytes read plus written."""
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / _median_time(lambda: dst.copy_(src), device, repeats)


def step_floor(N: int, batch: int, hidden: int, layers: int, input_size: int, device: torch.device,
               repeats: int = 5, bandwidth: float | None = None, final_state: bool = False) -> dict[str, Any]:  # fmt: skip
    """The floor of one fused UnICORNN forward+backward of this shape (float32, head excluded).

    * ``matmul_s`` (timed here): per layer the input projection ``x = u V^T``, (N*B, in) x (in, M), and in
      the backward the weight gradient ``grad_x^T u`` and, above the first layer, the input gradient
      ``grad_x V`` (the first layer's input needs no gradient). The bias is added inside the scan kernels,
      so no matmul writes ``x + b``.
    * ``memory_s``: one pass of N*B*M float32 (``tensor_bytes``) per tensor the fused kernels must touch, at
      :func:`copy_bandwidth` (measured unless ``bandwidth`` in bytes/s is given). Per layer the forward
      reads ``x`` and writes ``y`` (2 passes); the backward reads ``x`` and the stored ``y`` and writes
      ``grad_x`` (3 passes), and reads ``grad_y`` (1 pass) -- except in the top layer when the loss reads
      only its final state (``final_state``, a ``return_sequence=False`` call): its ``grad_y`` is then
      unset and the backward kernel skips it. ``memory_passes`` = 6 L, or 6 L - 1 with ``final_state``.
    * ``floor_s`` = ``matmul_s`` + ``memory_s``; both readouts are also given, ``floor_final_state_s``
      and ``floor_output_readout_s`` (a head on ``output[-1]``).

    Returns:
        dict: the above, ``bytes`` (``memory_passes * tensor_bytes``) and the bandwidth
        (``copy_bandwidth_bytes_per_s``, ``bandwidth_GBps``).
    """
    timer = _FloorTimer(N, batch, hidden, layers, input_size, device)
    matmul_s = _median_time(timer.matmuls, device, repeats)
    bandwidth = bandwidth or copy_bandwidth(device, repeats=repeats)
    return timer.parts(matmul_s, bandwidth, final_state)


class _FloorTimer:
    """The timed parts of :func:`step_floor` for one shape, on tensors made once: the projections' matmuls
    and a 64 MiB copy. :func:`run_speed` times them once per round, next to the models (paired)."""

    def __init__(self, N: int, batch: int, hidden: int, layers: int, input_size: int, device: torch.device):
        gen = torch.Generator().manual_seed(0)
        self.rows, self.hidden, self.layers, self.device = N * batch, hidden, layers, device
        self.mats = []
        for k in range(layers):
            width = input_size if k == 0 else hidden
            u = torch.randn(self.rows, width, generator=gen).to(device)
            w = torch.randn(hidden, width, generator=gen).to(device)
            g = torch.randn(self.rows, hidden, generator=gen).to(device)
            self.mats.append((k, u, w, g))
        self._copy = None

    def matmuls(self) -> None:
        for k, u, w, g in self.mats:
            u @ w.T
            g.T @ u
            if k:
                g @ w

    def time_round(self) -> tuple[float, float]:
        """One timing of the matmuls (s) and one of the copy bandwidth (bytes/s)."""
        if self._copy is None:
            src = torch.ones(16 * 2**20, device=self.device)
            self._copy = (src, torch.empty_like(src))
        src, dst = self._copy
        matmul_s = _median_time(self.matmuls, self.device, 1)
        copy_s = _median_time(lambda: dst.copy_(src), self.device, 1)
        return matmul_s, 2 * src.numel() * 4 / copy_s

    def parts(self, matmul_s: float, bandwidth: float, final_state: bool) -> dict[str, Any]:
        """The floor's parts (see :func:`step_floor`) from a matmul time and a bandwidth."""
        tensor_bytes = self.rows * self.hidden * 4
        floors = {f"floor_{key}_s": matmul_s + (6 * self.layers - top) * tensor_bytes / bandwidth
                  for key, top in (("final_state", 1), ("output_readout", 0))}  # fmt: skip
        passes = 6 * self.layers - int(final_state)
        memory_s = passes * tensor_bytes / bandwidth
        return {"floor_s": matmul_s + memory_s, **floors, "matmul_s": matmul_s, "memory_s": memory_s,
                "memory_passes": passes, "tensor_bytes": tensor_bytes, "bytes": passes * tensor_bytes,
                "copy_bandwidth_bytes_per_s": bandwidth, "bandwidth_GBps": bandwidth / 1e9}  # fmt: skip


#: :func:`profile_step` parts: profiler op name (or a prefix of it) -> part
_PARTS = (
    ("unicornn::scan_backward", "scan_backward"),
    ("unicornn::scan_projected_backward", "scan_backward"),
    ("GeneratedBackwardFor_unicornn_scan_defaultBackward", "scan_backward"),
    ("GeneratedBackwardFor_unicornn_scan_projected_defaultBackward", "scan_backward"),
    ("GeneratedBackwardFor_unicornn_scan", "scan_forward"),  # the op's autograd node runs the forward kernel
    ("unicornn::scan", "scan_forward"),
    ("aten::mm", "matmul"),
    ("aten::addmm", "matmul"),
    ("aten::fill_", "fill"),
    ("aten::zero_", "fill"),
)


#: the profiler events that hold a kernel call's time (eager calls record the op's name; the op's autograd
#: node runs the forward kernel)
_KERNEL_CALLS = (
    "unicornn::scan",
    "unicornn::scan_projected",
    "GeneratedBackwardFor_unicornn_scan_default",
    "GeneratedBackwardFor_unicornn_scan_projected_default",
    "unicornn::scan_backward",
    "unicornn::scan_projected_backward",
)


def _cpu_problem(name: str, N: int, batch: int, hidden: int, layers: int, input_size: int, seed: int):
    """``(model, u (N, batch, input_size), target (batch,))`` of one CPU timing problem, seeded; ValueError when
    the model is unavailable here."""
    torch.manual_seed(seed)
    model = build_timed_model(name, input_size, hidden, layers, torch.device("cpu"), max_steps=N)
    if isinstance(model, str):
        raise ValueError(f"model {name!r} is unavailable: {model}")
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(N, batch, input_size, generator=gen)
    return model, u, torch.randint(0, CLASSES, (batch,), generator=gen)


def profile_step(name: str = "unicornn_final", N: int = 1000, batch: int = CPU_SETTING["batch"],
                 hidden: int = CPU_SETTING["hidden"], layers: int = CPU_SETTING["layers"],
                 input_size: int = CPU_SETTING["input_size"], steps: int = 5, threads: int | None = None,
                 seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """Where one training step of model ``name`` (CPU) spends its time, by ``torch.profiler``.

    Self time of the profiled ops on the calling thread, per step (mean over ``steps`` steps after two
    untimed ones), summed into parts: ``scan_forward`` and ``scan_backward`` (the fused kernels, all
    layers), ``matmul`` (projections, their gradients and the head), ``fill`` (zero-fills) and ``other``
    (the step's wall time minus the rest: the remaining ops, autograd and Python). Also per layer: the
    median over the steps of each kernel call's time, in call order (``scan_forward_calls_s``,
    ``scan_backward_calls_s``, top layer last for the forward and first for the backward); single calls
    under the profiler vary up to 3x (a median of a few steps, not the first step's calls).
    """
    from torch.profiler import ProfilerActivity, profile

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        dev = torch.device("cpu")
        model, u, target = _cpu_problem(name, N, batch, hidden, layers, input_size, seed)
        for _ in range(2):
            _time_step(model, u, target, dev)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            wall = sum(_time_step(model, u, target, dev) for _ in range(steps))
        parts = dict.fromkeys(("scan_forward", "scan_backward", "matmul", "fill"), 0.0)
        calls: dict[str, list[float]] = {"scan_forward": [], "scan_backward": []}
        for event in sorted(prof.events(), key=lambda e: e.time_range.start):  # call order
            part = next((p for key, p in _PARTS if event.name.startswith(key)), None)
            if part is None:
                continue
            seconds = event.self_cpu_time_total / 1e6
            parts[part] += seconds
            if event.name in _KERNEL_CALLS:
                calls[part].append(seconds)
        per_step = {f"{k}_s": v / steps for k, v in parts.items()}
        step_s = wall / steps
        per_step["other_s"] = step_s - sum(per_step.values())
        fwd, bwd = per_step["scan_forward_s"], per_step["scan_backward_s"]
        return {"model": name, "N": N, "batch": batch, "hidden": hidden, "layers": layers,
                "input_size": input_size, "threads": torch.get_num_threads(), "steps": steps,
                "step_s": step_s, **per_step, "backward_to_forward": bwd / fwd if fwd else None,
                **{f"{part}_calls_s": [statistics.median(times[i::layers]) for i in range(layers)]
                   for part, times in calls.items()},
                "load_average": load_average()}  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)


def thread_scaling(name: str = "unicornn_final", N: int = 1000, batch: int = CPU_SETTING["batch"],
                   hidden: int = CPU_SETTING["hidden"], layers: int = CPU_SETTING["layers"],
                   input_size: int = CPU_SETTING["input_size"], threads: Sequence[int] = (1, 2),
                   repeats: int = 7, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """The training step of model ``name`` (CPU) at several thread counts, paired: every round times one
    step at each count (``torch.set_num_threads`` in between), after one untimed round.

    Returns:
        dict: ``median_s`` per thread count, ``runs_s`` per thread count, ``speedup`` per thread count (the
        median over rounds of the first count's time over this count's time in the same round) and the
        load average before, during (after every round) and after.
    """
    previous_threads = torch.get_num_threads()
    try:
        dev = torch.device("cpu")
        model, u, target = _cpu_problem(name, N, batch, hidden, layers, input_size, seed)
        runs: dict[int, list[float]] = {t: [] for t in threads}
        before, during = load_average(), []
        for r in range(repeats + 1):
            for t in threads if r % 2 else tuple(reversed(threads)):
                torch.set_num_threads(t)
                elapsed = _time_step(model, u, target, dev)
                if r:
                    runs[t].append(elapsed)
            if r:
                during.append((load_average() or [None])[0])
    finally:
        torch.set_num_threads(previous_threads)
    first = runs[threads[0]]
    return {"model": name, "N": N, "batch": batch, "hidden": hidden, "layers": layers, "input_size": input_size,
            "threads": list(threads), "median_s": {t: statistics.median(v) for t, v in runs.items()},
            "runs_s": runs, "speedup": {t: _paired_ratio(first, v) for t, v in runs.items()},
            "load_average_before": before, "load_average_1min_during": during,
            "load_average_after": load_average()}  # fmt: skip


def _time_forward(model: nn.Module, u, device: torch.device) -> float:
    """Seconds of one forward pass without autograd (inference)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(u)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def run_speed(
    lengths: Sequence[int] = CPU_SETTING["lengths"],
    models: Sequence[str] = DEFAULT_SPEED_MODELS,
    batch: int = CPU_SETTING["batch"],
    hidden: int = CPU_SETTING["hidden"],
    layers: int = CPU_SETTING["layers"],
    input_size: int = CPU_SETTING["input_size"],
    device: str = "cpu",
    repeats: int = 5,
    slow_repeats: int = 2,
    warmup: int = 1,
    seed: int = 0,
    threads: int | None = None,
    flush_denormal: bool = False,
    floor: bool = False,
    forward_only: bool = False,
    slow: Sequence[str] = SLOW,
    ratio_to: str = "unicornn",
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time one training step of every model at every length; see the module docstring.

    Args:
        lengths: sequence lengths N.
        models: model names (see :data:`SPEED_MODELS`), each optionally ``name:L``.
        batch, hidden, layers, input_size: B, hidden size, layers and input width shared by all models.
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:i"``).
        repeats: timed rounds for fast models; ``slow_repeats`` for those named in ``slow``.
        warmup: untimed rounds first (compilation, allocator warm-up).
        threads: torch threads during the run (restored after); default torch's own choice.
        flush_denormal: flush subnormal floats to zero on CPU during the run (``torch.set_flush_denormal``).
            Off by default, as a user's process runs; vanishing gradients (LSTM, GRU on random inputs)
            reach subnormal values, which CPUs process many times slower (an LSTM step ~10x here).
        floor: add a ``floor`` row per length (:func:`step_floor`, with the common ``layers``); its
            readout is that of ``ratio_to`` (the final state for ``unicornn_final``, else ``output[-1]``).
        forward_only: also time inference (forward under ``torch.no_grad``) in the same rounds:
            ``forward_median_s`` in each row.
        slow: base model names (see :data:`SPEED_MODELS`) timed in the first ``slow_repeats`` rounds only.
        ratio_to: the model (one of ``models``) every ratio is taken against.
        log: receives a progress line per round and length (default: none).

    Returns:
        dict: ``settings``, ``machine``, ``load_average_before`` / ``_after``, ``rows`` (one per length and
        model: ``N``, ``model``, ``median_s``, ``runs_s``, ``ratio_to_unicornn`` (the median of the paired
        per-round ratios to ``ratio_to``; None when ``ratio_to`` is not among the models or was skipped);
        or ``skipped`` with the reason; with ``floor``, a row of model ``floor`` per length whose
        ``median_s`` is the floor (matmul time and bandwidth: medians over rounds), ``runs_s`` the floor
        of every round, ``ratio_to_unicornn`` the median over rounds of the round's floor over the round's
        ``ratio_to`` step, and which holds the parts of :func:`step_floor`), ``load_average_1min_during``
        (after every round).
    """
    for name, value, lo in (
        ("repeats", repeats, 1),
        ("slow_repeats", slow_repeats, 1),
        ("warmup", warmup, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
    if not lengths or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of ints >= 1, got {lengths!r}")
    for name in models:
        _parse(name, layers)
    _parse(ratio_to, layers)
    for name in slow:
        if name not in SPEED_MODELS:
            raise ValueError(f"slow must hold names of {SPEED_MODELS}, got {name!r}")
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    if flush_denormal:
        torch.set_flush_denormal(True)
    try:
        dev = torch.device(device)
        final_state = _parse(ratio_to, layers)[0] == "unicornn_final"
        result = _run(lengths, models, batch, hidden, layers, input_size, dev, repeats, slow_repeats, warmup,
                      seed, forward_only, tuple(slow), ratio_to, floor, final_state,
                      log or (lambda _msg: None))  # fmt: skip
    finally:
        torch.set_num_threads(previous_threads)
        if flush_denormal:
            torch.set_flush_denormal(False)
    result["settings"]["flush_denormal"] = bool(flush_denormal)
    return result


def _run(lengths, models, batch, hidden, layers, input_size, dev, repeats, slow_repeats, warmup, seed,
         forward_only, slow, ratio_to, floor=False, final_state=False, log=lambda _msg: None):  # fmt: skip
    """The measurement of :func:`run_speed`, its arguments checked and its thread count set."""
    torch.manual_seed(seed)
    built = {
        name: build_timed_model(name, input_size, hidden, layers, dev, max_steps=max(lengths))
        for name in models
    }
    settings = {"lengths": list(lengths), "models": list(models), "batch": batch, "hidden": hidden,
                "layers": layers, "input_size": input_size, "classes": CLASSES, "device": str(dev),
                "repeats": repeats, "slow_repeats": slow_repeats, "warmup": warmup, "dt": DT, "alpha": ALPHA,
                "unicornn_backend": fused_backend(dev), "slow": list(slow), "ratio_to": ratio_to,
                "threads": torch.get_num_threads()}  # fmt: skip
    result = {"benchmark": "speed", "settings": settings, "machine": machine_info(str(dev)),
              "load_average_before": load_average(), "load_average_1min_during": [], "rows": []}  # fmt: skip
    gen = torch.Generator().manual_seed(seed)
    timed = [name for name, m in built.items() if not isinstance(m, str)]
    for name, model in built.items():
        if isinstance(model, str):
            log(f"{name} skipped: {model}")
    log(
        f"timing {', '.join(timed)} at N={','.join(map(str, lengths))}: {warmup} warm-up + {repeats} timed "
        f"rounds each ({slow_repeats} for the per-step models {', '.join(slow)})"
    )
    for N in lengths:
        u = torch.randn(N, batch, input_size, generator=gen).to(dev)
        target = torch.randint(0, CLASSES, (batch,), generator=gen).to(dev)
        runs: dict[str, list[float]] = {name: [] for name, m in built.items() if not isinstance(m, str)}
        forward: dict[str, list[float]] = {name: [] for name in runs}
        timer = _FloorTimer(N, batch, hidden, layers, input_size, dev) if floor else None
        floor_runs: list[tuple[float, float]] = []
        for r in range(warmup + repeats):
            start = time.perf_counter()
            for name in runs:
                if _parse(name, layers)[0] in slow and r >= warmup + slow_repeats:
                    continue
                elapsed = _time_step(built[name], u, target, dev)
                inference = _time_forward(built[name], u, dev) if forward_only else None
                if r >= warmup:
                    runs[name].append(elapsed)
                    if inference is not None:
                        forward[name].append(inference)
            if timer is not None:
                parts = timer.time_round()
                if r >= warmup:
                    floor_runs.append(parts)
            if r >= warmup:
                result["load_average_1min_during"].append((load_average() or [None])[0])
            kind = "warm-up" if r < warmup else "timed"
            log(f"N={N}: round {r + 1}/{warmup + repeats} ({kind}) took {time.perf_counter() - start:.1f} s")
        base = runs.get(ratio_to)
        for name, model in built.items():
            if isinstance(model, str):
                result["rows"].append({"N": N, "model": name, "skipped": model})
                continue
            row = {"N": N, "model": name, "median_s": statistics.median(runs[name]), "runs_s": runs[name]}
            row["ratio_to_unicornn"] = _paired_ratio(runs[name], base) if base else None
            if forward_only:
                row["forward_median_s"] = statistics.median(forward[name])
            result["rows"].append(row)
        if timer is not None:
            result["rows"].append(_floor_row(N, timer, floor_runs, final_state, base))
    if floor:
        settings["models"].append("floor")
    result["load_average_after"] = load_average()
    return result


def _floor_row(N: int, timer: _FloorTimer, floor_runs, final_state: bool, base) -> dict[str, Any]:
    """The ``floor`` row: parts from the medians over rounds of the matmul time and the bandwidth; ratio the
    median over rounds of that round's floor over that round's ``ratio_to`` step (paired, like the models)."""
    parts = timer.parts(statistics.median(m for m, _ in floor_runs),
                        statistics.median(bw for _, bw in floor_runs), final_state)  # fmt: skip
    per_round = [timer.parts(m, bw, final_state)["floor_s"] for m, bw in floor_runs]
    return {"N": N, "model": "floor", "median_s": parts["floor_s"], **parts, "runs_s": per_round,
            "ratio_to_unicornn": _paired_ratio(per_round, base) if base else None}  # fmt: skip


def _paired_ratio(times: Sequence[float], base: Sequence[float]) -> float:
    """Median over rounds of ``times[r] / base[r]``; a model timed in fewer rounds pairs with the first ones
    of ``base`` (all models take part in every round from the first on)."""
    return statistics.median(t / b for t, b in zip(times, base, strict=False))


def format_table(result: dict[str, Any]) -> str:
    """A Markdown table: one row per model, one column per length (median ms and the paired ratio to the
    ``ratio_to`` model); why a model was skipped is said under the table."""
    lengths = result["settings"]["lengths"]
    s = result["settings"]
    lines = [
        f"forward+backward, B={s['batch']}, hidden={s['hidden']}, layers={s['layers']}, input width "
        f"{s['input_size']}, {s['device']} (unicornn backend: {s['unicornn_backend']}); "
        f"load average (1, 5, 15 min) {format_load(result.get('load_average_before'))} -> "
        f"{format_load(result.get('load_average_after'))}",
        "",
        "| model | " + " | ".join(f"N={n}: ms (x {s.get('ratio_to', 'unicornn')})" for n in lengths) + " |",
        "| --- |" + " --- |" * len(lengths),
    ]
    skipped = {}
    for name in s["models"]:
        cells = []
        for n in lengths:
            row = next(r for r in result["rows"] if r["N"] == n and r["model"] == name)
            if "skipped" in row:
                cells.append("skipped (see below)")
                skipped[name] = row["skipped"]
            else:
                ratio = row["ratio_to_unicornn"]
                cells.append(
                    f"{row['median_s'] * 1e3:.1f} ({ratio:.2f})" if ratio else f"{row['median_s'] * 1e3:.1f}"
                )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [""] * bool(skipped) + [f"{name} skipped: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


def plot_speed(result: dict[str, Any], path: Path) -> None:
    """Grouped bars as the paper's Fig. 2: time per forward+backward for every model, one bar per length."""
    plt = pyplot()
    s = result["settings"]
    names = [m for m in s["models"] if any(r["model"] == m and "median_s" in r for r in result["rows"])]
    lengths = s["lengths"]
    width = 0.8 / max(1, len(lengths))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names) + 2), 4))
    for i, n in enumerate(lengths):
        times = []
        for name in names:
            row = next(r for r in result["rows"] if r["N"] == n and r["model"] == name)
            times.append(row.get("median_s", float("nan")) * 1e3)
        xs = [j + (i - (len(lengths) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, times, width, label=f"N={n}")
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("forward + backward (ms)")
    ax.set_title(f"B={s['batch']}, hidden {s['hidden']}, {s['layers']} layers, {s['device']}")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path, dpi=120)


def write_speed(result: dict[str, Any], out_dir, stem: str = "speed") -> dict[str, Path]:
    """Write ``<stem>.json``, ``<stem>.txt`` and ``<stem>.png`` under ``out_dir``; returns the paths."""
    return write_outputs(result, out_dir, stem, format_table(result), plot_speed)
