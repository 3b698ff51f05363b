"""Fault injection: a run killed (SIGKILL) anywhere, then resumed, is the uninterrupted run; two runs on one
directory; every file of a run directory damaged in turn.

Runs are forked child processes of the test (no interpreter start-up: the file stays fast) running the
``unicornn`` command line; they are killed at chosen points through the test hook :mod:`unicornn.training.faults`
(environment variable ``UNICORNN_FAULT``) or after a random delay.
"""

import json
import multiprocessing
import os
import random
import signal
import sys

import pytest
import torch
from helpers import run_files, tiny_train_argv

import unicornn.training.seeds  # noqa: F401  (imported once here, not in every child)
from unicornn.cli import main
from unicornn.training.checkpoint import load_checkpoint, read_jsonl
from unicornn.training.faults import ENV

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or "fork" not in multiprocessing.get_all_start_methods(),
    reason="needs fork (Linux)",
)
_FORK = multiprocessing.get_context("fork") if sys.platform == "linux" else None
torch.optim.Adam(
    [torch.zeros(1, requires_grad=True)]
)  # Adam's first use imports torch._dynamo (seconds): once
#: (point, number of times a 3-epoch tiny run passes it): 4 batches per epoch.
POINTS = [("batch", 12), ("checkpoint.pt", 3), ("best.pt", 1), ("metrics.jsonl", 3), ("result.json", 1),
          ("config.json", 1)]  # fmt: skip


def _child(argv, fault, log):
    os.environ.pop(ENV, None)
    if fault:
        os.environ[ENV] = fault
    sys.stdout = sys.stderr = open(log, "a")  # noqa: SIM115 (the process ends with os._exit)
    torch.set_num_threads(1)
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def start(argv, log, fault=None):
    p = _FORK.Process(target=_child, args=(argv, fault, str(log)))
    p.start()
    return p


def train(argv, log, fault=None, kill_after=None):
    """Run ``unicornn`` with ``argv`` in a child; its exit code (-9: killed)."""
    p = start(argv, log, fault)
    p.join(kill_after)
    if p.exitcode is None:
        os.kill(p.pid, signal.SIGKILL)
        p.join()
    return p.exitcode


