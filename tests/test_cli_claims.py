"""The commands checking the paper's claims, on tiny sizes: baselines through ``train``, weight norms in the
log and the report, ``bench``, ``diagnose``, ``plot timesteps``. Files produced, numbers finite, plots written,
the state bound reported violated when it is."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import TINY_TRAIN_SETS

from unicornn.cli import EXIT_VIOLATED, main

# the shared tiny run with 1 epoch of 2 batches and no dropout (the last --set wins)
TINY = [*TINY_TRAIN_SETS, "epochs=1", "batch_size=16", "dropout=0"]


def _png(path):
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def _train(cli, out, *sets):
    argv = ["train", "adding", "--quiet", "--no-tensorboard", "--out", out]
    for s in [*TINY, *sets]:
        argv += ["--set", s]
    code, stdout, err = cli(*argv)
    assert code == 0, err
    return out / "adding" / "seed-0"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny trained UnICORNN run (2 epochs), shared by the tests that read a run."""
    out = tmp_path_factory.mktemp("runs")
    argv = ["train", "adding", "--quiet", "--no-tensorboard", "--out", str(out)]
    for s in [*TINY, "epochs=2"]:
        argv += ["--set", s]
    assert main(argv) == 0
    return out / "adding" / "seed-0"


@pytest.mark.parametrize("model", ["lstm", "gru", "cornn", "indrnn"])
def test_every_baseline_trains_one_epoch_through_the_cli(cli, tmp_path, model):
    run_dir = _train(cli, tmp_path, f"model={model}")
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(row["train_loss"]) and math.isfinite(row["test_mse"])
    assert len(row["weight_norms"]) == 2 and all(math.isfinite(v) and v > 0 for v in row["weight_norms"])
    config = json.loads((run_dir / "config.json").read_text())
    assert config["settings"]["model"] == model
    state = torch.load(run_dir / "best.pt", weights_only=False)["model"]
    assert not any(k.endswith("c_l0") for k in state)  # a baseline, not a UnICORNN stack


def test_indrnn_weights_stay_within_their_bound_after_training(cli, tmp_path):
    """The trainer calls the model's constrain_() after every optimiser step: with a huge learning rate the
    stored recurrent weights would leave [-u_max, u_max] without it."""
    run_dir = _train(cli, tmp_path, "model=indrnn", "lr=10", "indrnn_max_steps=10", "indrnn_gamma=2")
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    bound = 2.0 ** (1 / 10)
    recurrent = [v for k, v in state.items() if "weight_hh" in k]
    assert recurrent and all(float(v.abs().max()) <= bound + 1e-6 for v in recurrent)


@pytest.mark.parametrize(
    "sets, message",
    [
        (["model=cornn", "cornn_gamma=-1"], "setting 'cornn_gamma' must be >= 0"),
        (["model=cornn", "cornn_damping=both"], "setting 'cornn_damping' must be one of explicit, implicit"),
        (["model=indrnn", "indrnn_gamma=0.5"], "setting 'indrnn_gamma' must be >= 1"),
        (["model=indrnn", "indrnn_max_steps=0"], "setting 'indrnn_max_steps' must be >= 1"),
        (["model=cornn", "dt=0.1,0.2"], "must be one number for coRNN"),
        (["learn_time_steps=3"], "setting 'learn_time_steps' must be true or false"),
        (["model=rnn"], "setting 'model' must be one of unicornn, lstm, gru, cornn, indrnn"),
    ],
)
def test_bad_model_settings_exit_2_naming_the_setting(cli, tmp_path, sets, message):
    argv = ["train", "adding", "--quiet", "--out", tmp_path]
    for s in [*TINY, *sets]:
        argv += ["--set", s]
    code, _, err = cli(*argv)
    assert code == 2 and message in err, err


