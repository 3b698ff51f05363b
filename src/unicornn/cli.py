"""The ``unicornn`` command line: ``train``, ``eval``, ``tasks`` and ``report``.

Run ``unicornn COMMAND --help`` for every option. Under ``torchrun --nproc_per_node=K -m unicornn train ...``
the training runs with DistributedDataParallel over K processes.

Each command is one function ``_cmd_NAME(args) -> exit code`` and one parser builder ``_NAME_parser(sub)``
(which sets ``func``), listed in :data:`COMMANDS`. Commands parse arguments and call the library; :func:`main`
maps the project's own exceptions to exit codes (:data:`EXIT_CODES`). Any other exception is a bug and shows
its traceback.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser", "parse_value", "parse_sets", "CLIError", "COMMANDS"]

EXIT_USAGE = 2
EXIT_NONFINITE = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's stop or time limit) received while training."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated()


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, no traceback."""


def _exit_codes() -> list[tuple[type[BaseException], int]]:
    """The project's exceptions and their exit codes (first match wins); anything else is a bug."""
    from .registry import ConfigError
    from .tasks.download import DataUnavailableError
    from .training.epoch import NonFiniteError
    from .training.errors import RunDirError

    return [
        (CLIError, EXIT_USAGE),
        (ConfigError, EXIT_USAGE),  # bad setting, option, name (UnknownNameError), device, ...
        (RunDirError, EXIT_USAGE),  # run exists, is locked, a damaged file, a file-system error
        (DataUnavailableError, EXIT_USAGE),
        (NonFiniteError, EXIT_NONFINITE),
    ]


