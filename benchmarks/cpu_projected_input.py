"""When the fused CPU kernels should project a layer's input themselves.

For each input width d and layer width M below (N=1000, B=32), one forward + backward of one layer through
autograd, float32, with an upstream gradient of the whole output sequence, timed two ways in interleaved
rounds (alternating which goes first): ``matmul`` -- ``unicornn_scan(F.linear(u, V), ...)``, the projection
a matmul that writes ``x`` (N, B, M), the kernels reading ``x`` and writing ``grad_x``, a second matmul for
``dL/dV``; ``in kernels`` -- :func:`unicornn.ops.cpu.scan_forward_projected` /
:func:`~unicornn.ops.cpu.scan_backward_projected` behind ``unicornn_scan_projected``, which compute
``x_n = V u_n`` as they go (d multiply-adds per unit and step) and multiply its gradient into ``dL/dV``.
Medians over rounds and the median of the per-round ratios; :func:`unicornn.ops.cpu.max_projected_width` is
set from this table.

Usage: ``python benchmarks/cpu_projected_input.py [--repeats 21] [--threads N]
[--out benchmarks/results/cpu_projected_input.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn.bench import machine_info  # noqa: E402
from unicornn.bench.common import load_average  # noqa: E402
from unicornn.ops import cpu, unicornn_scan  # noqa: E402
from unicornn.ops.scan import _scan_projected_op  # noqa: E402

N, B = 1000, 32
WIDTHS = (1, 2, 3, 4, 6, 8)
HIDDEN = (32, 64, 128, 256)


def _ways(d: int, M: int) -> dict:
    g = torch.Generator().manual_seed(d)
    u, gy = torch.randn(N, B, d, generator=g), torch.randn(N, B, M, generator=g)
    V = (torch.rand(M, d, generator=g) - 0.5).requires_grad_()
    w, c, bias = (torch.rand(M, generator=g).requires_grad_() for _ in range(3))
    y0 = z0 = torch.zeros(B, M)

    def matmul() -> None:
        y, _, _ = unicornn_scan(F.linear(u, V), w, c, 0.19, 30.65, y0, z0, backend="cpu", bias=bias)
        y.backward(gy)

    def in_kernels() -> None:  # the op itself, whatever max_projected_width says
        y, _, _ = _scan_projected_op(u, V, w, c, 0.19, 30.65, y0, z0, bias, "cpu")
        y.backward(gy)

    return {"matmul": matmul, "in kernels": in_kernels}


def measure(d: int, M: int, repeats: int) -> dict:
    ways = _ways(d, M)
    times: dict[str, list[float]] = {way: [] for way in ways}
    order = list(ways)
    for r in range(repeats + 1):
        for way in order[r % 2 :] + order[: r % 2]:
            start = time.perf_counter()
            ways[way]()
            if r:  # the first round compiles and warms up
                times[way].append(time.perf_counter() - start)
    ratio = statistics.median(a / b for a, b in zip(times["in kernels"], times["matmul"], strict=True))
    return {"d": d, "M": M, "median_s": {way: statistics.median(v) for way, v in times.items()},
            "in_kernels_to_matmul": ratio, "projected_by_default": d <= cpu.max_projected_width(M)}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds (default 21)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_projected_input.json"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    before = load_average()
    rows = [measure(d, M, args.repeats) for M in HIDDEN for d in WIDTHS]
    print(f"one layer forward + backward, N={N}, B={B}, float32, torch threads {torch.get_num_threads()}\n")
    print("| M | d | matmul + kernels | projected in the kernels | ratio | projected by default |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m = {k: v * 1e3 for k, v in r["median_s"].items()}
        print(f"| {r['M']} | {r['d']} | {m['matmul']:.2f} ms | {m['in kernels']:.2f} ms | "
              f"{r['in_kernels_to_matmul']:.2f} | {'yes' if r['projected_by_default'] else 'no'} |")  # fmt: skip
    result = {"benchmark": "cpu_projected_input", "machine": machine_info("cpu"), "N": N, "B": B,
              "repeats": args.repeats, "torch_threads": torch.get_num_threads(),
              "rows": rows, "load_average_before": before,
              "load_average_after": load_average()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
