"""BIDMC32 respiratory rate and heart rate (``bidmc-rr``, ``bidmc-hr``, paper Table 4).

Data: the Monash TSER archive's ``BIDMC32RR_{TRAIN,TEST}.ts`` (Zenodo record 4001463) and
``BIDMC32HR_{TRAIN,TEST}.ts`` (record 4001456): 7,949 windows of 32 s of PhysioNet's BIDMC records at 125 Hz
(4,000 steps), 2 channels (PPG, ECG), one target per window (breaths or beats per minute). Kept in
``<data root>/bidmc32rr/`` or ``<data root>/bidmc32hr/``.

Verification: each file is checked against the md5 that its Zenodo record publishes
(``https://zenodo.org/api/records/<id>``, ``files[].checksum``), read when the file is downloaded; the
verified md5 is then stored beside the file as ``<file>.md5`` and every later use checks the file against
it. For files placed by hand, the record's md5 is fetched once if the network is reachable; offline, put the
md5 shown on the record's page into ``<file>.md5`` (the error message names the file and the page), as the page
shows it (``md5:<hash>``) or the digits alone. A damaged file is a :class:`DataUnavailableError` naming it.

Pipeline: train and test files merged (train first, file order), split 5563/1193/1193 by the shipped index
lists ``data/bidmc32_split.json`` (Morrill et al.'s seed-0 procedure, see ``scripts/make_splits.py``);
each input channel standard-scaled with the training split's statistics; targets kept in their raw units.
Inputs float32 ``(4000, 2)``, target float32 ``(1,)``. Metric: RMSE on the raw targets (the paper's
"L2 error"); model selection on the lowest validation RMSE.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import urllib.request
from dataclasses import dataclass

import numpy as np

from .base import Splits, TaskSpec, check_seed, resolve_options
from .download import (
    DataUnavailableError,
    MissingFile,
    data_root,
    describe_error,
    fetch,
    raise_collected,
    verify,
)
from .ts_format import SequenceDataset, channel_scaler, load_split, merge_train_test, read_ts

LENGTH, CHANNELS = 4000, 2
SPLIT_FILE = "bidmc32_split.json"
ZENODO_API = "https://zenodo.org/api/records/{record}"
ZENODO_FILE = "https://zenodo.org/record/{record}/files/{name}"


@dataclass(frozen=True)
class BidmcTarget:
    """One BIDMC32 regression problem: task name, archive problem name, Zenodo record, what the target is."""

    task: str
    problem: str
    record: int
    target: str

    @property
    def files(self) -> tuple[str, str]:
        return f"{self.problem}_TRAIN.ts", f"{self.problem}_TEST.ts"

    def directory(self, data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
        return data_root(data_dir) / self.problem.lower()

    def record_page(self) -> str:
        return f"https://zenodo.org/records/{self.record}"


TARGETS = {
    "rr": BidmcTarget("bidmc-rr", "BIDMC32RR", 4001463, "respiratory rate (breaths per minute)"),
    "hr": BidmcTarget("bidmc-hr", "BIDMC32HR", 4001456, "heart rate (beats per minute)"),
}


def record_md5(record: int, name: str, timeout: float = 30.0) -> str:
    """The md5 that Zenodo record ``record`` publishes for file ``name``; OSError if it cannot be read."""
    request = urllib.request.Request(ZENODO_API.format(record=record), headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            doc = json.loads(response.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise OSError(f"unreadable record metadata ({err})") from err
    for entry in doc.get("files", []):
        if entry.get("key") == name and str(entry.get("checksum", "")).startswith("md5:"):
            return entry["checksum"][4:]
    raise OSError(f"record {record} lists no md5 for {name}")


def read_md5_file(sidecar: pathlib.Path, page: str) -> str:
    """The md5 in ``sidecar``: 32 hex digits, optionally written ``md5:<hash>`` as the record's page shows it;
    a :class:`DataUnavailableError` naming the file otherwise."""
    try:
        text = sidecar.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as err:
        text = f"unreadable: {err}"
    md5 = text[4:].strip() if text[:4].lower() == "md5:" else text
    if len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5.lower()):
        raise DataUnavailableError(
            f"{sidecar} should hold the md5 of {sidecar.stem} (32 hex digits, or md5:<digits> as {page} shows "
            f"it), but holds {text[:80]!r}: correct it or delete it"
        )
    return md5.lower()


def _write_sidecar(path: pathlib.Path, md5: str) -> None:
    part = path.with_name(f"{path.name}.part-{secrets.token_hex(6)}")
    try:
        part.write_text(md5 + "\n")
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def fetch_verified(
    target: BidmcTarget, name: str, data_dir: str | pathlib.Path | None = None
) -> pathlib.Path:
    """Make sure ``name`` is present and matches its record's md5 (see the module docstring)."""
    directory = target.directory(data_dir)
    dest, sidecar = directory / name, directory / f"{name}.md5"
    url = ZENODO_FILE.format(record=target.record, name=name)
    if sidecar.is_file():
        md5 = read_md5_file(sidecar, target.record_page())
    else:
        try:
            md5 = record_md5(target.record, name)
        except OSError as err:
            if dest.is_file():
                raise DataUnavailableError(
                    f"{name} in {directory} cannot be verified offline ({err}): write the md5 shown for it on "
                    f"{target.record_page()} into {sidecar}, or run once with network access."
                ) from err
            checksum = f"md5 from {target.record_page()} into {sidecar.name}"
            reason = f"checksum unreadable: {describe_error(err)}"
            raise DataUnavailableError(missing=[MissingFile(name, url, checksum, directory, reason)]) from err
    if dest.is_file():
        verify(dest, md5=md5)
    else:
        fetch(url, dest, md5=md5)
    if not sidecar.is_file():
        _write_sidecar(sidecar, md5)
    return dest


