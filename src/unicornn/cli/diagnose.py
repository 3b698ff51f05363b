"""``unicornn diagnose gradients|states``: the paper's stability claims checked on a model."""

from __future__ import annotations

from ..diagnose import BOUND_FORMS
from . import EXIT_VIOLATED
from .common import run_stack, written
from .options import (
    CLIError,
    add_out,
    add_threads,
    comma_ints,
    comma_names,
    positive_int,
    seed_int,
    set_threads,
)


def run_gradients(args) -> int:
    import torch

    from ..bench.common import load_average, machine_info
    from ..diagnose import format_gradient_table, gradient_profile, paper_models, plot_gradient_profiles
    from ..plotting import write_outputs
    from ..training.progress import line_logger

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    log = line_logger()
    profiles = {}
    for N in args.lengths:
        try:
            models = paper_models(args.input_size, args.hidden, args.layers, dt=args.dt, alpha=args.alpha)
        except (ValueError, TypeError) as err:
            raise CLIError(str(err)) from None
        unknown = sorted(set(args.models) - set(models))
        if unknown:
            raise CLIError(f"--models: unknown {', '.join(unknown)}; valid: {', '.join(models)}")
        for name in args.models:
            log(f"gradient profile of {name} at N={N} ({args.wrt}) ...")
            p = gradient_profile(models[name], N, batch=args.batch, wrt=args.wrt, seed=args.seed)
            profiles[f"{name} N={N}"] = p
            print(
                f"{name} N={N}: ||grad|| at the last step {p['norm'][-1]:.3g}, at the first {p['norm'][0]:.3g}"
            )
    table = format_gradient_table(profiles)
    result = {
        "diagnostic": "gradients",
        "settings": {k: getattr(args, k) for k in ("lengths", "models", "hidden", "layers", "input_size",
                                                    "batch", "dt", "alpha", "wrt", "seed")},
        "machine": machine_info("cpu"),
        "load_average": load_average(),
        "profiles": profiles,
    }  # fmt: skip
    paths = write_outputs(result, args.out, "gradients", table,
                          lambda r, path: plot_gradient_profiles(r["profiles"], path))  # fmt: skip
    print(table)
    print(written(paths))
    return 0


def run_states(args) -> int:
    import torch

    from ..diagnose import format_state_check, plot_state_bound, state_bound_check
    from ..modules import UnICORNN
    from ..plotting import write_outputs

    torch.manual_seed(args.seed)
    if args.run is not None:
        rnn, where = run_stack(args.run)
    else:
        try:
            rnn = UnICORNN(args.input_size, args.hidden, args.layers, dt=args.dt, alpha=args.alpha)
        except (ValueError, TypeError) as err:
            raise CLIError(str(err)) from None
        where = f"fresh weights ({args.layers} x {args.hidden} units, dt {args.dt:g}, alpha {args.alpha:g})"
    gen = torch.Generator().manual_seed(args.seed)
    inputs = args.input_scale * torch.randn(args.steps, args.batch, rnn.input_size, generator=gen)
    state = None
    if args.initial_state:
        start = torch.full((rnn.num_layers, args.batch, rnn.hidden_size), float(args.initial_state))
        state = (start, start)
    try:
        check = state_bound_check(rnn, inputs, state, form=args.form)
    except ValueError as err:
        raise CLIError(str(err)) from None
    check["source"] = where
    text = format_state_check(check, where)
    paths = write_outputs(check, args.out, "states", text, plot_state_bound)
    print(text)
    print(written(paths))
    return EXIT_VIOLATED if check["violated"] else 0


def _add_model_sizes(p, hidden: int, layers: int, what: str = "") -> None:
    p.add_argument(
        "--hidden", type=positive_int, default=hidden, help=f"{what}hidden units (default {hidden})"
    )
    p.add_argument("--layers", type=positive_int, default=layers, help=f"{what}layers (default {layers})")
    p.add_argument("--input-size", type=positive_int, default=1, help=f"{what}input width (default 1)")


