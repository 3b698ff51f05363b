"""Peak training memory and time of one training step: memory="standard" vs memory="lean" (and an LSTM).

    python benchmarks/memory.py [--lengths 4096 16384 65536 131072] [--device cpu|cuda] [--repeats 2]
                                [--allocator-variant] [--modes standard lean lean+seq lstm]

A thin caller of :func:`unicornn.bench.memory.run_memory` (also ``unicornn bench memory``) in the setting of
the lean-memory claim: ``UnICORNN(1, 128, num_layers=3, dt=0.05, alpha=1.0)``, batch 16, a loss on the top
layer's final state ``y_n[-1]`` (sequence classification). Modes (one row each):

* ``standard`` and ``lean``: ``return_sequence=False``;
* ``lean+seq``: lean with ``return_sequence=True`` (the default), the same loss, so the output sequence and
  autograd's gradient for it are materialised;
* ``lstm``: ``torch.nn.LSTM`` of the same size (not by default: its autograd graph at N=131,072 is ~12 GiB).

On CPU each (mode, N) point runs in a fresh default ``python`` process (no ``MALLOC_*``/``GLIBC_TUNABLES``):
peak resident memory (VmHWM, reset after a 64-step warm-up) minus the resident memory after the warm-up. On
CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated after the warm-up. Time per step is the
median of the ``--repeats`` steps after the first full step. ``--allocator-variant`` adds, for the lean mode,
a row measured with ``MALLOC_MMAP_THRESHOLD_=65536`` (an allocator setting, for comparison only). The load
average is recorded before and after. Writes ``benchmarks/results/memory.json`` (``memory_cuda.json`` on
CUDA), the table as ``.txt`` and the plot as ``.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unicornn.bench.memory import format_table, run_memory, write_memory  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SETTING = {"batch": 16, "hidden": 128, "layers": 3, "input_size": 1, "dt": 0.05, "alpha": 1.0}
MODES = {"standard": "unicornn_standard", "lean": "unicornn_lean", "lean+seq": "unicornn_lean_seq",
         "lstm": "lstm"}  # fmt: skip
VARIANT = {"MALLOC_MMAP_THRESHOLD_": str(1 << 16)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 65536, 131072])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the first full step")
    parser.add_argument("--checkpoint-every", type=int, default=2048, help="lean mode chunk length K")
    parser.add_argument("--allocator-variant", action="store_true",
                        help=f"also measure lean with {VARIANT} (an allocator setting, for comparison)")  # fmt: skip
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=["standard", "lean", "lean+seq"])
    parser.add_argument("--threads", type=int, help="torch threads per measurement (default: torch's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and the plot")
    args = parser.parse_args(argv)
    if args.repeats < 0:
        parser.error(f"--repeats must be >= 0, got {args.repeats}")
    try:
        result = run_memory(
            args.lengths, [MODES[m] for m in args.modes], args.device, **SETTING,
            checkpoint_every=args.checkpoint_every, repeats=1 + args.repeats, threads=args.threads,
            allocator_variant=VARIANT if args.allocator_variant else None, log=lambda line: print(line, flush=True),
        )  # fmt: skip
    except ValueError as err:
        parser.error(str(err))
    stem = "memory" if result["settings"]["device"] == "cpu" else "memory_" + args.device.split(":")[0]
    paths = write_memory(result, args.out, stem)
    print("\n" + format_table(result))
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['model']} N={r['N']} failed:\n{r['error']}", file=sys.stderr)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
