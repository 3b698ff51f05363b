"""Reader for the ``.ts`` time-series format of the UEA/UCR classification and Monash regression archives.

No network; numpy only for the parsing (the helpers at the end build torch datasets). The format (as written by the archives and by aeon/sktime):

* ``#`` lines are comments; blank lines are ignored;
* header lines start with ``@`` (tags are case-insensitive): ``@problemName <name>``, ``@timeStamps
  true|false``, ``@missing true|false``, ``@univariate true|false``, ``@dimensions <d>``, ``@equalLength
  true|false``, ``@seriesLength <n>``, then either ``@classLabel true <label> <label> ...`` (classification)
  or ``@targetLabel true`` (regression), and finally ``@data``;
* after ``@data``, one case per line: the channels separated by ``:``, each a comma-separated list of
  values (``?`` = missing, read as NaN), then ``:`` and the case's class label or numeric target.

Supported: series without timestamps, of equal length (what EigenWorms and the BIDMC32 files are) or of
unequal length across cases (``@equalLength false``, e.g. JapaneseVowels; the channels of one case must still
have one length); anything else raises :class:`TsFormatError` naming the file and line.
"""

from __future__ import annotations

import io
import json
import pathlib
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import torch
from torch.utils.data import Dataset

from .download import DAMAGED_ZIP_ERRORS, DataUnavailableError


class TsFormatError(DataUnavailableError, ValueError):
    """A file is not a valid (supported) ``.ts`` file; the message names the file and line. A data error (the
    command line reports it in one line), and a ``ValueError``."""


@dataclass
class TsData:
    """One parsed ``.ts`` file.

    ``values``: float64 ``(n_cases, length, n_channels)`` (time first, like the task inputs) when every case
    has the same length, else a list of ``(length_i, n_channels)`` arrays (see :attr:`equal_length`);
    ``labels``: ``(n_cases,)``, str for classification, float64 for regression;
    ``class_labels``: the declared class labels in header order (classification) or None (regression).
    """

    values: np.ndarray
    labels: np.ndarray
    problem_name: str
    class_labels: list[str] | None
    header: dict = field(default_factory=dict)

    @property
    def equal_length(self) -> bool:
        """True when ``values`` is one array (every case has the same length)."""
        return isinstance(self.values, np.ndarray)

    @property
    def lengths(self) -> np.ndarray:
        """The number of time points of every case, int64 ``(n_cases,)``."""
        if self.equal_length:
            return np.full(len(self.values), self.values.shape[1], dtype=np.int64)
        return np.array([len(v) for v in self.values], dtype=np.int64)

    @property
    def is_classification(self) -> bool:
        return self.class_labels is not None

    def encoded_labels(self) -> np.ndarray:
        """Class labels as int64 codes 0..k-1, in the order the header's ``@classLabel`` lists them."""
        if self.class_labels is None:
            raise TsFormatError(f"{self.problem_name}: a regression file has no class labels to encode")
        return encode_labels(self.labels, self.class_labels)


def encode_labels(labels: Iterable[str], class_labels: list[str]) -> np.ndarray:
    """Map each label to its index in ``class_labels``; unknown labels raise TsFormatError."""
    index = {c: i for i, c in enumerate(class_labels)}
    try:
        return np.array([index[lab] for lab in labels], dtype=np.int64)
    except KeyError as err:
        raise TsFormatError(
            f"label {err.args[0]!r} is not one of the declared classes {class_labels}"
        ) from None


_BOOL_TAGS = ("timestamps", "missing", "univariate", "equallength", "classlabel", "targetlabel")


def _parse_bool(value: str, tag: str, where: str) -> bool:
    v = value.strip().lower()
    if v not in ("true", "false"):
        raise TsFormatError(f"{where}: @{tag} expects true or false, got {value!r}")
    return v == "true"


def _parse_values(text: str, where: str) -> np.ndarray:
    """Comma-separated numbers (``?`` = missing) -> float64 array; anything unparsable raises."""
    n_expected = text.count(",") + 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # numpy warns (and stops) on a bad token
        try:
            values = np.fromstring(text.replace("?", "nan"), dtype=np.float64, sep=",")
        except (DeprecationWarning, ValueError):
            values = None
    if values is None or values.size != n_expected:
        raise TsFormatError(f"{where}: a channel holds a value that is not a number: {text[:60]!r}...")
    return values


