"""Hyper-parameter sweeps: every point a normal training run in its own directory, collected into one table.

A sweep is a list of :class:`Point` s, each a set of setting overrides on top of the task's preset. Point
``p`` trains ``runs`` seeds with :func:`~unicornn.training.seeds.train_seeds` into ``OUT/<p.name>/TASK/seed-K``
(the run directories of ``unicornn train``: ``unicornn report`` and ``unicornn eval`` read them). Runs are
opened with ``resume=True``: a finished run is not trained again, an interrupted one continues from its
checkpoint, so rerunning the same sweep command completes it. The table (``sweep[-VARIANT].json`` / ``.md``
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

from .plotting import pyplot, save_figure, write_outputs
from .validation import ConfigError

__all__ = ["Point", "VARIANTS", "grid_points", "variant_points", "combine", "run_sweep", "collect_sweep",
           "format_sweep", "plot_sweep", "write_sweep"]  # fmt: skip

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
    if isinstance(v, (list, tuple)):
        return "+".join(_fmt(e) for e in v)
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).lower() if isinstance(v, bool) else str(v)


def point_name(settings: Mapping[str, Any]) -> str:
    """Directory name of a point: ``key=value`` pairs joined by commas (``base`` for no overrides)."""
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
    """Every variant point crossed with every grid point (either list may be empty); duplicates dropped."""
    if not variant or not grid:
        points = variant or grid
    else:
        points = [
            Point({**v.settings, **g.settings}, f"{v.series}, {point_name(g.settings)}", v.x_key, v.x)
            for v in variant
            for g in grid
        ]
    seen, out = set(), []
    for p in points:  # fig4's centre point is on both curves: trained once, drawn twice
        key = (p.name, p.series)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def run_sweep(task, settings: Mapping[str, Any], options: Mapping[str, Any], out: str | Path,
              points: Sequence[Point], runs: int = 1, log=print, **train_kw) -> dict[str, Any]:  # fmt: skip
    """Train every point (``runs`` seeds each, resuming what exists) and return :func:`collect_sweep`.

    ``log``: callable taking a line of text, for the sweep's and the runs' messages; ``train_kw`` go to
    :func:`~unicornn.training.trainer.train_run` (``data_dir``, ``ctx``, ``quiet``, ``tensorboard``, ...).

    A point whose training stops on a non-finite loss is recorded as failed (its message kept) and the
    sweep goes on: a diverging setting is a result of the ablation, not an error.
    """
    from .training.epoch import NonFiniteError
    from .training.seeds import train_seeds

    out = Path(out)
    failures: dict[str, str] = {}
    done: set[str] = set()
    for i, p in enumerate(points, 1):
        if p.name in done:
            continue
        done.add(p.name)
        log(f"sweep point {i}/{len(points)}: {p.name}")
        try:
            train_seeds(task, {**settings, **p.settings}, options, out / p.name, runs, resume=True, log=log,
                        **train_kw)  # fmt: skip
        except NonFiniteError as err:
            failures[p.name] = str(err)
            log(f"sweep point {p.name} failed: {err}")
    return collect_sweep(out, points, task.spec.name, settings, failures)


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
        lines.append(f"| {r['point']} | {r['series']} | {x} | {_f(r['test_mean'])} +- {_f(r['test_std'])} | "
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
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=series,
                            linestyle="-" if numeric else "none")  # fmt: skip
        xs = [r["x"] for r in group]
        if numeric and xs and min(xs) > 0 and max(xs) / min(xs) >= 5:
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(sorted(set(xs)), [_fmt(x) for x in sorted(set(xs))])
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
