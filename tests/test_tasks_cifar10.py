"""Noise-padded CIFAR-10 on real CIFAR-10 images (the 200-image PNG sample beside the repository), packed
into a miniature archive in the official python-batch format."""

import hashlib
import io
import pickle
import tarfile

import numpy as np
import pytest
import torch
from helpers import TEST_DATA, missing_sample

from unicornn.tasks import cifar10, download
from unicornn.tasks.cifar10 import (
    CifarFormatError,
    NoisyCifarTask,
    fixed_noise,
    image_rows,
    read_cifar10,
)
from unicornn.tasks.download import ChecksumError, DataUnavailableError

SAMPLE = TEST_DATA / "cifar10_sample"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
pytestmark = pytest.mark.skipif(
    not (SAMPLE / "trainLabels.csv").is_file(),
    reason=missing_sample("real CIFAR-10 sample", SAMPLE),
)


@pytest.fixture(scope="module")
def sample():
    """The 200 real images as uint8 ``(200, 3, 32, 32)`` (CHW, like the batches) and their labels."""
    Image = pytest.importorskip("PIL.Image", reason="Pillow reads the PNG sample")
    labels, images = [], []
    for line in (SAMPLE / "trainLabels.csv").read_text().split():
        name, cls = line.split(",")
        labels.append(CLASSES.index(cls))
        with Image.open(SAMPLE / "train" / name) as img:
            images.append(np.asarray(img.convert("RGB")).transpose(2, 0, 1))
    return np.stack(images), np.array(labels, dtype=np.int64)


def write_archive(path, images, labels, n_test=50, extra=None):
    """Official layout: cifar-10-batches-py/data_batch_1..5 and test_batch, pickled dicts (bytes keys)."""
    train_x, train_y = images[:-n_test], labels[:-n_test]
    batches = {
        f"data_batch_{i + 1}": (x, y)
        for i, (x, y) in enumerate(zip(np.array_split(train_x, 5), np.array_split(train_y, 5)))
    }
    batches["test_batch"] = (images[-n_test:], labels[-n_test:])
    with tarfile.open(path, "w:gz") as tar:
        for name, (x, y) in batches.items():
            doc = {
                b"batch_label": name.encode(),
                b"labels": [int(v) for v in y],
                b"data": x.reshape(len(x), -1),
                b"filenames": [b"x.png"] * len(x),
            }
            payload = (
                extra if (extra is not None and name == "data_batch_3") else pickle.dumps(doc, protocol=2)
            )
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.fixture
def mini(tmp_path, sample, monkeypatch):
    """A miniature archive (150 train / 50 test images) accepted as the official one."""
    directory = tmp_path / "cifar10"
    directory.mkdir()
    path = write_archive(directory / cifar10.ARCHIVE.name, *sample)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setattr(
        cifar10, "ARCHIVE", cifar10.Archive(path.name, ("https://example.invalid/c.tgz",), 0, md5)
    )
    monkeypatch.setattr(cifar10, "N_TRAIN_FILES", 150)
    monkeypatch.setattr(cifar10, "N_TEST_FILES", 50)
    monkeypatch.setattr(cifar10, "N_VALID", 20)
    return tmp_path


def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


def test_sample_is_the_published_data_batch_1(sample):
    images, labels = sample
    flat = images.reshape(200, -1)  # CHW-flattened like the batches
    assert flat[0, :3].tolist() == [59, 43, 50] and flat[0, -3:].tolist() == [140, 84, 72]
    assert flat[1, :3].tolist() == [154, 126, 105] and flat[2, -3:].tolist() == [83, 83, 84]
    assert labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def test_row_layout(sample):
    images = torch.from_numpy(sample[0][:3])
    rows = image_rows(images)
    assert rows.shape == (3, 32, 96) and rows.dtype == torch.float32
    # image 1: first three R values of row 0 and last three B values of row 31 (published bytes)
    torch.testing.assert_close(rows[0, 0, :3], torch.tensor([59, 43, 50]) / 255.0)
    torch.testing.assert_close(rows[0, 31, 93:], torch.tensor([140, 84, 72]) / 255.0)
    # element by element: step h, feature c * 32 + w is channel c, row h, column w
    for i, h, c, w in [(0, 0, 0, 0), (1, 5, 1, 31), (2, 31, 2, 7), (1, 17, 0, 12)]:
        assert rows[i, h, c * 32 + w] == images[i, c, h, w].item() / 255.0
    # the authors' formula on a (3, 32, 32) tensor in [0, 1]
    ref = (images.to(torch.float64) / 255).permute(0, 2, 1, 3).reshape(3, 32, 96)
    torch.testing.assert_close(rows.double(), ref, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, 32, 32\)"):
        image_rows(images[:, :2])


