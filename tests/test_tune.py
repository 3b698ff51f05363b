"""``unicornn tune`` and the study engine under it (unicornn.tuning): spaces, storages, pruning, dead workers,
several workers on one study, the docs page's default spaces."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("optuna")

from unicornn.training.presets import TRAIN_DEFAULTS  # noqa: E402
from unicornn.tuning import (  # noqa: E402
    Outcome,
    Range,
    apply_params,
    default_space,
    open_storage,
    open_study,
    optimize,
    parse_space,
    space_table,
)
from unicornn.validation import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ["T=20", "n_train=32", "n_valid=16", "n_test=16", "hidden_size=4", "num_layers=1", "epochs=2",
        "batch_size=16", "eval_batch_size=16", "backend=reference"]  # fmt: skip


def _sets(sets=TINY):
    return [a for s in sets for a in ("--set", s)]


def _study(path, name="s", direction="minimize", sampler=None, pruner=None, storage=None):
    import optuna

    store = open_storage(storage, path)
    sampler = sampler or optuna.samplers.RandomSampler(seed=0)
    return store, open_study(store, name, {"task": "toy", "kind": "test"}, direction, sampler, pruner)


# ---------------------------------------------------------------------------------------------- spaces


def test_default_space_holds_the_presets_values_and_the_docs_page_shows_every_tasks_space():
    from unicornn.tasks import TASKS
    from unicornn.training.presets import get_preset

    for name in TASKS.names():
        settings = get_preset(name, TASKS.get(name).spec.default_preset).config()
        for key, r in default_space(settings).items():
            v = settings[key][-1] if isinstance(settings[key], (list, tuple)) else settings[key]
            assert r.low <= v <= r.high, (name, key, r, v)
    page = (ROOT / "docs" / "tuning.md").read_text()
    assert space_table() in page, "docs/tuning.md: paste unicornn.tuning.space_table() into the page"


def test_space_parsing_and_its_errors():
    space = parse_space(["dt=0.01:1:log", "hidden_size=8:64", "alpha=0:20"], TRAIN_DEFAULTS)
    assert space == {"dt": Range(0.01, 1.0, True, False), "hidden_size": Range(8, 64, False, True),
                     "alpha": Range(0.0, 20.0, False, False)}  # fmt: skip
    for bad, match in [("foo=1:2", "not a numeric setting"), ("model=1:2", "not a numeric setting"),
                       ("dt=0.1", "LOW:HIGH"), ("dt=a:b", "LOW:HIGH"), ("dt=0.1:0.2:lin", "LOW:HIGH"),
                       ("dt=0.2:0.1", "LOW < HIGH"), ("dt=0:1:log", "LOW > 0"), ("dt", "KEY=LOW:HIGH"),
                       ("hidden_size=8:64.5", "integer bounds"), ("dt=0:nan", "finite")]:  # fmt: skip
        with pytest.raises(ConfigError, match=match):
            parse_space([bad], TRAIN_DEFAULTS)


def test_a_per_layer_dt_keeps_its_first_layer():
    assert apply_params({"dt": (6.6e-3, 0.2), "lr": 1.0}, {"dt": 0.05, "lr": 2.0}) == {
        "dt": (6.6e-3, 0.05),
        "lr": 2.0,
    }


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--space", "foo=1:2"], "--space key 'foo' is not a numeric setting"),
        (["--space", "dt=0:2"], "--space dt=0:2: the bound 0 is not valid"),
        (["--space", "lr=1:x"], "expected LOW:HIGH"),
        (["--storage", "/no/such/dir/journal.log"], "--storage '/no/such/dir/journal.log' cannot be opened"),
        (["--storage", "nosuchdb://x"], "--storage 'nosuchdb://x' cannot be opened"),
    ],
)
def test_bad_tune_input_is_one_line_and_exit_2(cli, tmp_path, extra, match):
    code, _out, err = cli("tune", "adding", "--trials", "1", "--out", tmp_path, *_sets(), *extra)
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1, err


def test_a_study_of_another_task_is_refused(cli, tmp_path):
    import optuna

    store = open_storage(None, tmp_path)
    open_study(store, "mine", {"task": "psmnist", "kind": "tune", "metric": "accuracy"}, "maximize",
               optuna.samplers.RandomSampler())  # fmt: skip
    code, _out, err = cli("tune", "adding", "--trials", "1", "--out", tmp_path, "--study", "mine", *_sets())
    assert code == 2 and "created with task 'psmnist', not 'adding'" in err, err


def test_without_optuna_the_commands_say_how_to_install_it(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    code, _out, err = cli("tune", "adding", "--trials", "1", "--out", tmp_path, *_sets())
    assert code == 2 and 'pip install "unicornn[tune]"' in err
    code, _out, err = cli("sweep", "adding", "--grid", "dt=0.1", "--out", tmp_path, *_sets())
    assert code == 2 and 'pip install "unicornn[tune]"' in err


# ---------------------------------------------------------------------------------------------- engine


def test_pruning_stops_a_clearly_worse_trial(tmp_path):
    from unicornn.tuning import make_pruner

    store, study = _study(tmp_path, pruner=make_pruner("median", epochs=10, n_startup_trials=2))
    steps: dict[int, int] = {}

    def train(params, run_id, report):  # deterministic toy: trials 0-1 good, trial 2 ten times worse
        level = 10.0 if run_id == 2 else 1.0
        for step in range(1, 11):
            steps[run_id] = step
            if report(step, level / step):
                return Outcome("pruned")
        return Outcome("complete", level / 10)

    optimize(study, store, 4, lambda t: {"x": t.suggest_float("x", 0, 1)}, train, lock_dir=tmp_path / "l",
             log=lambda m: None)  # fmt: skip
    states = [t.state.name for t in study.trials]
    assert states[:2] == ["COMPLETE", "COMPLETE"] and states[2] == "PRUNED"
    assert steps[2] == 2  # stopped at the first epoch the pruner looks at (after its warm-up epoch)
    assert steps[3] == 10 and states[3] == "COMPLETE"  # a good trial is not stopped


def test_the_trainer_hook_stops_a_run_which_then_resumes(quiet_run, tmp_path):
    from unicornn.cli import parse_sets
    from unicornn.tasks import TASKS

    task = TASKS.get("adding")
    s, o = parse_sets(TINY + ["epochs=3"], TRAIN_DEFAULTS, task.spec.default_options)
    seen = []
    r = quiet_run(task, {**TRAIN_DEFAULTS, **s}, o, tmp_path, on_epoch_end=lambda e, row: seen.append(
        (e, row["valid_mse"])) or e == 1)  # fmt: skip
    assert (
        r["status"] == "stopped" and r["epochs_done"] == 1 and seen[0][0] == 1 and math.isfinite(seen[0][1])
    )
    r = quiet_run(task, {**TRAIN_DEFAULTS, **s}, o, tmp_path, resume=True)
    assert r["status"] == "finished" and r["epochs_done"] == 3


def test_a_dead_workers_trial_on_a_journal_file_is_failed_and_retried(tmp_path, monkeypatch):
    import unicornn.tuning.workers as workers

    store, study = _study(tmp_path, storage=str(tmp_path / "journal.log"))
    assert not store.heartbeat
    orphan = study.ask()  # a RUNNING trial whose worker is gone (nobody holds its lock file)
    orphan.suggest_float("x", 0, 1)
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / f"trial-{orphan.number}.lock").touch()
    monkeypatch.setattr(workers, "START_GRACE", 0.0)
    runs = []

    def train(params, run_id, report):
        runs.append(run_id)
        return Outcome("complete", params["x"])

    optimize(study, store, 2, lambda t: {"x": t.suggest_float("x", 0, 1)}, train, lock_dir=tmp_path / "l",
             log=lambda m: None)  # fmt: skip
    trials = study.trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retry) == 1 and retry[0].params == trials[0].params and runs.count(orphan.number) == 1


def test_tune_command_writes_the_best_trial_table_and_plots_and_a_rerun_continues(cli, tmp_path):
    argv = ["tune", "adding", "--trials", "2", "--out", tmp_path, "--device", "cpu", "--no-tensorboard",
            "--quiet", *_sets(), "--set", "hidden_size=4"]  # fmt: skip
    code, out, err = cli(*argv)
    assert code == 0, err
    folder = tmp_path / "adding"
    result = json.loads((folder / "tune.json").read_text())
    assert [t["state"] for t in result["trials"]] == ["complete"] * 2
    assert "hidden_size" not in result["trials"][0]["params"]  # pinned by --set
    best = result["best"]
    assert best["set_line"].startswith("--set dt=") and '_p(\n    "adding"' in best["preset_block"]
    for t in result["trials"]:  # every trial is a normal run directory
        assert (Path(t["run_dir"]) / "result.json").exists() and Path(t["run_dir"]).parent == folder
    assert best["set_line"] in out and (folder / "tune-history.png").read_bytes()[:4] == b"\x89PNG"
    lines = [x for x in err.splitlines() if "trial " in x and " in " in x]
    assert lines and all(
        x[:4].isdigit() and x[10] == " " for x in lines
    )  # timestamped: stderr is no terminal
    code, _out, err = cli(*[a if a != "2" else "3" for a in argv])  # the study continues to 3 trials
    result = json.loads((folder / "tune.json").read_text())
    assert code == 0 and len(result["trials"]) == 3 and "1 trial(s) run by this process" in err


# ---------------------------------------------------------------------------------------------- processes


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def _tune_cmd(out, trials, *extra, sets=TINY):
    return [sys.executable, "-m", "unicornn", "tune", "adding", "--trials", str(trials), "--out", str(out),
            "--device", "cpu", "--no-tensorboard", "--no-plot", "--quiet", *_sets(sets), *extra]  # fmt: skip


def _load(out, name="adding"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{out / 'optuna.db'}")


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_no_trial_runs_twice(tmp_path):
    procs = [subprocess.Popen(_tune_cmd(tmp_path, 5, "--pruner", "none"), env=_env(), stderr=subprocess.PIPE,
                              stdout=subprocess.DEVNULL, text=True) for _ in range(2)]  # fmt: skip
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    study = _load(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 5
    assert (
        len({json.dumps(t.params, sort_keys=True) for t in study.trials}) == 5
    )  # workers draw different points
    started = [line.split("trial ")[1].split(" in ")[0] for e in errs for line in e.splitlines() if " in " in line
               and "trial " in line and "study" not in line]  # fmt: skip
    assert sorted(started) == [str(n) for n in range(5)]  # each trial started by one worker, once
    assert all(any(f"trial {n} in" in e for n in range(5)) for e in errs)  # both workers took some
    dirs = {t.user_attrs["run_dir"] for t in study.trials}
    assert len(dirs) == 5 and all(_epochs(Path(d)) == [1, 2] for d in dirs)  # trained once each


@pytest.mark.slow
def test_a_worker_killed_mid_trial_then_the_command_rerun_completes_the_study(tmp_path):
    sets = [s for s in TINY if not s.startswith(("epochs", "n_train"))] + ["epochs=4", "n_train=4000"]
    cmd = _tune_cmd(tmp_path, 2, "--pruner", "none", "--heartbeat", "1", sets=sets)
    worker = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = tmp_path / "adding" / "trial-0000"
    deadline = time.monotonic() + 240
    while not ((first / "metrics.jsonl").exists() and (first / "metrics.jsonl").read_text().strip()):
        assert worker.poll() is None and time.monotonic() < deadline, "the worker ended before it was killed"
        time.sleep(0.2)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    assert not (first / "result.json").exists()
    rerun = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    trials = _load(tmp_path).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 2 and states.count("FAIL") == 1 and "RUNNING" not in states
    killed = next(t for t in trials if t.state.name == "FAIL")
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert killed.number == 0 and len(retry) == 1 and retry[0].state.name == "COMPLETE"
    assert retry[0].user_attrs["run_dir"] == str(first) and retry[0].params == killed.params
    assert "resuming" in rerun.stderr and _epochs(first) == [1, 2, 3, 4]  # continued from its checkpoint
    summary = json.loads((tmp_path / "adding" / "tune.json").read_text())
    assert [t["state"] for t in summary["trials"]] == [s.lower() for s in states] and summary["best"][
        "number"
    ] != killed.number


@pytest.mark.slow
def test_a_torchrun_worker_trains_each_trial_over_two_processes(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={port}", *_tune_cmd(tmp_path, 2, "--pruner", "none")[1:]]  # fmt: skip
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = _load(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    for t in trials:
        config = json.loads((Path(t.user_attrs["run_dir"]) / "config.json").read_text())
        assert config["world_size"] == 2 and _epochs(Path(t.user_attrs["run_dir"])) == [1, 2]


def test_a_pruned_trial_stops_its_run_which_report_and_eval_read(cli, tmp_path, monkeypatch):
    import optuna

    import unicornn.tuning.search as search

    class Always(optuna.pruners.BasePruner):  # prunes at the first report: the trainer must stop there
        def prune(self, study, trial):
            return True

    monkeypatch.setattr(search, "make_pruner", lambda *a, **k: Always())
    argv = ["tune", "adding", "--trials", "1", "--out", tmp_path, "--no-tensorboard", "--quiet", "--no-plot",
            *_sets([s for s in TINY if not s.startswith("epochs")] + ["epochs=3"])]  # fmt: skip
    code, _out, err = cli(*argv)
    assert code == 0, err
    (trial,) = json.loads((tmp_path / "adding" / "tune.json").read_text())["trials"]
    assert trial["state"] == "pruned" and trial["epochs_done"] == 1 and "pruned after epoch 1" in err
    run = Path(trial["run_dir"])
    assert _epochs(run) == [1] and not (run / "result.json").exists()
    code, out, _err = cli("report", run)
    assert code == 0 and "| running/stopped | 1/3 |" in out
    code, out, err = cli("eval", run, "--split", "valid")
    assert code == 0, err