def snapshot(out):
    """Everything a run directory says about its run, timing left out, and its run id (one in every file;
    another run's differs) checked and left out."""
    run_dir = out / "adding" / "seed-0"
    ck = load_checkpoint(run_dir / "checkpoint.pt")
    result = json.loads((run_dir / "result.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    best_record = load_checkpoint(run_dir / "best.pt")["record"]
    ids = {doc.pop("run_id") for doc in (result, config, ck["record"], best_record)}
    assert len(ids) == 1, ids
    result["final"].pop("seconds")
    for r in ck["rows"]:
        r.pop("seconds")
    return {
        "files": sorted(p.name for p in run_dir.iterdir()),
        "config": config,
        "rows": [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(run_dir / "metrics.jsonl")
        ],
        "result": result,
        "checkpoint": {k: ck[k] for k in ("epoch", "best", "record", "rows")},
        "weights": {k: v.tolist() for k, v in ck["model"].items()},
        "optimizer": repr(ck["optimizer"]),
        "rng": repr(ck["rng"]),
        "best_weights": {k: v.tolist() for k, v in load_checkpoint(run_dir / "best.pt")["model"].items()},
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference")
    assert train(tiny_train_argv(out, "--quiet"), out / "log") == 0, (out / "log").read_text()
    return snapshot(out)


@pytest.mark.parametrize(
    "case", [f"{point}:{max(1, n // 2)}" for point, n in POINTS] + [f"random-{seed}" for seed in range(6)]
)
def test_killed_anywhere_then_resumed_is_the_uninterrupted_run(tmp_path, reference, case):
    """A fixed kill (``POINT:N``), or for ``random-SEED`` up to two kills at random points and (odd seeds) one
    after a random delay; each followed by ``--resume`` until the run ends."""
    rng = random.Random(case)
    log = tmp_path / "log"
    argv = tiny_train_argv(tmp_path, "--quiet")
    kills = []
    for attempt in range(6):
        if attempt == 0 and not case.startswith("random"):
            fault, delay = case, None
        elif attempt < 2 and case.startswith("random"):
            point, count = rng.choice(POINTS)
            fault, delay = f"{point}:{rng.randint(1, count)}", None
        elif attempt == 2 and case.startswith("random") and int(case.split("-")[1]) % 2:
            fault, delay = None, rng.uniform(0.0, 0.4)
        else:
            fault, delay = None, None
        code = train(argv, log, fault=fault, kill_after=delay)
        assert code in (0, -signal.SIGKILL), log.read_text()
        if code == 0:
            break
        kills.append(fault or f"after {delay:.2f}s")
        argv = tiny_train_argv(tmp_path, "--quiet", "--resume")
    assert code == 0 and kills, (kills, log.read_text())
    assert snapshot(tmp_path) == reference, (kills, log.read_text())


def test_two_runs_on_one_directory_one_is_refused(tmp_path):
    argv = tiny_train_argv(tmp_path, "--quiet")
    first = start(argv, tmp_path / "first.log", fault="batch:2:stop")  # holds the lock, stopped mid-epoch
    try:
        os.waitpid(first.pid, os.WUNTRACED)
        assert train(argv, tmp_path / "second.log") == 2
        assert train([*argv, "--resume"], tmp_path / "second.log") == 2
    finally:
        os.kill(first.pid, signal.SIGCONT)
        first.join(60)
    err = (tmp_path / "second.log").read_text()
    assert err.count(f"is being written by pid {first.pid}") == 2 and "Traceback" not in err
    assert first.exitcode == 0, (tmp_path / "first.log").read_text()
    epochs = [r["epoch"] for r in read_jsonl(tmp_path / "adding" / "seed-0" / "metrics.jsonl")]
    assert epochs == [1, 2, 3]


def test_a_run_killed_while_its_data_loader_workers_live_leaves_no_lock(tmp_path):
    """DataLoader worker processes (forked while the run holds its lock) do not hold the lock: a run killed
    mid-epoch is resumed at once, while its orphaned workers may still be alive."""
    argv = tiny_train_argv(tmp_path, "--quiet", "--set", "num_workers=2")
    assert train(argv, tmp_path / "log", fault="batch:2") == -signal.SIGKILL, (tmp_path / "log").read_text()
    assert train([*argv, "--resume"], tmp_path / "log") == 0, (tmp_path / "log").read_text()
    epochs = [r["epoch"] for r in read_jsonl(tmp_path / "adding" / "seed-0" / "metrics.jsonl")]
    assert epochs == [1, 2, 3]


def _damage(path, how, rng):
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "empty": b"", "random": rng.randbytes(len(data) or 64)}[how]
    )


RUN_FILES = {
    # file: (expected exit code of --resume, message)
    "checkpoint.pt": (2, "checkpoint.pt is damaged or not a unicornn checkpoint"),
    "config.json": (0, "config.json is damaged"),
    "metrics.jsonl": (0, "metrics.jsonl was damaged or incomplete; written again from checkpoint.pt"),
    "best.pt": (0, "best.pt is damaged or not a unicornn checkpoint"),
    ".lock": (0, "resuming"),
}


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run killed right after the checkpoint of epoch 2 was written."""
    out = tmp_path_factory.mktemp("stopped")
    assert train(tiny_train_argv(out, "--quiet"), out / "log", fault="batch:9") == -signal.SIGKILL
    assert load_checkpoint(out / "adding" / "seed-0" / "checkpoint.pt")["epoch"] == 2
    return out


@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
@pytest.mark.parametrize("name", list(RUN_FILES))
def test_each_damaged_file_of_a_run_directory(tmp_path, capsys, stopped_run, reference, name, how):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(stopped_run, out)
    run_dir = out / "adding" / "seed-0"
    _damage(run_dir / name, how, random.Random(f"{name} {how}"))
    before = run_files(run_dir)
    code = main(tiny_train_argv(out, "--quiet", "--resume"))
    err = capsys.readouterr().err
    expected_code, message = RUN_FILES[name]
    assert code == expected_code and message in err and "Traceback" not in err, err
    if code == 2:  # one line, the directory untouched
        assert len(err.strip().splitlines()) == 1
        assert run_files(run_dir) == before
        return
    if name == "best.pt" and reference["checkpoint"]["best"]["epoch"] not in (2, 3):
        return  # the best epoch's weights are lost (the run says so); everything else continues
    got = snapshot(out)
    assert got == reference


@pytest.mark.parametrize("how", ["truncated", "empty", "random"])
def test_damaged_result_json_is_written_again_and_eval_reports_damaged_best_pt(tmp_path, capsys, how):
    out = tmp_path / "out"
    argv = tiny_train_argv(out, "--quiet", "--set", "epochs=1")
    assert main(argv) == 0
    run_dir = out / "adding" / "seed-0"
    result = json.loads((run_dir / "result.json").read_text())
    _damage(run_dir / "result.json", how, random.Random(how))
    capsys.readouterr()
    assert main([*argv, "--resume"]) == 0
    assert "result.json is damaged" in capsys.readouterr().err
    again = json.loads((run_dir / "result.json").read_text())
    assert {k: v for k, v in again.items() if k != "final"} == {
        k: v for k, v in result.items() if k != "final"
    }

    _damage(run_dir / "best.pt", how, random.Random(how))
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "best.pt is damaged or not a unicornn checkpoint" in err and len(err.strip().splitlines()) == 1


def test_sigterm_stops_cleanly_and_resume_gives_the_uninterrupted_run(tmp_path, reference):
    argv = tiny_train_argv(tmp_path, "--quiet")
    child = start(argv, tmp_path / "log", fault="batch:6:stop")  # in epoch 2
    os.waitpid(child.pid, os.WUNTRACED)
    os.kill(child.pid, signal.SIGTERM)  # delivered when it continues
    os.kill(child.pid, signal.SIGCONT)
    child.join(60)
    log = (tmp_path / "log").read_text()
    assert (
        child.exitcode == 143 and "terminated (SIGTERM); continue with the same command plus --resume" in log
    )
    assert "Traceback" not in log
    assert train([*argv, "--resume"], tmp_path / "log") == 0, (tmp_path / "log").read_text()
    assert snapshot(tmp_path) == reference
