"""``unicornn report RUN_DIR``: per-seed table and mean +- std over seeds, learning curves."""

from __future__ import annotations

import sys

from .options import CLIError


def run(args) -> int:
    from ..training.report import write_report

    skipped: list = []
    reports = write_report(args.run_dir, plot=not args.no_plot, skipped=skipped)
    if not reports:
        n = len(skipped)
        others = (
            f"; skipped {n} director{'y' if n == 1 else 'ies'} whose config.json is not a run's" if n else ""
        )
        raise CLIError(f"no runs (directories with a run's config.json) under {args.run_dir}{others}")
    for d in skipped:
        print(f"unicornn: skipped {d}: its config.json is not a unicornn run's", file=sys.stderr)
    for rep in reports:
        print(rep["text"])
        print(
            "written: " + ", ".join(map(str, rep["files"]))
            + ("" if rep["png"] else " (no plot: matplotlib missing or --no-plot)")
        )  # fmt: skip
    return 0


def add_parser(sub) -> None:
    rp = sub.add_parser(
        "report",
        help="summarise runs: per seed and mean +- std (like the paper's Table 8), learning curves",
        description="Find the runs under RUN_DIR (one run, OUT/TASK or OUT), print per-run best epoch, "
        "validation and test metric and the mean +- std over seeds, and write report.md, report.json and "
        "curves.png next to the runs.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, OUT/TASK, or OUT")
    rp.add_argument("--no-plot", action="store_true", help="skip the PNG of the learning curves")
    rp.set_defaults(func=run)
