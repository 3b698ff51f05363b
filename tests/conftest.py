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


@pytest.fixture
def cli(capsys):
    """The ``unicornn`` command run in this process: ``cli(*argv) -> (exit code, stdout, stderr)``.

    Arguments are converted with ``str`` (paths welcome); argparse's own usage errors give their exit code."""
    from unicornn.cli import main

    def run(*argv):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit:
            code = exit.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