def test_frozen_time_steps_stay_at_their_initial_values(cli, tmp_path):
    from unicornn.task_models import MODELS
    from unicornn.tasks import TASKS

    run_dir = _train(cli, tmp_path, "learn_time_steps=false", "epochs=2")
    cfg = json.loads((run_dir / "config.json").read_text())["settings"]
    torch.manual_seed(cfg["seed"])  # the trainer initialises the model from the seed alone
    fresh = MODELS.get("unicornn")(TASKS.get("adding").spec, cfg)
    assert not any(fresh.rnn.layer_parameters(k)["c"].requires_grad for k in range(2))
    trained = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
    for k in range(2):
        torch.testing.assert_close(trained[f"rnn.c_l{k}"], fresh.rnn.layer_parameters(k)["c"].detach())
        assert not torch.equal(trained[f"rnn.weight_hh_l{k}"], fresh.rnn.layer_parameters(k)["weight_hh"])


def test_weight_norms_are_logged_every_epoch_and_plotted_by_report(cli, trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    state = torch.load(trained / "checkpoint.pt", weights_only=False)["model"]
    assert [len(r["weight_norms"]) for r in rows] == [2, 2]
    assert rows[-1]["weight_norms"] == [float(state[f"rnn.weight_hh_l{k}"].abs().max()) for k in range(2)]
    code, out, _ = cli("report", trained.parent)
    assert code == 0
    assert "seed-0: recurrent weight norm ||w^l||_inf, epoch 1 -> 2: layer 1" in out
    _png(trained.parent / "weight_norms.png")


def test_bench_speed_with_floor(cli, tmp_path):
    argv = ["bench", "speed", "--lengths", "6,9", "--models", "unicornn,lstm:1,indrnn", "--batch", "2",
            "--hidden", "4", "--layers", "1", "--repeats", "1", "--slow-repeats", "1", "--threads", "1", "--floor",
            "--out", tmp_path]  # fmt: skip
    code, out, err = cli(*argv)
    assert code == 0, err
    result = json.loads((tmp_path / "speed.json").read_text())
    assert {(r["model"], r["N"]) for r in result["rows"]} == {
        (m, n) for m in ("unicornn", "lstm:1", "indrnn", "floor") for n in (6, 9)
    }
    for r in result["rows"]:
        assert math.isfinite(r["median_s"]) and r["median_s"] > 0 and r["ratio_to_unicornn"] > 0
    floor = next(r for r in result["rows"] if r["model"] == "floor")
    assert floor["bytes"] == 6 * 1 * 6 * 2 * 4 * 4 and floor["bandwidth_GBps"] > 0
    assert floor["median_s"] == pytest.approx(floor["matmul_s"] + floor["memory_s"])
    assert "| floor |" in out and (tmp_path / "speed.txt").exists()
    _png(tmp_path / "speed.png")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "speed", "--models", "rnn"], "model must be one of"),
        (["bench", "speed", "--lengths", "0"], "expected comma-separated ints >= 1"),
        (["bench", "memory", "--models", "gru"], "model must be one of"),
        (["diagnose", "gradients", "--models", "rnn", "--lengths", "3"], "--models: unknown rnn"),
        (
            ["diagnose", "gradients", "--hidden", "0", "--lengths", "3"],
            "argument --hidden: must be an int >= 1",
        ),
        (["bench", "speed", "--repeats", "0"], "argument --repeats: must be an int >= 1"),
        (["diagnose", "states", "--dt", "2"], "dt must be in (0.0, 1.0]"),
    ],
)
def test_claim_command_errors_exit_2(cli, tmp_path, argv, message):
    code, _, err = cli(*argv, "--out", tmp_path)
    assert code == 2 and message in err, err


@pytest.mark.slow  # every point in a fresh process
def test_bench_memory_one_point(cli, tmp_path):
    argv = ["bench", "memory", "--lengths", "40", "--models", "unicornn_standard", "--batch", "2", "--hidden", "4",
            "--layers", "1", "--threads", "1", "--out", tmp_path]  # fmt: skip
    code, out, err = cli(*argv)
    assert code == 0, err
    (row,) = json.loads((tmp_path / "memory.json").read_text())["rows"]
    assert row["model"] == "unicornn_standard" and row["N"] == 40
    assert math.isfinite(row["peak_MiB"]) and row["peak_bytes"] >= 0
    _png(tmp_path / "memory.png")


