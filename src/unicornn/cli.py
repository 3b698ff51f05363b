"""The ``unicornn`` command line: ``train``, ``eval``, ``tasks``, ``report``, and the checks of the paper's
claims ``bench``, ``diagnose``, ``plot`` and ``sweep``.

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


def _task_settings(args):
    """``(task, preset, settings, task options, --set settings, --set options)`` of ``train``/``sweep``: the
    preset's values overridden by ``--set``."""
    from .tasks import TASKS
    from .training.presets import TRAIN_DEFAULTS, get_preset

    spec = TASKS.get(args.task).spec
    preset = get_preset(args.task, args.preset or spec.default_preset)
    task = _resolve_task(args.task)
    settings, options = preset.config(), dict(preset.task_options)
    s, o = parse_sets(args.set or [], TRAIN_DEFAULTS, spec.default_options)
    settings.update(s)
    options.update(o)
    if args.runs < 1:
        raise CLIError(f"--runs must be >= 1, got {args.runs}")
    return task, preset, settings, options, s, o


def _cmd_train(args) -> int:
    from .training.distributed import init_distributed
    from .training.run import Requested
    from .training.seeds import summary_lines, train_seeds

    task, preset, settings, options, s, o = _task_settings(args)
    if args.progress_every is not None and args.progress_every < 0:
        raise CLIError(f"--progress-every must be >= 0 seconds, got {args.progress_every}")
    _set_threads(args.threads)
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


# --------------------------------------------------------------------------------------------------
# the paper's claims: bench, diagnose, plot, sweep
# --------------------------------------------------------------------------------------------------

EXIT_VIOLATED = 4  # diagnose states: the Prop. C.1 bound was exceeded


def _ints(text: str) -> list[int]:
    """``"1000,2000"`` -> [1000, 2000] (argparse type; positive ints)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated ints, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated ints >= 1, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise CLIError(f"--threads must be >= 1, got {threads}")
        import torch

        torch.set_num_threads(threads)


def _written(paths: dict) -> str:
    return "written: " + ", ".join(str(p) for p in paths.values())


def _cmd_bench_speed(args) -> int:
    from .bench.speed import CPU_SETTING, DEFAULT_MODELS, PAPER_SETTING, format_table, run_speed, write_speed

    size = dict(PAPER_SETTING if args.paper else CPU_SETTING)
    for key in ("lengths", "batch", "hidden", "layers"):
        if getattr(args, key) is not None:
            size[key] = getattr(args, key)
    try:
        result = run_speed(
            size["lengths"], args.models or DEFAULT_MODELS, size["batch"], size["hidden"], size["layers"],
            size["input_size"], args.device, args.repeats, args.slow_repeats, args.warmup,
            threads=args.threads, flush_denormal=args.flush_denormal, floor=args.floor,
        )  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from None
    paths = write_speed(result, args.out)
    print(format_table(result))
    print(_written(paths))
    return 0


def _cmd_bench_memory(args) -> int:
    from .bench.memory import DEFAULTS, MODELS, format_table, run_memory, write_memory

    try:
        result = run_memory(
            args.lengths, args.models or MODELS, args.device, args.batch or DEFAULTS["batch"],
            args.hidden or DEFAULTS["hidden"], args.layers or DEFAULTS["layers"],
            checkpoint_every=args.checkpoint_every, repeats=args.repeats, threads=args.threads,
        )  # fmt: skip
    except ValueError as err:
        raise CLIError(str(err)) from None
    paths = write_memory(result, args.out)
    print(format_table(result))
    failed = [r for r in result["rows"] if "error" in r]
    for r in failed:
        print(f"{r['model']} N={r['N']} failed: {r['error'].strip().splitlines()[-1]}", file=sys.stderr)
    print(_written(paths))
    return 1 if failed else 0


def _gradient_table(profiles: dict) -> str:
    wrt = "dL/dh_k" if next(iter(profiles.values()))["wrt"] == "state" else "dL/du_k"
    lines = [
        f"norm of {wrt} of a loss on the last step (k = N), float64",
        "",
        "| model | N | norm at k=N | norm at k=1 | ratio k=1 / k=N | steps at exactly 0 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in profiles.items():
        zeros = sum(1 for v in p["norm"] if v == 0)
        lines.append(
            f"| {name.split(' ')[0]} | {p['N']} | {p['norm'][-1]:.3g} | {p['norm'][0]:.3g} | {p['decay']:.3g} | "
            f"{zeros} |"
        )
    return "\n".join(lines)


def _cmd_diagnose_gradients(args) -> int:
    import torch

    from .bench.common import load_average, machine_info, write_outputs
    from .diagnose import gradient_profile, paper_models, plot_gradient_profiles

    _set_threads(args.threads)
    torch.manual_seed(args.seed)
    profiles = {}
    for N in args.lengths:
        try:
            models = paper_models(args.input_size, args.hidden, args.layers, dt=args.dt, alpha=args.alpha)
        except (ValueError, TypeError) as err:
            raise CLIError(str(err)) from None
        unknown = sorted(set(args.models) - set(models))
        if unknown:
            raise CLIError(f"--models: unknown {', '.join(unknown)}; valid: {', '.join(models)}")
        for name in args.models:
            p = gradient_profile(models[name], N, batch=args.batch, wrt=args.wrt, seed=args.seed)
            profiles[f"{name} N={N}"] = p
            print(
                f"{name} N={N}: ||grad|| at the last step {p['norm'][-1]:.3g}, at the first {p['norm'][0]:.3g}"
            )
    table = _gradient_table(profiles)
    result = {
        "diagnostic": "gradients",
        "settings": {k: getattr(args, k) for k in ("lengths", "models", "hidden", "layers", "input_size",
                                                    "batch", "dt", "alpha", "wrt", "seed")},
        "machine": machine_info("cpu"),
        "load_average": load_average(),
        "profiles": profiles,
    }  # fmt: skip
    paths = write_outputs(result, args.out, "gradients", table,
                          lambda r, path: plot_gradient_profiles(r["profiles"], path))  # fmt: skip
    print(table)
    print(_written(paths))
    return 0


def _checkpoint(path_text: str):
    """``(path, checkpoint)`` of a run directory (best.pt, else checkpoint.pt) or a .pt file."""
    from .training.checkpoint import load_checkpoint

    path = Path(path_text)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "checkpoint.pt"
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist (give a run directory, best.pt or checkpoint.pt)")
    try:
        ckpt = load_checkpoint(path)
        ckpt["record"]["settings"]
    except Exception as err:  # a file that is not a unicornn checkpoint: the user's mistake
        raise CLIError(f"{path} is not a unicornn checkpoint: {err}") from None
    return path, ckpt


def _run_stack(path_text: str):
    """The UnICORNN stack of a run's checkpoint, and a description of where it came from."""
    from .diagnose import unicornn_from_state

    path, ckpt = _checkpoint(path_text)
    try:
        rnn = unicornn_from_state(ckpt["model"], ckpt["record"]["settings"])
    except ValueError as err:
        raise CLIError(f"{path}: {err} (model {ckpt['record']['settings'].get('model')!r})") from None
    return rnn, f"{path} (task {ckpt['record']['task']}, epoch {ckpt['epoch']})"


