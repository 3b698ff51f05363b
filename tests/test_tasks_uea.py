"""The ``uea`` task: any archive data set (bundled with aeon, or downloaded with a recorded sha256) or a user's
own ``.ts`` files; the validation split comes from the training file only; train, resume, eval and report
through the command line on tiny budgets."""

import json
import zipfile

import numpy as np
import pytest
import torch

from unicornn.cli import main
from unicornn.tasks import TASKS, uea
from unicornn.tasks.download import ChecksumError, DataUnavailableError
from unicornn.tasks.ts_format import TsFormatError
from unicornn.validation import ConfigError

TINY = ("hidden_size=6", "num_layers=2", "batch_size=8", "eval_batch_size=64", "backend=reference")


def _needs(name):
    if name not in uea.bundled_names():
        pytest.skip(f"aeon with its bundled {name} is not installed")


def _ts(path, rows, header):
    path.write_text("\n".join(["# a comment", *header, "@data", *rows]) + "\n")
    return path


@pytest.fixture
def own_files(tmp_path):
    """A classification pair (2 channels, unequal lengths, classes x y) and a regression pair."""
    rng = np.random.default_rng(0)

    def case(n, label):
        return ":".join(",".join(f"{v:.3f}" for v in rng.normal(size=n)) for _ in range(2)) + f":{label}"

    head = ["@problemName Own", "@timeStamps false", "@univariate false", "@dimensions 2", "@equalLength false",
            "@classLabel true x y"]  # fmt: skip
    tr = _ts(tmp_path / "own_TRAIN.ts", [case(5 + i % 4, "xy"[i % 2]) for i in range(20)], head)
    te = _ts(tmp_path / "own_TEST.ts", [case(6 + i % 3, "xy"[i % 2]) for i in range(8)], head)
    rhead = ["@problemName OwnReg", "@univariate false", "@dimensions 2", "@equalLength true", "@seriesLength 6",
             "@targetLabel true"]  # fmt: skip
    rtr = _ts(tmp_path / "reg_TRAIN.ts", [case(6, f"{i * 0.5:.1f}") for i in range(20)], rhead)
    rte = _ts(tmp_path / "reg_TEST.ts", [case(6, f"{i * 0.5:.1f}") for i in range(8)], rhead)
    return tr, te, rtr, rte


def test_bundled_dataset_splits_from_the_training_file():
    _needs("GunPoint")
    task = uea.UeaTask()
    s = task.build({"dataset": "GunPoint"}, None, 0)
    assert (len(s.train), len(s.valid), len(s.test)) == (40, 10, 150)  # GunPoint: 50 train, 150 test cases
    assert task.spec.input_size == 1 and task.spec.output_size == 2 and task.spec.metric == "accuracy"
    x = torch.stack([s.train[i][0] for i in range(len(s.train))])
    torch.testing.assert_close(x.mean(), torch.tensor(0.0), atol=1e-5, rtol=0)  # training-part statistics
    valid_labels = [int(s.valid[i][1]) for i in range(len(s.valid))]
    assert sorted(valid_labels) == [0] * 5 + [1] * 5  # stratified
    again = uea.UeaTask().build({"dataset": "GunPoint"}, None, 7)  # the run seed does not move the split
    assert torch.equal(again.valid[0][0], s.valid[0][0])


def test_unequal_length_dataset_batches_with_lengths():
    _needs("JapaneseVowels")
    task = uea.UeaTask()
    s = task.build({"dataset": "JapaneseVowels"}, None, 0)
    assert task.spec.input_size == 12 and task.spec.output_size == 9
    batch = s.collate_fn([s.train[i] for i in range(4)])
    x, y, lengths = batch
    assert x.shape[0] == 4 and x.shape[1] == int(lengths.max()) and x.shape[2] == 12
    assert all(torch.all(x[i, int(n) :] == 0) for i, n in enumerate(lengths))


def test_regression_detected_from_the_header(own_files):
    _, _, rtr, rte = own_files
    task = uea.UeaTask()
    s = task.build({"train": str(rtr), "test": str(rte)}, None, 0)
    assert task.spec.loss == "mse" and task.spec.metric == "rmse" and not task.spec.higher_is_better
    assert (len(s.train), len(s.valid), len(s.test)) == (16, 4, 8) and s.train[0][1].shape == (1,)


