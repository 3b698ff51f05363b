"""Registries: one per kind of thing, each the only list of its valid names; unknown names list them."""

import pytest

from unicornn.metrics import LOSSES, METRICS
from unicornn.registry import Registry, UnknownNameError
from unicornn.task_models import MODELS
from unicornn.tasks import TASKS
from unicornn.training.presets import PRESETS
from unicornn.validation import ConfigError, check_int, check_real


def test_register_get_iterate_and_contains():
    reg = Registry("colour")
    reg.register("red", 1)

    @reg.register("blue")
    def blue():
        return 2

    assert reg.get("red") == 1 and reg["blue"] is blue and blue() == 2
    assert list(reg) == reg.names() == ["red", "blue"] and len(reg) == 2
    assert "red" in reg and "green" not in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("red", 3)
    assert reg.get("red") == 1


def test_unknown_name_message_and_type():
    reg = Registry("loss")
    reg.register("mse", object())
    with pytest.raises(UnknownNameError) as e:
        reg.get("mae")
    assert str(e.value) == "unknown loss 'mae'; valid losses: mse"
    assert isinstance(e.value, ConfigError) and isinstance(e.value, ValueError)
    assert (e.value.kind, e.value.name, e.value.valid) == ("loss", "mae", ["mse"])


@pytest.mark.parametrize(
    "registry, kind, names",
    [
        (TASKS, "task", {"adding", "psmnist", "smnist", "lorenz96", "imdb", "bidmc-rr", "bidmc-hr"}),
        (MODELS, "model", {"unicornn"}),
        (METRICS, "metric", {"accuracy", "mse", "rmse", "nrmse"}),
        (LOSSES, "loss", {"cross_entropy", "binary_cross_entropy", "mse"}),
        (PRESETS, "preset", {"adding/small", "psmnist/paper", "lorenz96/paper-f8"}),
    ],
)
def test_project_registries(registry, kind, names):
    assert names <= set(registry)
    with pytest.raises(UnknownNameError, match=f"unknown {kind} 'nope'; valid {kind}"):
        registry.get("nope")


def test_every_task_spec_uses_registered_names():
    for name, task in TASKS.items():
        assert task.spec.name == name
        assert task.spec.loss in LOSSES and task.spec.metric in METRICS
        assert METRICS.get(task.spec.metric).higher_is_better == task.spec.higher_is_better
    assert TASKS.get("bidmc-rr").spec.metric == "rmse"
    assert TASKS.get("imdb").spec.loss == "binary_cross_entropy"


def test_checkers_name_the_value_and_what_was_expected():
    assert check_int("setting 'epochs'", 3, 1) == 3
    assert check_int("setting 'x'", None, 1, optional=True) is None
    with pytest.raises(TypeError, match="setting 'epochs' must be an int, got bool"):
        check_int("setting 'epochs'", True, 1)
    with pytest.raises(ConfigError, match="setting 'epochs' must be >= 1, got 0"):
        check_int("setting 'epochs'", 0, 1)
    assert check_real("setting 'lr'", 1, low=0.0, low_open=True) == 1.0
    with pytest.raises(ConfigError, match="setting 'lr' must be > 0, got 0"):
        check_real("setting 'lr'", 0.0, low=0.0, low_open=True)
    with pytest.raises(ConfigError, match="must be finite"):
        check_real("option 'F'", float("nan"))
    with pytest.raises(TypeError, match="option 'F' must be a number, got str"):
        check_real("option 'F'", "8")
