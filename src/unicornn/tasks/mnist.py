"""Sequential MNIST ("smnist") and permuted sequential MNIST ("psmnist").

Data: the four official MNIST files in IDX format (gzip-compressed), kept in ``<data root>/mnist/`` (see
:func:`unicornn.tasks.download.data_root`) and downloaded on first use from the mirrors in :data:`MIRRORS`
(tried in order), each verified against both its md5 (torchvision's) and its sha256 (Hugging Face's).

Each 28x28 image becomes a sequence of 784 pixels in row-major order, scaled to [0, 1] by /255 (like
torchvision's ``ToTensor``), one pixel per step: inputs ``(784, 1)`` float32, target an int64 class 0-9. For
psMNIST the sequence is permuted by the fixed permutation shipped in ``data/psmnist_permutation.txt``:
``permuted[k] = flat[perm[k]]``. That file was generated with ``torch.manual_seed(5544);
torch.randperm(784)`` (CPU), the draw made by the UnICORNN authors' psMNIST script, which indexes the flat
image with it in the same way.

Splits: the 60,000 official training images are shuffled once by ``torch.randperm(60000)`` drawn from
a ``torch.Generator`` seeded with :data:`SPLIT_SEED` (5544, independent of the run seed); the first 57,000
of that order are the training set and the last 3,000 the validation set. The sizes (57,000 / 3,000) match
the authors' code; the membership does not: which 3,000 images are held out is this package's own draw
(fixed by :data:`SPLIT_SEED`, independent of the run seed), not the authors' selection. The test set is the official
10,000 test images, in file order. Options ``n_train`` / ``n_valid`` / ``n_test`` take the first n of each
split (in that fixed order) for quick runs; asking for more than a split holds is an error.
"""

from __future__ import annotations

import gzip
import pathlib
import zlib
from dataclasses import dataclass
from importlib import resources

import numpy as np
import torch
from torch.utils.data import Dataset

from ..validation import ConfigError
from .base import Splits, TaskSpec, check_int, check_seed, resolve_options
from .download import DataUnavailableError, data_root, fetch

MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Official MNIST mirrors, tried in order (the same bytes on each)."""


@dataclass(frozen=True)
class MnistFile:
    """One official MNIST file: name, size in bytes, md5 (torchvision) and sha256 (Hugging Face datasets)."""

    name: str
    size: int
    md5: str
    sha256: str


MNIST_FILES = {
    "train_images": MnistFile(
        "train-images-idx3-ubyte.gz",
        9912422,
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    "train_labels": MnistFile(
        "train-labels-idx1-ubyte.gz",
        28881,
        "d53e105ee54ea40749a09fcbcd1e9432",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    "test_images": MnistFile(
        "t10k-images-idx3-ubyte.gz",
        1648877,
        "9fb629c4189551a2d022fa330f9573f3",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    "test_labels": MnistFile(
        "t10k-labels-idx1-ubyte.gz",
        4542,
        "ec29112dd5afa0611ce80d1b7f02629c",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    ),
}

SPLIT_SEED = 5544
"""Seed of the fixed 57,000/3,000 train/validation split of the official training set."""
N_TRAIN, N_VALID, N_TEST = 57000, 3000, 10000
PERMUTATION_FILE = "psmnist_permutation.txt"

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(DataUnavailableError, ValueError):
    """A file is not a valid (gzip-compressed) IDX file, or not the MNIST content expected."""


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse an uncompressed IDX buffer into an array of its declared dtype and shape.

    Layout: magic (2 zero bytes, a type code, the number of dimensions), one big-endian uint32 per dimension,
    then the values in big-endian row-major order. The payload must be exactly the declared size.
    """
    if len(data) < 4:
        raise IdxFormatError(
            f"{name}: {len(data)} bytes is too short for an IDX header (4-byte magic number)"
        )
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _IDX_DTYPES:
        raise IdxFormatError(
            f"{name}: bad IDX magic number 0x{data[:4].hex()} (expected 0x0000 then a type code in "
            f"{{{', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)}}} and the number of dimensions)"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxFormatError(f"{name}: truncated header, {len(data)} bytes for {ndim} dimensions")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise IdxFormatError(
            f"{name}: payload {what}: {actual} bytes after the header, expected {expected} for shape {dims}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: str | pathlib.Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``); corrupt files raise IdxFormatError."""
    path = pathlib.Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                data = f.read()
        else:
            data = path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise IdxFormatError(f"{path}: not a valid gzip file ({err})") from err
    return parse_idx(data, str(path))


def read_mnist_images(path: str | pathlib.Path) -> np.ndarray:
    """MNIST images file -> uint8 array ``(n, 28, 28)``."""
    images = read_idx(path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise IdxFormatError(
            f"{path}: expected uint8 images of shape (n, 28, 28), got {images.dtype} {images.shape}"
        )
    return images


def read_mnist_labels(path: str | pathlib.Path) -> np.ndarray:
    """MNIST labels file -> uint8 array ``(n,)`` with values 0-9."""
    labels = read_idx(path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise IdxFormatError(
            f"{path}: expected uint8 labels of shape (n,), got {labels.dtype} {labels.shape}"
        )
    if labels.size and labels.max() > 9:
        raise IdxFormatError(f"{path}: labels must be 0-9, found {int(labels.max())}")
    return labels


def load_permutation() -> torch.Tensor:
    """The shipped psMNIST permutation: int64 ``(784,)``, a permutation of 0..783."""
    text = resources.files(__package__).joinpath("data", PERMUTATION_FILE).read_text()
    values = [int(line) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    perm = torch.tensor(values, dtype=torch.int64)
    if perm.shape != (784,) or not torch.equal(perm.sort().values, torch.arange(784)):
        raise ValueError(f"{PERMUTATION_FILE} is not a permutation of 0..783 ({len(values)} entries)")
    return perm


def mnist_dir(data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Directory of the MNIST files: ``<data root>/mnist``."""
    return data_root(data_dir) / "mnist"


def fetch_mnist(
    data_dir: str | pathlib.Path | None = None, which=tuple(MNIST_FILES)
) -> dict[str, pathlib.Path]:
    """Make sure the requested MNIST files are present and verified (downloading them if needed).

    Returns ``{key: path}``. If files are missing and cannot be downloaded, one DataUnavailableError lists
    every such file.
    """
    directory = mnist_dir(data_dir)
    paths, errors = {}, []
    for key in which:
        f = MNIST_FILES[key]
        try:
            paths[key] = fetch([m + f.name for m in MIRRORS], directory / f.name, sha256=f.sha256, md5=f.md5)
        except DataUnavailableError as err:
            errors.append(err)
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise type(errors[0])("\n".join(str(e) for e in errors))
    return paths


class MnistSequences(Dataset):
    """MNIST images as pixel sequences.

    ``images``: uint8 ``(n, 28, 28)``; ``labels``: ``(n,)``; ``permutation``: int64 ``(784,)`` or None.
    Item ``i`` is ``(inputs (784, 1) float32 in [0, 1], target int64 scalar)``.
    """

    def __init__(self, images: np.ndarray | torch.Tensor, labels, permutation: torch.Tensor | None = None):
        images = torch.as_tensor(images)
        labels = torch.as_tensor(labels).to(torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"images must be uint8 (n, 28, 28), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}")
        if permutation is not None:
            permutation = torch.as_tensor(permutation, dtype=torch.int64)
            if permutation.shape != (784,) or not torch.equal(permutation.sort().values, torch.arange(784)):
                raise ValueError("permutation must be a permutation of 0..783")
        self.images = images.reshape(-1, 784)
        self.labels = labels
        self.permutation = permutation

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pixels = self.images[index]
        if self.permutation is not None:
            pixels = pixels[self.permutation]
        return (pixels.to(torch.float32) / 255.0).unsqueeze(-1), self.labels[index]


class MnistTask:
    """Sequential MNIST, plain or with the fixed psMNIST permutation."""

    def __init__(self, permuted: bool) -> None:
        self.permuted = permuted
        kind = "permuted sequential MNIST (fixed permutation)" if permuted else "sequential MNIST"
        self.spec = TaskSpec(
            name="psmnist" if permuted else "smnist",
            description=f"{kind}: classify a 28x28 digit read one pixel per step (784 steps)",
            input_size=1,
            output_size=10,
            readout="last",
            loss="cross_entropy",
            metric="accuracy",
            higher_is_better=True,
            default_options={"n_train": N_TRAIN, "n_valid": N_VALID, "n_test": N_TEST},
            paper_tables="Tables 1, 6, 8" if permuted else "-",
        )

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Load (downloading if needed) and split MNIST; ``seed`` does not affect the data."""
        opts = resolve_options(self.spec, options)
        check_seed(seed)
        limits = {"n_train": N_TRAIN, "n_valid": N_VALID, "n_test": N_TEST}
        for key, limit in limits.items():
            if check_int(key, opts[key], 1) > limit:
                raise ConfigError(f"option {key!r} must be <= {limit} (the split's size), got {opts[key]}")
        paths = fetch_mnist(data_dir)
        train_images = read_mnist_images(paths["train_images"])
        train_labels = read_mnist_labels(paths["train_labels"])
        test_images = read_mnist_images(paths["test_images"])
        test_labels = read_mnist_labels(paths["test_labels"])
        for images, labels, n, what in (
            (train_images, train_labels, N_TRAIN + N_VALID, "training"),
            (test_images, test_labels, N_TEST, "test"),
        ):
            if len(images) != n or len(labels) != n:
                raise IdxFormatError(
                    f"MNIST {what} files hold {len(images)} images and {len(labels)} labels, "
                    f"expected {n} of each"
                )
        perm = load_permutation() if self.permuted else None
        # 57k/3k: the authors' sizes; which images are validation ones is this package's draw (SPLIT_SEED)
        order = torch.randperm(N_TRAIN + N_VALID, generator=torch.Generator().manual_seed(SPLIT_SEED))
        train_idx = order[: opts["n_train"]]
        valid_idx = order[N_TRAIN : N_TRAIN + opts["n_valid"]]
        train_images, train_labels = torch.from_numpy(train_images), torch.from_numpy(train_labels)
        return Splits(
            train=MnistSequences(train_images[train_idx], train_labels[train_idx], perm),
            valid=MnistSequences(train_images[valid_idx], train_labels[valid_idx], perm),
            test=MnistSequences(test_images[: opts["n_test"]], test_labels[: opts["n_test"]], perm),
        )
