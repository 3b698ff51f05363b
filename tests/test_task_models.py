"""SequenceModel: shapes, read-outs, head initialisation, over-time dropout on the top layer."""

import pytest
import torch

from unicornn.task_models import SequenceModel


def make(readout="last", dropout=0.0, **kw):
    args = dict(
        input_size=3,
        output_size=4,
        hidden_size=16,
        num_layers=2,
        dt=0.1,
        alpha=1.0,
        dropout=dropout,
        readout=readout,
        backend="reference",
    )
    args.update(kw)
    return SequenceModel(**args)


def test_shapes():
    torch.manual_seed(0)
    x = torch.randn(5, 7, 3)
    assert make("last")(x).shape == (5, 4)
    assert make("all")(x).shape == (5, 7, 4)
    assert make("last", dt=[0.01, 0.2])(x).shape == (5, 4)


def test_last_readout_uses_top_layer_final_state():
    torch.manual_seed(0)
    m = make("last").eval()
    x = torch.randn(2, 6, 3)
    out, (yN, _) = m.rnn(x.transpose(0, 1))
    torch.testing.assert_close(m(x), m.head(yN[-1]))
    torch.testing.assert_close(m(x), m.head(out[-1]))


def test_head_initialisation():
    torch.manual_seed(0)
    m = make(hidden_size=256, output_size=64)
    assert torch.count_nonzero(m.head.bias) == 0
    # Kaiming normal (fan_in, gain sqrt(2)): std = sqrt(2 / 256)
    assert m.head.weight.std().item() == pytest.approx((2 / 256) ** 0.5, rel=0.05)


def test_top_layer_dropout_is_over_time():
    torch.manual_seed(0)
    m = make("all", dropout=0.5).train()
    seen = {}
    m.head.register_forward_hook(lambda mod, inp, out: seen.setdefault("x", inp[0]))
    m(torch.randn(4, 9, 3))
    h = seen["x"]  # (N, B, M) input of the head
    zero = h == 0
    assert zero.any() and not zero.all()
    assert torch.equal(zero, zero[:1].expand_as(zero))  # the same units dropped at every step
    m.eval()
    seen.clear()
    m(torch.randn(4, 9, 3))
    assert not (seen["x"] == 0).any()


def test_errors():
    with pytest.raises(ValueError, match="readout"):
        make("first")
    with pytest.raises(ValueError, match="dropout"):
        make(dropout=1.0)
    with pytest.raises(ValueError, match=r"\(B, N, d\)"):
        make()(torch.randn(4, 3))


def test_input_gain_scales_the_first_input_projection_at_initialisation():
    torch.manual_seed(0)
    plain = make(num_layers=2)
    torch.manual_seed(0)
    gained = make(num_layers=2, input_gain=30.0)
    torch.testing.assert_close(gained.rnn.weight_ih_l0, 30.0 * plain.rnn.weight_ih_l0)
    torch.testing.assert_close(gained.rnn.weight_ih_l1, plain.rnn.weight_ih_l1)  # other layers untouched
    with pytest.raises(ValueError, match="input_gain"):
        make(input_gain=0.0)


def test_model_registry_builds_the_task_model():
    from unicornn.registry import UnknownNameError
    from unicornn.task_models import MODELS
    from unicornn.tasks import get_task

    spec = get_task("lorenz96").spec
    cfg = dict(hidden_size=8, num_layers=1, dt=0.1, alpha=0.0, dropout=0.0, residual_skip=None,
               input_gain=1.0, memory="standard", backend="reference")  # fmt: skip
    m = MODELS.get("unicornn")(spec, cfg)
    assert m(torch.randn(2, 5, spec.input_size)).shape == (2, 5, spec.output_size)
    with pytest.raises(UnknownNameError, match="unknown model 'transformer'; valid models: unicornn, lstm"):
        MODELS.get("transformer")


def test_pool_over_time_is_the_mean_and_max_of_each_sequences_valid_steps():
    from unicornn.heads import pool_over_time

    torch.manual_seed(0)
    states = torch.randn(9, 4, 5, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 4, 7])
    got = pool_over_time(states, lengths)
    for b, n in enumerate(lengths.tolist()):
        expected = torch.cat([states[:n, b].mean(0), states[:n, b].amax(0)])
        torch.testing.assert_close(got[b], expected)
    torch.testing.assert_close(pool_over_time(states, None), torch.cat([states.mean(0), states.amax(0)], -1))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_pool_readout_reads_each_sequence_within_its_length(bidirectional):
    """readout="pool": the head reads (B, 2 * width); a padded batch gives each sequence's own result, and the
    gradient reaches the stack."""
    torch.manual_seed(0)
    m = make("pool", bidirectional=bidirectional).double().eval()
    assert m.head.in_features == 2 * 16 * (2 if bidirectional else 1)
    x = torch.randn(3, 8, 3, dtype=torch.float64)
    lengths = torch.tensor([8, 3, 5])
    together = m(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(together[b], m(x[b : b + 1, :n])[0])
    together.sum().backward()
    assert m.rnn.weight_hh_l0.grad is not None and m.rnn.weight_hh_l0.grad.abs().sum() > 0
