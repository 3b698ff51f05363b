"""Checks of the paper's claims on a model: gradients over time, bounded states, time steps, weight norms.

* :func:`gradient_profile` -- ``||dL/dy_k||`` for every step k of a loss on the last step (Prop. 3.2: no
  decay with ``N - k``), for UnICORNN and the baselines of :mod:`unicornn.baselines`.
* :func:`state_bound_check` -- ``max |y|`` and ``max |z|`` over time against the bound of Prop. C.1.
* :func:`time_step_histogram` -- the learned effective time steps ``dt * sigmoid(c)`` per layer (Fig. 5).
* :func:`weight_norms` -- ``||w^l||_inf`` per layer (Fig. 7; defined in :mod:`unicornn.task_models`, where
  the trainer logs it every epoch).

The first three have a ``format_*`` companion (the text table the command line prints and writes) and a
``plot_*`` companion writing a PNG (:mod:`unicornn.plotting`).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import UnICORNN, unicornn_scan
from .baselines import GRU, LSTM
from .heads import top_state
from .plotting import pyplot, save_figure
from .task_models import recurrent_weight_norms, weight_norms

__all__ = [
    "BOUND_FORMS",
    "format_gradient_table",
    "format_state_check",
    "format_time_steps",
    "gradient_profile",
    "layer_states",
    "paper_models",
    "plot_gradient_profiles",
    "plot_state_bound",
    "plot_time_steps",
    "prop_c1_bound",
    "recurrent_weight_norms",
    "state_bound_check",
    "time_step_histogram",
    "unicornn_from_state",
    "unicornn_of",
    "weight_norms",
]


def unicornn_of(model: nn.Module) -> UnICORNN:
    """The :class:`UnICORNN` stack of ``model`` (itself, or the ``.rnn`` of a task model)."""
    if isinstance(model, UnICORNN):
        return model
    rnn = getattr(model, "rnn", None)
    if isinstance(rnn, UnICORNN):
        return rnn
    raise TypeError(f"model must be a UnICORNN or hold one as .rnn, got {type(model).__name__}")


def unicornn_from_state(state: Mapping[str, Tensor], settings: Mapping[str, Any]) -> UnICORNN:
    """The UnICORNN stack of a saved task model, rebuilt from its ``state_dict`` and run settings.

    Works for any model holding a stack (``rnn.`` of :class:`unicornn.task_models.SequenceModel`, or deeper, e.g.
    behind a word embedding): sizes come from the weights, ``dt``, ``alpha``, ``residual_skip`` from
    ``settings`` (a run's ``config.json`` settings). Raises ``ValueError`` when ``state`` holds no stack
    (a baseline's run).
    """
    prefixes = [
        k[: -len("c_l0")] for k in state if k.endswith("c_l0") and k[: -len("c_l0")] + "weight_hh_l0" in state
    ]
    if not prefixes:
        raise ValueError(
            "the checkpoint holds no UnICORNN stack (a baseline model?); these diagnostics need one"
        )
    prefix = min(prefixes, key=len)
    own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    layers = sum(1 for k in own if re.fullmatch(r"c_l\d+", k))
    rnn = UnICORNN(
        own["weight_ih_l0"].shape[1],
        own["weight_hh_l0"].shape[0],
        layers,
        dt=settings.get("dt", 0.1),
        alpha=settings.get("alpha", 0.0),
        residual_skip=settings.get("residual_skip"),
        bias="bias_ih_l0" in own,
    )
    rnn.load_state_dict(own)
    return rnn


# --------------------------------------------------------------------------------------------------
# gradients over time (Prop. 3.2)
# --------------------------------------------------------------------------------------------------


def paper_models(
    input_size: int, hidden_size: int, num_layers: int = 1, dt: float = 0.19, alpha: float = 30.65
) -> dict[str, nn.Module]:
    """Fresh UnICORNN, LSTM and GRU of the same size, each with its paper's initialisation (UnICORNN:
    Appendix A; LSTM and GRU: PyTorch's). ``dt``, ``alpha``: UnICORNN's (default: the psMNIST setting)."""
    return {
        "unicornn": UnICORNN(input_size, hidden_size, num_layers, dt=dt, alpha=alpha),
        "lstm": LSTM(input_size, hidden_size, num_layers),
        "gru": GRU(input_size, hidden_size, num_layers),
    }


def _input_size(model: nn.Module) -> int:
    size = getattr(model, "input_size", None)
    if not isinstance(size, int):
        raise TypeError(f"model must have an int attribute input_size, got {type(model).__name__}")
    return size


@torch.no_grad()
def _norm(t: Tensor) -> Tensor:
    """Frobenius norm without underflow: squares of values below ~1e-154 vanish in float64."""
    peak = t.abs().max()
    return peak * (t / peak).norm() if float(peak) > 0 else peak


@torch.no_grad()
def _unit_vector(shape, generator, dtype, device) -> Tensor:
    g = torch.randn(shape, generator=generator, dtype=torch.float64)
    return (g / g.norm()).to(dtype=dtype, device=device)


def gradient_profile(
    model: nn.Module,
    N: int,
    batch: int = 8,
    wrt: str = "state",
    layer: int = -1,
    inputs: Tensor | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = torch.float64,
) -> dict[str, Any]:
    """Gradient norm over time of a loss on the last step.

    The loss is ``L = <g, h_N>``: a fixed random unit direction ``g`` (B, H) applied to the top layer's
    hidden state after the last step (UnICORNN's ``y_N``, the LSTM's ``h_N``, ...), so that ``dL/dh_N`` has
    norm 1 for every model and the profile shows only how the gradient travels back in time.

    Args:
        model: a time-major recurrent module called as ``model(input, state) -> (output, state)``
            (:class:`unicornn.UnICORNN` or one of :mod:`unicornn.baselines`), or a task model holding one as
            ``.rnn`` (its stack is profiled). A copy is run, in evaluation mode.
        N: sequence length.
        batch: sequences B; inputs ~ N(0, 1) unless ``inputs`` (N, B, d) is given.
        wrt: ``"state"``: ``||dL/dh_k||`` of layer ``layer``'s hidden state after step k, exact, by running
            the sequence one step at a time (N calls); ``"input"``: ``||dL/du_k||`` of the input at step k,
            one pass over the whole sequence (any fused kernel, cheap at large N).
        layer: which layer's state for ``wrt="state"`` (default the top one).
        seed: seeds the inputs and ``g``.
        dtype: compute in this dtype on a copy of the model (default float64, whose range shows a vanishing
            gradient down to ~1e-308 where float32 flushes it to 0 below ~1e-45); None: the model's own.

    Returns:
        dict with ``k`` (list 1..N), ``norm`` (list of N floats: the gradient's Frobenius norm over the batch
        at step k), ``wrt``, ``N``, ``batch`` and ``decay`` = norm[0] / norm[-1] (below 1: the gradient
        reaching the first step is smaller than at the last).
    """
    if wrt not in ("state", "input"):
        raise ValueError(f"wrt must be 'state' or 'input', got {wrt!r}")
    if isinstance(getattr(model, "rnn", None), nn.Module) and not hasattr(model, "hidden_size"):
        model = model.rnn  # a task model: profile its recurrent stack
    if isinstance(N, bool) or not isinstance(N, int) or N < 1:
        raise ValueError(f"N must be an int >= 1, got {N!r}")
    model = copy.deepcopy(model).eval()  # evaluation mode: no dropout mask drawn per call
    if dtype is not None:
        model = model.to(dtype)
    if wrt == "state" and isinstance(model, UnICORNN):
        model.backend = "reference"  # the same recurrence; per-step calls are cheapest without kernels
    param = next(model.parameters())
    dtype, device = param.dtype, param.device
    gen = torch.Generator().manual_seed(seed)
    if inputs is None:
        inputs = torch.randn(N, batch, _input_size(model), generator=gen, dtype=torch.float64)
    elif inputs.dim() != 3 or inputs.shape[0] != N:
        raise ValueError(f"inputs must be (N, B, d) with N={N}, got shape {tuple(inputs.shape)}")
    u = inputs.to(dtype=dtype, device=device)
    if wrt == "input":
        u = u.detach().requires_grad_(True)
        _, state = model(u)
        top = top_state(state)[-1]
        (top * _unit_vector(top.shape, gen, dtype, device)).sum().backward()
        norms = torch.stack([_norm(g) for g in u.grad])
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # N calls on tiny tensors: extra threads only contend
        try:
            hidden = []
            state = None
            for n in range(N):
                _, state = model(u[n : n + 1], state)
                h = top_state(state)
                h.retain_grad()
                hidden.append(h)
            top = hidden[-1][-1]
            (top * _unit_vector(top.shape, gen, dtype, device)).sum().backward()
            norms = torch.stack([_norm(h.grad[layer]) for h in hidden])
        finally:
            torch.set_num_threads(threads)
    norms = norms.double().cpu()
    return {
        "wrt": wrt,
        "N": N,
        "batch": u.shape[1],
        "k": list(range(1, N + 1)),
        "norm": norms.tolist(),
        "decay": float(norms[0] / norms[-1]) if float(norms[-1]) > 0 else math.inf,
    }


# --------------------------------------------------------------------------------------------------
# bounded states (Prop. C.1)
# --------------------------------------------------------------------------------------------------

BOUND_FORMS = ("paper", "geometric")


def prop_c1_bound(n: Tensor | int, dt: float, alpha: float, form: str = "paper") -> tuple[Tensor, Tensor]:
    r"""The bound of the paper's Proposition C.1 on ``max_i |y^l_n|`` and ``max_i |z^l_n|`` after n steps.

    With zero initial states, ``beta = max(1 + 2 alpha, 4 alpha^2)`` and ``t_n = n dt``, the proof shows for
    the energy ``H_n = alpha y_n^2 + z_n^2`` of every unit (its eq. 10) ``H_n <= (1 + beta dt) H_{n-1} +
    2 dt (1 + 2 alpha dt^3)``, independent of the input (``|tanh| <= 1``, ``sigmoid(c) <= 1``), hence

    * ``form="geometric"``: ``H_n <= (2 dt + 4 alpha dt^4) ((1 + beta dt)^n - 1) / (beta dt)`` (the first
      line of its eq. 11, valid for every n);
    * ``form="paper"``: ``H_n <= 2 (1 + 2 beta t_n)`` (eq. 7 as the proposition states it). The last step of
      the proof replaces ``(1 + beta dt)^n`` by ``1 + 2 beta n dt``, true only while ``beta t_n`` is at most
      about 1.26 ("dt << 1"); beyond that eq. 7 is a small-time statement, and a resonantly driven unit may
      exceed it while staying within the geometric form.

    Then ``|y_n| <= sqrt(H_n / alpha)`` and ``|z_n| <= sqrt(H_n)``. The proof assumes ``alpha > 0``; for
    ``alpha = 0`` the y bound is infinite (the z bound still holds, with beta = 1).

    Args:
        n: step index (int or tensor of ints >= 0).
        dt: the nominal time step of the layer (the bound uses ``dt * sigmoid(c) <= dt``).
        alpha: the restoring-force coefficient.
        form: ``"paper"`` or ``"geometric"``.

    Returns:
        ``(y_bound, z_bound)``, float64 tensors shaped like ``n``.
    """
    if form not in BOUND_FORMS:
        raise ValueError(f"form must be one of {BOUND_FORMS}, got {form!r}")
    if not 0.0 < dt <= 1.0:
        raise ValueError(f"dt must be in (0, 1], got {dt}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    n = torch.as_tensor(n, dtype=torch.float64)
    beta = max(1.0 + 2.0 * alpha, 4.0 * alpha**2)
    if form == "paper":
        energy = 2.0 * (1.0 + 2.0 * beta * n * dt)
    else:
        growth = torch.expm1(n * math.log1p(beta * dt))  # (1 + beta dt)^n - 1, without cancellation
        energy = (2.0 * dt + 4.0 * alpha * dt**4) * growth / (beta * dt)
    y_bound = torch.sqrt(energy / alpha) if alpha > 0 else torch.full_like(energy, math.inf)
    return y_bound, torch.sqrt(energy)


def layer_states(module: nn.Module, inputs: Tensor, state=None) -> list[tuple[Tensor, Tensor]]:
    """Every layer's ``y_1..y_N`` and ``z_1..z_N`` of a UnICORNN stack, in float64, evaluation mode.

    Runs the stack layer by layer with :func:`unicornn.unicornn_scan` (projection, residual input and
    recurrence as :class:`unicornn.UnICORNN` computes them, no dropout) and recovers ``z`` exactly from the
    recurrence ``y_n = y_{n-1} + s z_n``: ``z_n = (y_n - y_{n-1}) / s``.

    Args:
        module: a :class:`unicornn.UnICORNN` (or a task model holding one as ``.rnn``).
        inputs: (N, B, input_size), time-major (whatever the module's ``batch_first``).
        state: optional ``(y_0, z_0)``, each (L, B, M).

    Returns:
        per layer ``(y, z)``, each (N, B, M) float64.
    """
    rnn = copy.deepcopy(unicornn_of(module)).double().eval()
    if inputs.dim() != 3 or inputs.shape[-1] != rnn.input_size:
        raise ValueError(f"inputs must be (N, B, {rnn.input_size}), got shape {tuple(inputs.shape)}")
    device = rnn.layer_parameters(0)["weight_ih"].device
    u = inputs.to(dtype=torch.float64, device=device)
    B, M = u.shape[1], rnn.hidden_size
    y0 = z0 = torch.zeros(rnn.num_layers, B, M, dtype=torch.float64, device=device)
    if state is not None:
        y0, z0 = (t.to(dtype=torch.float64, device=device) for t in state)
    sequences, out = [u], []
    with torch.no_grad():
        for k in range(rnn.num_layers):
            p = rnn.layer_parameters(k)
            x = F.linear(sequences[-1], p["weight_ih"], p["bias_ih"])
            source = rnn.skip_source(k)
            if source is not None:
                x = x + F.linear(sequences[source], p["weight_skip"])
            y, _, _ = unicornn_scan(
                x, p["weight_hh"], p["c"], rnn.dt[k], rnn.alpha, y0[k], z0[k], backend=rnn.backend
            )
            s = rnn.dt[k] * torch.sigmoid(p["c"])
            z = torch.diff(y, dim=0, prepend=y0[k].unsqueeze(0)) / s
            out.append((y, z))
            sequences.append(y)
    return out


def state_bound_check(module: nn.Module, inputs: Tensor, state=None, form: str = "paper") -> dict[str, Any]:
    """``max |y|`` and ``max |z|`` over units and batch at every step and layer, against Prop. C.1.

    The bound (see :func:`prop_c1_bound`) holds for zero initial states and any input; a given ``state``
    can put the network beyond it, which this check then reports.

    Args:
        module: a :class:`unicornn.UnICORNN` or a task model holding one (fresh or trained weights).
        inputs: (N, B, input_size) time-major.
        state: optional initial ``(y_0, z_0)``, each (L, B, M).
        form: ``"paper"`` (eq. 7 as stated) or ``"geometric"`` (see :func:`prop_c1_bound`).

    Returns:
        dict: ``layers`` (per layer: ``max_abs_y``, ``max_abs_z`` lists of N floats, ``dt``, and the
        ``y_bound``, ``z_bound`` lists), ``violated`` (bool), ``violations`` (per violated layer and
        variable, the first step n (1-based), the value and the bound there), ``alpha``, ``form``.
    """
    rnn = unicornn_of(module)
    states = layer_states(rnn, inputs, state)
    N = inputs.shape[0]
    steps = torch.arange(1, N + 1)
    layers, violations = [], []
    for k, (y, z) in enumerate(states):
        y_bound, z_bound = prop_c1_bound(steps, rnn.dt[k], rnn.alpha, form)
        entry = {"layer": k + 1, "dt": rnn.dt[k]}
        for name, seq, bound in (("y", y, y_bound), ("z", z, z_bound)):
            peak = seq.abs().flatten(1).amax(dim=1).cpu()
            entry[f"max_abs_{name}"] = peak.tolist()
            entry[f"{name}_bound"] = bound.tolist()
            over = torch.nonzero(peak > bound).flatten()
            if over.numel():
                n = int(over[0])
                violations.append(
                    {
                        "layer": k + 1,
                        "variable": name,
                        "step": n + 1,
                        "value": float(peak[n]),
                        "bound": float(bound[n]),
                    }
                )
        layers.append(entry)
    return {
        "alpha": rnn.alpha,
        "form": form,
        "N": N,
        "layers": layers,
        "violated": bool(violations),
        "violations": violations,
    }


# --------------------------------------------------------------------------------------------------
# time steps (Fig. 5)
# --------------------------------------------------------------------------------------------------


def time_step_histogram(model: nn.Module, bins: int = 30) -> dict[str, Any]:
    """Per layer, the effective time steps ``dt_l * sigmoid(c^l)`` of every unit and their histogram.

    Bins are log-spaced over the range of all layers' values (the learned steps span orders of magnitude).

    Returns:
        dict: ``edges`` (bins + 1 floats), ``layers`` (per layer: ``dt``, ``values`` (M floats), ``counts``
        (bins ints), ``min``, ``median``, ``max``).
    """
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1, got {bins!r}")
    rnn = unicornn_of(model)
    steps = rnn.effective_time_steps().double().cpu()  # (L, M)
    lo, hi = float(steps.min()), float(steps.max())
    if hi <= lo:
        lo, hi = lo * 0.9, hi * 1.1
    edges = torch.logspace(math.log10(lo), math.log10(hi), bins + 1, dtype=torch.float64)
    edges[0], edges[-1] = lo, hi  # exact ends, so that every value falls in a bin
    layers = []
    for k in range(rnn.num_layers):
        values = steps[k]
        counts = torch.histogram(values, bins=edges).hist
        layers.append({
            "layer": k + 1, "dt": rnn.dt[k], "values": values.tolist(), "counts": [int(c) for c in counts],
            "min": float(values.min()), "median": float(values.median()), "max": float(values.max()),
        })  # fmt: skip
    return {"edges": edges.tolist(), "layers": layers}


# --------------------------------------------------------------------------------------------------
# text tables
# --------------------------------------------------------------------------------------------------


def format_gradient_table(profiles: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table of :func:`gradient_profile` results by name: the norm at the last and the first
    step, their ratio and the number of steps whose gradient underflowed to exactly 0."""
    wrt = "dL/dh_k" if next(iter(profiles.values()))["wrt"] == "state" else "dL/du_k"
    lines = [
        f"norm of {wrt} of a loss on the last step (k = N), float64",
        "",
        "| model | N | norm at k=N | norm at k=1 | ratio k=1 / k=N | steps at exactly 0 |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in profiles.items():
        zeros = sum(1 for v in p["norm"] if v == 0)
        lines.append(
            f"| {name.split(' ')[0]} | {p['N']} | {p['norm'][-1]:.3g} | {p['norm'][0]:.3g} | {p['decay']:.3g} | "
            f"{zeros} |"
        )
    return "\n".join(lines)


def format_state_check(check: Mapping[str, Any], where: str) -> str:
    """The text report of a :func:`state_bound_check` result on a stack described by ``where``."""
    lines = [f"Prop. C.1 ({check['form']} form) over {check['N']} steps, {where}:"]
    for layer in check["layers"]:
        lines.append(
            f"  layer {layer['layer']}: max |y| {max(layer['max_abs_y']):.4g} (bound at step N "
            f"{layer['y_bound'][-1]:.4g}), max |z| {max(layer['max_abs_z']):.4g} (bound {layer['z_bound'][-1]:.4g})"
        )
    for v in check["violations"]:
        lines.append(
            f"  VIOLATION: layer {v['layer']} |{v['variable']}| = {v['value']:.4g} > bound {v['bound']:.4g} "
            f"at step {v['step']}"
        )
    lines.append("bound violated" if check["violated"] else "bound holds at every step")
    return "\n".join(lines)


def format_time_steps(hist: Mapping[str, Any], where: str) -> str:
    """The text summary (min, median, max per layer) of a :func:`time_step_histogram` result."""
    lines = [f"effective time steps dt * sigmoid(c) per layer, {where}:"]
    lines += [
        f"  layer {e['layer']} (dt {e['dt']:g}): min {e['min']:.3g}, median {e['median']:.3g}, max {e['max']:.3g}"
        for e in hist["layers"]
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------------


def _save(fig, path) -> Path:
    return save_figure(fig, path, dpi=120)


def plot_gradient_profiles(profiles: Mapping[str, Mapping[str, Any]], path, title: str = "") -> Path:
    """One log-scale curve of ``norm`` against ``N - k`` per entry (results of :func:`gradient_profile`).

    Exact zeros (a gradient below the floating-point range) cannot be drawn on a log scale: they are left
    out and counted in the legend."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, prof in profiles.items():
        N = prof["N"]
        points = [(N - k, v) for k, v in zip(prof["k"], prof["norm"], strict=True) if v > 0]
        zeros = len(prof["norm"]) - len(points)
        label = name if f"N={N}" in name else f"{name} (N={N})"
        if zeros:
            label += f", {zeros} steps underflow to 0"
        if points:
            ax.semilogy(*zip(*points), label=label)
    ax.set_xlabel("steps before the loss, N - k")
    wrt = next(iter(profiles.values()))["wrt"] if profiles else "state"
    ax.set_ylabel("||dL/dy_k||" if wrt == "state" else "||dL/du_k||")
    ax.set_title(title or "gradient of a loss on the last step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_state_bound(check: Mapping[str, Any], path) -> Path:
    """``max |y|`` and ``max |z|`` per layer over time with the Prop. C.1 bounds (a :func:`state_bound_check`
    result)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, name in zip(axes, ("y", "z"), strict=True):
        for entry in check["layers"]:
            steps = range(1, len(entry[f"max_abs_{name}"]) + 1)
            line = ax.semilogy(steps, entry[f"max_abs_{name}"], label=f"layer {entry['layer']}")[0]
            bound = entry[f"{name}_bound"]
            if all(math.isfinite(b) for b in bound):
                ax.semilogy(
                    steps, bound, "--", color=line.get_color(), label=f"bound, layer {entry['layer']}"
                )
        ax.set_xlabel("step n")
        ax.set_ylabel(f"max |{name}_n|")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    verdict = "VIOLATED" if check["violated"] else "holds"
    fig.suptitle(f"Prop. C.1 bound ({check['form']} form, alpha={check['alpha']}): {verdict}")
    return _save(fig, path)


def plot_time_steps(hist: Mapping[str, Any], path) -> Path:
    """Per-layer histograms of the effective time steps (a :func:`time_step_histogram` result), like Fig. 5."""
    plt = pyplot()
    layers = hist["layers"]
    fig, axes = plt.subplots(1, len(layers), figsize=(3.5 * len(layers), 3.2), squeeze=False)
    for ax, entry in zip(axes[0], layers, strict=True):
        ax.stairs(entry["counts"], hist["edges"], fill=True)
        ax.set_xscale("log")
        ax.set_title(f"layer {entry['layer']} (dt={entry['dt']:g})")
        ax.set_xlabel("dt * sigmoid(c)")
    axes[0][0].set_ylabel("units")
    return _save(fig, path)
