"""memory="lean" in an ordinary process: resident memory follows the live tensors, without allocator settings.

Each point runs in a fresh ``python`` whose environment has no glibc allocator variable (``MALLOC_*``,
``GLIBC_TUNABLES``): what a user gets. The figure is the peak resident memory of one training step minus the
resident memory after a short warm-up step (VmHWM, reset after the warm-up; not ``ru_maxrss``, which can
carry the forking parent's resident memory). Sizes are small (chunk buffers of 512 KiB, above glibc's initial
128 KiB mmap threshold, so its dynamic threshold comes into play as it does at real sizes) and run in seconds
(one PyTorch thread, so that a busy machine does not slow the many small matmuls down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import unicornn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux resident memory")

B, M, LAYERS, CHUNK = 8, 64, 3, 256
CHUNK_BYTES = CHUNK * B * M * 4  # one float32 chunk-sized buffer: 512 KiB
#: A chunk's working set: the replay keeps each layer's projected input and output, and the backward pass
#: holds up to three more chunk-sized buffers (gradients of the output, the scan input and the layer input).
WORKING_SET = (2 * LAYERS + 3) * CHUNK_BYTES
#: Stated bound: a lean step's extra peak resident memory <= this multiple of the working set (plus the input,
#: the anchors and the output sequence, which are counted separately).
MULTIPLE = 1.5

_SCRIPT = """
import json, sys, torch
from unicornn import UnICORNN

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

memory, N, B, M, L, K, return_sequence = sys.argv[1], *map(int, sys.argv[2:7]), sys.argv[7] == "1"
torch.set_num_threads(1)  # fast on a busy machine; the allocations are the same
torch.manual_seed(0)
model = UnICORNN(1, M, L, dt=0.05, alpha=1.0, memory=memory, checkpoint_every=K)
x = torch.randn(N, B, 1)

def step(u):
    _, (y_n, _) = model(u, return_sequence=return_sequence)
    y_n[-1].square().mean().backward()

step(x[:64])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident memory
before = status("VmRSS")
step(x)
step(x)
print(json.dumps({"peak": status("VmHWM") - before}))
"""


def _default_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    src = str(Path(unicornn.__file__).resolve().parents[1])
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


def extra_peak(memory: str, N: int, return_sequence: bool = False) -> int:
    """Extra peak resident bytes of two training steps at length N, in a fresh default process."""
    args = [memory, N, B, M, LAYERS, CHUNK, int(return_sequence)]
    cmd = [sys.executable, "-c", _SCRIPT, *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_default_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])["peak"]


def fixed_costs(N: int) -> int:
    """Bytes that legitimately grow with N: the input (float32) and its anchors (2L states per chunk)."""
    return N * B * 4 + (N // CHUNK) * 2 * LAYERS * B * M * 4


@pytest.fixture(scope="module")
def lean_peaks() -> dict[int, int]:
    return {N: extra_peak("lean", N) for N in (8 * CHUNK, 32 * CHUNK)}


def test_lean_memory_does_not_grow_with_length(lean_peaks):
    """8 chunks vs 32 chunks: the peak may grow by the input and anchors only (plus 1 MiB of slack)."""
    small, large = 8 * CHUNK, 32 * CHUNK
    growth = lean_peaks[large] - lean_peaks[small]
    allowed = fixed_costs(large) - fixed_costs(small) + 2**20
    assert growth <= allowed, f"lean peak grew by {growth / 2**20:.1f} MiB from N={small} to N={large}"


def test_lean_step_stays_within_a_multiple_of_its_working_set(lean_peaks):
    for N, peak in lean_peaks.items():
        bound = MULTIPLE * WORKING_SET + fixed_costs(N)
        assert peak <= bound, (
            f"N={N}: lean step peak {peak / 2**20:.1f} MiB > {MULTIPLE} x working set "
            f"({WORKING_SET / 2**20:.1f} MiB) + input and anchors"
        )


def test_lean_with_output_sequence_adds_at_most_the_output_and_its_gradient(lean_peaks):
    N = 32 * CHUNK
    output = N * B * M * 4
    assert extra_peak("lean", N, return_sequence=True) <= lean_peaks[N] + 2 * output
