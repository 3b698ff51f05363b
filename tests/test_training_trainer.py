"""Trainer: exact resume, NaN/Inf guard, atomic checkpoints, schedule, validation-based selection, metrics."""

import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from unicornn.tasks import get_task
from unicornn.tasks.base import Splits, TaskSpec
from unicornn.training import checkpoint as ckpt_mod
from unicornn.training.checkpoint import atomic_save, load_checkpoint, read_jsonl
from unicornn.training.metrics import SplitMetrics
from unicornn.training.trainer import NonFiniteError, RunExistsError, train_run, validate_config

TINY = dict(
    hidden_size=8,
    num_layers=2,
    dt=0.2,
    alpha=1.0,
    dropout=0.2,
    lr=1e-2,
    batch_size=16,
    eval_batch_size=32,
    epochs=4,
    backend="reference",
)
OPTS = {"T": 12, "n_train": 48, "n_valid": 24, "n_test": 24}


def _rows(run):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run / "metrics.jsonl")]


def test_resume_continues_exactly(tmp_path):
    task = get_task("adding")
    full = train_run(task, TINY, OPTS, tmp_path / "full", quiet=True, log=lambda m: None, tensorboard=False)
    part = train_run(
        task,
        TINY,
        OPTS,
        tmp_path / "part",
        quiet=True,
        log=lambda m: None,
        tensorboard=False,
        stop_after_epoch=2,
    )
    assert part["status"] == "stopped" and part["epochs_done"] == 2
    assert not (tmp_path / "part" / "result.json").exists()
    with pytest.raises(RunExistsError, match="--resume"):
        train_run(task, TINY, OPTS, tmp_path / "part", quiet=True, log=lambda m: None, tensorboard=False)
    resumed = train_run(
        task, TINY, OPTS, tmp_path / "part", quiet=True, log=lambda m: None, tensorboard=False, resume=True
    )
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 4
    assert _rows(tmp_path / "full") == _rows(tmp_path / "part")  # identical metrics, every epoch
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["best"] == resumed["best"]
    # a finished run is not trained again
    again = train_run(
        task, TINY, OPTS, tmp_path / "part", quiet=True, log=lambda m: None, tensorboard=False, resume=True
    )
    assert again["best"] == resumed["best"]


def test_resume_refuses_changed_settings(tmp_path):
    task = get_task("adding")
    cfg = dict(TINY, epochs=2)
    train_run(
        task, cfg, OPTS, tmp_path / "r", quiet=True, log=lambda m: None, tensorboard=False, stop_after_epoch=1
    )
    with pytest.raises(ValueError, match="lr"):
        train_run(
            task,
            dict(cfg, lr=1e-3),
            OPTS,
            tmp_path / "r",
            quiet=True,
            log=lambda m: None,
            tensorboard=False,
            resume=True,
        )
    # more epochs may be asked for on resume
    r = train_run(
        task,
        dict(cfg, epochs=3),
        OPTS,
        tmp_path / "r",
        quiet=True,
        log=lambda m: None,
        tensorboard=False,
        resume=True,
    )
    assert r["epochs_done"] == 3


def test_schedule_and_selection(tmp_path):
    task = get_task("adding")
    cfg = dict(TINY, epochs=3, lr_reduce_epoch=2, dropout=0.0)
    res = train_run(task, cfg, OPTS, tmp_path / "r", quiet=True, log=lambda m: None, tensorboard=False)
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert [r["lr"] for r in rows] == pytest.approx([1e-2, 1e-2, 1e-3])
    best = min(rows, key=lambda r: r["valid_mse"])
    assert res["best"] == {"epoch": best["epoch"], "valid": best["valid_mse"], "test": best["test_mse"]}
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["best"] == res["best"]
    assert load_checkpoint(tmp_path / "r" / "best.pt")["epoch"] == best["epoch"]


class _PoisonOnSecondPass(Dataset):
    """Finite inputs during the first epoch, NaN afterwards."""

    def __init__(self, n, T):
        self.n, self.T, self.calls = n, T, 0

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls += 1
        g = torch.Generator().manual_seed(i)
        x = torch.rand(self.T, 2, generator=g)
        if self.calls > self.n:
            x[0, 0] = math.nan
        return x, x[:, 0].sum().reshape(1) / self.T


class _PoisonTask:
    spec = TaskSpec("poison", "NaN from the second epoch on", 2, 1, "last", "mse", "mse", False, {})

    def build(self, options, data_dir, seed):
        return Splits(_PoisonOnSecondPass(32, 8), _PoisonOnSecondPass(16, 8), _PoisonOnSecondPass(16, 8))


def test_nonfinite_guard_keeps_last_good_checkpoint(tmp_path):
    cfg = dict(TINY, epochs=3, dropout=0.0, eval_batch_size=64)
    before = None
    with pytest.raises(NonFiniteError, match="non-finite .* epoch 2.*epoch 1"):
        train_run(_PoisonTask(), cfg, {}, tmp_path / "r", quiet=True, log=lambda m: None, tensorboard=False)
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["epoch"] == 1
    before = ck["model"]
    assert all(torch.isfinite(v).all() for v in before.values())
    assert [r["epoch"] for r in read_jsonl(tmp_path / "r" / "metrics.jsonl")] == [1]
    assert not (tmp_path / "r" / "result.json").exists()


def test_atomic_save_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1}, path)
    real_save = torch.save

    def torn_save(obj, f):
        f.write(b"partial bytes")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert load_checkpoint(path) == {"epoch": 1}  # the old checkpoint survives untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # no temporary left


def test_split_metrics_match_direct_computation():
    torch.manual_seed(0)
    out, tgt = torch.randn(10, 7, 3), torch.randn(10, 7, 3)
    for metric in ("mse", "rmse", "nrmse"):
        m = SplitMetrics("mse", metric)
        m.update(out[:4], tgt[:4], torch.tensor(0.0))
        m.update(out[4:], tgt[4:], torch.tensor(0.0))
        mse = ((out.double() - tgt.double()) ** 2).mean().item()
        expected = {"mse": mse, "rmse": mse**0.5, "nrmse": mse**0.5 / tgt.double().std(unbiased=False).item()}
        assert m.compute()[metric] == pytest.approx(expected[metric], rel=1e-10)
    logits, labels = torch.randn(20, 5), torch.randint(0, 5, (20,))
    m = SplitMetrics("cross_entropy", "accuracy")
    m.update(logits, labels, torch.tensor(1.5))
    assert m.compute()["accuracy"] == pytest.approx(
        100.0 * (logits.argmax(1) == labels).float().mean().item()
    )
    assert m.compute()["loss"] == pytest.approx(1.5)


def test_validate_config_errors():
    with pytest.raises(ValueError, match="unknown setting.*valid settings"):
        validate_config({"hiden_size": 3})
    with pytest.raises(ValueError, match="'dt'.*2 numbers"):
        validate_config({"num_layers": 2, "dt": [0.1, 0.2, 0.3]})
    with pytest.raises(ValueError, match="'dt' must be in"):
        validate_config({"dt": 1.5})
    with pytest.raises(ValueError, match="'hidden_size' must be an int"):
        validate_config({"hidden_size": 1.5})
    with pytest.raises(ValueError, match="'amp'"):
        validate_config({"amp": "fp8"})
    assert validate_config({"num_layers": 2, "dt": [0.1, 0.2]})["dt"] == [0.1, 0.2]


def test_amp_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="CUDA"):
        train_run(get_task("adding"), dict(TINY, amp="bf16"), OPTS, tmp_path / "r", quiet=True)
