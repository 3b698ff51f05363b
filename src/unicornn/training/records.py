"""Writing a run's results: config.json, one epoch's row (metrics.jsonl, checkpoint.pt, best.pt,
TensorBoard, the log line) and result.json. Only the main process writes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..diagnose import recurrent_weight_norms
from .checkpoint import append_jsonl, atomic_save, atomic_write_text, read_jsonl, rewrite_jsonl
from .run import BEST, CHECKPOINT, CONFIG, METRICS, RESULT

__all__ = ["fmt", "epoch_row", "EpochWriter", "write_config", "truncate_metrics", "write_result"]


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
    """Start a fresh run directory: config.json written, no metrics.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / METRICS).unlink(missing_ok=True)
    atomic_write_text(json.dumps(record, indent=2) + "\n", run_dir / CONFIG)


def truncate_metrics(run_dir: Path, epoch: int) -> None:
    """Drop the metrics.jsonl lines after ``epoch`` (a crash between the row and the checkpoint write)."""
    rows = [r for r in read_jsonl(run_dir / METRICS) if r["epoch"] <= epoch]
    rewrite_jsonl(rows, run_dir / METRICS)


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
        if improved:
            best = {k: checkpoint[k] for k in ("model", "record", "epoch", "best")}
            atomic_save(best, self.run_dir / BEST)
        row = {**row, "weight_norms": recurrent_weight_norms(checkpoint["model"])}  # ||w^l||_inf (Fig. 7)
        append_jsonl(row, self.run_dir / METRICS)
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
    atomic_write_text(json.dumps(result, indent=2) + "\n", run_dir / RESULT)
