"""The memory estimate of a run (model, one batch's activations, data set) against measured allocations, and the
refusal of runs that cannot fit, before their run directory exists."""

import math
import time
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_train_argv

from unicornn.ops import backend_available
from unicornn.task_models import build_model, count_parameters
from unicornn.tasks import TASKS
from unicornn.training.memory import (
    MemoryLimitError,
    _activation_bytes,
    available_memory,
    check_memory,
    count_parameters_without_allocating,
    estimate_memory,
    format_bytes,
    input_projected_in_kernels,
)
from unicornn.training.settings import validate_config

#: The estimate holds within this factor of the measured allocations (tests below; more is safe).
FACTOR = 3.0


@pytest.mark.parametrize("model", ["unicornn", "lstm", "gru", "cornn", "indrnn"])
@pytest.mark.parametrize("layers", [1, 2, 5, 7])
def test_parameter_count_on_meta_equals_the_built_model(model, layers):
    task = TASKS.get("adding")
    cfg = validate_config({"model": model, "hidden_size": 9, "num_layers": layers})
    assert count_parameters_without_allocating(task.spec, cfg) == count_parameters(
        build_model(task.spec, cfg)
    )


def test_parameter_count_of_a_per_layer_dt_and_an_overflowing_size():
    task = TASKS.get("adding")
    cfg = validate_config({"hidden_size": 5, "num_layers": 6, "dt": [0.1, 0.2, 0.3, 0.1, 0.2, 0.3]})
    assert count_parameters_without_allocating(task.spec, cfg) == count_parameters(
        build_model(task.spec, cfg)
    )
    huge = validate_config({"model": "lstm", "hidden_size": 10**9, "num_layers": 1})
    assert count_parameters_without_allocating(task.spec, huge) == math.inf  # torch's size overflows


def _saved_bytes(model, x) -> int:
    """Bytes autograd keeps for the backward pass of ``model(x)`` (distinct storages), plus the output."""
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    return sum(seen.values()) + out.numel() * out.element_size()


@pytest.mark.parametrize("model", ["unicornn", "lstm", "gru", "cornn", "indrnn"])
@pytest.mark.parametrize("steps, batch, hidden, layers", [(120, 8, 32, 3), (97, 5, 11, 1)])
def test_standard_activations_within_a_factor_of_what_autograd_keeps(model, steps, batch, hidden, layers):
    task = TASKS.get("adding")
    cfg = validate_config({"model": model, "hidden_size": hidden, "num_layers": layers, "batch_size": batch})
    torch.manual_seed(0)
    net = build_model(task.spec, cfg).train()
    measured = _saved_bytes(net, torch.randn(batch, steps, task.spec.input_size))
    projected = input_projected_in_kernels(cfg, task.spec, on_cpu=True)
    assert projected == (model == "unicornn" and backend_available("cpu"))  # the adding problem: 2 inputs
    estimate = _activation_bytes(cfg, task.spec, steps, batch, train=True, projected_input=projected)
    assert measured / FACTOR <= estimate <= measured * FACTOR, (estimate, measured)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["unicornn_standard", "unicornn_lean"])
def test_activations_within_a_factor_of_the_measured_peak(model):
    """Against ``bench memory``'s measurement: the peak resident memory of one training step in a fresh
    process (N=8000, B=16, H=64, 3 layers, 6 inputs, lean chunk 2048)."""
    from unicornn.bench.memory import measure_in_fresh_process

    point = dict(model=model, N=8000, batch=16, hidden=64, layers=3, input_size=6, checkpoint_every=2048)
    row = measure_in_fresh_process(point, timeout=300)
    assert "error" not in row, row
    spec = SimpleNamespace(input_size=6, output_size=10, readout="last")
    memory = "lean" if model == "unicornn_lean" else "standard"
    cfg = validate_config({"hidden_size": 64, "num_layers": 3, "memory": memory})
    estimate = _activation_bytes(cfg, spec, 8000, 16, train=True)
    assert row["peak_bytes"] / FACTOR <= estimate <= row["peak_bytes"] * FACTOR, (estimate, row)


def test_lean_activations_grow_with_the_chunk_not_the_length():
    spec = TASKS.get("adding").spec
    lean = validate_config({"memory": "lean", "hidden_size": 64, "num_layers": 3})
    standard = validate_config({"memory": "standard", "hidden_size": 64, "num_layers": 3})
    a, b = (_activation_bytes(lean, spec, n, 16, train=True) for n in (100_000, 200_000))
    s = _activation_bytes(standard, spec, 100_000, 16, train=True)
    assert a < s / 4
    grown = _activation_bytes(standard, spec, 200_000, 16, train=True) - s
    assert b - a < grown / 10  # inputs and anchors only, not 2 L + 3 arrays per step


