"""The accuracy-table script: one real cell on bundled data (tiny cost), and the summary, targets and table on
hand-made cells (partial seeds included); the defaults-selection script's ranking."""

import importlib.util
import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cell_order_runs_the_slow_cells_last():
    bench = _load("accuracy_uea")
    order = [tuple(k.split("|")[:2]) for k in bench.cell_order()]
    assert len(order) == len(bench.CLASSIFICATION + bench.REGRESSION) * len(bench.MODELS) * len(bench.SEEDS)
    first_slow = min(i for i, k in enumerate(order) if k in bench.SLOW)
    assert all(k in bench.SLOW for k in order[first_slow:])


def test_summary_targets_and_table():
    bench = _load("accuracy_uea")
    cells = {}
    for name in bench.CLASSIFICATION + bench.REGRESSION:
        classification = name in bench.CLASSIFICATION
        for model, score in (("unicornn", 90.0), ("lstm", 80.0), ("gru", 85.0), ("rocket", 93.0)):
            if not classification:
                score = 100.0 - score  # RMSE: lower is better, UnICORNN again ahead of the RNNs
            for seed in bench.SEEDS if model != "gru" or name != "OSULeaf" else [0]:
                cells[f"{name}|{model}|{seed}"] = {"score": score + seed, "fit_s": 1.0}
    doc = {"cells": cells, "versions": {"aeon": "x", "sklearn": "y", "torch": "z"}}
    doc["summary"] = bench.summarise(doc)
    t = doc["summary"]["targets"]
    assert t["n_ahead"] == t["n_compared"] == 9
    assert doc["summary"]["targets_full"]["n_compared"] == 0  # no "_full" cells here
    assert t["mean_gap_to_rocket_points"] == pytest.approx(3.0)
    row = doc["summary"]["table"]["OSULeaf"]
    assert row["gru"]["n"] == 1 and row["unicornn"]["std"] == pytest.approx(np.std(range(5), ddof=1))
    md = bench.markdown(doc)
    assert "85.0 (n=1)" in md and "9 of 9" in md and "results_ucr.csv" in md


def test_one_real_cell():
    from unicornn.tasks.uea import bundled_names

    if "ItalyPowerDemand" not in bundled_names():
        pytest.skip("aeon with its bundled ItalyPowerDemand is not installed")
    bench = _load("accuracy_uea")
    cell = bench.run_cell("ItalyPowerDemand", "rocket", 0)
    assert 50.0 <= cell["score"] <= 100.0 and cell["fit_s"] > 0
    # the estimator defaults on the archive's own test file (1,029 cases): a fit of seconds, a useful model
    cell = bench.run_cell("ItalyPowerDemand", "unicornn", 0)
    assert 85.0 <= cell["score"] <= 100.0 and cell["epochs"] == 0


def test_selection_ranking():
    select = _load("choose_defaults")
    cells = {}
    for i, c in enumerate(select.CANDIDATES):
        for name in select.DATASETS:
            for s in select.SPLITS:
                cells[f"{c}|{name}|{s}"] = {"score": float(i), "higher_is_better": True}
    ranking = select.rank(cells)
    assert [c for c, _ in ranking] == list(select.CANDIDATES)[::-1]
    assert ranking[0][1] == 1.0
