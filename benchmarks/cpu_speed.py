"""CPU speed of the fused backend, side by side with what a CPU user can run today, and its floor.

End to end: forward + backward of a 2-layer model at N=1000, B=32, M=128, input width 1, a 10-class linear head
on the last step (cross-entropy), for

* ``UnICORNN(backend="cpu")`` with the head on ``y_n[-1]`` and ``return_sequence=False`` (the way to classify
  sequences, README), and the same model with the head on ``output[-1]``,
* ``UnICORNN(backend="reference")`` -- the project's pure-PyTorch loop,
* ``torchrecurrent.UnICORNN`` (PyPI ``torchrecurrent==0.2.5``) with the same sizes, dt and alpha,
* ``torch.nn.LSTM`` with hidden 128, 1 and 2 layers.

All in one process and interleaved: every round times one step of each model in turn (the slow peers take
part in fewer rounds), so that a change of load on a shared machine hits all of them alike. Reported: the
median per model, and for each model the median over rounds of its time divided by the ``cpu`` model's time
in the same round. The load average is recorded before, during and after.

Then the floor of that training step (:func:`step_floor`): the measured time of the projections' matmuls
(forward and backward) plus one pass over every (N, B, M) tensor the scan kernels must read or write, at the
measured memory copy bandwidth. Then the recurrence alone at the step's shape, through the op and autograd:
forward, backward with an upstream gradient of the sequence (a lower layer) and without one (the top layer
read through ``y_n``), and the bare kernels; and unit-steps per second at B*M = 4,096 and 65,536. Finally the
first-call cost: one float32 forward+backward in a fresh process with an empty numba cache (compilation), and
again with the cache filled.

Usage: ``python benchmarks/cpu_speed.py [--repeats 9] [--threads T] [--out benchmarks/results/cpu_speed.json]``.
Needs the ``[bench]`` extra (``torchrecurrent``); a missing peer is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numba  # noqa: E402

import unicornn  # noqa: E402
from unicornn import UnICORNN, unicornn_scan  # noqa: E402
from unicornn.ops import cpu as cpu_ops  # noqa: E402

N, B, M, WIDTH, CLASSES, LAYERS = 1000, 32, 128, 1, 10, 2
DT, ALPHA = 0.19, 30.65  # the paper's psMNIST setting
FAST = "unicornn cpu"


class Classifier(nn.Module):
    """A sequence model followed by a linear head on the last step: ``output[-1]``, or with ``final_state``
    the top layer's final state ``y_n[-1]`` of a model called with ``return_sequence=False``."""

    def __init__(self, rnn: nn.Module, hidden: int = M, final_state: bool = False):
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


def build_models() -> dict[str, nn.Module | str]:
    def ours(backend):
        return UnICORNN(WIDTH, M, num_layers=LAYERS, dt=DT, alpha=ALPHA, backend=backend)

    models: dict[str, nn.Module | str] = {
        FAST: Classifier(ours("cpu"), final_state=True),
        "unicornn cpu, head on output[-1]": Classifier(ours("cpu")),
        "unicornn reference": Classifier(ours("reference"), final_state=True),
    }
    try:
        import torchrecurrent

        models["torchrecurrent.UnICORNN"] = Classifier(
            torchrecurrent.UnICORNN(WIDTH, M, num_layers=LAYERS, dt=DT, alpha=ALPHA)
        )
    except ImportError as err:
        models["torchrecurrent.UnICORNN"] = f"not installed ({err}); pip install torchrecurrent==0.2.5"
    models["nn.LSTM 1 layer"] = Classifier(nn.LSTM(WIDTH, M, num_layers=1))
    models["nn.LSTM 2 layers"] = Classifier(nn.LSTM(WIDTH, M, num_layers=2))
    return models


def train_step(model: nn.Module, u, target) -> float:
    """Wall time of one forward + backward (cross-entropy on the head's output)."""
    model.zero_grad(set_to_none=True)
    t0 = time.perf_counter()
    F.cross_entropy(model(u), target).backward()
    return time.perf_counter() - t0


