"""Peak training memory and time of one forward+backward: memory="standard" vs memory="lean".

    python benchmarks/memory.py [--lengths 4096 16384 65536 131072] [--device cpu|cuda] [--repeats 2]

Model: 3-layer UnICORNN, hidden 128, batch 16, input width 6, dt=0.0343, alpha=0 (the EigenWorms setting), a
loss on the top layer's final state (sequence classification), ``return_sequence=False``.

Each (mode, N) point runs in a fresh process. On CPU the peak is the process's peak resident memory
(``ru_maxrss``) minus its resident memory just before the forward pass (model and input already allocated),
with glibc's mmap threshold fixed at 64 KiB so that resident memory follows live tensors (see ``_worker_env``);
on CUDA it is ``torch.cuda.max_memory_allocated`` minus the memory allocated before the forward pass. Either
way the input tensor's own bytes are not counted (reported separately). Time per step is the median over
``--repeats`` steps after one warm-up step. Writes ``benchmarks/results/memory.json`` and ``memory.png``.
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
B, M, LAYERS, D = 16, 128, 3, 6


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _worker_env() -> dict:
    """Environment of a measuring process. glibc raises its mmap threshold after large frees and then keeps
    freed blocks in its heaps, so resident memory stops tracking live tensors; a fixed threshold makes every
    large tensor its own mapping, returned to the system when freed. Applied to both modes alike."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 16))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def worker(mode: str, N: int, device: str, repeats: int, chunk: int) -> dict:
    """One measurement in this (fresh) process; returns a JSON-able dict."""
    import torch

    from unicornn import UnICORNN

    torch.manual_seed(0)
    model = UnICORNN(D, M, LAYERS, dt=0.0343, alpha=0.0, memory=mode, checkpoint_every=chunk).to(device)
    head = torch.nn.Linear(M, 4).to(device)
    x = torch.randn(N, B, D, device=device)
    target = torch.randint(0, 4, (B,), device=device)

    def step():
        _, (y_n, _) = model(x, return_sequence=False)
        loss = torch.nn.functional.cross_entropy(head(y_n[-1]), target)
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()

    # warm-up on a short sequence: compiles kernels without touching the peak of the long one
    _, (y_short, _) = model(x[:64], return_sequence=False)
    y_short.sum().backward()
    model.zero_grad()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = _rss_bytes()
    times = []
    for _ in range(1 + repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=False)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    return {
        "mode": mode,
        "N": N,
        "peak_bytes": peak,
        "input_bytes": x.numel() * x.element_size(),
        "step_seconds": statistics.median(times[1:]) if repeats else times[0],
        "step_seconds_all": times,
        "backend": model.backend,
        "checkpoint_every": chunk,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the warm-up step")
    parser.add_argument("--checkpoint-every", type=int, default=2048, help="lean mode chunk length K")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for memory.json and memory.png")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        mode, N = args.worker[0], int(args.worker[1])
        print(json.dumps(worker(mode, N, args.device, args.repeats, args.checkpoint_every)))
        return

    import torch

    rows = []
    for N in args.lengths:
        for mode in ("standard", "lean"):
            cmd = [sys.executable, __file__, "--worker", mode, str(N), "--device", args.device,
                   "--repeats", str(args.repeats), "--checkpoint-every", str(args.checkpoint_every)]  # fmt: skip
            print(f"measuring {mode:8s} N={N:7d} ...", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True, env=_worker_env())
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                rows.append({"mode": mode, "N": N, "error": done.stderr[-500:]})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))

    ok = {(r["mode"], r["N"]): r for r in rows if "error" not in r}
    print()
    print(
        f"{'N':>8} {'standard MiB':>13} {'lean MiB':>10} {'lean/std':>9} {'std s/step':>11} {'lean s/step':>12} {'time ratio':>11}"
    )
    summary = []
    for N in args.lengths:
        s, lean = ok.get(("standard", N)), ok.get(("lean", N))
        if not (s and lean):
            continue
        line = {
            "N": N,
            "standard_MiB": s["peak_bytes"] / 2**20,
            "lean_MiB": lean["peak_bytes"] / 2**20,
            "memory_ratio": lean["peak_bytes"] / s["peak_bytes"],
            "standard_s": s["step_seconds"],
            "lean_s": lean["step_seconds"],
            "time_ratio": lean["step_seconds"] / s["step_seconds"],
        }
        summary.append(line)
        print(f"{N:>8} {line['standard_MiB']:>13.1f} {line['lean_MiB']:>10.1f} {line['memory_ratio']:>9.3f} "
              f"{line['standard_s']:>11.2f} {line['lean_s']:>12.2f} {line['time_ratio']:>11.2f}")  # fmt: skip
    lean_by_n = {r["N"]: r["peak_bytes"] for (mode, _), r in ok.items() if mode == "lean"}
    growth = None
    if 16384 in lean_by_n and 131072 in lean_by_n:
        growth = lean_by_n[131072] / lean_by_n[16384] - 1.0
        print(f"\nlean peak growth from N=16,384 to N=131,072 (input excluded): {100 * growth:.1f}%")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "memory",
        "setting": {"batch": B, "hidden": M, "layers": LAYERS, "input_width": D, "dt": 0.0343, "alpha": 0.0,
                    "checkpoint_every": args.checkpoint_every, "device": args.device,
                    "measure": "peak RSS minus RSS before the forward (fresh process per point)"
                    if args.device == "cpu" else "max_memory_allocated minus allocated before the forward"},
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpus": os.cpu_count()},
        "rows": rows,
        "summary": summary,
        "lean_growth_16k_to_131k": growth,
    }  # fmt: skip
    tmp = args.out / "memory.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, args.out / "memory.json")
    _plot(summary, args.out / "memory.png")
    print(f"wrote {args.out / 'memory.json'} and memory.png")


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
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.loglog(Ns, [r["standard_MiB"] for r in summary], "o-", label='memory="standard"')
    ax.loglog(Ns, [r["lean_MiB"] for r in summary], "s-", label='memory="lean"')
    ax.set_xlabel("sequence length N")
    ax.set_ylabel("peak training memory (MiB, input excluded)")
    ax.set_title(f"UnICORNN {LAYERS} layers, M={M}, B={B}: one forward+backward")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
