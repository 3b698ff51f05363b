"""Benchmarks on tiny sizes: every row measured or skipped with a reason, numbers finite, files written.

No timing is asserted (shared machines are noisy); only what the benchmarks produce.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from unicornn.bench import run_memory, run_speed
from unicornn.bench.memory import measure_point, write_memory
from unicornn.bench.speed import MODELS, build_model, write_speed


def _png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speed_tiny(tmp_path):
    models = ("unicornn", "unicornn_reference", "lstm", "lstm:1", "gru", "cornn", "indrnn", "torchrecurrent")
    result = run_speed(lengths=[6, 10], models=models, batch=2, hidden=4, layers=2, repeats=2, slow_repeats=1,
                       warmup=1, threads=1)  # fmt: skip
    assert result["settings"]["unicornn_backend"] in ("cpu", "reference")
    assert len(result["rows"]) == 2 * len(models)
    for row in result["rows"]:
        if "skipped" in row:
            assert row["model"] == "torchrecurrent" and "pip install" in row["skipped"]
            continue
        slow = row["model"] in ("unicornn_reference", "cornn", "torchrecurrent")
        assert len(row["runs_s"]) == (1 if slow else 2)
        assert all(math.isfinite(t) and t > 0 for t in row["runs_s"])
        assert math.isfinite(row["ratio_to_unicornn"]) and row["ratio_to_unicornn"] > 0
        if row["model"] == "unicornn":
            assert row["ratio_to_unicornn"] == 1.0
    assert result["load_average_before"] is None or len(result["load_average_before"]) == 3
    paths = write_speed(result, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"] == result["rows"]
    table = paths["table"].read_text()
    for name in models:
        assert f"| {name} |" in table
    _png(paths["png"])


def test_speed_models_match_in_size():
    dev = torch.device("cpu")
    lstm2, lstm1 = build_model("lstm", 1, 8, 2, dev), build_model("lstm:1", 1, 8, 2, dev)
    assert lstm2.rnn.num_layers == 2 and lstm1.rnn.num_layers == 1
    for name in MODELS:
        model = build_model(name, 3, 8, 2, dev)
        if isinstance(model, str):
            continue
        assert model(torch.randn(5, 2, 3)).shape == (2, 10)


def test_speed_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        run_speed(lengths=[4], models=["rnn"])
    with pytest.raises(ValueError, match="layer count"):
        run_speed(lengths=[4], models=["lstm:x"])
    with pytest.raises(ValueError, match="lengths"):
        run_speed(lengths=[0])
    with pytest.raises(ValueError, match="repeats"):
        run_speed(lengths=[4], repeats=0)


@pytest.mark.parametrize("model", ["unicornn_lean", "lstm"])
def test_memory_point_in_process(model):
    row = measure_point(model, 300, batch=2, hidden=8, layers=2, input_size=3, checkpoint_every=64, threads=1)
    assert row["N"] == 300 and row["peak_bytes"] >= 0 and row["input_bytes"] == 300 * 2 * 3 * 4
    assert math.isfinite(row["step_s"]) and row["step_s"] > 0
    with pytest.raises(ValueError, match="model must be one of"):
        measure_point("gru", 10)


@pytest.mark.slow  # two fresh interpreters importing torch: ~10 s of CPU
def test_memory_fresh_processes(tmp_path):
    """Each point in its own interpreter; at this size the standard mode keeps every layer's sequences
    (megabytes) while the lean mode keeps anchors only."""
    models = ("unicornn_standard", "unicornn_lean")  # the LSTM's point is measured in-process above
    result = run_memory(lengths=[6000], models=models, batch=8, hidden=32, layers=2, input_size=2,
                        checkpoint_every=256, threads=1)  # fmt: skip
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == set(models)
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["peak_bytes"] >= 0 and math.isfinite(row["peak_MiB"]) and math.isfinite(row["step_s"])
    if rows["unicornn_standard"]["peak_reset"]:
        assert rows["unicornn_lean"]["peak_bytes"] < rows["unicornn_standard"]["peak_bytes"]
    paths = write_memory(result, tmp_path)
    assert json.loads(paths["json"].read_text())["settings"]["lengths"] == [6000]
    assert "| 6000 |" in paths["table"].read_text()
    _png(paths["png"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_memory_cuda_tiny():
    result = run_memory(lengths=[512], device="cuda", batch=2, hidden=8, layers=2, input_size=2)
    for row in result["rows"]:
        assert "error" not in row and row["peak_bytes"] > 0


def test_speed_forward_only_and_floor(tmp_path):
    result = run_speed(lengths=[5], models=("unicornn", "lstm"), batch=2, hidden=4, layers=2, repeats=2,
                       warmup=0, threads=1, forward_only=True, floor=True)  # fmt: skip
    rows = {r["model"]: r for r in result["rows"]}
    for name in ("unicornn", "lstm"):
        assert math.isfinite(rows[name]["forward_median_s"]) and rows[name]["forward_median_s"] > 0
    floor = rows["floor"]
    # matmuls timed, plus 6 passes over N*B*M float32 per layer at the measured copy bandwidth
    assert floor["bytes"] == 6 * 2 * 5 * 2 * 4 * 4
    assert floor["memory_s"] == pytest.approx(floor["bytes"] / (floor["bandwidth_GBps"] * 1e9))
    assert floor["ratio_to_unicornn"] == pytest.approx(floor["median_s"] / rows["unicornn"]["median_s"])
    assert "floor" in result["settings"]["models"]
