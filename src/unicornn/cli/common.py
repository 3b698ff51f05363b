"""Helpers several commands share: a task's settings from ``--preset`` and ``--set``, the data directory,
a run's checkpoint and UnICORNN stack, and the ``written: ...`` line."""

from __future__ import annotations

from pathlib import Path

from .options import CLIError, parse_sets

__all__ = ["data_root", "load_run_checkpoint", "run_stack", "task_settings", "written"]


def data_root(data_dir: str | None) -> Path:
    """The dataset cache: ``--data-dir``, else ``$UNICORNN_DATA``, else ``~/.cache/unicornn``."""
    from ..tasks.download import data_root as root

    return root(data_dir)


def task_settings(args):
    """``(task, preset, settings, task options, --set settings, --set options)`` of ``train``/``sweep``: the
    preset's values overridden by ``--set``."""
    from ..tasks import TASKS
    from ..training.presets import TRAIN_DEFAULTS, get_preset

    task = TASKS.get(args.task)
    preset = get_preset(args.task, args.preset or task.spec.default_preset)
    settings, options = preset.config(), dict(preset.task_options)
    s, o = parse_sets(args.set or [], TRAIN_DEFAULTS, task.spec.default_options)
    settings.update(s)
    options.update(o)
    return task, preset, settings, options, s, o


def load_run_checkpoint(path_text: str):
    """``(path, checkpoint)`` of a run directory (best.pt, else checkpoint.pt) or a .pt file."""
    from ..training.checkpoint import read_checkpoint
    from ..training.run import check_beside_its_run

    path = Path(path_text)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "checkpoint.pt"
    if not path.exists():
        raise CLIError(f"checkpoint {path} does not exist (give a run directory, best.pt or checkpoint.pt)")
    ckpt = read_checkpoint(path, "model")  # RunFileError (one line, naming the file) when damaged or foreign
    if not isinstance(ckpt.get("record"), dict) or not isinstance(ckpt["record"].get("settings"), dict):
        raise CLIError(f"{path} is not a unicornn checkpoint (it has no run record)")
    check_beside_its_run(path, ckpt)  # a best.pt copied from another run would stand for that run
    return path, ckpt


def run_stack(path_text: str):
    """The UnICORNN stack of a run's checkpoint, and a description of where it came from."""
    from ..diagnose import unicornn_from_state

    path, ckpt = load_run_checkpoint(path_text)
    try:
        rnn = unicornn_from_state(ckpt["model"], ckpt["record"]["settings"])
    except ValueError as err:
        raise CLIError(f"{path}: {err} (model {ckpt['record']['settings'].get('model')!r})") from None
    return rnn, f"{path} (task {ckpt['record']['task']}, epoch {ckpt['epoch']})"


def written(paths: dict) -> str:
    """The ``written: a, b, c`` line listing every file a command wrote."""
    return "written: " + ", ".join(str(p) for p in paths.values())
