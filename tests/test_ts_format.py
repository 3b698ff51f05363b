"""The .ts reader on real archive files (aeon's bundled BasicMotions and CardanoSentiment), small hand-written
files for the edge cases, and the shipped split index lists."""

import importlib.util
import math
import pathlib
import zipfile

import numpy as np
import pytest
import torch

from unicornn.tasks.ts_format import (
    TsFormatError,
    channel_scaler,
    load_split,
    merge_train_test,
    parse_ts,
    read_ts,
    read_ts_from_zip,
)

REPO = pathlib.Path(__file__).resolve().parents[1]


def _make_splits_module():
    spec = importlib.util.spec_from_file_location("make_splits", REPO / "scripts" / "make_splits.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_splits = _make_splits_module()


def aeon_data_dir() -> pathlib.Path:
    aeon = pytest.importorskip("aeon", reason="aeon (the [tasks] extra) bundles the real UEA/TSER samples")
    return pathlib.Path(aeon.__file__).parent / "datasets" / "data"


def test_basic_motions_matches_aeon():
    """A real UEA multivariate classification file: values and labels as aeon reads them."""
    from aeon.datasets import load_classification

    base = aeon_data_dir() / "BasicMotions"
    for split in ("train", "test"):
        ts = read_ts(base / f"BasicMotions_{split.upper()}.ts")
        X, y = load_classification("BasicMotions", split=split)  # (n, channels, length); labels lower-cased
        assert ts.values.shape == (40, 100, 6) and ts.is_classification
        np.testing.assert_array_equal(ts.values, X.transpose(0, 2, 1))
        assert [s.lower() for s in ts.labels] == list(y)
        assert ts.class_labels == ["Standing", "Running", "Walking", "Badminton"]
        assert ts.problem_name == "BasicMotions" and ts.header["serieslength"] == 100


def test_basic_motions_through_zip_and_merge(tmp_path):
    """The UEA path the EigenWorms task uses: both files from one zip, merged train first, labels encoded."""
    base = aeon_data_dir() / "BasicMotions"
    archive = tmp_path / "BasicMotions.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for part in ("TRAIN", "TEST"):
            z.write(base / f"BasicMotions_{part}.ts", f"BasicMotions/BasicMotions_{part}.ts")
    train = read_ts_from_zip(archive, "BasicMotions_TRAIN.ts")
    test = read_ts_from_zip(archive, "BasicMotions_TEST.ts")
    values, labels = merge_train_test(train, test)
    assert values.shape == (80, 100, 6) and labels.dtype == np.int64
    np.testing.assert_array_equal(values[:40], read_ts(base / "BasicMotions_TRAIN.ts").values)
    np.testing.assert_array_equal(values[40:], read_ts(base / "BasicMotions_TEST.ts").values)
    order = train.class_labels
    expected = [order.index(s) for s in list(train.labels) + list(test.labels)]
    np.testing.assert_array_equal(labels, expected)
    assert sorted(np.bincount(labels).tolist()) == [20, 20, 20, 20]
    with pytest.raises(TsFormatError, match="one member named"):
        read_ts_from_zip(archive, "Missing_TRAIN.ts")
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"not a zip")
    with pytest.raises(TsFormatError, match="not a valid zip"):
        read_ts_from_zip(bad, "BasicMotions_TRAIN.ts")


def test_regression_file_matches_aeon():
    """A real Monash-format multivariate regression file (2 channels, like BIDMC32)."""
    from aeon.datasets import load_regression

    path = aeon_data_dir() / "CardanoSentiment" / "CardanoSentiment_TRAIN.ts"
    ts = read_ts(path)
    X, y = load_regression("CardanoSentiment", split="train")
    assert ts.class_labels is None and not ts.is_classification
    assert ts.values.shape == (74, 24, 2) and ts.labels.dtype == np.float64
    np.testing.assert_array_equal(ts.values, X.transpose(0, 2, 1))
    np.testing.assert_array_equal(ts.labels, y)
    with pytest.raises(TsFormatError, match="regression file has no class labels"):
        ts.encoded_labels()


REGRESSION = """# a comment
@problemName Tiny
@timeStamps false
@univariate false
@equalLength true
@seriesLength 3
@targetLabel true
@data
1,2,3:4,5,6:0.5
-1.5,?,2e-3:0,0,1:12
"""


def test_small_regression_file_exact_values():
    ts = parse_ts(REGRESSION.splitlines(), "tiny")
    assert ts.values.shape == (2, 3, 2)
    np.testing.assert_array_equal(ts.values[0], [[1, 4], [2, 5], [3, 6]])
    assert ts.values[1, 0, 0] == -1.5 and math.isnan(ts.values[1, 1, 0]) and ts.values[1, 2, 0] == 2e-3
    np.testing.assert_array_equal(ts.labels, [0.5, 12.0])


CLASSIFICATION = """@problemName Tiny
@timeStamps false
@classLabel true b a
@data
1,2:3,4:a
5,6:7,8:b
9,10:11,12:a
"""


def test_small_classification_file_label_order():
    ts = parse_ts(CLASSIFICATION.splitlines())
    assert list(ts.labels) == ["a", "b", "a"]
    np.testing.assert_array_equal(ts.encoded_labels(), [1, 0, 1])  # header order: b -> 0, a -> 1
    np.testing.assert_array_equal(ts.values[2], [[9, 11], [10, 12]])


