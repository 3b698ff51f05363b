"""Training steps of two batch sizes in turn, in one process: page faults and time per step of each.

A training loop often meets more than one shape: a smaller last batch of an epoch, another evaluation batch size,
bucketed sequence lengths. The CPU backend keeps freed blocks for reuse (``unicornn.ops.cpu.keep_freed_blocks``);
this benchmark checks that it does so when a smaller shape comes first. Each configuration runs in a fresh
process (glibc's malloc settings are process-wide): the package's default, and glibc's own
(``UNICORNN_KEEP_FREED_BLOCKS=0``). The model is the speed benchmark's ``unicornn`` (N=1000, hidden 128, 2
layers, input width 1, head on ``output[-1]``); batches of ``--small`` and ``--large`` sequences alternate,
the small one first; the first two rounds are not counted.

Usage: ``python benchmarks/cpu_varying_shapes.py [--rounds 12] [--threads 2]
[--out benchmarks/results/cpu_varying_shapes.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn.bench import machine_info  # noqa: E402
from unicornn.bench.common import load_average  # noqa: E402
from unicornn.bench.speed import _cpu_problem, _time_step  # noqa: E402
from unicornn.ops.cpu import KEEP_FREED_BLOCKS_ENV  # noqa: E402
from unicornn.plotting import write_json  # noqa: E402

CONFIGURATIONS = {"package default": "1", "glibc defaults": "0"}


def _alternate(small: int, large: int, rounds: int, threads: int) -> dict:
    """This process: ``rounds`` rounds of one step at each batch size (small first); per size the page faults
    and seconds of every counted step (rounds after the first two)."""
    torch.set_num_threads(threads)
    cpu = torch.device("cpu")
    problems = {B: _cpu_problem("unicornn", 1000, B, 128, 2, 1, seed=0) for B in (small, large)}
    faults: dict[int, list[int]] = {B: [] for B in problems}
    seconds: dict[int, list[float]] = {B: [] for B in problems}
    for r in range(rounds):
        for B, (model, u, target) in problems.items():
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            elapsed = _time_step(model, u, target, cpu)
            if r >= 2:
                faults[B].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
                seconds[B].append(elapsed)
    return {str(B): {"faults": faults[B], "seconds": seconds[B]} for B in problems}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=8, help="the smaller batch size (default 8)")
    parser.add_argument("--large", type=int, default=32, help="the larger batch size (default 32)")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_varying_shapes.json"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small >= args.large:
        parser.error(f"--small must be below --large, got {args.small} and {args.large}")
    if args.child:
        print(json.dumps(_alternate(args.small, args.large, args.rounds, args.threads)))
        return
    result = {"benchmark": "cpu_varying_shapes", "settings": vars(args) | {"child": None},
              "machine": machine_info("cpu"), "load_average_before": load_average(), "runs": {}}  # fmt: skip
    argv = [sys.executable, __file__, "--child", "--small", str(args.small), "--large", str(args.large),
            "--rounds", str(args.rounds), "--threads", str(args.threads)]  # fmt: skip
    print(
        "| allocator | B | minor faults per step (median, max) | step ms (median) |\n| --- | --- | --- | --- |"
    )
    for name, value in CONFIGURATIONS.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
        env[KEEP_FREED_BLOCKS_ENV] = value
        run = json.loads(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)
        result["runs"][name] = run
        for B, parts in run.items():
            f, s = parts["faults"], parts["seconds"]
            print(
                f"| {name} | {B} | {statistics.median(f):.0f}, {max(f)} | {statistics.median(s) * 1e3:.1f} |"
            )
    result["load_average_after"] = load_average()
    print(f"written: {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
