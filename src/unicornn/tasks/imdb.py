"""IMDB sentiment analysis (``imdb``, paper Table 5): one logit from GloVe-initialised word embeddings.

Data (both kept in ``<data root>/imdb/`` and verified before any use, see :data:`ARCHIVE` and :data:`GLOVE`):

* ``aclImdb_v1.tar.gz``, the Large Movie Review Dataset v1.0 (Maas et al., 2011), checked against its md5
  (torchtext's) and sha256 (Hugging Face datasets'). Reviews are read straight from the archive
  (``aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt``; ``train/unsup`` and the other files are ignored),
  each split ordered negatives first, then positives, by id.
* ``glove.6B.zip`` (Pennington et al., 2014), md5 as published by many public loaders (Stanford publishes
  none); its member ``glove.6B.100d.txt`` is read straight from the zip: one word per line followed by 100
  space-separated numbers.

Pipeline:

* Tokeniser (:func:`tokenize`, no download; the authors used spaCy's English tokeniser, which needs a model
  download): ``<br />`` tags become spaces, text is lower-cased (GloVe 6B is lower-cased), curly
  apostrophes become ``'``; tokens are words (runs of letters/digits, joined by inner hyphens), the clitics
  ``n't 's 're 've 'll 'd 'm`` split off as in the Penn Treebank convention GloVe's tokens follow
  ("don't" -> "do", "n't"), and every other non-space character alone.
* Split: the 25,000 training reviews are shuffled once by ``torch.randperm`` from a generator seeded with
  :data:`SPLIT_SEED` (independent of the run seed); the first 70% (17,500) are the training set, the rest
  (7,500) the validation set (the paper: "30% of the training set ... as the validation set"). Test: the
  official 25,000 test reviews.
* Vocabulary (:func:`build_vocab`): the :data:`VOCAB_SIZE` = 25,000 most frequent tokens of the training
  split (ties broken alphabetically), after ``<unk>`` (row 0) and ``<pad>`` (row 1): 25,002 rows; other
  tokens map to ``<unk>``.
* Embedding matrix (:func:`embedding_matrix`): GloVe's vector for every word it has; the others drawn from
  N(0, 1) (as the authors' ``unk_init=torch.Tensor.normal_``) with a generator seeded by the run seed;
  ``<unk>`` and ``<pad>`` zero. It is handed to the model through :attr:`Splits.model_args` (key
  ``embedding``, with ``embedding_dropout`` and ``pad_index``): the model ``embedding-unicornn`` (see
  :mod:`unicornn.task_models`) starts from it and trains it.

Items are ``(token ids int64 (L,), target float32 scalar 0./1. (1 = positive), length int64 scalar)``.
Batches (:class:`BucketBatchSampler`, :func:`collate`) group reviews of nearly equal length: token ids
(B, L_max) right-padded with ``<pad>``, targets (B,), lengths (B,). The model reads each review's state
at its own last token (``lengths``), so a prediction never depends on the batch it is in (the authors'
model read the last padded step instead). Accuracy is pooled over the whole split.
"""

from __future__ import annotations

import io
import pathlib
import re
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from ..validation import ConfigError, check_real
from .base import Splits, TaskSpec, check_seed, resolve_options
from .download import DAMAGED_ZIP_ERRORS, DataUnavailableError, data_root, fetch, raise_collected


@dataclass(frozen=True)
class DataFile:
    """A downloadable file: name, URLs (mirrors, in order) and its checksums (None: not published)."""

    name: str
    urls: tuple[str, ...]
    md5: str
    sha256: str | None = None


ARCHIVE = DataFile(
    "aclImdb_v1.tar.gz",
    (
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
    ),
    md5="7c2ac02c03563afcf9b574c7e56c153a",  # torchtext's IMDB MD5
    sha256="c40f74a18d3b61f90feba1e17730e0d38e8b97c05fde7008942e91923d1658fe",  # Hugging Face datasets
)
"""The official IMDB archive (84,125,825 bytes)."""

GLOVE = DataFile(
    "glove.6B.zip",
    ("https://downloads.cs.stanford.edu/nlp/data/glove.6B.zip", "http://nlp.stanford.edu/data/glove.6B.zip"),
    md5="056ea991adb4740ac6bf1b6d9b50408b",
)
"""GloVe 6B (862,182,613 bytes): 400,000 lower-cased words in 50, 100, 200 and 300 dimensions."""

