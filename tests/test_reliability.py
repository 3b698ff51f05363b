"""Reliability: what an adversarial user tried and what the command line must answer (one line on stderr and
exit code 2 for a user error, never a traceback)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_SETS, tiny_train_argv

from unicornn.training.checkpoint import read_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"


def one_line_error(code, err, *needles):
    """The command failed with exit code 2 and one ``unicornn: error:`` line containing every needle."""
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("unicornn: error:"), (code, err)
    for needle in needles:
        assert needle in lines[0], (needle, err)


# --------------------------------------------------------------------------------------------------
# seeds
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [4295, 12345, 2**32 - 1])
def test_large_seeds_train(cli, tmp_path, seed):
    """Every seed the settings accept trains (the per-process seeds derived from it fit numpy's range)."""
    code, out, err = cli(*tiny_train_argv(tmp_path, "--quiet", "--set", "epochs=1", "--set", f"seed={seed}"))
    assert code == 0, err
    assert (tmp_path / "adding" / f"seed-{seed}" / "result.json").exists()


@pytest.mark.parametrize("seed", ["-1", "4294967296", "1.5", "abc"])
def test_seed_out_of_range_is_one_line(cli, tmp_path, seed):
    code, out, err = cli(*tiny_train_argv(tmp_path, "--quiet", "--set", f"seed={seed}"))
    one_line_error(code, err, "seed")
    assert not (tmp_path / "adding").exists()


def test_seeds_of_several_runs_past_the_range_are_refused_before_training(cli, tmp_path):
    code, out, err = cli(*tiny_train_argv(tmp_path, "--quiet", "--set", f"seed={2**32 - 1}", "--runs", "2"))
    one_line_error(code, err, "seed", "2 runs")
    assert not (tmp_path / "adding").exists()


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow  # a fresh process (without Triton's interpreter)
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_triton_backend_without_cuda_is_a_settings_error(tmp_path):
    """Without CUDA (and without Triton's interpreter) ``backend=triton`` is refused before training."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    argv = tiny_train_argv(tmp_path, "--quiet", "--set", "backend=triton")
    p = subprocess.run([sys.executable, "-m", "unicornn", *argv], env=env, capture_output=True, text=True)
    one_line_error(p.returncode, p.stderr, "backend=triton", "cuda")
    assert not (tmp_path / "adding" / "seed-0" / "checkpoint.pt").exists()


# --------------------------------------------------------------------------------------------------
# diagnose states
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "how", [["--input-scale", "nan"], ["--initial-state", "inf"], ["--initial-state", "nan"]]
)
def test_non_finite_states_are_a_violation(cli, tmp_path, how):
    code, out, err = cli("diagnose", "states", "--steps", "20", "--hidden", "4", "--batch", "2", *how,
                         "--out", tmp_path)  # fmt: skip
    assert code == 4, (out, err)
    assert "non-finite" in out and "bound violated" in out and "holds" not in out, out
    check = json.loads((tmp_path / "states.json").read_text())
    assert check["violated"] and all(v["non_finite"] for v in check["violations"])
    assert check["violations"][0]["step"] == 1


# --------------------------------------------------------------------------------------------------
# report on unexpected files
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from unicornn.cli import main

    out = tmp_path_factory.mktemp("finished")
    assert main(tiny_train_argv(out, "--quiet", "--set", "epochs=2")) == 0
    return out


def _copy(finished_run, tmp_path):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished_run, out)
    return out, out / "adding" / "seed-0"


@pytest.mark.parametrize("content", ['{"name": "other-tool", "version": 3}', "{}"])
def test_report_skips_another_tools_config_json(cli, finished_run, tmp_path, content):
    out, _ = _copy(finished_run, tmp_path)
    (out / "other").mkdir()
    (out / "other" / "config.json").write_text(content)
    code, stdout, err = cli("report", out, "--no-plot")
    assert code == 0 and "Traceback" not in err, err
    assert "seed-0" in stdout
    assert f"skipped {out / 'other'}: its config.json is not a unicornn run's" in err, err
    assert not (out / "report.md").exists()  # nothing written beside another tool's files
    code, stdout, err = cli("report", out / "other")
    one_line_error(code, err, "no runs", "skipped 1")


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\x00garbage\n"), "not UTF-8"),
        (lambda p: p.write_text('{"epoch": 1, "train_loss": 0.5}\n'), "lacks 'valid_mse'"),
        (lambda p: p.write_text("[1, 2]\n"), "not a JSON object"),
    ],
)
def test_report_names_a_damaged_metrics_file(cli, finished_run, tmp_path, damage, needle):
    out, run = _copy(finished_run, tmp_path)
    damage(run / "metrics.jsonl")
    code, stdout, err = cli("report", out, "--no-plot")
    one_line_error(code, err, str(run / "metrics.jsonl"), needle)


def test_report_names_a_damaged_config_json(cli, finished_run, tmp_path):
    out, run = _copy(finished_run, tmp_path)
    config = json.loads((run / "config.json").read_text())
    config["spec"] = "mse"
    (run / "config.json").write_text(json.dumps(config))
    code, stdout, err = cli("report", out, "--no-plot")
    one_line_error(code, err, str(run / "config.json"), "damaged")


# --------------------------------------------------------------------------------------------------
# BIDMC data files
# --------------------------------------------------------------------------------------------------


def _ts_case(rng, n=4000, nan=False):
    x = rng.standard_normal((n, 2))
    if nan:
        x[5, 1] = np.nan
    return ":".join(",".join(repr(float(v)) for v in x[:, c]) for c in range(2)) + ":12.0"


def _ts_file(*cases):
    header = ["@problemName BIDMC32RR", "@timeStamps false", "@missing false", "@univariate false",
              "@dimensions 2", "@equalLength true", "@seriesLength 4000", "@targetLabel true", "@data"]  # fmt: skip
    return ("\n".join(header + list(cases)) + "\n").encode()


_RNG = np.random.default_rng(0)
DAMAGED_TS = {
    "empty": (b"", "no @data line"),
    "ragged": (_ts_file(_ts_case(_RNG), _ts_case(_RNG, 3999)), "3999 time points"),
    "nan": (_ts_file(_ts_case(_RNG), _ts_case(_RNG, nan=True)), "case 2 holds missing or non-finite values"),
    "random": (_RNG.bytes(5000), "expected a header line"),
    "too few cases": (_ts_file(_ts_case(_RNG)), "cases"),
}


@pytest.mark.parametrize("which", list(DAMAGED_TS))
def test_damaged_bidmc_files_are_one_line_data_errors(cli, tmp_path, which):
    from unicornn.tasks.bidmc import TARGETS

    data, needle = DAMAGED_TS[which]
    directory = TARGETS["rr"].directory(tmp_path / "data")
    directory.mkdir(parents=True)
    for name in TARGETS["rr"].files:
        (directory / name).write_bytes(data)
        (directory / f"{name}.md5").write_text(hashlib.md5(data).hexdigest())
    code, out, err = cli("train", "bidmc-rr", "--data-dir", tmp_path / "data", "--out", tmp_path / "runs",
                         "--preset", "small", "--quiet", "--no-tensorboard")  # fmt: skip
    one_line_error(code, err, needle, "BIDMC32RR_TRAIN.ts" if which != "too few cases" else str(directory))


@pytest.mark.parametrize("prefix", ["md5:", "MD5:", ""])
def test_bidmc_md5_sidecar_as_the_record_page_shows_it(tmp_path, prefix):
    """The record's page shows ``md5:<hash>``; a sidecar written that way is accepted (and still checked)."""
    from unicornn.tasks.bidmc import TARGETS, fetch_verified
    from unicornn.tasks.download import ChecksumError, DataUnavailableError

    target = TARGETS["rr"]
    name = target.files[0]
    directory = target.directory(tmp_path)
    directory.mkdir(parents=True)
    (directory / name).write_bytes(b"some bytes")
    (directory / f"{name}.md5").write_text(f"{prefix}{hashlib.md5(b'some bytes').hexdigest()}\n")
    assert fetch_verified(target, name, tmp_path) == directory / name
    (directory / f"{name}.md5").write_text(f"{prefix}{hashlib.md5(b'other bytes').hexdigest()}\n")
    with pytest.raises(ChecksumError):
        fetch_verified(target, name, tmp_path)
    (directory / f"{name}.md5").write_text("sha1:0123\n")
    with pytest.raises(DataUnavailableError, match=r"\.md5 should hold"):
        fetch_verified(target, name, tmp_path)


# --------------------------------------------------------------------------------------------------
# task options
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "task, item, needle",
    [
        ("lorenz96", "target=foo", "option 'target' must be one of next, increment, got 'foo'"),
        ("lorenz96", "standardize=maybe", "option 'standardize' must be a bool (true or false), got 'maybe'"),
        ("noisy-cifar10", "noise=foo", "option 'noise' must be one of fixed, fresh, uniform, got 'foo'"),
        ("lorenz96", "F=1e300", "option 'F' must be in [-100.0, 100.0], got 1e+300"),
        ("adding", "T=1,2", "option 'T' must be an int, got list"),
        ("imdb", "embedding_dropout=abc", "option 'embedding_dropout' must be a number, got str"),
        ("psmnist", "n_train=true", "option 'n_train' must be an int, got bool"),
    ],
)
def test_mistyped_task_options_are_one_line(cli, tmp_path, task, item, needle):
    code, out, err = cli("train", task, "--out", tmp_path / "runs", "--data-dir", tmp_path / "data",
                         "--quiet", "--no-tensorboard", "--set", item)  # fmt: skip
    one_line_error(code, err, needle)
    assert not (tmp_path / "runs").exists()


