"""sMNIST / psMNIST on the real MNIST sample files (``$UNICORNN_TEST_DATA/mnist``, see ``helpers.TEST_DATA``)."""

import gzip
import hashlib
import shutil
import struct
import urllib.error

import numpy as np
import pytest
import torch
from helpers import TEST_DATA, missing_sample

from unicornn.tasks import download, get_task, mnist
from unicornn.tasks.download import DataUnavailableError, verify
from unicornn.tasks.mnist import (
    MNIST_FILES,
    IdxFormatError,
    MnistSequences,
    load_permutation,
    parse_idx,
    read_idx,
    read_mnist_images,
    read_mnist_labels,
)

MNIST_DIR = TEST_DATA / "mnist"
REAL = ("train_labels", "test_images", "test_labels")
needs_real = pytest.mark.skipif(
    not all((MNIST_DIR / MNIST_FILES[k].name).is_file() for k in REAL),
    reason=missing_sample("real MNIST sample files", MNIST_DIR),
)
# Class counts of the official files, checked on the files themselves.
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
RAW_MD5 = {  # md5 of the decompressed files
    "train_labels": "a25bea736e30d166cdddb491f175f624",
    "test_images": "2646ac647ad5339dbf082846283269ea",
    "test_labels": "27ae3e4e09519cfbb04c329615203637",
}


def real(key):
    return MNIST_DIR / MNIST_FILES[key].name


def test_permutation_file_regenerates_with_torch():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5544)
        expected = torch.randperm(784)
    assert torch.equal(load_permutation(), expected)


def test_specs():
    for name, permuted in (("psmnist", True), ("smnist", False)):
        task = get_task(name)
        assert task.permuted is permuted
        s = task.spec
        assert (s.input_size, s.output_size, s.readout, s.loss, s.metric) == (
            1,
            10,
            "last",
            "cross_entropy",
            "accuracy",
        )
        assert s.higher_is_better is True


@needs_real
@pytest.mark.parametrize("key", REAL)
def test_real_files_checksums(key):
    f = MNIST_FILES[key]
    assert real(key).stat().st_size == f.size
    verify(real(key), sha256=f.sha256, md5=f.md5)
    assert hashlib.md5(gzip.decompress(real(key).read_bytes())).hexdigest() == RAW_MD5[key]


@needs_real
def test_parse_real_files_shapes_and_label_counts():
    images = read_mnist_images(real("test_images"))
    labels = read_mnist_labels(real("test_labels"))
    train_labels = read_mnist_labels(real("train_labels"))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert labels.shape == (10000,) and train_labels.shape == (60000,)
    assert np.bincount(labels, minlength=10).tolist() == TEST_COUNTS
    assert np.bincount(train_labels, minlength=10).tolist() == TRAIN_COUNTS
    # first test digit of MNIST is a 7
    assert labels[:3].tolist() == [7, 2, 1]


@needs_real
def test_sequences_plain_and_permuted():
    images = read_mnist_images(real("test_images"))
    labels = read_mnist_labels(real("test_labels"))
    perm = load_permutation()
    plain = MnistSequences(images, labels)
    permuted = MnistSequences(images, labels, perm)
    assert len(plain) == len(permuted) == 10000
    for i in (0, 1234, 9999):
        flat = torch.from_numpy(images[i]).flatten().to(torch.float32) / 255
        x, y = permuted[i]
        assert x.shape == (784, 1) and x.dtype == torch.float32
        assert y.dtype == torch.int64 and y.shape == () and y.item() == labels[i]
        assert torch.equal(x[:, 0], flat[perm])
        assert torch.equal(plain[i][0][:, 0], flat)
        assert not torch.equal(x[:, 0], flat)
        assert 0 <= x.min() and x.max() <= 1


def _mnist_dir_with_real_files(tmp_path):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for key in REAL:
        shutil.copy(real(key), root / "mnist" / MNIST_FILES[key].name)
    return root


