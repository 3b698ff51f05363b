"""Lorenz-96 task: right-hand side, RK4 integration against an independent fine integration, splits."""

import numpy as np
import pytest
import torch

from unicornn.tasks import get_task
from unicornn.tasks.lorenz96 import integrate, lorenz96_rhs, nrmse


def rhs_by_formula(x, F):
    """Paper eq. (81) with 1-based cyclic indices, one component at a time; ``x`` is ``(..., N)``."""
    N = x.shape[-1]

    def at(i):  # x_i for any integer i, 1-based and cyclic
        return x[..., (i - 1) % N]

    return np.stack([(at(i + 1) - at(i - 2)) * at(i - 1) - at(i) + F for i in range(1, N + 1)], axis=-1)


def rk38_fine(x0, F, t_end, h):
    """Kutta's 3/8-rule fourth-order method (other coefficients than the package's) with a finer step."""
    x = np.array(x0, dtype=np.float64)
    for _ in range(round(t_end / h)):
        k1 = rhs_by_formula(x, F)
        k2 = rhs_by_formula(x + h * k1 / 3, F)
        k3 = rhs_by_formula(x + h * (k2 - k1 / 3), F)
        k4 = rhs_by_formula(x + h * (k1 - k2 + k3), F)
        x = x + h * (k1 + 3 * k2 + 3 * k3 + k4) / 8
    return x


def build(seed=0, **options):
    return get_task("lorenz96").build(options, None, seed)


def test_spec():
    s = get_task("lorenz96").spec
    assert (s.input_size, s.output_size, s.readout, s.loss, s.metric) == (5, 5, "all", "mse", "nrmse")
    assert s.higher_is_better is False
    assert s.default_options["F"] == 8.0 and s.default_options["length"] == 2000
    assert [s.default_options[k] for k in ("n_train", "n_valid", "n_test")] == [128, 128, 128]
    assert s.default_options["standardize"] is False


def test_rhs_matches_formula():
    rng = np.random.default_rng(1)
    for F in (0.9, 8.0):
        for _ in range(5):
            x = rng.normal(size=5) * 3
            np.testing.assert_allclose(lorenz96_rhs(x, F), rhs_by_formula(x, F), rtol=1e-14, atol=1e-12)
        np.testing.assert_allclose(lorenz96_rhs(np.full(5, F), F), 0.0, atol=1e-15)  # equilibrium x_j = F
    batch = rng.normal(size=(3, 4, 5))
    for i, j in ((0, 0), (2, 3)):
        np.testing.assert_allclose(
            lorenz96_rhs(batch, 8.0)[i, j], rhs_by_formula(batch[i, j], 8.0), rtol=1e-14
        )
    # the equation by hand for one state: x = (1, 2, 3, 4, 5), F = 8, 1-based indices
    # dx_1 = (x_2 - x_4) x_5 - x_1 + F = (2 - 4) * 5 - 1 + 8 = -3
    # dx_2 = (x_3 - x_5) x_1 - x_2 + F = (3 - 5) * 1 - 2 + 8 = 4
    # dx_3 = (x_4 - x_1) x_2 - x_3 + F = (4 - 1) * 2 - 3 + 8 = 11
    # dx_4 = (x_5 - x_2) x_3 - x_4 + F = (5 - 2) * 3 - 4 + 8 = 13
    # dx_5 = (x_1 - x_3) x_4 - x_5 + F = (1 - 3) * 4 - 5 + 8 = -5
    np.testing.assert_array_equal(lorenz96_rhs(np.arange(1.0, 6.0), 8.0), [-3, 4, 11, 13, -5])


@pytest.mark.parametrize("F, atol, atol_step", [(0.9, 1e-9, 1e-10), (8.0, 2e-5, 2e-7)])
def test_rk4_matches_fine_integration(F, atol, atol_step):
    x0 = F - 0.5 + np.random.default_rng(2).random((4, 5))
    dt, n_samples = 0.01, 101  # one time unit
    traj = integrate(x0, F, dt, n_samples)
    assert traj.shape == (4, 101, 5) and traj.dtype == np.float64
    np.testing.assert_array_equal(traj[:, 0], x0)
    # over one time unit (for F = 8 the error grows with the chaos: about 5e-6 here)
    for n in (50, 100):
        np.testing.assert_allclose(traj[:, n], rk38_fine(x0, F, n * dt, 5e-4), rtol=0, atol=atol)
    # the one-sample map that the task pairs (x_n -> x_{n+1}) is accurate below float32 resolution
    # (about 1e-6 for values near 10)
    states = traj[:, 60]
    one_step = integrate(states, F, dt, 2)[:, 1]
    np.testing.assert_allclose(one_step, rk38_fine(states, F, dt, 5e-4), rtol=0, atol=atol_step)
    # a wrong sampling interval is caught by the same comparison
    wrong = integrate(x0, F, 0.0101, n_samples)[:, 100]
    assert np.abs(wrong - rk38_fine(x0, F, 1.0, 5e-4)).max() > 1e-3


