"""Summaries of finished (or running) runs: per-seed table, mean +- std over seeds, learning curves, and the
recurrent weight norms ``||w^l||_inf`` per layer and epoch (the paper's Fig. 7) where the runs logged them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..plotting import pyplot, save_figure
from ..validation import ConfigError
from .checkpoint import atomic_write_text, read_jsonl

__all__ = ["find_runs", "summarize", "format_report", "plot_curves", "plot_weight_norms", "write_report"]


def find_runs(root: str | Path) -> dict[Path, list[Path]]:
    """Run directories (those holding ``config.json``) under ``root``, grouped by their parent directory.

    ``root`` may be one run (``OUT/TASK/seed-0``), a task directory (``OUT/TASK``) or an output directory.
    """
    root = Path(root)
    if not root.exists():
        raise ConfigError(f"{root} does not exist")
    runs = sorted(
        {p.parent for p in root.rglob("config.json")} | ({root} if (root / "config.json").exists() else set())
    )
    groups: dict[Path, list[Path]] = {}
    for r in runs:
        groups.setdefault(r.parent, []).append(r)
    return groups


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n - 1; 0 for a single value)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _run_summary(run: Path) -> dict[str, Any]:
    from .run import read_json  # a damaged config.json: RunFileError, one line (``--resume`` repairs it)

    config = read_json(run / "config.json")
    rows = read_jsonl(run / "metrics.jsonl")
    metric = config["spec"]["metric"]
    higher = config["spec"]["higher_is_better"]
    best = None
    for r in rows:  # recompute the selection from the log (independent of result.json)
        v = r[f"valid_{metric}"]
        if best is None or (v > best[f"valid_{metric}"] if higher else v < best[f"valid_{metric}"]):
            best = r
    finished = (run / "result.json").exists()
    return {
        "run": run.name,
        "seed": config["settings"]["seed"],
        "metric": metric,
        "higher_is_better": higher,
        "epochs_done": rows[-1]["epoch"] if rows else 0,
        "epochs": config["settings"]["epochs"],
        "status": "finished" if finished else ("running/stopped" if rows else "not started"),
        "best_epoch": best["epoch"] if best else None,
        "valid": best[f"valid_{metric}"] if best else None,
        "test": best[f"test_{metric}"] if best else None,
        "extras": _extras(config, best[f"test_{metric}"] if best else None),
        "rows": rows,
    }


def _extras(config: dict[str, Any], test: float | None) -> dict[str, float]:
    """Task-specific columns beside a run's test metric (the task's ``result_extras``, e.g. Lorenz-96's
    persistence baseline), or {}."""
    from ..tasks import TASKS

    task = TASKS.get(config["task"]) if config["task"] in TASKS else None
    if test is None or not hasattr(task, "result_extras"):
        return {}
    return task.result_extras(config["task_options"], config["settings"]["seed"], test)


def summarize(runs: list[Path]) -> dict[str, Any]:
    """Per-run best epoch / validation / test metric and the mean +- std of the test metric over runs."""
    per_run = [_run_summary(r) for r in runs]
    with_result = [p for p in per_run if p["test"] is not None]
    metrics = {p["metric"] for p in per_run}
    if len(metrics) > 1:
        raise ConfigError(f"runs mix different metrics {sorted(metrics)}; report them separately")
    tests = [p["test"] for p in with_result]
    valids = [p["valid"] for p in with_result]
    mt, st = _mean_std(tests)
    mv, sv = _mean_std(valids)
    return {
        "metric": metrics.pop() if metrics else None,
        "runs": [{k: v for k, v in p.items() if k != "rows"} for p in per_run],
        "n": len(with_result),
        "test_mean": mt,
        "test_std": st,
        "valid_mean": mv,
        "valid_std": sv,
        "_rows": {p["run"]: p["rows"] for p in per_run},
    }


def _f(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_report(title: str, summary: dict[str, Any]) -> str:
    """Markdown table like the paper's Table 8: one row per run, then mean +- std."""
    m = summary["metric"]
    unit = " (%)" if m == "accuracy" else ""
    extra = list(dict.fromkeys(k for r in summary["runs"] for k in r.get("extras", {})))  # task's own columns
    lines = [
        f"## {title}",
        "",
        f"| run | seed | status | epochs | best epoch | valid {m}{unit} | test {m}{unit} |"
        + "".join(f" {k} |" for k in extra),
        "| --- | --- | --- | --- | --- | --- | --- |" + " --- |" * len(extra),
    ]
    for r in summary["runs"]:
        lines.append(
            f"| {r['run']} | {r['seed']} | {r['status']} | {r['epochs_done']}/{r['epochs']} | "
            f"{_f(r['best_epoch'])} | {_f(r['valid'])} | {_f(r['test'])} |"
            + "".join(f" {_f(r.get('extras', {}).get(k))} |" for k in extra)
        )
    lines += [
        "",
        f"test {m} at the best validation epoch, mean +- std (sample std, n - 1) over {summary['n']} run(s): "
        f"{_f(summary['test_mean'])} +- {_f(summary['test_std'])}",
        "",
    ]
    lines += _weight_norm_lines(summary["_rows"])
    return "\n".join(lines)


