"""The ``unicornn`` command line: ``train``, ``eval``, ``tasks`` and ``report``.

Run ``unicornn COMMAND --help`` for every option. Under ``torchrun --nproc_per_node=K -m unicornn train ...``
the training runs with DistributedDataParallel over K processes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main", "parse_value", "CLIError"]

EXIT_USAGE = 2
EXIT_NONFINITE = 3


class CLIError(Exception):
    """A user error: printed as one line, exit code 2, no traceback."""


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


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Match the type of a default where that is lossless (an int given for a float setting)."""
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if key == "dt" and isinstance(value, int) and not isinstance(value, bool):
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
            options[opt] = _coerce(opt, parse_value(text), option_keys[opt])
        elif key in train_keys:
            settings[key] = _coerce(key, parse_value(text), train_keys[key])
        elif key in option_keys:
            options[key] = _coerce(key, parse_value(text), option_keys[key])
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
    from .tasks import TASKS
    from .training.presets import EXPERIMENTS

    known = sorted(set(EXPERIMENTS) | set(TASKS))
    if name not in known:
        raise CLIError(f"unknown task {name!r}; valid tasks: {', '.join(known)}")
    return TASKS.get(name)


def _cmd_train(args) -> int:
    from .tasks import TASKS
    from .tasks.download import DataUnavailableError
    from .training.distributed import init_distributed
    from .training.presets import EXPERIMENTS, TRAIN_DEFAULTS, get_preset
    from .training.trainer import NonFiniteError, RunExistsError, train_run

    task = _resolve_task(args.task)
    preset_name = args.preset or (
        EXPERIMENTS[args.task].default_preset if args.task in EXPERIMENTS else "small"
    )
    try:
        preset = get_preset(args.task, preset_name)
    except KeyError as err:
        raise CLIError(err.args[0]) from None
    if task is None:
        raise CLIError(
            f"the data pipeline of task {args.task!r} is not implemented yet (only its presets exist, see "
            f"`unicornn tasks`); implemented tasks: {', '.join(sorted(TASKS))}"
        )
    settings = preset.config()
    options = dict(preset.task_options)
    unknown_opts = sorted(set(options) - set(task.spec.default_options))
    if unknown_opts:  # presets and tasks out of step: a bug, but say it clearly
        raise CLIError(f"preset {preset.name!r} sets unknown option(s) {unknown_opts} of task {args.task!r}")
    s, o = parse_sets(args.set or [], TRAIN_DEFAULTS, task.spec.default_options)
    settings.update(s)
    options.update(o)
    if args.runs < 1:
        raise CLIError(f"--runs must be >= 1, got {args.runs}")

    if args.threads is not None:
        if args.threads < 1:
            raise CLIError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    try:
        ctx = init_distributed(args.device)
    except ValueError as err:
        raise CLIError(str(err)) from None
    out = Path(args.out) / args.task
    results = []
    code = 0
    try:
        for k in range(args.runs):
            cfg = dict(settings, seed=settings["seed"] + k)
            run_dir = out / f"seed-{cfg['seed']}"
            results.append(
                train_run(
                    task,
                    cfg,
                    options,
                    run_dir,
                    data_dir=_data_root(args.data_dir),
                    ctx=ctx,
                    resume=args.resume,
                    quiet=args.quiet,
                    tensorboard=not args.no_tensorboard,
                )
            )
    except DataUnavailableError as err:
        code = _err(str(err))
    except NonFiniteError as err:
        code = _err(str(err), EXIT_NONFINITE)
    except (RunExistsError, ValueError, TypeError) as err:
        code = _err(str(err))
    except KeyboardInterrupt:
        code = _err(f"interrupted; continue with the same command plus --resume (runs in {out})", 130)
    finally:
        ctx.close()
    if code or not ctx.is_main:
        return code
    metric = results[0]["metric"]
    for r in results:
        print(
            f"seed {r['seed']}: best validation {metric} {r['best']['valid']:.6g} at epoch {r['best']['epoch']}, "
            f"test {metric} {r['best']['test']:.6g}"
        )
    if len(results) > 1:
        from .training.report import write_report

        for rep in write_report(out, plot=True):
            print(rep["text"])
    print(f"runs written to {out}; summarise them with: unicornn report {out}")
    return 0


def _data_root(data_dir: str | None) -> Path:
    from .tasks.download import data_root

    return data_root(data_dir)


