"""Benchmarks on tiny sizes: every row measured or skipped with a reason, numbers finite, files written.

No timing is asserted (shared machines are noisy); only what the benchmarks produce.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
from pathlib import Path

import pytest
import torch

from unicornn.bench import run_memory, run_speed
from unicornn.bench.memory import default_env, format_table, measure_point, summarize, write_memory
from unicornn.bench.speed import SPEED_MODELS, build_timed_model, write_speed
from unicornn.bench.speed import format_table as format_speed_table


def _png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_speed_tiny(tmp_path):
    models = ("unicornn", "unicornn_final", "unicornn_reference", "lstm", "lstm:1", "gru", "cornn", "indrnn",
              "torchrecurrent")  # fmt: skip
    lines = []
    result = run_speed(lengths=[6, 10], models=models, batch=2, hidden=4, layers=2, repeats=2, slow_repeats=1,
                       warmup=1, threads=1, log=lines.append)  # fmt: skip
    # progress: one line per round and length (3 rounds: 1 warm-up, 2 timed)
    assert [line.split(" took ")[0] for line in lines if " took " in line] == [
        f"N={n}: round {r}/3 ({'warm-up' if r == 1 else 'timed'})" for n in (6, 10) for r in (1, 2, 3)
    ]
    assert result["settings"]["unicornn_backend"] in ("cpu", "reference")
    assert len(result["rows"]) == 2 * len(models)
    assert len(result["load_average_1min_during"]) == 2 * 2  # after every timed round, at each length
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
        # paired: the median over rounds of the time over unicornn's time in the same round
        base = next(r for r in result["rows"] if r["N"] == row["N"] and r["model"] == "unicornn")["runs_s"]
        paired = [t / b for t, b in zip(row["runs_s"], base, strict=False)]
        assert row["ratio_to_unicornn"] == pytest.approx(statistics.median(paired))
    assert result["load_average_before"] is None or len(result["load_average_before"]) == 3
    table = format_speed_table(result)
    for row in result["rows"]:  # a skipped model says why, under the table
        if "skipped" in row:
            assert f"{row['model']} skipped: {row['skipped']}" in table.splitlines()
    if result["load_average_before"] is not None:  # 2 decimals each
        assert re.search(r"load average \(1, 5, 15 min\) \d+\.\d\d, \d+\.\d\d, \d+\.\d\d -> ", table), table
    paths = write_speed(result, tmp_path)
    assert json.loads(paths["json"].read_text())["rows"] == result["rows"]
    table = paths["table"].read_text()
    for name in models:
        assert f"| {name} |" in table
    _png(paths["png"])


def test_speed_models_match_in_size():
    dev = torch.device("cpu")
    lstm2, lstm1 = build_timed_model("lstm", 1, 8, 2, dev), build_timed_model("lstm:1", 1, 8, 2, dev)
    assert lstm2.rnn.num_layers == 2 and lstm1.rnn.num_layers == 1
    for name in SPEED_MODELS:
        model = build_timed_model(name, 3, 8, 2, dev)
        if isinstance(model, str):
            continue
        assert model(torch.randn(5, 2, 3)).shape == (2, 10)
    # the head on the final state reads what the head on output[-1] reads
    torch.manual_seed(3)
    final = build_timed_model("unicornn_final", 3, 8, 2, dev)
    torch.manual_seed(3)
    output = build_timed_model("unicornn", 3, 8, 2, dev)
    u = torch.randn(7, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(final.double()(u), output.double()(u))


def test_speed_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        run_speed(lengths=[4], models=["rnn"])
    with pytest.raises(ValueError, match="layer count"):
        run_speed(lengths=[4], models=["lstm:x"])
    with pytest.raises(ValueError, match="lengths"):
        run_speed(lengths=[0])
    with pytest.raises(ValueError, match="repeats"):
        run_speed(lengths=[4], repeats=0)
    with pytest.raises(ValueError, match="model must be one of"):
        run_speed(lengths=[4], ratio_to="fast")
    with pytest.raises(ValueError, match="slow must hold names"):
        run_speed(lengths=[4], slow=("lstm:1",))


@pytest.mark.parametrize("model", ["unicornn_lean", "unicornn_lean_seq", "lstm"])
def test_memory_point_in_process(model):
    row = measure_point(model, 300, batch=2, hidden=8, layers=2, input_size=3, checkpoint_every=64, repeats=3,
                        threads=1)  # fmt: skip
    assert row["N"] == 300 and row["peak_bytes"] >= 0 and row["input_bytes"] == 300 * 2 * 3 * 4
    assert row["output_bytes"] == 300 * 2 * 8 * 4
    assert len(row["runs_s"]) == 3 and all(t > 0 for t in row["runs_s"])
    assert row["step_s"] == statistics.median(row["runs_s"][1:])  # the first full step pays page faults
    with pytest.raises(ValueError, match="model must be one of"):
        measure_point("gru", 10)


def test_memory_default_env_drops_allocator_settings(monkeypatch):
    import unicornn

    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
    monkeypatch.setenv("UNICORNN_TEST_KEEP", "1")
    env = default_env()
    assert "MALLOC_ARENA_MAX" not in env and "GLIBC_TUNABLES" not in env and env["UNICORNN_TEST_KEEP"] == "1"
    src = env["PYTHONPATH"].split(os.pathsep)[0]
    assert Path(src, "unicornn").resolve() == Path(unicornn.__file__).resolve().parent
    assert default_env({"MALLOC_MMAP_THRESHOLD_": "65536"})["MALLOC_MMAP_THRESHOLD_"] == "65536"
    # nor thread counts or the CPU backend's own switches: a default process
    for name in ("UNICORNN_KEEP_FREED_BLOCKS", "UNICORNN_CPU_OPENMP", "OMP_NUM_THREADS"):
        monkeypatch.setenv(name, "0" if name.startswith("UNICORNN") else "1")
    assert not {"UNICORNN_KEEP_FREED_BLOCKS", "UNICORNN_CPU_OPENMP", "OMP_NUM_THREADS"} & set(default_env())


def test_memory_summary_ratios_and_growth():
    def row(model, N, mib, s, **extra):
        return {"model": model, "N": N, "peak_bytes": int(mib * 2**20), "peak_MiB": mib, "step_s": s, **extra}

    variant = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    result = {
        "settings": {"lengths": [100, 800], "models": ["unicornn_standard", "unicornn_lean"], "batch": 2,
                     "hidden": 4, "layers": 1, "input_size": 1, "device": "cpu", "measure": "m",
                     "allocator_variant": variant},
        "rows": [row("unicornn_standard", 100, 8.0, 1.0), row("unicornn_lean", 100, 2.0, 3.0),
                 row("unicornn_lean", 100, 2.5, 3.5, variant=variant), row("unicornn_standard", 800, 64.0, 4.0),
                 {"model": "unicornn_lean", "N": 800, "error": "boom"}],
    }  # fmt: skip
    result.update(summarize(result))
    first, second = result["summary"]
    assert first["memory_ratio"] == 0.25 and first["time_ratio"] == 3.0 and first["lean_variant_MiB"] == 2.5
    assert first["output_MiB"] == 100 * 2 * 4 * 4 / 2**20 and first["lstm_MiB"] is None
    assert second["standard_MiB"] == 64.0 and second["lean_MiB"] is None and second["memory_ratio"] is None
    assert result["lean_growth"] is None  # one lean point only
    table = format_table(result)
    assert "| 100 | 8.0 (1.00) | 2.0 (3.00) | 2.5 (3.50) | 0.250 | 3.000 |" in table
    assert "| 800 | 64.0 (4.00) | error | - | - | - |" in table  # an error row, a missing row
    result["rows"][-1] = row("unicornn_lean", 800, 3.0, 9.0)
    result.update(summarize(result))
    assert result["lean_growth"] == {"from_N": 100, "to_N": 800, "relative": pytest.approx(0.5)}
    result["settings"]["checkpoint_every"] = 200  # N=100 is shorter than one chunk: no growth to compare
    result.update(summarize(result))
    assert result["lean_growth"] is None


def test_memory_rejects_bad_arguments():
    with pytest.raises(ValueError, match="model must be one of"):
        run_memory(lengths=[4], models=["gru"])
    with pytest.raises(ValueError, match="lengths"):
        run_memory(lengths=[0])
    with pytest.raises(ValueError, match="repeats"):
        run_memory(lengths=[4], repeats=0)
    with pytest.raises(ValueError, match="allocator_variant applies to CPU"):
        run_memory(lengths=[4], device="cuda", allocator_variant={"MALLOC_MMAP_THRESHOLD_": "65536"})


@pytest.mark.slow  # three fresh interpreters importing torch: ~15 s of CPU
def test_memory_fresh_processes(tmp_path, monkeypatch):
    """Each point in its own default interpreter (allocator settings of the caller dropped), the variant row
    in one with the variant's settings; at this size the standard mode keeps every layer's sequences
    (megabytes) while the lean mode keeps anchors only."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    models = ("unicornn_standard", "unicornn_lean")  # the other models' points are measured in-process above
    variant = {"MALLOC_MMAP_THRESHOLD_": "65536"}
    result = run_memory(lengths=[6000], models=models, batch=8, hidden=32, layers=2, input_size=2,
                        checkpoint_every=256, threads=1, allocator_variant=variant)  # fmt: skip
    assert len(result["rows"]) == 3
    rows = {r["model"] + ("+variant" if "variant" in r else ""): r for r in result["rows"]}
    assert set(rows) == {*models, "unicornn_lean+variant"}
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["peak_bytes"] >= 0 and math.isfinite(row["peak_MiB"]) and math.isfinite(row["step_s"])
    assert rows["unicornn_standard"]["allocator_env"] == {} == rows["unicornn_lean"]["allocator_env"]
    assert (
        rows["unicornn_lean+variant"]["allocator_env"] == variant == rows["unicornn_lean+variant"]["variant"]
    )
    if rows["unicornn_standard"]["peak_reset"]:
        assert rows["unicornn_lean"]["peak_bytes"] < rows["unicornn_standard"]["peak_bytes"]
    summary = result["summary"][0]
    assert (
        summary["memory_ratio"]
        == rows["unicornn_lean"]["peak_bytes"] / rows["unicornn_standard"]["peak_bytes"]
    )
    paths = write_memory(result, tmp_path)
    assert json.loads(paths["json"].read_text())["settings"]["lengths"] == [6000]
    assert (
        "| 6000 |" in paths["table"].read_text()
        and "MALLOC_MMAP_THRESHOLD_=65536" in paths["table"].read_text()
    )
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
    # head on output[-1]: matmuls timed, plus 6 passes over N*B*M float32 per layer at the copy bandwidth
    assert floor["memory_passes"] == 6 * 2 and floor["tensor_bytes"] == 5 * 2 * 4 * 4
    assert floor["bytes"] == 6 * 2 * 5 * 2 * 4 * 4
    assert floor["memory_s"] == pytest.approx(floor["bytes"] / floor["copy_bandwidth_bytes_per_s"])
    assert floor["copy_bandwidth_bytes_per_s"] == pytest.approx(floor["bandwidth_GBps"] * 1e9)
    assert floor["median_s"] == floor["floor_s"] == pytest.approx(floor["matmul_s"] + floor["memory_s"])
    assert floor["floor_s"] == floor["floor_output_readout_s"] > floor["floor_final_state_s"]
    # paired like the models: the median over rounds of that round's floor over that round's step
    paired = [f / t for f, t in zip(floor["runs_s"], rows["unicornn"]["runs_s"], strict=True)]
    assert floor["ratio_to_unicornn"] == pytest.approx(statistics.median(paired))
    assert len(floor["runs_s"]) == 2 and all(f > 0 for f in floor["runs_s"])
    assert "floor" in result["settings"]["models"]