def add_parser(sub) -> None:
    di = sub.add_parser(
        "diagnose",
        help="check the paper's claims on a model: gradients over time (Prop. 3.2), bounded states (Prop. C.1)",
        description="Diagnostics of the paper's stability claims; each writes a table, JSON and a PNG into --out.",
    )
    dsub = di.add_subparsers(dest="diagnostic", metavar="DIAGNOSTIC", required=True)
    gr = dsub.add_parser(
        "gradients",
        help="||dL/dh_k|| for k = 1..N of a loss on the last step: UnICORNN against LSTM and GRU",
        description="Gradient norm of a loss on the last step with respect to the top layer's hidden state "
        "after every step k (or the input at step k, --wrt input), for fresh models with their papers' "
        "initialisation, in float64. Prop. 3.2: UnICORNN's does not decay with N - k.",
    )
    gr.add_argument(
        "--lengths", type=comma_ints, default=[1000, 10000], metavar="N,N", help="default 1000,10000"
    )
    gr.add_argument("--models", type=comma_names, default=["unicornn", "lstm", "gru"], metavar="M,M",
                    help="unicornn, lstm, gru (default all)")  # fmt: skip
    _add_model_sizes(gr, 64, 1)
    gr.add_argument("--batch", type=positive_int, default=8, help="sequences (default 8)")
    gr.add_argument("--dt", type=float, default=0.19, help="UnICORNN's dt (default 0.19, psMNIST)")
    gr.add_argument("--alpha", type=float, default=30.65, help="UnICORNN's alpha (default 30.65, psMNIST)")
    gr.add_argument("--wrt", choices=("state", "input"), default="state",
                    help="state: exact, one step at a time (default); input: one pass, cheap at large N")  # fmt: skip
    gr.add_argument("--seed", type=seed_int, default=0)
    add_threads(gr, help="torch threads")
    add_out(gr, "claims")
    gr.set_defaults(func=run_gradients)
    st = dsub.add_parser(
        "states",
        help="max |y|, max |z| over time against the bound of Prop. C.1 (exit 4 when violated)",
        description="Run a UnICORNN stack (a trained run's, or fresh weights) on random inputs and compare "
        "max |y_n| and max |z_n| of every layer with the bound of Prop. C.1. Exit status 4 when the bound "
        "is exceeded. The bound assumes zero initial states: --initial-state starts every unit elsewhere "
        "(a way to see a violation reported). The default form is the proof's geometric-sum bound, valid at "
        "every step; --form paper checks eq. 7 as the paper states it, a small-time bound (see "
        "unicornn.diagnose.prop_c1_bound) that a long run may exceed without anything being wrong.",
    )
    st.add_argument(
        "run", nargs="?", metavar="RUN", help="run directory, best.pt or checkpoint.pt (default: fresh)"
    )
    st.add_argument("--steps", type=positive_int, default=1000, help="sequence length N (default 1000)")
    st.add_argument("--batch", type=positive_int, default=8, help="sequences (default 8)")
    st.add_argument("--input-scale", type=float, default=1.0, help="inputs ~ N(0, scale^2) (default 1)")
    st.add_argument("--initial-state", type=float, default=0.0, metavar="V", help="y_0 = z_0 = V (default 0)")
    st.add_argument("--form", choices=BOUND_FORMS, default="geometric",
                    help="geometric: the proof's bound, valid at every step (default); paper: eq. 7 as the paper "
                    "states it, a small-time bound that long runs may exceed")  # fmt: skip
    _add_model_sizes(st, 128, 2, "fresh weights: ")
    st.add_argument("--dt", type=float, default=0.19, help="fresh weights: dt (default 0.19)")
    st.add_argument("--alpha", type=float, default=30.65, help="fresh weights: alpha (default 30.65)")
    st.add_argument("--seed", type=seed_int, default=0)
    add_out(st, "claims")
    st.set_defaults(func=run_states)
