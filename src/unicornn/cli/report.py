"""``unicornn report RUN_DIR``: per-seed table and mean +- std over seeds, learning curves."""

from __future__ import annotations

from .options import CLIError


def run(args) -> int:
    from ..training.report import write_report

    reports = write_report(args.run_dir, plot=not args.no_plot)
    if not reports:
        raise CLIError(f"no runs (directories with config.json) under {args.run_dir}")
    for rep in reports:
        print(rep["text"])
        print(
            f"written: {rep['dir'] / 'report.md'}, {rep['dir'] / 'report.json'}"
            + (f", {rep['png']}" if rep["png"] else " (no plot: matplotlib missing or --no-plot)")
        )
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
