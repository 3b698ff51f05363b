"""What every benchmark records: the machine, the load, the fused backend it can run (files are written by
:func:`unicornn.plotting.write_outputs`)."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["fused_backend", "load_average", "machine_info"]


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
