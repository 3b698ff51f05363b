"""Property-based tests of damaged inputs: run directories whose files are truncated, garbage, foreign or
missing, read by every command that reads a run; and damaged data files for every task loader. Each must end
in a documented exit code with one error line (no traceback), or succeed; no temporary file is left.

Examples are derandomized (the same in every CI run); the ``slow`` variants draw more of them. Inputs that hit
bugs tracked under other items of the reliability issue are left out of generation (see the comments).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import pickle
import shutil
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TINY_TRAIN_SETS, assert_cli_contract

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from unicornn.cli import EXIT_CODES, main  # noqa: E402

_FAST = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
_SLOW = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))

# ------------------------------------------------------------------------------------------------------------
# damaged run directories
# ------------------------------------------------------------------------------------------------------------

RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "best.pt", "result.json")
_SETS = [x for s in (*TINY_TRAIN_SETS, "epochs=1") for x in ("--set", s)]
#: The commands that read a run directory; RUN and OUT are filled in per example.
READERS = {
    "train --resume": ["train", "adding", "--out", "{OUT}", "--resume", "--quiet", "--no-tensorboard", *_SETS,
                       "--set", "epochs=2"],
    "eval": ["eval", "{RUN}", "--device", "cpu"],
    "eval checkpoint.pt": ["eval", "{RUN}/checkpoint.pt", "--device", "cpu"],
    "report": ["report", "{OUT}"],
    "plot timesteps": ["plot", "timesteps", "{RUN}", "--bins", "3"],
    "diagnose states": ["diagnose", "states", "{RUN}", "--steps", "4", "--batch", "1", "--out", "{OUT}/claims"],
}  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """OUT of one tiny finished run (OUT/adding/seed-0)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(["train", "adding", "--out", str(out), "--quiet", "--no-tensorboard", *_SETS]) == 0
    return out


def _foreign_json() -> st.SearchStrategy[bytes]:
    values = [{}, [], None, 3, "x", {"spec": 1}, {"task": 5, "settings": []}, {"name": "other-tool", "version": 2},
              {"task": "adding", "settings": {"epochs": "many"}, "task_options": None}]  # fmt: skip
    return st.sampled_from([json.dumps(v).encode() for v in values])


def _foreign_checkpoint() -> st.SearchStrategy[bytes]:
    objs = [{"a": 1}, torch.zeros(3), {"model": {}, "record": {}}, {"model": {"w": torch.ones(2)}, "epoch": "x",
            "record": {"task": "adding", "settings": {}}}, [1, 2]]  # fmt: skip

    def saved(obj) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    return st.sampled_from([saved(o) for o in objs])


@st.composite
def damage(draw, name: str, original: bytes):
    """New bytes for run file ``name`` (None: delete it; "dir": a directory in its place)."""
    kind = draw(
        st.sampled_from(["truncate", "garbage", "flip", "empty", "foreign", "delete", "dir", "non-utf8"])
    )
    if kind == "truncate":
        return original[: draw(st.integers(0, max(len(original) - 1, 0)))]
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=200))
    if kind == "flip":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 5))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "empty":
        return b""
    if kind == "foreign":
        return draw(_foreign_json() if name.endswith(".json") else _foreign_checkpoint() if name.endswith(".pt")
                    else st.sampled_from([b'{"epoch": 1}\n{"x"', b"[]\n", b'{"epoch": "one"}\n']))  # fmt: skip
    if kind == "non-utf8":
        return b"\xff\xfe\x80" + original[3:]
    return None if kind == "delete" else "dir"


