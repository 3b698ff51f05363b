"""Accuracy on real archive data: UnICORNN (estimator defaults) against the package's LSTM and GRU (same
budget and selection rule) and aeon's ROCKET, on the UEA/UCR and Monash data sets that aeon bundles.

Every model is fitted on the archive's own training file and scored on its test file, for 5 seeds
(``random_state`` 0..4); the table gives mean +- std over the seeds and the wall time of one fit (one CPU
thread). UnICORNN, LSTM and GRU are :class:`unicornn.UnICORNNClassifier` / :class:`unicornn.UnICORNNRegressor`
with their defaults, only ``model`` differs. ROCKET is aeon's ``RocketClassifier`` / ``RocketRegressor``
(10,000 kernels) computed in the same run; for JapaneseVowels, whose series have unequal lengths, which ROCKET
does not take, every case is zero-padded at its end to the longest case (aeon's ``Padder``). Published
accuracies (where the source has the data set) are copied from the files named in :data:`PUBLISHED`.

Resumable: every (data set, model, seed) cell is written to the JSON as soon as it finishes; the cells run
seed by seed, the slowest ones (:data:`SLOW`) last, so an interrupted run still covers every data set; a
cell with fewer than 5 seeds says so (n=...). Classification: test accuracy in %;
regression: test RMSE in the target's units.

    PYTHONPATH=src python benchmarks/accuracy_uea.py             # runs what is missing, writes the results
    PYTHONPATH=src python benchmarks/accuracy_uea.py --jobs 2    # two cells at a time (fit times then share the CPU)
    PYTHONPATH=src python benchmarks/accuracy_uea.py --report    # only rewrites the table and the plot
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from pathlib import Path

import numpy as np

CLASSIFICATION = [
    "BasicMotions",
    "JapaneseVowels",
    "ACSF1",
    "ArrowHead",
    "GunPoint",
    "ItalyPowerDemand",
    "OSULeaf",
]
REGRESSION = ["Covid3Month", "CardanoSentiment"]
#: Column -> the estimator's ``model`` and arguments besides ``random_state`` and ``device`` (None: aeon's ROCKET).
#: The first three use the estimator defaults (``training="readout"``); the ``_full`` columns train every
#: parameter end to end (``training="full"`` with that mode's defaults).
COLUMNS = {
    "unicornn": ("unicornn", {}),
    "lstm": ("lstm", {}),
    "gru": ("gru", {}),
    "unicornn_full": ("unicornn", {"training": "full"}),
    "lstm_full": ("lstm", {"training": "full"}),
    "gru_full": ("gru", {"training": "full"}),
    "rocket": None,
}
MODELS = list(COLUMNS)
LABELS = {"unicornn": "UnICORNN", "lstm": "LSTM", "gru": "GRU", "unicornn_full": "UnICORNN (full)",
          "lstm_full": "LSTM (full)", "gru_full": "GRU (full)", "rocket": "ROCKET (aeon, this run)"}  # fmt: skip
SEEDS = range(5)
RESULTS = Path(__file__).parent / "results"

#: Published test accuracies (fractions) on the archive's default train/test split, with their sources.
PUBLISHED = {
    "ROCKET": {
        "source": "Dempster et al., ROCKET (2020): github.com/angus924/rocket, results/results_ucr.csv at commit "
        "41cfd4b5b1f6eb4b1adcab7e71d9ee6d27fb1e08 (column accuracy_mean: mean of 10 runs on the default split; "
        "the file covers the univariate UCR archive only)",
        "accuracy": {
            "ACSF1": 0.886,
            "ArrowHead": 0.81428571,
            "GunPoint": 1.0,
            "ItalyPowerDemand": 0.96958212,
            "OSULeaf": 0.94090909,
        },  # fmt: skip
    },
    "InceptionTime": {
        "source": "Ismail Fawaz et al., InceptionTime (2020): github.com/hfawaz/InceptionTime, "
        "results-InceptionTime-128.csv at commit 365ce4d2c23ef1f2b3427c338756ad71d8b9f04e (UCR archive 2018) and "
        "results-mts.csv at commit 0d623a3bc20fde69203f9b2f75bba6c69c5ce6b7 (UEA multivariate archive); column "
        "accuracy",
        "accuracy": {
            "ACSF1": 0.92,
            "ArrowHead": 0.8457142857142858,
            "GunPoint": 1.0,
            "ItalyPowerDemand": 0.9650145772594751,
            "OSULeaf": 0.9421487603305784,
            "BasicMotions": 1.0,
            "JapaneseVowels": 0.9918918918918921,
        },  # fmt: skip
    },
}


def _load(name: str):
    from unicornn.tasks.uea import load_uea, to_collection

    tr, te = load_uea(name)
    return (*to_collection(tr), *to_collection(te), tr.is_classification)


def _pad(X, length: int) -> np.ndarray:
    from aeon.transformations.collection.unequal_length import Padder

    return Padder(padded_length=length, fill_value=0).fit_transform(X)


def run_cell(name: str, column: str, seed: int) -> dict:
    """Fit one column's model on the training file, score it on the test file."""
    import torch

    torch.set_num_threads(1)
    Xtr, ytr, Xte, yte, classification = _load(name)
    if COLUMNS[column] is None:
        if classification:
            from aeon.classification.convolution_based import RocketClassifier as Est
        else:
            from aeon.regression.convolution_based import RocketRegressor as Est
        est = Est(n_kernels=10000, random_state=seed, n_jobs=1)
        if isinstance(Xtr, list):  # unequal lengths: pad every case to the longest one
            longest = max(x.shape[1] for x in [*Xtr, *Xte])
            Xtr, Xte = _pad(Xtr, longest), _pad(Xte, longest)
        extra = {}
    else:
        from unicornn import UnICORNNClassifier, UnICORNNRegressor

        model, kwargs = COLUMNS[column]
        est = (UnICORNNClassifier if classification else UnICORNNRegressor)(
            model=model, random_state=seed, device="cpu", **kwargs
        )
        extra = None
    t0 = time.perf_counter()
    est.fit(Xtr, ytr)
    fit_s = time.perf_counter() - t0
    pred = est.predict(Xte)
    if classification:
        score = float(np.mean(pred == yte) * 100.0)
    else:
        score = float(np.sqrt(np.mean((np.asarray(pred, dtype=float) - yte.astype(float)) ** 2)))
    if extra is None:
        extra = {"best_epoch": est.best_epoch_, "epochs": est.n_epochs_}
    return {"score": score, "fit_s": fit_s, **extra}


