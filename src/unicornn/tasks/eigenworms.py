"""EigenWorms (``eigenworms``, paper Table 3): classify C. elegans movement into 5 classes from 6 channels.

Data: the UEA archive's ``EigenWorms.zip`` holding ``EigenWorms_TRAIN.ts`` (128 cases) and
``EigenWorms_TEST.ts`` (131 cases), each case 6 channels of 17,984 steps, labels ``1``..``5``. Kept in
``<data root>/eigenworms/`` and verified by sha256 (:data:`ARCHIVE`) before any use; the ``.ts`` files are
read straight from the zip by :mod:`unicornn.tasks.ts_format` (no aeon needed). The pinned sha256 and size
are those of the sktime datasets mirror (its Git LFS pointer); the archive's own site publishes no checksum,
so it is tried second and its copy is only used if it has the same bytes.

Pipeline: train and test files merged (train first, file order), labels encoded 0-4 in the header's class
order (``1``..``5`` -> 0..4); split 181/39/39 by the shipped index lists ``data/eigenworms_split.json``
(Morrill et al.'s seed-0 procedure, see ``scripts/make_splits.py``); every channel standard-scaled with the
training split's mean and standard deviation (over cases and time). Inputs float32 ``(17984, 6)``, target
int64 0-4.

The paper's Fig. 3 study, as options applied identically to all splits:

* ``last_k`` (0 = off): keep only the last K time points of every sequence;
* ``random_k`` (0 = off): keep K time points drawn without replacement and kept in time order, the same
  points for every sequence, fixed by the run seed (``numpy.random.default_rng([seed, 7])``).
"""

from __future__ import annotations

import pathlib

import numpy as np

from .base import Splits, TaskSpec, check_int, check_seed, resolve_options
from .download import data_root, fetch
from .ts_format import SequenceDataset, channel_scaler, load_split, merge_train_test, read_ts_from_zip

ARCHIVE_NAME = "EigenWorms.zip"
ARCHIVE_URLS = (
    "https://github.com/sktime/sktime-datasets/raw/main/TSC/EigenWorms.zip",
    "https://timeseriesclassification.com/aeon-toolkit/EigenWorms.zip",
)
ARCHIVE_SHA256 = "38db21f136e9694f4d4b76f97b196029cd186a7fc476de825c09f11557874779"
ARCHIVE_SIZE = 328347284
TRAIN_FILE, TEST_FILE = "EigenWorms_TRAIN.ts", "EigenWorms_TEST.ts"
SPLIT_FILE = "eigenworms_split.json"
N_CASES, LENGTH, CHANNELS, CLASSES = 259, 17984, 6, 5
_RANDOM_K_STREAM = 7


def eigenworms_dir(data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Directory of the archive: ``<data root>/eigenworms``."""
    return data_root(data_dir) / "eigenworms"


def fetch_eigenworms(data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """The verified archive's path, downloading it if absent (offline: one DataUnavailableError)."""
    return fetch(ARCHIVE_URLS, eigenworms_dir(data_dir) / ARCHIVE_NAME, sha256=ARCHIVE_SHA256)


def load_eigenworms(archive: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Merged cases of the zip: ``(values float64 (n, length, 6), labels int64 (n,))``, train file first."""
    return merge_train_test(read_ts_from_zip(archive, TRAIN_FILE), read_ts_from_zip(archive, TEST_FILE))


def time_points(length: int, last_k: int, random_k: int, seed: int) -> np.ndarray | None:
    """Indices of the time points kept by the Fig. 3 options (None: all of them)."""
    if last_k and random_k:
        raise ValueError("options 'last_k' and 'random_k' cannot both be set")
    k = last_k or random_k
    if k > length:
        raise ValueError(f"option {'last_k' if last_k else 'random_k'!r} must be <= {length}, got {k}")
    if last_k:
        return np.arange(length - last_k, length)
    if random_k:
        rng = np.random.default_rng([seed, _RANDOM_K_STREAM])
        return np.sort(rng.choice(length, size=random_k, replace=False))
    return None


def make_splits(values: np.ndarray, labels: np.ndarray, split: dict, keep: np.ndarray | None) -> Splits:
    """Index, scale (training statistics) and wrap the merged cases; shared by the task and its tests."""
    if keep is not None:
        values = values[:, keep]
    mean, std = channel_scaler(values[split["train"]])
    scaled = ((values - mean) / std).astype(np.float32)
    return Splits(*(SequenceDataset(scaled[split[k]], labels[split[k]]) for k in ("train", "valid", "test")))


class EigenWormsTask:
    """EigenWorms (UEA): 6 channels x 17,984 steps, 5 classes; options last_k, random_k."""

    spec = TaskSpec(
        name="eigenworms",
        description="EigenWorms (UEA): classify worm movement, 6 channels x 17,984 steps, 5 classes",
        input_size=CHANNELS,
        output_size=CLASSES,
        readout="last",
        loss="cross_entropy",
        metric="accuracy",
        higher_is_better=True,
        default_options={"last_k": 0, "random_k": 0},
        paper_tables="Tables 3, 6; Fig. 3",
    )

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Load (downloading if needed), split by the shipped indices, scale; ``seed`` only drives random_k."""
        opts = resolve_options(self.spec, options)
        seed = check_seed(seed)
        last_k = check_int("last_k", opts["last_k"], 0)
        random_k = check_int("random_k", opts["random_k"], 0)
        keep = time_points(LENGTH, last_k, random_k, seed)  # option errors before any download
        values, labels = load_eigenworms(fetch_eigenworms(data_dir))
        if values.shape[1:] != (LENGTH, CHANNELS) or labels.max() >= CLASSES:
            raise ValueError(
                f"EigenWorms archive holds cases of shape {values.shape[1:]} with {labels.max() + 1} classes, "
                f"expected ({LENGTH}, {CHANNELS}) and {CLASSES}"
            )
        return make_splits(values, labels, load_split(SPLIT_FILE, len(values)), keep)
