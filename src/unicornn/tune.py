"""Hyper-parameter search (``unicornn tune``): a seeded TPE search on Optuna, every trial a normal run directory.

The search space (:func:`default_space`, overridden by ``--space KEY=LOW:HIGH[:log]``, see
:func:`parse_space`) is centred on the preset's values, so the paper's Table 6 values lie inside it:

* ``dt``: preset / 10 to preset x 10 (at most 1), log scale; where the preset gives the first layer its own
  dt (IMDB, EigenWorms), ``dt`` is the other layers' and the first layer's stays;
* ``alpha``: preset / 10 to preset x 10, log scale (0 to 10, linear, where the preset has alpha = 0);
* ``lr``: preset / 10 to preset x 10, log scale;
* ``dropout``: 0 to max(0.5, preset + 0.2), linear;
* ``hidden_size``: max(8, preset / 4) to 2 x preset, log scale, integers.

A key fixed with ``--set`` leaves the space. Trial N trains into ``OUT/STUDY/trial-NNNN`` (a retry of a dead
worker's trial resumes the directory of the trial it retries); its validation metric, the best so far, is
reported each epoch to the pruner (:func:`make_pruner`). The study runs on :mod:`unicornn.tuning`'s worker
loop, so any number of processes share it. :func:`tune_summary`, :func:`format_tune` and
:func:`write_tune` make the outputs: the best trial (as a ``--set`` line and as a preset-like block), a table
of all trials (markdown and JSON) and PNGs (optimisation history, parameter importances, dt x alpha).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .plotting import have_matplotlib, save_figure, write_outputs
from .validation import ConfigError

__all__ = ["Range", "default_space", "space_table", "parse_space", "apply_params", "make_pruner", "run_tune",
           "tune_summary", "format_tune", "write_tune", "PRUNERS"]  # fmt: skip

#: Pruners of ``--pruner``.
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Range:
    """One dimension of the search space: ``low`` to ``high``, on a log scale or not, integers or not."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def text(self) -> str:
        """As ``--space`` takes it: ``LOW:HIGH`` or ``LOW:HIGH:log``."""
        return f"{self.low:g}:{self.high:g}" + (":log" if self.log else "")

    def suggest(self, trial, name: str):
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)


def _g(x: float) -> float:
    return float(f"{x:.3g}")


def _last(v: Any) -> Any:
    return v[-1] if isinstance(v, (list, tuple)) else v