def test_diagnose_gradients(cli, tmp_path):
    argv = ["diagnose", "gradients", "--lengths", "12,30", "--hidden", "4", "--batch", "2", "--out", tmp_path]
    code, out, err = cli(*argv)
    assert code == 0, err
    profiles = json.loads((tmp_path / "gradients.json").read_text())["profiles"]
    assert set(profiles) == {f"{m} N={n}" for m in ("unicornn", "lstm", "gru") for n in (12, 30)}
    for p in profiles.values():
        assert len(p["norm"]) == p["N"] and all(math.isfinite(v) and v >= 0 for v in p["norm"])
        assert p["norm"][-1] == pytest.approx(1.0)  # dL/dh_N is a unit direction
    assert "| unicornn | 30 |" in out
    _png(tmp_path / "gradients.png")


def test_diagnose_states_fresh_holds_and_a_forced_violation_exits_nonzero(cli, tmp_path):
    base = ["diagnose", "states", "--steps", "50", "--hidden", "5", "--batch", "2"]
    code, out, err = cli(*base, "--out", tmp_path / "ok")
    assert code == 0, err
    check = json.loads((tmp_path / "ok" / "states.json").read_text())
    assert not check["violated"] and len(check["layers"]) == 2
    assert all(math.isfinite(v) for layer in check["layers"] for v in layer["max_abs_y"] + layer["max_abs_z"])
    assert "bound holds at every step" in out
    _png(tmp_path / "ok" / "states.png")

    # the bound assumes zero initial states: starting every unit at 100 exceeds it at once
    code, out, _ = cli(*base, "--initial-state", "100", "--out", tmp_path / "bad")
    assert code == EXIT_VIOLATED != 0
    check = json.loads((tmp_path / "bad" / "states.json").read_text())
    assert check["violated"] and check["violations"][0]["step"] == 1
    assert "VIOLATION: layer 1 |y|" in out and "bound violated" in out


def test_diagnose_states_of_a_trained_run(cli, tmp_path, trained):
    code, out, err = cli("diagnose", "states", trained, "--steps", "30", "--form", "geometric",
                         "--out", tmp_path)  # fmt: skip
    assert code == 0, err
    check = json.loads((tmp_path / "states.json").read_text())
    assert check["form"] == "geometric" and "best.pt" in check["source"] and len(check["layers"]) == 2


def test_plot_timesteps_of_a_run(cli, trained):
    code, out, err = cli("plot", "timesteps", trained, "--bins", "5")
    assert code == 0, err
    hist = json.loads((trained / "timesteps.json").read_text())
    state = torch.load(trained / "best.pt", weights_only=False)["model"]
    dt = json.loads((trained / "config.json").read_text())["settings"]["dt"]
    for k, layer in enumerate(hist["layers"]):
        expected = (dt * torch.sigmoid(state[f"rnn.c_l{k}"].double())).tolist()
        assert layer["values"] == pytest.approx(expected)
        assert sum(layer["counts"]) == 6
    _png(trained / "timesteps.png")


def test_run_diagnostics_refuse_a_baseline_run(cli, tmp_path):
    run_dir = _train(cli, tmp_path, "model=gru")
    for argv in (["plot", "timesteps", run_dir], ["diagnose", "states", run_dir]):
        code, _, err = cli(*argv)
        assert code == 2 and "holds no UnICORNN stack" in err and "'gru'" in err
    code, _, err = cli("plot", "timesteps", tmp_path / "nothing")
    assert code == 2 and "does not exist" in err


def test_help_lists_the_claim_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for name in ("bench", "diagnose", "plot", "sweep"):
        assert name in out
