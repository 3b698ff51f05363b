"""``unicornn plot timesteps RUN``: plots of a trained run (the learned time steps, Fig. 5)."""

from __future__ import annotations

from pathlib import Path

from .common import run_stack, written
from .options import add_out, positive_int


def run_timesteps(args) -> int:
    from ..diagnose import format_time_steps, plot_time_steps, time_step_histogram
    from ..plotting import write_outputs

    rnn, where = run_stack(args.run)
    hist = time_step_histogram(rnn, bins=args.bins)
    hist["source"] = where
    text = format_time_steps(hist, where)
    out = (
        Path(args.out) if args.out else (Path(args.run) if Path(args.run).is_dir() else Path(args.run).parent)
    )
    paths = write_outputs(hist, out, "timesteps", text, plot_time_steps)
    print(text)
    print(written(paths))
    return 0


def add_parser(sub) -> None:
    pl = sub.add_parser("plot", help="plots of a trained run: learned time steps (Fig. 5)")
    psub = pl.add_subparsers(dest="plot", metavar="PLOT", required=True)
    ts = psub.add_parser(
        "timesteps",
        help="per-layer histogram of the effective time steps dt * sigmoid(c) of a trained run (Fig. 5)",
        description="Histogram per layer of dt * sigmoid(c_i) over the units i, from RUN's best.pt (else "
        "checkpoint.pt). Writes timesteps.txt, .json and .png into RUN (or --out).",
    )
    ts.add_argument("run", metavar="RUN", help="run directory, best.pt or checkpoint.pt")
    ts.add_argument("--bins", type=positive_int, default=30, help="log-spaced bins (default 30)")
    add_out(ts, None, help="output directory (default: the run directory)")
    ts.set_defaults(func=run_timesteps)
