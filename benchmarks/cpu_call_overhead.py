"""The fixed cost of a training step on CPU: how the kernels are called, side by side in one process.

Two ways of calling the kernels cut the fixed cost of a step: eager calls of a fused scan run an autograd
function (``unicornn.ops.scan._EagerScan``) instead of the ``torch.library`` op, whose Python wrappers cost
about 0.1 ms per layer and step (traced and compiled calls still run the op); and the threads of a parallel
region run a compiled body (``unicornn.ops.cpu._region_body``) instead of a Python callback, ~60 us less per
kernel call on two threads. This script times the speed benchmark's training step (``unicornn``: head on
``output[-1]``; ``unicornn_final``: head on ``y_n``; hidden 128, 2 layers, one input feature) in three
variants, alternating step by step on the same model and data: ``op, Python body`` (both as before),
``eager, Python body``, and ``eager, compiled body`` (what a user gets). It reports per shape the median step
time of each and the medians of the per-round ratios to the first. Shapes: N=1 (where the fixed cost is the
whole step; one thread runs the kernels there, so the bodies do not matter), N=1000 at B=8 and at B=32 (the
benchmark shape).

Usage: ``python benchmarks/cpu_call_overhead.py [--threads 2] [--out benchmarks/results/cpu_call_overhead.json]``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn.bench import machine_info  # noqa: E402
from unicornn.bench.common import load_average  # noqa: E402
from unicornn.bench.speed import _cpu_problem, _time_step  # noqa: E402
from unicornn.ops import cpu, scan  # noqa: E402
from unicornn.plotting import write_json  # noqa: E402

#: (N, B, rounds)
SHAPES = ((1, 32, 400), (1000, 8, 40), (1000, 32, 40))
MODELS = ("unicornn", "unicornn_final")


BASE = "op, Python body"


def _variants():
    """name -> (``_traced`` function, kernels run in compiled region bodies) of each variant."""
    eager, compiled = scan._traced, frozenset(cpu._REGION_KERNELS)
    return {BASE: (lambda tensors: True, frozenset()), "eager, Python body": (eager, frozenset()),
            "eager, compiled body": (eager, compiled)}  # fmt: skip


def _use(traced, region_kernels) -> None:
    scan._traced = traced
    cpu._REGION_KERNELS.clear()
    cpu._REGION_KERNELS.update(region_kernels)


def _compare(name: str, N: int, B: int, rounds: int) -> dict:
    dev = torch.device("cpu")
    model, u, target = _cpu_problem(name, N, B, 128, 2, 1, seed=0)
    variants = _variants()
    times: dict[str, list[float]] = {v: [] for v in variants}
    try:
        for r in range(rounds + 2):
            order = list(variants.items()) if r % 2 else list(reversed(variants.items()))
            for label, setting in order:
                _use(*setting)
                elapsed = _time_step(model, u, target, dev)
                if r >= 2:
                    times[label].append(elapsed)
    finally:
        _use(*variants["eager, compiled body"])
    ratios = {
        k: statistics.median([t / b for t, b in zip(v, times[BASE], strict=True)]) for k, v in times.items()
    }
    return {"model": name, "N": N, "batch": B, "rounds": rounds, "seconds": times,
            "median_s": {k: statistics.median(v) for k, v in times.items()},
            "ratio_to_" + BASE.replace(", ", "_").replace(" ", "_"): ratios, "load_average": load_average()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/cpu_call_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"benchmark": "cpu_call_overhead", "settings": vars(args), "machine": machine_info("cpu"),
              "load_average_before": load_average(), "runs": []}  # fmt: skip
    names = list(_variants())
    print("| model | N | B | " + " | ".join(f"{n} ms" for n in names) + " | " +
          " | ".join(f"{n} / {BASE}" for n in names[1:]) + " |")  # fmt: skip
    print("|" + " --- |" * (3 + 2 * len(names) - 1))
    for N, B, rounds in SHAPES:
        for name in MODELS:
            run = _compare(name, N, B, rounds)
            result["runs"].append(run)
            times = " | ".join(f"{run['median_s'][n] * 1e3:.3f}" for n in names)
            ratios = next(v for k, v in run.items() if k.startswith("ratio_to_"))
            print(f"| {name} | {N} | {B} | {times} | " + " | ".join(f"{ratios[n]:.3f}" for n in names[1:]) + " |",
                  flush=True)  # fmt: skip
    result["load_average_after"] = load_average()
    print(f"written: {write_json(result, args.out)}")


if __name__ == "__main__":
    main()
