"""The streaming and exported-model benchmarks run at tiny sizes and format their tables."""

from __future__ import annotations

import json

import pytest

from unicornn.bench.deployment import format_onnx_table, run_onnx_speed, write_onnx_speed
from unicornn.bench.streaming import format_streaming_table, run_streaming, write_streaming


def test_streaming_benchmark_rows_and_table(tmp_path):
    result = run_streaming(hidden=8, layers=2, steps=5, chunk_sizes=(1, 4), stream_length=16, rounds=2)
    models = [r["model"] for r in result["latency"]]
    assert models[:3] == ["unicornn_step", "lstmcell", "grucell"]
    assert all(r["us_per_step"] > 0 for r in result["latency"])
    assert next(r for r in result["latency"] if r["model"] == "lstmcell")["ratio_to_lstmcell"] == 1.0
    assert {(r["model"].split("_")[0], r["chunk"]) for r in result["throughput"]} == {
        ("unicornn", 1), ("unicornn", 4), ("lstm", 1), ("lstm", 4)
    }  # fmt: skip
    table = format_streaming_table(result)
    assert "| unicornn_step |" in table and "chunk 4" in table
    paths = write_streaming(result, tmp_path)
    assert json.loads(paths["json"].read_text())["settings"]["hidden"] == 8


@pytest.mark.filterwarnings("ignore")
def test_onnx_speed_benchmark_runs_and_agrees(tmp_path):
    pytest.importorskip("onnxruntime")
    result = run_onnx_speed(N=20, batch=3, hidden=8, layers=2, rounds=2)
    assert [r["runtime"] for r in result["rows"]][1] == "onnxruntime"
    assert result["max_rel_diff"] < 1e-5
    assert "| onnxruntime |" in format_onnx_table(result)
    assert write_onnx_speed(result, tmp_path)["json"].exists()


@pytest.mark.filterwarnings("ignore")
def test_cli_bench_streaming_and_onnx(tmp_path, capsys):
    from unicornn.cli import main

    argv = ["bench", "streaming", "--hidden", "8", "--steps", "3", "--chunks", "1,2", "--stream-length", "8"]
    assert main([*argv, "--repeats", "1", "--out", str(tmp_path)]) == 0
    assert "| unicornn_step |" in capsys.readouterr().out and (tmp_path / "streaming.json").exists()
    pytest.importorskip("onnxruntime")
    argv = ["bench", "onnx", "--length", "12", "--batch", "2", "--hidden", "8", "--repeats", "1"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert "| onnxruntime |" in capsys.readouterr().out and (tmp_path / "onnx_speed.json").exists()
