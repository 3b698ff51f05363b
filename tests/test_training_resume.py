"""Runs a user resumes, extends, shares or breaks: resume keeps the run's own settings, explicit changes are
recorded, one writer per run directory, file-system errors and the NaN guard's message."""

import errno
import json
import os

import pytest
import torch
from helpers import run_files, tiny_train_argv
from torch.utils.data import Dataset

from unicornn.tasks import get_task
from unicornn.tasks.base import Splits, TaskSpec
from unicornn.training import checkpoint as ckpt_mod
from unicornn.training.checkpoint import load_checkpoint, read_jsonl
from unicornn.training.run import run_lock
from unicornn.training.trainer import NonFiniteError, RunLockedError

OPTS = {"T": 10, "n_train": 32, "n_valid": 16, "n_test": 16}
CFG = dict(hidden_size=6, num_layers=2, epochs=3, batch_size=8, eval_batch_size=16, dropout=0.1, lr=0.01,
           backend="reference")  # fmt: skip


def rows(run_dir):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run_dir / "metrics.jsonl")]


def weights(path):
    return load_checkpoint(path)["model"]


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_set_keeps_the_runs_settings_and_set_epochs_extends_it(tmp_path, cli, quiet_run):
    # a run started with epochs=4 (not the preset's) and T=10, stopped after 2 epochs
    run_dir = tmp_path / "out" / "adding" / "seed-0"
    quiet_run(get_task("adding"), dict(CFG, epochs=4), OPTS, run_dir, stop_after_epoch=2, preset="small")
    # resumed with none of its settings: it finishes its own 4 epochs, with its own model and options
    code, _, err = cli("train", "adding", "--out", str(tmp_path / "out"), "--resume", "--quiet")
    assert code == 0, err
    result = json.loads((run_dir / "result.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert result["epochs"] == result["epochs_done"] == 4 and result["status"] == "finished"
    assert config["settings"]["epochs"] == 4 and config["settings"]["hidden_size"] == 6
    assert config["task_options"]["T"] == 10 and "changes" not in config
    # the same as the uninterrupted run
    quiet_run(get_task("adding"), dict(CFG, epochs=4), OPTS, tmp_path / "straight4")
    assert rows(run_dir) == rows(tmp_path / "straight4")

    # a finished run is extended by asking for more epochs explicitly; the change is recorded
    code, _, err = cli("train", "adding", "--out", str(tmp_path / "out"), "--resume", "--quiet",
                       "--set", "epochs=6")  # fmt: skip
    assert code == 0, err
    assert "epochs 4 -> 6 as asked" in err
    result = json.loads((run_dir / "result.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    assert result["epochs"] == result["epochs_done"] == 6
    assert config["settings"]["epochs"] == 6
    assert config["changes"] == [{"after_epoch": 4, "epochs": [4, 6]}]
    assert load_checkpoint(run_dir / "checkpoint.pt")["record"]["changes"] == config["changes"]
    # extending gives the run that was asked for 6 epochs from the start (the schedule has no end date)
    quiet_run(get_task("adding"), dict(CFG, epochs=6), OPTS, tmp_path / "straight6")
    assert rows(run_dir) == rows(tmp_path / "straight6")
    assert same_weights(weights(run_dir / "checkpoint.pt"), weights(tmp_path / "straight6" / "checkpoint.pt"))

    # resuming again without --set: finished at its own (recorded) 6 epochs, nothing to do
    code, _, err = cli("train", "adding", "--out", str(tmp_path / "out"), "--resume", "--quiet")
    assert code == 0 and "already finished (6 epochs" in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "lr=0.5"], "setting 'lr' (the run's 0.01, asked 0.5)"),
        (["--set", "T=20"], "task option 'T' (the run's 10, asked 20)"),
        (["--preset", "paper"], "started with preset 'small'"),
        (["--set", "epochs=1"], "the run has already done 2 epochs"),
    ],
)
def test_resume_refuses_changes_that_would_change_the_run(tmp_path, cli, quiet_run, extra, message):
    run_dir = tmp_path / "adding" / "seed-0"
    quiet_run(get_task("adding"), CFG, OPTS, run_dir, stop_after_epoch=2, preset="small")
    before = run_files(run_dir)
    code, _, err = cli("train", "adding", "--out", str(tmp_path), "--resume", *extra)
    assert code == 2 and message in err and "Traceback" not in err
    assert run_files(run_dir) == before
    # repeating a setting with the run's own value is no change
    code, _, err = cli("train", "adding", "--out", str(tmp_path), "--resume", "--set", "lr=0.01")
    assert code == 0, err


def test_resume_of_a_run_that_never_finished_an_epoch_uses_its_settings(tmp_path, cli, quiet_run):
    run_dir = tmp_path / "adding" / "seed-0"
    quiet_run(get_task("adding"), CFG, OPTS, run_dir, stop_after_epoch=0)  # config.json only
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.json"]
    code, _, err = cli("train", "adding", "--out", str(tmp_path), "--resume", "--quiet")
    assert code == 0, err
    assert "started again with its own settings" in err
    assert json.loads((run_dir / "result.json").read_text())["epochs_done"] == 3