#: The cells that take most of the time (a gated RNN's backward pass over 427 and 1,460 steps on a CPU thread):
#: run after every other cell, so that a run cut short still has every other cell for every seed.
SLOW = {(n, m) for n in ("ACSF1", "OSULeaf") for m in ("lstm_full", "gru_full")}


def cell_order() -> list[str]:
    """``"dataset|model|seed"`` keys: seed by seed, the :data:`SLOW` cells last."""
    keys = [(n, m, s) for s in SEEDS for n in CLASSIFICATION + REGRESSION for m in MODELS]
    keys.sort(key=lambda k: (k[:2] in SLOW, k[2]))
    return [f"{n}|{m}|{s}" for n, m, s in keys]


def _run_key(key: str) -> tuple[str, dict]:
    name, model, seed = key.split("|")
    return key, run_cell(name, model, int(seed))


def _stats(cells: dict, name: str, model: str) -> dict | None:
    got = [cells[k] for k in (f"{name}|{model}|{s}" for s in SEEDS) if k in cells]
    if not got:
        return None
    scores = np.array([g["score"] for g in got])
    return {"mean": float(scores.mean()), "std": float(scores.std(ddof=1)) if len(scores) > 1 else 0.0,
            "n": len(got), "fit_s": float(np.mean([g["fit_s"] for g in got]))}  # fmt: skip


