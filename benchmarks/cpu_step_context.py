"""Where the CPU training step loses time between its operations.

At the benchmark shape (N=1000, B=32, hidden 128, 2 layers, input width 1, head on ``output[-1]``) the step's
parts are timed three ways, on the threads of an ordinary process (default settings):

* **in the step vs. repeated**: each fused kernel call (the two forward and two backward scans), the three
  matmuls and the zero-filled gradient autograd builds for ``output[-1]``, called in the step's order without
  autograd (:class:`_Stack`) and timed there, against the same call repeated on the same tensors (medians);
* **after what**: one forward kernel call and one matmul of the layer's size, each timed right after a
  preceding action: itself, the other one, writing 256 MB, or 2 ms idle (medians over repeats);
* **in time chunks**: the same sequence for the whole sequence and in chunks of K steps through all layers
  (each chunk's tensors small enough to stay in cache), alternating.

Usage: ``python benchmarks/cpu_step_context.py [--steps 40] [--repeats 15] [--threads 2]
[--out benchmarks/results/cpu_step_context.json]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn.bench import machine_info  # noqa: E402
from unicornn.bench.common import load_average  # noqa: E402
from unicornn.bench.speed import ALPHA, DT, _median_time  # noqa: E402
from unicornn.ops import cpu  # noqa: E402
from unicornn.plotting import write_json  # noqa: E402

N, B, M, LAYERS = 1000, 32, 128, 2
CPU = torch.device("cpu")


def _median_ms(values) -> float:
    return statistics.median(values) * 1e3


class _Stack:
    """The benchmark step's fused kernel calls and matmuls, called directly (no autograd): forward through both
    layers, the gradient of ``output[-1]`` as autograd builds it (a zero-filled sequence), backward. Each part
    is timed as it runs (``times``); ``K`` runs the whole stack in time chunks of K steps instead."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(2)
        self.u = torch.randn(N, B, 1, generator=g)
        self.V1, self.V2 = torch.randn(M, 1, generator=g) * 0.5, torch.randn(M, M, generator=g) / M**0.5
        self.w1, self.w2 = torch.rand(M, generator=g), torch.rand(M, generator=g)
        self.c1, self.c2 = torch.randn(M, generator=g) * 0.1, torch.randn(M, generator=g) * 0.1
        self.bias = torch.zeros(M)
        self.head = torch.randn(M, generator=g)
        self.times: dict[str, list[float]] = defaultdict(list)
        self.last: dict[str, object] = {}  # part -> a call repeating it on the same tensors (last run)

    def _part(self, name: str, fn):
        start = time.perf_counter()
        out = fn()
        self.times[name].append(time.perf_counter() - start)
        self.last[name] = fn
        return out

    def run(self, K: int | None = None) -> None:
        K, Z, p = K or N, torch.zeros(B, M), self._part
        s1 = s2 = (Z, Z)
        kept = []
        for t0 in range(0, N, K):
            t1 = min(N, t0 + K)
            u = self.u[t0:t1]
            y1, a, z = p("kernel: forward projected", lambda u=u, s1=s1: cpu.scan_forward_projected(
                u, self.V1, self.w1, self.c1, DT, ALPHA, *s1, self.bias))  # fmt: skip
            s1 = (a, z)
            x2 = p("matmul: forward projection", lambda y1=y1: F.linear(y1, self.V2))
            y2, a, z = p("kernel: forward", lambda x2=x2, s2=s2: cpu.scan_forward(
                x2, self.w2, self.c2, DT, ALPHA, *s2, self.bias))  # fmt: skip
            s2 = (a, z)
            kept.append((t0, t1, y1, x2, y2, s1[1], s2[1]))
        grad_top = p("zero-fill for output[-1]", lambda: torch.zeros(N, B, M))
        grad_top[-1] = self.head
        grad_V2 = torch.zeros(M, M)
        a2 = a1 = (Z, Z)
        for t0, t1, y1, x2, y2, z1, z2 in reversed(kept):
            g2 = grad_top[t0:t1]
            gx2, _, _, gy0, gz0, _ = p("kernel: backward", lambda g2=g2, a2=a2, y2=y2, x2=x2, z2=z2: cpu.scan_backward(
                g2, *a2, y2, x2, self.w2, self.c2, DT, ALPHA, Z, z2, self.bias))  # fmt: skip
            a2 = (gy0, gz0)
            flat = gx2.view(-1, M)
            grad_y1 = p("matmul: input gradient", lambda flat=flat: flat @ self.V2)
            p("matmul: weight gradient", lambda flat=flat, y1=y1: grad_V2.addmm_(flat.T, y1.view(-1, M)))
            g1 = grad_y1.view(t1 - t0, B, M)
            out = p("kernel: backward projected", lambda g1=g1, a1=a1, y1=y1, t0=t0, t1=t1, z1=z1:
                    cpu.scan_backward_projected(g1, *a1, y1, self.u[t0:t1], self.V1, self.w1, self.c1, DT, ALPHA,
                                                Z, z1, self.bias))  # fmt: skip
            a1 = (out[4], out[5])