def _task_option_cases():
    from unicornn.tasks import TASKS

    for name in TASKS.names():
        for key, default in TASKS.get(name).spec.default_options.items():
            wrong = [[1, 2], None, "foo" if not isinstance(default, str) else 3]
            if not isinstance(default, bool):
                wrong.append(True)
            for value in wrong:
                yield pytest.param(name, key, value, id=f"{name}-{key}-{value!r}")


@pytest.mark.parametrize("task, key, value", list(_task_option_cases()))
def test_every_task_option_is_checked_against_its_type(task, key, value):
    """Every option of every task is checked against the type of its default (ints for int options, finite
    numbers for float ones, true/false for bools, names for strings), before any data is read."""
    from unicornn.tasks import TASKS
    from unicornn.validation import ConfigError

    with pytest.raises(ConfigError, match=f"option '{key}' must be"):
        TASKS.get(task).spec.resolve_options({key: value})


# --------------------------------------------------------------------------------------------------
# absurd optimiser values, eval's batch size
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, needle",
    [
        ("lr=1e38", "setting 'lr' must be in (0.0, 10.0], got 1e+38"),
        ("lr=1e300", "setting 'lr' must be in (0.0, 10.0]"),
        ("lr=0", "setting 'lr' must be in (0.0, 10.0]"),
        ("lr_reduce_factor=1e300", "setting 'lr_reduce_factor' must be in (0.0, 1.0]"),
        ("grad_clip=-1", "setting 'grad_clip' must be > 0"),
    ],
)
def test_absurd_optimiser_values_are_refused_with_their_range(cli, tmp_path, item, needle):
    code, out, err = cli(*tiny_train_argv(tmp_path, "--quiet", "--set", "lr_reduce_epoch=1", "--set", item))
    one_line_error(code, err, needle)
    assert not (tmp_path / "adding").exists()