def default_space(settings: Mapping[str, Any]) -> dict[str, Range]:
    """The default search space around a preset's ``settings`` (see the module docstring)."""
    dt, alpha, lr, dropout, hidden = (
        _last(settings[k]) for k in ("dt", "alpha", "lr", "dropout", "hidden_size")
    )
    return {
        "dt": Range(_g(dt / 10), min(1.0, _g(dt * 10)), log=True),
        "alpha": Range(_g(alpha / 10), _g(alpha * 10), log=True) if alpha > 0 else Range(0.0, 10.0),
        "lr": Range(_g(lr / 10), _g(lr * 10), log=True),
        "dropout": Range(0.0, min(0.9, max(0.5, round(dropout + 0.2, 2)))),
        "hidden_size": Range(max(8, hidden // 4), 2 * hidden, log=True, integer=True),
    }


def space_table() -> str:
    """Markdown table of every task's default space (around its default preset), as in the docs page."""
    from .tasks import TASKS
    from .training.presets import get_preset

    keys = list(default_space({"dt": 0.1, "alpha": 1.0, "lr": 1.0, "dropout": 0.0, "hidden_size": 8}))
    lines = ["| task (preset) | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in TASKS.names():
        preset = get_preset(name, TASKS.get(name).spec.default_preset)
        space = default_space(preset.config())
        lines.append(f"| {name} ({preset.name}) | " + " | ".join(space[k].text() for k in keys) + " |")
    return "\n".join(lines) + "\n"


def parse_space(items: Sequence[str], train_keys: Mapping[str, Any]) -> dict[str, Range]:
    """``KEY=LOW:HIGH[:log]`` items -> ranges; integers for settings whose default is an int."""
    space = {}
    for item in items:
        key, sep, text = (s.strip() for s in item.partition("="))
        if not sep:
            raise ConfigError(f"--space expects KEY=LOW:HIGH[:log], got {item!r}")
        default = train_keys.get(key)
        if key not in train_keys or isinstance(default, (bool, str)):
            numeric = [
                k for k, v in train_keys.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            ]
            raise ConfigError(
                f"--space key {key!r} is not a numeric setting; valid keys: {', '.join(numeric)}"
            )
        parts = text.split(":")
        try:
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "log"):
                raise ValueError
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise ConfigError(f"--space {key}: expected LOW:HIGH or LOW:HIGH:log, got {text!r}") from None
        log = len(parts) == 3
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ConfigError(f"--space {key}: expected finite LOW < HIGH, got {text!r}")
        if log and low <= 0:
            raise ConfigError(f"--space {key}: a log range needs LOW > 0, got {text!r}")
        integer = isinstance(default, int)
        if integer and not (low.is_integer() and high.is_integer()):
            raise ConfigError(f"--space {key}: an integer setting needs integer bounds, got {text!r}")
        space[key] = Range(low, high, log, integer)
    return space


def apply_params(settings: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with a trial's ``params``; a per-layer ``dt`` keeps its first layer's value."""
    out = dict(settings)
    for k, v in params.items():
        base = out.get(k)
        out[k] = (base[0], *[v] * (len(base) - 1)) if k == "dt" and isinstance(base, (list, tuple)) else v
    return out


def check_space(space: Mapping[str, Range], settings: Mapping[str, Any]) -> None:
    """Every bound of ``space`` must be a valid setting (the message names the key and the bound)."""
    from .ops.scan import check_alpha, check_dt
    from .training.settings import validate_config

    model_checks = {"dt": check_dt, "alpha": check_alpha}  # checked by the model when it is built
    for key, r in space.items():
        for bound in (r.low, r.high):
            value = int(bound) if r.integer else bound
            try:
                validate_config(apply_params(settings, {key: value}))
                if key in model_checks:
                    model_checks[key](value)
            except ConfigError as err:
                raise ConfigError(
                    f"--space {key}={r.text()}: the bound {value:g} is not valid: {err}"
                ) from None


def make_pruner(name: str, epochs: int, n_startup_trials: int = 5):
    """``median``: Optuna's MedianPruner (a trial stops when its best-so-far validation metric is worse than
    the median of earlier trials at the same epoch; none before ``n_startup_trials`` trials have finished,
    nor in the first epoch: its validation metric is too noisy to judge); ``hyperband``: HyperbandPruner over 1..``epochs`` epochs; ``none``."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def run_tune(task, settings: Mapping[str, Any], options: Mapping[str, Any], out: str | Path, n_trials: int,
             space: Mapping[str, Range], *, study: str | None = None, storage: str | None = None, seed: int = 0,
             pruner: str = "median", n_startup_trials: int = 5, timeout: float | None = None,
             heartbeat: int = 60, log=print, preset: str | None = None, **train_kw) -> tuple[dict[str, Any], Any]:  # fmt: skip
    """Run (or join) the study until it holds ``n_trials`` trials; return :func:`tune_summary` and the Optuna
    study (``(None, None)`` in the non-main processes under torchrun). ``train_kw`` go to
    :func:`~unicornn.training.trainer.train_run`."""
    from .metrics import is_better
    from .training.epoch import NonFiniteError
    from .training.trainer import train_run
    from .tuning import Outcome, open_storage, open_study, optimize, require_optuna

    if not space:
        raise ConfigError("the search space is empty (every key fixed by --set): give a --space KEY=LOW:HIGH")
    check_space(space, settings)
    out, ctx, spec = Path(out), train_kw.get("ctx"), task.spec
    name = study or spec.name
    main = ctx is None or ctx.is_main
    opt = store = None
    if main:
        optuna = require_optuna()
        store = open_storage(storage, out, heartbeat)
        sampler = optuna.samplers.TPESampler(seed=seed)
        direction = "maximize" if spec.higher_is_better else "minimize"
        attrs = {"task": spec.name, "kind": "tune", "metric": spec.metric}
        opt = open_study(
            store, name, attrs, direction, sampler, make_pruner(pruner, settings["epochs"], n_startup_trials)
        )
    folder = out / name

    def train(params, run_id, report) -> Outcome:
        run_dir = folder / f"trial-{run_id:04d}"
        log(f"trial {run_id} in {run_dir}: " + ", ".join(f"{k}={v:.4g}" for k, v in params.items()))
        best: list[float | None] = [None]
        pruned = [False]

        def on_epoch_end(epoch: int, row: dict) -> bool:
            value = row[f"valid_{spec.metric}"]
            if is_better(value, best[0], spec.higher_is_better):
                best[0] = value
            pruned[0] = report(epoch, best[0])
            return pruned[0]

        attrs = {"run_dir": str(run_dir)}
        try:
            r = train_run(task, apply_params(settings, params), options, run_dir, resume=True, preset=preset,
                          log=log, on_epoch_end=on_epoch_end, **train_kw)  # fmt: skip
        except NonFiniteError as err:
            log(f"trial {run_id} diverged: {err}")
            return Outcome("diverged", attrs={**attrs, "error": str(err)})
        attrs.update(valid=r["best"]["valid"], test=r["best"]["test"], best_epoch=r["best"]["epoch"],
                     epochs_done=r["epochs_done"])  # fmt: skip
        if pruned[0] and r["status"] != "finished":
            log(
                f"trial {run_id} pruned after epoch {r['epochs_done']} (validation {spec.metric} {best[0]:.4g})"
            )
            return Outcome("pruned", attrs=attrs)
        if r["status"] != "finished":
            return Outcome("unfinished", attrs=attrs)
        return Outcome("complete", r["best"]["valid"], attrs)

    def suggest(trial) -> dict[str, Any]:
        return {k: r.suggest(trial, k) for k, r in space.items()}

    def sampler_for(number: int):  # TPE seeded per trial: the same study whichever worker draws a trial
        return optuna.samplers.TPESampler(seed=(seed * 1_000_003 + number) % 2**32)

    ran = optimize(opt, store, n_trials, suggest, train, lock_dir=folder / ".optuna", ctx=ctx, log=log,
                   timeout=timeout, sampler_for=sampler_for)  # fmt: skip
    if not main:
        return None, None
    log(f"study {name} in {store.text}: {ran} trial(s) run by this process")
    return tune_summary(opt, settings, spec.metric, n_trials, store.text, options), opt


def _set_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_set_value(e) for e in v)
    return repr(v) if isinstance(v, float) else str(v)


def preset_block(
    task: str, name: str, basis: str, settings: Mapping[str, Any], options: Mapping[str, Any]
) -> str:
    """Settings (those differing from the trainer's defaults) and task options written as a preset is
    registered in :mod:`unicornn.training.presets`."""
    from .training.presets import TRAIN_DEFAULTS

    own = {k: v for k, v in settings.items() if TRAIN_DEFAULTS.get(k, object()) != v}
    body = "".join(f"        {k}={v!r},\n" for k, v in own.items())
    opts = f"    task_options={dict(options)!r},\n" if options else ""
    return f'_p(\n    "{task}",\n    "{name}",\n    "{basis}",\n    dict(\n{body}    ),\n{opts}    schedule=None,\n)'


def tune_summary(study, settings: Mapping[str, Any], metric: str, n_trials: int, storage: str,
                 options: Mapping[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The study as a dict: its trials (:func:`~unicornn.tuning.trial_rows`) and the best one, with its
    settings as a ``--set`` line and as a preset-like block."""
    from optuna.trial import TrialState

    from .tuning import trial_rows

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