def end_to_end(repeats: int, slow_repeats: int) -> dict:
    """Interleaved rounds: each round times one step of every model still taking part."""
    torch.manual_seed(0)
    u = torch.randn(N, B, WIDTH)
    target = torch.randint(0, CLASSES, (B,))
    models = build_models()
    live = {name: m for name, m in models.items() if not isinstance(m, str)}
    rounds = {name: (repeats if name.startswith("unicornn cpu") else slow_repeats) for name in live}
    for model in live.values():  # warm-up (and numba compilation)
        train_step(model, u, target)
    times: dict[str, list[float]] = {name: [] for name in live}
    fast_times: list[float] = []
    load_during = []
    for r in range(max(rounds.values())):
        for name, model in live.items():
            if r < rounds[name]:
                times[name].append(train_step(model, u, target))
        fast_times.append(times[FAST][-1])
        load_during.append(os.getloadavg()[0])
    rows: dict[str, dict] = {}
    for name, model in models.items():
        if isinstance(model, str):
            rows[name] = {"skipped": model}
            print(f"{name:34s} skipped: {model}")
            continue
        ts = times[name]
        paired = [t / f for t, f in zip(ts, fast_times, strict=False)]
        rows[name] = {
            "median_s": statistics.median(ts),
            "runs_s": ts,
            "ratio_to_cpu_backend": statistics.median(paired),
        }
        print(
            f"{name:34s} {statistics.median(ts) * 1e3:9.1f} ms  ({len(ts)} runs)  "
            f"x{rows[name]['ratio_to_cpu_backend']:.2f} of {FAST} (median of per-round ratios)"
        )
    return {"rows": rows, "load_average_1min_during": load_during}


