"""EigenWorms pipeline on real UEA data: aeon's bundled BasicMotions (6 channels, like EigenWorms), written as
a miniature EigenWorms.zip in the archive's .ts format (no EigenWorms sample fits offline)."""

import hashlib
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from helpers import assert_missing_data_message

from unicornn.tasks import download, eigenworms
from unicornn.tasks.download import ChecksumError, DataUnavailableError
from unicornn.tasks.eigenworms import EigenWormsTask, time_points
from unicornn.tasks.ts_format import load_split, read_ts

N, LENGTH = 259, 100


def basic_motions():
    aeon = pytest.importorskip("aeon", reason="aeon (the [tasks] extra) bundles BasicMotions")
    base = pathlib.Path(aeon.__file__).parent / "datasets" / "data" / "BasicMotions"
    train, test = read_ts(base / "BasicMotions_TRAIN.ts"), read_ts(base / "BasicMotions_TEST.ts")
    values = np.concatenate([train.values, test.values])
    labels = np.concatenate([train.encoded_labels(), test.encoded_labels()])
    return values, labels


def ts_text(values, labels):
    """EigenWorms-style header and cases: 6 channels, classes 1..5."""
    lines = [
        "#miniature in the UEA format",
        "@problemName EigenWorms",
        "@timeStamps false",
        "@missing false",
        "@univariate false",
        "@dimensions 6",
        "@equalLength true",
        f"@seriesLength {values.shape[1]}",
        "@classLabel true 1 2 3 4 5",
        "@data",
    ]
    for x, y in zip(values, labels):
        lines.append(":".join(",".join(repr(float(v)) for v in x[:, c]) for c in range(6)) + f":{y + 1}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """259 real BasicMotions cases (cycled) as EigenWorms_TRAIN.ts (128) / _TEST.ts (131) in a zip."""
    values, labels = basic_motions()
    idx = np.arange(N) % len(values)
    values, labels = values[idx], labels[idx]
    directory = tmp_path / "eigenworms"
    directory.mkdir()
    path = directory / eigenworms.ARCHIVE_NAME
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("EigenWorms_TRAIN.ts", ts_text(values[:128], labels[:128]))
        z.writestr("EigenWorms_TEST.ts", ts_text(values[128:], labels[128:]))
    monkeypatch.setattr(eigenworms, "ARCHIVE_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(eigenworms, "LENGTH", LENGTH)

    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    return tmp_path, values, labels


def test_build_split_scaling_labels(mini):
    root, values, labels = mini
    splits = EigenWormsTask().build({}, root, seed=0)
    split = load_split("eigenworms_split.json", N)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (181, 39, 39)
    mean = values[split["train"]].mean(axis=(0, 1))
    std = values[split["train"]].std(axis=(0, 1))
    for ds, name in ((splits.train, "train"), (splits.valid, "valid"), (splits.test, "test")):
        for j in (0, 7, len(ds) - 1):
            x, y = ds[j]
            k = split[name][j]
            assert x.shape == (LENGTH, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
            np.testing.assert_allclose(x.numpy(), (values[k] - mean) / std, rtol=1e-5, atol=1e-5)
            assert y.item() == labels[k]
    train = splits.train.inputs.double()
    torch.testing.assert_close(train.mean((0, 1)), torch.zeros(6, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        train.std((0, 1), correction=0), torch.ones(6, dtype=torch.float64), atol=1e-5, rtol=0
    )
    again = EigenWormsTask().build({}, root, seed=3)  # the split does not depend on the run seed
    assert torch.equal(again.test.inputs, splits.test.inputs)


def test_last_k_and_random_k(mini):
    root, values, _ = mini
    full = EigenWormsTask().build({}, root, seed=0)
    last = EigenWormsTask().build({"last_k": 10}, root, seed=0)
    assert last.train[0][0].shape == (10, 6)
    # scaled with statistics of the kept points only
    split = load_split("eigenworms_split.json", N)
    kept = values[split["train"]][:, -10:]
    np.testing.assert_allclose(
        last.valid[0][0].numpy(),
        (values[split["valid"][0], -10:] - kept.mean((0, 1))) / kept.std((0, 1)),
        rtol=1e-5,
        atol=1e-5,
    )
    rand0 = EigenWormsTask().build({"random_k": 16}, root, seed=0)
    rand0b = EigenWormsTask().build({"random_k": 16}, root, seed=0)
    rand1 = EigenWormsTask().build({"random_k": 16}, root, seed=1)
    assert rand0.test[0][0].shape == (16, 6)
    assert torch.equal(rand0.test.inputs, rand0b.test.inputs)
    assert not torch.equal(rand0.test.inputs, rand1.test.inputs)
    assert full.train[0][0].shape == (LENGTH, 6)


def test_time_points():
    np.testing.assert_array_equal(time_points(10, 3, 0, 0), [7, 8, 9])
    pts = time_points(1000, 0, 50, 4)
    assert len(set(pts.tolist())) == 50 and np.all(np.diff(pts) > 0) and pts.max() < 1000
    np.testing.assert_array_equal(pts, time_points(1000, 0, 50, 4))
    assert time_points(10, 0, 0, 0) is None
    with pytest.raises(ValueError, match="cannot both"):
        time_points(10, 2, 2, 0)
    with pytest.raises(ValueError, match="'random_k' must be <= 10"):
        time_points(10, 0, 11, 0)
    with pytest.raises(ValueError, match="'last_k' must be >= 0"):
        EigenWormsTask().build({"last_k": -1}, None, 0)


def test_missing_archive_offline(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)
    with pytest.raises(DataUnavailableError) as err:
        EigenWormsTask().build({}, tmp_path, 0)
    files = [("EigenWorms.zip", eigenworms.ARCHIVE_URLS[0], f"sha256 {eigenworms.ARCHIVE_SHA256}")]
    assert_missing_data_message(str(err.value), files, tmp_path / "eigenworms")
    assert not (tmp_path / "eigenworms").exists()  # no empty data folder left behind


def test_corrupt_archive_rejected(mini):
    root = mini[0]
    path = root / "eigenworms" / eigenworms.ARCHIVE_NAME
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="sha256"):
        EigenWormsTask().build({}, root, 0)


def test_spec():
    s = EigenWormsTask.spec
    assert (s.name, s.input_size, s.output_size, s.readout, s.loss, s.metric) == (
        "eigenworms",
        6,
        5,
        "last",
        "cross_entropy",
        "accuracy",
    )
    assert s.default_options == {"last_k": 0, "random_k": 0}


def test_one_short_training_epoch(mini, tmp_path):
    """The task through the package's trainer (per-layer dt as in the paper): one epoch, metrics finite."""
    from unicornn.training.trainer import train_run

    cfg = dict(
        hidden_size=8,
        num_layers=2,
        dt=[2.81e-5, 0.0343],
        alpha=0.0,
        lr=8.59e-3,
        batch_size=8,
        eval_batch_size=64,
        epochs=1,
        train_subset=24,
    )
    result = train_run(
        EigenWormsTask(),
        cfg,
        {"last_k": 50},
        tmp_path / "run",
        data_dir=mini[0],
        quiet=True,
        log=lambda line: None,
        tensorboard=False,
    )
    assert result["status"] == "finished" and result["epochs_done"] == 1
    assert 0 <= result["best"]["valid"] <= 100


def test_cli_train_small_preset(mini, tmp_path, capsys):
    """``unicornn train eigenworms --preset small`` on the miniature archive (the shipped split), one short
    epoch."""
    from test_tasks_cli import cli_train

    result = cli_train(capsys, "eigenworms", mini[0], tmp_path / "runs", "hidden_size=8", "train_subset=24",
                       "eval_subset=20")  # fmt: skip
    assert 0 <= result["best"]["valid"] <= 100
