"""Figures and result files: matplotlib's pyplot on a non-interactive backend, and atomic writers of PNGs,
tables and JSON, used by ``report``, ``sweep``, ``bench`` and ``diagnose``.

Every writer goes through :func:`unicornn._files.atomic_write`: a reader sees the old file or the new one,
never a partial one. matplotlib is optional: :func:`have_matplotlib` tells whether figures can be drawn.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._files import atomic_write, fsync_dir

__all__ = [
    "have_matplotlib",
    "integer_ticks",
    "pyplot",
    "save_figure",
    "write_text",
    "write_json",
    "write_outputs",
]


def have_matplotlib() -> bool:
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (figures are only written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def integer_ticks(axis) -> None:
    """Ticks at whole numbers only on a matplotlib ``axis`` (``ax.xaxis``) of epochs, layers, counts."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out matplotlib figure ``fig``, write it atomically as a PNG to ``path`` and close it."""
    plt = pyplot()
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return path


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write ``text`` (UTF-8) atomically to ``path``; returns the path."""
    path = Path(path)
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as indented JSON atomically to ``path``; returns the path."""
    return write_text(json.dumps(obj, indent=2) + "\n", path)


def write_outputs(
    result: dict[str, Any],
    out_dir: str | os.PathLike,
    stem: str,
    table: str,
    plot: Callable[[dict, Path], Any] | None,
    table_suffix: str = ".txt",
) -> dict[str, Path]:
    """Write ``<stem>.json``, the table ``<stem><table_suffix>`` and ``<stem>.png`` (``plot(result, path)``)
    under ``out_dir``, all or none.

    Every file is first written in full beside its target (each atomically, see :func:`write_text`); only
    when all are written do they replace the targets. A failure on the way (a full disk, a plotting error)
    leaves the previous files as they were, consistent with each other, and raises. The PNG is skipped (and
    not returned) when ``plot`` is None or matplotlib is missing. Returns the written paths by kind
    (``json``, ``table``, ``png``). Raises ``OSError`` naming ``out_dir`` when it is not a directory and
    cannot be made one (a regular file, a read-only or full file system, ...).
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "the output directory is a file (give a directory)", str(out))
    paths = {"json": out / f"{stem}.json", "table": out / f"{stem}{table_suffix}"}
    if plot is not None and have_matplotlib():
        paths["png"] = out / f"{stem}.png"
    staged = {kind: path.with_name(f".{path.name}.new-{os.getpid()}") for kind, path in paths.items()}
    try:
        write_json(result, staged["json"])
        write_text(table if table.endswith("\n") else table + "\n", staged["table"])
        if "png" in staged:
            plot(result, staged["png"])
            if not staged["png"].exists():  # the plot function drew nothing
                del paths["png"]
        for kind, path in paths.items():
            os.replace(staged[kind], path)
    finally:
        for tmp in staged.values():
            tmp.unlink(missing_ok=True)
    fsync_dir(out)
    return paths
