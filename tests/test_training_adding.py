"""The adding problem learns: a small UnICORNN clearly beats the trivial predictor (MSE 1/6 ~ 0.167).

``test_adding_problem_beats_trivial_predictor_at_T200`` is the issue's check at T=200. What makes it learn
(measured on one CPU thread, 5,000 Adam steps of batch 64):

* the input projection ``V`` starts 30 times larger (``input_gain=30``) than the paper's initialisation (Kaiming-uniform with
  ``a=8``, ``|V| <= 0.21`` for two inputs), so that ``tanh(w y + V u + b)`` starts in its saturating range,
  where a marked step and an unmarked one force the oscillator differently. With the paper's scale the
  forcing is nearly linear in the inputs, and none of about twenty tried combinations of dt, alpha,
  learning rate, batch size, units, layers and read-out (``y_N``, ``z_N`` or both) left the 0.167 plateau
  within 3,000..8,000 steps. Scales 10, 30 and 50 all left it (30 is used here);
* ``alpha = 0`` (``alpha = 0.5`` stayed at ~0.12 in the same budget, ``alpha = 1`` at ~0.15) and ``dt = 0.1``
  (0.05 and 0.2 learn more slowly);
* one layer of 32 units (two layers with the same scaling learned worse in the same budget);
* lr 1e-2, divided by 10 after 3,000 of the 5,000 steps.

Held-out test MSE with this recipe: 0.038 (seed 0) and 0.057 (seed 1), 33..37 s each on one thread; with
batch 32 instead, 0.04..0.09 over three seeds. Reading ``(y_N, z_N)`` instead of ``y_N`` gave no clear gain.

``test_adding_problem_beats_trivial_predictor`` runs the full trainer at T=10, where the paper's
initialisation learns within ~2,000 steps.
"""

import pytest
import torch
from torch.utils.data import DataLoader

from unicornn.models import SequenceModel
from unicornn.tasks import get_task
from unicornn.training.trainer import train_run

T = 200
STEPS = 5000
LR_DROP_STEP = 3000
BATCH = 64
V_SCALE = 30.0


def _train_adding(seed: int) -> float:
    """Train the recipe above with ``seed``; return the MSE on the task's fixed held-out test set."""
    torch.manual_seed(seed)
    splits = get_task("adding").build({"T": T, "n_train": 64000, "n_valid": 1, "n_test": 1000}, None, seed)
    model = SequenceModel(
        input_size=2,
        output_size=1,
        hidden_size=32,
        num_layers=1,
        dt=0.1,
        alpha=0.0,
        dropout=0.0,
        readout="last",
        backend="auto",
        input_gain=V_SCALE,
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loader = DataLoader(
        splits.train, batch_size=BATCH, shuffle=True, generator=torch.Generator().manual_seed(seed)
    )
    step = 0
    while step < STEPS:
        for x, y in loader:
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step == LR_DROP_STEP:
                for group in opt.param_groups:
                    group["lr"] *= 0.1
            if step == STEPS:
                break
    model.eval()
    x_test, y_test = next(iter(DataLoader(splits.test, batch_size=len(splits.test))))
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(x_test), y_test).item()


@pytest.mark.slow
def test_adding_problem_beats_trivial_predictor_at_T200():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: threads only add overhead
    try:
        mse = _train_adding(seed=0)
    finally:
        torch.set_num_threads(threads)
    assert mse < 0.1, mse  # trivial predictor: 1/6 ~ 0.167 on the fixed held-out test set


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