def test_a_second_writer_is_refused_and_the_lock_is_released(tmp_path, quiet_run):
    task, run_dir = get_task("adding"), tmp_path / "r"
    with run_lock(run_dir):
        with pytest.raises(
            RunLockedError, match=rf"being written by pid {os.getpid()} on .*choose another --out"
        ):
            quiet_run(task, CFG, OPTS, run_dir)
        with pytest.raises(RunLockedError):
            quiet_run(task, CFG, OPTS, run_dir, resume=True)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # the refused run wrote nothing
    assert quiet_run(task, dict(CFG, epochs=1), OPTS, run_dir)["status"] == "finished"


def test_out_under_a_regular_file_is_a_one_line_error(tmp_path, cli):
    (tmp_path / "file").write_text("not a directory")
    code, _, err = cli(*tiny_train_argv(tmp_path / "file" / "runs"))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "cannot create the run directory" in err and "Not a directory" in err


def test_read_only_file_system_is_a_one_line_error(tmp_path, cli, monkeypatch):
    import unicornn.training.run as run_mod

    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(run_mod.os, "open", read_only)
    code, _, err = cli(*tiny_train_argv(tmp_path / "runs"))
    assert code == 2 and "Read-only file system" in err and "Traceback" not in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_directory_is_a_one_line_error(tmp_path, cli):
    tmp_path.chmod(0o555)
    try:
        code, _, err = cli(*tiny_train_argv(tmp_path / "runs"))
    finally:
        tmp_path.chmod(0o755)
    assert code == 2 and "Permission denied" in err and "Traceback" not in err


def test_a_full_disk_during_a_checkpoint_write_keeps_the_last_checkpoint(tmp_path, cli, monkeypatch):
    out = tmp_path / "runs"
    run_dir = out / "adding" / "seed-0"
    real_save, calls = torch.save, []

    def save_until_full(obj, f):
        calls.append(1)
        if len(calls) > 3:  # best.pt and checkpoint.pt of epoch 1 (and maybe best.pt of epoch 2) fit
            f.write(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), None)
        real_save(obj, f)

    monkeypatch.setattr(ckpt_mod.torch, "save", save_until_full)
    code, _, err = cli(*tiny_train_argv(out, "--quiet"))
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    monkeypatch.setattr(ckpt_mod.torch, "save", real_save)
    assert not [p for p in run_dir.iterdir() if ".tmp-" in p.name]  # no half-written file
    assert load_checkpoint(run_dir / "checkpoint.pt")["epoch"] >= 1
    # space is back: the run continues and is the uninterrupted one
    code, _, err = cli(*tiny_train_argv(out, "--quiet", "--resume"))
    assert code == 0, err
    code, _, err = cli(*tiny_train_argv(tmp_path / "straight", "--quiet"))
    assert rows(run_dir) == rows(tmp_path / "straight" / "adding" / "seed-0")


class _NaNData(Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.full((8, 2), float("nan")), torch.zeros(1)


class _NaNTask:
    spec = TaskSpec("nan", "NaN from the first batch on", 2, 1, "last", "mse", "mse", False, {})

    def build(self, options, data_dir, seed):
        return Splits(_NaNData(), _NaNData(), _NaNData())


def test_nonfinite_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, quiet_run):
    with pytest.raises(NonFiniteError) as e:
        quiet_run(_NaNTask(), dict(CFG, dropout=0.0), {}, tmp_path / "r")
    assert "no checkpoint was written yet" in str(e.value) and "epoch 0" not in str(e.value)
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_progress_in_a_log_file_is_plain_lines(tmp_path, cli):
    code, _, err = cli(*tiny_train_argv(tmp_path, "--progress-every", "0"))
    assert code == 0, err
    assert "\r" not in err and "\x1b" not in err  # no bar redraws, no terminal codes
    lines = err.strip().splitlines()
    assert any("epoch 2/3: batch 2/4" in line for line in lines)  # in-epoch progress
    assert any(line.endswith("s") and "epoch 3/3  lr" in line for line in lines)
    assert all(line[:4].isdigit() and line[4] == "-" for line in lines)  # each line starts with the date


def test_resume_of_a_run_with_a_damaged_config_and_no_checkpoint_starts_afresh(tmp_path, cli, quiet_run):
    run_dir = tmp_path / "adding" / "seed-0"
    quiet_run(get_task("adding"), CFG, OPTS, run_dir, stop_after_epoch=0)
    (run_dir / "config.json").write_text('{"task": "add')
    code, _, err = cli(*tiny_train_argv(tmp_path, "--quiet", "--resume", "--set", "epochs=1"))
    assert code == 0 and "config.json is damaged" in err and "starting afresh" in err
    assert json.loads((run_dir / "config.json").read_text())["settings"]["epochs"] == 1


def test_report_of_a_damaged_config_is_a_one_line_error(tmp_path, cli, quiet_run):
    run_dir = tmp_path / "adding" / "seed-0"
    quiet_run(get_task("adding"), dict(CFG, epochs=1), OPTS, run_dir)
    (run_dir / "config.json").write_bytes(b"\x00\xff garbage")
    code, _, err = cli("report", str(tmp_path), "--no-plot")
    assert code == 2 and "config.json is damaged" in err and len(err.strip().splitlines()) == 1
