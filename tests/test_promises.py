"""Promises of the README and docs/training.md that no other test held to: an existing run is never
overwritten, Ctrl-C stops with exit 130 and every file of the last finished epoch whole, and the exit-code
table of the documentation is the command line's."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import assert_cli_contract, run_files, tiny_train_argv

import unicornn.cli as cli_module
from unicornn.training import trainer

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"


def test_an_existing_run_is_never_overwritten(cli, tmp_path):
    assert cli(*tiny_train_argv(tmp_path, "--set", "epochs=1"))[0] == 0
    run = tmp_path / "adding" / "seed-0"
    before = run_files(run)
    code, _, err = cli(*tiny_train_argv(tmp_path, "--set", "epochs=1", "--set", "lr=0.02"))
    assert_cli_contract(code, err, tmp_path)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert run_files(run) == before


def test_ctrl_c_exits_130_with_the_last_epoch_whole_and_resume_finishes(cli, tmp_path, monkeypatch):
    original, calls = trainer._epoch, []

    def interrupted_in_the_second_epoch(t, spec, cfg, ctx, epoch, *args):
        calls.append(epoch)
        if epoch == 1:
            raise KeyboardInterrupt
        return original(t, spec, cfg, ctx, epoch, *args)

    monkeypatch.setattr(trainer, "_epoch", interrupted_in_the_second_epoch)
    code, _, err = cli(*tiny_train_argv(tmp_path, "--set", "epochs=2"))
    assert_cli_contract(code, err, tmp_path, codes=(130,))
    assert "interrupted" in err and "--resume" in err
    run = tmp_path / "adding" / "seed-0"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and not (run / "result.json").exists()
    monkeypatch.setattr(trainer, "_epoch", original)
    code, _, err = cli(*tiny_train_argv(tmp_path, "--set", "epochs=2", "--resume"))
    assert code == 0, err
    assert json.loads((run / "result.json").read_text())["epochs_done"] == 2


def test_the_documented_exit_codes_are_the_command_lines():
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    documented = {int(c) for c in re.findall(r"^\| (\d+) \|", section, flags=re.M)}
    defined = {v for k, v in vars(cli_module).items() if k.startswith("EXIT_") and isinstance(v, int)}
    assert documented == defined | {0}
