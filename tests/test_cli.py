"""The ``unicornn`` command line: errors, help, tasks, and a tiny train -> report -> eval round trip."""

import json
from pathlib import Path

import pytest
from helpers import TINY_TRAIN_SETS

from unicornn.cli import main, parse_value
from unicornn.training.presets import TRAIN_DEFAULTS

# the shared tiny run with 2 epochs of 2 batches, no dropout and a subset for evaluation (the last --set wins)
TINY_SETS = [*TINY_TRAIN_SETS, "epochs=2", "batch_size=16", "dropout=0", "eval_subset=10"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "mnist"], "unknown task 'mnist'; valid tasks: adding"),
        (
            ["train", "adding", "--preset", "huge"],
            "unknown preset 'huge' for task 'adding'; valid presets: small",
        ),
        (
            ["train", "adding", "--set", "hidden=3"],
            "unknown --set key 'hidden'; valid keys: settings hidden_size",
        ),
        (["train", "adding", "--set", "lr"], "--set expects key=value"),
        (["train", "adding", "--set", "dt=2.0"], "dt must be in (0.0, 1.0], got 2.0"),
        (["train", "adding", "--set", "epochs=0"], "setting 'epochs' must be >= 1"),
        (["train", "adding", "--set", "T=1"], "option 'T' must be >= 2"),
        (["train", "adding", "--device", "gpu"], "--device: expected auto, cpu, cuda or cuda:N"),
        (["train", "adding", "--runs", "0"], "argument --runs: must be an int >= 1, got 0"),
        (["train", "adding", "--threads", "0"], "argument --threads: must be an int >= 1, got 0"),
        (["train", "adding", "--progress-every", "-1"], "argument --progress-every: must be a number >= 0"),
        (["report", "does/not/exist"], "does not exist"),
        (["eval", "does/not/exist.pt"], "does not exist"),
    ],
)
def test_errors_exit_2_without_traceback(cli, tmp_path, argv, message):
    if argv[0] == "train":
        argv = argv + ["--out", str(tmp_path)]
    code, out, err = cli(*argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in (
        "--preset",
        "--set",
        "--runs",
        "--device",
        "--data-dir",
        "--out",
        "--resume",
        "--quiet",
        "--progress-every",
        "--no-tensorboard",
    ):
        assert opt in text
    for key in TRAIN_DEFAULTS:
        assert key in text
    for cmd in ("eval", "tasks", "report"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "usage: unicornn " + cmd in capsys.readouterr().out


def test_tasks_lists_tasks_presets_and_sources(cli):
    code, out, _ = cli("tasks")
    assert code == 0
    for name in (
        "adding",
        "psmnist",
        "smnist",
        "lorenz96",
        "noisy-cifar10",
        "imdb",
        "eigenworms",
        "bidmc-rr",
    ):
        assert name in out
    assert "Table 6" in out and "paper-128" in out and "not implemented yet" not in out


def test_task_options_with_a_setting_name_need_the_task_prefix():
    from unicornn.cli import parse_sets

    settings, options = parse_sets(["dt=0.2", "task.dt=0.01", "T=50"], {"dt": 0.1}, {"dt": 0.01, "T": 1000})
    assert settings == {"dt": 0.2} and options == {"dt": 0.01, "T": 50}
    with pytest.raises(Exception, match="unknown task option 'x'"):
        parse_sets(["task.x=1"], {"dt": 0.1}, {"dt": 0.01})


def test_parse_value():
    assert parse_value("none") is None
    assert parse_value("3") == 3 and parse_value("3.5e-3") == 3.5e-3
    assert parse_value("0.0066,0.205") == [0.0066, 0.205]
    assert parse_value("true") is True and parse_value("bf16") == "bf16"


def test_train_report_eval_round_trip(cli, tmp_path):
    out_dir = tmp_path / "runs"
    argv = ["train", "adding", "--quiet", "--out", str(out_dir), "--runs", "2"]
    for s in TINY_SETS:
        argv += ["--set", s]
    code, out, err = cli(*argv)
    assert code == 0, err
    for seed in (0, 1):
        run_dir = out_dir / "adding" / f"seed-{seed}"
        for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "result.json"):
            assert (run_dir / name).exists(), name
        assert json.loads((run_dir / "config.json").read_text())["task_options"]["T"] == 10
    assert "epoch 2/2" in err and "seed 1: best validation mse" in out

    # the same command again refuses to overwrite, --resume skips the finished runs
    code, _, err = cli(*argv)
    assert code == 2 and "--resume" in err
    code, _, _ = cli(*argv, "--resume")
    assert code == 0

    code, out, _ = cli("report", str(out_dir))
    assert code == 0
    assert "| seed-0 | 0 | finished | 2/2 |" in out and "mean +- std" in out and "over 2 run(s)" in out
    report = json.loads((out_dir / "adding" / "report.json").read_text())
    tests = [r["test"] for r in report["runs"]]
    assert report["test_mean"] == pytest.approx(sum(tests) / 2)
    assert report["test_std"] == pytest.approx(abs(tests[0] - tests[1]) / 2**0.5)
    assert (out_dir / "adding" / "curves.png").read_bytes()[:4] == b"\x89PNG"

    result = json.loads((out_dir / "adding" / "seed-1" / "result.json").read_text())
    code, out, err = cli("eval", str(out_dir / "adding" / "seed-1"), "--json")
    assert code == 0
    metrics = json.loads(out)  # stdout is the JSON alone; the human lines went to stderr
    assert "valid: mse" in err
    assert metrics["test"]["mse"] == pytest.approx(result["best"]["test"], rel=1e-6)
    assert metrics["valid"]["mse"] == pytest.approx(result["best"]["valid"], rel=1e-6)


def test_unexpected_exceptions_are_bugs_and_keep_their_traceback(monkeypatch, tmp_path):
    import unicornn.training.seeds as seeds

    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(seeds, "train_run", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["train", "adding", "--quiet", "--out", str(tmp_path)])


def test_a_command_is_one_module_registered_by_name(monkeypatch, cli):
    """A new command is a module of unicornn.cli with ``add_parser`` (its handler beside it) and its name in
    COMMANDS; every module of the package stays short."""
    import sys
    import types

    import unicornn.cli as package

    hello = types.ModuleType("unicornn.cli.hello")
    hello.add_parser = lambda sub: sub.add_parser("hello").set_defaults(func=lambda args: print("hi") or 0)
    monkeypatch.setitem(sys.modules, "unicornn.cli.hello", hello)
    monkeypatch.setattr(package, "COMMANDS", (*package.COMMANDS, "hello"))
    assert cli("hello")[:2] == (0, "hi\n")
    assert cli("tasks")[0] == 0
    for path in Path(package.__file__).parent.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 300, path
