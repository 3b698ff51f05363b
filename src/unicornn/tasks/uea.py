"""Any UEA/UCR classification or Monash regression data set, or a user's own ``.ts`` files (``uea``).

Options (exactly one source): ``dataset=NAME`` reads ``NAME_TRAIN.ts`` and ``NAME_TEST.ts`` from the copies
bundled with the installed aeon package when it has them, otherwise from ``<data root>/uea/NAME.zip``,
downloaded from the UEA/UCR archive on first use (:data:`ARCHIVE_URL`). The archive publishes no checksums:
the sha256 of the zip is recorded beside it (``NAME.zip.sha256``) on its first download and every later use
checks the zip against it. ``train=FILE.ts`` and ``test=FILE.ts`` read a user's own files; classification or
regression is read from the header (``@classLabel`` or ``@targetLabel``).

Pipeline: the validation cases (``valid_fraction`` of the training file, stratified by class, drawn with
``numpy.random.default_rng(split_seed)``) come from the training file only; the test file is the test split.
Every channel is standard-scaled with the mean and standard deviation of the training part (over cases and
time points); regression targets stay in their own units (metric RMSE). Unequal-length files give items
``(inputs (length_i, channels), target, length_i)`` batched by :func:`~.ts_format.pad_collate`.

The spec (channels, classes, loss and metric) depends on the data: ``build`` sets :attr:`UeaTask.spec` to
the spec of the data it built (read ``task.spec`` after ``build``); before any build it is the generic one.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from dataclasses import dataclass, replace

import numpy as np

from ..validation import ConfigError
from .base import Splits, TaskSpec, check_float, check_int, check_seed, resolve_options
from .download import DataUnavailableError, data_root, fetch, file_digest, verify
from .ts_format import RaggedSequenceDataset, SequenceDataset, TsData, pad_collate, read_ts, read_ts_from_zip

ARCHIVE_URL = "https://timeseriesclassification.com/aeon-toolkit/{name}.zip"


def bundled_dir() -> pathlib.Path | None:
    """The directory of the data sets bundled with the installed aeon (without importing aeon), or None."""
    spec = importlib.util.find_spec("aeon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return path if path.is_dir() else None


def bundled_names() -> list[str]:
    """Names of the bundled data sets that have ``NAME_TRAIN.ts`` and ``NAME_TEST.ts``."""
    root = bundled_dir()
    if root is None:
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if (p / f"{p.name}_TRAIN.ts").is_file() and (p / f"{p.name}_TEST.ts").is_file()
    )


def _fetch_recorded(name: str, data_dir) -> pathlib.Path:
    """``<data root>/uea/NAME.zip``, downloaded on first use; its sha256 recorded then, checked afterwards."""
    dest = data_root(data_dir) / "uea" / f"{name}.zip"
    sidecar = dest.with_name(dest.name + ".sha256")
    if dest.is_file() and sidecar.is_file():
        verify(dest, sha256=sidecar.read_text().strip())
        return dest
    if not dest.is_file():
        try:
            fetch(ARCHIVE_URL.format(name=name), dest)
        except DataUnavailableError as err:
            bundled = ", ".join(bundled_names()) or "(none: aeon is not installed)"
            raise DataUnavailableError(
                f"data set {name!r} is not bundled with aeon and could not be downloaded ({err}). Bundled data "
                f"sets: {bundled}. Or give your own files: --set train=FILE.ts --set test=FILE.ts"
            ) from None
    tmp = sidecar.with_name(f"{sidecar.name}.tmp-{os.getpid()}")
    tmp.write_text(file_digest(dest, "sha256") + "\n")
    os.replace(tmp, sidecar)
    return dest


def load_uea(dataset: str = "", train: str = "", test: str = "", data_dir=None) -> tuple[TsData, TsData]:
    """The train and test files of data set ``dataset`` (bundled or downloaded), or the files ``train`` and
    ``test``; they must agree on channels and on classification/regression."""
    if bool(dataset) == bool(train or test) or bool(train) != bool(test):
        raise ConfigError(
            "give either option 'dataset' (a UEA/UCR or Monash name) or both options 'train' and 'test' "
            f"(.ts files), got dataset={dataset!r}, train={train!r}, test={test!r}"
        )
    if dataset:
        root = bundled_dir()
        folder = root / dataset if root is not None else None
        if folder is not None and (folder / f"{dataset}_TRAIN.ts").is_file():
            tr, te = read_ts(folder / f"{dataset}_TRAIN.ts"), read_ts(folder / f"{dataset}_TEST.ts")
        else:
            archive = _fetch_recorded(dataset, data_dir)
            tr = read_ts_from_zip(archive, f"{dataset}_TRAIN.ts")
            te = read_ts_from_zip(archive, f"{dataset}_TEST.ts")
    else:
        for key, path in (("train", train), ("test", test)):
            if not pathlib.Path(path).expanduser().is_file():
                raise ConfigError(f"option {key!r}: {path} is not a file")
        tr, te = read_ts(pathlib.Path(train).expanduser()), read_ts(pathlib.Path(test).expanduser())
    if tr.class_labels != te.class_labels and (tr.is_classification or te.is_classification):
        raise ConfigError(
            f"the train and test files disagree on the classes: {tr.class_labels} vs {te.class_labels}"
        )
    if _channels(tr) != _channels(te):
        raise ConfigError(f"the train file has {_channels(tr)} channels, the test file {_channels(te)}")
    return tr, te


def _channels(ts: TsData) -> int:
    return ts.values.shape[2] if ts.equal_length else ts.values[0].shape[1]


def to_collection(ts: TsData) -> tuple[np.ndarray | list[np.ndarray], np.ndarray]:
    """A parsed file in aeon's collection format: ``X`` (n_cases, n_channels, n_timepoints) or a list of
    (n_channels, n_timepoints_i) arrays, and ``y`` (class labels as str, or float targets)."""
    X = ts.values.transpose(0, 2, 1) if ts.equal_length else [v.T for v in ts.values]
    return X, ts.labels


def stratified_split(
    labels: np.ndarray | None, n: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation indices of ``n`` cases: ``round(fraction * n)`` (at least 1) validation cases,
    drawn per class in proportion (``labels``: int codes, or None for regression)."""
    rng = np.random.default_rng(seed)
    n_valid = max(1, round(fraction * n))
    if n_valid >= n:
        raise ConfigError(f"option 'valid_fraction' ({fraction}) leaves no training case of the {n} cases")
    if labels is None:
        valid = rng.permutation(n)[:n_valid]
    else:  # every class gets its share (largest remainders), at least one case left for training
        classes, counts = np.unique(labels, return_counts=True)
        share = counts * n_valid / n
        take = np.floor(share).astype(int)
        for i in np.argsort(-(share - take))[: n_valid - take.sum()]:
            take[i] += 1
        take = np.minimum(take, counts - 1)
        valid = np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
        )
    mask = np.zeros(n, dtype=bool)
    mask[valid] = True
    return np.flatnonzero(~mask), np.flatnonzero(mask)