def in_step(steps: int, repeats: int) -> dict:
    """Every part of the step inside the step's sequence and repeated alone on the same tensors (ms,
    medians)."""
    stack = _Stack()
    for _ in range(3):
        stack.run()
    stack.times.clear()
    for _ in range(steps):
        stack.run()
    rows = [{"part": name, "in_step_ms": _median_ms(times), "repeated_ms": _median_time(stack.last[name], CPU, repeats) * 1e3}
            for name, times in stack.times.items()]  # fmt: skip
    whole = sum(row["in_step_ms"] for row in rows)
    return {"rows": rows, "steps": steps, "sum_in_step_ms": whole,
            "sum_repeated_ms": sum(row["repeated_ms"] for row in rows)}  # fmt: skip


def after_what(repeats: int) -> dict:
    """A forward kernel call and a matmul, each right after one of several actions (ms, medians)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, B, M, generator=g)
    w, c, bias = torch.rand(M, generator=g), torch.randn(M, generator=g), torch.randn(M, generator=g)
    zeros = torch.zeros(B, M)
    h, W = torch.randn(N * B, M, generator=g), torch.randn(M, M, generator=g)
    big = torch.empty(64 * 2**20)  # 256 MB
    kernel = lambda: cpu.scan_forward(x, w, c, DT, ALPHA, zeros, zeros, bias)  # noqa: E731
    matmul = lambda: h @ W.T  # noqa: E731
    write = lambda: big.fill_(1.0)  # noqa: E731
    idle = lambda: time.sleep(0.002)  # noqa: E731
    cases = {"forward kernel call": (kernel, {"itself": kernel, "a matmul": matmul, "writing 256 MB": write,
                                              "2 ms idle": idle}),
             "matmul": (matmul, {"itself": matmul, "a kernel call": kernel, "writing 256 MB": write,
                                 "2 ms idle": idle})}  # fmt: skip
    out = {}
    for timed_name, (timed_fn, before) in cases.items():
        row = {}
        for name, first in before.items():
            times = []
            for _ in range(repeats + 1):
                first()
                start = time.perf_counter()
                timed_fn()
                times.append(time.perf_counter() - start)
            row[name] = _median_ms(times[1:])
        out[timed_name] = row
    return out


def in_chunks(repeats: int, chunks=(None, 500, 250, 125)) -> dict:
    """The stack of :class:`_Stack`, whole and in time chunks of K steps through all layers (ms, medians of
    alternating rounds)."""
    stack = _Stack()
    times: dict[str, list[float]] = defaultdict(list)
    for K in chunks:
        stack.run(K)
    for _ in range(repeats):
        for K in chunks:
            start = time.perf_counter()
            stack.run(K)
            times["whole" if K is None else f"chunks of {K}"].append(time.perf_counter() - start)
    return {name: _median_ms(t) for name, t in times.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="training steps timed for the in-step parts")
    parser.add_argument("--repeats", type=int, default=15, help="repeats of every other timing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/cpu_step_context.json")
    args = parser.parse_args(argv)
    for name in ("steps", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = {"benchmark": "cpu_step_context", "shape": {"N": N, "B": B, "hidden": M, "layers": LAYERS},
              "threads": torch.get_num_threads(), "machine": machine_info("cpu"),
              "load_average_before": load_average()}  # fmt: skip
    result["in_step"] = in_step(args.steps, args.repeats)
    result["after_what_ms"] = after_what(args.repeats)
    result["in_chunks_ms"] = in_chunks(args.repeats)
    result["load_average_after"] = load_average()
    table = result["in_step"]
    print(f"benchmark shape, {result['threads']} threads, the step's kernels and matmuls without autograd\n")
    print("| part | in the step's order (ms) | repeated alone (ms) |\n| --- | --- | --- |")
    for row in table["rows"]:
        print(f"| {row['part']} | {row['in_step_ms']:.2f} | {row['repeated_ms']:.2f} |")
    print(f"| sum | {table['sum_in_step_ms']:.1f} | {table['sum_repeated_ms']:.1f} |")
    for timed, row in result["after_what_ms"].items():
        print(f"\n{timed} right after: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row.items()))
    chunks = ", ".join(f"{k} {v:.1f} ms" for k, v in result["in_chunks_ms"].items())
    print(f"\nthe whole sequence and in time chunks: {chunks}")
    print(f"\nwritten: {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