def _cmd_diagnose_states(args) -> int:
    import torch

    from .bench.common import write_outputs
    from .diagnose import plot_state_bound, state_bound_check
    from .modules import UnICORNN

    torch.manual_seed(args.seed)
    if args.run is not None:
        rnn, where = _run_stack(args.run)
    else:
        try:
            rnn = UnICORNN(args.input_size, args.hidden, args.layers, dt=args.dt, alpha=args.alpha)
        except (ValueError, TypeError) as err:
            raise CLIError(str(err)) from None
        where = f"fresh weights ({args.layers} x {args.hidden} units, dt {args.dt:g}, alpha {args.alpha:g})"
    gen = torch.Generator().manual_seed(args.seed)
    inputs = args.input_scale * torch.randn(args.steps, args.batch, rnn.input_size, generator=gen)
    state = None
    if args.initial_state:
        start = torch.full((rnn.num_layers, args.batch, rnn.hidden_size), float(args.initial_state))
        state = (start, start)
    try:
        check = state_bound_check(rnn, inputs, state, form=args.form)
    except ValueError as err:
        raise CLIError(str(err)) from None
    check["source"] = where
    lines = [f"Prop. C.1 ({args.form} form) over {args.steps} steps, {where}:"]
    for layer in check["layers"]:
        lines.append(
            f"  layer {layer['layer']}: max |y| {max(layer['max_abs_y']):.4g} (bound at step N "
            f"{layer['y_bound'][-1]:.4g}), max |z| {max(layer['max_abs_z']):.4g} (bound {layer['z_bound'][-1]:.4g})"
        )
    for v in check["violations"]:
        lines.append(
            f"  VIOLATION: layer {v['layer']} |{v['variable']}| = {v['value']:.4g} > bound {v['bound']:.4g} "
            f"at step {v['step']}"
        )
    lines.append("bound violated" if check["violated"] else "bound holds at every step")
    text = "\n".join(lines)
    paths = write_outputs(check, args.out, "states", text, plot_state_bound)
    print(text)
    print(_written(paths))
    return EXIT_VIOLATED if check["violated"] else 0


