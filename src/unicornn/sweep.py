"""Hyper-parameter sweeps: every point a normal training run in its own directory, collected into one table.

A sweep is a list of :class:`Point` s, each a set of setting overrides on top of the task's preset. Point
``p`` trains ``runs`` seeds with :func:`~unicornn.training.seeds.train_seeds` into ``OUT/<p.name>/TASK/seed-K``
(the run directories of ``unicornn train``: ``unicornn report`` and ``unicornn eval`` read them). Runs are
opened with ``resume=True``: a finished run is not trained again, an interrupted one continues from its
checkpoint, so rerunning the same sweep command completes it. The points are handed out by an Optuna study
with a grid sampler (:mod:`unicornn.tuning`): the same command in several processes, or on several machines
sharing a storage, trains each point once. The table (``sweep[-VARIANT].json`` / ``.md``
/ ``.png`` in ``OUT``) holds, per point, the test metric at the best validation epoch, mean +- std over
seeds.

Points come from a grid (:func:`grid_points`: the Cartesian product of ``key=v1,v2,...`` lists) and/or a
named variant (:data:`VARIANTS`) reproducing one of the paper's ablations:

* ``fig4`` -- Fig. 4: dt and alpha each varied over an order of magnitude (factors 10^-1/2, 1, 10^1/2
  around the preset's values, one at a time; dt capped at 1; alpha = 0 is swept around 1, the value the
  paper suggests as default);
* ``fig6`` -- Fig. 6: 3 to 6 layers for the standard UnICORNN, the residual one (``residual_skip=2``, the
  paper's S = 2) and UnICORNN with frozen time steps (``learn_time_steps=false``: no learned multi-scale
  time steps).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plotting import integer_ticks, pyplot, save_figure, write_outputs
from .training.report import mean_std
from .validation import ConfigError

__all__ = ["Point", "VARIANTS", "grid_points", "variant_points", "combine", "distinct", "run_sweep",
           "collect_sweep", "format_sweep", "plot_sweep", "write_sweep"]  # fmt: skip

#: The paper's ablations: name -> description.
VARIANTS = {
    "fig4": "Fig. 4: dt and alpha each over an order of magnitude (one at a time, around the preset)",
    "fig6": "Fig. 6: 3-6 layers, standard / residual (residual_skip=2) / frozen time steps (learn_time_steps=false)",
}
_FACTORS = (10**-0.5, 1.0, 10**0.5)


@dataclass(frozen=True)
class Point:
    """One sweep point: setting overrides, the curve it belongs to and its x value in the plot."""

    settings: Mapping[str, Any]
    series: str = "all"
    x_key: str = ""
    x: Any = None
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", point_name(self.settings))


def _fmt(v: Any) -> str:
    """A value as in a point's name: 4 significant digits where they are exact, else the shortest repr that
    reads back as the same float (names are unique: 0.10001 and 0.10002 stay apart)."""
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(e) for e in v)
    if isinstance(v, float):
        short = f"{v:.4g}"
        return short if float(short) == v else repr(v)
    return str(v).lower() if isinstance(v, bool) else str(v)


def point_name(settings: Mapping[str, Any]) -> str:
    """Directory name of a point: ``key=value`` pairs joined by commas (``base`` for no overrides); distinct
    settings give distinct names."""
    name = ",".join(f"{k}={_fmt(v)}" for k, v in settings.items()) or "base"
    return name.replace("/", "_")


def grid_points(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[Point]:
    """The Cartesian product of ``[(key, values), ...]``; x is the first key, a curve per other combination."""
    if not grid:
        return []
    keys = [k for k, _ in grid]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"--grid keys must differ, got {keys}")
    for k, values in grid:
        if not values:
            raise ConfigError(f"--grid {k}= needs at least one value")
    points = []
    for combo in itertools.product(*(values for _, values in grid)):
        settings = dict(zip(keys, combo, strict=True))
        rest = ",".join(f"{k}={_fmt(v)}" for k, v in list(settings.items())[1:])
        points.append(Point(settings, series=rest or "all", x_key=keys[0], x=combo[0]))
    return points


def _scaled(value: Any, factor: float, cap: float | None = None) -> Any:
    if factor == 1.0:  # the centre point keeps the preset's value exactly (one run directory)
        return value
    if isinstance(value, (list, tuple)):
        return [_scaled(v, factor, cap) for v in value]
    v = float(f"{value * factor:.4g}")
    return min(v, cap) if cap is not None else v


def variant_points(variant: str, settings: Mapping[str, Any]) -> list[Point]:
    """The points of the named variant (see :data:`VARIANTS`) around ``settings`` (the preset's)."""
    if variant == "fig4":
        dt0, alpha0 = settings["dt"], settings["alpha"]
        alpha_c = alpha0 if alpha0 > 0 else 1.0
        points = [Point({"dt": _scaled(dt0, f, cap=1.0), "alpha": alpha_c}, f"dt (alpha={alpha_c:g})", "dt",
                        _scaled(dt0, f, cap=1.0)) for f in _FACTORS]  # fmt: skip
        points += [Point({"dt": dt0, "alpha": _scaled(alpha_c, f)}, f"alpha (dt={_fmt(dt0)})", "alpha",
                         _scaled(alpha_c, f)) for f in _FACTORS]  # fmt: skip
        return points
    if variant == "fig6":
        families = {"standard": {}, "residual": {"residual_skip": 2}, "frozen c": {"learn_time_steps": False}}
        return [Point({"num_layers": L, **extra}, family, "num_layers", L)
                for family, extra in families.items() for L in range(3, 7)]  # fmt: skip
    raise ConfigError(f"unknown sweep variant {variant!r}; valid variants: {', '.join(VARIANTS)}")


def combine(variant: list[Point], grid: list[Point]) -> list[Point]:
    """Every variant point crossed with every grid point (either list may be empty).

    A grid key that the variant itself varies is refused (the grid would silently override the variant's
    values): move the variant's centre with ``--set`` instead. Duplicates are kept here; :func:`run_sweep`
    announces them and trains each distinct point once."""
    if not variant or not grid:
        return list(variant or grid)
    varied = sorted({k for v in variant for k in v.settings})
    clash = [k for k in dict.fromkeys(k for g in grid for k in g.settings) if k in varied]
    if clash:
        raise ConfigError(
            f"--grid {clash[0]}: the variant varies {clash[0]} itself (it sets {', '.join(varied)}); give "
            f"--set {clash[0]}=VALUE to move its centre, or a --grid over another setting"
        )
    return [
        Point({**v.settings, **g.settings}, f"{v.series}, {point_name(g.settings)}", v.x_key, v.x)
        for v in variant
        for g in grid
    ]


def distinct(points: Sequence[Point]) -> tuple[list[Point], list[Point], list[str]]:
    """``(rows, runs, notes)``: the table's rows (one per point and curve), the points to train (one per
    name) and one note per point that appears more than once (the same point on two curves, e.g. fig4's
    centre, is trained once and drawn on both; the same point given twice is one row)."""
    rows = list({(p.name, p.series): p for p in points}.values())
    runs = list({p.name: p for p in points}.values())
    notes = []
    for name in dict.fromkeys(p.name for p in points):
        same = [p for p in points if p.name == name]
        curves = list(dict.fromkeys(p.series for p in same))
        if len(same) > len(curves):
            notes.append(f"point {name} is given {len(same)} times: trained once, one row")
        if len(curves) > 1:
            notes.append(
                f"point {name} is on {len(curves)} curves ({'; '.join(curves)}): trained once, drawn on each"
            )
    return rows, runs, notes


def run_sweep(task, settings: Mapping[str, Any], options: Mapping[str, Any], out: str | Path,
              points: Sequence[Point], runs: int = 1, log=print, *, storage: str | None = None,
              study: str | None = None, heartbeat: int = 60, stem: str = "sweep", **train_kw) -> dict[str, Any]:  # fmt: skip
    """Train every point (``runs`` seeds each, resuming what exists) and return :func:`collect_sweep`.

    ``log``: callable taking a line of text, for the sweep's and the runs' messages; ``train_kw`` go to
    :func:`~unicornn.training.trainer.train_run` (``data_dir``, ``ctx``, ``quiet``, ``tensorboard``, ...).
    The points are trials of an Optuna study on a grid sampler in ``storage`` (default
    ``sqlite:///OUT/optuna.db``), named ``study`` (default ``STEM-<digest of the task, settings, points and
    runs>``: another grid is another study, while its points' run directories are shared); several
    processes running this at once share the work (see :mod:`unicornn.tuning`).

    A point whose training stops on a non-finite loss is recorded as failed (its message kept) and the
    sweep goes on: a diverging setting is a result of the ablation, not an error.
    """
    from .training.epoch import NonFiniteError
    from .tuning import (
        Outcome,
        broadcast,
        grid_sampler,
        open_storage,
        open_study,
        optimize,
        require_optuna,
        study_digest,
    )

    out, ctx = Path(out), train_kw.get("ctx")
    main = ctx is None or ctx.is_main
    rows, todo, notes = distinct(points)
    for note in notes:
        log(note)
    names = [p.name for p in todo]
    digest = study_digest([task.spec.name, dict(settings), dict(options), names, runs])
    name = study or f"{stem}-{digest}"
    opt = store = None
    if main:
        optuna = require_optuna()
        store = open_storage(storage, out, heartbeat)
        direction = "maximize" if task.spec.higher_is_better else "minimize"
        attrs = {"task": task.spec.name, "kind": "sweep", "points": digest}  # a --study holds one grid
        opt = open_study(store, name, attrs, direction,
                         grid_sampler({"point": names}))  # fmt: skip
    index = {p.name: i for i, p in enumerate(todo, 1)}

    def train(params, _run_id, _report) -> Outcome:
        from .training import seeds

        p = todo[index[params["point"]] - 1]
        log(f"sweep point {index[p.name]}/{len(todo)}: {p.name}")
        try:
            results = seeds.train_seeds(task, {**settings, **p.settings}, options, out / p.name, runs,
                                        resume=True, log=log, **train_kw)  # fmt: skip
        except NonFiniteError as err:
            log(f"sweep point {p.name} failed: {err}")
            return Outcome("diverged", attrs={"error": str(err)})
        if any(r["status"] != "finished" for r in results):
            return Outcome("unfinished")
        valid = [r["best"]["valid"] for r in results]
        return Outcome("complete", sum(valid) / len(valid))

    ran = optimize(opt, store, len(todo), lambda t: {"point": t.suggest_categorical("point", names)}, train,
                   lock_dir=out / ".optuna" / name, ctx=ctx, log=log)  # fmt: skip
    failures = None
    if main:
        log(f"sweep study {name} in {store.text}: {len(todo)} points, {ran} trained by this process")
        failures = {t.params["point"]: t.user_attrs["error"] for t in opt.get_trials(deepcopy=False)
                    if t.state == optuna.trial.TrialState.FAIL and "error" in t.user_attrs}  # fmt: skip
    failures = broadcast(ctx, failures)
    return collect_sweep(out, rows, task.spec.name, settings, failures)


def collect_sweep(out: str | Path, points: Sequence[Point], task: str, settings: Mapping[str, Any] | None = None,
                  failures: Mapping[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Per point, the test metric at the best validation epoch over its runs (mean, std, n) and its status."""
    from .training.report import find_runs, summarize

    out = Path(out)
    rows, metric = [], None
    for p in points:
        groups = find_runs(out / p.name) if (out / p.name).exists() else {}
        runs = [r for group in groups.values() for r in group]
        summary = summarize(runs) if runs else {"runs": [], "n": 0, "test_mean": math.nan, "test_std": math.nan,
                                                "valid_mean": math.nan, "valid_std": math.nan, "metric": None}  # fmt: skip
        metric = metric or summary["metric"]
        finished = sum(r["status"] == "finished" for r in summary["runs"])
        status = (
            "failed" if failures and p.name in failures else f"{finished}/{len(summary['runs'])} finished"
        )
        rows.append({"point": p.name, "series": p.series, "x_key": p.x_key, "x": p.x, "settings": dict(p.settings),
                     "n": summary["n"], "test_mean": summary["test_mean"], "test_std": summary["test_std"],
                     "valid_mean": summary["valid_mean"], "valid_std": summary["valid_std"], "status": status,
                     "error": (failures or {}).get(p.name)})  # fmt: skip
    return {"task": task, "metric": metric, "base_settings": dict(settings or {}), "rows": rows}


def _f(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def format_sweep(result: Mapping[str, Any], title: str = "") -> str:
    """Markdown table: one row per point (curve, x, test metric mean +- std over seeds, runs, status)."""
    m = result["metric"] or "metric"
    lines = [f"## {title or 'sweep of ' + result['task']}", "",
             f"| point | curve | x | test {m} (mean +- std) | valid {m} | runs | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in result["rows"]:
        x = f"{r['x_key']}={_fmt(r['x'])}" if r["x_key"] else "-"
        lines.append(f"| {r['point']} | {r['series']} | {x} | {mean_std(r['test_mean'], r['test_std'], r['n'])} | "
                     f"{_f(r['valid_mean'])} | {r['n']} | {r['status']} |")  # fmt: skip
    lines.append("")
    lines.append(f"test {m} at the best validation epoch of each run; std over seeds (n - 1).")
    return "\n".join(lines) + "\n"


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def plot_sweep(result: Mapping[str, Any], path: str | Path, title: str = "") -> Path:
    """Test metric against x, one curve per series (error bars: std over seeds), one panel per x setting.

    Numeric x values are placed on their axis (log-scaled when they span 5x or more); other values (a model
    name, true/false) are placed side by side in the order of the sweep."""
    plt = pyplot()
    rows = list(result["rows"])
    keys = list(dict.fromkeys(r["x_key"] for r in rows)) or [""]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.8), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        group = [r for r in rows if r["x_key"] == key]
        numeric = all(_numeric(r["x"]) for r in group)
        labels = list(dict.fromkeys(_fmt(r["x"]) for r in group))
        for series in dict.fromkeys(r["series"] for r in group):
            pts = [(r["x"] if numeric else labels.index(_fmt(r["x"])), r["test_mean"], r["test_std"])
                   for r in group if r["series"] == series and r["n"]]  # fmt: skip
            if pts:
                xs, ys, es = zip(*sorted(pts))
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=None if series == "all" else series,
                            linestyle="-" if numeric else "none")  # fmt: skip
        xs = [r["x"] for r in group]
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 5:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(sorted(set(xs)), [_fmt(x) for x in sorted(set(xs))])
        elif numeric and all(isinstance(x, int) for x in xs):  # layers, units, epochs
            integer_ticks(ax.xaxis)
        if not numeric:
            ax.set_xticks(range(len(labels)), labels)
        ys = [r["test_mean"] for r in group if r["n"]]
        if ys and min(ys) > 0 and max(ys) / min(ys) >= 10:  # errors spanning decades
            ax.set_yscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(f"test {result['metric']}")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(title or f"sweep of {result['task']}")
    return save_figure(fig, path, dpi=110)


def write_sweep(result: Mapping[str, Any], out: str | Path, stem: str = "sweep", title: str = "",
                plot: bool = True) -> dict[str, Path]:  # fmt: skip
    """Write ``<stem>.json``, ``<stem>.md`` and (with matplotlib) ``<stem>.png`` under ``out``, each atomically."""
    draw = (lambda r, path: plot_sweep(r, path, title)) if plot else None
    return write_outputs(dict(result), out, stem, format_sweep(result, title), draw, table_suffix=".md")