GLOVE_MEMBER = "glove.6B.100d.txt"
EMBEDDING_DIM = 100
VOCAB_SIZE = 25000
UNK, PAD = "<unk>", "<pad>"
UNK_INDEX, PAD_INDEX = 0, 1
SPLIT_SEED = 1234
TRAIN_FRACTION = 0.7
"""17,500 of the 25,000 training reviews train, 7,500 validate."""

_MEMBER = re.compile(r"aclImdb/(train|test)/(pos|neg)/(\d+)_(\d+)\.txt")
_WORD = r"[^\W_]+"
_TOKEN = re.compile(rf"{_WORD}(?=n't\b)|n't\b|'(?:s|re|ve|ll|d|m)\b|{_WORD}(?:-{_WORD})*|[^\w\s]|_")
_BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)


class ImdbFormatError(DataUnavailableError, ValueError):
    """The archive or the GloVe file does not have the expected layout (the message names the file)."""


def tokenize(text: str) -> list[str]:
    """Split one review into tokens (see the module docstring); e.g. ``"Don't!<br />OK"`` ->
    ``["do", "n't", "!", "ok"]``."""
    text = _BREAK.sub(" ", text).lower().replace("\u2019", "'").replace("\u2018", "'")
    return _TOKEN.findall(text)


def read_reviews(path: str | pathlib.Path) -> dict[str, tuple[list[str], np.ndarray]]:
    """Reviews of the archive: ``{"train" | "test": (texts, labels int64 (n,), 1 = positive)}``.

    Each split is ordered negatives then positives, by review id; both classes must be present.
    """
    path = pathlib.Path(path)
    found: dict[str, list[tuple[int, int, str]]] = {"train": [], "test": []}
    try:
        with tarfile.open(path, "r:gz") as archive:
            for member in archive:
                m = _MEMBER.fullmatch(member.name)
                if m is None or not member.isfile():
                    continue
                f = archive.extractfile(member)
                text = f.read().decode("utf-8", errors="replace")
                found[m[1]].append((int(m[2] == "pos"), int(m[3]), text))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ImdbFormatError(f"{path}: not a readable tar.gz archive ({err})") from err
    out = {}
    for split, items in found.items():
        labels = {lab for lab, _, _ in items}
        if labels != {0, 1}:
            raise ImdbFormatError(
                f"{path}: aclImdb/{split}/ must hold reviews in both pos/ and neg/ "
                f"(<id>_<rating>.txt), found {len(items)} reviews with labels {sorted(labels)}"
            )
        items.sort(key=lambda t: (t[0], t[1]))
        out[split] = ([t for _, _, t in items], np.array([lab for lab, _, _ in items], dtype=np.int64))
    return out


def split_indices(n: int) -> tuple[Tensor, Tensor]:
    """The fixed train/validation split of ``n`` training reviews: ``(train, valid)`` index tensors."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    k = round(TRAIN_FRACTION * n)
    return order[:k], order[k:]


def build_vocab(token_lists: Iterable[Sequence[str]], size: int = VOCAB_SIZE) -> list[str]:
    """``[<unk>, <pad>]`` + the ``size`` most frequent tokens (count descending, then alphabetical)."""
    counts = Counter()
    for tokens in token_lists:
        counts.update(tokens)
    counts.pop(UNK, None)
    counts.pop(PAD, None)
    words = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]
    return [UNK, PAD] + [w for w, _ in words]


def encode(tokens: Sequence[str], index: dict[str, int]) -> Tensor:
    """Token ids int64 ``(max(len(tokens), 1),)``; unknown tokens -> ``<unk>`` (an empty review is one ``<unk>``)."""
    return torch.tensor([index.get(t, UNK_INDEX) for t in tokens] or [UNK_INDEX], dtype=torch.int64)


def read_glove(lines: Iterable[str], words: dict[str, int], dim: int = EMBEDDING_DIM, name: str = "GloVe"):
    """Vectors of ``words`` (word -> row) from GloVe text lines: ``{row: float32 (dim,)}``.

    Every line must be a word and ``dim`` numbers separated by single spaces; lines of words not in ``words``
    are only counted, not parsed.
    """
    vectors: dict[int, np.ndarray] = {}
    for lineno, line in enumerate(lines, 1):
        word, sep, rest = line.rstrip("\n").partition(" ")
        if not sep:
            raise ImdbFormatError(
                f"{name} line {lineno}: expected a word and {dim} numbers, got {line[:60]!r}"
            )
        row = words.get(word)
        if row is None:
            continue
        try:
            values = np.array(rest.split(" "), dtype=np.float32)
        except ValueError as err:
            raise ImdbFormatError(f"{name} line {lineno} ({word!r}): {err}") from None
        if values.shape != (dim,):
            raise ImdbFormatError(f"{name} line {lineno} ({word!r}): {values.size} numbers, expected {dim}")
        vectors[row] = values
    return vectors


def glove_from_zip(path: str | pathlib.Path, words: dict[str, int], member: str = GLOVE_MEMBER):
    """:func:`read_glove` on ``member`` of the GloVe zip at ``path``."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open(member) as raw:
            return read_glove(io.TextIOWrapper(raw, encoding="utf-8"), words, name=f"{path}:{member}")
    except KeyError:
        raise ImdbFormatError(f"{path}: no member {member}") from None
    except ImdbFormatError:
        raise
    # a damaged archive fails in zipfile (bad header, truncated or corrupt deflate data, flag bits it does not
    # support) or in decoding the text
    except DAMAGED_ZIP_ERRORS as err:
        raise ImdbFormatError(f"{path}: not a valid zip archive ({err!r:.200})") from err


