"""Trainer: exact resume, NaN/Inf guard, atomic checkpoints, schedule, validation-based selection, metrics."""

import json
import math

import pytest
import torch
from torch.utils.data import Dataset

from unicornn.metrics import SplitMetrics, compute_loss
from unicornn.registry import UnknownNameError
from unicornn.task_models import build_model
from unicornn.tasks import get_task
from unicornn.tasks.base import Splits, TaskSpec
from unicornn.training import checkpoint as ckpt_mod
from unicornn.training.checkpoint import atomic_save, load_checkpoint, read_jsonl
from unicornn.training.trainer import NonFiniteError, RunExistsError, validate_config
from unicornn.validation import ConfigError

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


def test_resume_continues_exactly(tmp_path, quiet_run):
    task = get_task("adding")
    full = quiet_run(task, TINY, OPTS, tmp_path / "full")
    part = quiet_run(
        task,
        TINY,
        OPTS,
        tmp_path / "part",
        stop_after_epoch=2,
    )
    assert part["status"] == "stopped" and part["epochs_done"] == 2
    assert not (tmp_path / "part" / "result.json").exists()
    with pytest.raises(RunExistsError, match="--resume"):
        quiet_run(task, TINY, OPTS, tmp_path / "part")
    resumed = quiet_run(task, TINY, OPTS, tmp_path / "part", resume=True)
    assert resumed["status"] == "finished" and resumed["epochs_done"] == 4
    assert _rows(tmp_path / "full") == _rows(tmp_path / "part")  # identical metrics, every epoch
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert full["best"] == resumed["best"]
    # a finished run is not trained again
    again = quiet_run(task, TINY, OPTS, tmp_path / "part", resume=True)
    assert again["best"] == resumed["best"]


def test_resume_refuses_changed_settings(tmp_path, quiet_run):
    task = get_task("adding")
    cfg = dict(TINY, epochs=2)
    quiet_run(task, cfg, OPTS, tmp_path / "r", stop_after_epoch=1)
    with pytest.raises(ValueError, match="lr"):
        quiet_run(
            task,
            dict(cfg, lr=1e-3),
            OPTS,
            tmp_path / "r",
            resume=True,
        )
    # more epochs may be asked for on resume
    r = quiet_run(
        task,
        dict(cfg, epochs=3),
        OPTS,
        tmp_path / "r",
        resume=True,
    )
    assert r["epochs_done"] == 3


def test_schedule_and_selection(tmp_path, quiet_run):
    task = get_task("adding")
    cfg = dict(TINY, epochs=3, lr_reduce_epoch=2, dropout=0.0)
    res = quiet_run(task, cfg, OPTS, tmp_path / "r")
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


def test_nonfinite_guard_keeps_last_good_checkpoint(tmp_path, quiet_run):
    cfg = dict(TINY, epochs=3, dropout=0.0, eval_batch_size=64)
    before = None
    with pytest.raises(NonFiniteError, match="non-finite .* epoch 2.*epoch 1"):
        quiet_run(_PoisonTask(), cfg, {}, tmp_path / "r")
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
    with pytest.raises(ConfigError, match="unknown setting.*valid settings"):
        validate_config({"hiden_size": 3})
    with pytest.raises(ConfigError, match="setting 'epochs' must be an int"):
        validate_config({"epochs": 1.5})
    with pytest.raises(ConfigError, match="setting 'lr' must be > 0"):
        validate_config({"lr": 0.0})
    with pytest.raises(ConfigError, match="setting 'train_subset' must be >= 1"):
        validate_config({"train_subset": 0})
    with pytest.raises(ConfigError, match="'amp' must be one of off, bf16, fp16"):
        validate_config({"amp": "fp8"})
    with pytest.raises(ConfigError, match="'model' must be one of unicornn, lstm"):
        validate_config({"model": "transformer"})
    assert validate_config({"num_layers": 2, "dt": (0.1, 0.2)})["dt"] == [0.1, 0.2]  # JSON form


def test_model_settings_are_validated_by_the_model():
    spec = get_task("adding").spec

    def build(**kw):
        return build_model(spec, validate_config(dict(TINY, **kw)))

    with pytest.raises(ConfigError, match="dt must be one float or 2 floats"):
        build(num_layers=2, dt=[0.1, 0.2, 0.3])
    with pytest.raises(ConfigError, match=r"dt must be in \(0"):
        build(dt=1.5)
    with pytest.raises(ConfigError, match="hidden_size must be an int"):
        build(hidden_size=1.5)
    with pytest.raises(ConfigError, match="dropout"):
        build(dropout=1.0)
    with pytest.raises(ConfigError, match="input_gain"):
        build(input_gain=0.0)
    with pytest.raises(ConfigError, match="backend"):
        build(backend="cuda")
    assert build(num_layers=2, dt=[0.1, 0.2]).rnn.dt == (0.1, 0.2)


def test_amp_needs_cuda(tmp_path, quiet_run):
    with pytest.raises(ConfigError, match="CUDA"):
        quiet_run(get_task("adding"), dict(TINY, amp="bf16"), OPTS, tmp_path / "r")