def test_fixed_noise_tensor():
    noise = fixed_noise()
    assert noise.shape == (968, 96) and noise.dtype == torch.float32
    torch.testing.assert_close(noise, torch.randn(968, 96, generator=torch.Generator().manual_seed(12345)))
    assert abs(noise.mean().item()) < 0.02 and abs(noise.std().item() - 1) < 0.02
    uniform = fixed_noise("uniform")
    assert uniform.min() >= 0 and uniform.max() < 1 and abs(uniform.mean().item() - 0.5) < 0.01
    with pytest.raises(ValueError, match="kind"):
        fixed_noise("pink")


def test_read_archive(mini, sample):
    train_x, train_y, test_x, test_y = read_cifar10(mini / "cifar10" / cifar10.ARCHIVE.name)
    np.testing.assert_array_equal(train_x, sample[0][:150])
    np.testing.assert_array_equal(test_y, sample[1][150:])
    assert train_x.shape == (150, 3, 32, 32) and train_y.dtype == np.int64


def test_build_layout_noise_and_split(mini, sample, monkeypatch):
    offline(monkeypatch)
    opts = {"n_train": 130, "n_valid": 20, "n_test": 50}
    splits = NoisyCifarTask().build(opts, mini, seed=0)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (130, 20, 50)
    order = torch.randperm(150, generator=torch.Generator().manual_seed(cifar10.SPLIT_SEED))
    noise = fixed_noise()
    for ds, idx, source in (
        (splits.train, order[:130], 0),
        (splits.valid, order[130:], 0),
        (splits.test, torch.arange(50), 150),
    ):
        for j in (0, len(ds) - 1):
            x, y = ds[j]
            k = int(idx[j]) + source
            assert x.shape == (1000, 96) and x.dtype == torch.float32
            torch.testing.assert_close(x[:32], image_rows(torch.from_numpy(sample[0][k])))
            assert torch.equal(x[32:], noise)  # the same tensor for every sample and split
            assert y.item() == sample[1][k] and y.dtype == torch.int64
    # train and validation partition the official training images; deterministic across builds
    again = NoisyCifarTask().build(opts, mini, seed=5)
    assert torch.equal(again.valid[3][0], splits.valid[3][0])
    assert sorted(order.tolist()) == list(range(150))


def test_uniform_and_fresh_noise(mini, monkeypatch):
    offline(monkeypatch)
    opts = {"n_train": 10, "n_valid": 20, "n_test": 5}
    uni = NoisyCifarTask().build({**opts, "noise": "uniform"}, mini, seed=0)
    assert torch.equal(uni.train[0][0][32:], fixed_noise("uniform"))
    fresh = NoisyCifarTask().build({**opts, "noise": "fresh"}, mini, seed=0)
    a, b = fresh.train[0][0][32:], fresh.train[0][0][32:]
    assert not torch.equal(a, b)  # training noise is redrawn at every access (every epoch)
    assert not torch.equal(fresh.valid[0][0][32:], fresh.valid[1][0][32:])
    assert torch.equal(fresh.valid[0][0], fresh.valid[0][0])  # evaluation noise is fixed per sample
    same_seed = NoisyCifarTask().build({**opts, "noise": "fresh"}, mini, seed=0)
    other_seed = NoisyCifarTask().build({**opts, "noise": "fresh"}, mini, seed=1)
    assert torch.equal(same_seed.test[2][0], fresh.test[2][0])
    assert not torch.equal(other_seed.test[2][0], fresh.test[2][0])


