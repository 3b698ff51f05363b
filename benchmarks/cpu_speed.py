"""CPU speed of the fused backend, side by side with what a CPU user can run today, and its floor.

End to end, through the package benchmark (:func:`unicornn.bench.run_speed`, ``unicornn bench speed``): forward
+ backward of a 2-layer model at N=1000, B=32, M=128, input width 1, a 10-class linear head on the last step
(cross-entropy), for

* ``UnICORNN(backend="cpu")`` with the head on ``y_n[-1]`` and ``return_sequence=False`` (the way to classify
  sequences, docs/api.md; model ``unicornn_final``), and the same model with the head on ``output[-1]``,
* ``UnICORNN(backend="reference")`` -- the project's pure-PyTorch loop (head on ``output[-1]``),
* ``torchrecurrent.UnICORNN`` (PyPI ``torchrecurrent==0.2.5``) with the same sizes, dt and alpha,
* ``torch.nn.LSTM`` with hidden 128, 1 and 2 layers,
* the floor of the step (:func:`unicornn.bench.speed.step_floor`, head on the final state).

The timing method is the package's: interleaved rounds (the slow peers take part in fewer), medians, and for
each model the median over rounds of its time divided by the ``cpu`` model's time in the same round; load
average before, after every round and after. Script-only sections follow: the recurrence in the step (the
scan's backward/forward ratio, with and without an upstream gradient of the sequence), the recurrence alone
(unit-steps per second at B*M = 4,096 and 65,536, through the op and the bare kernels), and the first-call
cost (a fresh process with an empty numba cache, then with the cache filled).

Usage: ``python benchmarks/cpu_speed.py [--repeats 9] [--threads T] [--out benchmarks/results/cpu_speed.json]``.
Needs the ``[bench]`` extra (``torchrecurrent``); a missing peer is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn import unicornn_scan  # noqa: E402
from unicornn.bench import run_speed  # noqa: E402
from unicornn.bench.speed import ALPHA, CLASSES, DT  # noqa: E402
from unicornn.ops import cpu as cpu_ops  # noqa: E402

N, B, M, WIDTH, LAYERS = 1000, 32, 128, 1, 2
#: package model name -> the label of this benchmark's table and JSON (``end_to_end``)
PEERS = {
    "unicornn_final": "unicornn cpu",
    "unicornn": "unicornn cpu, head on output[-1]",
    "unicornn_reference": "unicornn reference",
    "torchrecurrent": "torchrecurrent.UnICORNN",
    "lstm:1": "nn.LSTM 1 layer",
    "lstm:2": "nn.LSTM 2 layers",
}
SLOW = ("unicornn_reference", "torchrecurrent", "lstm")


def end_to_end(repeats: int, slow_repeats: int, threads: int | None) -> dict:
    """The package benchmark at this script's shape, with the floor; rows relabelled by :data:`PEERS`."""
    result = run_speed([N], tuple(PEERS), B, M, LAYERS, WIDTH, "cpu", repeats, slow_repeats, warmup=1,
                       threads=threads, floor=True, slow=SLOW, ratio_to="unicornn_final")  # fmt: skip
    rows: dict[str, dict] = {}
    floor: dict = {}
    for row in result["rows"]:
        if row["model"] == "floor":
            floor = {k: v for k, v in row.items() if k not in ("N", "model", "median_s")}
        elif "skipped" in row:
            rows[PEERS[row["model"]]] = {"skipped": row["skipped"]}
        else:
            rows[PEERS[row["model"]]] = {"median_s": row["median_s"], "runs_s": row["runs_s"],
                                         "ratio_to_cpu_backend": row["ratio_to_unicornn"]}  # fmt: skip
    return {"result": result, "rows": rows, "floor": floor}


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
    print(
        f"\nEnd to end: {LAYERS} layers, N={N}, B={B}, M={M}, input width {WIDTH}, {CLASSES}-class head, fwd+bwd"
    )
    e2e = end_to_end(args.repeats, args.slow_repeats, args.threads)
    result, rows, floor = e2e["result"], e2e["rows"], e2e["floor"]
    print(json.dumps(result["machine"]))
    print(f"load average before {result['load_average_before']}, after {result['load_average_after']}")
    print("\n| model | median fwd+bwd | x slower than unicornn cpu (median of per-round ratios) |")
    print("| --- | --- | --- |")
    for name, row in rows.items():
        if "median_s" in row:
            print(f"| {name} | {row['median_s'] * 1e3:.1f} ms | {row['ratio_to_cpu_backend']:.2f} |")
        else:
            print(f"| {name} | skipped: {row['skipped']} | |")
    print(
        f"| floor: matmuls {floor['matmul_s'] * 1e3:.1f} ms + {floor['memory_passes']} passes of "
        f"{floor['tensor_bytes'] / 2**20:.1f} MiB at {floor['bandwidth_GBps']:.1f} GB/s "
        f"({floor['memory_s'] * 1e3:.1f} ms) | {floor['floor_s'] * 1e3:.1f} ms | {floor['ratio_to_unicornn']:.2f} |"
    )
    print(f"| floor, head on output[-1] | {floor['floor_output_readout_s'] * 1e3:.1f} ms | |")
    print("\nThe recurrence in the step:")
    scan = scan_in_step(args.repeats)
    print("\nRecurrence alone (float32, N=1000):")
    rec = recurrence_alone(args.repeats)
    first = {} if args.skip_first_call else first_call()
    out = {
        "machine": result["machine"],
        "load_average_before": result["load_average_before"],
        "load_average_after": os.getloadavg(),
        "settings": {
            "N": N,
            "B": B,
            "M": M,
            "width": WIDTH,
            "classes": CLASSES,
            "layers": LAYERS,
            "speed": result["settings"],
        },  # fmt: skip
        "dt": DT,
        "alpha": ALPHA,
        "end_to_end": rows,
        "load_average_1min_during_end_to_end": result["load_average_1min_during"],
        "load_average_after_end_to_end": result["load_average_after"],
        "floor": floor,
        "scan_in_step_float32": scan,
        "recurrence_float32": rec,
        "first_call": first,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
