"""``unicornn tune``'s outputs: the best trial (as a ``--set`` line and as a preset-like block), a table of
all trials (markdown and JSON, all or none) and PNGs (optimisation history, parameter importances,
dt x alpha)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..plotting import have_matplotlib, save_figure, write_outputs
from .space import apply_params
from .study import trial_rows

__all__ = ["preset_block", "tune_summary", "format_tune", "plot_tune", "write_tune"]


def _set_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_set_value(e) for e in v)
    return repr(v) if isinstance(v, float) else str(v)


def preset_block(
    task: str, name: str, basis: str, settings: Mapping[str, Any], options: Mapping[str, Any]
) -> str:
    """Settings (those differing from the trainer's defaults) and task options written as a preset is
    registered in :mod:`unicornn.training.presets`."""
    from ..training.presets import TRAIN_DEFAULTS

    own = {k: v for k, v in settings.items() if TRAIN_DEFAULTS.get(k, object()) != v}
    body = "".join(f"        {k}={v!r},\n" for k, v in own.items())
    opts = f"    task_options={dict(options)!r},\n" if options else ""
    return f'_p(\n    "{task}",\n    "{name}",\n    "{basis}",\n    dict(\n{body}    ),\n{opts}    schedule=None,\n)'


def tune_summary(study, settings: Mapping[str, Any], metric: str, n_trials: int, storage: str,
                 options: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The study as a dict: its trials (:func:`~unicornn.tuning.trial_rows`) and the best one, with its
    settings as a ``--set`` line and as a preset-like block."""
    from optuna.trial import TrialState

    rows = trial_rows(study)
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    result = {"study": study.study_name, "storage": storage, "task": study.user_attrs.get("task"),
              "metric": metric, "direction": study.direction.name.lower(), "n_trials": n_trials,
              "base_settings": dict(settings), "trials": rows, "best": None}  # fmt: skip
    if complete:
        b = study.best_trial
        full = apply_params(settings, b.params)
        changed = {k: full[k] for k in b.params}
        result["best"] = {
            "number": b.number,
            "value": b.value,
            "test": b.user_attrs.get("test"),
            "params": dict(b.params),
            "run_dir": b.user_attrs.get("run_dir"),
            "set_line": " ".join(f"--set {k}={_set_value(v)}" for k, v in changed.items()),
            "preset_block": preset_block(
                result["task"],
                f"tuned-{study.study_name}",
                f"unicornn tune, study {study.study_name}, trial "
                f"{b.number}: validation {metric} {b.value:.6g}",
                full,
                options or {},
            ),
        }
    return result


def _f(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_tune(result: Mapping[str, Any]) -> str:
    """Markdown: the best trial (``--set`` line and preset-like block), then a row per trial."""
    m, best = result["metric"], result["best"]
    keys = list(dict.fromkeys(k for r in result["trials"] for k in r["params"]))
    lines = [f"## study {result['study']} ({result['task']}, {result['direction']} validation {m})", ""]
    if best:
        lines += [f"best: trial {best['number']}, validation {m} {_f(best['value'])} (test {m} at that epoch "
                  f"{_f(best['test'])}), run {best['run_dir']}", "", "```", best["set_line"], "```", "",
                  "as a preset (settings that differ from the defaults):", "", "```python", best["preset_block"], "```", ""]  # fmt: skip
    else:
        lines += ["no trial has finished yet", ""]
    lines += ["| trial | state | " + " | ".join(keys) + f" | valid {m} | test {m} | epochs | retry of | note |",
              "|---" * (len(keys) + 7) + "|"]  # fmt: skip
    for r in result["trials"]:
        lines.append(f"| {r['number']} | {r['state']} | " + " | ".join(_f(r["params"].get(k)) for k in keys)
                     + f" | {_f(r.get('valid'))} | {_f(r.get('test'))} | {_f(r.get('epochs_done'))} | "
                     f"{_f(r['retry_of'])} | {(r.get('error') or '')[:80]} |")  # fmt: skip
    lines += [
        "",
        f"valid/test {m}: at the best validation epoch of each trial's run; pruned trials stopped early.",
    ]
    return "\n".join(lines) + "\n"


def plot_tune(study, folder: Path) -> tuple[dict[str, Path], list[str]]:
    """PNGs of the study: optimisation history, parameter importances, dt x alpha contour; a figure that
    cannot be drawn (too few finished trials, dt or alpha not searched) is skipped with a note."""
    import warnings

    from optuna.visualization import matplotlib as vis

    figures = {
        "history": ("tune-history.png", lambda: vis.plot_optimization_history(study)),
        "importance": ("tune-importance.png", lambda: vis.plot_param_importances(study)),
        "dt_alpha": ("tune-dt-alpha.png", lambda: vis.plot_contour(study, params=["dt", "alpha"])),
    }
    paths, notes = {}, []
    for kind, (file, draw) in figures.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            paths[kind] = save_figure(fig, folder / file)
        except Exception as err:  # too few trials, a parameter not in the space, ...
            notes.append(f"{file} not drawn: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    return paths, notes


def write_tune(result: Mapping[str, Any], study, folder: str | Path, plot: bool = True) -> tuple[dict, list]:
    """Write ``tune.json`` and ``tune.md`` (all or none) and the PNGs into the study's ``folder``; returns
    the paths by kind and notes on figures not drawn."""
    folder = Path(folder)
    paths = write_outputs(dict(result), folder, "tune", format_tune(result), None, table_suffix=".md")
    notes: list[str] = []
    if plot and have_matplotlib():
        pngs, notes = plot_tune(study, folder)
        paths.update(pngs)
    return paths, notes
