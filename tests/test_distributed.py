"""DDP under torchrun: 2 CPU processes (gloo) give the result of 1 process with the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unicornn.training.checkpoint import load_checkpoint, read_jsonl

SRC = str(Path(__file__).resolve().parents[1] / "src")
SETS = [
    "T=12",
    "n_train=64",
    "n_valid=20",
    "n_test=21",
    "hidden_size=8",
    "num_layers=2",
    "epochs=2",
    "batch_size=16",
    "eval_batch_size=8",
    "dropout=0.0",
    "lr=1e-2",
    "backend=reference",
    "grad_clip=1.0",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out: Path, nproc: int) -> subprocess.CompletedProcess:
    args = ["train", "adding", "--quiet", "--no-tensorboard", "--device", "cpu", "--out", str(out)]
    for s in SETS:
        args += ["--set", s]
    if nproc == 1:
        cmd = [sys.executable, "-m", "unicornn", *args]
    else:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc_per_node={nproc}",
            "--nnodes=1",
            "--master_addr=127.0.0.1",
            f"--master_port={_free_port()}",
            "-m",
            "unicornn",
            *args,
        ]
    env = dict(
        os.environ,
        PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OMP_NUM_THREADS="1",
        UNICORNN_DATA=str(out / "data"),
    )
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow  # three fresh processes (one run, then two under torchrun)
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")
def test_two_gloo_processes_match_one_process(tmp_path):
    one = _train(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-3000:]
    two = _train(tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "x 2 processes" in two.stderr  # it really ran distributed

    a = load_checkpoint(tmp_path / "one" / "adding" / "seed-0" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "two" / "adding" / "seed-0" / "checkpoint.pt")
    assert b["record"]["world_size"] == 2 and len(b["rng"]) == 2
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)
    ra = read_jsonl(tmp_path / "one" / "adding" / "seed-0" / "metrics.jsonl")
    rb = read_jsonl(tmp_path / "two" / "adding" / "seed-0" / "metrics.jsonl")
    assert len(ra) == len(rb) == 2
    assert ra[0]["train_loss"] != ra[1]["train_loss"]  # it trained
    for x, y in zip(ra, rb):
        for key in ("train_loss", "valid_mse", "test_mse", "lr"):
            assert y[key] == pytest.approx(x[key], rel=1e-4), key
    # only rank 0 wrote files
    assert sorted(p.name for p in (tmp_path / "two" / "adding").iterdir()) == ["seed-0"]
    assert (
        json.loads((tmp_path / "two" / "adding" / "seed-0" / "result.json").read_text())["epochs_done"] == 2
    )