@pytest.mark.parametrize("batch", ["-1", "0", "1.5"])
def test_eval_batch_size_must_be_a_positive_int(cli, finished_run, batch):
    code, out, err = cli("eval", finished_run / "adding" / "seed-0", "--batch-size", batch)
    assert code == 2 and "argument --batch-size" in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------
# dropout_over_time
# --------------------------------------------------------------------------------------------------


def test_dropout_over_time_p_one_gives_zeros_like_nn_dropout():
    from unicornn import dropout_over_time

    x = torch.randn(7, 3, 5)
    out = dropout_over_time(x, 1.0)
    assert torch.equal(out, torch.nn.functional.dropout(x, 1.0)) and not out.any()
    assert torch.equal(dropout_over_time(x, 1.0, training=False), x)


@pytest.mark.parametrize("p", [-0.5, 1.5, float("nan"), "0.5"])
def test_dropout_over_time_names_the_bad_p(p):
    from unicornn import dropout_over_time
    from unicornn.validation import ConfigError

    with pytest.raises(ConfigError, match=r"p must be .*got " + ("-0.5" if p == -0.5 else "")):
        dropout_over_time(torch.randn(4, 2, 3), p)


# --------------------------------------------------------------------------------------------------
# --out with a name too long for the file system; a file where the run writes a directory
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["last", "inner"])
def test_out_component_too_long_is_one_clear_error(cli, tmp_path, where):
    long = "x" * 300
    out = tmp_path / long if where == "last" else tmp_path / "new" / long / "runs"
    code, stdout, err = cli(*tiny_train_argv(out, "--quiet"))
    assert code == 2 and "argument --out" in err and "300 bytes long" in err and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


