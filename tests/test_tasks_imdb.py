"""IMDB on real reviews: the 4,000-review aclImdb subset beside the repository (official archive layout),
with a tiny GloVe file in the official text format, both accepted as the official files."""

import hashlib
import io
import json
import tarfile
import zipfile
from collections import Counter

import numpy as np
import pytest
import torch
from helpers import TEST_DATA, missing_sample

from unicornn.task_models import EmbeddingSequenceModel
from unicornn.tasks import download, imdb
from unicornn.tasks.download import ChecksumError, DataUnavailableError
from unicornn.tasks.imdb import (
    BucketBatchSampler,
    ImdbFormatError,
    ImdbTask,
    build_vocab,
    collate,
    embedding_matrix,
    read_glove,
    read_reviews,
    split_indices,
    tokenize,
)

SUBSET = TEST_DATA / "imdb_aclimdb_subset"
ARCHIVE = SUBSET / "aclImdb_subset.tar.gz"
pytestmark = pytest.mark.skipif(
    not ARCHIVE.is_file(),
    reason=missing_sample("real aclImdb subset", SUBSET),
)
GLOVE_WORDS = ["the", "movie", "film", "good", "bad", "great", "n't", "'s", ".", ",", "!", "zzzunseen"]


def glove_lines(words, dim=100, seed=0):
    """Lines in GloVe's text format: the word, then ``dim`` numbers, single spaces (as in glove.6B.*d.txt)."""
    rng = np.random.default_rng(seed)
    values = rng.normal(scale=0.4, size=(len(words), dim)).round(5)
    return [w + " " + " ".join(repr(float(v)) for v in row) for w, row in zip(words, values)], values


def write_glove_zip(path, words=GLOVE_WORDS):
    lines, values = glove_lines(words)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(imdb.GLOVE_MEMBER, "\n".join(lines) + "\n")
    return values


def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise download.urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(download.urllib.request, "urlopen", refuse)


def accept_as_official(monkeypatch, directory):
    """Pin the files in ``directory`` as the official IMDB archive and GloVe zip (their real md5s)."""
    for attr in ("ARCHIVE", "GLOVE"):
        f = getattr(imdb, attr)
        md5 = hashlib.md5((directory / f.name).read_bytes()).hexdigest()
        monkeypatch.setattr(imdb, attr, imdb.DataFile(f.name, ("https://example.invalid/" + f.name,), md5))


@pytest.fixture
def mini(tmp_path, monkeypatch):
    """Data directory holding the real subset as ``imdb/aclImdb_v1.tar.gz`` and a tiny GloVe zip."""
    directory = tmp_path / "imdb"
    directory.mkdir()
    (directory / imdb.ARCHIVE.name).write_bytes(ARCHIVE.read_bytes())
    write_glove_zip(directory / imdb.GLOVE.name)
    accept_as_official(monkeypatch, directory)
    offline(monkeypatch)
    return tmp_path


