"""Shared test configuration.

Without a GPU, the Triton kernels are run by Triton's interpreter on CPU tensors; the variable must be set
before Triton compiles (decorates) any kernel, hence here.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def quiet_run():
    """``train_run`` with no output: no progress bars, no log lines, no TensorBoard (keywords override)."""
    from unicornn.training.trainer import train_run

    def run(task, config, options, run_dir, **kw):
        kw = {"quiet": True, "log": lambda m: None, "tensorboard": False, **kw}
        return train_run(task, config, options, run_dir, **kw)

    return run