@pytest.mark.parametrize(
    "text, message",
    [
        ("@problemName x\n@classLabel true a\n1,2:a\n", "header line"),
        ("@problemName x\n@classLabel true a\n", "no @data"),
        ("@problemName x\n@classLabel true a\n@data\n", "no cases"),
        ("@problemName x\n@data\n1:a\n", "before a @classLabel"),
        ("@timeStamps true\n@classLabel true a\n@data\n(0,1):a\n", "timeStamps"),
        ("@classLabel true a\n@data\n1,2:3:a\n", "ragged channels"),
        ("@classLabel true a\n@data\n1,2:3,4:a\n1,2:a\n", "channels, the first case"),
        ("@classLabel true a\n@data\n1,x:a\n", "not a number"),
        ("@classLabel true a\n@data\n1,2:c\n", "not one of the declared classes"),
        ("@targetLabel true\n@data\n1,2:high\n", "not a number"),
        ("@seriesLength 3\n@targetLabel true\n@data\n1,2:0.5\n", "serieslength says 3"),
        ("@dimensions 2\n@targetLabel true\n@data\n1,2:0.5\n", "dimensions says 2"),
        ("@univariate maybe\n", "true or false"),
        ("@classLabel true\n", "must list the class labels"),
        ("@targetLabel true\n@data\n1,2\n", "a case needs"),
    ],
)
def test_format_errors(text, message):
    with pytest.raises(TsFormatError, match=message):
        parse_ts(text.splitlines(), "bad.ts")


def test_merge_rejects_mismatched_files():
    a = parse_ts(CLASSIFICATION.splitlines())
    b = parse_ts(CLASSIFICATION.replace("true b a", "true a b").splitlines())
    with pytest.raises(TsFormatError, match="disagree on the classes"):
        merge_train_test(a, b)
    r = parse_ts(REGRESSION.splitlines())
    r2 = parse_ts(
        REGRESSION.replace("@seriesLength 3", "").replace("1,2,3:4,5,6", "1,2:4,5").splitlines()[:-1]
    )
    with pytest.raises(TsFormatError, match="differ in"):
        merge_train_test(r, r2)


def test_channel_scaler_float64_reference():
    rng = np.random.default_rng(3)
    x = rng.normal(5.0, 3.0, size=(7, 11, 3)).astype(np.float32)
    x[:, :, 2] = 4.0  # a constant channel is only centred
    mean, std = channel_scaler(x)
    flat = x.astype(np.float64).reshape(-1, 3)
    np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(std[:2], flat[:, :2].std(0), rtol=1e-12)
    assert std[2] == 1.0


@pytest.mark.parametrize(
    "filename, n, sizes",
    [("eigenworms_split.json", 259, (181, 39, 39)), ("bidmc32_split.json", 7949, (5563, 1193, 1193))],
)
def test_shipped_splits_regenerate(filename, n, sizes):
    split = load_split(filename, n)
    assert tuple(len(split[k]) for k in ("train", "valid", "test")) == sizes
    regenerated = make_splits.seed0_split(n)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(split[k], regenerated[k])
    with pytest.raises(ValueError, match="is for"):
        load_split(filename, n + 1)


@pytest.mark.parametrize("n", [259, 7949, 17])
def test_split_procedure_matches_sklearn(n):
    pytest.importorskip("sklearn", reason="scikit-learn is only needed to cross-check the split procedure")
    ours, theirs = make_splits.seed0_split(n), make_splits.sklearn_split(n)
    for k in ("train", "valid", "test"):
        np.testing.assert_array_equal(ours[k], theirs[k])


def test_split_script_check_mode(capsys):
    assert make_splits.main(["--check"]) == 0
    assert capsys.readouterr().out.count("up to date") == 2


def test_unequal_length_cases():
    text = "@equalLength false\n@classLabel true a b\n@data\n1,2,3:4,5,6:a\n7,8:9,10:b\n"
    ts = parse_ts(text.splitlines(), "u.ts")
    assert not ts.equal_length and ts.lengths.tolist() == [3, 2]
    np.testing.assert_array_equal(ts.values[1], [[7, 9], [8, 10]])  # (length_i, channels)
    with pytest.raises(TsFormatError, match="cannot be merged"):
        merge_train_test(ts, ts)
    equal = parse_ts(CLASSIFICATION.splitlines())
    assert equal.equal_length and equal.lengths.tolist() == [equal.values.shape[1]] * len(equal.values)


def test_unequal_length_against_the_header():
    text = "@equalLength true\n@classLabel true a\n@data\n1,2,3:a\n7,8:a\n"
    with pytest.raises(
        TsFormatError, match="line 5: 2 time points, the first case had 3, but the header says"
    ):
        parse_ts(text.splitlines(), "u.ts")
    text = "@seriesLength 3\n@classLabel true a\n@data\n1,2,3:a\n7,8:a\n"
    with pytest.raises(TsFormatError, match="serieslength says 3 but the cases have unequal lengths"):
        parse_ts(text.splitlines(), "u.ts")


def test_ragged_dataset_and_pad_collate():
    from unicornn.tasks.ts_format import RaggedSequenceDataset, pad_collate

    ds = RaggedSequenceDataset([np.ones((3, 2)), 2 * np.ones((1, 2))], np.array([0, 1]))
    x, y, lengths = pad_collate([ds[0], ds[1]])
    assert x.shape == (2, 3, 2) and lengths.tolist() == [3, 1] and y.tolist() == [0, 1]
    assert torch.all(x[1, 1:] == 0) and torch.all(x[1, 0] == 2)
    with pytest.raises(ValueError, match="one channel count"):
        RaggedSequenceDataset([np.ones((3, 2)), np.ones((3, 1))], np.array([0, 1]))