def embedding_matrix(
    n_rows: int, vectors: dict[int, np.ndarray], seed: int, dim: int = EMBEDDING_DIM
) -> Tensor:
    """float32 ``(n_rows, dim)``: GloVe rows where known, N(0, 1) rows otherwise (drawn for every row from
    a generator seeded with ``seed``, so a row's draw does not depend on which others GloVe has), and the
    ``<unk>`` and ``<pad>`` rows zero."""
    matrix = torch.randn((n_rows, dim), generator=torch.Generator().manual_seed(seed))
    for row, v in vectors.items():
        matrix[row] = torch.from_numpy(v)
    matrix[[UNK_INDEX, PAD_INDEX]] = 0.0
    return matrix


class ReviewDataset(Dataset):
    """Tokenised reviews. ``tokens``: int64 tensors ``(L_i,)``; ``labels``: ``(n,)`` 0/1.

    Item ``i`` is ``(tokens[i] (L_i,), label float32 scalar, length int64 scalar)``; ``lengths`` is an int64
    array ``(n,)`` (what :class:`BucketBatchSampler` sorts by).
    """

    def __init__(self, tokens: Sequence[Tensor], labels) -> None:
        labels = torch.as_tensor(labels)
        if labels.shape != (len(tokens),):
            raise ValueError(f"labels must have shape ({len(tokens)},), got {tuple(labels.shape)}")
        self.tokens = list(tokens)
        self.labels = labels.to(torch.float32)
        self.lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor, Tensor]:
        return self.tokens[index], self.labels[index], torch.tensor(self.lengths[index])


def collate(batch: list) -> tuple[Tensor, Tensor, Tensor]:
    """Items -> ``(token ids (B, L_max) right-padded with <pad>, targets (B,), lengths (B,))``."""
    tokens = torch.nn.utils.rnn.pad_sequence([b[0] for b in batch], batch_first=True, padding_value=PAD_INDEX)
    return tokens, torch.stack([b[1] for b in batch]), torch.stack([b[2] for b in batch])