def _median_time(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def copy_bandwidth(nbytes: int = 1 << 26, repeats: int = 15) -> float:
    """Bytes moved per second (read + write) by ``Tensor.copy_`` of ``nbytes`` float32 data."""
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    return 2 * nbytes / _median_time(lambda: dst.copy_(src), repeats)


def step_floor(n=N, b=B, m=M, width=WIDTH, layers=LAYERS, repeats=15) -> dict:
    """A floor for one float32 forward + backward of the UnICORNN stack at this shape (head excluded).

    ``matmul_s``: the measured time of the projections' matmuls -- forward ``u V^T`` for every layer,
    backward ``grad_x^T u`` (dL/dV) for every layer and ``grad_x V`` (dL/du) for every layer but the first,
    whose input needs no gradient. ``memory_s``: one pass over every (n, b, m) tensor the scan kernels
    must touch, at the measured copy bandwidth: forward reads x and writes y; backward reads x, the stored y
    and (below the top layer) grad_y, and writes grad_x. The bias is read inside the kernels, so no matmul
    writes ``x + b``. ``floor_s``: their sum, for a loss that reads the top layer's final state;
    ``floor_output_readout_s``: one pass more, the top layer's grad_y, when its output sequence reaches the
    loss (a head on ``output[-1]``).
    """
    g = torch.Generator().manual_seed(0)
    rows = n * b
    matmul = 0.0
    for k in range(layers):
        fan_in = width if k == 0 else m
        inp = torch.randn(rows, fan_in, generator=g)
        weight = torch.randn(m, fan_in, generator=g)
        grad = torch.randn(rows, m, generator=g)
        matmul += _median_time(lambda i=inp, w=weight: F.linear(i, w), repeats)
        matmul += _median_time(lambda i=inp, gr=grad: gr.t() @ i, repeats)
        if k > 0:
            matmul += _median_time(lambda gr=grad, w=weight: gr @ w, repeats)
    passes = 2 * layers + 3 * layers + (layers - 1)
    tensor_bytes = 4 * n * b * m
    bandwidth = copy_bandwidth()
    memory = passes * tensor_bytes / bandwidth
    return {
        "matmul_s": matmul,
        "memory_passes": passes,
        "tensor_bytes": tensor_bytes,
        "copy_bandwidth_bytes_per_s": bandwidth,
        "memory_s": memory,
        "floor_s": matmul + memory,
        "floor_output_readout_s": matmul + memory * (passes + 1) / passes,
    }


def scan_in_step(repeats: int) -> dict:
    """The recurrence at the step's shape through unicornn_scan and autograd (float32, 1 layer's worth):
    forward; backward with an upstream gradient of the sequence; backward with the final state only."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, B, M, generator=g).requires_grad_()
    w = torch.rand(M, generator=g).requires_grad_()
    c = (torch.rand(M, generator=g) * 0.2 - 0.1).requires_grad_()
    bias = torch.zeros(M).requires_grad_()
    gy = torch.randn(N, B, M, generator=g)
    gyN = torch.randn(B, M, generator=g)
    leaves = (x, w, c, bias)

    def forward():
        return unicornn_scan(x, w, c, DT, ALPHA, backend="cpu", bias=bias)

    fwd, bwd_seq, bwd_final = [], [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        y, yN, _ = forward()
        t1 = time.perf_counter()
        torch.autograd.grad(y, leaves, gy)
        t2 = time.perf_counter()
        _, yN, _ = forward()
        t3 = time.perf_counter()
        torch.autograd.grad(yN, leaves, gyN)
        t4 = time.perf_counter()
        if i:  # the first round warms up
            fwd += [t1 - t0, t3 - t2]
            bwd_seq.append(t2 - t1)
            bwd_final.append(t4 - t3)
    out = {
        "forward_s": statistics.median(fwd),
        "backward_with_grad_y_s": statistics.median(bwd_seq),
        "backward_final_state_only_s": statistics.median(bwd_final),
    }
    out["backward_to_forward_with_grad_y"] = out["backward_with_grad_y_s"] / out["forward_s"]
    out["backward_to_forward_final_state_only"] = out["backward_final_state_only_s"] / out["forward_s"]
    print(
        f"scan at N={N}, B={B}, M={M} (op + autograd): forward {out['forward_s'] * 1e3:.1f} ms, backward "
        f"{out['backward_with_grad_y_s'] * 1e3:.1f} ms with grad_y "
        f"({out['backward_to_forward_with_grad_y']:.2f}x), {out['backward_final_state_only_s'] * 1e3:.1f} ms "
        f"final state only ({out['backward_to_forward_final_state_only']:.2f}x)"
    )
    return out


def recurrence_alone(repeats: int) -> dict:
    """Unit-steps per second of the fused kernels, float32, N=1000."""
    out = {}
    Nr = 1000
    for units in (4096, 65536):
        Br = units // M
        g = torch.Generator().manual_seed(units)
        x = torch.randn(Nr, Br, M, generator=g)
        w = torch.rand(M, generator=g)
        c = torch.rand(M, generator=g) * 0.2 - 0.1
        y0 = torch.zeros(Br, M)
        gy = torch.randn(Nr, Br, M, generator=g)
        fwd, bwd = [], []
        y, yN, zN = cpu_ops.scan_forward(x, w, c, DT, ALPHA, y0, y0)
        cpu_ops.scan_backward(gy, y0, y0, y, x, w, c, DT, ALPHA, y0, zN)
        for _ in range(repeats):
            t0 = time.perf_counter()
            y, yN, zN = cpu_ops.scan_forward(x, w, c, DT, ALPHA, y0, y0)
            t1 = time.perf_counter()
            cpu_ops.scan_backward(gy, y0, y0, y, x, w, c, DT, ALPHA, y0, zN)
            t2 = time.perf_counter()
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
        # Bare kernels into preallocated arrays (no tensor allocation / page faults).
        U = Br * M
        xa, ya, ga = x.numpy().reshape(Nr, U), y.numpy().reshape(Nr, U), gy.numpy().reshape(Nr, U)
        z = np.zeros(U, np.float32)
        wa, ca = w.numpy(), c.numpy()
        fargs = (xa, wa, ca, DT, ALPHA, z, z, None, np.empty_like(xa), np.empty(U, np.float32))
        fargs += (np.empty(U, np.float32),)
        bargs = (ga, z, z, ya, xa, wa, ca, DT, ALPHA, z, zN.numpy().reshape(U), None, np.empty_like(xa))
        bargs += (np.empty(U, np.float32), np.empty(U, np.float32), np.empty(U), np.empty(U), np.empty(U))
        kf, kb = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            cpu_ops._run(cpu_ops._forward_range, fargs, U, Nr)
            t1 = time.perf_counter()
            cpu_ops._run(cpu_ops._backward_range, bargs, U, Nr)
            t2 = time.perf_counter()
            kf.append(t1 - t0)
            kb.append(t2 - t1)
        steps = Nr * U
        row = {
            "forward_unit_steps_per_s": steps / statistics.median(fwd),
            "backward_unit_steps_per_s": steps / statistics.median(bwd),
            "kernel_forward_unit_steps_per_s": steps / statistics.median(kf),
            "kernel_backward_unit_steps_per_s": steps / statistics.median(kb),
        }
        out[str(units)] = row
        print(
            f"B*M={units:6d}: op forward {row['forward_unit_steps_per_s']:.3g}, backward "
            f"{row['backward_unit_steps_per_s']:.3g} unit-steps/s; bare kernels forward "
            f"{row['kernel_forward_unit_steps_per_s']:.3g}, backward {row['kernel_backward_unit_steps_per_s']:.3g}"
        )
    return out


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import torch
from unicornn import unicornn_scan
t1 = time.perf_counter()
x = torch.randn(50, 4, 8, requires_grad=True)
w = torch.rand(8, requires_grad=True)
c = torch.zeros(8, requires_grad=True)
y, _, _ = unicornn_scan(x, w, c, 0.19, 30.65, backend="cpu")
y.sum().backward()
t2 = time.perf_counter()
print(f"{t1 - t0:.3f} {t2 - t1:.3f}")
"""


def first_call() -> dict:
    """Import time and first float32 forward+backward in fresh processes: empty cache, then filled cache."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT / "src"))
        out = {}
        for label in ("empty_cache", "filled_cache"):
            proc = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(_FIRST_CALL)], env=env, capture_output=True, text=True
            )
            if proc.returncode != 0:
                out[label] = {"error": proc.stderr[-2000:]}
                continue
            imp, call = (float(v) for v in proc.stdout.split())
            out[label] = {"import_torch_and_unicornn_s": imp, "first_forward_backward_s": call}
            print(f"first call, {label}: import {imp:.2f} s, first forward+backward {call:.2f} s")
    return out


def machine() -> dict:
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numba": numba.__version__,
        "numpy": np.__version__,
        "unicornn": unicornn.__version__,
        "torch_threads": torch.get_num_threads(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=9, help="rounds of the fast models (default 9)")
    parser.add_argument("--slow-repeats", type=int, default=3, help="rounds of the slow peers (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_speed.json")
    parser.add_argument("--skip-first-call", action="store_true", help="skip the compile-time measurement")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(json.dumps(info))
    load_before = os.getloadavg()
    print(f"load average before: {load_before}")
    print(
        f"\nEnd to end: {LAYERS} layers, N={N}, B={B}, M={M}, input width {WIDTH}, {CLASSES}-class head, fwd+bwd"
    )
    e2e = end_to_end(args.repeats, args.slow_repeats)
    rows = e2e["rows"]
    floor = step_floor()
    print(
        f"\nfloor of the step: matmuls {floor['matmul_s'] * 1e3:.1f} ms + {floor['memory_passes']} passes of "
        f"{floor['tensor_bytes'] / 2**20:.1f} MiB at {floor['copy_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s "
        f"({floor['memory_s'] * 1e3:.1f} ms) = {floor['floor_s'] * 1e3:.1f} ms"
    )
    print("\n| model | median fwd+bwd | x slower than unicornn cpu |\n| --- | --- | --- |")
    for name, row in rows.items():
        if "median_s" in row:
            print(f"| {name} | {row['median_s'] * 1e3:.1f} ms | {row['ratio_to_cpu_backend']:.2f} |")
    print(f"| floor (matmuls + one pass per tensor) | {floor['floor_s'] * 1e3:.1f} ms | |")
    print(f"| floor, head on output[-1] | {floor['floor_output_readout_s'] * 1e3:.1f} ms | |")
    print("\nThe recurrence in the step:")
    scan = scan_in_step(args.repeats)
    print("\nRecurrence alone (float32, N=1000):")
    rec = recurrence_alone(args.repeats)
    first = {} if args.skip_first_call else first_call()
    result = {
        "machine": info,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "settings": {"N": N, "B": B, "M": M, "width": WIDTH, "classes": CLASSES, "layers": LAYERS},
        "dt": DT,
        "alpha": ALPHA,
        "end_to_end": rows,
        "load_average_1min_during_end_to_end": e2e["load_average_1min_during"],
        "floor": floor,
        "scan_in_step_float32": scan,
        "recurrence_float32": rec,
        "first_call": first,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
