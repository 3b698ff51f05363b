"""``unicornn train TASK``: train a task with a preset, ``--runs`` seeds, resumable (also under torchrun)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from ..entry import stopping
from . import EXIT_INTERRUPTED, EXIT_TERMINATED, error
from .common import data_root, task_settings
from .options import (
    add_data_dir,
    add_device,
    add_out,
    add_threads,
    nonnegative_float,
    positive_int,
    set_threads,
)


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's stop or time limit) received while training."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


def run(args) -> int:
    from ..training.distributed import init_distributed
    from ..training.run import Requested
    from ..training.seeds import run_group, summary_lines, train_seeds

    task, preset, settings, options, s, o = task_settings(args)
    set_threads(args.threads)
    ctx = init_distributed(args.device)
    out = Path(args.out)
    runs_dir = out / run_group(args.task, settings["model"], preset.config()["model"])  # OUT/TASK[-MODEL]
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None  # stop like Ctrl-C
    try:
        results = train_seeds(
            task,
            settings,
            options,
            out,
            args.runs,
            group=runs_dir.name,
            data_dir=data_root(args.data_dir),
            ctx=ctx,
            resume=args.resume,
            requested=Requested(s, o, args.preset),
            preset=preset.name,
            quiet=args.quiet,
            tensorboard=not args.no_tensorboard,
            progress_every=args.progress_every,
            memory_check=not args.no_memory_check,
        )
    except KeyboardInterrupt as stop:
        stopping()
        what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(stop, _Terminated) else (
            "interrupted", EXIT_INTERRUPTED)  # fmt: skip
        return error(f"{what}; continue with the same command plus --resume (runs in {runs_dir})", code)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        ctx.close()
    if not ctx.is_main:
        return 0
    for line in summary_lines(results, runs_dir, plot=True):
        print(line)
    print(f"runs written to {runs_dir}; summarise them with: unicornn report {runs_dir}")
    return 0


def _settings_epilog() -> str:
    from ..training.presets import TRAIN_KEY_HELP

    w = max(map(len, TRAIN_KEY_HELP))
    lines = ["settings for --set (defaults come from the preset; see `unicornn tasks`):"]
    lines += [f"  {k:<{w}}  {v}" for k, v in TRAIN_KEY_HELP.items()]
    lines += [
        "",
        "task options (e.g. T for the adding problem) are also set with --set; `unicornn tasks` lists them.",
        "a task option with a setting's name (lorenz96's integration step dt) is set as task.NAME (task.dt=0.01).",
        "values: numbers, none, true/false, or a comma list (dt=0.0066,0.205: one dt per layer).",
        "",
        "examples:",
        "  unicornn train adding                              # quick start, a few minutes on a CPU",
        "  unicornn train adding --set T=2000 --set epochs=20",
        "  unicornn train psmnist --preset paper --runs 10 --device cuda",
        "  torchrun --nproc_per_node=4 -m unicornn train psmnist --preset paper",
        "",
        "one process at a time writes a run directory (its .lock); a second one is refused. A killed run",
        "leaves no stale lock: continue it with the same command plus --resume.",
        "",
        "exit codes: 0 done, 2 usage, data, run-directory or file-system error, 3 non-finite loss (last good",
        "checkpoint kept), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, e.g. a batch system's time limit);",
        "the files of the last finished epoch are kept whole: continue with --resume.",
    ]
    return "\n".join(lines)


def add_parser(sub) -> None:
    tr = sub.add_parser(
        "train",
        help="train a task with a preset (the paper's hyper-parameters or a small CPU run)",
        description="Train TASK for --runs seeds into OUT/TASK/seed-K/ (OUT/TASK-MODEL/seed-K/ for a model "
        "other than UnICORNN, e.g. runs/adding-lstm; files: config.json, metrics.jsonl, "
        "checkpoint.pt written every epoch, best.pt, result.json, tensorboard/). Model selection uses the "
        "validation split; the reported test metric is the one at the best validation epoch. Under "
        "`torchrun --nproc_per_node=K -m unicornn train ...` the run uses DistributedDataParallel (NCCL on GPUs, "
        "gloo on CPUs); batch_size stays the global batch and only rank 0 writes files (across nodes, put --out "
        "on a shared filesystem so that --resume finds the checkpoint everywhere).",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tr.add_argument("task", metavar="TASK", help="task name (`unicornn tasks` lists them)")
    tr.add_argument(
        "--preset",
        metavar="NAME",
        help="hyper-parameter preset: 'paper' (the paper's values, Table 6 / Appendix A) or 'small' "
        "(a few minutes on a CPU); some tasks have more (e.g. psmnist paper-128). Default: 'small' for "
        "adding, 'paper' otherwise",
    )
    tr.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one setting or task option (repeatable); see the list below",
    )
    tr.add_argument("--runs", type=positive_int, default=1, metavar="K",
                    help="train K runs with seeds seed, seed+1, ..., seed+K-1 (default 1)")  # fmt: skip
    add_device(tr, help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default auto)")
    add_data_dir(tr, help="dataset cache (default: $UNICORNN_DATA, else ~/.cache/unicornn)")
    add_out(tr, "runs")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue runs from their last checkpoint with their own settings and task options (the preset "
        "and --set are not needed; finished runs are skipped). --set may change epochs (e.g. to extend a "
        "finished run), eval_batch_size or num_workers; the change is recorded in config.json. Any other "
        "--set must equal the run's value",
    )
    tr.add_argument(
        "--quiet", action="store_true", help="no progress bars or progress lines: one line per epoch"
    )
    tr.add_argument(
        "--progress-every",
        type=nonnegative_float,
        default=60.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (a log file), the progress bars become plain time-stamped lines: "
        "one per epoch and, within an epoch, one at most every SECONDS (default 60)",
    )
    add_threads(tr, help="CPU threads for PyTorch's own operations (default: PyTorch's choice); 1 is often "
                "fastest for small models or on a busy machine")  # fmt: skip
    tr.add_argument("--no-tensorboard", action="store_true",
                    help="do not write TensorBoard events (metrics.jsonl is always written)")  # fmt: skip
    tr.add_argument(
        "--no-memory-check",
        action="store_true",
        help="train even when the estimated memory (model, one batch's activations, data set) exceeds what "
        "the machine or device has; by default such a run is refused before its directory is created",
    )
    tr.set_defaults(func=run)
