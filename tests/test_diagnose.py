"""Diagnostics of the paper's claims: gradient profiles, the Prop. C.1 bound, time steps, weight norms."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import torch_threads

from unicornn import UnICORNN
from unicornn.baselines import GRU, LSTM, CoRNN, IndRNN
from unicornn.diagnose import (
    gradient_profile,
    layer_states,
    paper_models,
    plot_gradient_profiles,
    plot_state_bound,
    plot_time_steps,
    prop_c1_bound,
    state_bound_check,
    time_step_histogram,
    weight_norms,
)
from unicornn.task_models import SequenceModel


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: extra threads only contend on a shared machine."""
    with torch_threads(1):
        yield


def _png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------
# gradient profiles
# --------------------------------------------------------------------------------------------------


MAKERS = {
    "unicornn": lambda: UnICORNN(2, 6, 2, dt=0.2, alpha=3.0),
    "res-unicornn": lambda: UnICORNN(2, 6, 3, dt=0.2, alpha=3.0, residual_skip=2),
    "lstm": lambda: LSTM(2, 6, 2),
    "gru": lambda: GRU(2, 6, 2),
    "cornn": lambda: CoRNN(2, 6, 2),
    "indrnn": lambda: IndRNN(2, 6, 2),
}


def _parts(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_state_gradient_matches_a_split_run(name):
    """||dL/dh_k|| of the stepped run equals the gradient at the seam of a run cut in two after step k."""
    torch.manual_seed(0)
    model = MAKERS[name]().double().eval()
    N, B, seed = 12, 3, 5
    u = torch.randn(N, B, 2, dtype=torch.float64)
    prof = gradient_profile(model, N, inputs=u, layer=0, seed=seed)
    assert prof["k"] == list(range(1, N + 1)) and len(prof["norm"]) == N
    top_prof = gradient_profile(model, N, inputs=u, seed=seed)
    assert top_prof["norm"][-1] == pytest.approx(1.0)  # dL/dh_N = g, a unit vector
    for k in (1, 5, N - 1):
        _, state = model(u[:k])
        parts = [t.detach().requires_grad_() for t in _parts(state)]
        _, end = model(u[k:], tuple(parts) if isinstance(state, tuple) else parts[0])
        top = _parts(end)[0][-1]
        g = torch.randn(top.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        (top * g / g.norm()).sum().backward()
        assert prof["norm"][k - 1] == pytest.approx(float(parts[0].grad[0].norm()), rel=1e-9)


def test_input_gradient_profile():
    torch.manual_seed(1)
    model = UnICORNN(2, 6, 2, dt=0.2, alpha=3.0).eval()
    u = torch.randn(10, 3, 2, dtype=torch.float64)
    prof = gradient_profile(model, 10, inputs=u, wrt="input")
    leaf = u.clone().requires_grad_()
    _, (y, _) = model.double()(leaf)
    g = torch.randn(y[-1].shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (y[-1] * g / g.norm()).sum().backward()
    assert prof["norm"] == pytest.approx([float(leaf.grad[n].norm()) for n in range(10)], rel=1e-9)
    task_model = SequenceModel(2, 3, 6, 2, dt=0.2, alpha=3.0, dropout=0.0, readout="last").eval()
    task_model.rnn.load_state_dict(model.state_dict())
    assert gradient_profile(task_model, 10, inputs=u, wrt="input")["norm"] == pytest.approx(prof["norm"])
    with pytest.raises(ValueError, match="wrt must be"):
        gradient_profile(model, 10, wrt="weights")
    with pytest.raises(ValueError, match="inputs must be"):
        gradient_profile(model, 10, inputs=u[:5])


def test_paper_claim_unicornn_gradient_does_not_vanish_where_lstm_gru_do(tmp_path):
    """Prop. 3.2 on fresh paper-initialised models: over 300 steps the UnICORNN state gradient keeps its
    order of magnitude while the LSTM's and GRU's fall by many (float64, so nothing underflows)."""
    torch.manual_seed(2)
    profiles = {}
    for name, model in paper_models(1, 16, 2).items():
        profiles[name] = gradient_profile(model.eval(), 300, batch=4)
        assert all(math.isfinite(v) for v in profiles[name]["norm"])
    assert profiles["unicornn"]["decay"] > 0.05
    assert profiles["lstm"]["decay"] < 1e-10 and profiles["gru"]["decay"] < 1e-10
    _png(plot_gradient_profiles(profiles, tmp_path / "grad.png"))


def test_underflow_is_avoided_in_the_norm(tmp_path):
    lstm = LSTM(1, 8, 1).eval()
    prof = gradient_profile(lstm, 600, batch=2)
    assert min(prof["norm"]) > 0.0  # values near 1e-160 whose squares underflow still give a norm
    underflow = {**prof, "norm": [0.0] * 100 + prof["norm"][100:]}  # beyond float64: left out of the plot
    _png(plot_gradient_profiles({"lstm": underflow}, tmp_path / "zeros.png"))


# --------------------------------------------------------------------------------------------------
# Prop. C.1
# --------------------------------------------------------------------------------------------------


def test_bound_formula():
    # dt=0.1, alpha=1: beta = max(3, 4) = 4
    y, z = prop_c1_bound(torch.tensor([1, 10]), 0.1, 1.0, "paper")
    assert y.tolist() == pytest.approx([math.sqrt(2 * (1 + 0.8)), math.sqrt(2 * (1 + 8))])
    assert z.tolist() == pytest.approx(y.tolist())
    y, z = prop_c1_bound(10, 0.1, 4.0, "geometric")  # beta = max(9, 64) = 64
    energy = (0.2 + 16 * 1e-4) * ((1 + 6.4) ** 10 - 1) / 6.4
    assert float(z) == pytest.approx(math.sqrt(energy)) and float(y) == pytest.approx(math.sqrt(energy / 4))
    y, z = prop_c1_bound(5, 0.5, 0.0)
    assert math.isinf(float(y)) and float(z) == pytest.approx(math.sqrt(2 * (1 + 5)))
    with pytest.raises(ValueError, match="form must be"):
        prop_c1_bound(5, 0.1, 1.0, "tight")
    with pytest.raises(ValueError, match="dt must be"):
        prop_c1_bound(5, 1.5, 1.0)


def test_layer_states_reproduce_the_module():
    torch.manual_seed(3)
    rnn = UnICORNN(3, 5, 3, dt=[0.3, 0.1, 0.2], alpha=2.0, residual_skip=2).double()
    u = torch.randn(20, 4, 3, dtype=torch.float64)
    y0, z0 = torch.randn(3, 4, 5, dtype=torch.float64), torch.randn(3, 4, 5, dtype=torch.float64)
    out, (yN, zN) = rnn(u, (y0, z0))
    states = layer_states(rnn, u, (y0, z0))
    torch.testing.assert_close(states[-1][0], out)
    torch.testing.assert_close(torch.stack([y[-1] for y, _ in states]), yN)
    torch.testing.assert_close(torch.stack([z[-1] for _, z in states]), zN)


def test_bound_holds_on_fresh_weights_and_a_trained_like_model(tmp_path):
    torch.manual_seed(4)
    model = SequenceModel(2, 3, 8, 2, dt=0.19, alpha=30.65, dropout=0.0, readout="last")
    check = state_bound_check(model, torch.randn(300, 4, 2) * 3)
    assert not check["violated"] and check["violations"] == []
    assert len(check["layers"]) == 2
    for entry in check["layers"]:
        assert max(entry["max_abs_y"]) < entry["y_bound"][-1]
    _png(plot_state_bound(check, tmp_path / "bound.png"))


def test_bound_violation_is_reported_when_states_are_forced_beyond_it(tmp_path):
    torch.manual_seed(5)
    rnn = UnICORNN(2, 4, 2, dt=0.1, alpha=1.0)
    y0 = torch.zeros(2, 3, 4)
    y0[1, 2, 3] = 50.0  # the bound assumes zero initial states: |y_1| ~ 50 >> sqrt(2 (1 + 0.8))
    check = state_bound_check(rnn, torch.randn(30, 3, 2), state=(y0, torch.zeros(2, 3, 4)))
    assert check["violated"]
    first = check["violations"][0]
    assert first["layer"] == 2 and first["variable"] == "y" and first["step"] == 1
    assert first["value"] > first["bound"]
    _png(plot_state_bound(check, tmp_path / "violated.png"))


def test_resonant_drive_exceeds_the_stated_bound_but_not_the_geometric_one():
    """The linearisation in the last step of the proof: a unit driven at its resonance grows linearly in
    time, beyond eq. 7's sqrt(t) after a few hundred steps, while the geometric form still holds."""
    rnn = UnICORNN(1, 1, 1, dt=0.1, alpha=1.0).double()
    with torch.no_grad():
        rnn.weight_hh_l0.zero_()
        rnn.c_l0.fill_(20.0)  # s = dt
        rnn.weight_ih_l0.fill_(10.0)  # tanh(x) = +-1: a square wave
    N = 1500
    s = 0.1 * torch.sigmoid(torch.tensor(20.0, dtype=torch.float64))
    u = torch.sign(torch.sin(s * torch.arange(1, N + 1, dtype=torch.float64))).view(N, 1, 1)
    paper = state_bound_check(rnn, u, form="paper")
    assert paper["violated"] and 100 < paper["violations"][0]["step"] < N
    assert not state_bound_check(rnn, u, form="geometric")["violated"]


# --------------------------------------------------------------------------------------------------
# time steps and weight norms
# --------------------------------------------------------------------------------------------------


def test_time_step_histogram(tmp_path):
    torch.manual_seed(6)
    model = SequenceModel(2, 3, 40, 3, dt=[0.5, 0.05, 0.01], alpha=1.0, dropout=0.0, readout="last")
    with torch.no_grad():
        model.rnn.c_l1.uniform_(-6, 6)  # a spread of learned-like steps
    hist = time_step_histogram(model, bins=12)
    assert len(hist["edges"]) == 13 and len(hist["layers"]) == 3
    for k, entry in enumerate(hist["layers"]):
        expected = model.rnn.dt[k] * torch.sigmoid(getattr(model.rnn, f"c_l{k}").detach().double())
        assert entry["values"] == pytest.approx(expected.tolist())
        assert sum(entry["counts"]) == 40
        assert hist["edges"][0] <= entry["min"] <= entry["median"] <= entry["max"] <= hist["edges"][-1]
    _png(plot_time_steps(hist, tmp_path / "steps.png"))
    with pytest.raises(TypeError, match="UnICORNN"):
        time_step_histogram(LSTM(2, 3))


def test_weight_norms():
    torch.manual_seed(7)
    rnn = UnICORNN(2, 5, 3)
    with torch.no_grad():
        rnn.weight_hh_l1[2] = -3.5
    norms = weight_norms(rnn)
    assert norms[1] == 3.5
    assert norms[0] == pytest.approx(float(rnn.weight_hh_l0.detach().abs().max())) and 0 < norms[2] <= 1


@pytest.mark.parametrize("cls", [LSTM, GRU, CoRNN, IndRNN])
def test_weight_norms_of_the_baselines(cls):
    torch.manual_seed(11)
    rnn = cls(2, 4, 2)
    norms = weight_norms(rnn)
    assert len(norms) == 2
    for k in range(2):
        recurrent = [
            p for n, p in rnn.named_parameters() if n.startswith("weight_h") and n.endswith(f"_l{k}")
        ]
        assert recurrent and norms[k] == max(float(p.detach().abs().max()) for p in recurrent)


@pytest.mark.parametrize("residual_skip", [None, 2])
def test_unicornn_rebuilt_from_a_saved_task_model(residual_skip):
    from unicornn.diagnose import unicornn_from_state

    torch.manual_seed(12)
    model = SequenceModel(3, 2, 5, 3, dt=[0.3, 0.1, 0.05], alpha=2.0, dropout=0.0, readout="last",
                          residual_skip=residual_skip)  # fmt: skip
    settings = {"dt": [0.3, 0.1, 0.05], "alpha": 2.0, "residual_skip": residual_skip}
    rnn = unicornn_from_state({f"body.{k}": v for k, v in model.state_dict().items()}, settings).eval()
    u = torch.randn(7, 2, 3)
    torch.testing.assert_close(rnn(u)[0], model.rnn.eval()(u)[0])
    assert rnn.dt == model.rnn.dt and rnn.alpha == 2.0
    with pytest.raises(ValueError, match="no UnICORNN stack"):
        unicornn_from_state(LSTM(2, 3).state_dict(), settings)
