"""Noise-padded CIFAR-10 (``noisy-cifar10``, paper Table 2).

Data: the official CIFAR-10 python archive ``cifar-10-python.tar.gz`` (:data:`ARCHIVE`: URL, size and md5 as
published with torchvision), kept in ``<data root>/cifar10/`` and verified by md5 before any use. The
batches are read straight from the archive (nothing is extracted) with an unpickler that only admits the
numpy array types the batches are made of.

Sequences: each 32x32 RGB image, pixels scaled to [0, 1] by /255 (no normalisation, no augmentation),
becomes 32 steps of 96 features: step ``h`` is image row ``h`` with its R, G and B rows side by side,
``[R[h, 0:32], G[h, 0:32], B[h, 0:32]]`` (the authors' ``images.permute(0, 2, 1, 3).reshape(-1, 32, 96)``
of a ``(3, 32, 32)`` image). Then :data:`NOISE_STEPS` = 968 noise steps of 96 features follow: 1000 steps
in all. Inputs are float32 ``(1000, 96)``, the target an int64 class 0-9.

Noise (option ``noise``):

* ``"fixed"`` (default, as the authors ran it): one Gaussian N(0, 1) tensor ``(968, 96)``, drawn once by
  ``torch.randn`` from a generator seeded with :data:`NOISE_SEED` (12345, the seed of the authors' script)
  and appended to every sample of every split and epoch. The authors drew it from the global generator
  after building their model, so their tensor also depends on the model's initialisation draws and cannot
  be reproduced bit for bit; this one is fixed by the seed alone.
* ``"fresh"``: independent N(0, 1) noise for every sample: training samples draw new noise at every access
  (so every epoch), validation and test samples have noise fixed by ``(run seed, split, index)``.
* ``"uniform"``: like ``"fixed"`` but U(0, 1) noise, which is what the paper's text describes ("uniform
  noise"); its code draws Gaussian noise, and the reported 62.4% was obtained with the Gaussian one.

Splits: the 50,000 official training images (data_batch_1..5, in order) are shuffled once by
``torch.randperm(50000)`` from a generator seeded with :data:`SPLIT_SEED` (independent of the run seed);
the first 48,000 are the training set, the last 2,000 the validation set (the authors' split sizes; their
own split was drawn from torch's global generator inside their script and is not reproduced here). The test
set is the official 10,000 ``test_batch``.
Options ``n_train`` / ``n_valid`` / ``n_test`` keep the first n of each split for quick runs.
"""

from __future__ import annotations

import pathlib
import pickle
import tarfile
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from ..validation import ConfigError, check_choice
from .base import Splits, TaskSpec, check_int, check_seed, resolve_options
from .download import DataUnavailableError, data_root, fetch


@dataclass(frozen=True)
class Archive:
    """A downloadable file: name, URLs (mirrors, in order), size in bytes and md5."""

    name: str
    urls: tuple[str, ...]
    size: int
    md5: str