def _err(msg: str, code: int = EXIT_USAGE) -> int:
    print(f"unicornn: error: {msg}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------------------------------
# --set key=value
# --------------------------------------------------------------------------------------------------


def _scalar(text: str) -> Any:
    low = text.strip().lower()
    if low in ("none", "null"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_value(text: str) -> Any:
    """``"none"`` -> None, ``"true"``/``"false"`` -> bool, ints, floats, ``"a,b"`` -> list, else the string."""
    if "," in text:
        return [_scalar(p) for p in text.split(",") if p.strip()]
    return _scalar(text)


def _coerce(value: Any, default: Any) -> Any:
    """Match the type of a default where that is lossless (an int given for a float setting)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def parse_sets(items: Sequence[str], train_keys: dict, option_keys: dict) -> tuple[dict, dict]:
    """Split ``--set key=value`` items into trainer settings and task options; unknown keys are errors."""
    settings: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise CLIError(f"--set expects key=value, got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key.startswith("task."):  # explicit task option (needed when it shares a setting's name)
            opt = key[len("task.") :]
            if opt not in option_keys:
                raise CLIError(
                    f"unknown task option {opt!r}; valid task options: {', '.join(option_keys) or '(none)'}"
                )
            options[opt] = _coerce(parse_value(text), option_keys[opt])
        elif key in train_keys:
            settings[key] = _coerce(parse_value(text), train_keys[key])
        elif key in option_keys:
            options[key] = _coerce(parse_value(text), option_keys[key])
        else:
            raise CLIError(
                f"unknown --set key {key!r}; valid keys: settings {', '.join(train_keys)}; "
                f"task options {', '.join(option_keys) or '(none)'}"
            )
    return settings, options


# --------------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------------


def _resolve_task(name: str):
    """The registered task ``name`` whose data pipeline exists (CLIError otherwise)."""
    from .tasks import TASKS, is_implemented

    task = TASKS.get(name)
    if not is_implemented(task):
        done = ", ".join(n for n, t in TASKS.items() if is_implemented(t))
        raise CLIError(
            f"the data pipeline of task {name!r} is not implemented yet (only its presets exist, see "
            f"`unicornn tasks`); implemented tasks: {done}"
        )
    return task


def _data_root(data_dir: str | None) -> Path:
    from .tasks.download import data_root

    return data_root(data_dir)


def _cmd_train(args) -> int:
    from .tasks import TASKS
    from .training.distributed import init_distributed
    from .training.presets import TRAIN_DEFAULTS, get_preset
    from .training.run import Requested
    from .training.seeds import summary_lines, train_seeds

    spec = TASKS.get(args.task).spec
    preset = get_preset(args.task, args.preset or spec.default_preset)
    task = _resolve_task(args.task)
    settings, options = preset.config(), dict(preset.task_options)
    s, o = parse_sets(args.set or [], TRAIN_DEFAULTS, spec.default_options)
    settings.update(s)
    options.update(o)
    if args.runs < 1:
        raise CLIError(f"--runs must be >= 1, got {args.runs}")
    if args.progress_every is not None and args.progress_every < 0:
        raise CLIError(f"--progress-every must be >= 0 seconds, got {args.progress_every}")
    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    ctx = init_distributed(args.device)
    out = Path(args.out)
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None  # stop like Ctrl-C
    try:
        results = train_seeds(
            task,
            settings,
            options,
            out,
            args.runs,
            data_dir=_data_root(args.data_dir),
            ctx=ctx,
            resume=args.resume,
            requested=Requested(s, o, args.preset),
            preset=preset.name,
            quiet=args.quiet,
            tensorboard=not args.no_tensorboard,
            progress_every=args.progress_every,
        )
    except KeyboardInterrupt as stop:
        what, code = ("terminated (SIGTERM)", EXIT_TERMINATED) if isinstance(stop, _Terminated) else (
            "interrupted", EXIT_INTERRUPTED)  # fmt: skip
        return _err(f"{what}; continue with the same command plus --resume (runs in {out / args.task})", code)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        ctx.close()
    if not ctx.is_main:
        return 0
    for line in summary_lines(results, out / args.task, plot=True):
        print(line)
    print(f"runs written to {out / args.task}; summarise them with: unicornn report {out / args.task}")
    return 0


def _cmd_eval(args) -> int:
    from .training.checkpoint import load_model_state, read_checkpoint
    from .training.distributed import resolve_device
    from .training.splits import build_splits
    from .training.trainer import build_model, evaluate

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist (give a run directory, best.pt or checkpoint.pt)")
    ckpt = read_checkpoint(path, "model")
    record = ckpt["record"]
    task = _resolve_task(record["task"])
    cfg = record["settings"]
    device = resolve_device(args.device)
    splits = build_splits(task, record["task_options"], _data_root(args.data_dir), cfg)
    model = build_model(task.spec, cfg, splits.model_args).to(device)
    load_model_state(model, ckpt, path)
    names = ["valid", "test"] if args.split == "both" else [args.split]
    metric = task.spec.metric
    batch = args.batch_size or cfg["eval_batch_size"]
    results = {n: evaluate(model, splits.get(n), task.spec, batch_size=batch, device=device, splits=splits)
               for n in names}  # fmt: skip
    human = sys.stderr if args.json else sys.stdout  # with --json, stdout holds the JSON only
    print(f"{path} (task {record['task']}, epoch {ckpt['epoch']}):", file=human)
    for name, m in results.items():
        print(f"  {name}: {metric} {m[metric]:.6g}  loss {m['loss']:.6g}", file=human)
    if args.json:
        print(json.dumps(results))
    return 0


def _cmd_tasks(args) -> int:
    from .tasks import TASKS, is_implemented
    from .training.presets import presets_for

    for name, task in sorted(TASKS.items()):
        s = task.spec
        status = "implemented" if is_implemented(task) else "data pipeline not implemented yet"
        paper = (
            f"  (paper: {s.paper_tables})" if s.paper_tables != "-" else "  (not an experiment of the paper)"
        )
        print(f"{name}  [{status}]  {s.description}{paper}")
        print(
            f"    metric {s.metric} ({'higher' if s.higher_is_better else 'lower'} is better), loss {s.loss}, "
            f"readout {s.readout}; options: "
            + (", ".join(f"{k}={v}" for k, v in s.default_options.items()) or "(none)")
        )
        for p in presets_for(name):
            default = " (default)" if p.name == s.default_preset else ""
            st = p.config()
            print(
                f"    --preset {p.name}{default}: {st['num_layers']} x {st['hidden_size']} units, lr {st['lr']:g}, "
                f"dropout {st['dropout']:g}, batch {st['batch_size']}, dt {st['dt']}, alpha {st['alpha']:g}, "
                f"{st['epochs']} epochs"
                + (f" (lr/10 after {st['lr_reduce_epoch']})" if st["lr_reduce_epoch"] else "")
                + (f", options {dict(p.task_options)}" if p.task_options else "")
            )
            print(f"        source: {p.source}")
            if p.paper_result:
                print(f"        paper: {p.paper_result}")
            if hasattr(task, "baseline_note"):  # a trivial baseline to beat (Lorenz-96: persistence)
                print(f"        baseline: {task.baseline_note(dict(p.task_options))}")
    return 0


def _cmd_report(args) -> int:
    from .training.report import write_report

    reports = write_report(args.run_dir, plot=not args.no_plot)
    if not reports:
        raise CLIError(f"no runs (directories with config.json) under {args.run_dir}")
    for rep in reports:
        print(rep["text"])
        print(
            f"written: {rep['dir'] / 'report.md'}, {rep['dir'] / 'report.json'}"
            + (f", {rep['png']}" if rep["png"] else " (no plot: matplotlib missing or --no-plot)")
        )
    return 0


# --------------------------------------------------------------------------------------------------
# parser
# --------------------------------------------------------------------------------------------------


def _settings_epilog() -> str:
    from .training.presets import TRAIN_KEY_HELP

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


def _train_parser(sub) -> None:
    tr = sub.add_parser(
        "train",
        help="train a task with a preset (the paper's hyper-parameters or a small CPU run)",
        description="Train TASK for --runs seeds into OUT/TASK/seed-K/ (config.json, metrics.jsonl, "
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
    tr.add_argument(
        "--runs",
        type=int,
        default=1,
        metavar="K",
        help="train K runs with seeds seed, seed+1, ..., seed+K-1 (default 1)",
    )
    tr.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N (default auto)",
    )
    tr.add_argument(
        "--data-dir", metavar="DIR", help="dataset cache (default: $UNICORNN_DATA, else ~/.cache/unicornn)"
    )
    tr.add_argument("--out", default="runs", metavar="DIR", help="output directory (default ./runs)")
    tr.add_argument(
        "--resume",
        action="store_true",
        help="continue runs from their last checkpoint with their own settings and task options (the preset "
        "and --set are not needed; finished runs are skipped). --set may change epochs (e.g. to extend a "
        "finished run), eval_batch_size or num_workers; the change is recorded in config.json. Any other "
        "--set must equal the run's value",
    )
    tr.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or progress lines: one line per epoch",
    )
    tr.add_argument(
        "--progress-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="when stderr is not a terminal (a log file), the progress bars become plain time-stamped lines: "
        "one per epoch and, within an epoch, one at most every SECONDS (default 60)",
    )
    tr.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="CPU threads for PyTorch's own operations (default: PyTorch's choice); 1 is often fastest for "
        "small models or on a busy machine",
    )
    tr.add_argument(
        "--no-tensorboard",
        action="store_true",
        help="do not write TensorBoard events (metrics.jsonl is always written)",
    )
    tr.set_defaults(func=_cmd_train)


def _eval_parser(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on the validation and test splits",
        description="Evaluate CHECKPOINT (a run directory, its best.pt or its checkpoint.pt) on the splits "
        "it was trained with.",
    )
    ev.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory, best.pt or checkpoint.pt")
    ev.add_argument(
        "--split",
        choices=("valid", "test", "both"),
        default="both",
        help="which split(s) to evaluate (default both)",
    )
    ev.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    ev.add_argument("--data-dir", metavar="DIR", help="dataset cache (default as for train)")
    ev.add_argument("--batch-size", type=int, metavar="B", help="evaluation batch size (default: the run's)")
    ev.add_argument(
        "--json",
        action="store_true",
        help="print the metrics as one JSON line on stdout (the human-readable lines go to stderr)",
    )
    ev.set_defaults(func=_cmd_eval)


def _tasks_parser(sub) -> None:
    ta = sub.add_parser(
        "tasks",
        help="list the tasks, their options and presets (with sources)",
        description="List every task of the paper and of this package, whether its data "
        "pipeline is implemented, its options and its presets with their sources.",
    )
    ta.set_defaults(func=_cmd_tasks)


def _report_parser(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="summarise runs: per seed and mean +- std (like the paper's Table 8), learning curves",
        description="Find the runs under RUN_DIR (one run, OUT/TASK or OUT), print per-run best epoch, "
        "validation and test metric and the mean +- std over seeds, and write report.md, report.json and "
        "curves.png next to the runs.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, OUT/TASK, or OUT")
    rp.add_argument("--no-plot", action="store_true", help="skip the PNG of the learning curves")
    rp.set_defaults(func=_cmd_report)


#: Parser builders of the subcommands, in the order ``--help`` lists them. A new subcommand is one
#: ``_cmd_NAME`` function plus one builder added here.
COMMANDS = [_train_parser, _eval_parser, _tasks_parser, _report_parser]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unicornn`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="unicornn",
        description="UnICORNN (Rusch & Mishra, ICML 2021): train and evaluate the paper's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"unicornn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unicornn`` console script; returns the exit code.

    The project's own exceptions become one line and an exit code; any other exception propagates
    (with its traceback): it is a bug.
    """
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        for kind, code in _exit_codes():
            if isinstance(err, kind):
                return _err(str(err), code)
        raise


if __name__ == "__main__":
    sys.exit(main())
