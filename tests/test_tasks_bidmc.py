"""BIDMC32 pipeline on the real PhysioNet BIDMC record 01 (beside the repository), cut into 32 s windows
(4,000 samples at 125 Hz, channels PPG = PLETH and ECG = II) and written as miniature Monash-format .ts
files. The record's RR/HR reference values are not in the sample: the targets written here are stand-ins
(the window index + 10), enough to check that targets pass through unscaled."""

import hashlib
import importlib.util
import pathlib

import numpy as np
import pytest
import torch
from helpers import TEST_DATA, missing_sample

from unicornn.tasks import bidmc, download
from unicornn.tasks.bidmc import TARGETS, BidmcTask, build_bidmc, fetch_bidmc, load_bidmc
from unicornn.tasks.download import ChecksumError, DataUnavailableError
from unicornn.tasks.ts_format import load_split

REPO = pathlib.Path(__file__).resolve().parents[1]
RECORD = TEST_DATA / "bidmc" / "bidmc_01_Signals.csv"
pytestmark = pytest.mark.skipif(
    not RECORD.is_file(),
    reason=missing_sample("real BIDMC record", RECORD),
)
RR = TARGETS["rr"]


def windows():
    """The 15 non-overlapping 4,000-sample windows of record 01: float64 ``(15, 4000, 2)`` (PPG, ECG)."""
    lines = RECORD.read_text().splitlines()
    header = [h.strip() for h in lines[0].split(",")]
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    ppg, ecg = table[:, header.index("PLETH")], table[:, header.index("II")]
    n = len(table) // 4000
    return np.stack([ppg[: n * 4000].reshape(n, 4000), ecg[: n * 4000].reshape(n, 4000)], axis=-1)


def write_ts(path, values, targets, problem="BIDMC32RR"):
    lines = [
        f"@problemName {problem}",
        "@timeStamps false",
        "@missing false",
        "@univariate false",
        "@dimensions 2",
        "@equalLength true",
        "@seriesLength 4000",
        "@targetLabel true",
        "@data",
    ]
    for x, y in zip(values, targets):
        lines.append(":".join(",".join(repr(float(v)) for v in x[:, c]) for c in range(2)) + f":{float(y)!r}")
    path.write_text("\n".join(lines) + "\n")
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def record_windows():
    return windows()


@pytest.fixture
def mini(tmp_path, record_windows, monkeypatch):
    """Train file with windows 0-9, test file with 10-14, placed by hand (no .md5 files yet)."""
    directory = RR.directory(tmp_path)
    directory.mkdir(parents=True)
    targets = np.arange(15) + 10.0
    md5 = {
        "BIDMC32RR_TRAIN.ts": write_ts(directory / "BIDMC32RR_TRAIN.ts", record_windows[:10], targets[:10]),
        "BIDMC32RR_TEST.ts": write_ts(directory / "BIDMC32RR_TEST.ts", record_windows[10:], targets[10:]),
    }

    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(bidmc.urllib.request, "urlopen", refuse)
    return tmp_path, targets, md5


def test_ts_loader_tensor_layout(mini, record_windows):
    root, targets, _ = mini
    directory = RR.directory(root)
    values, y = load_bidmc(directory / "BIDMC32RR_TRAIN.ts", directory / "BIDMC32RR_TEST.ts")
    assert values.shape == (15, 4000, 2) and values.dtype == np.float64
    np.testing.assert_array_equal(values, record_windows)  # (case, time, channel), PPG then ECG
    np.testing.assert_array_equal(y, targets)
    # first rows of the record: PLETH 0.43597 / 0.43206, II 0.72549 / 0.67059
    np.testing.assert_array_equal(values[0, :2], [[0.43597, 0.72549], [0.43206, 0.67059]])