def _targets(table: dict, suffix: str = "") -> dict:
    """The issue's two targets for the columns ``unicornn``/``lstm``/``gru`` + ``suffix``."""
    ahead, gaps = [], []
    for n, row in table.items():
        u, lstm, gru = (row[m + suffix] for m in ("unicornn", "lstm", "gru"))
        if u and lstm and gru:
            better = (lambda a, b: a > b) if n in CLASSIFICATION else (lambda a, b: a < b)
            if better(u["mean"], lstm["mean"]) and better(u["mean"], gru["mean"]):
                ahead.append(n)
        if n in CLASSIFICATION and u and row["rocket"]:
            gaps.append(row["rocket"]["mean"] - u["mean"])
    return {
        "unicornn_ahead_of_lstm_and_gru": ahead,
        "n_ahead": len(ahead),
        "n_compared": sum(
            1 for r in table.values() if all(r[m + suffix] for m in ("unicornn", "lstm", "gru"))
        ),
        "mean_gap_to_rocket_points": float(np.mean(gaps)) if gaps else None,
        "n_gap_sets": len(gaps),
    }


def summarise(doc: dict) -> dict:
    """Per data set and column: mean, std, seeds, fit time; the two targets for the default and the full
    columns."""
    table = {n: {m: _stats(doc["cells"], n, m) for m in MODELS} for n in CLASSIFICATION + REGRESSION}
    return {"table": table, "targets": _targets(table), "targets_full": _targets(table, "_full")}


def _fmt(s: dict | None, digits: int) -> str:
    """``mean ± std``; with fewer seeds than planned, their number (one seed: no std)."""
    if s is None:
        return "not run"
    if s["n"] == 1:
        return f"{s['mean']:.{digits}f} (n=1)"
    n = f" (n={s['n']})" if s["n"] != len(SEEDS) else ""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}{n}"


def markdown(doc: dict) -> str:
    summary = doc["summary"]
    lines = [
        "# Accuracy on UEA/UCR and Monash data bundled with aeon",
        "",
        f"aeon {doc['versions']['aeon']}, scikit-learn {doc['versions']['sklearn']}, torch {doc['versions']['torch']}; "
        f"archive train/test split; seeds 0-{len(SEEDS) - 1} (mean ± std; n=k where fewer seeds finished); one CPU "
        "thread per fit. Command: "
        "`PYTHONPATH=src python benchmarks/accuracy_uea.py`.",
        "",
        "Classification: test accuracy (%). UnICORNN, LSTM, GRU: `UnICORNNClassifier(model=...)` with the "
        'estimator defaults (`training="readout"`: random recurrent layers with multi-scale time steps for '
        "UnICORNN, PyTorch's initialisation for the LSTM and GRU, and a ridge read-out of their states pooled "
        'over time); (full): the same estimator with `training="full"` (every parameter trained by Adam, best '
        "validation epoch, early stopping: same budget and selection rule for the three models); ROCKET: aeon's "
        "`RocketClassifier` in the same run.",
        "",
        "| data set | "
        + " | ".join(LABELS[m].replace(", this run", "") for m in MODELS)
        + " | ROCKET (published) | InceptionTime (published) |",
        "|---|" + "---|" * (len(MODELS) + 2),
    ]
    for n in CLASSIFICATION:
        row = summary["table"][n]
        pub = [PUBLISHED[k]["accuracy"].get(n) for k in ("ROCKET", "InceptionTime")]
        pub_s = [f"{100 * p:.1f}" if p is not None else "-" for p in pub]
        lines.append(
            f"| {n} | " + " | ".join(_fmt(row[m], 1) for m in MODELS) + f" | {pub_s[0]} | {pub_s[1]} |"
        )
    lines += [
        "",
        "Regression: test RMSE (target units, lower is better). ROCKET: aeon's `RocketRegressor`.",
        "",
        "| data set | " + " | ".join(LABELS[m].replace(", this run", "") for m in MODELS) + " |",
        "|---|" + "---|" * len(MODELS),
    ]
    for n in REGRESSION:
        row = summary["table"][n]
        lines.append(f"| {n} | " + " | ".join(_fmt(row[m], 4) for m in MODELS) + " |")
    lines += ["", "Wall time of one fit (s, mean over seeds):", "", "| data set | " + " | ".join(LABELS[m] for m in MODELS) + " |",
              "|---|" + "---|" * len(MODELS)]  # fmt: skip
    for n in CLASSIFICATION + REGRESSION:
        row = summary["table"][n]
        lines.append(
            f"| {n} | " + " | ".join(f"{row[m]['fit_s']:.1f}" if row[m] else "-" for m in MODELS) + " |"
        )
    lines.append("")
    for key, label in (("targets", "estimator defaults"), ("targets_full", 'training="full"')):
        t = summary[key]
        gap = t["mean_gap_to_rocket_points"]
        lines.append(
            f"Targets ({label}): UnICORNN ahead of both LSTM and GRU on {t['n_ahead']} of {t['n_compared']} data "
            f"sets (target: 6 of 9): {', '.join(t['unicornn_ahead_of_lstm_and_gru']) or 'none'}. Mean gap to "
            f"ROCKET (this run) over {t['n_gap_sets']} classification sets: "
            + (f"{gap:.1f} accuracy points (target: at most 5)." if gap is not None else "-")
        )
        lines.append("")
    lines += [
        "Published figures: " + "; ".join(f"{k}: {v['source']}" for k, v in PUBLISHED.items()) + ".",
        "",
    ]
    return "\n".join(lines)