def _cmd_eval(args) -> int:
    import torch

    from .tasks.download import DataUnavailableError
    from .training.checkpoint import load_checkpoint
    from .training.distributed import resolve_device
    from .training.trainer import _subset, build_model, evaluate

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist (give a run directory, best.pt or checkpoint.pt)")
    try:
        ckpt = load_checkpoint(path)
        record = ckpt["record"]
    except Exception as err:  # not a unicornn checkpoint
        raise CLIError(f"{path} is not a unicornn checkpoint: {err}") from None
    task = _resolve_task(record["task"])
    if task is None:
        raise CLIError(f"the data pipeline of task {record['task']!r} is not implemented")
    cfg = record["settings"]
    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise CLIError(str(err)) from None
    model = build_model(task.spec, cfg).to(device)
    model.load_state_dict(ckpt["model"])
    try:
        splits = task.build(record["task_options"], _data_root(args.data_dir), cfg["seed"])
    except DataUnavailableError as err:
        return _err(str(err))
    names = ["valid", "test"] if args.split == "both" else [args.split]
    metric = task.spec.metric
    results = {}
    for name in names:
        seed_offset = 1 if name == "valid" else 2  # the subsets drawn by the trainer
        ds = _subset(getattr(splits, name), cfg["eval_subset"], cfg["seed"] + seed_offset)
        with torch.no_grad():
            results[name] = evaluate(
                model, ds, task.spec, batch_size=args.batch_size or cfg["eval_batch_size"], device=device
            )
    print(f"{path} (task {record['task']}, epoch {ckpt['epoch']}):")
    for name, m in results.items():
        print(f"  {name}: {metric} {m[metric]:.6g}  loss {m['loss']:.6g}")
    if args.json:
        print(json.dumps(results))
    return 0


def _cmd_tasks(args) -> int:
    from .tasks import TASKS
    from .training.presets import EXPERIMENTS, presets_for

    for name in sorted(set(EXPERIMENTS) | set(TASKS)):
        exp = EXPERIMENTS.get(name)
        task = TASKS.get(name)
        status = "implemented" if task is not None else "data pipeline not implemented yet"
        title = exp.title if exp else task.spec.description
        print(f"{name}  [{status}]  {title}" + (f"  (paper: {exp.paper_tables})" if exp else ""))
        if task is not None:
            s = task.spec
            print(
                f"    metric {s.metric} ({'higher' if s.higher_is_better else 'lower'} is better); "
                f"options: {', '.join(f'{k}={v}' for k, v in s.default_options.items()) or '(none)'}"
            )
        for p in presets_for(name):
            default = " (default)" if exp and p.name == exp.default_preset else ""
            st = p.config()
            dt = st["dt"]
            print(
                f"    --preset {p.name}{default}: {st['num_layers']} x {st['hidden_size']} units, lr {st['lr']:g}, "
                f"dropout {st['dropout']:g}, batch {st['batch_size']}, dt {dt}, alpha {st['alpha']:g}, "
                f"{st['epochs']} epochs"
                + (f" (lr/10 after {st['lr_reduce_epoch']})" if st["lr_reduce_epoch"] else "")
                + (f", options {dict(p.task_options)}" if p.task_options else "")
            )
            print(f"        source: {p.source}")
            if p.paper_result:
                print(f"        paper: {p.paper_result}")
    return 0


def _cmd_report(args) -> int:
    from .training.report import write_report

    try:
        reports = write_report(args.run_dir, plot=not args.no_plot)
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
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
        "exit codes: 0 done, 2 usage or data error, 3 non-finite loss (last good checkpoint kept).",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``unicornn`` command."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="unicornn",
        description="UnICORNN (Rusch & Mishra, ICML 2021): train and evaluate the paper's experiments.",
    )
    parser.add_argument("--version", action="version", version=f"unicornn {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
        help="continue runs from their last checkpoint (finished runs are skipped)",
    )
    tr.add_argument(
        "--quiet", action="store_true", help="no progress bars: one plain line per epoch (for log files)"
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
    ev.add_argument("--json", action="store_true", help="also print the metrics as one JSON line")
    ev.set_defaults(func=_cmd_eval)

    ta = sub.add_parser(
        "tasks",
        help="list the tasks, their options and presets (with sources)",
        description="List every task of the paper and of this package, whether its data "
        "pipeline is implemented, its options and its presets with their sources.",
    )
    ta.set_defaults(func=_cmd_tasks)

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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``unicornn`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except CLIError as err:
        return _err(str(err))


if __name__ == "__main__":
    sys.exit(main())