def test_build_verifies_scales_inputs_keeps_targets(mini, monkeypatch, record_windows):
    root, targets, md5 = mini
    # the record's published md5s, as the Zenodo API would return them (read once, then stored beside)
    monkeypatch.setattr(bidmc, "record_md5", lambda record, name, timeout=30.0: md5[name])
    small = {
        "train": np.array([3, 0, 9, 12, 5, 7, 1, 14, 2]),
        "valid": np.array([4, 11, 6]),
        "test": np.array([8, 13, 10]),
    }
    monkeypatch.setattr(bidmc, "load_split", lambda filename, n: small)
    splits = build_bidmc(RR, root)
    for name in md5:
        assert (RR.directory(root) / f"{name}.md5").read_text().strip() == md5[name]
    train = record_windows[small["train"]]
    mean, std = train.mean((0, 1)), train.std((0, 1))
    for ds, key in ((splits.train, "train"), (splits.valid, "valid"), (splits.test, "test")):
        assert len(ds) == len(small[key])
        x, y = ds[1]
        k = small[key][1]
        assert x.shape == (4000, 2) and x.dtype == torch.float32
        np.testing.assert_allclose(x.numpy(), (record_windows[k] - mean) / std, rtol=1e-5, atol=1e-5)
        assert y.shape == (1,) and y.dtype == torch.float32 and y.item() == targets[k]  # raw units

    # later runs verify against the stored md5 offline, with no record lookup
    monkeypatch.setattr(bidmc, "record_md5", lambda *a, **k: pytest.fail("record looked up again"))
    assert len(build_bidmc(RR, root).test) == 3


def test_corrupt_file_is_detected(mini, monkeypatch):
    root, _, md5 = mini
    monkeypatch.setattr(bidmc, "record_md5", lambda record, name, timeout=30.0: md5[name])
    path = RR.directory(root) / "BIDMC32RR_TEST.ts"
    path.write_text(path.read_text().replace("0.43", "0.44", 1))
    with pytest.raises(ChecksumError, match="BIDMC32RR_TEST.ts"):
        fetch_bidmc(RR, root)
    assert not (RR.directory(root) / "BIDMC32RR_TEST.ts.md5").exists()  # nothing recorded for a bad file


def test_hand_placed_files_offline_need_the_published_md5(mini):
    root, _, md5 = mini
    with pytest.raises(DataUnavailableError) as err:
        fetch_bidmc(RR, root)
    msg = str(err.value)
    assert "cannot be verified offline" in msg and "https://zenodo.org/records/4001463" in msg
    assert str(RR.directory(root) / "BIDMC32RR_TRAIN.ts.md5") in msg
    for name, digest in md5.items():  # the user writes the md5 from the record page: works offline
        (RR.directory(root) / f"{name}.md5").write_text(digest + "\n")
    assert [p.name for p in fetch_bidmc(RR, root)] == ["BIDMC32RR_TRAIN.ts", "BIDMC32RR_TEST.ts"]
    (RR.directory(root) / "BIDMC32RR_TEST.ts.md5").write_text("0" * 32)
    with pytest.raises(ChecksumError, match="md5"):
        fetch_bidmc(RR, root)


