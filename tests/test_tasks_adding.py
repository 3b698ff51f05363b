"""Adding problem and the task registry."""

import pathlib

import pytest
import torch

from unicornn.tasks import TASKS, get_task
from unicornn.tasks.adding import TEST_SEED, AddingDataset
from unicornn.tasks.base import Splits, Task, TaskSpec


def build(seed=0, **options):
    return get_task("adding").build(options, pathlib.Path("unused"), seed)


def test_registry_and_unknown_task():
    assert {"adding"} <= set(TASKS)
    for name, task in TASKS.items():
        assert isinstance(task, Task)
        assert isinstance(task.spec, TaskSpec)
        assert task.spec.name == name
    with pytest.raises(ValueError, match="unknown task 'nope'.*adding"):
        get_task("nope")


def test_spec():
    spec = get_task("adding").spec
    assert (spec.input_size, spec.output_size, spec.readout, spec.loss, spec.metric) == (
        2,
        1,
        "last",
        "mse",
        "mse",
    )
    assert spec.higher_is_better is False
    assert spec.default_options["T"] == 1000


def test_shapes_markers_and_target():
    splits = build(T=37, n_train=64, n_valid=8, n_test=9)
    assert isinstance(splits, Splits)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (64, 8, 9)
    half = 37 // 2
    for i in range(len(splits.train)):
        x, y = splits.train[i]
        assert x.shape == (37, 2) and x.dtype == torch.float32
        assert y.shape == (1,) and y.dtype == torch.float32
        values, marker = x[:, 0], x[:, 1]
        assert ((values >= 0) & (values < 1)).all()
        assert set(marker.unique().tolist()) <= {0.0, 1.0}
        assert marker[:half].sum() == 1 and marker[half:].sum() == 1
        pos = marker.nonzero().flatten()
        assert y.item() == pytest.approx((values[pos[0]] + values[pos[1]]).item(), abs=0)


def test_marker_positions_cover_both_halves():
    ds = build(T=10, n_train=400).train
    first = {int(ds[i][0][:5, 1].argmax()) for i in range(len(ds))}
    second = {int(ds[i][0][5:, 1].argmax()) + 5 for i in range(len(ds))}
    assert first == set(range(5)) and second == set(range(5, 10))


def test_determinism_and_seed_independence_of_test_set():
    a, b, c = build(seed=1, T=50), build(seed=1, T=50), build(seed=2, T=50)
    for i in (0, 17, 999):
        assert torch.equal(a.train[i][0], b.train[i][0])
        assert torch.equal(a.valid[i][0], b.valid[i][0])
        assert torch.equal(a.test[i][0], c.test[i][0])  # the test set ignores the run seed
        assert not torch.equal(a.train[i][0], c.train[i][0])
        assert not torch.equal(a.train[i][0], a.valid[i][0])
    # even a run seed equal to the test seed gives a training set different from the test set
    d = build(seed=TEST_SEED, T=50)
    assert not torch.equal(d.train[0][0], d.test[0][0])
    assert torch.equal(a.train[-1][0], a.train[len(a.train) - 1][0])


def test_trivial_predictor_mse_is_one_sixth():
    ds = AddingDataset(T=20, n=4000, seed=3, stream=0)
    y = torch.stack([ds[i][1] for i in range(len(ds))])
    assert ((y - 1.0) ** 2).mean().item() == pytest.approx(1 / 6, abs=0.012)


def test_bad_options():
    with pytest.raises(ValueError, match="unknown option.*'adding'.*valid options: T, n_test"):
        build(length=3)
    with pytest.raises(ValueError, match="'T' must be >= 2"):
        build(T=1)
    with pytest.raises(TypeError, match="'n_train' must be an int"):
        build(n_train="10")
    with pytest.raises(TypeError, match="seed must be an int"):
        build(seed=1.5)
    with pytest.raises(IndexError):
        build(n_train=3).train[3]
