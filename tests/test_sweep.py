"""Sweeps: grid and variant points, every point a normal run directory, resumability, the table and plot."""

from __future__ import annotations

import json
import math
import re

import pytest

from unicornn.cli import main
from unicornn.sweep import (
    Point,
    collect_sweep,
    combine,
    distinct,
    grid_points,
    run_sweep,
    variant_points,
    write_sweep,
)
from unicornn.validation import ConfigError

TINY = ["T=10", "n_train=32", "n_valid=16", "n_test=16", "hidden_size=4", "num_layers=1", "epochs=1",
        "batch_size=16", "eval_batch_size=16", "backend=reference"]  # fmt: skip


def test_grid_points_are_the_cartesian_product():
    points = grid_points([("dt", [0.05, 0.2]), ("alpha", [0.0, 1.0, 2.0])])
    assert [p.settings for p in points][:3] == [
        {"dt": 0.05, "alpha": 0.0},
        {"dt": 0.05, "alpha": 1.0},
        {"dt": 0.05, "alpha": 2.0},
    ]
    assert len(points) == 6 and len({p.name for p in points}) == 6
    assert points[0].name == "dt=0.05,alpha=0.0" or points[0].name == "dt=0.05,alpha=0"
    assert {p.x_key for p in points} == {"dt"} and {p.series for p in points} == {
        "alpha=0",
        "alpha=1",
        "alpha=2",
    }
    with pytest.raises(ConfigError, match="must differ"):
        grid_points([("dt", [0.1]), ("dt", [0.2])])


def test_fig4_varies_dt_and_alpha_each_over_an_order_of_magnitude():
    points = combine(variant_points("fig4", {"dt": 0.2, "alpha": 5.0}), [])
    for key in ("dt", "alpha"):
        xs = [p.x for p in points if p.x_key == key]
        assert len(xs) == 3 and max(xs) / min(xs) == pytest.approx(10, rel=1e-3)
        other = "alpha" if key == "dt" else "dt"
        assert {p.settings[other] for p in points if p.x_key == key} == {5.0 if key == "dt" else 0.2}
    # the centre point lies on both curves but is one run directory
    assert len({p.name for p in points}) == 5
    # dt stays within (0, 1]; alpha = 0 is swept around 1
    capped = variant_points("fig4", {"dt": 0.5, "alpha": 0.0})
    assert max(p.settings["dt"] for p in capped) == 1.0
    assert sorted(p.settings["alpha"] for p in capped if p.x_key == "alpha") == pytest.approx(
        [10**-0.5, 1.0, 10**0.5], rel=1e-3
    )


def test_fig6_is_3_to_6_layers_standard_residual_and_frozen_time_steps():
    points = variant_points("fig6", {"dt": 0.1, "alpha": 1.0})
    assert len(points) == 12
    by = {(p.series, p.x): p.settings for p in points}
    assert by[("standard", 3)] == {"num_layers": 3}
    assert by[("residual", 6)] == {"num_layers": 6, "residual_skip": 2}
    assert by[("frozen c", 4)] == {"num_layers": 4, "learn_time_steps": False}
    with pytest.raises(ConfigError, match="unknown sweep variant 'fig5'"):
        variant_points("fig5", {})


def test_a_variant_crossed_with_a_grid():
    points = combine(variant_points("fig6", {}), grid_points([("lr", [1e-3, 3e-3])]))
    assert len(points) == 24
    assert {p.series for p in points if p.x == 3} >= {"standard, lr=0.001", "frozen c, lr=0.003"}


def _task_and_settings(**over):
    from unicornn.cli import parse_sets
    from unicornn.tasks import TASKS
    from unicornn.training.presets import TRAIN_DEFAULTS, get_preset

    task = TASKS.get("adding")
    preset = get_preset("adding", "small")
    settings, options = preset.config(), dict(preset.task_options)
    s, o = parse_sets(TINY, TRAIN_DEFAULTS, task.spec.default_options)
    settings.update(s, **over)
    options.update(o)
    return task, settings, options