def parse_ts(lines: Iterable[str], name: str = "<ts>") -> TsData:
    """Parse the lines of a ``.ts`` file (see the module docstring) into :class:`TsData`."""
    header: dict = {}
    class_labels: list[str] | None = None
    regression = False
    in_data = False
    rows: list[np.ndarray] = []
    labels: list = []
    n_channels = None
    length = None
    for line_no, raw in enumerate(lines, start=1):
        line = raw.strip()
        where = f"{name}, line {line_no}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise TsFormatError(f"{where}: expected a header line starting with '@' before @data")
            tag, _, value = line[1:].partition(" ")
            tag = tag.lower()
            if tag == "data":
                in_data = True
                if class_labels is None and not regression:
                    raise TsFormatError(f"{where}: @data before a @classLabel or @targetLabel line")
                if header.get("timestamps"):
                    raise TsFormatError(f"{where}: files with @timeStamps true are not supported")
                continue
            if tag == "classlabel":
                parts = value.split()
                if not parts or not _parse_bool(parts[0], tag, where):
                    raise TsFormatError(f"{where}: only '@classLabel true <labels...>' is supported")
                if len(parts) < 2:
                    raise TsFormatError(f"{where}: @classLabel true must list the class labels")
                class_labels = parts[1:]
            elif tag == "targetlabel":
                if not _parse_bool(value, tag, where):
                    raise TsFormatError(f"{where}: only '@targetLabel true' is supported")
                regression = True
            elif tag in _BOOL_TAGS:
                header[tag] = _parse_bool(value, tag, where)
            elif tag in ("serieslength", "dimensions"):
                try:
                    header[tag] = int(value)
                except ValueError:
                    raise TsFormatError(f"{where}: @{tag} expects an integer, got {value!r}") from None
            else:
                header[tag] = value.strip()
            continue
        fields = line.split(":")
        if len(fields) < 2:
            raise TsFormatError(f"{where}: a case needs at least one channel and a label separated by ':'")
        label = fields[-1].strip()
        channels = [_parse_values(f, where) for f in fields[:-1]]
        if n_channels is None:
            n_channels, length = len(channels), len(channels[0])
        if len(channels) != n_channels:
            raise TsFormatError(f"{where}: {len(channels)} channels, the first case had {n_channels}")
        if any(len(c) != len(channels[0]) for c in channels):
            got = [len(c) for c in channels]
            raise TsFormatError(f"{where}: ragged channels: the channel lengths {got} of this case differ")
        if len(channels[0]) != length and header.get("equallength", False):
            raise TsFormatError(
                f"{where}: {len(channels[0])} time points, the first case had {length}, but the header says "
                "@equalLength true"
            )
        rows.append(np.stack(channels, axis=-1))
        if regression:
            try:
                labels.append(float(label))
            except ValueError:
                raise TsFormatError(f"{where}: target {label!r} is not a number") from None
        else:
            labels.append(label)
    if not in_data:
        raise TsFormatError(f"{name}: no @data line")
    if not rows:
        raise TsFormatError(f"{name}: no cases after @data")
    equal = all(len(r) == length for r in rows)
    for tag, expected in (("dimensions", n_channels), ("serieslength", length if equal else None)):
        if tag in header and header[tag] != expected:
            got = expected if expected is not None else "unequal lengths"
            raise TsFormatError(f"{name}: @{tag} says {header[tag]} but the cases have {got}")
    values = np.stack(rows) if equal else rows
    if class_labels is not None:
        label_array = np.array(labels, dtype=str)
        encode_labels(label_array, class_labels)  # every label must be declared
    else:
        label_array = np.array(labels, dtype=np.float64)
    return TsData(values, label_array, header.get("problemname", ""), class_labels, header)


def read_ts(path: str | pathlib.Path) -> TsData:
    """Read a ``.ts`` file from disk (text, UTF-8 with Latin-1 fallback for odd comment bytes)."""
    path = pathlib.Path(path)
    data = path.read_bytes()
    return parse_ts(_decode(data).splitlines(), str(path))