def test_missing_files_offline_name_each_file_url_and_directory(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(bidmc.urllib.request, "urlopen", refuse)
    hr = TARGETS["hr"]
    with pytest.raises(DataUnavailableError) as err:
        fetch_bidmc(hr, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg  # one line, one sentence group per missing file
    first, second = msg.split(f" {hr.files[1]} is not in ")
    for line, name in zip((first, second), hr.files):
        assert f"https://zenodo.org/record/4001456/files/{name}" in line
        assert str(tmp_path / "bidmc32hr") in line and "zenodo.org/records/4001456" in line
    assert not (tmp_path / "bidmc32hr").exists()


def test_record_md5_reads_zenodo_metadata(monkeypatch):
    class Response:
        def __init__(self, body):
            self.body = body

        def read(self):
            return self.body

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    doc = b'{"files": [{"key": "BIDMC32RR_TRAIN.ts", "checksum": "md5:0123456789abcdef0123456789abcdef"}]}'
    seen = []
    monkeypatch.setattr(
        bidmc.urllib.request, "urlopen", lambda req, timeout: seen.append(req.full_url) or Response(doc)
    )
    assert bidmc.record_md5(4001463, "BIDMC32RR_TRAIN.ts") == "0123456789abcdef0123456789abcdef"
    assert seen == ["https://zenodo.org/api/records/4001463"]
    with pytest.raises(OSError, match="lists no md5"):
        bidmc.record_md5(4001463, "BIDMC32RR_TEST.ts")
    monkeypatch.setattr(bidmc.urllib.request, "urlopen", lambda req, timeout: Response(b"<html>"))
    with pytest.raises(OSError, match="unreadable"):
        bidmc.record_md5(4001463, "BIDMC32RR_TRAIN.ts")


def test_shipped_split_sizes_and_determinism():
    split = load_split("bidmc32_split.json", 7949)
    assert [len(split[k]) for k in ("train", "valid", "test")] == [5563, 1193, 1193]
    spec = importlib.util.spec_from_file_location("make_splits", REPO / "scripts" / "make_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    np.testing.assert_array_equal(split["test"], module.seed0_split(7949)["test"])


def test_specs():
    for which, name in (("rr", "bidmc-rr"), ("hr", "bidmc-hr")):
        s = BidmcTask(which).spec
        assert (s.name, s.input_size, s.output_size, s.readout, s.loss, s.metric, s.higher_is_better) == (
            name,
            2,
            1,
            "last",
            "mse",
            "rmse",
            False,
        )
    with pytest.raises(ValueError, match="which must be one of"):
        BidmcTask("spo2")


def test_one_short_training_epoch(mini, monkeypatch, tmp_path):
    """The task through the package's trainer on the miniature files: one epoch, RMSE finite."""
    from unicornn.training.trainer import train_run

    root, _, md5 = mini
    monkeypatch.setattr(bidmc, "record_md5", lambda record, name, timeout=30.0: md5[name])
    small = {"train": np.arange(9), "valid": np.arange(9, 12), "test": np.arange(12, 15)}
    monkeypatch.setattr(bidmc, "load_split", lambda filename, n: small)
    cfg = dict(
        hidden_size=8, num_layers=2, dt=0.011, alpha=9.0, lr=4e-3, batch_size=4, eval_batch_size=8, epochs=1
    )
    result = train_run(
        BidmcTask("rr"),
        cfg,
        {},
        tmp_path / "run",
        data_dir=root,
        quiet=True,
        log=lambda line: None,
        tensorboard=False,
    )
    assert result["status"] == "finished" and np.isfinite(result["best"]["test"])


@pytest.mark.parametrize("which", ["rr", "hr"])
def test_cli_train_small_preset(record_windows, monkeypatch, tmp_path, capsys, which):
    """``unicornn train bidmc-rr|bidmc-hr --preset small`` on miniature files placed by hand with their .md5
    files (as a user does offline), one short epoch."""
    from test_tasks_cli import cli_train

    target = TARGETS[which]
    directory = target.directory(tmp_path / "data")
    directory.mkdir(parents=True)
    for name, rows in zip(target.files, (slice(0, 10), slice(10, 15))):
        md5 = write_ts(directory / name, record_windows[rows], np.arange(15)[rows] + 60.0, target.problem)
        (directory / f"{name}.md5").write_text(md5 + "\n")

    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    small = {"train": np.arange(9), "valid": np.arange(9, 12), "test": np.arange(12, 15)}
    monkeypatch.setattr(bidmc, "load_split", lambda filename, n: small)
    result = cli_train(capsys, target.task, tmp_path / "data", tmp_path / "runs", "hidden_size=8",
                       "batch_size=4")  # fmt: skip
    assert result["metric"] == "rmse" and np.isfinite(result["best"]["test"])
