"""Baselines: shapes, padding, equations against readable loops, gradients, initialisation, learning."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from helpers import torch_threads
from torch import nn

from unicornn.baselines import FACTORIES, GRU, LSTM, BaselineSequenceModel, CoRNN, IndRNN, build_baseline

CLASSES = (LSTM, GRU, CoRNN, IndRNN)


def _state_tensors(state):
    return list(state) if isinstance(state, tuple) else [state]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: extra threads only contend on a shared machine."""
    with torch_threads(1):
        yield


# --------------------------------------------------------------------------------------------------
# readable references, written from the papers' equations
# --------------------------------------------------------------------------------------------------


def cornn_reference(m: CoRNN, u, y0=None, z0=None):
    """coRNN, one layer after the other, one step at a time, from the concatenated map of the paper."""
    seq = u
    ys, zs = [], []
    for k in range(m.num_layers):
        W = torch.cat(
            [getattr(m, f"weight_ih_l{k}"), getattr(m, f"weight_hz_l{k}"), getattr(m, f"weight_hy_l{k}")], 1
        )
        b = getattr(m, f"bias_l{k}")
        y = torch.zeros(u.shape[1], m.hidden_size, dtype=u.dtype) if y0 is None else y0[k]
        z = torch.zeros_like(y) if z0 is None else z0[k]
        out = []
        for n in range(u.shape[0]):
            sigma = torch.tanh(torch.cat([seq[n], z, y], 1) @ W.T + b)
            damp = z if m.damping == "explicit" else None
            if damp is None:  # implicit: z_n (1 + dt eps) = z_{n-1} + dt (sigma - gamma y_{n-1})
                z = (z + m.dt * (sigma - m.gamma * y)) / (1 + m.dt * m.epsilon)
            else:
                z = z + m.dt * (sigma - m.gamma * y - m.epsilon * damp)
            y = y + m.dt * z
            out.append(y)
        seq = torch.stack(out)
        ys.append(y)
        zs.append(z)
    return seq, (torch.stack(ys), torch.stack(zs))


def indrnn_reference(m: IndRNN, u):
    seq = u
    finals = []
    for k in range(m.num_layers):
        W, b = getattr(m, f"weight_ih_l{k}"), getattr(m, f"bias_l{k}")
        w = getattr(m, f"weight_hh_l{k}")
        w = torch.minimum(torch.maximum(w, torch.tensor(-m.recurrent_max)), torch.tensor(m.recurrent_max))
        h = torch.zeros(u.shape[1], m.hidden_size, dtype=u.dtype)
        out = []
        for n in range(u.shape[0]):
            h = torch.relu(seq[n] @ W.T + b + w * h)
            out.append(h)
        seq = torch.stack(out)
        finals.append(h)
    return seq, torch.stack(finals)