def test_speed_final_state_ratio_slow_and_floor():
    """Ratios against the final-state model, LSTMs timed in the slow rounds only, its floor one pass less."""
    result = run_speed(lengths=[7], models=("unicornn_final", "unicornn", "lstm:1"), batch=3, hidden=5, layers=3,
                       repeats=3, slow_repeats=1, warmup=0, threads=1, floor=True, slow=("lstm",),
                       ratio_to="unicornn_final")  # fmt: skip
    rows = {r["model"]: r for r in result["rows"]}
    assert len(rows["lstm:1"]["runs_s"]) == 1 and len(rows["unicornn"]["runs_s"]) == 3
    assert rows["unicornn_final"]["ratio_to_unicornn"] == 1.0
    assert rows["lstm:1"]["ratio_to_unicornn"] == pytest.approx(
        rows["lstm:1"]["runs_s"][0] / rows["unicornn_final"]["runs_s"][0]
    )
    floor = rows["floor"]
    # the top layer's grad_y is never read: 6 L - 1 passes
    assert floor["memory_passes"] == 6 * 3 - 1 and floor["bytes"] == 17 * 7 * 3 * 5 * 4
    assert floor["median_s"] == floor["floor_s"] == floor["floor_final_state_s"]
    assert floor["floor_output_readout_s"] == pytest.approx(
        floor["floor_s"] + floor["tensor_bytes"] / floor["copy_bandwidth_bytes_per_s"]
    )
    assert result["settings"]["ratio_to"] == "unicornn_final" and result["settings"]["slow"] == ["lstm"]