def test_run_lock_reports_a_name_too_long(tmp_path):
    from unicornn.training.errors import RunFileError
    from unicornn.training.run import run_lock

    with (
        pytest.raises(RunFileError, match="cannot create the run directory"),
        run_lock(tmp_path / ("x" * 300)),
    ):
        pass


class _FakeSummaryWriter:
    """Stands in for TensorBoard's writer (which creates its directory the same way)."""

    def __init__(self, logdir, purge_step=None):
        os.makedirs(logdir, exist_ok=True)

    def add_scalar(self, *args):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def test_a_regular_file_named_tensorboard_is_reported_and_the_run_goes_on(cli, tmp_path, monkeypatch):
    import types

    monkeypatch.setitem(
        sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=_FakeSummaryWriter)
    )
    argv = ["train", "adding", "--out", tmp_path, *sum((["--set", s] for s in TINY_TRAIN_SETS), [])]
    code, out, err = cli(*argv, "--set", "epochs=1")
    run = tmp_path / "adding" / "seed-0"
    assert code == 0 and (run / "tensorboard").is_dir(), err
    shutil.rmtree(run / "tensorboard")
    (run / "tensorboard").write_text("not a directory")
    code, out, err = cli(*argv, "--resume", "--set", "epochs=2")
    assert code == 0 and "Traceback" not in err, err
    assert f"TensorBoard events are not written: {run / 'tensorboard'} is not a directory" in err, err
    assert (run / "tensorboard").read_text() == "not a directory"
    assert [r["epoch"] for r in read_jsonl(run / "metrics.jsonl")] == [1, 2]


# --------------------------------------------------------------------------------------------------
# Ctrl-C at any moment, from the first imports on
# --------------------------------------------------------------------------------------------------


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child before it starts Python: SIGINT handled by default, as a terminal's foreground job has it
    (a test run started in the background of a shell without job control inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(tmp_path, delays):
    """Start ``python -m unicornn train ...``, send SIGINT after each of ``delays`` (seconds, cumulative)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    argv = tiny_train_argv(tmp_path, "--quiet", "--set", "epochs=100000")
    p = subprocess.Popen(
        [sys.executable, "-m", "unicornn", *argv],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    try:
        for delay in delays:
            time.sleep(delay)
            p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()  # (no-op once it ended) a command that ignored the Ctrl-C must not outlive the test
    return p.returncode, err


@pytest.mark.slow  # fresh processes
@pytest.mark.parametrize("delay", [0.5, 1.0, 2.0])
def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path, delay):
    code, err = _interrupted(tmp_path, [delay])
    lines = err.strip().splitlines()  # training may have begun by then: its progress lines come first
    errors = [line for line in lines if ": error: " in line]
    assert code == 130 and "Traceback" not in err and errors == lines[-1:], (code, err)
    assert lines[-1].startswith("unicornn: error: interrupted"), (code, err)


def _entry_with_command(body: str, then: str = "entry.run()") -> subprocess.CompletedProcess:
    """Run ``then`` (default: the console entry point) in a fresh process with ``unicornn.cli.main`` replaced
    by ``command``, whose body is ``body`` (both may use os, signal, time and entry)."""
    code = "\n".join(
        [
            "import os, signal, time",
            "import unicornn.cli",
            "from unicornn import entry",
            "def command(argv=None):",
            *("    " + line for line in body.strip().splitlines()),
            "unicornn.cli.main = command",
            *then.strip().splitlines(),
        ]
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )


def test_a_ctrl_c_that_library_code_swallows_still_ends_the_command():
    """Code that catches the KeyboardInterrupt of a Ctrl-C and goes on (C code clearing any error, an ``except
    BaseException``) does not leave the command running with Ctrl-C disabled: it is raised again."""
    proc = _entry_with_command(
        """
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)
except KeyboardInterrupt:
    print("swallowed", flush=True)