# --------------------------------------------------------------------------------------------------
# shapes, layouts, padding
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("batch_first", [False, True])
def test_shapes(cls, batch_first):
    torch.manual_seed(0)
    m = cls(3, 5, num_layers=2, batch_first=batch_first)
    N, B = 7, 4
    u = torch.randn(B, N, 3) if batch_first else torch.randn(N, B, 3)
    out, state = m(u)
    assert out.shape == ((B, N, 5) if batch_first else (N, B, 5))
    parts = _state_tensors(state)
    assert len(parts) == (2 if cls in (LSTM, CoRNN) else 1)
    for t in parts:
        assert t.shape == (2, B, 5)
    top = out[:, -1] if batch_first else out[-1]
    torch.testing.assert_close(top, parts[0][-1])
    # the state passed back in continues the sequence
    tm = u.transpose(0, 1) if batch_first else u
    first, st = m(tm[:3].transpose(0, 1) if batch_first else tm[:3])
    rest, st2 = m(tm[3:].transpose(0, 1) if batch_first else tm[3:], st)
    torch.testing.assert_close(_state_tensors(st2)[0], parts[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", CLASSES)
def test_lengths_exact_per_sequence(cls):
    torch.manual_seed(1)
    m = cls(2, 4, num_layers=2).double()
    u = torch.randn(9, 3, 2, dtype=torch.float64)
    lengths = [9, 4, 6]
    out, state = m(u, lengths=lengths)
    for b, n in enumerate(lengths):
        alone, st = m(u[:n, b : b + 1])
        torch.testing.assert_close(out[:n, b], alone[:, 0])
        assert torch.all(out[n:, b] == 0)
        for full, own in zip(_state_tensors(state), _state_tensors(st), strict=True):
            torch.testing.assert_close(full[:, b], own[:, 0])


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_arguments_are_named(cls):
    m = cls(2, 4)
    with pytest.raises(ValueError, match="input must be 3-D"):
        m(torch.randn(5, 2))
    with pytest.raises(ValueError, match="input_size=2"):
        m(torch.randn(5, 2, 3))
    with pytest.raises(ValueError, match="lengths must lie in"):
        m(torch.randn(5, 2, 2), lengths=[6, 1])
    with pytest.raises(TypeError, match="lengths must hold integers"):
        m(torch.randn(5, 2, 2), lengths=[1.0, 2.0])
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        cls(2, 4.0)
    with pytest.raises(ValueError, match="dropout"):
        cls(2, 4, dropout=1.0)


def test_state_shape_checked():
    with pytest.raises(ValueError, match=r"state\[1\] must have shape"):
        CoRNN(2, 4, num_layers=2)(torch.randn(5, 3, 2), (torch.zeros(2, 3, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(TypeError, match="state must be a tensor"):
        IndRNN(2, 4)(torch.randn(5, 3, 2), (torch.zeros(1, 3, 4), torch.zeros(1, 3, 4)))
    with pytest.raises(ValueError, match="damping"):
        CoRNN(2, 4, damping="semi")
    with pytest.raises(ValueError, match="dt must be in"):
        CoRNN(2, 4, dt=0.0)


# --------------------------------------------------------------------------------------------------
# equations and gradients
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damping", ["explicit", "implicit"])
def test_cornn_matches_its_equations(damping):
    torch.manual_seed(2)
    m = CoRNN(3, 5, num_layers=2, dt=0.3, gamma=1.3, epsilon=2.1, damping=damping).double()
    u = torch.randn(11, 4, 3, dtype=torch.float64)
    y0, z0 = torch.randn(2, 4, 5, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    out, (y, z) = m(u, (y0, z0))
    ref_out, (ry, rz) = cornn_reference(m, u, y0, z0)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(y, ry)
    torch.testing.assert_close(z, rz)


def test_indrnn_matches_its_equations_and_clips():
    torch.manual_seed(3)
    m = IndRNN(3, 5, num_layers=2, max_steps=20).double()
    with torch.no_grad():
        m.weight_ih_l0.normal_()  # visible states
        m.weight_hh_l1[:2] = torch.tensor(
            [5.0, -5.0]
        )  # beyond the constraint: the forward uses the clipped value
    u = torch.randn(13, 4, 3, dtype=torch.float64)
    out, h = m(u)
    ref_out, ref_h = indrnn_reference(m, u)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h, ref_h)
    m.constrain_()
    assert m.weight_hh_l1[:2].tolist() == pytest.approx([2 ** (1 / 20), -(2 ** (1 / 20))])


@pytest.mark.parametrize("cls", CLASSES)
def test_gradcheck(cls):
    torch.manual_seed(4)
    m = cls(2, 3, num_layers=2).double()
    if cls is IndRNN:
        with torch.no_grad():
            m.weight_ih_l0.normal_()
            m.bias_l0.fill_(0.5)  # away from relu's kink
    u = torch.randn(5, 2, 2, dtype=torch.float64, requires_grad=True)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_() for p in m.parameters()]

    def f(u, *ps):
        out, state = torch.func.functional_call(m, dict(zip(names, ps)), (u,), {"lengths": [5, 3]})
        return out, _state_tensors(state)[0]

    assert torch.autograd.gradcheck(f, (u, *params), eps=1e-6, atol=1e-5)


# --------------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------------


def test_cornn_init_statistics():
    torch.manual_seed(5)
    m = CoRNN(10, 300, num_layers=2)
    for k, width in ((0, 10), (1, 300)):
        bound = 1 / math.sqrt(width + 600)
        for name in ("weight_ih", "weight_hy", "weight_hz", "bias"):
            w = getattr(m, f"{name}_l{k}")
            assert w.abs().max() <= bound
            if w.numel() > 1000:
                assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
                assert abs(w.mean().item()) < 0.05 * bound


def test_indrnn_init_statistics():
    torch.manual_seed(6)
    T = 500
    m = IndRNN(40, 2000, num_layers=3, max_steps=T)
    assert m.weight_ih_l0.std().item() == pytest.approx(0.001, rel=0.05)
    assert torch.all(m.bias_l1 == 0)
    for k in (0, 1):
        w = getattr(m, f"weight_hh_l{k}")
        assert w.min() >= 0 and w.max() <= 1 and w.mean().item() == pytest.approx(0.5, abs=0.03)
    last = m.weight_hh_l2
    assert last.min() >= 0.5 ** (1 / T) and last.max() <= 2 ** (1 / T)


def test_lstm_gru_are_torch_modules_with_torch_init():
    torch.manual_seed(7)
    for cls, base in ((LSTM, nn.LSTM), (GRU, nn.GRU)):
        m = cls(3, 400, num_layers=2)
        assert isinstance(m, base)
        w = m.weight_hh_l1
        assert w.abs().max() <= 1 / 20 and w.std().item() == pytest.approx(1 / 20 / math.sqrt(3), rel=0.05)


# --------------------------------------------------------------------------------------------------
# task models and learning
# --------------------------------------------------------------------------------------------------


def _spec(readout, output_size=3):
    return SimpleNamespace(input_size=2, output_size=output_size, readout=readout)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_factory_readouts(name):
    torch.manual_seed(8)
    cfg = {"hidden_size": 6, "num_layers": 2, "dropout": 0.1, "dt": 0.1}
    x = torch.randn(4, 9, 2)
    last = FACTORIES[name](_spec("last"), cfg).eval()
    assert isinstance(last, BaselineSequenceModel)
    assert last(x).shape == (4, 3)
    # the last readout at each sequence's own length equals running the truncated sequence
    padded = last(x, lengths=[9, 5, 2, 7])
    torch.testing.assert_close(padded[1], last(x[1:2, :5])[0], atol=1e-6, rtol=1e-5)
    every = FACTORIES[name](_spec("all"), cfg).eval()
    assert every(x).shape == (4, 9, 3)
    with pytest.raises(ValueError, match="input must be"):
        last(torch.randn(9, 2))


def test_factory_bad_names_and_settings():
    with pytest.raises(ValueError, match="model must be one of"):
        build_baseline("transformer", _spec("last"), {"hidden_size": 4, "num_layers": 1})
    with pytest.raises(ValueError, match="one number for coRNN"):
        FACTORIES["cornn"](_spec("last"), {"hidden_size": 4, "num_layers": 2, "dt": [0.1, 0.2]})
    with pytest.raises(ValueError, match="readout"):
        BaselineSequenceModel(LSTM(2, 4), 3, "first")


def _memory_task(n, N, gen):
    """Class = sign of the first step's channel 0; then N - 1 steps of noise on channel 1 only."""
    x = torch.zeros(n, N, 2)
    x[:, 1:, 1] = torch.randn(n, N - 1, generator=gen)
    sign = torch.randint(0, 2, (n,), generator=gen)
    x[:, 0, 0] = sign.float() * 2 - 1
    return x, sign


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_learns_a_tiny_memory_task(name):
    torch.manual_seed(9)
    gen = torch.Generator().manual_seed(9)
    cfg = {"hidden_size": 16, "num_layers": 1, "dropout": 0.0, "dt": 0.2, "indrnn_max_steps": 10}
    model = FACTORIES[name](_spec("last", output_size=2), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(100):
        x, y = _memory_task(32, 10, gen)
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if hasattr(model.rnn, "constrain_"):
            model.rnn.constrain_()
    x, y = _memory_task(500, 10, gen)
    with torch.no_grad():
        accuracy = (model.eval()(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.95, f"{name}: accuracy {accuracy:.3f} on a task chance solves at 0.5"


def test_registered_in_the_model_registry_and_refuse_task_arguments():
    from unicornn.task_models import MODELS
    from unicornn.validation import ConfigError

    assert set(FACTORIES) <= set(MODELS.names()) and "unicornn" in MODELS
    cfg = {"hidden_size": 4, "num_layers": 1, "dropout": 0.0, "dt": 0.1}
    for name in FACTORIES:
        assert isinstance(MODELS.get(name)(_spec("last"), cfg), BaselineSequenceModel)
        with pytest.raises(ValueError, match="takes no task arguments"):
            MODELS.get(name)(_spec("last"), cfg, embedding=torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="setting 'cornn_epsilon' must be >= 0"):
        FACTORIES["cornn"](_spec("last"), {**cfg, "cornn_epsilon": -0.5})
    built = FACTORIES["cornn"](_spec("last"), {**cfg, "cornn_gamma": 1.5, "cornn_damping": "implicit"})
    assert built.rnn.gamma == 1.5 and built.rnn.damping == "implicit"
    assert FACTORIES["indrnn"](_spec("last"), {**cfg, "indrnn_max_steps": 50}).rnn.max_steps == 50