def test_default_splits():
    splits = build()
    for ds in (splits.train, splits.valid, splits.test):
        assert len(ds) == 128
        x, y = ds[127]
        assert x.shape == y.shape == (2000, 5) and x.dtype == y.dtype == torch.float32
        assert torch.equal(x[1:], y[:-1])  # target = next input
        assert ((x[0] >= 7.5) & (x[0] <= 8.5)).all()  # U(F - 0.5, F + 0.5) initial condition
        assert torch.isfinite(ds.trajectories).all()
    assert splits.train.trajectories.std() > 2  # F = 8 wanders far from the equilibrium


def test_determinism_seeds_and_burn_in():
    a, b, c = build(seed=3, length=30), build(seed=3, length=30), build(seed=4, length=30)
    assert torch.equal(a.train.trajectories, b.train.trajectories)
    assert torch.equal(a.valid.trajectories, b.valid.trajectories)
    assert torch.equal(a.test.trajectories, c.test.trajectories)  # the test set ignores the run seed
    assert not torch.equal(a.train.trajectories, c.train.trajectories)
    assert not torch.equal(a.train.trajectories, a.valid.trajectories)
    d = build(seed=3, length=20, burn_in=10)
    assert torch.equal(d.train.trajectories, a.train.trajectories[:, 10:31])
    e = build(seed=3, length=30, F=0.9, n_train=2, n_valid=1, n_test=1)
    assert (len(e.train), len(e.valid), len(e.test)) == (2, 1, 1)
    assert ((e.train[0][0][0] >= 0.4) & (e.train[0][0][0] <= 1.4)).all()


def test_nrmse():
    y = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert nrmse(y, y).item() == 0
    assert nrmse(torch.full_like(y, y.mean().item()), y).item() == pytest.approx(1.0)
    pred = y + torch.tensor([[1.0, -1.0], [1.0, -1.0]])
    std = ((y - 3.0) ** 2).mean().sqrt().item()  # mean(y) = 3
    assert nrmse(pred, y).item() == pytest.approx(1.0 / std)
    with pytest.raises(ValueError, match="same shape"):
        nrmse(y, y[0])


def test_bad_options():
    with pytest.raises(ValueError, match="'dt' must be in"):
        build(dt=0.0)
    with pytest.raises(TypeError, match="'F' must be a number"):
        build(F="8")
    with pytest.raises(ValueError, match="unknown option.*'lorenz96'"):
        build(N=6)


def test_persistence_baseline_by_hand():
    """x_{n+1} = x_n scored with the task's metric, checked against a float64 computation by hand."""
    from unicornn.tasks.lorenz96 import persistence_baseline, persistence_nrmse

    splits = build(seed=2, length=50, n_train=3, n_valid=2, n_test=4, F=8.0)
    for ds in (splits.train, splits.valid, splits.test):
        t = ds.trajectories.numpy().astype(np.float64)
        err = np.sqrt(np.mean((t[:, :-1] - t[:, 1:]) ** 2))
        std = np.sqrt(np.mean((t[:, 1:] - t[:, 1:].mean()) ** 2))
        assert persistence_nrmse(ds) == pytest.approx(err / std, rel=1e-12)
        # the same as scoring the dataset's own inputs as predictions with nrmse()
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        y = torch.stack([ds[i][1] for i in range(len(ds))])
        assert nrmse(x, y).item() == pytest.approx(err / std, rel=1e-6)
    base = persistence_baseline({"F": 8.0, "length": 50, "n_train": 3, "n_valid": 2, "n_test": 4}, seed=2)
    assert base["test"] == pytest.approx(persistence_nrmse(splits.test), rel=1e-12)
    # a slower system (F = 0.9) moves less per step: persistence is harder to beat there
    calm = build(seed=2, length=50, n_train=3, n_valid=2, n_test=4, F=0.9)
    assert persistence_nrmse(calm.test) < persistence_nrmse(splits.test)


