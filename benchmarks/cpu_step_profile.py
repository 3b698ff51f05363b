"""Where the CPU training step spends its time, and how it scales from 1 to 2 threads.

For the model ``unicornn_final`` (head on the final state) at the benchmark's shape (B=32, hidden 128,
2 layers, N=1000) and at the paper's psMNIST shape (B=120, hidden 256, 3 layers, N=784):

* :func:`unicornn.bench.speed.profile_step` (``torch.profiler``, self time per op, mean over steps): the
  fused kernels' forward and backward, the matmuls, zero-fills, the rest; at 1 and 2 threads;
* :func:`unicornn.bench.speed.thread_scaling`: the step at 1 and 2 threads in alternating rounds, the
  speed-up as the median of per-round ratios.

Usage: ``python benchmarks/cpu_step_profile.py [--steps 5] [--repeats 7]
[--out benchmarks/results/cpu_step_profile.json]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from unicornn.bench import machine_info  # noqa: E402
from unicornn.bench.speed import CPU_SETTING, PSMNIST_SETTING, profile_step, thread_scaling  # noqa: E402

SHAPES = {
    "benchmark": dict(CPU_SETTING, lengths=(1000,)),
    "psmnist": PSMNIST_SETTING,
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="profiled steps per case (default 5)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    parser.add_argument("--repeats", type=int, default=7, help="rounds of the thread scaling (default 7)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cpu_step_profile.json")
    args = parser.parse_args(argv)
    rows = []
    print("| shape | threads | step | scan fwd | scan bwd (x fwd) | matmuls | fills | other | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for label, shape in SHAPES.items():
        for threads in (int(t) for t in args.threads.split(",")):
            r = profile_step("unicornn_final", shape["lengths"][0], shape["batch"], shape["hidden"],
                             shape["layers"], shape["input_size"], steps=args.steps, threads=threads)  # fmt: skip
            r["shape"] = label
            rows.append(r)
            ms = {k: r[k] * 1e3 for k in ("step_s", "scan_forward_s", "scan_backward_s", "matmul_s", "fill_s",
                                          "other_s")}  # fmt: skip
            print(f"| {label} | {threads} | {ms['step_s']:.1f} ms | {ms['scan_forward_s']:.1f} | "
                  f"{ms['scan_backward_s']:.1f} ({r['backward_to_forward']:.2f}) | {ms['matmul_s']:.1f} | "
                  f"{ms['fill_s']:.1f} | {ms['other_s']:.1f} | {r['load_average'][0]:.2f} |")  # fmt: skip
    scaling = []
    counts = tuple(int(t) for t in args.threads.split(","))
    print("\n| shape | " + " | ".join(f"{t} thread(s)" for t in counts) + " | speed-up (paired) | load |")
    print("| --- |" + " --- |" * (len(counts) + 2))
    for label, shape in SHAPES.items():
        r = thread_scaling("unicornn_final", shape["lengths"][0], shape["batch"], shape["hidden"],
                           shape["layers"], shape["input_size"], counts, args.repeats)  # fmt: skip
        r["shape"] = label
        scaling.append(r)
        times = " | ".join(f"{r['median_s'][t] * 1e3:.1f} ms" for t in counts)
        print(f"| {label} | {times} | {r['speedup'][counts[-1]]:.2f} | {r['load_average_before'][0]:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"machine": machine_info("cpu"), "profile": rows, "thread_scaling": scaling}
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