def test_option_errors(mini):
    task = NoisyCifarTask()
    with pytest.raises(ValueError, match="'noise' must be one of"):
        task.build({"noise": "pink"}, mini, 0)
    with pytest.raises(ValueError, match="'n_valid' must be <= 20"):
        task.build({"n_train": 5, "n_valid": 21}, mini, 0)
    with pytest.raises(ValueError, match="unknown option"):
        task.build({"augment": True}, mini, 0)


def test_missing_archive_offline_names_url_md5_directory(tmp_path, monkeypatch):
    offline(monkeypatch)
    with pytest.raises(DataUnavailableError) as err:
        NoisyCifarTask().build({}, tmp_path, 0)
    msg = str(err.value)
    for part in (
        "cifar-10-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
        str(tmp_path / "cifar10"),
    ):
        assert part in msg
    assert "\n" not in msg
    assert not (tmp_path / "cifar10" / "cifar-10-python.tar.gz").exists()


def test_corrupt_archive_is_detected_and_not_used(mini, monkeypatch):
    offline(monkeypatch)
    path = mini / "cifar10" / cifar10.ARCHIVE.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        NoisyCifarTask().build({"n_train": 5, "n_valid": 5, "n_test": 5}, mini, 0)
    assert path.read_bytes() == bytes(data)  # never deleted nor replaced silently


def test_malicious_or_malformed_batches_are_rejected(tmp_path, sample):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = write_archive(tmp_path / "evil.tar.gz", *sample, extra=pickle.dumps({b"data": Evil()}))
    with pytest.raises(CifarFormatError, match="not allowed"):
        read_cifar10(evil)
    junk = write_archive(tmp_path / "junk.tar.gz", *sample, extra=pickle.dumps({b"labels": [1]}))
    with pytest.raises(CifarFormatError, match="lacks"):
        read_cifar10(junk)
    notgz = tmp_path / "plain.tar.gz"
    notgz.write_bytes(b"\x00" * 100)
    with pytest.raises(CifarFormatError, match="not a readable"):
        read_cifar10(notgz)
    full = write_archive(tmp_path / "ok.tar.gz", *sample)
    with pytest.raises(CifarFormatError, match="150 training images, expected 50000"):
        read_cifar10(full)


def test_spec():
    s = NoisyCifarTask.spec
    assert (s.name, s.input_size, s.output_size, s.readout, s.loss, s.metric) == (
        "noisy-cifar10",
        96,
        10,
        "last",
        "cross_entropy",
        "accuracy",
    )
    assert s.default_options == {"noise": "fixed", "n_train": 48000, "n_valid": 2000, "n_test": 10000}


@pytest.mark.slow
def test_one_short_training_epoch(mini, monkeypatch, tmp_path):
    """The task through the package's trainer: one epoch on the miniature archive, metrics finite."""
    from unicornn.training.trainer import train_run

    offline(monkeypatch)
    cfg = dict(
        hidden_size=8,
        num_layers=2,
        dt=0.126,
        alpha=13.0,
        lr=3e-3,
        batch_size=16,
        eval_batch_size=50,
        epochs=1,
        backend="auto",
    )
    result = train_run(
        NoisyCifarTask(),
        cfg,
        {"n_train": 32, "n_valid": 20, "n_test": 20},
        tmp_path / "run",
        data_dir=mini,
        quiet=True,
        log=lambda line: None,
        tensorboard=False,
    )
    assert result["status"] == "finished" and result["epochs_done"] == 1
    assert 0 <= result["best"]["test"] <= 100


def test_cli_train_small_preset(mini, monkeypatch, tmp_path, capsys):
    """``unicornn train noisy-cifar10 --preset small`` on the miniature archive, one short epoch."""
    from test_tasks_cli import cli_train

    offline(monkeypatch)
    result = cli_train(capsys, "noisy-cifar10", mini, tmp_path / "runs", "n_train=32", "n_valid=20",
                       "n_test=20", "hidden_size=8", "eval_batch_size=20")  # fmt: skip
    assert 0 <= result["best"]["test"] <= 100