def _cmd_plot_timesteps(args) -> int:
    from .bench.common import write_outputs
    from .diagnose import plot_time_steps, time_step_histogram

    rnn, where = _run_stack(args.run)
    hist = time_step_histogram(rnn, bins=args.bins)
    hist["source"] = where
    lines = [f"effective time steps dt * sigmoid(c) per layer, {where}:"]
    lines += [
        f"  layer {e['layer']} (dt {e['dt']:g}): min {e['min']:.3g}, median {e['median']:.3g}, max {e['max']:.3g}"
        for e in hist["layers"]
    ]
    text = "\n".join(lines)
    out = (
        Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent)
    )
    paths = write_outputs(hist, out, "timesteps", text, plot_time_steps)
    print(text)
    print(_written(paths))
    return 0


def _parse_grid(items: Sequence[str], train_keys: dict, option_keys: dict) -> list[tuple[str, list]]:
    """``key=v1,v2`` items -> [(key, [v1, v2])], each value coerced like ``--set`` (settings only)."""
    grid = []
    for item in items:
        if "=" not in item:
            raise CLIError(f"--grid expects key=v1,v2,..., got {item!r}")
        key, text = (s.strip() for s in item.split("=", 1))
        if key not in train_keys:
            raise CLIError(f"--grid key {key!r} is not a setting; valid settings: {', '.join(train_keys)}")
        values = [_coerce(_scalar(v), train_keys[key]) for v in text.split(",") if v.strip()]
        if not values:
            raise CLIError(f"--grid {key}= needs at least one value")
        grid.append((key, values))
    return grid


def _cmd_sweep(args) -> int:
    from .sweep import combine, grid_points, run_sweep, variant_points, write_sweep
    from .training.distributed import init_distributed
    from .training.presets import TRAIN_DEFAULTS

    task, _preset, settings, options, _s, _o = _task_settings(args)
    spec = task.spec
    if not args.grid and not args.variant:
        raise CLIError("give at least one --grid key=v1,v2,... or a --variant")
    grid = grid_points(_parse_grid(args.grid or [], TRAIN_DEFAULTS, spec.default_options))
    points = combine(variant_points(args.variant, settings) if args.variant else [], grid)
    _set_threads(args.threads)
    out = Path(args.out) if args.out else Path("sweeps") / args.task
    ctx = init_distributed(args.device)
    log = (lambda msg: print(msg, file=sys.stderr)) if ctx.is_main else (lambda _msg: None)
    try:
        result = run_sweep(task, settings, options, out, points, args.runs, log=log,
                           data_dir=_data_root(args.data_dir), ctx=ctx, quiet=args.quiet,
                           tensorboard=not args.no_tensorboard)  # fmt: skip
    except KeyboardInterrupt:
        return _err(
            f"interrupted; run the same command again to continue (points in {out})", EXIT_INTERRUPTED
        )
    finally:
        ctx.close()
    if not ctx.is_main:
        return 0
    stem = f"sweep-{args.variant}" if args.variant else "sweep"
    paths = write_sweep(result, out, stem, title=f"{args.task}: {stem}", plot=not args.no_plot)
    print((out / f"{stem}.md").read_text())
    print(_written(paths))
    return 0


