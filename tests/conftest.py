"""Shared test configuration.

Without a GPU, the Triton kernels are run by Triton's interpreter on CPU tensors; the variable must be set
before Triton compiles (decorates) any kernel, hence here.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
