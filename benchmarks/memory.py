"""Peak training memory and time of one training step: memory="standard" vs memory="lean".

    python benchmarks/memory.py [--lengths 4096 16384 65536 131072] [--device cpu|cuda] [--repeats 2]
                                [--allocator-variant] [--modes standard lean lean+seq]

Model: ``UnICORNN(1, 128, num_layers=3, dt=0.05, alpha=1.0)``, batch 16, a loss on the top layer's final state
``y_n[-1]`` (sequence classification). Modes (one row each):

* ``standard`` and ``lean``: ``return_sequence=False``;
* ``lean+seq``: lean with ``return_sequence=True`` (the default), the same loss, so the output sequence and
  autograd's gradient for it are materialised.

Each (mode, N) point runs in a fresh ``python`` process whose environment is this one's without any glibc
allocator variable (``MALLOC_*``, ``GLIBC_TUNABLES``): what a user gets from a plain ``python``. The process
builds the model, makes one 64-step warm-up call (forward + backward), reads its resident memory, then runs
``1 + --repeats`` full-length steps. On CPU the figure is the peak resident memory (VmHWM, reset after the
warm-up; ``ru_maxrss`` where there is no /proc) minus the resident memory after the warm-up, i.e. it includes the input and every tensor of the step; on CUDA it is
``torch.cuda.max_memory_allocated`` minus the memory allocated after the warm-up. Time per step is the median
of the ``--repeats`` steps after the first. ``--allocator-variant`` adds, for the lean mode, a column measured
with ``MALLOC_MMAP_THRESHOLD_=65536`` (an allocator setting, for comparison only). The machine's load average
is recorded before and after. Writes ``benchmarks/results/memory.json`` (``memory_cuda.json`` on CUDA) and the
matching ``.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
B, M, LAYERS, D, DT, ALPHA = 16, 128, 3, 1, 0.05, 1.0
WARMUP_STEPS = 64
#: mode -> (memory=..., return_sequence)
MODES = {"standard": ("standard", False), "lean": ("lean", False), "lean+seq": ("lean", True)}
VARIANT = {"MALLOC_MMAP_THRESHOLD_": str(1 << 16)}


def rss_bytes() -> int:
    """Current resident memory of this process (psutil if installed, else /proc/self/status)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read the resident memory of this process")


def reset_peak_rss() -> bool:
    """Reset this process's peak resident memory to its current one (Linux >= 4.0: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory of this process: VmHWM on Linux, else ru_maxrss.

    ``ru_maxrss`` can include the parent's resident memory at fork time (Linux keeps the old memory map's
    peak across exec), VmHWM is the peak of this program's own memory map."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def default_env(extra: dict | None = None) -> dict:
    """This process's environment without glibc allocator settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    env.update(extra or {})
    return env


def worker(mode: str, N: int, device: str, repeats: int, chunk: int) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import torch

    from unicornn import UnICORNN

    memory, return_sequence = MODES[mode]
    torch.manual_seed(0)
    model = UnICORNN(D, M, LAYERS, dt=DT, alpha=ALPHA, memory=memory, checkpoint_every=chunk).to(device)
    x = torch.randn(N, B, D, device=device)

    def step(u):
        _, (y_n, _) = model(u, return_sequence=return_sequence)
        y_n[-1].square().mean().backward()
        if device == "cuda":
            torch.cuda.synchronize()

    step(x[:WARMUP_STEPS])  # compiles or loads the kernels without touching the peak of the long sequence
    model.zero_grad()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        reset_peak_rss()
        before = rss_bytes()
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        step(x)
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=False)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = peak_rss_bytes() - before
    return {
        "mode": mode,
        "N": N,
        "peak_bytes": peak,
        "input_bytes": x.numel() * x.element_size(),
        "output_bytes": N * B * M * 4,
        "step_seconds": statistics.median(times[1:]) if repeats else times[0],
        "step_seconds_all": times,
        "backend": model.backend,
        "checkpoint_every": chunk,
    }