def test_profile_step_parts_add_up():
    from unicornn.bench.speed import profile_step

    r = profile_step("unicornn_final", N=9, batch=3, hidden=5, layers=2, steps=2, threads=1)
    parts = ("scan_forward_s", "scan_backward_s", "matmul_s", "fill_s", "other_s")
    assert sum(r[k] for k in parts) == pytest.approx(r["step_s"])
    assert r["scan_forward_s"] > 0 and r["scan_backward_s"] > 0 and r["matmul_s"] > 0
    assert len(r["scan_forward_calls_s"]) == 2 and len(r["scan_backward_calls_s"]) == 2
    assert r["backward_to_forward"] == pytest.approx(r["scan_backward_s"] / r["scan_forward_s"])
    with pytest.raises(ValueError, match="model must be one of"):
        profile_step("nope")


def test_thread_scaling_pairs_rounds():
    from unicornn.bench.speed import thread_scaling

    before = torch.get_num_threads()
    r = thread_scaling("unicornn_final", N=9, batch=3, hidden=5, layers=2, threads=(1, 2), repeats=3)
    assert torch.get_num_threads() == before
    assert len(r["runs_s"][1]) == len(r["runs_s"][2]) == 3 and r["speedup"][1] == 1.0
    paired = [a / b for a, b in zip(r["runs_s"][1], r["runs_s"][2], strict=True)]
    assert r["speedup"][2] == pytest.approx(statistics.median(paired))
