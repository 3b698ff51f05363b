"""``python -m unicornn`` (and ``torchrun -m unicornn``): the ``unicornn`` command line."""

import sys

from .cli import main

sys.exit(main())