@needs_real
def test_missing_train_images_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    root = _mnist_dir_with_real_files(tmp_path)
    with pytest.raises(DataUnavailableError) as info:
        get_task("psmnist").build({}, root, seed=0)
    msg = str(info.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(root / "mnist") in msg
    assert MNIST_FILES["train_images"].sha256 in msg and mnist.MIRRORS[0] in msg
    assert "t10k" not in msg  # present, verified files are not reported
    assert sorted(p.name for p in (root / "mnist").iterdir()) == sorted(MNIST_FILES[k].name for k in REAL)


def test_every_missing_file_is_named_offline(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    with pytest.raises(DataUnavailableError) as info:
        get_task("smnist").build({}, tmp_path, seed=0)
    msg = str(info.value)
    assert all(f.name in msg for f in MNIST_FILES.values())
    assert str(tmp_path / "mnist") in msg
    assert list((tmp_path / "mnist").iterdir()) == []


def _write_idx_gz(path, array):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_real
def test_build_pipeline_with_stand_in_train_images(tmp_path, monkeypatch):
    """Full build with a stand-in training-images file (the real one is not in the shared sample)."""
    root = _mnist_dir_with_real_files(tmp_path)
    test_images = read_mnist_images(real("test_images"))
    stand_in = np.concatenate([test_images] * 6)  # 60,000 images; labels are the real training labels
    path = root / "mnist" / MNIST_FILES["train_images"].name
    _write_idx_gz(path, stand_in)
    blob = path.read_bytes()
    monkeypatch.setitem(
        MNIST_FILES,
        "train_images",
        mnist.MnistFile(
            path.name, len(blob), hashlib.md5(blob).hexdigest(), hashlib.sha256(blob).hexdigest()
        ),
    )
    a = get_task("psmnist").build({}, root, seed=0)
    assert (len(a.train), len(a.valid), len(a.test)) == (57000, 3000, 10000)
    # train + valid partition the 60,000 training labels
    labels = torch.cat([a.train.labels, a.valid.labels])
    assert torch.bincount(labels, minlength=10).tolist() == TRAIN_COUNTS
    x, y = a.train[0]
    assert x.shape == (784, 1) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(a.test.images, torch.from_numpy(test_images).reshape(-1, 784))
    # the split is fixed: independent of the run seed
    b = get_task("smnist").build({"n_train": 100, "n_valid": 10, "n_test": 20}, root, seed=7)
    assert (len(b.train), len(b.valid), len(b.test)) == (100, 10, 20)
    assert torch.equal(b.train.images, a.train.images[:100])
    assert torch.equal(b.valid.labels, a.valid.labels[:10])
    assert torch.equal(a.train[5][0][:, 0], b.train[5][0][load_permutation(), 0])
    with pytest.raises(ValueError, match="'n_valid' must be <= 3000"):
        get_task("smnist").build({"n_valid": 3001}, root, seed=0)


def test_parse_idx_errors(tmp_path):
    good = struct.pack(">BBBBI", 0, 0, 0x08, 1, 3) + bytes([1, 2, 3])
    assert parse_idx(good).tolist() == [1, 2, 3]
    floats = struct.pack(">BBBBII", 0, 0, 0x0D, 2, 1, 2) + struct.pack(">2f", 1.5, -2.0)
    assert parse_idx(floats).tolist() == [[1.5, -2.0]]
    with pytest.raises(IdxFormatError, match="too short"):
        parse_idx(b"\x00\x00")
    with pytest.raises(IdxFormatError, match="bad IDX magic number 0x00000701"):
        parse_idx(b"\x00\x00\x07\x01" + good[4:])
    with pytest.raises(IdxFormatError, match="truncated header"):
        parse_idx(good[:6])
    with pytest.raises(IdxFormatError, match="payload truncated: 2 bytes.*expected 3"):
        parse_idx(good[:-1])
    with pytest.raises(IdxFormatError, match="trailing bytes"):
        parse_idx(good + b"\x00")
    bad_labels = tmp_path / "labels-idx1-ubyte"
    bad_labels.write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 2) + bytes([3, 10]))
    with pytest.raises(IdxFormatError, match="labels must be 0-9, found 10"):
        read_mnist_labels(bad_labels)
    with pytest.raises(IdxFormatError, match=r"expected uint8 images of shape \(n, 28, 28\)"):
        read_mnist_images(bad_labels)
    not_gzip = tmp_path / "x.gz"
    not_gzip.write_bytes(good)
    with pytest.raises(IdxFormatError, match="not a valid gzip file"):
        read_idx(not_gzip)


@needs_real
def test_truncated_gzip_is_reported(tmp_path):
    cut = tmp_path / "t10k-labels-idx1-ubyte.gz"
    cut.write_bytes(real("test_labels").read_bytes()[:2000])
    with pytest.raises(IdxFormatError, match="not a valid gzip file"):
        read_idx(cut)
