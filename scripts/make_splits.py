"""Generate the shipped train/validation/test index lists of the UEA/Monash tasks.

Usage: ``python scripts/make_splits.py [--check]`` (writes, or with ``--check`` only compares, the files in
``src/unicornn/tasks/data/``).

Procedure (the one of Morrill et al.'s neural-RDE experiments, which the UnICORNN paper follows for
EigenWorms and BIDMC32): the archive's train and test files are merged, train cases first, in file order,
giving ``n`` cases; then, with numpy's global generator seeded by ``numpy.random.seed(0)``:

1. ``perm = numpy.random.permutation(n)``; the first ``ceil(0.15 * n)`` of ``perm`` are the test set, the
   rest (in ``perm`` order) the train+validation pool;
2. ``perm2 = numpy.random.permutation(len(pool))``; the first ``ceil(len(pool) * 0.15 / 0.85)`` of
   ``pool[perm2]`` are the validation set, the rest the training set.

Those are exactly the draws of two calls ``sklearn.model_selection.train_test_split(..., test_size=0.15)``
and ``(..., test_size=0.15 / 0.85)`` without ``random_state`` or stratification after
``numpy.random.seed(0)``; when scikit-learn is installed this script checks the lists against it. It gives
181/39/39 for EigenWorms (259 cases) and 5563/1193/1193 for BIDMC32 (7,949 cases).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import numpy as np

DATA_DIR = pathlib.Path(__file__).resolve().parents[1] / "src" / "unicornn" / "tasks" / "data"
TEST_FRAC = VALID_FRAC = 0.15
SEED = 0

SPLITS = {
    "eigenworms_split.json": ("EigenWorms (UEA), EigenWorms_TRAIN.ts then EigenWorms_TEST.ts", 259),
    "bidmc32_split.json": ("BIDMC32RR / BIDMC32HR (Monash TSER), *_TRAIN.ts then *_TEST.ts", 7949),
}


def seed0_split(n: int, seed: int = SEED) -> dict[str, list[int]]:
    """The three index lists (into the merged cases) of the procedure in the module docstring."""
    np.random.seed(seed)
    perm = np.random.permutation(n)
    n_test = math.ceil(TEST_FRAC * n)
    test, pool = perm[:n_test], perm[n_test:]
    perm2 = np.random.permutation(len(pool))
    n_valid = math.ceil(len(pool) * (VALID_FRAC / (1 - TEST_FRAC)))
    valid, train = pool[perm2[:n_valid]], pool[perm2[n_valid:]]
    return {"train": train.tolist(), "valid": valid.tolist(), "test": test.tolist()}


def sklearn_split(n: int, seed: int = SEED) -> dict[str, list[int]] | None:
    """The same split made by scikit-learn's ``train_test_split`` (None if scikit-learn is missing)."""
    try:
        from sklearn.model_selection import train_test_split
    except ImportError:
        return None
    np.random.seed(seed)
    pool, test = train_test_split(np.arange(n), test_size=TEST_FRAC, shuffle=True)
    train, valid = train_test_split(pool, test_size=VALID_FRAC / (1 - TEST_FRAC), shuffle=True)
    return {"train": train.tolist(), "valid": valid.tolist(), "test": test.tolist()}


def split_document(what: str, n: int) -> dict:
    split = seed0_split(n)
    return {
        "dataset": what,
        "n_cases": n,
        "procedure": (
            "numpy.random.seed(0); test = first ceil(0.15 n) of numpy.random.permutation(n); valid = first "
            "ceil(0.15/0.85 m) of the remaining m cases permuted by numpy.random.permutation(m); train = the "
            "rest (see scripts/make_splits.py)"
        ),
        "sizes": {k: len(v) for k, v in split.items()},
        **split,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the shipped files, write nothing")
    args = parser.parse_args(argv)
    status = 0
    for filename, (what, n) in SPLITS.items():
        doc = split_document(what, n)
        reference = sklearn_split(n)
        if reference is not None and any(reference[k] != doc[k] for k in ("train", "valid", "test")):
            print(f"{filename}: differs from scikit-learn's train_test_split", file=sys.stderr)
            return 1
        text = json.dumps(doc, indent=None, separators=(",", ":")) + "\n"
        path = DATA_DIR / filename
        if args.check:
            same = path.is_file() and path.read_text() == text
            print(f"{filename}: {'up to date' if same else 'DIFFERS'}")
            status |= not same
        else:
            path.write_text(text)
            print(f"wrote {path} {doc['sizes']} (scikit-learn check: {'done' if reference else 'skipped'})")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
