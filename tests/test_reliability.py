"""Reliability: what an adversarial user tried and what the command line must answer (one line on stderr and
exit code 2 for a user error, never a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import tiny_train_argv

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