def measure(mode: str, N: int, args, env: dict) -> dict:
    """Run one point in a fresh process with environment ``env``."""
    cmd = [sys.executable, __file__, "--worker", mode, str(N), "--device", args.device,
           "--repeats", str(args.repeats), "--checkpoint-every", str(args.checkpoint_every)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        print(done.stderr[-2000:], file=sys.stderr)
        return {"mode": mode, "N": N, "error": done.stderr[-500:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the first full step")
    parser.add_argument("--checkpoint-every", type=int, default=2048, help="lean mode chunk length K")
    parser.add_argument("--allocator-variant", action="store_true",
                        help=f"also measure lean with {VARIANT} (an allocator setting, for comparison)")  # fmt: skip
    parser.add_argument(
        "--modes", nargs="+", choices=list(MODES), default=list(MODES), help="rows to measure"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and the plot")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        sys.path.insert(0, str(SRC))
        mode, N = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(mode, N, args.device, args.repeats, args.checkpoint_every)))
        return

    import torch

    load_before = os.getloadavg()
    rows = []
    for N in args.lengths:
        for mode in args.modes:
            print(f"measuring {mode:9s} N={N:7d} ...", flush=True)
            rows.append(measure(mode, N, args, default_env()))
        if args.allocator_variant:
            print(f"measuring lean      N={N:7d} with {VARIANT} ...", flush=True)
            row = measure("lean", N, args, default_env(VARIANT))
            row["variant"] = VARIANT
            rows.append(row)
    load_after = os.getloadavg()

    ok = {(r["mode"], r["N"], "variant" in r): r for r in rows if "error" not in r}
    mib = 2**20
    head = (f"{'N':>8} {'standard MiB':>13} {'lean MiB':>9} {'lean/std':>9} {'lean+seq MiB':>13} "
            f"{'lean mmap64K MiB':>17} {'std s/step':>11} {'lean s/step':>12} {'time ratio':>11}")  # fmt: skip
    print("\n" + head)
    summary = []
    for N in args.lengths:
        s, lean = ok.get(("standard", N, False)), ok.get(("lean", N, False))
        seq, var = ok.get(("lean+seq", N, False)), ok.get(("lean", N, True))
        if not (s and lean):
            continue
        line = {
            "N": N,
            "standard_MiB": s["peak_bytes"] / mib,
            "lean_MiB": lean["peak_bytes"] / mib,
            "memory_ratio": lean["peak_bytes"] / s["peak_bytes"],
            "lean_seq_MiB": seq["peak_bytes"] / mib if seq else None,
            "output_MiB": lean["output_bytes"] / mib,
            "lean_mmap_threshold_64K_MiB": var["peak_bytes"] / mib if var else None,
            "standard_s": s["step_seconds"],
            "lean_s": lean["step_seconds"],
            "time_ratio": lean["step_seconds"] / s["step_seconds"],
        }
        summary.append(line)

        def fmt(v, width):
            return f"{'-':>{width}}" if v is None else f"{v:>{width}.1f}"

        print(f"{N:>8} {line['standard_MiB']:>13.1f} {line['lean_MiB']:>9.1f} {line['memory_ratio']:>9.3f} "
              f"{fmt(line['lean_seq_MiB'], 13)} {fmt(line['lean_mmap_threshold_64K_MiB'], 17)} "
              f"{line['standard_s']:>11.2f} {line['lean_s']:>12.2f} {line['time_ratio']:>11.2f}")  # fmt: skip
    lean_by_n = {N: r["peak_bytes"] for (mode, N, var), r in ok.items() if mode == "lean" and not var}
    growth = None
    if 16384 in lean_by_n and 131072 in lean_by_n:
        growth = lean_by_n[131072] / lean_by_n[16384] - 1.0
        print(f"\nlean peak growth from N=16,384 to N=131,072: {100 * growth:.1f}%")
    print(f"load average (1, 5, 15 min): before {load_before}, after {load_after}")

    args.out.mkdir(parents=True, exist_ok=True)
    name = "memory" if args.device == "cpu" else f"memory_{args.device}"
    report = {
        "benchmark": "memory",
        "setting": {"batch": B, "hidden": M, "layers": LAYERS, "input_width": D, "dt": DT, "alpha": ALPHA,
                    "loss": "y_n[-1].square().mean()", "warmup_steps": WARMUP_STEPS,
                    "checkpoint_every": args.checkpoint_every, "device": args.device,
                    "environment_variables": "none of MALLOC_*, GLIBC_TUNABLES (except the variant rows)",
                    "measure": "peak RSS (VmHWM reset after the warm-up) minus RSS after the warm-up call (fresh process per point)"
                    if args.device == "cpu" else "max_memory_allocated minus allocated after the warm-up call"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count(),
                        "load_average_before": load_before, "load_average_after": load_after},
        "rows": rows,
        "summary": summary,
        "lean_growth_16k_to_131k": growth,
    }  # fmt: skip
    tmp = args.out / f"{name}.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out / f"{name}.json")
    _plot(summary, args.out / f"{name}.png")
    print(f"wrote {args.out / name}.json and {name}.png")


def _plot(summary: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    if not summary:
        return
    Ns = [r["N"] for r in summary]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.loglog(Ns, [r["standard_MiB"] for r in summary], "o-", label='memory="standard"')
    ax.loglog(Ns, [r["lean_MiB"] for r in summary], "s-", label='memory="lean"')
    seq = [(r["N"], r["lean_seq_MiB"]) for r in summary if r["lean_seq_MiB"] is not None]
    if seq:
        ax.loglog(*zip(*seq), "^-", label="lean, return_sequence=True")
    var = [(r["N"], r["lean_mmap_threshold_64K_MiB"]) for r in summary if r["lean_mmap_threshold_64K_MiB"]]
    if var:
        ax.loglog(*zip(*var), "x--", label="lean, MALLOC_MMAP_THRESHOLD_=65536")
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("extra peak memory of one step (MiB)")
    ax.set_title(f"UnICORNN {LAYERS} layers, M={M}, B={B}: one training step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
