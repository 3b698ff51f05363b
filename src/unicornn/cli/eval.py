"""``unicornn eval CHECKPOINT``: evaluate a run's checkpoint on its validation and test splits."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import data_root
from .options import CLIError, add_data_dir, add_device, positive_int


def run(args) -> int:
    from ..task_models import build_model
    from ..tasks import TASKS
    from ..training.checkpoint import load_model_state, read_checkpoint
    from ..training.distributed import resolve_device
    from ..training.epoch import evaluate
    from ..training.splits import build_splits

    path = Path(args.checkpoint)
    if path.is_dir():
        path = path / "best.pt"
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist (give a run directory, best.pt or checkpoint.pt)")
    ckpt = read_checkpoint(path, "model")
    record = ckpt["record"]
    task = TASKS.get(record["task"])
    cfg = record["settings"]
    device = resolve_device(args.device)
    splits = build_splits(task, record["task_options"], data_root(args.data_dir), cfg)
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


def add_parser(sub) -> None:
    ev = sub.add_parser(
        "eval",
        help="evaluate a checkpoint on the validation and test splits",
        description="Evaluate CHECKPOINT (a run directory, its best.pt or its checkpoint.pt) on the splits "
        "it was trained with.",
    )
    ev.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory, best.pt or checkpoint.pt")
    ev.add_argument("--split", choices=("valid", "test", "both"), default="both",
                    help="which split(s) to evaluate (default both)")  # fmt: skip
    add_device(ev)
    add_data_dir(ev)
    ev.add_argument("--batch-size", type=positive_int, metavar="B",
                    help="evaluation batch size (default: the run's)")  # fmt: skip
    ev.add_argument("--json", action="store_true",
                    help="print the metrics as one JSON line on stdout (the human-readable lines go to stderr)")  # fmt: skip
    ev.set_defaults(func=run)