def plot(doc: dict, path: Path) -> None:
    from unicornn.plotting import pyplot, save_figure

    plt = pyplot()
    table = doc["summary"]["table"]
    fig, axes = plt.subplots(
        1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [len(CLASSIFICATION), 2.2]}
    )
    for ax, names, ylabel in (
        (axes[0], CLASSIFICATION, "test accuracy (%)"),
        (axes[1], REGRESSION, "test RMSE"),
    ):
        width = 0.8 / len(MODELS)
        for i, m in enumerate(MODELS):
            means = [table[n][m]["mean"] if table[n][m] else np.nan for n in names]
            stds = [table[n][m]["std"] if table[n][m] else 0.0 for n in names]
            ax.bar(np.arange(len(names)) + (i - (len(MODELS) - 1) / 2) * width, means, width, yerr=stds,
                   label=LABELS[m], capsize=2)  # fmt: skip
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(0, 128)  # room above the bars for the legend
    axes[0].set_yticks(range(0, 101, 20))
    axes[0].legend(fontsize=8, loc="upper center", ncol=4)
    fig.suptitle(
        f"archive train/test split, seeds 0-{len(SEEDS) - 1} (mean ± std over the seeds that finished)"
    )
    save_figure(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(RESULTS / "accuracy_uea.json"))
    parser.add_argument("--report", action="store_true", help="only rewrite the table and the plot")
    parser.add_argument("--jobs", type=int, default=1, help="cells fitted at the same time (processes)")
    args = parser.parse_args(argv)
    import aeon
    import sklearn
    import torch

    from unicornn import UnICORNNClassifier
    from unicornn.estimators import MODE_DEFAULTS
    from unicornn.plotting import write_json, write_text

    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"cells": {}}
    doc["versions"] = {"aeon": aeon.__version__, "sklearn": sklearn.__version__, "torch": torch.__version__}
    doc["estimator_defaults"] = UnICORNNClassifier().get_params()
    doc["mode_defaults"] = MODE_DEFAULTS  # what the None entries above stand for, per training mode
    doc["published"] = PUBLISHED
    if not args.report:
        todo = [k for k in cell_order() if k not in doc["cells"]]
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            for key, cell in pool.imap_unordered(_run_key, todo) if args.jobs > 1 else map(_run_key, todo):
                doc["cells"][key] = cell
                print(key, cell, flush=True)
                doc["summary"] = summarise(doc)
                write_json(doc, out)
    doc["summary"] = summarise(doc)
    write_json(doc, out)
    md = markdown(doc)
    write_text(md, out.with_suffix(".md"))
    plot(doc, out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