def test_an_interrupted_sweep_continues_and_finished_points_are_not_rerun(tmp_path):
    task, settings, options = _task_and_settings(epochs=2)
    points = grid_points([("dt", [0.05, 0.2])])
    quiet = {"quiet": True, "tensorboard": False, "log": lambda m: None}
    first = run_sweep(task, settings, options, tmp_path, points, runs=1, stop_after_epoch=1, **quiet)
    assert [r["status"] for r in first["rows"]] == ["0/1 finished"] * 2
    assert all(r["n"] == 1 for r in first["rows"])  # one epoch logged: a best epoch exists already

    second = run_sweep(task, settings, options, tmp_path, points, runs=1, **quiet)
    assert [r["status"] for r in second["rows"]] == ["1/1 finished"] * 2
    metrics = tmp_path / "dt=0.05" / "adding" / "seed-0" / "metrics.jsonl"
    assert [json.loads(x)["epoch"] for x in metrics.read_text().splitlines()] == [
        1,
        2,
    ]  # continued, not restarted

    def written():  # every run file (a run directory's .lock records who opened it last, not results)
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"}

    before = written()
    lines: list[str] = []
    third = run_sweep(task, settings, options, tmp_path, points, runs=1, **{**quiet, "log": lines.append})
    assert written() == before
    assert any(
        "2 points, 0 trained by this process" in line for line in lines
    )  # the study knew they were done
    assert third["rows"] == second["rows"]


def test_a_diverging_point_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    import unicornn.training.seeds as seeds
    from unicornn.training.epoch import NonFiniteError

    real = seeds.train_seeds

    def diverge_at_large_dt(task, settings, *args, **kw):
        if settings["dt"] > 0.1:
            raise NonFiniteError("non-finite loss at epoch 1, batch 1")
        return real(task, settings, *args, **kw)

    monkeypatch.setattr(seeds, "train_seeds", diverge_at_large_dt)
    task, settings, options = _task_and_settings()
    points = grid_points([("dt", [0.05, 0.5])])
    result = run_sweep(task, settings, options, tmp_path, points, log=lambda m: None, quiet=True,
                       tensorboard=False)  # fmt: skip
    ok, bad = result["rows"]
    assert ok["status"] == "1/1 finished" and math.isfinite(ok["test_mean"])
    assert bad["status"] == "failed" and "non-finite" in bad["error"] and bad["n"] == 0


def test_sweep_command_writes_the_table_json_and_plot_and_reruns_nothing(capsys, tmp_path):
    argv = ["sweep", "adding", "--grid", "dt=0.05,0.2", "--grid", "alpha=0,1", "--runs", "2", "--quiet",
            "--no-tensorboard", "--device", "cpu", "--out", str(tmp_path)]  # fmt: skip
    for s in TINY:
        argv += ["--set", s]
    assert main(argv) == 0
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert len(result["rows"]) == 4 and result["metric"] == "mse"
    for r in result["rows"]:
        assert r["n"] == 2 and r["status"] == "2/2 finished"
        assert math.isfinite(r["test_mean"]) and math.isfinite(r["test_std"]) and r["test_std"] >= 0
        for seed in (0, 1):
            assert (tmp_path / r["point"] / "adding" / f"seed-{seed}" / "result.json").exists()
    assert "| dt=0.05,alpha=0 | alpha=0 | dt=0.05 |" in out
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    # the same command again: every run already finished, the table is the same
    assert main(argv) == 0
    assert json.loads((tmp_path / "sweep.json").read_text())["rows"] == result["rows"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "give at least one --grid"),
        (["--grid", "dtt=0.1"], "--grid key 'dtt' is not a setting"),
        (["--grid", "dt"], "--grid expects key=v1,v2"),
        (["--grid", "dt=2.0"], None),  # a bad value fails when its point is built: exit 2, message names dt
    ],
)
def test_sweep_errors_exit_2(capsys, tmp_path, extra, message):
    argv = [
        "sweep",
        "adding",
        "--quiet",
        "--no-tensorboard",
        "--device",
        "cpu",
        "--out",
        str(tmp_path),
        *extra,
    ]
    for s in TINY:
        argv += ["--set", s]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (message or "dt must be in (0.0, 1.0]") in err


