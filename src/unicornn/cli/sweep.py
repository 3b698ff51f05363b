"""``unicornn sweep TASK``: train a grid of settings (every point a normal, resumable run) into one table."""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Sequence
from pathlib import Path

from ..entry import stopping
from ..training.errors import os_error_text
from ..training.progress import Progress
from . import EXIT_INTERRUPTED, error
from .common import data_root, task_settings, written
from .options import (
    CLIError,
    add_data_dir,
    add_device,
    add_out,
    add_storage,
    add_threads,
    coerce,
    positive_int,
    scalar,
    set_threads,
)


def parse_grid(items: Sequence[str], train_keys: dict) -> list[tuple[str, list]]:
    """``key=v1,v2`` items -> [(key, [v1, v2])], each value coerced like ``--set`` (settings only)."""
    grid = []
    for item in items:
        if "=" not in item:
            raise CLIError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in train_keys:
            raise CLIError(f"--grid key {key!r} is not a setting; valid settings: {', '.join(train_keys)}")
        values = [coerce(scalar(v), train_keys[key]) for v in text.split(",") if v.strip()]
        if not values:
            raise CLIError(f"--grid {key}= needs at least one value")
        grid.append((key, values))
    return grid


def run(args) -> int:
    from ..sweep import combine, grid_points, run_sweep, variant_points, write_sweep
    from ..training.distributed import init_distributed
    from ..training.presets import TRAIN_DEFAULTS

    task, _preset, settings, options, _s, _o = task_settings(args)
    if not args.grid and not args.variant:
        raise CLIError("give at least one --grid key=v1,v2,... or a --variant")
    grid = grid_points(parse_grid(args.grid or [], TRAIN_DEFAULTS))
    points = combine(variant_points(args.variant, settings) if args.variant else [], grid)
    set_threads(args.threads)
    out = Path(args.out) if args.out else Path("sweeps") / args.task
    ctx = init_distributed(args.device)
    stem = f"sweep-{args.variant}" if args.variant else "sweep"
    log = Progress(quiet=False, main=ctx.is_main).say  # timestamped lines when stderr is not a terminal
    try:
        result = run_sweep(task, settings, options, out, points, args.runs, log=log, storage=args.storage,
                           study=args.study, heartbeat=args.heartbeat, stem=stem,
                           data_dir=data_root(args.data_dir), ctx=ctx, quiet=args.quiet,
                           tensorboard=not args.no_tensorboard)  # fmt: skip
    except KeyboardInterrupt:
        stopping()
        return error(
            f"interrupted; run the same command again to continue (points in {out})", EXIT_INTERRUPTED
        )
    finally:
        ctx.close()
    if not ctx.is_main:
        return 0
    try:
        paths = write_sweep(result, out, stem, title=f"{args.task}: {stem}", plot=not args.no_plot)
    except OSError as err:
        raise CLIError(f"cannot write the sweep's table in {out}: {os_error_text(err)} (the previous "
                       f"{stem}.json/.md/.png are kept as they were; the runs are done: rerun to write it)") from None  # fmt: skip
    print((out / f"{stem}.md").read_text())
    print(written(paths))
    return 0


def add_parser(sub) -> None:
    from ..sweep import VARIANTS

    sw = sub.add_parser(
        "sweep",
        help="train a grid of settings (every point a normal run, resumable) into one table and plot",
        description=textwrap.fill(
            "Train TASK at every point of --grid (the Cartesian product of the lists) and/or a "
            "--variant of the paper's ablations, --runs seeds each, every run in OUT/POINT/TASK/seed-K. "
            "Finished runs are not trained again and interrupted ones continue: rerun the same command to "
            "complete a sweep. The points are trials of an Optuna study (grid sampler): the same command in "
            "several processes, or on several machines sharing --storage, trains each point once. "
            "Writes OUT/sweep[-VARIANT].json, .md (test metric at the best validation epoch, "
            "mean +- std over seeds) and .png. Variants: "
            + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
            width=100,
        ),
        epilog="examples:\n  unicornn sweep adding --grid dt=0.03,0.1,0.3 --runs 3\n"
        "  unicornn sweep psmnist --variant fig6 --runs 10 --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sw.add_argument("task", metavar="TASK", help="task name (`unicornn tasks` lists them)")
    sw.add_argument(
        "--grid", action="append", metavar="KEY=V1,V2", help="a setting and its values (repeatable)"
    )
    sw.add_argument("--variant", choices=tuple(VARIANTS), help="one of the paper's ablations")
    sw.add_argument("--preset", metavar="NAME", help="preset the points start from (as for train)")
    sw.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting for every point")
    sw.add_argument("--runs", type=positive_int, default=1, metavar="K", help="seeds per point (default 1)")
    add_out(sw, None, help="sweep directory (default ./sweeps/TASK)")
    add_device(sw)
    add_data_dir(sw)
    add_threads(sw)
    add_storage(sw, "OUT/optuna.db", "sweep-<digest of the points>")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    sw.add_argument("--no-plot", action="store_true", help="skip the PNG")
    sw.set_defaults(func=run)
