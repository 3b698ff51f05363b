"""The adding problem learns: a small UnICORNN clearly beats the trivial predictor (MSE 1/6 ~ 0.167).

The sequences are short (T=10) so that the run fits in CPU seconds: in our measurements a 2-layer, 128-unit
model needs ~2,000 Adam steps here, while at T=50..200 it stays on the 0.167 plateau for at least 4,000 steps.
"""

import pytest
import torch

from unicornn.tasks import get_task
from unicornn.training.trainer import train_run


@pytest.mark.slow
def test_adding_problem_beats_trivial_predictor(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        cfg = dict(
            hidden_size=128,
            num_layers=2,
            dt=1.0,
            alpha=5.0,
            lr=1e-2,
            batch_size=20,
            eval_batch_size=500,
            epochs=1,
            seed=0,
            backend="auto",
        )
        opts = {"T": 10, "n_train": 40000, "n_valid": 500, "n_test": 500}
        result = train_run(
            get_task("adding"), cfg, opts, tmp_path / "run", quiet=True, log=lambda m: None, tensorboard=False
        )
    finally:
        torch.set_num_threads(threads)
    assert result["best"]["valid"] < 0.08, result
    assert result["best"]["test"] < 0.08, result  # half the trivial MSE, on the fixed test set
