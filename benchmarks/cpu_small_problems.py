"""How many threads the fused CPU kernels should use for small problems.

For each (N, B, M) below, one forward + backward of the CPU kernels (:func:`unicornn.ops.cpu.scan_forward` and
:func:`~unicornn.ops.cpu.scan_backward`, float32, with an upstream gradient of the sequence) timed three ways
in interleaved rounds: on one thread, on all of torch's threads, and as the package chooses
(``_MIN_THREAD_WORK`` unit-steps per thread at least), in an order that rotates round by round (a way
that follows a parallel region shares the machine with torch's threads still polling for work). Medians
over rounds; ``rule / best`` is the package's
choice against the faster of the other two. A parallel region whose threads run the compiled body costs a few
microseconds, the kernels' per-range set-up some more, so the shortest or narrowest problems still run faster on
one thread.

Usage: ``python benchmarks/cpu_small_problems.py [--repeats 41] [--threads 2]
[--out benchmarks/results/cpu_small_problems.json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn.bench import machine_info  # noqa: E402
from unicornn.bench.common import load_average  # noqa: E402
from unicornn.ops import cpu  # noqa: E402

#: (N, B, M): short sequences at the benchmark's width, narrow batches, a wide one with few steps.
SHAPES = [(20, 8, 64), (100, 8, 64), (500, 8, 64), (20, 32, 128), (50, 32, 128), (100, 32, 128),
          (200, 32, 128), (100, 7, 100), (300, 7, 100), (1000, 7, 100), (10, 128, 256), (30, 128, 256)]  # fmt: skip
#: ``_MIN_THREAD_WORK`` for each way of running (None: the package's own value).
WAYS = {"one thread": 1 << 62, "all threads": 0, "rule": None}


def _problem(N: int, B: int, M: int):
    g = torch.Generator().manual_seed(0)
    x, gy = torch.randn(N, B, M, generator=g), torch.randn(N, B, M, generator=g)
    w, c, bias = torch.randn(M, generator=g), torch.randn(M, generator=g), torch.randn(M, generator=g)
    y0, z0 = torch.zeros(B, M), torch.zeros(B, M)

    def step() -> None:
        y, yN, zN = cpu.scan_forward(x, w, c, 0.19, 30.65, y0, z0, bias)
        cpu.scan_backward(gy, yN, zN, y, x, w, c, 0.19, 30.65, y0, zN, bias)

    return step


def measure(N: int, B: int, M: int, repeats: int) -> dict:
    """Median seconds of one forward + backward per way of running (see the module docstring)."""
    step, own = _problem(N, B, M), cpu._MIN_THREAD_WORK
    times: dict[str, list[float]] = {way: [] for way in WAYS}
    try:
        ways = list(WAYS.items())
        for r in range(repeats + 1):
            for way, work in ways[r % 3 :] + ways[: r % 3]:  # each way first, second and third in turn
                cpu._MIN_THREAD_WORK = own if work is None else work
                start = time.perf_counter()
                step()
                if r:  # the first round compiles and warms up
                    times[way].append(time.perf_counter() - start)
    finally:
        cpu._MIN_THREAD_WORK = own
    median = {way: statistics.median(v) for way, v in times.items()}
    return {"N": N, "B": B, "M": M, "unit_steps": N * B * M, "rule_threads": len(cpu._ranges(B * M, N)),
            "median_s": median, "rule_to_best": median["rule"] / min(median["one thread"], median["all threads"])}  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=41, help="timed rounds (default 41)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_small_problems.json"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    before = load_average()
    rows = [measure(N, B, M, args.repeats) for N, B, M in SHAPES]
    print(f"forward + backward of the CPU kernels, float32, torch threads {torch.get_num_threads()}\n")
    print("| N, B, M | unit-steps | one thread | all threads | rule (threads) | rule / best |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        m = {k: v * 1e3 for k, v in r["median_s"].items()}
        print(f"| {r['N']}, {r['B']}, {r['M']} | {r['unit_steps']:,} | {m['one thread']:.3f} ms | "
              f"{m['all threads']:.3f} ms | {m['rule']:.3f} ms ({r['rule_threads']}) | {r['rule_to_best']:.2f} |")  # fmt: skip
    result = {"benchmark": "cpu_small_problems", "machine": machine_info("cpu"), "repeats": args.repeats,
              "torch_threads": torch.get_num_threads(), "min_thread_work": cpu._MIN_THREAD_WORK, "rows": rows,
              "load_average_before": before, "load_average_after": load_average()}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