def check_damaged_run(data, finished_run, capsys, tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged")
    shutil.copytree(finished_run, out, dirs_exist_ok=True)
    run = out / "adding" / "seed-0"
    reader = data.draw(st.sampled_from(sorted(READERS)), label="reader")
    names = data.draw(
        st.lists(st.sampled_from(RUN_FILES), min_size=1, max_size=2, unique=True), label="files"
    )
    if reader == "report":  # item 9: report on foreign/empty config.json, non-UTF-8 or short metrics rows
        names = [n for n in names if n not in ("config.json", "metrics.jsonl")] or ["result.json"]
    given = {}
    for name in names:
        new = data.draw(damage(name, (run / name).read_bytes()), label=name)
        (run / name).unlink()
        if new == "dir":
            (run / name).mkdir()
        elif new is not None:
            (run / name).write_bytes(new)
            given[run / name] = new
    argv = [a.replace("{RUN}", str(run)).replace("{OUT}", str(out)) for a in READERS[reader]]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    assert_cli_contract(code, capsys.readouterr().err, out, given=given)


@_FAST
@given(data=st.data())
def test_damaged_run_directories_give_one_line_errors(data, finished_run, capsys, tmp_path_factory):
    check_damaged_run(data, finished_run, capsys, tmp_path_factory)


@pytest.mark.slow
@_SLOW
@given(data=st.data())
def test_damaged_run_directories_give_one_line_errors_longer(data, finished_run, capsys, tmp_path_factory):
    check_damaged_run(data, finished_run, capsys, tmp_path_factory)


# ------------------------------------------------------------------------------------------------------------
# damaged data files, one reader per task's file format
# ------------------------------------------------------------------------------------------------------------

#: What the command line turns into one line (cli.EXIT_CODES); anything else escaping a reader is a traceback.
ONE_LINE = tuple(kind for kind, _ in EXIT_CODES)


def _idx_images(n=3) -> bytes:
    return (
        struct.pack(">BBBBIII", 0, 0, 0x08, 3, n, 28, 28)
        + (bytes(range(256)) * (n * 784 // 256 + 1))[: n * 784]
    )


def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


def _cifar_archive() -> bytes:
    from unicornn.tasks.cifar10 import BATCH_DIR, TEST_BATCH, TRAIN_BATCHES

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in (*TRAIN_BATCHES, TEST_BATCH):
            batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
            body = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{BATCH_DIR}/{name}")
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _imdb_archive() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for split in ("train", "test"):
            for label, rating in (("pos", 9), ("neg", 2)):
                body = f"A {label} review.<br />It was fine.".encode()
                info = tarfile.TarInfo(f"aclImdb/{split}/{label}/0_{rating}.txt")
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def _glove_zip() -> bytes:
    from unicornn.tasks.imdb import GLOVE_MEMBER

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(GLOVE_MEMBER, "".join(f"{w} " + " ".join(["0.5"] * 100) + "\n" for w in ("a", "review")))
    return buf.getvalue()


_TS = (
    "#comment\n@problemName x\n@timeStamps false\n@missing false\n@univariate false\n@dimensions 2\n"
    "@equalLength true\n@seriesLength 3\n@classLabel true a b\n@data\n"
    "1,2,3:4,5,6:a\n7,8,9:1,2,3:b\n"
)


def _ts_zip(member: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"EigenWorms/{member}", _TS)
    return buf.getvalue()


def _readers():
    """``{format: (file name, valid bytes, reader(path))}``: every task loader's parsing of its files."""
    from unicornn.tasks.cifar10 import read_cifar10
    from unicornn.tasks.eigenworms import TEST_FILE
    from unicornn.tasks.imdb import glove_from_zip, read_reviews
    from unicornn.tasks.mnist import read_mnist_images, read_mnist_labels
    from unicornn.tasks.ts_format import read_ts, read_ts_from_zip

    labels = struct.pack(">BBBBI", 0, 0, 0x08, 1, 4) + bytes([1, 2, 3, 9])

    def read_small_cifar10(path):  # the archive of _cifar_archive: 5 x 2 training, 2 test images
        from unittest import mock

        with mock.patch.multiple("unicornn.tasks.cifar10", N_TRAIN_FILES=10, N_TEST_FILES=2):
            return read_cifar10(path)

    return {
        "mnist images (idx.gz)": ("images-idx3-ubyte.gz", _gz(_idx_images()), read_mnist_images),
        "mnist labels (idx.gz)": ("labels-idx1-ubyte.gz", _gz(labels), read_mnist_labels),
        "mnist images (idx)": ("images-idx3-ubyte", _idx_images(), read_mnist_images),
        "cifar-10 (tar.gz of pickles)": ("cifar-10-python.tar.gz", _cifar_archive(), read_small_cifar10),
        "imdb (tar.gz of texts)": ("aclImdb_v1.tar.gz", _imdb_archive(), read_reviews),
        "glove (zip)": ("glove.6B.zip", _glove_zip(), lambda p: glove_from_zip(p, {"a": 0, "review": 1})),
        "ts (BIDMC, UEA)": ("x_TRAIN.ts", _TS.encode(), read_ts),
        "eigenworms (zip of .ts)": (
            "EigenWorms.zip",
            _ts_zip(TEST_FILE),
            lambda p: read_ts_from_zip(p, TEST_FILE),
        ),
    }


READERS_OF_DATA = _readers()

#: Formats whose damaged files are still tracebacks: format -> why (empty: every format's damage is one line).
KNOWN_DATA: dict[str, str] = {}


@st.composite
def damaged_bytes(draw, original: bytes) -> bytes:
    kind = draw(st.sampled_from(["truncate", "garbage", "flip", "empty", "append", "recompress"]))
    if kind == "truncate":
        return original[: draw(st.integers(0, len(original) - 1))]
    if kind == "garbage":
        return draw(st.binary(min_size=1, max_size=300))
    if kind == "flip":
        data = bytearray(original)
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= draw(st.integers(1, 255))
        return bytes(data)
    if kind == "append":
        return original + draw(st.binary(min_size=1, max_size=50))
    if kind == "recompress":  # the right content in another compression
        return bz2.compress(original)
    return b""


def check_damaged_data(fmt, data, tmp_path_factory):
    name, original, reader = READERS_OF_DATA[fmt]
    path = tmp_path_factory.mktemp("data") / name
    path.write_bytes(data.draw(damaged_bytes(original), label="bytes"))
    try:
        reader(path)
    except ONE_LINE:
        pass


def test_the_data_readers_accept_their_valid_files(tmp_path):
    for name, original, reader in READERS_OF_DATA.values():
        (tmp_path / name).write_bytes(original)
        reader(tmp_path / name)


def _data_params():
    return [
        pytest.param(f, marks=pytest.mark.xfail(reason=KNOWN_DATA[f], strict=False)) if f in KNOWN_DATA else f
        for f in READERS_OF_DATA
    ]


@pytest.mark.parametrize("fmt", _data_params())
@_FAST
@given(data=st.data())
def test_damaged_data_files_give_one_line_errors(fmt, data, tmp_path_factory):
    check_damaged_data(fmt, data, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", _data_params())
@_SLOW
@given(data=st.data())
def test_damaged_data_files_give_one_line_errors_longer(fmt, data, tmp_path_factory):
    check_damaged_data(fmt, data, tmp_path_factory)