def read_ts_from_zip(zip_path: str | pathlib.Path, member: str) -> TsData:
    """Read the ``.ts`` file ``member`` (matched by its base name) from the zip archive ``zip_path``."""
    zip_path = pathlib.Path(zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            matches = [n for n in archive.namelist() if pathlib.PurePosixPath(n).name == member]
            if len(matches) != 1:
                raise TsFormatError(f"{zip_path}: expected one member named {member}, found {len(matches)}")
            with archive.open(matches[0]) as f:
                text = _decode(f.read())
    except DAMAGED_ZIP_ERRORS as err:
        raise TsFormatError(f"{zip_path}: not a valid zip archive ({err!r:.200})") from err
    return parse_ts(io.StringIO(text), f"{zip_path}:{matches[0]}")


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def merge_train_test(train: TsData, test: TsData) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the cases of the archive's train and test files, train first, in file order.

    Returns ``(values (n_train + n_test, length, channels), labels)``; labels are int64 codes (header order)
    for classification, float64 targets for regression. The two files must agree on layout and classes.
    """
    if train.class_labels != test.class_labels:
        raise TsFormatError(
            f"train and test files disagree on the classes: {train.class_labels} vs {test.class_labels}"
        )
    if not (train.equal_length and test.equal_length):
        raise TsFormatError(
            "train and test files hold unequal-length series, which cannot be merged into one array"
        )
    if train.values.shape[1:] != test.values.shape[1:]:
        raise TsFormatError(
            f"train and test cases differ in (length, channels): {train.values.shape[1:]} vs "
            f"{test.values.shape[1:]}"
        )
    values = np.concatenate([train.values, test.values])
    if train.is_classification:
        labels = np.concatenate([train.encoded_labels(), test.encoded_labels()])
    else:
        labels = np.concatenate([train.labels, test.labels])
    return values, labels


# --- helpers shared by the tasks built on these archives (EigenWorms, BIDMC32) ---------------------------


def load_split(filename: str, n_cases: int) -> dict[str, np.ndarray]:
    """The shipped index lists ``{"train", "valid", "test"}`` (int64) of ``tasks/data/<filename>``.

    They index the merged cases (train file first, then test file) and must partition ``range(n_cases)``;
    ``scripts/make_splits.py`` documents and regenerates them.
    """
    doc = json.loads(resources.files(__package__).joinpath("data", filename).read_text())
    if doc.get("n_cases") != n_cases:
        raise ValueError(f"{filename} is for {doc.get('n_cases')} cases, the data have {n_cases}")
    split = {k: np.asarray(doc[k], dtype=np.int64) for k in ("train", "valid", "test")}
    merged = np.sort(np.concatenate(list(split.values())))
    if not np.array_equal(merged, np.arange(n_cases)):
        raise ValueError(f"{filename} does not partition the {n_cases} cases")
    return split


def channel_scaler(train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation (ddof 0) of ``train`` ``(n, length, channels)``.

    Accumulated in float64; a constant channel gets std 1 (it is only centred).
    """
    x = np.asarray(train, dtype=np.float64)
    mean = x.mean(axis=(0, 1))
    std = x.std(axis=(0, 1))
    return mean, np.where(std > 0, std, 1.0)


class SequenceDataset(Dataset):
    """Fixed sequences with one target each: ``inputs`` float32 ``(n, length, channels)``, ``targets`` ``(n, ...)``.

    Item ``i`` is ``(inputs[i] (length, channels), targets[i])``.
    """

    def __init__(self, inputs, targets) -> None:
        inputs = torch.as_tensor(inputs, dtype=torch.float32)
        targets = torch.as_tensor(targets)
        if inputs.ndim != 3 or targets.shape[:1] != inputs.shape[:1]:
            raise ValueError(
                f"inputs must be (n, length, channels) and targets (n, ...), got {tuple(inputs.shape)} and "
                f"{tuple(targets.shape)}"
            )
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


class RaggedSequenceDataset(Dataset):
    """Sequences of unequal length, one target each: ``inputs`` a list of float ``(length_i, channels)`` arrays.

    Item ``i`` is ``(inputs[i] (length_i, channels) float32, targets[i], length_i int64)``; batch them with
    :func:`pad_collate`, which pads to the batch's longest sequence and keeps the lengths, so that a model
    reading each sequence at its own last step never sees the padding.
    """

    def __init__(self, inputs, targets) -> None:
        self.inputs = [torch.as_tensor(np.asarray(x), dtype=torch.float32) for x in inputs]
        self.targets = torch.as_tensor(targets)
        channels = {x.shape[1] if x.ndim == 2 else None for x in self.inputs}
        if len(channels) != 1 or None in channels or self.targets.shape[:1] != (len(self.inputs),):
            raise ValueError(
                "inputs must be a list of (length_i, channels) arrays with one channel count and targets "
                f"(n, ...) with n = {len(self.inputs)}, got channel counts {sorted(map(str, channels))} and "
                f"targets {tuple(self.targets.shape)}"
            )
        if any(len(x) == 0 for x in self.inputs):
            raise ValueError("every sequence needs at least one time point")

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        return x, self.targets[index], torch.tensor(len(x), dtype=torch.int64)


def pad_collate(batch: list) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Items of :class:`RaggedSequenceDataset` -> ``(inputs (B, N_max, channels) zero-padded after each
    sequence's end, targets (B, ...), lengths (B,) int64)``."""
    inputs, targets, lengths = zip(*batch)
    padded = torch.nn.utils.rnn.pad_sequence(list(inputs), batch_first=True)
    return padded, torch.stack(list(targets)), torch.stack(list(lengths))
