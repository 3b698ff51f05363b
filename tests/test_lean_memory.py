"""memory="lean" in an ordinary process: resident memory follows the live tensors, without allocator settings.

Each point runs in a fresh ``python`` whose environment has no glibc allocator variable (``MALLOC_*``,
``GLIBC_TUNABLES``): what a user gets, measured by the benchmark's own worker
(:func:`unicornn.bench.memory.measure_in_fresh_process`). The figure is the peak resident memory of two
training steps minus the resident memory after a short warm-up step (VmHWM, reset after the warm-up; not ``ru_maxrss``, which can
carry the forking parent's resident memory). Sizes are small (chunk buffers of 512 KiB, above glibc's initial
128 KiB mmap threshold, so its dynamic threshold comes into play as it does at real sizes) and run in seconds
(one PyTorch thread, so that a busy machine does not slow the many small matmuls down).
"""

from __future__ import annotations

import sys

import pytest

from unicornn.bench.memory import measure_in_fresh_process

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux resident memory"),
    pytest.mark.slow,  # measures in fresh processes
]

B, M, LAYERS, CHUNK = 8, 64, 3, 256
CHUNK_BYTES = CHUNK * B * M * 4  # one float32 chunk-sized buffer: 512 KiB
#: A chunk's working set: the replay keeps each layer's projected input and output, and the backward pass
#: holds up to three more chunk-sized buffers (gradients of the output, the scan input and the layer input).
WORKING_SET = (2 * LAYERS + 3) * CHUNK_BYTES
#: Stated bound: a lean step's extra peak resident memory <= this multiple of the working set (plus the input,
#: the anchors and the output sequence, which are counted separately).
MULTIPLE = 1.5


def extra_peak(memory: str, N: int, return_sequence: bool = False) -> int:
    """Extra peak resident bytes of two training steps at length N, in a fresh default process (the
    benchmark's own worker: ``unicornn bench memory`` measures the same way)."""
    model = "unicornn_" + memory + ("_seq" if return_sequence else "")
    point = {"model": model, "N": N, "batch": B, "hidden": M, "layers": LAYERS, "input_size": 1, "dt": 0.05,
             "alpha": 1.0, "checkpoint_every": CHUNK, "repeats": 2, "threads": 1}  # fmt: skip
    row = measure_in_fresh_process(point, timeout=600)
    assert "error" not in row, row.get("error")
    assert row["peak_reset"], "could not reset the peak resident memory (/proc/self/clear_refs)"
    return row["peak_bytes"]


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
