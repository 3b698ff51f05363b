"""``unicornn tasks``: the tasks, their options and presets with their sources."""

from __future__ import annotations


def run(args) -> int:
    from ..tasks import TASKS
    from ..training.presets import presets_for

    for name, task in sorted(TASKS.items()):
        s = task.spec
        paper = (
            f"  (paper: {s.paper_tables})" if s.paper_tables != "-" else "  (not an experiment of the paper)"
        )
        print(f"{name}  [implemented]  {s.description}{paper}")
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


def add_parser(sub) -> None:
    ta = sub.add_parser(
        "tasks",
        help="list the tasks, their options and presets (with sources)",
        description="List every task of the paper and of this package, whether its data "
        "pipeline is implemented, its options and its presets with their sources.",
    )
    ta.set_defaults(func=run)