def test_bad_files_and_options(own_files, tmp_path):
    tr, te, rtr, _ = own_files
    task = uea.UeaTask()
    with pytest.raises(ConfigError, match="give either option 'dataset'"):
        task.build({}, None, 0)
    with pytest.raises(ConfigError, match="give either option 'dataset'"):
        task.build({"dataset": "GunPoint", "train": str(tr), "test": str(te)}, None, 0)
    with pytest.raises(ConfigError, match="disagree on the classes"):
        task.build({"train": str(tr), "test": str(rtr)}, None, 0)
    with pytest.raises(ConfigError, match="is not a file"):
        task.build({"train": str(tmp_path / "nope.ts"), "test": str(te)}, None, 0)
    with pytest.raises(ConfigError, match="valid_fraction"):
        task.build({"train": str(tr), "test": str(te), "valid_fraction": 1.0}, None, 0)
    bad = _ts(tmp_path / "bad.ts", ["1,2:a"], ["@problemName x", "@classLabel maybe a"])
    with pytest.raises(TsFormatError, match="bad.ts, line 3: @classlabel expects true or false"):
        task.build({"train": str(bad), "test": str(te)}, None, 0)
    ragged = _ts(tmp_path / "ragged.ts", ["1,2,3:4,5:x"], ["@classLabel true x y"])
    with pytest.raises(TsFormatError, match="ragged channels"):
        task.build({"train": str(ragged), "test": str(te)}, None, 0)
    single = _ts(tmp_path / "single.ts", ["1,2:3,4:x", "1,2:3,4:x"], ["@classLabel true x y"])
    with pytest.raises(ConfigError, match="single class"):
        task.build({"train": str(single), "test": str(te)}, None, 0)
    with pytest.raises(ConfigError, match="unknown option"):
        task.build({"dataset": "GunPoint", "epochs": 3}, None, 0)


def test_unknown_dataset_offline_lists_the_bundled_ones(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise DataUnavailableError("network disabled in tests")

    monkeypatch.setattr(uea, "fetch", offline)
    with pytest.raises(DataUnavailableError, match="NoSuchSet.*not bundled with aeon") as err:
        uea.UeaTask().build({"dataset": "NoSuchSet"}, tmp_path, 0)
    for name in uea.bundled_names():
        assert name in str(err.value)
    assert not (tmp_path / "uea" / "NoSuchSet.zip").exists()


def test_download_records_the_sha256_then_checks_it(own_files, tmp_path, monkeypatch):
    tr, te, _, _ = own_files
    calls = []

    def fake_fetch(url, dest):
        calls.append(url)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(dest, "w") as z:
            z.write(tr, "Mine/Mine_TRAIN.ts")
            z.write(te, "Mine/Mine_TEST.ts")
        return dest

    monkeypatch.setattr(uea, "fetch", fake_fetch)
    task = uea.UeaTask()
    s = task.build({"dataset": "Mine"}, tmp_path, 0)
    assert calls == [uea.ARCHIVE_URL.format(name="Mine")] and len(s.test) == 8
    archive = tmp_path / "uea" / "Mine.zip"
    recorded = (tmp_path / "uea" / "Mine.zip.sha256").read_text().strip()
    assert len(recorded) == 64
    task.build({"dataset": "Mine"}, tmp_path, 0)  # second use: checked, not downloaded again
    assert len(calls) == 1
    archive.write_bytes(archive.read_bytes() + b"x")
    with pytest.raises(ChecksumError, match="Mine.zip"):
        task.build({"dataset": "Mine"}, tmp_path, 0)


def _train(capsys, out, *sets, extra=()):
    argv = ["train", "uea", "--preset", "small", "--out", str(out), "--quiet", "--no-tensorboard", "--threads",
            "1", *extra]  # fmt: skip
    for s in (*TINY, *sets):
        argv += ["--set", s]
    threads = torch.get_num_threads()
    try:
        code = main(argv)
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured


def test_cli_train_stop_resume_eval_report(capsys, tmp_path, own_files, monkeypatch):
    import unicornn.training.seeds as seeds

    tr, te, _, _ = own_files
    out = tmp_path / "runs"
    sets = (f"train={tr}", f"test={te}", "epochs=3")
    real = seeds.train_run
    monkeypatch.setattr(seeds, "train_run", lambda *a, **kw: real(*a, **{**kw, "stop_after_epoch": 1}))
    _train(capsys, out, *sets)  # a run killed after its first epoch
    monkeypatch.undo()
    run = out / "uea" / "seed-0"
    assert not (run / "result.json").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["input_size"] == 2 and config["spec"]["output_size"] == 2
    _train(capsys, out, *sets, extra=("--resume",))
    result = json.loads((run / "result.json").read_text())
    assert result["epochs_done"] == 3 and result["metric"] == "accuracy"
    assert main(["eval", str(run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["test"]["accuracy"] == pytest.approx(result["best"]["test"])
    assert main(["report", str(out / "uea"), "--no-plot"]) == 0
    assert "accuracy" in capsys.readouterr().out


def test_cli_bundled_regression(capsys, tmp_path):
    _needs("Covid3Month")
    out = tmp_path / "runs"
    _train(capsys, out, "dataset=Covid3Month", "epochs=1")
    result = json.loads((out / "uea" / "seed-0" / "result.json").read_text())
    assert result["metric"] == "rmse" and np.isfinite(result["best"]["test"])


def test_registered_with_presets():
    from unicornn.training.presets import get_preset

    assert TASKS.get("uea").spec.default_preset == "default"
    for name in ("small", "default"):
        assert get_preset("uea", name).config()["model"] == "unicornn"
