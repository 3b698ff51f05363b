"""``unicornn tune TASK``: a seeded TPE search on Optuna, every trial a normal run, many workers per study."""

from __future__ import annotations

import argparse
import signal
import textwrap
import threading
from pathlib import Path

from ..entry import stopping
from ..training.errors import os_error_text
from . import EXIT_INTERRUPTED, EXIT_TERMINATED, error
from .common import data_root, task_settings, written
from .options import (
    CLIError,
    add_data_dir,
    add_device,
    add_out,
    add_storage,
    add_threads,
    nonnegative_float,
    nonnegative_int,
    positive_int,
    set_threads,
)
from .train import _raise_terminated, _Terminated


def run(args) -> int:
    from ..training.distributed import init_distributed
    from ..training.presets import TRAIN_DEFAULTS
    from ..training.progress import Progress
    from ..tuning import default_space, parse_space, require_optuna, run_tune, write_tune

    require_optuna()
    task, preset, settings, options, s, _o = task_settings(args)
    space = {k: r for k, r in default_space(settings).items() if k not in s}  # --set pins a key
    space.update(parse_space(args.space or [], TRAIN_DEFAULTS))
    set_threads(args.threads)
    out = Path(args.out) if args.out else Path("tuning") / args.task
    ctx = init_distributed(args.device)
    log = Progress(quiet=False, main=ctx.is_main).say  # timestamped lines when stderr is not a terminal
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        result, study = run_tune(task, settings, options, out, args.trials, space, study=args.study,
                          storage=args.storage, seed=args.seed, pruner=args.pruner, timeout=args.timeout,
                          heartbeat=args.heartbeat, log=log, preset=preset.name, data_dir=data_root(args.data_dir),
                          ctx=ctx, quiet=args.quiet, tensorboard=not args.no_tensorboard)  # fmt: skip
    except KeyboardInterrupt as stop:
        stopping()
        what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(stop, _Terminated) else (
            "interrupted", EXIT_INTERRUPTED)  # fmt: skip
        return error(f"{what}; the running trial is marked failed: run the same command to continue the study "
                     "(the trial is queued again and resumes its run directory)", code)  # fmt: skip
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        ctx.close()
    if result is None:  # not the main process under torchrun
        return 0
    try:
        paths, notes = write_tune(result, study, out / result["study"], plot=not args.no_plot)
    except OSError as err:
        raise CLIError(f"cannot write the study's table in {out / result['study']}: {os_error_text(err)} (the "
                       "previous tune.json/.md are kept; the trials are done: rerun to write it)") from None  # fmt: skip
    print((out / result["study"] / "tune.md").read_text())
    for note in notes:
        log(note)
    print(written(paths))
    return 0


def add_parser(sub) -> None:
    from ..tuning import PRUNERS

    tu = sub.add_parser(
        "tune",
        help="search hyper-parameters with Optuna (TPE, pruning; many workers share a study)",
        description=textwrap.fill(
            "Search TASK's settings with Optuna's TPE sampler (seeded) until the study holds --trials "
            "trials; every trial is a normal run directory OUT/STUDY/trial-NNNN (report, eval and resume work on "
            "it). The validation metric is reported each epoch, and the pruner stops trials that fall behind. "
            "The default space is centred on the preset (dt, alpha, lr, dropout, hidden_size; see docs/tuning.md); "
            "--set pins a key, --space KEY=LOW:HIGH[:log] sets or adds a range. The same command in several "
            "processes, or on several machines sharing --storage, joins one study; rerunning it continues the "
            "study. Writes OUT/STUDY/tune.json, tune.md (the best trial as a --set line and a preset-like block, "
            "a table of all trials) and PNGs.",
            width=100,
        ),
        epilog="examples:\n  unicornn tune adding --trials 30\n"
        "  unicornn tune psmnist --preset paper-128 --trials 50 --space dt=0.01:1:log --space alpha=1:100:log\n"
        "  unicornn tune bidmc-hr --trials 40 --storage postgresql://user@dbhost/unicornn --device cuda",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tu.add_argument("task", metavar="TASK", help="task name (`unicornn tasks` lists them)")
    tu.add_argument("--trials", type=positive_int, required=True, metavar="N",
                    help="trials the study holds when done (finished, pruned or diverged), over all workers")  # fmt: skip
    tu.add_argument("--preset", metavar="NAME", help="preset the trials start from (as for train)")
    tu.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="a setting for every trial (a key set here is not searched)")  # fmt: skip
    tu.add_argument("--space", action="append", metavar="KEY=LOW:HIGH[:log]",
                    help="search KEY between LOW and HIGH (log scale with :log); repeatable")  # fmt: skip
    tu.add_argument("--pruner", choices=PRUNERS, default="median",
                    help="stop trials that fall behind: median (default), hyperband, none")  # fmt: skip
    tu.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the TPE sampler (default 0)")
    tu.add_argument("--timeout", type=nonnegative_float, metavar="S",
                    help="start no new trial after S seconds (the running one finishes)")  # fmt: skip
    add_out(tu, None, help="output folder (default ./tuning/TASK): the SQLite storage and a folder per study")
    add_storage(tu, "OUT/optuna.db", "TASK")
    add_device(tu)
    add_data_dir(tu)
    add_threads(tu)
    tu.add_argument("--quiet", action="store_true", help="one line per epoch")
    tu.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    tu.add_argument("--no-plot", action="store_true", help="skip the PNGs")
    tu.set_defaults(func=run)