@dataclass
class Prepared:
    """The spec and splits of one pair of files."""

    spec: TaskSpec
    splits: Splits


GENERIC_SPEC = TaskSpec(
    name="uea",
    description="any UEA/UCR or Monash data set (--set dataset=NAME) or your own .ts files (--set train=FILE "
    "--set test=FILE); classification (accuracy) or regression (RMSE) from the file header",
    input_size=1,
    output_size=2,
    readout="last",
    loss="cross_entropy",
    metric="accuracy",
    higher_is_better=True,
    default_options={"dataset": "", "train": "", "test": "", "valid_fraction": 0.2, "split_seed": 0},
    default_preset="default",
)


def prepare(tr: TsData, te: TsData, valid_fraction: float, split_seed: int) -> Prepared:
    """Split, scale and wrap the parsed files; the spec follows the data (see the module docstring)."""
    classification = tr.is_classification
    if classification:
        y_tr, y_te = tr.encoded_labels(), te.encoded_labels()
        if len(np.unique(y_tr)) < 2:
            raise ConfigError(
                f"the training file holds a single class ({tr.labels[0]!r}); a classifier needs two"
            )
    else:
        y_tr = tr.labels.astype(np.float32)[:, None]
        y_te = te.labels.astype(np.float32)[:, None]
    for ts in (tr, te):
        bad = [i for i, c in enumerate(ts.values) if not np.isfinite(c).all()]
        if bad:
            raise ConfigError(
                f"{ts.problem_name or 'a file'}: case {bad[0]} holds missing or non-finite values"
            )
    train_idx, valid_idx = stratified_split(
        y_tr if classification else None, len(y_tr), valid_fraction, split_seed
    )
    values = [tr.values[i] for i in train_idx]
    stacked = np.concatenate(values)
    mean, std = stacked.mean(axis=0), stacked.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def dataset(ts: TsData, idx, y):
        if ts.equal_length:
            return SequenceDataset(((ts.values[idx] - mean) / std).astype(np.float32), y[idx])
        return RaggedSequenceDataset([((ts.values[i] - mean) / std).astype(np.float32) for i in idx], y[idx])

    ragged = not (tr.equal_length and te.equal_length)
    if ragged:  # one item layout for every split
        tr, te = (_as_ragged(tr), _as_ragged(te))
    splits = Splits(
        dataset(tr, train_idx, y_tr),
        dataset(tr, valid_idx, y_tr),
        dataset(te, np.arange(len(y_te)), y_te),
        collate_fn=pad_collate if ragged else None,
    )
    name = tr.problem_name or "ts files"
    spec = replace(
        GENERIC_SPEC,
        description=f"{name}: {'classification' if classification else 'regression'} ({GENERIC_SPEC.description})",
        input_size=_channels(tr),
        output_size=len(tr.class_labels) if classification else 1,
        loss="cross_entropy" if classification else "mse",
        metric="accuracy" if classification else "rmse",
        higher_is_better=classification,
    )
    return Prepared(spec, splits)


def _as_ragged(ts: TsData) -> TsData:
    if not ts.equal_length:
        return ts
    return replace(ts, values=list(ts.values))


class UeaTask:
    """Any UEA/UCR or Monash data set, or a pair of ``.ts`` files (see the module docstring)."""

    def __init__(self) -> None:
        self.spec = GENERIC_SPEC

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Read, split (from the training file), scale; ``self.spec`` becomes the spec of these data."""
        opts = resolve_options(GENERIC_SPEC, options)
        check_seed(seed)
        fraction = check_float("valid_fraction", opts["valid_fraction"])
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"option 'valid_fraction' must be in (0, 1), got {fraction}")
        split_seed = check_int("split_seed", opts["split_seed"], 0)
        for key in ("dataset", "train", "test"):
            if not isinstance(opts[key], str):
                raise ConfigError(f"option {key!r} must be a name or a path, got {opts[key]!r}")
        tr, te = load_uea(opts["dataset"], opts["train"], opts["test"], data_dir)
        prepared = prepare(tr, te, fraction, split_seed)
        self.spec = prepared.spec
        return prepared.splits
