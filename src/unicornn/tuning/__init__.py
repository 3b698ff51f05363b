"""Studies on Optuna for ``unicornn tune`` and ``unicornn sweep``: one engine for searches, grids and many
workers.

* :mod:`.study`: the storage (SQLite in the output folder by default, any Optuna URL, or a journal file) and
  the study (refused when it was created for another task or by the other command);
* :mod:`.workers`: the loop any number of processes run on one study (no trial runs twice; a dead worker's
  trial is failed and queued again, and its retry resumes the trial's run directory);
* :mod:`.space`: the search space (default around the preset, ``--space`` ranges);
* :mod:`.search`: the TPE search with pruning (:func:`run_tune`);
* :mod:`.results`: its outputs (the best trial, the table of trials, the PNGs).

:mod:`unicornn.sweep` runs its grid on the same study and worker loop.
"""

from __future__ import annotations

from .results import format_tune, plot_tune, preset_block, tune_summary, write_tune
from .search import PRUNERS, make_pruner, run_tune
from .space import Range, apply_params, check_space, default_space, parse_space, space_table
from .study import (
    INSTALL_HINT,
    MAX_RETRY,
    Storage,
    grid_sampler,
    open_storage,
    open_study,
    require_optuna,
    study_digest,
    trial_rows,
)
from .workers import Outcome, broadcast, optimize

__all__ = ["INSTALL_HINT", "MAX_RETRY", "PRUNERS", "Outcome", "Range", "Storage", "apply_params", "broadcast",
           "check_space", "default_space", "format_tune", "grid_sampler", "make_pruner", "open_storage",
           "open_study", "optimize", "parse_space", "plot_tune", "preset_block", "require_optuna", "run_tune",
           "space_table", "study_digest", "trial_rows", "tune_summary", "write_tune"]  # fmt: skip
