"""Writing a run's results: config.json, one epoch's row (metrics.jsonl, checkpoint.pt, best.pt,
TensorBoard, the log line), result.json, and the run directory made whole again on resume. Only the main
process writes. A file-system error (read-only or full file system, permissions) is a
:class:`~.errors.RunFileError` naming the file; every file but metrics.jsonl is replaced atomically, so none is
ever half-written (a torn last line of metrics.jsonl is rewritten on resume)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .checkpoint import append_jsonl, atomic_save, atomic_write_text, read_checkpoint, rewrite_jsonl
from .errors import RunFileError, os_error_text
from .run import BEST, CHECKPOINT, CONFIG, METRICS_FILE, RESULT, OpenedRun, read_json

__all__ = [
    "fmt",
    "epoch_row",
    "EpochWriter",
    "write_config",
    "write_result",
    "fs_errors",
    "metrics_rows",
    "restore_run_files",
]


@contextlib.contextmanager
def fs_errors(what: str) -> Iterator[None]:
    """Turn an ``OSError`` of the block into :class:`~.errors.RunFileError`: ``cannot WHAT: reason: path``."""
    try:
        yield
    except OSError as err:
        raise RunFileError(f"cannot {what}: {os_error_text(err)}") from None


def fmt(v: Any) -> str:
    """A metric for a log line (4 significant digits)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def epoch_row(epoch: int, lr: float, metric: str, train: dict, valid: dict, test: dict, best: dict,
              seconds: float) -> dict[str, Any]:  # fmt: skip
    """The metrics.jsonl row of ``epoch`` (1-based)."""
    return {
        "epoch": epoch,
        "lr": lr,
        "train_loss": train["loss"],
        f"train_{metric}": train[metric],
        "valid_loss": valid["loss"],
        f"valid_{metric}": valid[metric],
        "test_loss": test["loss"],
        f"test_{metric}": test[metric],
        "best_epoch": best["epoch"],
        f"best_valid_{metric}": best["valid"],
        f"best_test_{metric}": best["test"],
        "seconds": seconds,
    }


def write_config(run_dir: Path, record: dict[str, Any]) -> None:
    """Start a fresh run directory: config.json written, no metrics.jsonl, result.json or checkpoints."""
    with fs_errors(f"write the run directory {run_dir}"):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in (METRICS_FILE, RESULT, CHECKPOINT, BEST):
            (run_dir / name).unlink(missing_ok=True)
        _remove_temporaries(run_dir)
        atomic_write_text(json.dumps(record, indent=2) + "\n", run_dir / CONFIG)


def _remove_temporaries(run_dir: Path) -> None:
    """Delete the temporary files of atomic writes that a killed process left (the caller holds the lock)."""
    for tmp in run_dir.glob(".*.tmp-*"):
        tmp.unlink(missing_ok=True)


