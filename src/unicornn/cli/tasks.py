"""``unicornn tasks [TASK]``: the tasks in one compact table; one task's options, presets and their sources."""

from __future__ import annotations

import textwrap

WIDTH = 100  # wrapped text of `unicornn tasks TASK`


def task_table() -> str:
    """One line per task: name, where the paper reports it, its metric and its presets (* the default)."""
    from ..tasks import TASKS
    from ..training.presets import presets_for

    rows = [("TASK", "PAPER", "METRIC", "PRESETS (* default)")]
    for name, task in sorted(TASKS.items()):
        s = task.spec
        presets = ", ".join(p.name + "*" * (p.name == s.default_preset) for p in presets_for(name))
        better = "higher" if s.higher_is_better else "lower"
        rows.append((name, s.paper_tables if s.paper_tables != "-" else "(not in the paper)",
                     f"{s.metric} ({better})", presets))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(r[:3], widths, strict=True)) + "  " + r[3] for r in rows]
    lines += ["", "`unicornn tasks TASK` shows a task's options, and its presets with their sources."]
    return "\n".join(lines)


def _wrapped(label: str, text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent=f"{indent}{label}", subsequent_indent=indent + "  ")


def task_details(name: str) -> str:
    """Task ``name``: description, metric, loss, readout, options, and every preset with its settings, source,
    the paper's result and (where the task has one) the trivial baseline to beat."""
    from ..tasks import TASKS
    from ..training.presets import presets_for
    from ..training.settings import epochs_text

    task = TASKS.get(name)
    s = task.spec
    paper = f"paper: {s.paper_tables}" if s.paper_tables != "-" else "not an experiment of the paper"
    lines = _wrapped("", f"{name}: {s.description} ({paper})", "")
    lines.append(f"  metric {s.metric} ({'higher' if s.higher_is_better else 'lower'} is better), loss {s.loss}, "
                 f"readout {s.readout}")  # fmt: skip
    options = ", ".join(f"{k}={v}" for k, v in s.default_options.items()) or "(none)"
    lines += _wrapped("options (--set KEY=VALUE): ", options, "  ")
    lines.append("  presets (--preset NAME):")
    for p in presets_for(name):
        st = p.config()
        lines += _wrapped(
            f"{p.name}{' (default)' if p.name == s.default_preset else ''}: ",
            f"{st['num_layers']} x {st['hidden_size']} units, lr {st['lr']:g}, dropout {st['dropout']:g}, "
            f"batch {st['batch_size']}, dt {st['dt']}, alpha {st['alpha']:g}, {epochs_text(st['epochs'])}"
            + (f" (lr/10 after {st['lr_reduce_epoch']})" if st["lr_reduce_epoch"] else "")
            + (f", options {dict(p.task_options)}" if p.task_options else ""),
            "    ",
        )
        lines += _wrapped("source: ", p.source, "      ")
        if p.paper_result:
            lines += _wrapped("paper: ", p.paper_result, "      ")
        if hasattr(task, "baseline_note"):  # a trivial baseline to beat (Lorenz-96: persistence)
            lines += _wrapped("baseline: ", task.baseline_note(dict(p.task_options)), "      ")
    return "\n".join(lines)


def run(args) -> int:
    print(task_details(args.task) if args.task else task_table())
    return 0


def add_parser(sub) -> None:
    ta = sub.add_parser(
        "tasks",
        help="list the tasks in a table; with TASK, its options and presets (with sources)",
        description="Without TASK: one line per task (where the paper reports it, its metric, its presets). "
        "With TASK: its description, options and every preset with its settings and source.",
    )
    ta.add_argument("task", nargs="?", metavar="TASK", help="a task name: show its options and presets")
    ta.set_defaults(func=run)