def _weight_norms(rows: list[dict[str, Any]]) -> list[tuple[int, list[float]]]:
    """(epoch, ||w^l||_inf per layer) of the rows that logged them."""
    return [(r["epoch"], r["weight_norms"]) for r in rows if r.get("weight_norms")]


def _weight_norm_lines(rows_by_run: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One line per run: each layer's ||w^l||_inf at its first and last logged epoch (Fig. 7 in numbers)."""
    lines = []
    for name, rows in rows_by_run.items():
        norms = _weight_norms(rows)
        if norms:
            (e0, first), (e1, last) = norms[0], norms[-1]
            change = ", ".join(
                f"layer {k + 1} {a:.4g} -> {b:.4g}" for k, (a, b) in enumerate(zip(first, last))
            )
            lines.append(f"{name}: recurrent weight norm ||w^l||_inf, epoch {e0} -> {e1}: {change}")
    return lines + [""] if lines else []


def plot_curves(summary: dict[str, Any], path: Path, title: str) -> Path | None:
    """Training loss and validation metric per epoch for every run, as a PNG; None without matplotlib."""
    try:
        plt = pyplot()
    except ImportError:
        return None
    m = summary["metric"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, rows in summary["_rows"].items():
        if not rows:
            continue
        ep = [r["epoch"] for r in rows]
        axes[0].plot(ep, [r["train_loss"] for r in rows], label=name)
        axes[1].plot(ep, [r[f"valid_{m}"] for r in rows], label=name)
    axes[0].set(xlabel="epoch", ylabel="training loss", title="training loss")
    axes[1].set(xlabel="epoch", ylabel=f"validation {m}", title=f"validation {m}")
    if m != "accuracy":
        for ax in axes:
            ax.set_yscale("log")
    else:
        axes[0].set_yscale("log")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


def plot_weight_norms(summary: dict[str, Any], path: Path, title: str) -> Path | None:
    """``||w^l||_inf`` per layer against the epoch for every run that logged it (the paper's Fig. 7), as a
    PNG; None without matplotlib or without logged norms."""
    logged = {name: _weight_norms(rows) for name, rows in summary["_rows"].items()}
    logged = {name: norms for name, norms in logged.items() if norms}
    if not logged:
        return None
    try:
        plt = pyplot()
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, norms in logged.items():
        epochs = [e for e, _ in norms]
        for k in range(len(norms[0][1])):
            ax.plot(epochs, [n[k] for _, n in norms], "o-", ms=3, label=f"{name}, layer {k + 1}")
    ax.set(xlabel="epoch", ylabel="||w^l||_inf", title=f"recurrent weight norms: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=100)


def write_report(root: str | Path, plot: bool = True) -> list[dict[str, Any]]:
    """Summarise every group of runs under ``root``; write ``report.md``, ``report.json`` and
    ``curves.png`` (and ``weight_norms.png`` when the runs logged weight norms) into each group's directory.
    Returns ``[{"dir", "text", "summary", "png", "weight_png"}]``."""
    from .records import fs_errors  # a read-only or full file system: RunFileError, one line

    out = []
    for group, runs in find_runs(root).items():
        summary = summarize(runs)
        title = str(group)
        text = format_report(title, summary)
        public = {k: v for k, v in summary.items() if k != "_rows"}
        with fs_errors(f"write the report into {group}"):
            atomic_write_text(text, group / "report.md")
            atomic_write_text(json.dumps(public, indent=2) + "\n", group / "report.json")
            png = plot_curves(summary, group / "curves.png", title) if plot else None
            weight_png = plot_weight_norms(summary, group / "weight_norms.png", title) if plot else None
        out.append({"dir": group, "text": text, "summary": public, "png": png, "weight_png": weight_png})
    return out