def fetch_bidmc(target: BidmcTarget, data_dir: str | pathlib.Path | None = None) -> tuple[pathlib.Path, ...]:
    """Both files of ``target``, verified; one DataUnavailableError naming every file that is missing."""
    paths, errors = [], []
    for name in target.files:
        try:
            paths.append(fetch_verified(target, name, data_dir))
        except DataUnavailableError as err:
            errors.append(err)
    raise_collected(errors)
    return tuple(paths)


def load_bidmc(
    train_path: str | pathlib.Path, test_path: str | pathlib.Path
) -> tuple[np.ndarray, np.ndarray]:
    """Merged cases: ``(values float64 (n, 4000, 2), targets float64 (n,))``, train file first.

    Raises:
        TsFormatError: a file is not a readable ``.ts`` file (a :class:`DataUnavailableError`).
        DataUnavailableError: a file's cases are not (4000, 2) or hold missing or non-finite values (the
            message names the file and the first such case).
    """
    files = {train_path: read_ts(train_path), test_path: read_ts(test_path)}
    for path, data in files.items():
        replace = f"replace {path} (delete it and its .md5 to download it again)"
        if data.values.shape[1:] != (LENGTH, CHANNELS):
            raise DataUnavailableError(
                f"{path}: cases of (length, channels) {data.values.shape[1:]}, BIDMC32 has ({LENGTH}, "
                f"{CHANNELS}); {replace}"
            )
        bad = ~np.isfinite(data.values).all(axis=(1, 2)) | ~np.isfinite(data.labels)
        if bad.any():
            raise DataUnavailableError(
                f"{path}: case {int(np.argmax(bad)) + 1} holds missing or non-finite values; {replace}"
            )
    return merge_train_test(*files.values())


def make_splits(values: np.ndarray, targets: np.ndarray, split: dict) -> Splits:
    """Index, scale the inputs (training statistics), keep raw targets as float32 ``(1,)``; see the module."""
    mean, std = channel_scaler(values[split["train"]])
    scaled = ((values - mean) / std).astype(np.float32)
    y = targets.astype(np.float32)[:, None]
    return Splits(*(SequenceDataset(scaled[split[k]], y[split[k]]) for k in ("train", "valid", "test")))


def build_bidmc(target: BidmcTarget, data_dir: pathlib.Path | None) -> Splits:
    """Fetch, read, split and scale one BIDMC32 problem (the data do not depend on the run seed)."""
    paths = fetch_bidmc(target, data_dir)
    values, targets = load_bidmc(*paths)
    try:
        split = load_split(SPLIT_FILE, len(values))
    except ValueError as err:  # a file of another size than the archive's
        raise DataUnavailableError(
            f"{paths[0].parent}: {', '.join(p.name for p in paths)} hold {len(values)} cases, not the archive's "
            f"({err}); replace them (delete them and their .md5 files to download them again)"
        ) from None
    return make_splits(values, targets, split)


class BidmcTask:
    """BIDMC32RR or BIDMC32HR regression (``which`` = ``"rr"`` or ``"hr"``); no options."""

    def __init__(self, which: str) -> None:
        if which not in TARGETS:
            raise ValueError(f"which must be one of {sorted(TARGETS)}, got {which!r}")
        self.target = TARGETS[which]
        self.spec = TaskSpec(
            name=self.target.task,
            description=(
                f"{self.target.problem} (Monash TSER): predict the {self.target.target} of a 32 s window of "
                "PPG + ECG (4,000 steps, 2 channels); RMSE"
            ),
            input_size=CHANNELS,
            output_size=1,
            readout="last",
            loss="mse",
            metric="rmse",
            higher_is_better=False,
            default_options={},
            paper_tables="Tables 4, 6",
        )

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        resolve_options(self.spec, options)
        check_seed(seed)
        return build_bidmc(self.target, data_dir)
