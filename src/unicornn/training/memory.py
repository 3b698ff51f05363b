"""How much memory a training run needs, estimated before anything is allocated, and the check that refuses a
run that cannot fit.

:func:`estimate_memory` adds up, from the settings and task options alone:

* the model: its parameters counted on PyTorch's ``meta`` device (no memory is allocated; a deep stack is
  built with four layers and extrapolated layer by layer), times four copies (weights, gradients and Adam's
  two moments), plus one more for the checkpoint written every epoch, plus about 20 KiB per layer of Python
  objects (which is what a stack of a million small layers runs out of);
* one training batch's activations in the chosen memory mode: ``standard`` keeps about ``2 L + 3`` arrays of
  ``(N, B, H)`` for the backward pass (``N`` steps, ``B`` batch, ``H`` units, ``L`` layers), ``lean`` only
  the input, two states per layer every ``K`` steps and one chunk of ``K`` steps; LSTM and GRU keep their
  gates at every step, coRNN and IndRNN (stepped in Python) a few arrays per step; the evaluation batch
  (no gradients) is counted when it is larger;
* the data set the task generates or loads, from its options (the adding problem makes its sequences on
  the fly; Lorenz-96 integrates every trajectory in float64 up front; the file-based data sets have fixed
  sizes).

It is an estimate: the tests compare it with measured allocations and hold it within a factor of 3 for
small configurations (more is a safe over-estimate). :func:`check_memory` compares it with what the machine
has (the host's available memory from ``/proc/meminfo``, a CUDA device's free memory from
``torch.cuda.mem_get_info``) and raises :class:`MemoryLimitError` (exit code 2 on the command line) before the
run directory is created. ``unicornn train --no-memory-check`` skips the check.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from ..validation import ConfigError

__all__ = [
    "MemoryEstimate",
    "MemoryLimitError",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "format_bytes",
]

FLOAT = 4  # bytes of a float32
ADAM_COPIES = 4  # weights, gradients, Adam's exp_avg and exp_avg_sq
CHECKPOINT_COPIES = 1  # the state written every epoch (best.pt / checkpoint.pt)
#: Host bytes per layer besides its numbers: the module, its parameter tensors, their gradients and Adam's
#: states as Python objects (measured: about 17 KiB per UnICORNN layer).
LAYER_OVERHEAD = 20 * 1024
_BUILT_LAYERS = 4  # a deeper stack is built with this many layers and extrapolated


class MemoryLimitError(ConfigError):
    """The run's estimated memory exceeds what the machine or device has (the message names both)."""


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs (``math.inf`` where even the count overflows), split by where they live.

    ``parameters``: the model's trainable parameters; ``model``: their bytes times the copies training keeps;
    ``activations``: one batch (the larger of a training and an evaluation batch); ``data``: the data set in
    host memory; ``device``: ``model + activations`` (on the run's device); ``host``: what host memory holds
    (``data``, plus ``device`` when the run is on the CPU).
    """

    parameters: float
    model: float
    activations: float
    data: float
    on_cpu: bool

    @property
    def device(self) -> float:
        return self.model + self.activations

    @property
    def host(self) -> float:
        return self.data + (self.device if self.on_cpu else 0.0)

    def describe(self) -> str:
        """``model X, activations Y, data Z``."""
        return (
            f"model {format_bytes(self.model)}, one batch's activations {format_bytes(self.activations)}, "
            f"data {format_bytes(self.data)}"
        )


def format_bytes(n: float) -> str:
    """``1.5 GiB``-style text of a byte count (``inf``: "more than any machine has")."""
    if not math.isfinite(n):
        return "more than any machine has"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------------
# the task's sequence length and data set
# --------------------------------------------------------------------------------------------------

_GIB = 1024**3


def _lorenz96(o: Mapping[str, Any]) -> tuple[int, float]:
    n = o["n_train"] + o["n_valid"] + o["n_test"]
    samples = o["burn_in"] + o["length"] + 1
    return o["length"], 2.0 * n * samples * 5 * 8  # float64 trajectories, and the integrator's copy


def _mnist(o: Mapping[str, Any]) -> tuple[int, float]:
    return 784, 70_000 * 784 * (1 + FLOAT)  # uint8 images and their float32 copy


def _cifar(o: Mapping[str, Any]) -> tuple[int, float]:
    return 1000, 60_000 * 3072 * (1 + FLOAT)


def _eigenworms(o: Mapping[str, Any]) -> tuple[int, float]:
    from ..tasks.eigenworms import CHANNELS, LENGTH, N_CASES

    steps = o.get("last_k") or o.get("random_k") or LENGTH
    return steps, 3.0 * N_CASES * LENGTH * CHANNELS * 8  # float64, parsed, merged and scaled


def _bidmc(o: Mapping[str, Any]) -> tuple[int, float]:
    import json
    from importlib import resources

    from ..tasks.bidmc import CHANNELS, LENGTH, SPLIT_FILE

    cases = json.loads(resources.files("unicornn.tasks").joinpath("data", SPLIT_FILE).read_text())["n_cases"]
    return LENGTH, 3.0 * cases * LENGTH * CHANNELS * 8


def _uea(o: Mapping[str, Any]) -> tuple[int, float]:
    """A user's .ts files: about 4 bytes of arrays per byte of text (float64 values, parsed); a named data set
    (aeon's bundled ones are a few MB, the archive's downloads up to a few hundred): a nominal 256 MiB. The
    length is known only once the files are read (the data set's arrays are counted)."""
    import os

    files = [o.get(k) for k in ("train", "test") if o.get(k)]
    if files:
        return 1, 4.0 * sum(os.path.getsize(f) for f in files if os.path.isfile(f))
    return 1, 256.0 * 1024**2


#: Sequence length N and host bytes of the data set, per built-in task, from its (resolved) options. Tasks not
#: listed: N from an option ``T`` or ``length`` (else 1), no data counted.
TASK_DATA: dict[str, Callable[[Mapping[str, Any]], tuple[int, float]]] = {
    "adding": lambda o: (o["T"], 0.0),  # sequences are generated item by item
    "lorenz96": _lorenz96,
    "psmnist": _mnist,
    "smnist": _mnist,
    "noisy-cifar10": _cifar,
    "eigenworms": _eigenworms,
    "bidmc-rr": _bidmc,
    "bidmc-hr": _bidmc,
    "imdb": lambda o: (2500, 1.0 * _GIB),
    "uea": _uea,  # the longest reviews; the archive's text and GloVe while building
}


def _task_data(name: str, options: Mapping[str, Any]) -> tuple[int, float]:
    fn = TASK_DATA.get(name)
    try:
        if fn is not None:
            steps, data = fn(options)
        else:
            steps, data = options.get("T", options.get("length", 1)), 0.0
        return max(int(steps), 1), float(data)
    except (KeyError, TypeError, ValueError, OverflowError):  # a malformed option: the task reports it
        return 1, 0.0


# --------------------------------------------------------------------------------------------------
# the model
# --------------------------------------------------------------------------------------------------


def _meta_model_args(spec) -> dict[str, Any]:
    """Stand-ins (on the meta device) for what a task builds from its data for its model (IMDB's embedding)."""
    if spec.name == "imdb":
        from ..tasks.imdb import EMBEDDING_DIM, VOCAB_SIZE

        return {"embedding": torch.empty(VOCAB_SIZE, EMBEDDING_DIM, device="meta"), "embedding_dropout": 0.0,
                "pad_index": 1}  # fmt: skip
    return {}


def _count_on_meta(spec, cfg: Mapping[str, Any], layers: int) -> float:
    from ..task_models import build_model, count_parameters

    c = dict(cfg, num_layers=layers)
    if isinstance(cfg.get("dt"), (list, tuple)):
        c["dt"] = list(cfg["dt"])[:layers] if len(cfg["dt"]) >= layers else cfg["dt"]
    if isinstance(cfg.get("residual_skip"), int) and cfg["residual_skip"] >= layers:
        c["residual_skip"] = None
    try:
        with torch.device("meta"):
            return float(count_parameters(build_model(spec, c, _meta_model_args(spec))))
    except RuntimeError as err:  # "Storage size calculation overflowed": beyond any machine
        if "overflow" in str(err).lower():
            return math.inf
        raise


def count_parameters_without_allocating(spec, cfg: Mapping[str, Any]) -> float:
    """Trainable parameters of the model of ``cfg`` for task ``spec``, counted on the meta device.

    A stack of more than four layers is counted with three and four layers and extrapolated (exact for
    stacks of identical upper layers). Raises what :func:`~unicornn.task_models.build_model` raises for bad
    settings (ConfigError).
    """
    layers = cfg.get("num_layers", 1)
    if not isinstance(layers, int) or isinstance(layers, bool) or layers <= _BUILT_LAYERS:
        return _count_on_meta(spec, cfg, layers)
    three = _count_on_meta(spec, cfg, _BUILT_LAYERS - 1)
    four = _count_on_meta(spec, cfg, _BUILT_LAYERS)
    return four + (layers - _BUILT_LAYERS) * (four - three)


# --------------------------------------------------------------------------------------------------
# the estimate
# --------------------------------------------------------------------------------------------------


def input_projected_in_kernels(cfg: Mapping[str, Any], spec, on_cpu: bool) -> bool:
    """Whether UnICORNN's first layer projects its input inside the fused CPU kernels for these settings (an
    input of at most ``unicornn.ops.cpu.max_projected_width(hidden_size)`` features: ``x`` and ``grad_x`` of that layer are
    never stored)."""
    if (
        not on_cpu
        or cfg.get("model", "unicornn") != "unicornn"
        or cfg.get("backend", "auto") not in ("auto", "cpu")
    ):
        return False
    from ..ops.dispatch import backend_available, get_kernels

    H = cfg["hidden_size"]
    return (
        backend_available("cpu")
        and isinstance(H, int)
        and spec.input_size <= get_kernels("cpu").max_projected_width(H)
    )


def _activation_bytes(
    cfg: Mapping[str, Any], spec, steps: int, batch: int, train: bool, projected_input: bool = False
) -> float:
    """One batch of ``batch`` sequences of ``steps`` steps: what the forward pass keeps for the backward pass
    (``train``) or, without gradients, what one layer's pass holds. ``projected_input``: the first layer's
    input is projected inside the kernels (:func:`input_projected_in_kernels`)."""
    H, L, d = cfg["hidden_size"], cfg["num_layers"], spec.input_size
    if not all(isinstance(v, int) and v > 0 for v in (H, L)):
        return 0.0
    per_step = float(batch) * H * FLOAT  # one (B, H) array
    inputs = 2.0 * steps * batch * d * FLOAT  # the loader's batch and its copy on the device
    outputs = steps * batch * spec.output_size * FLOAT if spec.readout == "all" else 0.0
    if not train:
        return inputs + outputs + 3.0 * steps * per_step  # a layer's input, projection and output
    model = cfg.get("model", "unicornn")
    if model in ("unicornn", "embedding-unicornn"):
        if cfg.get("memory", "standard") == "lean":
            chunk = min(steps, 2048)  # UnICORNN's checkpoint_every
            anchors = 2.0 * L * math.ceil(steps / chunk) * per_step
            top = steps * per_step if spec.readout == "all" else 0.0
            return inputs + outputs + anchors + top + (2 * L + 3) * chunk * per_step
        arrays = 2 * L + 3 + (L if cfg.get("dropout", 0) else 0)  # x and y per layer, masks, backward's own
        arrays -= (
            2 if projected_input else 0
        )  # the first layer's x (kept) and grad_x (backward's) never exist
    elif model == "lstm":
        arrays = 15 * L + 3  # gates, cell and hidden states per step, and their workspaces
    elif model == "gru":
        arrays = 7 * L + 3
    elif model == "cornn":  # stepped in Python: autograd keeps each step's intermediates
        arrays = 4 * L + 3
    else:  # IndRNN, and models this estimate does not know
        arrays = 2 * L + 1
    return inputs + outputs + arrays * steps * per_step


def estimate_memory(
    task, cfg: Mapping[str, Any], options: Mapping[str, Any], on_cpu: bool = True
) -> MemoryEstimate:
    """The memory a run of ``task`` with settings ``cfg`` (validated, see
    :func:`~.settings.validate_config`) and resolved task ``options`` needs (see the module docstring).

    Raises ConfigError for settings the model refuses (as building it would).
    """
    spec = task.spec
    params = count_parameters_without_allocating(spec, cfg)
    steps, data = _task_data(spec.name, options)
    train_batch = cfg["batch_size"]
    if cfg.get("train_subset") is not None:
        train_batch = min(train_batch, cfg["train_subset"])
    projected = input_projected_in_kernels(cfg, spec, on_cpu)
    acts = max(
        _activation_bytes(cfg, spec, steps, train_batch, train=True, projected_input=projected),
        _activation_bytes(cfg, spec, steps, cfg["eval_batch_size"], train=False),
    )
    layers = cfg["num_layers"] if isinstance(cfg["num_layers"], int) else 0
    model = params * FLOAT * (ADAM_COPIES + CHECKPOINT_COPIES) + layers * LAYER_OVERHEAD
    return MemoryEstimate(params, model, acts, data, on_cpu)


def available_memory(device: torch.device | str = "cpu") -> dict[str, float]:
    """Bytes available: ``{"host": ...}`` (``MemAvailable`` of /proc/meminfo, else the free physical pages),
    plus ``{"device": ...}`` (``torch.cuda.mem_get_info``'s free bytes) for a CUDA device. A figure that
    cannot be read is left out."""
    out: dict[str, float] = {}
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    out["host"] = float(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if "host" not in out:
        try:
            out["host"] = float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            pass
    device = torch.device(device)
    if device.type == "cuda":
        try:
            out["device"] = float(torch.cuda.mem_get_info(device)[0])
        except (RuntimeError, AssertionError):
            pass
    return out


def check_memory(task, cfg: Mapping[str, Any], options: Mapping[str, Any], device: torch.device | str = "cpu",
                 available: Mapping[str, float] | None = None) -> MemoryEstimate:  # fmt: skip
    """Refuse a run that cannot fit: :class:`MemoryLimitError` naming the estimate and the limit when the
    estimate (:func:`estimate_memory`) exceeds ``available`` (default :func:`available_memory`).

    Returns the estimate when it fits (or when the limit cannot be read).
    """
    device = torch.device(device)
    est = estimate_memory(task, cfg, options, on_cpu=device.type != "cuda")
    limits = available_memory(device) if available is None else available
    hint = "use smaller settings, or pass --no-memory-check to try anyway"
    if "device" in limits and device.type == "cuda" and est.device > limits["device"]:
        raise MemoryLimitError(
            f"this run needs about {format_bytes(est.device)} on {device} ({est.describe()}) but {device} has "
            f"{format_bytes(limits['device'])} free; {hint}"
        )
    if "host" in limits and est.host > limits["host"]:
        raise MemoryLimitError(
            f"this run needs about {format_bytes(est.host)} of memory ({est.describe()}) but the machine has "
            f"{format_bytes(limits['host'])} available; {hint}"
        )
    return est
