"""Sweeps: grid and variant points, every point a normal run directory, resumability, the table and plot."""

from __future__ import annotations

import json
import math

import pytest

from unicornn.cli import main
from unicornn.sweep import Point, collect_sweep, combine, grid_points, run_sweep, variant_points, write_sweep
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
    assert sum("already finished" in line for line in lines) == 2
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