def _lengths(dataset: Dataset) -> np.ndarray:
    """The ``lengths`` of a :class:`ReviewDataset` or of a (nested) ``Subset`` of one."""
    if isinstance(dataset, Subset):
        return _lengths(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    if not hasattr(dataset, "lengths"):
        raise TypeError(f"BucketBatchSampler needs a dataset with 'lengths', got {type(dataset).__name__}")
    return np.asarray(dataset.lengths)


class BucketBatchSampler:
    """Batches of reviews of nearly equal length (few distinct lengths per batch, little padding).

    The dataset's indices are sorted by length and cut into consecutive batches of ``batch_size``. Without
    ``shuffle`` (evaluation) that is all. With ``shuffle`` (training), at every epoch (:meth:`set_epoch`)
    reviews of equal length are put in a random order, the first batch is cut at a random size in
    [1, batch_size] (so the batch boundaries move), and the order of the batches is shuffled; all of it
    drawn from ``seed`` and the epoch. Process ``rank`` of ``world_size`` takes every ``world_size``-th
    batch; in training the batch list is first extended by repeating its first batches to a multiple of
    ``world_size`` (every process makes the same number of steps).
    """

    def __init__(self, dataset: Dataset, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:  # fmt: skip
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size = {world_size}), got {rank}")
        self.lengths = _lengths(dataset)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """Every process's batches, in order (this process takes ``[rank::world_size]``)."""
        n, b = len(self.lengths), self.batch_size
        if not self.shuffle:
            order = np.argsort(self.lengths, kind="stable")
            return [order[i : i + b].tolist() for i in range(0, n, b)]
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(n)
        order = perm[np.argsort(self.lengths[perm], kind="stable")]
        first = int(rng.integers(1, b + 1))
        cuts = [0, *range(first, n, b), n]
        batches = [order[s:e].tolist() for s, e in zip(cuts[:-1], cuts[1:]) if e > s]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        extra = -len(batches) % self.world_size
        return batches + batches[:extra]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches()[self.rank :: self.world_size])

    def __len__(self) -> int:
        return len(self.batches()[self.rank :: self.world_size])


def imdb_dir(data_dir: str | pathlib.Path | None = None) -> pathlib.Path:
    """Directory of the IMDB archive and the GloVe zip: ``<data root>/imdb``."""
    return data_root(data_dir) / "imdb"


def fetch_imdb(data_dir: str | pathlib.Path | None = None) -> tuple[pathlib.Path, pathlib.Path]:
    """``(archive, glove zip)``, verified, downloading what is absent; one error naming every missing file."""
    directory = imdb_dir(data_dir)
    paths, errors = [], []
    for f in (ARCHIVE, GLOVE):
        try:
            paths.append(fetch(f.urls, directory / f.name, sha256=f.sha256, md5=f.md5))
        except DataUnavailableError as err:
            errors.append(err)
    raise_collected(errors)
    return paths[0], paths[1]


class ImdbTask:
    """IMDB: binary sentiment of a review; option ``embedding_dropout`` (whole word rows, for the model)."""

    spec = TaskSpec(
        name="imdb",
        description="IMDB sentiment: one logit from a review's GloVe-100d word embeddings (25,002-row "
        "vocabulary), model embedding-unicornn",
        input_size=EMBEDDING_DIM,
        output_size=1,
        readout="last",
        loss="binary_cross_entropy",
        metric="accuracy",
        higher_is_better=True,
        default_options={"embedding_dropout": 0.65},
        paper_tables="Tables 5, 6, 8",
    )

    def build(self, options: dict, data_dir: pathlib.Path | None, seed: int) -> Splits:
        """Read, tokenise and split the reviews, build the vocabulary and the embedding matrix."""
        opts = resolve_options(self.spec, options)
        seed = check_seed(seed)
        p = check_real("option 'embedding_dropout'", opts["embedding_dropout"], low=0.0)
        if p >= 1:
            raise ConfigError(f"option 'embedding_dropout' must be in [0, 1), got {p:g}")
        archive, glove = fetch_imdb(data_dir)
        reviews = read_reviews(archive)
        train_tokens = [tokenize(t) for t in reviews["train"][0]]
        train_idx, valid_idx = split_indices(len(train_tokens))
        itos = build_vocab(train_tokens[i] for i in train_idx.tolist())
        index = {w: i for i, w in enumerate(itos)}
        train_ids = [encode(t, index) for t in train_tokens]
        test_ids = [encode(tokenize(t), index) for t in reviews["test"][0]]
        labels = reviews["train"][1]
        matrix = embedding_matrix(len(itos), glove_from_zip(glove, index), seed)
        return Splits(
            train=ReviewDataset([train_ids[i] for i in train_idx.tolist()], labels[train_idx.numpy()]),
            valid=ReviewDataset([train_ids[i] for i in valid_idx.tolist()], labels[valid_idx.numpy()]),
            test=ReviewDataset(test_ids, reviews["test"][1]),
            batch_sampler=BucketBatchSampler,
            collate_fn=collate,
            model_args={"embedding": matrix, "embedding_dropout": p, "pad_index": PAD_INDEX},
        )