@pytest.fixture(scope="module")
def reviews():
    return read_reviews(ARCHIVE)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The task built on the subset (train/valid/test 1,400/600/2,000), seed 3."""
    root = tmp_path_factory.mktemp("imdb_built")
    (root / "imdb").mkdir()
    (root / "imdb" / imdb.ARCHIVE.name).write_bytes(ARCHIVE.read_bytes())
    write_glove_zip(root / "imdb" / imdb.GLOVE.name)
    mp = pytest.MonkeyPatch()
    accept_as_official(mp, root / "imdb")
    try:
        return ImdbTask().build({}, root, 3)
    finally:
        mp.undo()


def test_archive_layout(reviews):
    for split in ("train", "test"):
        texts, labels = reviews[split]
        assert len(texts) == 2000 and labels.dtype == np.int64
        assert (labels[:1000] == 0).all() and (labels[1000:] == 1).all()  # negatives first, then positives
    with tarfile.open(ARCHIVE) as tar:
        first = tar.extractfile("aclImdb/train/pos/0_9.txt").read().decode()
        neg0 = tar.extractfile("aclImdb/train/neg/0_3.txt").read().decode()
    assert reviews["train"][0][1000] == first and first.startswith("Bromwell High is a cartoon comedy")
    assert reviews["train"][0][0] == neg0


def test_archive_errors(tmp_path):
    bad = tmp_path / "onlypos.tar.gz"
    with tarfile.open(bad, "w:gz") as tar:
        data = b"A fine film."
        info = tarfile.TarInfo("aclImdb/train/pos/0_9.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ImdbFormatError, match="aclImdb/train/ must hold reviews in both pos/ and neg/"):
        read_reviews(bad)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + b"\x00" * 50)
    with pytest.raises(ImdbFormatError, match="not a readable tar.gz"):
        read_reviews(junk)


def test_tokeniser():
    assert tokenize("Don't!<br /><br />OK.") == ["do", "n't", "!", "ok", "."]
    assert tokenize("It's a well-known film, isn\u2019t it? I'd say 10/10 :)") == [
        "it", "'s", "a", "well-known", "film", ",", "is", "n't", "it", "?", "i", "'d", "say", "10", "/", "10",
        ":", ")",
    ]  # fmt: skip
    assert tokenize("Caf\u00e9 NOIR... we're") == ["caf\u00e9", "noir", ".", ".", ".", "we", "'re"]
    assert tokenize("   ") == []


def test_vocabulary(reviews):
    toks = [["b", "a", "c", "a"], ["c", "d", "b", "a"]]
    assert build_vocab(toks, size=3) == ["<unk>", "<pad>", "a", "b", "c"]  # counts 3, 2, 2 (b < c), d dropped
    tokens = [tokenize(t) for t in reviews["train"][0]]
    counts = Counter(t for doc in tokens for t in doc)
    itos = build_vocab(tokens, size=500)
    assert len(itos) == 502 and itos[:2] == ["<unk>", "<pad>"]
    assert [counts[w] for w in itos[2:]] == sorted(counts[w] for w in itos[2:])[::-1]
    assert min(counts[w] for w in itos[2:]) >= max(c for w, c in counts.items() if w not in set(itos))
    assert len(build_vocab(tokens)) == len(counts) + 2  # fewer than 25,000 distinct words in the subset


def test_vocabulary_is_the_training_split_only(built, reviews):
    index_size = built.model_args["embedding"].shape[0]
    train_idx, _ = split_indices(2000)
    words = {t for i in train_idx.tolist() for t in tokenize(reviews["train"][0][i])}
    assert index_size == len(words) + 2


def test_glove_text_format_and_embedding_matrix():
    lines, values = glove_lines(GLOVE_WORDS)
    words = {"<unk>": 0, "<pad>": 1, "movie": 2, "absentword": 3, "!": 4, "the": 5}
    vectors = read_glove(lines, words)
    assert sorted(vectors) == [2, 4, 5]
    np.testing.assert_array_equal(vectors[2], values[1].astype(np.float32))
    np.testing.assert_array_equal(vectors[4], values[GLOVE_WORDS.index("!")].astype(np.float32))
    m = embedding_matrix(6, vectors, seed=11)
    assert m.shape == (6, 100) and m.dtype == torch.float32
    assert (m[0] == 0).all() and (m[1] == 0).all()
    torch.testing.assert_close(m[5], torch.from_numpy(values[0].astype(np.float32)), rtol=0, atol=0)
    draw = torch.randn((6, 100), generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(m[3], draw[3], rtol=0, atol=0)  # missing word: its row of the N(0, 1) draw
    assert not torch.equal(embedding_matrix(6, vectors, seed=12)[3], m[3])
    with pytest.raises(ImdbFormatError, match="line 2 .'movie'.: 99 numbers, expected 100"):
        read_glove([lines[0], lines[1].rsplit(" ", 1)[0]], words)
    with pytest.raises(ImdbFormatError, match="line 1 .'the'."):
        read_glove(["the 0.1 x" + " 0" * 98], words)


def test_glove_from_zip_through_the_task(built, reviews):
    rows = built.model_args["embedding"]
    train_idx, _ = split_indices(2000)
    itos = build_vocab(tokenize(reviews["train"][0][i]) for i in train_idx.tolist())
    _, values = glove_lines(GLOVE_WORDS)
    for k, word in enumerate(GLOVE_WORDS[:-1]):  # every word of the tiny GloVe file but the unseen one
        torch.testing.assert_close(rows[itos.index(word)], torch.from_numpy(values[k].astype(np.float32)),
                                   rtol=0, atol=0)  # fmt: skip
    assert "zzzunseen" not in itos and (rows[:2] == 0).all()
    draw = torch.randn(rows.shape, generator=torch.Generator().manual_seed(3))  # the run seed
    assert torch.equal(rows[itos.index("cartoon")], draw[itos.index("cartoon")])
    assert built.model_args["pad_index"] == 1 and built.model_args["embedding_dropout"] == 0.65


def test_split_sizes_and_determinism(built):
    train, valid = split_indices(25000)
    assert (len(train), len(valid)) == (17500, 7500)
    assert len(set(train.tolist()) | set(valid.tolist())) == 25000
    again = split_indices(25000)
    assert torch.equal(train, again[0]) and torch.equal(valid, again[1])
    assert (len(built.train), len(built.valid), len(built.test)) == (1400, 600, 2000)
    assert abs(float(built.train.labels.mean()) - 0.5) < 0.05


def test_build_is_deterministic_and_items(mini, built):
    other = ImdbTask().build({}, mini, 3)
    assert all(torch.equal(a, b) for a, b in zip(other.train.tokens, built.train.tokens))
    assert torch.equal(other.model_args["embedding"], built.model_args["embedding"])
    tokens, label, length = built.train[0]
    assert tokens.dtype == torch.int64 and tokens.shape == (int(length),) and label.dtype == torch.float32
    assert int(tokens.max()) < built.model_args["embedding"].shape[0]


def test_option_errors(mini):
    with pytest.raises(ValueError, match="embedding_dropout"):
        ImdbTask().build({"embedding_dropout": 1.0}, mini, 0)
    with pytest.raises(ValueError, match="unknown option"):
        ImdbTask().build({"vocab": 10}, mini, 0)


def test_bucketing_little_padding_few_lengths(built):
    lengths = built.train.lengths

    def stats(batches):
        pad = sum(len(b) * lengths[b].max() for b in batches) / lengths.sum() - 1
        return pad, np.mean([len(set(lengths[b])) for b in batches])

    sampler = BucketBatchSampler(built.train, 32, shuffle=True, seed=5)
    batches = sampler.batches()
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every review once an epoch
    g = np.random.default_rng(0).permutation(len(lengths))
    random_batches = [g[i : i + 32] for i in range(0, len(g), 32)]
    pad, distinct = stats(batches)
    pad_random, distinct_random = stats(random_batches)
    assert pad < 0.1 < pad_random and distinct < distinct_random / 2
    assert sampler.batches() == batches  # same seed and epoch: same batches
    sampler.set_epoch(1)
    assert sampler.batches() != batches
    evaluation = BucketBatchSampler(built.valid, 50, shuffle=False)
    assert sorted(i for b in evaluation for i in b) == list(range(len(built.valid)))


def test_bucketing_over_processes_and_subsets(built):
    sub = torch.utils.data.Subset(built.train, list(range(0, 1400, 3)))
    shards = [list(BucketBatchSampler(sub, 16, True, 1, rank, 3)) for rank in range(3)]
    assert len({len(s) for s in shards}) == 1  # the same number of steps on every process
    seen = [i for s in shards for b in s for i in b]
    assert set(seen) == set(range(len(sub)))
    for b in shards[0]:
        assert np.ptp(built.train.lengths[np.array(sub.indices)[b]]) <= np.ptp(built.train.lengths)
    ev = [i for r in range(3) for b in BucketBatchSampler(sub, 16, False, 0, r, 3) for i in b]
    assert sorted(ev) == list(range(len(sub)))  # evaluation: every item exactly once


@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_prediction_does_not_depend_on_the_batch(built, backend):
    torch.manual_seed(0)
    model = EmbeddingSequenceModel(built.model_args["embedding"], 0.65, 1, 1, hidden_size=16, num_layers=2,
                                   dt=(6.6e-3, 0.205), alpha=0.0, dropout=0.61, readout="last",
                                   backend=backend).eval()  # fmt: skip
    items = [built.test[i] for i in (5, 1500, 17, 900)]
    tokens, _, lengths = collate(items)
    assert len(set(lengths.tolist())) == 4 and (tokens[lengths.argmin(), -1] == imdb.PAD_INDEX)
    with torch.no_grad():
        together = model(tokens, lengths=lengths)[:, 0]
        alone = torch.cat([model(t[None], lengths=n[None]) for t, _, n in items])[:, 0]
        noise = tokens.clone()
        for row, n in enumerate(lengths.tolist()):
            noise[row, n:] = torch.randint(0, 50, (tokens.shape[1] - n,))  # garbage instead of <pad>
        garbage = model(noise, lengths=lengths)[:, 0]
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(garbage, together, rtol=0, atol=0)


def test_embedding_row_dropout():
    emb = torch.randn(7, 4)
    model = EmbeddingSequenceModel(emb, 0.5, 1, 1, hidden_size=3, num_layers=1, dt=0.1, alpha=0.0, dropout=0.0,
                                   readout="last")  # fmt: skip
    tokens = torch.tensor([[2, 3, 2, 3, 4, 4]])
    torch.manual_seed(1)
    out = model.embed(tokens)[0]
    for word in (2, 3, 4):  # a word is dropped everywhere or kept (x2) everywhere in the batch
        rows = out[tokens[0] == word]
        assert torch.equal(rows[0], rows[1])
        assert torch.equal(rows[0], torch.zeros(4)) or torch.allclose(rows[0], 2 * emb[word])
    model.eval()
    assert torch.equal(model.embed(tokens)[0], emb[tokens[0]])
    with pytest.raises(ValueError, match="embedding_dropout"):
        EmbeddingSequenceModel(emb, 1.0, 1, 1, hidden_size=3, num_layers=1, dt=0.1, alpha=0.0, dropout=0.0,
                               readout="last")  # fmt: skip


def test_missing_files_offline_name_each_file(tmp_path, monkeypatch):
    offline(monkeypatch)
    with pytest.raises(DataUnavailableError) as err:
        ImdbTask().build({}, tmp_path, 0)
    msg = str(err.value)
    for part in (*imdb.ARCHIVE.urls[:1], imdb.ARCHIVE.md5, *imdb.GLOVE.urls[:1], imdb.GLOVE.md5,
                 str(tmp_path / "imdb")):  # fmt: skip
        assert part in msg
    assert "\n" not in msg


def test_corrupt_file_detected_and_not_used(mini):
    glove = mini / "imdb" / imdb.GLOVE.name
    glove.write_bytes(glove.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="checksum mismatch for glove.6B.zip"):
        ImdbTask().build({}, mini, 0)
    assert glove.exists()


def test_spec():
    s = ImdbTask.spec
    assert (s.input_size, s.output_size, s.readout, s.loss, s.metric) == (
        100, 1, "last", "binary_cross_entropy", "accuracy"
    )  # fmt: skip


def test_one_short_training_epoch(mini, tmp_path):
    """The task through the package's trainer: one epoch, the embedding trained from the GloVe matrix."""
    from unicornn.training.trainer import train_run

    cfg = dict(model="embedding-unicornn", hidden_size=8, num_layers=2, dt=[6.6e-3, 0.205], alpha=0.0,
               dropout=0.61, lr=1e-3, batch_size=32, eval_batch_size=100, epochs=1, train_subset=200,
               eval_subset=100)  # fmt: skip
    result = train_run(ImdbTask(), cfg, {}, tmp_path / "run", data_dir=mini, quiet=True, log=lambda m: None,
                       tensorboard=False)  # fmt: skip
    assert result["status"] == "finished" and 0 <= result["best"]["test"] <= 100
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    weights = state["model"] if "model" in state else state
    emb = weights["embedding.weight"]
    _, values = glove_lines(GLOVE_WORDS)
    assert emb.shape[1] == 100 and (emb[1] == 0).all()  # <pad> stays zero
    assert not torch.equal(emb[2], torch.from_numpy(values[0].astype(np.float32)))  # trained from GloVe


def test_cli_train_small_preset(mini, tmp_path, capsys):
    """``unicornn train imdb --preset small`` on the real subset and a tiny GloVe file, one short epoch."""
    from test_tasks_cli import cli_train

    result = cli_train(capsys, "imdb", mini, tmp_path / "runs", "hidden_size=8", "train_subset=200",
                       "eval_subset=100")  # fmt: skip
    assert result["metric"] == "accuracy" and 0 <= result["best"]["test"] <= 100
    from unicornn.cli import main  # eval rebuilds the data, then the model from them, then loads its weights

    assert main(["eval", str(tmp_path / "runs" / "imdb" / "seed-0"), "--data-dir", str(mini), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert evaluated["test"]["accuracy"] == pytest.approx(result["best"]["test"], abs=1e-9)