def _bench_parser(sub) -> None:
    be = sub.add_parser(
        "bench",
        help="benchmarks of the paper's efficiency claims: speed (Fig. 2) and training memory (Sec. 2.3)",
        description="Measure, side by side in one process, what the paper claims about speed and memory. "
        "Each writes a table (.txt), JSON and a PNG into --out.",
    )
    bsub = be.add_subparsers(dest="bench", metavar="BENCHMARK", required=True)
    sp = bsub.add_parser(
        "speed",
        help="forward+backward time against N: UnICORNN against LSTM, GRU, coRNN, IndRNN (Fig. 2)",
        description="Time one training step (forward, cross-entropy on the last step, backward) of every "
        "model at every length, repeats interleaved, medians; load average recorded. Default sizes suit a "
        "CPU (B=32, hidden 128, 2 layers, N=1000,2000); --paper uses the paper's (B=128, hidden 256).",
    )
    sp.add_argument("--lengths", type=_ints, metavar="N,N", help="sequence lengths (default 1000,2000)")
    sp.add_argument(
        "--models",
        type=_names,
        metavar="M,M",
        help="unicornn, unicornn_final (head on the final state y_n), unicornn_reference, lstm, gru, cornn, "
        "indrnn, torchrecurrent (each optionally NAME:L for L layers, e.g. lstm:1); default "
        "unicornn,lstm,gru,cornn,indrnn,torchrecurrent",
    )
    sp.add_argument("--paper", action="store_true", help="the paper's sizes: B=128, hidden 256, 2 layers")
    sp.add_argument("--batch", type=int, metavar="B")
    sp.add_argument("--hidden", type=int, metavar="H")
    sp.add_argument("--layers", type=int, metavar="L")
    sp.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    sp.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    sp.add_argument("--slow-repeats", type=int, default=2, help="timed rounds of per-step models (default 2)")
    sp.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    sp.add_argument("--threads", type=int, metavar="T", help="torch threads (default torch's choice)")
    sp.add_argument(
        "--flush-denormal", action="store_true", help="flush subnormal floats on CPU (LSTM/GRU run faster)"
    )
    sp.add_argument(
        "--floor",
        action="store_true",
        help="add the floor of a fused step (timed matmuls + one memory pass per tensor the kernels touch)",
    )
    sp.add_argument("--out", default="claims", metavar="DIR", help="output directory (default ./claims)")
    sp.set_defaults(func=_cmd_bench_speed)
    me = bsub.add_parser(
        "memory",
        help="peak training memory against N: UnICORNN standard and lean against an LSTM (Sec. 2.3)",
        description="Peak memory of one training step per model and length. CPU: every point in a fresh "
        "Python process, peak resident memory minus resident memory after a warm-up; CUDA: "
        "max_memory_allocated. Default: B=16, hidden 128, 3 layers, 6 input channels. Exit status 1 when a "
        "point failed (its error is in the JSON).",
    )
    me.add_argument("--lengths", type=_ints, default=[500, 1000, 2000, 4000], metavar="N,N")
    me.add_argument(
        "--models", type=_names, metavar="M,M", help="unicornn_standard, unicornn_lean, lstm (default all)"
    )
    me.add_argument("--batch", type=int, metavar="B")
    me.add_argument("--hidden", type=int, metavar="H")
    me.add_argument("--layers", type=int, metavar="L")
    me.add_argument(
        "--checkpoint-every", type=int, default=2048, metavar="K", help="lean mode's anchor spacing"
    )
    me.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default cpu)")
    me.add_argument("--repeats", type=int, default=1, help="timed steps per point (default 1)")
    me.add_argument("--threads", type=int, metavar="T", help="torch threads per measurement")
    me.add_argument("--out", default="claims", metavar="DIR", help="output directory (default ./claims)")
    me.set_defaults(func=_cmd_bench_memory)