def test_collect_and_write_without_runs(tmp_path):
    points = [Point({"dt": 0.1}, x_key="dt", x=0.1)]
    result = collect_sweep(tmp_path, points, "adding")
    assert result["rows"][0]["n"] == 0 and result["rows"][0]["status"] == "0/0 finished"
    paths = write_sweep(result, tmp_path)
    assert "| dt=0.1 |" in paths["table"].read_text() and paths["png"].exists()


def test_a_sweep_over_names_is_plotted_side_by_side(tmp_path):
    from unicornn.sweep import plot_sweep

    rows = [{"point": f"model={m}", "series": "all", "x_key": "model", "x": m, "n": 1, "test_mean": 0.1 * i,
             "test_std": 0.0} for i, m in enumerate(("unicornn", "lstm", "gru"))]  # fmt: skip
    path = plot_sweep({"task": "adding", "metric": "mse", "rows": rows}, tmp_path / "models.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_a_sweep_over_layers_has_whole_number_ticks_and_no_legend_reading_all(monkeypatch, tmp_path):
    from unicornn import sweep

    drawn = []
    monkeypatch.setattr(sweep, "save_figure", lambda fig, path, dpi: drawn.append(fig) or path)
    rows = [{"point": f"num_layers={k}", "series": "all", "x_key": "num_layers", "x": k, "n": 1,
             "test_mean": 0.1 / k, "test_std": 0.0} for k in (3, 4)]  # fmt: skip
    sweep.plot_sweep({"task": "adding", "metric": "mse", "rows": rows}, tmp_path / "layers.png")
    (ax,) = drawn[0].axes
    drawn[0].canvas.draw()
    assert ax.get_legend() is None  # one unnamed curve: nothing to tell apart
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks), ticks


# ------------------------------------------------------------------ the Optuna engine and the reliability fixes


def test_the_grid_reproduces_the_runs_trained_directly_with_train_seeds(tmp_path):
    """The sweep's values are those of the pre-Optuna path: each point trained with train_seeds."""
    from unicornn.training.report import find_runs, summarize
    from unicornn.training.seeds import train_seeds

    task, settings, options = _task_and_settings()
    points = grid_points([("dt", [0.05, 0.2]), ("alpha", [0.0, 2.0])])
    quiet = {"quiet": True, "tensorboard": False, "log": lambda m: None}
    result = run_sweep(task, settings, options, tmp_path / "sweep", points, runs=2, **quiet)
    for p, row in zip(points, result["rows"]):
        direct = tmp_path / "direct" / p.name
        train_seeds(task, {**settings, **p.settings}, options, direct, 2, resume=True, **quiet)
        s = summarize([r for g in find_runs(direct).values() for r in g])
        assert (row["point"], row["n"], row["status"]) == (p.name, 2, "2/2 finished")
        assert (row["test_mean"], row["test_std"], row["valid_mean"]) == (
            s["test_mean"],
            s["test_std"],
            s["valid_mean"],
        )


