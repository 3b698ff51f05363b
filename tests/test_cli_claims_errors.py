"""The claims commands (``diagnose``, ``plot``, ``bench``) handle bad arguments and file-system failures as
``train`` and ``eval`` do: one line on stderr, exit code 2, no traceback, no file left half-written."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_TRAIN_SETS

import unicornn._files

#: Tiny invocations of every claims command that writes files (``--out`` is added by the tests).
TINY_CLAIMS = {
    "diagnose states": ["diagnose", "states", "--steps", "5", "--batch", "1", "--hidden", "3", "--layers", "1"],
    "diagnose gradients": ["diagnose", "gradients", "--lengths", "4", "--hidden", "3", "--batch", "1",
                           "--models", "unicornn"],
    "bench speed": ["bench", "speed", "--lengths", "4", "--models", "unicornn", "--batch", "1", "--hidden", "2",
                    "--layers", "1", "--repeats", "1", "--slow-repeats", "1", "--warmup", "0"],
}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A tiny trained run (for ``plot timesteps``)."""
    from unicornn.cli import main

    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "adding", "--quiet", "--no-tensorboard", "--out", str(out)]
    for s in [*TINY_TRAIN_SETS, "epochs=1"]:
        argv += ["--set", s]
    assert main(argv) == 0
    return out / "adding" / "seed-0"


def _argv(name: str, run_dir: Path) -> list:
    return ["plot", "timesteps", run_dir] if name == "plot timesteps" else list(TINY_CLAIMS[name])


def _one_line_error(code, err, *expected):
    assert code == 2, err
    assert "Traceback" not in err
    lines = (
        err.strip().splitlines()
    )  # progress lines (timestamped) may come first; the error is one line, last
    errors = [line for line in lines if ": error: " in line]
    assert errors == lines[-1:], err
    for text in expected:
        assert text in lines[-1], err


def _no_partial_files(root: Path):
    assert not [p for p in root.rglob("*") if ".tmp" in p.name], list(root.rglob("*"))


@pytest.mark.parametrize("name", [*TINY_CLAIMS, "plot timesteps"])
def test_out_naming_a_file_is_one_line(cli, tmp_path, run_dir, name):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    code, _, err = cli(*_argv(name, run_dir), "--out", target)
    _one_line_error(code, err, "the output directory is a file", str(target))
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("name", [*TINY_CLAIMS, "plot timesteps"])
def test_a_write_refused_by_the_file_system_is_one_line(cli, tmp_path, run_dir, monkeypatch, name):
    def read_only(path, *args, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(unicornn._files, "open", read_only, raising=False)
    code, _, err = cli(*_argv(name, run_dir), "--out", tmp_path / "out")
    _one_line_error(code, err, "file system: Read-only file system")
    _no_partial_files(tmp_path)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["diagnose", "states", "--steps", "0"], "argument --steps: must be an int >= 1, got 0"),
        (["diagnose", "states", "--batch", "0"], "argument --batch: must be an int >= 1, got 0"),
        (["diagnose", "gradients", "--batch", "0"], "argument --batch: must be an int >= 1, got 0"),
        (
            ["diagnose", "gradients", "--lengths", "0"],
            "argument --lengths: expected comma-separated ints >= 1",
        ),
        (["plot", "timesteps", "RUN", "--bins", "0"], "argument --bins: must be an int >= 1, got 0"),
        (["bench", "speed", "--batch", "0"], "argument --batch: must be an int >= 1, got 0"),
        (["bench", "memory", "--repeats", "0"], "argument --repeats: must be an int >= 1, got 0"),
        (["bench", "speed", "--device", "tpu"], "argument --device: expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_sizes_are_one_line_usage_errors(cli, argv, message):
    code, _, err = cli(*argv)
    _one_line_error(code, err, message, f"see unicornn {argv[0]} {argv[1]} --help")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["bench", "speed"], ["bench", "memory"], ["train", "adding"],
                                     ["eval", "RUN"]])  # fmt: skip
def test_cuda_without_cuda_is_one_line(cli, tmp_path, command):
    code, _, err = cli(*command, "--device", "cuda", "--out", tmp_path) if command[0] != "eval" else cli(
        *command, "--device", "cuda:0")  # fmt: skip
    _one_line_error(code, err, "CUDA is not available on this machine")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_real_read_only_file_system_is_one_line(tmp_path):
    """In a subprocess, on a file system the kernel refuses writes to (sysfs), where there is one."""
    target = Path("/sys/unicornn-test-out")
    if os.access("/sys", os.W_OK) and not target.parent.exists():
        pytest.skip("no read-only file system to write to")
    env = dict(os.environ, PYTHONPATH=str(Path(unicornn._files.__file__).parents[1]))
    done = subprocess.run([sys.executable, "-m", "unicornn", *TINY_CLAIMS["diagnose states"], "--out", target],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    _one_line_error(done.returncode, done.stderr, "file system:")


def test_bench_device_auto_is_resolved(cli, tmp_path):
    code, _, err = cli(*TINY_CLAIMS["bench speed"], "--device", "auto", "--out", tmp_path)
    assert code == 0, err
    assert (tmp_path / "speed.json").exists()