def test_binary_cross_entropy_and_its_accuracy_match_direct_computation():
    torch.manual_seed(0)
    logits, labels = torch.randn(23, 1), torch.randint(0, 2, (23,)).float()
    loss = compute_loss("binary_cross_entropy", logits, labels)
    p = torch.sigmoid(logits[:, 0].double())
    direct = -(labels * p.log() + (1 - labels) * (1 - p).log()).mean()
    assert loss.item() == pytest.approx(direct.item(), rel=1e-6)
    assert compute_loss("binary_cross_entropy", logits[:, 0], labels[:, None]).item() == pytest.approx(
        loss.item()
    )
    m = SplitMetrics("binary_cross_entropy", "accuracy")
    m.update(logits[:10], labels[:10], loss)
    m.update(logits[10:], labels[10:], loss)
    expected = 100.0 * ((logits[:, 0] > 0).float() == labels).float().mean().item()
    assert m.compute()["accuracy"] == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"\(B, 1\) or \(B,\)"):
        compute_loss("binary_cross_entropy", torch.randn(23, 2), labels)


def test_unknown_loss_metric_and_readout_names_list_the_valid_ones():
    with pytest.raises(
        UnknownNameError, match="unknown loss 'hinge'; valid losses: cross_entropy, binary_cross_entropy, mse"
    ):
        compute_loss("hinge", torch.zeros(1), torch.zeros(1))
    with pytest.raises(
        UnknownNameError, match="unknown metric 'mae'; valid metrics: accuracy, mse, rmse, nrmse"
    ):
        TaskSpec("t", "", 1, 1, "last", "mse", "mae", False, {})
    with pytest.raises(UnknownNameError, match="unknown readout 'first'; valid readouts: last, all"):
        TaskSpec("t", "", 1, 1, "first", "mse", "mse", False, {})
    with pytest.raises(ConfigError, match="accuracy.*classification loss"):
        TaskSpec("t", "", 1, 1, "last", "mse", "accuracy", True, {})
    with pytest.raises(ConfigError, match="higher_is_better"):
        TaskSpec("t", "", 1, 1, "last", "mse", "rmse", True, {})
    assert TaskSpec("bidmc", "", 3, 1, "last", "mse", "rmse", False, {}).metric == "rmse"


class _Padded(Dataset):
    """Sign of the sum of the first ``length`` values of a zero-padded sequence: items (x, target, length)."""

    def __init__(self, n, T, seed):
        g = torch.Generator().manual_seed(seed)
        self.lengths = torch.randint(1, T + 1, (n,), generator=g)
        self.x = torch.randn(n, T, 1, generator=g) * (
            torch.arange(T)[None, :, None] < self.lengths[:, None, None]
        )

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], (self.x[i].sum() > 0).float(), self.lengths[i]


class _LengthBuckets:
    """Batches of indices sorted by length (a task's own batching), this process's share only."""

    def __init__(self, dataset, batch_size, shuffle, seed, rank, world_size):
        lengths = [int(dataset[i][2]) for i in range(len(dataset))]
        order = sorted(range(len(dataset)), key=lambda i: lengths[i])[rank::world_size]
        self.batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __iter__(self):
        order = torch.randperm(
            len(self.batches), generator=torch.Generator().manual_seed(self.seed + self.epoch)
        )
        return iter([self.batches[k] for k in order] if self.shuffle else self.batches)

    def __len__(self):
        return len(self.batches)


class _PaddedTask:
    spec = TaskSpec("padded", "binary, padded", 1, 1, "last", "binary_cross_entropy", "accuracy", True, {})

    def build(self, options, data_dir, seed):
        return Splits(_Padded(48, 9, 1), _Padded(20, 9, 2), _Padded(20, 9, 3), batch_sampler=_LengthBuckets)


def test_lengths_and_task_batching_reach_the_model(tmp_path, quiet_run, monkeypatch):
    from unicornn.task_models import SequenceModel

    seen = []
    real_forward = SequenceModel.forward

    def spy(self, x, lengths=None):
        seen.append(lengths)
        return real_forward(self, x, lengths=lengths)

    monkeypatch.setattr(SequenceModel, "forward", spy)
    res = quiet_run(_PaddedTask(), dict(TINY, epochs=2, dropout=0.0), {}, tmp_path / "r")
    assert res["status"] == "finished" and 0.0 <= res["best"]["test"] <= 100.0
    assert seen and all(lg is not None and lg.dim() == 1 for lg in seen)
    # the task's batching was used: every batch holds its sequences in order of length
    assert all(torch.equal(lg, lg.sort().values) for lg in seen)
    assert any(len(set(lg.tolist())) > 1 for lg in seen)


def test_last_readout_with_lengths_reads_each_sequence_at_its_last_valid_step():
    from unicornn.task_models import SequenceModel

    torch.manual_seed(0)
    m = SequenceModel(1, 3, 8, 2, 0.2, 1.0, 0.0, "last", backend="reference").eval()
    x, lengths = torch.randn(4, 7, 1), torch.tensor([7, 1, 3, 5])
    out = m(x, lengths=lengths)
    for b in range(4):
        torch.testing.assert_close(out[b], m(x[b : b + 1, : lengths[b]])[0])
    with pytest.raises(ValueError, match="lengths"):
        m(x, lengths=torch.tensor([0, 1, 2, 3]))
