"""CPU speed of the fused backend, side by side with what a CPU user can run today.

End to end: forward + backward of a 2-layer model at N=1000, B=32, M=128, input width 1, a 10-class linear head
on the last step (cross-entropy), for

* ``UnICORNN(backend="cpu")`` -- the fused numba kernels,
* ``UnICORNN(backend="reference")`` -- the project's pure-PyTorch loop,
* ``torchrecurrent.UnICORNN`` (PyPI ``torchrecurrent==0.2.5``) with the same sizes, dt and alpha,
* ``torch.nn.LSTM`` with hidden 128, 1 and 2 layers.

All in one process, medians of several runs after a warm-up (the slow peers get fewer runs). Then the
recurrence alone: unit-steps per second of the fused kernels, forward and backward, float32, at B*M = 4,096
and 65,536 (N=1000), through the op (including allocation of the outputs) and for the bare kernels writing
into preallocated arrays. Finally the first-call cost: one float32 forward+backward in a fresh process with an
empty numba cache (compilation), and again with the cache filled.

Usage: ``python benchmarks/cpu_speed.py [--repeats 7] [--threads T] [--out benchmarks/results/cpu_speed.json]``.
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numba  # noqa: E402

import unicornn  # noqa: E402
from unicornn import UnICORNN  # noqa: E402
from unicornn.ops import cpu as cpu_ops  # noqa: E402

N, B, M, WIDTH, CLASSES, LAYERS = 1000, 32, 128, 1, 10, 2
DT, ALPHA = 0.19, 30.65  # the paper's psMNIST setting


class Classifier(nn.Module):
    """A sequence model followed by a linear head on the last step."""

    def __init__(self, rnn: nn.Module, hidden: int = M):
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, CLASSES)

    def forward(self, u):
        out, _ = self.rnn(u)
        return self.head(out[-1])


def build_models() -> dict[str, nn.Module | str]:
    models: dict[str, nn.Module | str] = {
        "unicornn cpu": Classifier(UnICORNN(WIDTH, M, num_layers=LAYERS, dt=DT, alpha=ALPHA, backend="cpu")),
        "unicornn reference": Classifier(
            UnICORNN(WIDTH, M, num_layers=LAYERS, dt=DT, alpha=ALPHA, backend="reference")
        ),
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


def time_train_step(model: nn.Module, u, target, repeats: int, warmup: int = 1) -> list[float]:
    """Wall times of forward + backward (cross-entropy on the head's output)."""
    loss_fn = nn.CrossEntropyLoss()
    times = []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = loss_fn(model(u), target)
        loss.backward()
        elapsed = time.perf_counter() - t0
        if i >= warmup:
            times.append(elapsed)
    return times


def end_to_end(repeats: int, slow_repeats: int) -> dict:
    torch.manual_seed(0)
    u = torch.randn(N, B, WIDTH)
    target = torch.randint(0, CLASSES, (B,))
    models = build_models()
    rows = {}
    for name, model in models.items():
        if isinstance(model, str):
            rows[name] = {"skipped": model}
            print(f"{name:26s} skipped: {model}")
            continue
        fast = name == "unicornn cpu"
        times = time_train_step(model, u, target, repeats if fast else slow_repeats)
        rows[name] = {"median_s": statistics.median(times), "runs_s": times}
        print(f"{name:26s} {statistics.median(times) * 1e3:10.1f} ms  ({len(times)} runs)")
    base = rows["unicornn cpu"]["median_s"]
    for row in rows.values():
        if "median_s" in row:
            row["ratio_to_cpu_backend"] = row["median_s"] / base
    return rows


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
        gxa = np.empty_like(xa)
        z = np.zeros(U, np.float32)
        fargs = (xa, w.numpy(), c.numpy(), DT, ALPHA, z, z, np.empty_like(xa), np.empty(U, np.float32))
        fargs += (np.empty(U, np.float32),)
        bargs = (ga, z, z, ya, xa, w.numpy(), c.numpy(), DT, ALPHA, z, zN.numpy().reshape(U), gxa)
        bargs += (np.empty(U, np.float32), np.empty(U, np.float32), np.empty(U), np.empty(U))
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
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of the fast models (default 7)")
    parser.add_argument(
        "--slow-repeats", type=int, default=3, help="timed runs of the slow peers (default 3)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_speed.json")
    parser.add_argument("--skip-first-call", action="store_true", help="skip the compile-time measurement")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    print(json.dumps(info))
    load_before = os.getloadavg()
    print(
        f"\nEnd to end: {LAYERS} layers, N={N}, B={B}, M={M}, input width {WIDTH}, {CLASSES}-class head, fwd+bwd"
    )
    e2e = end_to_end(args.repeats, args.slow_repeats)
    print("\n| model | median fwd+bwd | x slower than unicornn cpu |\n| --- | --- | --- |")
    for name, row in e2e.items():
        if "median_s" in row:
            print(f"| {name} | {row['median_s'] * 1e3:.1f} ms | {row['ratio_to_cpu_backend']:.1f} |")
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
        "end_to_end": e2e,
        "recurrence_float32": rec,
        "first_call": first,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