time.sleep(60)
return 0
"""
    )
    assert proc.returncode == 130 and "swallowed" in proc.stdout, proc
    assert proc.stderr.strip().splitlines() == ["unicornn: error: interrupted"], proc.stderr


def test_an_error_raised_because_of_a_ctrl_c_ends_the_command_as_the_ctrl_c():
    """Python 3.11 wraps a KeyboardInterrupt raised in ``__set_name__`` (a dataclass created during an
    import) in a RuntimeError: still one line and 130, no traceback."""
    proc = _entry_with_command('raise RuntimeError("Error calling __set_name__") from KeyboardInterrupt()')
    assert proc.returncode == 130, proc
    assert proc.stderr.strip().splitlines() == ["unicornn: error: interrupted"], proc.stderr
    proc = _entry_with_command('raise RuntimeError("a bug")')
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "a bug" in proc.stderr, proc


def test_a_swallowed_ctrl_c_is_not_raised_after_the_command_returned():
    """A command that swallowed a Ctrl-C and returned before the grace period ended: nothing is raised in
    the process afterwards (``entry.main`` used as a library call)."""
    proc = _entry_with_command(
        """
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)
except KeyboardInterrupt:
    pass
return 0
""",
        then="""
assert entry.main([]) == 0
time.sleep(entry.INTERRUPT_GRACE_S + 3 * entry.REPEAT_INTERRUPT_S)
print("no late interrupt", flush=True)
""",
    )
    assert proc.returncode == 0 and "no late interrupt" in proc.stdout, proc


def test_a_command_that_stops_on_ctrl_c_is_not_interrupted_again():
    """After ``entry.stopping()`` (the command caught the Ctrl-C and cleans up), the Ctrl-C is not raised
    again and further ones are ignored."""
    proc = _entry_with_command(
        """
try:
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(60)
except KeyboardInterrupt:
    entry.stopping()
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(entry.INTERRUPT_GRACE_S + 2 * entry.REPEAT_INTERRUPT_S + 0.5)
    print("cleaned up", flush=True)
    return 130
return 0
"""
    )
    assert proc.returncode == 130 and "cleaned up" in proc.stdout and proc.stderr == "", proc


def test_interrupts_deferred_holds_a_ctrl_c_until_the_block_ends():
    proc = _entry_with_command(
        """
with entry.interrupts_deferred():
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.3)
    print("block finished", flush=True)
time.sleep(60)
return 0
"""
    )
    assert proc.returncode == 130 and "block finished" in proc.stdout, proc
    assert proc.stderr.strip().splitlines() == ["unicornn: error: interrupted"], proc.stderr


@pytest.mark.slow  # fresh processes
@pytest.mark.parametrize("delay", [0.6, 4.0])
def test_a_quick_double_ctrl_c_never_prints_a_traceback(tmp_path, delay):
    code, err = _interrupted(tmp_path, [delay, 0.01])
    assert (
        code == 130
        and "Traceback" not in err
        and err.strip().splitlines()[-1].startswith("unicornn: error: interrupted")
    ), err


# --------------------------------------------------------------------------------------------------
# every run file bound to its run
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two finished one-epoch runs of the same task and settings, different seeds: ``(out_a, out_b)``."""
    from unicornn.cli import main

    outs = []
    for seed in (0, 1):
        out = tmp_path_factory.mktemp(f"run{seed}")
        assert main(tiny_train_argv(out, "--quiet", "--set", "epochs=1", "--set", f"seed={seed}")) == 0
        outs.append(out)
    return outs


def _run_of(two_runs, k, tmp_path):
    out = tmp_path / f"out{k}"
    shutil.copytree(two_runs[k], out)
    return out, next((out / "adding").iterdir())