def test_standardize_option_keeps_nrmse():
    raw = build(seed=1, length=40, n_train=4, n_valid=2, n_test=3, F=0.9)
    std = build(seed=1, length=40, n_train=4, n_valid=2, n_test=3, F=0.9, standardize=True)
    t = raw.train.trajectories.double()
    m, s = t.mean().item(), t.std(correction=0).item()
    assert std.train.shift == pytest.approx(m, rel=1e-6) and std.test.scale == pytest.approx(s, rel=1e-6)
    x_raw, y_raw = raw.test[1]
    x_std, y_std = std.test[1]
    torch.testing.assert_close(x_std, (x_raw - m) / s, rtol=1e-5, atol=1e-6)
    pooled = torch.stack([std.train[i][0] for i in range(4)]).double()
    assert abs(pooled.mean().item()) < 0.05 and abs(pooled.std().item() - 1) < 0.05
    # NRMSE is invariant under the shared scalar map: any prediction scores the same in both units
    pred_raw = y_raw + 0.01 * torch.randn(y_raw.shape, generator=torch.Generator().manual_seed(0))
    assert nrmse((pred_raw - m) / s, y_std).item() == pytest.approx(nrmse(pred_raw, y_raw).item(), rel=1e-4)
    with pytest.raises(TypeError, match="'standardize' must be a bool"):
        build(standardize=1)


def test_increment_target_and_state_nrmse_factor():
    from unicornn.tasks.lorenz96 import persistence_nrmse, state_nrmse_factor

    opts = dict(seed=4, length=60, n_train=3, n_valid=2, n_test=3, F=8.0)
    nxt, inc = build(**opts), build(**opts, target="increment", standardize=True)
    d_train = np.diff(nxt.train.trajectories.numpy().astype(np.float64), axis=1)
    r = d_train.std()
    assert inc.valid.increment_scale == pytest.approx(r, rel=1e-6)
    x, d = inc.test[2]
    raw = nxt.test.trajectories[2]
    torch.testing.assert_close(d, (raw[1:] - raw[:-1]) / r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        x, nxt.test[2][0].sub(inc.test.shift).div(inc.test.scale), rtol=1e-5, atol=1e-6
    )
    # any increment prediction: reported NRMSE x factor = NRMSE of the implied states x_n + r * pred
    y_inc = torch.stack([inc.test[i][1] for i in range(3)]).double()
    pred = y_inc + 0.3 * torch.randn(
        y_inc.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    t = nxt.test.trajectories.double()
    states = t[:, :-1] + r * pred
    factor = state_nrmse_factor(inc.test)
    assert (nrmse(pred, y_inc) * factor).item() == pytest.approx(nrmse(states, t[:, 1:]).item(), rel=1e-5)
    # persistence = predicting a zero increment
    zero = (nrmse(torch.zeros_like(y_inc), y_inc) * factor).item()
    assert zero == pytest.approx(persistence_nrmse(nxt.test), rel=1e-5)
    assert state_nrmse_factor(nxt.test) == 1.0
    with pytest.raises(ValueError, match="'target' must be one of"):
        build(target="delta")


def test_persistence_shown_by_tasks_and_beside_every_report_result(tmp_path, capsys):
    """`unicornn tasks` states each preset's persistence baseline; `unicornn report` puts the state NRMSE
    (increment NRMSE x state_nrmse_factor) and the persistence baseline beside each run's result."""
    from unicornn.cli import main
    from unicornn.tasks.lorenz96 import persistence_baseline, state_nrmse_factor
    from unicornn.training.presets import get_preset

    task = get_task("lorenz96")
    small = dict(get_preset("lorenz96", "small").task_options)
    expected = persistence_baseline(small, seed=5)["test"]
    assert f"{expected:.4g}" in task.baseline_note(small)
    assert main(["tasks", "lorenz96"]) == 0
    assert (
        f"baseline: persistence x_{{n+1}} = x_n scores test NRMSE {expected:.4g}" in capsys.readouterr().out
    )

    options = dict(small, length=30, n_train=8, n_valid=4, n_test=4)
    sets = [f"{k}={v}" for k, v in options.items()] + ["hidden_size=4", "epochs=1", "batch_size=4"]
    argv = ["train", "lorenz96", "--preset", "small", "--out", str(tmp_path), "--quiet", "--no-tensorboard"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    capsys.readouterr()
    assert main(["report", str(tmp_path / "lorenz96"), "--no-plot"]) == 0
    out = capsys.readouterr().out
    assert "test state nrmse | persistence test nrmse |" in out
    row = next(line for line in out.splitlines() if line.startswith("| seed-0"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    test_splits = task.build(options, None, 0).test
    reported = float(cells[6])
    assert float(cells[7]) == pytest.approx(reported * state_nrmse_factor(test_splits), rel=1e-3)
    assert float(cells[8]) == pytest.approx(persistence_baseline(options, seed=0)["test"], rel=1e-3)
    assert state_nrmse_factor(test_splits) < 0.1  # the increment NRMSE is converted, not shown as is