def test_a_grid_key_that_the_variant_varies_is_refused(cli, tmp_path):
    with pytest.raises(ConfigError, match="--grid dt: the variant varies dt itself"):
        combine(variant_points("fig4", {"dt": 0.1, "alpha": 1.0}), grid_points([("dt", [0.05])]))
    with pytest.raises(ConfigError, match="--grid num_layers"):
        combine(variant_points("fig6", {}), grid_points([("num_layers", [2])]))
    code, _out, err = cli("sweep", "adding", "--variant", "fig4", "--grid", "dt=0.05", "--out", tmp_path)
    assert code == 2 and "the variant varies dt itself" in err and len(err.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing trained


def test_point_names_are_exact_so_close_values_stay_apart():
    points = grid_points([("dt", [0.10001, 0.10002, 0.1, 0.05])])
    assert [p.name for p in points] == ["dt=0.10001", "dt=0.10002", "dt=0.1", "dt=0.05"]
    rows, runs, notes = distinct(points)
    assert len(rows) == len(runs) == 4 and notes == []


def test_duplicate_points_are_announced_and_trained_once(cli, tmp_path):
    rows, runs, notes = distinct(combine(variant_points("fig4", {"dt": 0.2, "alpha": 5.0}), []))
    assert (len(rows), len(runs)) == (6, 5) and len(notes) == 1 and "on 2 curves" in notes[0]
    rows, runs, notes = distinct(grid_points([("dt", [0.1, 0.1])]))
    assert (len(rows), len(runs)) == (1, 1) and notes == [
        "point dt=0.1 is given 2 times: trained once, one row"
    ]
    argv = [
        "sweep",
        "adding",
        "--grid",
        "dt=0.1,0.10",
        "--quiet",
        "--no-tensorboard",
        "--no-plot",
        "--out",
        tmp_path,
    ]
    code, out, err = cli(*argv, *[a for s in TINY for a in ("--set", s)])
    assert code == 0 and "point dt=0.1 is given 2 times: trained once" in err
    # sweep log lines carry the time when stderr is not a terminal
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  sweep point 1/1: dt=0.1$", err, re.M), err


def test_a_full_disk_while_writing_the_table_keeps_the_previous_files(tmp_path, monkeypatch, cli):
    import errno
    import os
    import stat

    rows = [{"point": "dt=0.1", "series": "all", "x_key": "dt", "x": 0.1, "settings": {"dt": 0.1}, "n": 1,
             "test_mean": 0.5, "test_std": 0.0, "valid_mean": 0.4, "valid_std": 0.0, "status": "1/1 finished",
             "error": None}]  # fmt: skip
    old = {"task": "adding", "metric": "mse", "base_settings": {}, "rows": rows}
    new = {**old, "rows": [{**rows[0], "test_mean": 0.25}]}
    write_sweep(old, tmp_path, plot=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = os.fsync
    for fail_at in (1, 2):  # the JSON's data, then the table's, reach the disk
        calls = [0]

        def fsync(fd, fail_at=fail_at, calls=calls):
            calls[0] += stat.S_ISREG(os.fstat(fd).st_mode)
            if calls[0] == fail_at:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(OSError):
            write_sweep(new, tmp_path, plot=False)
        monkeypatch.setattr(os, "fsync", real)
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # old files, no leftovers
    # the command says so in one line (exit 2), after the runs are done
    import unicornn.sweep as sweep

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "sweep.json"))

    monkeypatch.setattr(sweep, "write_sweep", full)
    argv = ["sweep", "adding", "--grid", "dt=0.1", "--quiet", "--no-tensorboard", "--out", tmp_path / "cmd"]
    code, _out, err = cli(*argv, *[a for s in TINY for a in ("--set", s)])
    assert code == 2 and "No space left on device" in err and "kept" in err.splitlines()[-1]


@pytest.mark.slow
def test_two_sweep_workers_train_each_point_once(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**__import__("os").environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "unicornn", "sweep", "adding", "--grid", "dt=0.05,0.1,0.2,0.4", "--quiet",
           "--no-tensorboard", "--no-plot", "--out", str(tmp_path), *[a for s in TINY for a in ("--set", s)]]  # fmt: skip
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    started = [x.split(": ")[-1] for _o, e in outs for x in e.splitlines() if "sweep point" in x]
    assert sorted(started) == sorted(["dt=0.05", "dt=0.1", "dt=0.2", "dt=0.4"])  # once each, over both
    result = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in result["rows"]] == ["1/1 finished"] * 4


def test_a_named_sweep_study_holds_one_grid(cli, tmp_path):
    sets = [a for s in TINY for a in ("--set", s)]
    base = [
        "sweep",
        "adding",
        "--study",
        "mine",
        "--quiet",
        "--no-tensorboard",
        "--no-plot",
        "--out",
        tmp_path,
    ]
    assert cli(*base, "--grid", "dt=0.1", *sets)[0] == 0
    code, _out, err = cli(*base, "--grid", "dt=0.2", *sets)
    assert (
        code == 2
        and "study 'mine'" in err
        and "created with points" in err
        and len(err.strip().splitlines()) == 1
    )