def test_every_run_file_holds_the_same_run_id(two_runs):
    from unicornn.training.checkpoint import load_checkpoint

    run = next((two_runs[0] / "adding").iterdir())
    ids = {
        json.loads((run / "config.json").read_text())["run_id"],
        json.loads((run / "result.json").read_text())["run_id"],
        load_checkpoint(run / "checkpoint.pt")["record"]["run_id"],
        load_checkpoint(run / "best.pt")["record"]["run_id"],
    }
    assert len(ids) == 1 and len(ids.pop()) >= 16
    other = next((two_runs[1] / "adding").iterdir())
    assert json.loads((other / "config.json").read_text())["run_id"] not in ids


@pytest.mark.parametrize("name", ["best.pt", "result.json"])
def test_a_file_copied_from_another_run_is_refused_on_resume(cli, two_runs, tmp_path, name):
    out, run = _run_of(two_runs, 0, tmp_path)
    _, other = _run_of(two_runs, 1, tmp_path)
    shutil.copy(other / name, run / name)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}
    code, stdout, err = cli(*tiny_train_argv(out, "--quiet", "--resume", "--set", "epochs=2"))
    one_line_error(code, err, str(run / name), "another run")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"} == before


@pytest.mark.parametrize("target", ["dir", "file"])
def test_eval_refuses_a_best_pt_of_another_run(cli, two_runs, tmp_path, target):
    out, run = _run_of(two_runs, 0, tmp_path)
    _, other = _run_of(two_runs, 1, tmp_path)
    shutil.copy(other / "best.pt", run / "best.pt")
    code, stdout, err = cli("eval", run if target == "dir" else run / "best.pt")
    one_line_error(code, err, str(run / "best.pt"), "another run")


def test_runs_without_a_run_id_are_legacy_and_still_resume_and_evaluate(cli, two_runs, tmp_path):
    """Run directories written before run ids existed hold none: they are read as before."""
    from unicornn.training.checkpoint import atomic_save, load_checkpoint

    out, run = _run_of(two_runs, 0, tmp_path)
    for name in ("config.json", "result.json"):
        doc = json.loads((run / name).read_text())
        doc.pop("run_id")
        (run / name).write_text(json.dumps(doc))
    for name in ("checkpoint.pt", "best.pt"):
        ck = load_checkpoint(run / name)
        ck["record"].pop("run_id")
        atomic_save(ck, run / name)
    code, stdout, err = cli("eval", run)
    assert code == 0, err
    code, stdout, err = cli(*tiny_train_argv(out, "--quiet", "--resume", "--set", "epochs=2"))
    assert code == 0, err
    assert "run_id" not in json.loads((run / "config.json").read_text())


@pytest.mark.slow  # a fresh process
def test_import_unicornn_is_light_and_its_names_load_on_first_use():
    """``import unicornn`` does not import PyTorch (the command line takes Ctrl-C before that); the public
    names and the submodules are there on first use."""
    code = (
        "import sys, unicornn; assert 'torch' not in sys.modules; "
        "assert unicornn.UnICORNN.__name__ == 'UnICORNN' and unicornn.ops.BACKENDS == unicornn.BACKENDS; "
        "assert set(unicornn.__all__) <= set(dir(unicornn))"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("joined", [True, False])
def test_a_process_that_joined_a_process_group_ends_without_finalisation(joined):
    """torchrun workers: a DDP model keeps the gloo group (and its worker threads) alive past
    ``destroy_process_group``; a worker thread releasing a tensor during finalisation aborts the process. So
    such a process runs the atexit functions, then ends with its exit code and no finalisation."""
    proc = _entry_with_command(
        f"""
import atexit
import unicornn.training.distributed as distributed
distributed._joined = {joined}
atexit.register(lambda: print("atexit ran", flush=True))
print("done", end=" ")  # left in the buffer: it must be flushed
return 3
""",
        then="""
class Finalised:
    def __del__(self):
        print("finalised", flush=True)
kept = Finalised()
entry.run()
""",
    )
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.startswith("done atexit ran"), proc.stdout
    assert ("finalised" in proc.stdout) is not joined, proc.stdout