def metrics_rows(run_dir: Path, epoch: int) -> tuple[list[dict[str, Any]], bool]:
    """The rows of epochs 1..``epoch`` from metrics.jsonl, and whether the file is sound: those rows in order,
    then at most one more line (an epoch written just before the process stopped, possibly torn)."""
    try:
        lines = (run_dir / METRICS_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return [], False
    rows: list[dict[str, Any]] = []
    for line in lines[:epoch]:
        try:
            row = json.loads(line)
        except ValueError:
            return rows, False
        if not isinstance(row, dict) or row.get("epoch") != len(rows) + 1:
            return rows, False
        rows.append(row)
    return rows, len(rows) == epoch and len(lines) <= epoch + 1


def restore_run_files(run_dir: Path, opened: OpenedRun, rows: list[dict[str, Any]], say) -> None:
    """Make a resumed run's directory whole again before training on (its lock is held).

    Removes temporary files a killed process left; stores changed settings in checkpoint.pt (the source of
    truth), then config.json, and drops result.json when the run is extended; rewrites metrics.jsonl with the
    checkpoint's ``rows``; checks best.pt (rewritten from the checkpoint when that is the best epoch). A damaged
    file is reported through ``say`` (``opened.notes`` are the caller's to report).
    """
    ckpt, record = opened.checkpoint, opened.record
    with fs_errors(f"write the run directory {run_dir}"):
        _remove_temporaries(run_dir)
        if opened.changes:
            ckpt["record"] = record
            atomic_save(ckpt, run_dir / CHECKPOINT)
        try:
            current = read_json(run_dir / CONFIG)
        except RunFileError as err:
            current = None
            say(f"{err}; written again from {CHECKPOINT}")
        if current != record:
            atomic_write_text(json.dumps(record, indent=2) + "\n", run_dir / CONFIG)
        (run_dir / RESULT).unlink(missing_ok=True)
        on_disk, sound = metrics_rows(run_dir, ckpt["epoch"])
        if not sound or on_disk != rows:
            say(f"{run_dir / METRICS_FILE} was damaged or incomplete; written again from {CHECKPOINT}")
        rewrite_jsonl(rows, run_dir / METRICS_FILE)
        best = ckpt["best"]
        if best["epoch"] is not None:
            try:
                read_checkpoint(run_dir / BEST, "model")
            except RunFileError as err:
                if best["epoch"] == ckpt["epoch"]:
                    atomic_save(_best_state(ckpt), run_dir / BEST)
                    say(f"{err}; written again from {CHECKPOINT} (epoch {best['epoch']} is the best)")
                else:
                    say(
                        f"warning: {err}: the weights of the best epoch ({best['epoch']}) are lost; best.pt is "
                        f"written again when the validation metric next improves"
                    )


def _best_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """best.pt's content from a checkpoint of the best epoch."""
    return {k: checkpoint[k] for k in ("model", "record", "epoch", "best")}


def _tensorboard(run_dir: Path, start_epoch: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard missing or broken: JSONL only
        return None
    return SummaryWriter(str(run_dir / "tensorboard"), purge_step=start_epoch + 1)


class EpochWriter:
    """Writes each finished epoch: best.pt (if improved), the metrics.jsonl row, checkpoint.pt (atomic,
    after the row, so a crash between the two loses nothing a resume needs), TensorBoard and the log line."""

    def __init__(self, run_dir: Path, metric: str, epochs: int, tensorboard: bool, start_epoch: int,
                 say: Callable[[str], None]) -> None:  # fmt: skip
        self.run_dir, self.metric, self.epochs, self.say = run_dir, metric, epochs, say
        self.writer = _tensorboard(run_dir, start_epoch) if tensorboard else None

    def write(self, row: dict[str, Any], improved: bool, checkpoint: dict[str, Any]) -> None:
        """Write epoch ``row``; ``checkpoint`` is the full training state (its model weights go to best.pt)."""
        with fs_errors(f"write epoch {row['epoch']}'s results into {self.run_dir}"):
            if improved:
                atomic_save(_best_state(checkpoint), self.run_dir / BEST)
            append_jsonl(row, self.run_dir / METRICS_FILE)
            atomic_save(checkpoint, self.run_dir / CHECKPOINT)
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "best_epoch") and isinstance(v, float):
                    self.writer.add_scalar(k.replace("_", "/", 1), v, row["epoch"])
            self.writer.flush()
        m = self.metric
        self.say(
            f"epoch {row['epoch']}/{self.epochs}  lr {row['lr']:.3g}  train loss {fmt(row['train_loss'])}  "
            f"valid {m} {fmt(row[f'valid_{m}'])}  test {m} {fmt(row[f'test_{m}'])}  "
            f"best: epoch {row['best_epoch']} (test {m} {fmt(row[f'best_test_{m}'])})  {row['seconds']:.1f}s"
        )

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def write_result(run_dir: Path, result: dict[str, Any]) -> None:
    """result.json of a finished run."""
    with fs_errors(f"write {run_dir / RESULT}"):
        atomic_write_text(json.dumps(result, indent=2) + "\n", run_dir / RESULT)
