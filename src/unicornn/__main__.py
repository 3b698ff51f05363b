"""``python -m unicornn`` (and ``torchrun -m unicornn``): the ``unicornn`` command line."""

from .entry import run

run()
