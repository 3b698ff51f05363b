"""What every benchmark records and writes: the machine, the load, a table, JSON and a PNG."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["fused_backend", "load_average", "machine_info", "write_outputs"]


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return list(os.getloadavg())
    except (AttributeError, OSError):
        return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, thread count, library versions and (for CUDA) the GPU."""
    from .. import __version__

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "unicornn": __version__,
        "device": device,
    }
    for lib in ("numpy", "numba"):  # the cpu backend's kernels
        try:
            info[lib] = __import__(lib).__version__
        except ImportError:
            pass
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.device(device))
        info.update(gpu=props.name, gpu_memory_GiB=props.total_memory / 2**30, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())  # fmt: skip
    return info


def fused_backend(device: torch.device) -> str:
    """The fused UnICORNN backend for ``device`` when it can run here ("triton" on CUDA, "cpu" on CPU),
    else "reference"."""
    from .. import backend_available

    if device.type == "cuda" and backend_available("triton"):
        return "triton"
    if device.type == "cpu" and backend_available("cpu"):
        return "cpu"
    return "reference"


def write_outputs(
    result: dict[str, Any], out_dir, stem: str, table: str, plot: Callable[[dict, Path], None] | None
) -> dict[str, Path]:
    """Write ``<stem>.json`` (atomically), ``<stem>.txt`` (the table) and ``<stem>.png`` under ``out_dir``.

    The PNG is skipped (and not returned) when matplotlib is missing. Returns the written paths by kind.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "table": out / f"{stem}.txt"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, paths["json"])
    paths["table"].write_text(table + "\n")
    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return paths
        paths["png"] = out / f"{stem}.png"
        plot(result, paths["png"])
    return paths


def pyplot():
    """matplotlib.pyplot on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