ARCHIVE = Archive(
    name="cifar-10-python.tar.gz",
    urls=("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    size=170498071,
    md5="c58f30108f718f92721af3b95e74349a",
)
"""The official CIFAR-10 python archive (md5 as in torchvision's ``CIFAR10.tgz_md5``)."""

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_DIR = "cifar-10-batches-py"
N_TRAIN_FILES, N_TEST_FILES = 50000, 10000
"""Images in the official training batches and in the test batch."""
N_VALID = 2000
"""Validation images taken from the official training set (the rest, 48,000, are the training set)."""
SPLIT_SEED = 12345
NOISE_SEED = 12345
IMAGE_STEPS, NOISE_STEPS, FEATURES = 32, 968, 96
NOISE_KINDS = ("fixed", "fresh", "uniform")
_SPLIT_STREAM = {"train": 0, "valid": 1, "test": 2}


class CifarFormatError(DataUnavailableError, ValueError):
    """The archive does not hold CIFAR-10 python batches of the expected layout (a data error: one line on
    the command line, like the other data files' format errors)."""


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR-10 batches: only numpy's array reconstruction (and ``_codecs.encode``, which
    protocol-2 pickles written by Python 3 use for bytes) may be called."""

    _ALLOWED = {
        ("_codecs", "encode"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"CIFAR-10 batch refers to {module}.{name}, which is not allowed")
        return super().find_class(module, name)


def _read_batch(archive: tarfile.TarFile, member: str, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch -> ``(uint8 (n, 3072) CHW-flattened images, int64 (n,) labels)``."""
    try:
        f = archive.extractfile(f"{BATCH_DIR}/{member}")
    except KeyError:
        raise CifarFormatError(f"{where}: no member {BATCH_DIR}/{member}") from None
    if f is None:
        raise CifarFormatError(f"{where}: {BATCH_DIR}/{member} is not a regular file")
    try:
        batch = _BatchUnpickler(f, encoding="bytes").load()
    except Exception as err:  # a damaged pickle can fail in any of the calls it makes
        raise CifarFormatError(f"{where}: {member} is not a CIFAR-10 batch ({err!r:.200})") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CifarFormatError(f"{where}: {member} lacks the b'data' / b'labels' entries")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or labels.shape != data.shape[:1]:
        raise CifarFormatError(
            f"{where}: {member} holds data {data.dtype} {data.shape} and labels {labels.shape}, expected "
            "uint8 (n, 3072) and (n,)"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise CifarFormatError(f"{where}: {member} has labels outside 0-9")
    return data, labels


def read_cifar10(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the python archive: ``(train images, train labels, test images, test labels)``.

    Images are uint8 ``(n, 3, 32, 32)`` (channels R, G, B), labels int64 ``(n,)``; the training batches are
    concatenated in order 1..5. The counts are checked against :data:`N_TRAIN_FILES` / :data:`N_TEST_FILES`.
    """
    path = pathlib.Path(path)
    try:
        with tarfile.open(path, "r:gz") as archive:
            train = [_read_batch(archive, b, str(path)) for b in TRAIN_BATCHES]
            test_x, test_y = _read_batch(archive, TEST_BATCH, str(path))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CifarFormatError(f"{path}: not a readable tar.gz archive ({err})") from err
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    for what, n, expected in (("training", len(train_x), N_TRAIN_FILES), ("test", len(test_x), N_TEST_FILES)):
        if n != expected:
            raise CifarFormatError(f"{path}: {n} {what} images, expected {expected}")
    return train_x.reshape(-1, 3, 32, 32), train_y, test_x.reshape(-1, 3, 32, 32), test_y


def image_rows(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``(..., 3, 32, 32)`` -> float32 ``(..., 32, 96)`` in [0, 1]: row h = [R_h, G_h, B_h]."""
    if images.shape[-3:] != (3, 32, 32):
        raise ValueError(f"images must have shape (..., 3, 32, 32), got {tuple(images.shape)}")
    rows = images.transpose(-3, -2)  # (..., 32 rows, 3 channels, 32 columns)
    return rows.reshape(*images.shape[:-3], IMAGE_STEPS, FEATURES).to(torch.float32) / 255.0


def fixed_noise(kind: str = "fixed") -> torch.Tensor:
    """The shared noise tensor, float32 ``(968, 96)``: N(0, 1) (``"fixed"``) or U(0, 1) (``"uniform"``)."""
    gen = torch.Generator().manual_seed(NOISE_SEED)
    if kind == "fixed":
        return torch.randn((NOISE_STEPS, FEATURES), generator=gen)
    if kind == "uniform":
        return torch.rand((NOISE_STEPS, FEATURES), generator=gen)
    raise ValueError(f"fixed_noise: kind must be 'fixed' or 'uniform', got {kind!r}")


class NoisyCifar(Dataset):
    """Noise-padded CIFAR-10 sequences.

    ``images``: uint8 ``(n, 3, 32, 32)``; ``labels``: ``(n,)``; ``noise``: float32 ``(968, 96)`` appended to
    every sample, or None for fresh N(0, 1) noise per sample (``fresh_seed``: None = new noise at every
    access; an int = noise fixed per index by ``(fresh_seed, index)``).
    Item ``i`` is ``(inputs float32 (1000, 96), target int64 scalar)``.
    """

    def __init__(self, images, labels, noise: torch.Tensor | None, fresh_seed: int | None = None) -> None:
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).to(torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"images must be uint8 (n, 3, 32, 32), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if noise is not None and noise.shape != (NOISE_STEPS, FEATURES):
            raise ValueError(f"noise must have shape ({NOISE_STEPS}, {FEATURES}), got {tuple(noise.shape)}")
        self.images, self.labels, self.noise, self.fresh_seed = images, labels, noise, fresh_seed

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        noise = self.noise
        if noise is None:
            gen = None
            if self.fresh_seed is not None:
                gen = torch.Generator().manual_seed(self.fresh_seed * 1_000_003 + int(index))
            noise = torch.randn((NOISE_STEPS, FEATURES), generator=gen)
        return torch.cat([image_rows(self.images[index]), noise]), self.labels[index]


def cifar10_dir(data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Directory of the CIFAR-10 archive: ``<data root>/cifar10``."""
    return data_root(data_dir) / "cifar10"


def fetch_cifar10(data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """The verified archive's path, downloading it if absent (offline: one DataUnavailableError)."""
    return fetch(ARCHIVE.urls, cifar10_dir(data_dir) / ARCHIVE.name, md5=ARCHIVE.md5)


class NoisyCifarTask:
    """Noise-padded CIFAR-10: 32 image-row steps then 968 noise steps; options noise, n_train/n_valid/n_test."""

    spec = TaskSpec(
        name="noisy-cifar10",
        description="noise-padded CIFAR-10: 32 rows of 96 RGB features then 968 noise steps (1000 steps)",
        input_size=FEATURES,
        output_size=10,
        readout="last",
        loss="cross_entropy",
        metric="accuracy",
        higher_is_better=True,
        default_options={
            "noise": "fixed",
            "n_train": N_TRAIN_FILES - N_VALID,
            "n_valid": N_VALID,
            "n_test": N_TEST_FILES,
        },
        paper_tables="Tables 2, 6, 8",
    )

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Load (downloading if needed) and split; ``seed`` only matters for ``noise="fresh"``."""
        opts = resolve_options(self.spec, options)
        seed = check_seed(seed)
        check_choice("option 'noise'", opts["noise"], NOISE_KINDS)
        n_train_split = N_TRAIN_FILES - N_VALID
        limits = {"n_train": n_train_split, "n_valid": N_VALID, "n_test": N_TEST_FILES}
        for key, limit in limits.items():
            if check_int(key, opts[key], 1) > limit:
                raise ConfigError(f"option {key!r} must be <= {limit} (the split's size), got {opts[key]}")
        train_x, train_y, test_x, test_y = read_cifar10(fetch_cifar10(data_dir))
        order = torch.randperm(N_TRAIN_FILES, generator=torch.Generator().manual_seed(SPLIT_SEED))
        parts = {
            "train": order[: opts["n_train"]],
            "valid": order[n_train_split : n_train_split + opts["n_valid"]],
        }
        train_x, train_y = torch.from_numpy(train_x), torch.from_numpy(train_y)
        noise = None if opts["noise"] == "fresh" else fixed_noise(opts["noise"])

        def fresh(split: str) -> int | None:
            if noise is not None or split == "train":
                return None
            return seed * 3 + _SPLIT_STREAM[split]

        return Splits(
            train=NoisyCifar(train_x[parts["train"]], train_y[parts["train"]], noise, fresh("train")),
            valid=NoisyCifar(train_x[parts["valid"]], train_y[parts["valid"]], noise, fresh("valid")),
            test=NoisyCifar(
                torch.from_numpy(test_x[: opts["n_test"]]), test_y[: opts["n_test"]], noise, fresh("test")
            ),
        )