def test_generated_data_within_a_factor_of_the_measured_allocation():
    task = TASKS.get("lorenz96")
    opts = task.spec.resolve_options({"n_train": 32, "n_valid": 16, "n_test": 16, "length": 400})
    tracemalloc.start()
    try:
        task.build(opts, None, 0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    data = estimate_memory(task, validate_config({}), opts).data
    assert peak / FACTOR <= data <= peak * FACTOR, (data, peak)
    adding = TASKS.get("adding")  # sequences generated item by item: nothing held
    assert estimate_memory(adding, validate_config({}), adding.spec.resolve_options({"T": 10**9})).data == 0


def test_available_memory_is_read():
    got = available_memory("cpu")
    assert got["host"] > 0
    assert "device" not in got


def test_check_memory_compares_with_the_limit():
    task = TASKS.get("adding")
    cfg = validate_config({"hidden_size": 16, "num_layers": 1})
    opts = task.spec.resolve_options({"T": 50, "n_train": 64})
    est = check_memory(task, cfg, opts, "cpu", available={"host": 1e12})
    assert est.host > 0 and est.parameters == count_parameters(build_model(task.spec, cfg))
    with pytest.raises(MemoryLimitError, match=r"needs about .* but the machine has 1 KiB available"):
        check_memory(task, cfg, opts, "cpu", available={"host": 1024})
    check_memory(task, cfg, opts, "cpu", available={})  # no figure: no refusal
    assert format_bytes(math.inf) == "more than any machine has" and format_bytes(1536) == "1.5 KiB"


@pytest.mark.parametrize("setting", ["hidden_size=1000000000", "T=1000000000", "hidden_size=1000000",
                                     "num_layers=1000000"])  # fmt: skip
def test_train_refuses_a_run_beyond_the_machine_before_creating_its_directory(
    cli, tmp_path, setting, monkeypatch
):
    """T=1e9 and hidden_size=1e6 need terabytes (refused on any machine); hidden_size=1e9 (about 120 GiB) and
    num_layers=1e6 (about 25 GiB) of this tiny run are refused against a machine with 16 GiB available."""
    from unicornn.training import memory

    if setting in ("hidden_size=1000000000", "num_layers=1000000"):
        monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host": 16.0 * 1024**3})
    out = tmp_path / "runs"
    start = time.perf_counter()
    code, stdout, err = cli(*tiny_train_argv(out, "--set", setting))
    assert time.perf_counter() - start < 30  # num_layers=1e6 must not sit silent for a minute
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "this run needs about" in err and "available" in err and "--no-memory-check" in err
    assert not out.exists()  # no directory holding only .lock


def test_no_memory_check_skips_the_refusal(cli, tmp_path, monkeypatch):
    from unicornn.training import memory

    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host": 1024.0})
    code, _, err = cli(*tiny_train_argv(tmp_path / "a"))
    assert code == 2 and "this run needs about" in err and not (tmp_path / "a").exists()
    code, _, err = cli(*tiny_train_argv(tmp_path / "b", "--no-memory-check"))
    assert code == 0, err
    assert (tmp_path / "b" / "adding" / "seed-0" / "result.json").exists()


def test_resume_checks_the_runs_own_settings(cli, tmp_path, monkeypatch):
    from unicornn.training import memory

    assert cli(*tiny_train_argv(tmp_path, "--set", "epochs=1"))[0] == 0
    monkeypatch.setattr(memory, "available_memory", lambda device="cpu": {"host": 1024.0})
    code, _, err = cli(*tiny_train_argv(tmp_path, "--resume", "--set", "epochs=2"))
    assert code == 2 and "this run needs about" in err
    assert (tmp_path / "adding" / "seed-0" / "checkpoint.pt").exists()  # the run is left as it was


def test_every_task_and_preset_has_an_estimate_that_fits_a_workstation():
    """Each registered task with each of its presets: a finite estimate, the data set counted for the tasks that
    hold theirs, and well under 64 GiB (the paper's experiments run on one GPU)."""
    from unicornn.training.memory import TASK_DATA
    from unicornn.training.presets import presets_for

    for name in TASKS.names():
        task = TASKS.get(name)
        assert name in TASK_DATA, f"task {name!r}: add its sequence length and data set to TASK_DATA"
        for p in presets_for(name):
            est = estimate_memory(
                task, validate_config(p.config()), task.spec.resolve_options(p.task_options)
            )
            assert 0 < est.host < 64 * 1024**3, (name, p.name, est)
            assert (est.data > 0) == (name != "adding"), (name, est)


def test_on_cuda_the_model_and_activations_are_compared_with_the_devices_free_memory(monkeypatch):
    task = TASKS.get("lorenz96")
    cfg = validate_config({"hidden_size": 16, "num_layers": 1})
    opts = task.spec.resolve_options({"n_train": 8, "n_valid": 4, "n_test": 4, "length": 50})
    est = estimate_memory(task, cfg, opts, on_cpu=False)
    assert est.host == est.data and est.device == est.model + est.activations
    with pytest.raises(MemoryLimitError, match=r"on cuda:0 .* but cuda:0 has 1 KiB free"):
        check_memory(task, cfg, opts, "cuda:0", available={"host": 1e12, "device": 1024})
    with pytest.raises(
        MemoryLimitError, match="the machine has 1 KiB available"
    ):  # the data stay on the host
        check_memory(task, cfg, opts, "cuda:0", available={"host": 1024, "device": 1e12})
    check_memory(task, cfg, opts, "cuda:0", available={"host": 1e12, "device": 1e12})
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (123.0, 456.0))
    assert available_memory("cuda:0")["device"] == 123.0
