"""The adding problem (Hochreiter & Schmidhuber 1997), as in the coRNN paper (Rusch & Mishra, ICLR 2021).

Each sequence has ``T`` steps and two input channels:

* channel 0: values drawn i.i.d. from U(0, 1);
* channel 1: a marker, 1 at exactly one position in the first half ``[0, T//2)`` and at exactly one
  position in the second half ``[T//2, T)``, 0 elsewhere (positions uniform within each half).

The target is the sum of the two marked values (float32, shape ``(1,)``), learned with MSE. Predicting the
constant 1 gives an expected MSE of 1/6 ≈ 0.167 (the variance of a sum of two U(0, 1)), the baseline to beat.

Options (defaults): ``T`` = 1000, ``n_train`` = 50,000, ``n_valid`` = 1,000, ``n_test`` = 1,000 sequences.
(The coRNN scripts draw fresh batches at every step instead; a fixed training set of 50,000 keeps epochs,
validation-based selection and exact resumption well defined.)

Sequences are generated lazily: item ``i`` of a split comes from its own generator
``numpy.random.default_rng([split_seed, stream, i])``, so the sets take no memory, are identical across
processes and epochs, and any item is drawn in O(T). Train (stream 0) and validation (stream 1) use the
run ``seed``; the test set (stream 2) always uses :data:`TEST_SEED`, whatever the run seed, so every run
is evaluated on the same test sequences.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import Splits, TaskSpec, check_int, check_seed, resolve_options

TEST_SEED = 20210301
"""Seed of the adding-problem test set, independent of the run seed."""

_TRAIN, _VALID, _TEST = 0, 1, 2


class AddingDataset(Dataset):
    """``n`` adding-problem sequences of length ``T``.

    Item ``i`` is ``(inputs, target)``: inputs float32 ``(T, 2)``, target float32 ``(1,)``.
    """

    def __init__(self, T: int, n: int, seed: int, stream: int) -> None:
        self.T = check_int("T", T, 2)
        self.n = check_int("n", n, 0)
        self.seed = check_seed(seed)
        self.stream = int(stream)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.n
        if not 0 <= index < self.n:
            raise IndexError(f"index out of range for an adding dataset of {self.n} sequences")
        rng = np.random.default_rng([self.seed, self.stream, int(index)])
        T, half = self.T, self.T // 2
        values = rng.random(T, dtype=np.float32)
        first = int(rng.integers(0, half))
        second = int(rng.integers(half, T))
        inputs = np.zeros((T, 2), dtype=np.float32)
        inputs[:, 0] = values
        inputs[first, 1] = 1.0
        inputs[second, 1] = 1.0
        target = np.array([values[first] + values[second]], dtype=np.float32)
        return torch.from_numpy(inputs), torch.from_numpy(target)


class AddingTask:
    """Adding problem: options ``T`` (sequence length) and ``n_train``/``n_valid``/``n_test`` (set sizes)."""

    spec = TaskSpec(
        name="adding",
        description="adding problem: sum of the two marked U(0,1) values of a length-T sequence",
        input_size=2,
        output_size=1,
        readout="last",
        loss="mse",
        metric="mse",
        higher_is_better=False,
        default_options={"T": 1000, "n_train": 50000, "n_valid": 1000, "n_test": 1000},
        default_preset="small",
    )

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Return the splits; nothing is read from ``data_dir`` (the data are generated)."""
        opts = resolve_options(self.spec, options)
        seed = check_seed(seed)
        T = check_int("T", opts["T"], 2)
        sizes = {k: check_int(k, opts[k], 1) for k in ("n_train", "n_valid", "n_test")}
        return Splits(
            train=AddingDataset(T, sizes["n_train"], seed, _TRAIN),
            valid=AddingDataset(T, sizes["n_valid"], seed, _VALID),
            test=AddingDataset(T, sizes["n_test"], TEST_SEED, _TEST),
        )