def _diagnose_parser(sub) -> None:
    di = sub.add_parser(
        "diagnose",
        help="check the paper's claims on a model: gradients over time (Prop. 3.2), bounded states (Prop. C.1)",
        description="Diagnostics of the paper's stability claims; each writes a table, JSON and a PNG into --out.",
    )
    dsub = di.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    gr = dsub.add_parser(
        "gradients",
        help="||dL/dh_k|| for k = 1..N of a loss on the last step: UnICORNN against LSTM and GRU",
        description="Gradient norm of a loss on the last step with respect to the top layer's hidden state "
        "after every step k (or the input at step k, --wrt input), for fresh models with their papers' "
        "initialisation, in float64. Prop. 3.2: UnICORNN's does not decay with N - k.",
    )
    gr.add_argument("--lengths", type=_ints, default=[1000, 10000], metavar="N,N", help="default 1000,10000")
    gr.add_argument("--models", type=_names, default=["unicornn", "lstm", "gru"], metavar="M,M",
                    help="unicornn, lstm, gru (default all)")  # fmt: skip
    gr.add_argument("--hidden", type=int, default=64, help="hidden units (default 64)")
    gr.add_argument("--layers", type=int, default=1, help="layers (default 1)")
    gr.add_argument("--input-size", type=int, default=1, help="input width (default 1)")
    gr.add_argument("--batch", type=int, default=8, help="sequences (default 8)")
    gr.add_argument("--dt", type=float, default=0.19, help="UnICORNN's dt (default 0.19, psMNIST)")
    gr.add_argument("--alpha", type=float, default=30.65, help="UnICORNN's alpha (default 30.65, psMNIST)")
    gr.add_argument("--wrt", choices=("state", "input"), default="state",
                    help="state: exact, one step at a time (default); input: one pass, cheap at large N")  # fmt: skip
    gr.add_argument("--seed", type=int, default=0)
    gr.add_argument("--threads", type=int, metavar="T", help="torch threads")
    gr.add_argument("--out", default="claims", metavar="DIR", help="output directory (default ./claims)")
    gr.set_defaults(func=_cmd_diagnose_gradients)
    st = dsub.add_parser(
        "states",
        help="max |y|, max |z| over time against the bound of Prop. C.1 (exit 4 when violated)",
        description="Run a UnICORNN stack (a trained run's, or fresh weights) on random inputs and compare "
        "max |y_n| and max |z_n| of every layer with the bound of Prop. C.1. Exit status 4 when the bound "
        "is exceeded. The bound assumes zero initial states: --initial-state starts every unit elsewhere "
        "(a way to see a violation reported). --form geometric uses the proof's geometric-sum bound, valid "
        "at every step; the paper's stated form (eq. 7) is a small-time bound (see unicornn.diagnose).",
    )
    st.add_argument(
        "run", nargs="?", metavar="RUN", help="run directory, best.pt or checkpoint.pt (default: fresh)"
    )
    st.add_argument("--steps", type=int, default=1000, help="sequence length N (default 1000)")
    st.add_argument("--batch", type=int, default=8, help="sequences (default 8)")
    st.add_argument("--input-scale", type=float, default=1.0, help="inputs ~ N(0, scale^2) (default 1)")
    st.add_argument("--initial-state", type=float, default=0.0, metavar="V", help="y_0 = z_0 = V (default 0)")
    st.add_argument(
        "--form", choices=("paper", "geometric"), default="paper", help="bound form (default paper)"
    )
    st.add_argument("--hidden", type=int, default=128, help="fresh weights: hidden units (default 128)")
    st.add_argument("--layers", type=int, default=2, help="fresh weights: layers (default 2)")
    st.add_argument("--input-size", type=int, default=1, help="fresh weights: input width (default 1)")
    st.add_argument("--dt", type=float, default=0.19, help="fresh weights: dt (default 0.19)")
    st.add_argument("--alpha", type=float, default=30.65, help="fresh weights: alpha (default 30.65)")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--out", default="claims", metavar="DIR", help="output directory (default ./claims)")
    st.set_defaults(func=_cmd_diagnose_states)


def _plot_parser(sub) -> None:
    pl = sub.add_parser("plot", help="plots of a trained run: learned time steps (Fig. 5)")
    psub = pl.add_subparsers(dest="plot", metavar="PLOT", required=True)
    ts = psub.add_parser(
        "timesteps",
        help="per-layer histogram of the effective time steps dt * sigmoid(c) of a trained run (Fig. 5)",
        description="Histogram per layer of dt * sigmoid(c_i) over the units i, from RUN's best.pt (else "
        "checkpoint.pt). Writes timesteps.txt, .json and .png into RUN (or --out).",
    )
    ts.add_argument("run", metavar="RUN", help="run directory, best.pt or checkpoint.pt")
    ts.add_argument("--bins", type=int, default=30, help="log-spaced bins (default 30)")
    ts.add_argument("--out", metavar="DIR", help="output directory (default: the run directory)")
    ts.set_defaults(func=_cmd_plot_timesteps)


def _sweep_parser(sub) -> None:
    from .sweep import VARIANTS

    sw = sub.add_parser(
        "sweep",
        help="train a grid of settings (every point a normal run, resumable) into one table and plot",
        description="Train TASK at every point of --grid (the Cartesian product of the lists) and/or a "
        "--variant of the paper's ablations, --runs seeds each, every run in OUT/POINT/TASK/seed-K. "
        "Finished runs are not trained again and interrupted ones continue: rerun the same command to "
        "complete a sweep. Writes OUT/sweep[-VARIANT].json, .md (test metric at the best validation epoch, "
        "mean +- std over seeds) and .png. Variants: " + "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()),
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
    sw.add_argument("--runs", type=int, default=1, metavar="K", help="seeds per point (default 1)")
    sw.add_argument("--out", metavar="DIR", help="sweep directory (default ./sweeps/TASK)")
    sw.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    sw.add_argument("--data-dir", metavar="DIR", help="dataset cache (default as for train)")
    sw.add_argument("--threads", type=int, metavar="N", help="CPU threads for PyTorch")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard events")
    sw.add_argument("--no-plot", action="store_true", help="skip the PNG")
    sw.set_defaults(func=_cmd_sweep)


#: Parser builders of the subcommands, in the order ``--help`` lists them. A new subcommand is one
#: ``_cmd_NAME`` function plus one builder added here.
COMMANDS = [_train_parser, _eval_parser, _tasks_parser, _report_parser, _bench_parser, _diagnose_parser,
            _plot_parser, _sweep_parser]  # fmt: skip


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
