"""How the estimators' defaults were chosen: candidate settings scored on validation splits of the TRAINING
files only (the test files are never read).

For every data set of the accuracy table, ``SELECT_FRACTION`` of the training cases (stratified by class) is
held out as a selection set, with two different draws (split seeds 0 and 1); each candidate is fitted on the
rest (the estimator itself then holds out its own validation fraction for the best epoch) and scored on the
selection set: accuracy for classification, and for regression the RMSE divided by the selection targets'
standard deviation. Candidates are ranked per data set (mean score over the two draws) and the candidate with
the best mean rank over the nine data sets wins. Six rounds (see :data:`CANDIDATES`): end-to-end training
(``training="full"``) in the first three -- nine candidates, then four around the first round's best, then a
read-out pooled over time -- and random oscillators with a ridge read-out (``training="readout"``) in the
fourth, around the fourth round's best in the fifth, and with units spread over input scales too in the sixth;
the ranking covers all of them. For ``training="full"``, epochs, patience and batch size are fixed by
the time budget of the accuracy table (they are shared with the LSTM and GRU columns), not tuned.

Usage (resumable: each (candidate, data set, split) cell is cached in the JSON as it finishes)::

    PYTHONPATH=src python benchmarks/choose_defaults.py            # writes benchmarks/results/defaults_selection.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from unicornn.estimators import DT_MIN, UnICORNNClassifier, UnICORNNRegressor
from unicornn.plotting import write_json
from unicornn.tasks.uea import load_uea, stratified_split, to_collection

DATASETS = ["BasicMotions", "JapaneseVowels", "ACSF1", "ArrowHead", "GunPoint", "ItalyPowerDemand", "OSULeaf",
            "Covid3Month", "CardanoSentiment"]  # fmt: skip
SELECT_FRACTION = 0.25
SPLITS = (0, 1)
#: The arguments every end-to-end candidate shares: the estimator's defaults when the first two rounds ran.
_FULL = dict(training="full", hidden_size=64, num_layers=2, readout="last")
#: name -> estimator arguments; ``horizon`` H stands for dt = min(1, max(DT_MIN, H / longest training case)).
CANDIDATES = {
    # first round: training="full" (every parameter trained end to end by Adam, best validation epoch)
    "H25": dict(_FULL, horizon=25.0),
    "H5": dict(_FULL, horizon=5.0),
    "H100": dict(_FULL, horizon=100.0),
    "dt0.1": dict(_FULL, dt=0.1),
    "H25-alpha1": dict(_FULL, horizon=25.0, alpha=1.0),
    "H25-lr1e-2": dict(_FULL, horizon=25.0, lr=1e-2),
    "H25-lr1e-3": dict(_FULL, horizon=25.0, lr=1e-3),
    "H25-h128": dict(_FULL, horizon=25.0, hidden_size=128),
    "H25-1layer": dict(_FULL, horizon=25.0, num_layers=1),
    # second round, around the first round's best (H25-h128)
    "H25-h128-1layer": dict(_FULL, horizon=25.0, hidden_size=128, num_layers=1),
    "H10-h128": dict(_FULL, horizon=10.0, hidden_size=128),
    "H50-h128": dict(_FULL, horizon=50.0, hidden_size=128),
    "H25-h128-lr1e-3": dict(_FULL, horizon=25.0, hidden_size=128, lr=1e-3),
    # third round: the read-out pooled over time (mean and maximum of the top layer's states)
    "H25-h128-pool": dict(_FULL, horizon=25.0, hidden_size=128, readout="pool"),
    "H100-h128-pool": dict(_FULL, horizon=100.0, hidden_size=128, readout="pool"),
    "H5-h128-pool": dict(_FULL, horizon=5.0, hidden_size=128, readout="pool"),
    "H25-h128-pool-lr1e-3": dict(_FULL, horizon=25.0, hidden_size=128, readout="pool", lr=1e-3),
    # fourth round: training="readout" (random multi-scale oscillators, ridge read-out of pooled states)
    "readout-h1024": dict(training="readout", hidden_size=1024, num_layers=1, alpha=0.0, input_spread=1.0),
    "readout-h1024-alpha1": dict(
        training="readout", hidden_size=1024, num_layers=1, alpha=1.0, input_spread=1.0
    ),
    "readout-h2048": dict(training="readout", hidden_size=2048, num_layers=1, alpha=0.0, input_spread=1.0),
    "readout-h1024-2layers": dict(
        training="readout", hidden_size=1024, num_layers=2, alpha=0.0, input_spread=1.0
    ),
    "readout-h256": dict(training="readout", hidden_size=256, num_layers=1, alpha=0.0, input_spread=1.0),
    # fifth round, around the fourth round's best (readout-h1024-alpha1)
    "readout-h1024-alpha0.3": dict(
        training="readout", hidden_size=1024, num_layers=1, alpha=0.3, input_spread=1.0
    ),
    "readout-h1024-alpha3": dict(
        training="readout", hidden_size=1024, num_layers=1, alpha=3.0, input_spread=1.0
    ),
    "readout-h2048-alpha1": dict(
        training="readout", hidden_size=2048, num_layers=1, alpha=1.0, input_spread=1.0
    ),
    # sixth round: the fifth round's best with units spread over input scales too (gains 0.1-10, random biases)
    "readout-h1024-alpha3-spread10": dict(
        training="readout", hidden_size=1024, num_layers=1, alpha=3.0, input_spread=10.0
    ),  # fmt: skip
    "readout-h1024-alpha3-spread3": dict(
        training="readout", hidden_size=1024, num_layers=1, alpha=3.0, input_spread=3.0
    ),  # fmt: skip
}


def _subset(X, idx):
    return X[idx] if isinstance(X, np.ndarray) else [X[i] for i in idx]


def _length(X) -> int:
    return X.shape[2] if isinstance(X, np.ndarray) else max(x.shape[1] for x in X)


def score_cell(name: str, candidate: dict, split_seed: int) -> dict:
    """Fit ``candidate`` on the training file minus its selection part; score on the selection part."""
    tr, _ = load_uea(name)  # the training file only: the test file is not used
    X, y = to_collection(tr)
    classification = tr.is_classification
    codes = np.unique(y, return_inverse=True)[1] if classification else None
    fit_idx, sel_idx = stratified_split(codes, len(y), SELECT_FRACTION, split_seed)
    args = dict(candidate)
    horizon = args.pop("horizon", None)
    if horizon is not None:
        args["dt"] = float(min(1.0, max(DT_MIN, horizon / _length(_subset(X, fit_idx)))))
    est = (UnICORNNClassifier if classification else UnICORNNRegressor)(
        random_state=split_seed, device="cpu", **args
    )
    t0 = time.perf_counter()
    est.fit(_subset(X, fit_idx), y[fit_idx])
    pred = est.predict(_subset(X, sel_idx))
    if classification:
        score = float(np.mean(pred == y[sel_idx]))
    else:
        target = y[sel_idx].astype(float)
        score = float(np.sqrt(np.mean((pred - target) ** 2)) / (target.std() or 1.0))
    return {"score": score, "higher_is_better": classification, "fit_s": time.perf_counter() - t0,
            "best_epoch": est.best_epoch_, "epochs": est.n_epochs_}  # fmt: skip


def rank(cells: dict) -> list[tuple[str, float]]:
    """Candidates by mean rank over the data sets (rank 1 = best mean selection score on a data set)."""
    ranks = {c: [] for c in CANDIDATES}
    for name in DATASETS:
        means = {}
        for c in CANDIDATES:
            got = [cells.get(f"{c}|{name}|{s}") for s in SPLITS]
            if all(g is not None for g in got):
                sign = 1.0 if got[0]["higher_is_better"] else -1.0
                means[c] = sign * float(np.mean([g["score"] for g in got]))
        if len(means) != len(CANDIDATES):
            continue
        order = sorted(means, key=lambda c: -means[c])
        for c in CANDIDATES:  # ties share the mean of their ranks
            tied = [i + 1 for i, o in enumerate(order) if means[o] == means[c]]
            ranks[c].append(float(np.mean(tied)))
    return sorted(
        ((c, float(np.mean(r)) if r else float("nan")) for c, r in ranks.items()), key=lambda t: t[1]
    )


#: Column labels of :func:`markdown_table`.
SHORT = {"BasicMotions": "BM", "JapaneseVowels": "JV", "ACSF1": "ACSF1", "ArrowHead": "AH", "GunPoint": "GP",
         "ItalyPowerDemand": "IPD", "OSULeaf": "OSU", "Covid3Month": "Covid (nRMSE)",
         "CardanoSentiment": "Cardano (nRMSE)"}  # fmt: skip


def markdown_table(cells: dict) -> str:
    """Candidates by mean rank, with each data set's mean selection score (accuracy in %, or normalised RMSE)."""
    lines = ["| candidate | mean rank | " + " | ".join(SHORT[n] for n in DATASETS) + " |",
             "|---|---|" + "---|" * len(DATASETS)]  # fmt: skip
    for c, r in rank(cells):
        scores = []
        for n in DATASETS:
            got = [cells[f"{c}|{n}|{s}"] for s in SPLITS]
            mean = float(np.mean([g["score"] for g in got]))
            scores.append(f"{100 * mean:.0f}" if got[0]["higher_is_better"] else f"{mean:.2f}")
        lines.append(f"| {c} | {r:.2f} | " + " | ".join(scores) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "defaults_selection.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"cells": {}}
    for s in SPLITS:
        for name in DATASETS:
            for c, cand in CANDIDATES.items():
                key = f"{c}|{name}|{s}"
                if key in doc["cells"]:
                    continue
                doc["cells"][key] = score_cell(name, cand, s)
                print(key, doc["cells"][key], flush=True)
                doc["candidates"], doc["ranking"] = CANDIDATES, rank(doc["cells"])
                write_json(doc, out)
    print(markdown_table(doc["cells"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
