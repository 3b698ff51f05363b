"""Fused CPU kernels for the UnICORNN recurrence (numba).

Importing this module registers the kernel pair ``"cpu"`` with :func:`unicornn.ops.dispatch.register_kernels`;
it raises :class:`ImportError` when numba is missing, so ``backend="auto"`` falls back to the reference loop.
The kernels follow :func:`~unicornn.ops.reference.scan_forward_loop` and
:func:`~unicornn.ops.reference.scan_backward_loop`: the forward pass runs all N steps in one pass per unit and
stores ``y``; the backward pass runs once from n = N down to 1, reads the stored ``y`` and rebuilds ``z`` by
the inverse recurrence (paper eq. 7). Nothing per step is stored besides ``y``. The projection's bias is added
to ``x`` as it is read and its gradient summed as ``grad_x`` is written; without an upstream gradient of the
sequence (``grad_y`` None: only the final state reaches the loss) the backward kernel is compiled without
reading one (numba specialises on ``None``, see :func:`_at`).

Precision. Tensors are read and written in the compute dtype (float32 or float64; fp16/bf16 inputs are
converted to float32 around the kernels and ``y``/``grad_x`` are returned in the input dtype), but the
per-unit state -- y, z, the adjoints and the running sums for ``grad_w``/``grad_c`` -- is held in float64
registers for every dtype, and the step sizes ``s = dt * sigmoid(c)`` are computed in float64 from ``c``. For
float32 this costs little (the kernels are bound by moving their state and rows, not by arithmetic; the
tanh is 15-20% of the forward kernel's time) and removes the accumulation of float32 rounding over long
sequences: the float32 results carry essentially only the rounding of the stored values, which is well
inside the accuracy contract (``docs/accuracy.md``: 1.5x the error of float32 autograd) even at N = 17,984.

tanh. The float32 forward kernel uses :func:`_tanh_rational`, ``t * P(t^2) / Q(t^2)`` with P, Q of degree 5,
fitted for this project to tanh on [0, 9.5] (linearised weighted least squares of the relative error with Lawson
reweighting; relative fit error 7e-11) and evaluated in float64 with inputs clamped to [-9.5, 9.5] (beyond,
float32 tanh rounds to +-1). It is branch-free, so the loop vectorises, and rounded to float32 it is within
0.502 ulp of the exact tanh over the float32 range (tested). float64 kernels call libm's ``tanh``: full
accuracy, not vectorised; the float64 path is for verification and gradcheck rather than speed. The float32
backward kernel evaluates the same rational in float32 (:func:`_tanh_lanes32`, within 6 ulp): there the tanh
gives the factor ``1 - tanh^2`` and the step that rebuilds ``z``, whose errors do not build up along the
trajectory, and the float32 operations run on twice the lanes (the backward kernel 3-10% faster; gradient
errors as with the float64 rational, measured at N = 17,984). The forward's tanh enters the trajectory, and
evaluated in float32 there it doubled the float32 gradient errors at that length: it stays in float64.

Layout and vectorisation. ``x`` is (N, B, M) contiguous, i.e. (N, U) with U = B*M independent units. The units
are cut into contiguous ranges (see Threads), and each range into blocks of at most ``_BLOCK`` units whose
state lives in local arrays. For every time step the innermost loop runs over the units of a block, so
each step reads and writes one contiguous slice of ``x``/``y`` and LLVM vectorises it (AVX2 / AVX-512 on x86).
Blocks are long (4,096 units: the state, up to 288 KiB, stays in L2): with blocks of 256 units (state in
L1) every step read rows of 1 KiB, each on another page, and stepping from one row to the next cost as much
as the row itself (the kernels were 1.2-1.9x slower). The backward kernel does two time steps per pass over
a block, so that the block's state is read and written once for both.
That needs ``error_model="numpy"`` (numba's default error model puts a zero-division branch around every
``/``), the branch-free tanh, and few distinct arrays in the unit loop: the backward kernel keeps its block
state in one 2-D array, since nine 1-D ones need more runtime alias checks than LLVM allows and the loop then
stays scalar (4x slower; a test checks the machine code for packed divisions).

Projected input. :func:`scan_forward_projected` / :func:`scan_backward_projected` take the layer's input
``u`` (N, B, d) and the projection (M, d) instead of ``x = u V^T`` for narrow inputs (d at most
:func:`max_projected_width`): each step's ``x_n`` is computed in a pass over the block before the unit loop
(float64 products, in loops over the hidden units of each batch row), and the backward kernel multiplies
``dL/dx_n`` into per-unit sums of ``dL/dV`` instead of writing it (written only when ``u`` needs a gradient).
For one feature the backward kernel does both in its unit loop (``u`` passed as (N, B); rows ``_V`` and
``_GV`` of its state). The helpers called in the unit loops are inlined in numba's IR (``inline="always"``):
with the projection added, LLVM's own inliner left a call to the tanh in the larger backward kernel and
the loop was no longer vectorised.

Threads. The kernels are compiled ``nogil`` (not ``parallel=True``) and run over ranges of units on
``torch.get_num_threads()`` threads (fewer for small problems: ``_MIN_THREAD_WORK`` unit-steps per thread at
least, down to one), up to 4 ranges of at least ``_MIN_PIECE`` units per thread, taken in turn, so that a
thread slowed down by another process leaves more of the work to the others. Where torch runs on OpenMP,
the threads are torch's own: one parallel region of its OpenMP runtime (``GOMP_parallel`` via ctypes,
:func:`_run`), since torch's threads keep polling for work after each parallel matmul and a pool of our own
would share their cores for a few milliseconds. The region's body is compiled (a numba ``cfunc`` per set of
argument types, :func:`_region_body`, cached like the kernels): it reads the kernel's address and arguments
from a block of int64 and calls the kernel on each range it takes, so no thread enters the interpreter (about
2 us per region against 60 us for a Python callback on two threads). Elsewhere, in a forked child, or with
``UNICORNN_CPU_OPENMP=0``, a small pool of this module plus the calling thread. The units never interact, so this scales like numba's ``prange``; it needs no numba
threading layer (safe to call from several Python threads and in forked processes), follows the thread
count users already set for PyTorch, and compiles faster. The batch reductions of ``grad_w`` and ``grad_c``
run afterwards, sequentially over the batch in float64: results are bitwise independent of the number of
threads.

Vector width. On AVX-512 CPUs the kernels are compiled for 512-bit vectors (:func:`_wide_vectors`; LLVM
otherwise prefers 256-bit ones there).

Why numba rather than a C++ extension: numba is already a runtime dependency, needs no compiler on the user's
machine and has a cache that works for read-only installs, while a ``torch.utils.cpp_extension`` build needs a
C++ toolchain at first use and tens of seconds of compilation. Both end up as the same vectorised loop over
units, which already moves data at a rate the surrounding PyTorch ops cannot keep up with (measured in
``benchmarks/cpu_speed.py`` and ``docs/performance.md``).

JIT cache. Kernels are compiled lazily, per dtype, on first use, with numba's ``cache=True``. numba stores the
cache next to this file (``__pycache__``) when that directory is writable, otherwise in the user-wide cache
directory (``$NUMBA_CACHE_DIR`` if set, else ``~/.cache/numba``): a read-only install works and still caches
(tested). If no location is writable the kernels are compiled without a cache. With an empty cache the first
call compiles one dtype's forward and backward kernels in a few seconds; later processes load them from the
cache.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

try:
    import numba
    import numpy as np
    from llvmlite import ir
    from numba import literal_unroll
    from numba.core import cgutils
    from numba.core.imputils import lower_constant
    from numba.extending import intrinsic, models, overload, register_model, typeof_impl
except ImportError as err:  # pragma: no cover - exercised when numba is absent
    raise ImportError(f"the fused CPU backend needs numba (pip install numba): {err}") from err

import torch

from .dispatch import register_kernels

try:  # numba internals that compiled region bodies use (see _region_body); without them, Python bodies run
    from numba.core.callconv import excinfo_t
    from numba.np.arrayobj import make_array, populate_array
except ImportError:  # pragma: no cover - a numba whose internals moved
    excinfo_t = make_array = populate_array = None

__all__ = [
    "scan_forward",
    "scan_backward",
    "scan_forward_projected",
    "scan_backward_projected",
    "tanh32",
    "tanh32_backward",
    "keep_freed_blocks",
    "max_projected_width",
]

#: Units per block: the state of one block stays in L2 (the backward's 9 float64 rows of 4,096: 288 KiB).
#: Each time step of a block reads and writes contiguous rows of ``_BLOCK`` units; with fewer, the step
#: from one row to the next (a new page of x, y every few hundred units) dominates (see the docstring).
_BLOCK = 4096
#: Padding of the backward's state rows (float64): rows 4 KiB apart would share cache sets.
_PAD = 8
#: Ranges are multiples of this many units so threads never write the same cache line.
_ALIGN = 16
#: Ranges per thread (see :func:`_run`).
_PIECES = 4
#: The fewest units of a range when a thread takes several (shorter rows cost more per unit, see _BLOCK).
_MIN_PIECE = 2048
#: The fewest unit-steps (units x time steps) a thread is given: a call with less work than this per thread
#: runs on fewer threads, down to the calling thread alone. A parallel region with a compiled body (see
#: :func:`_region_body`) costs a few microseconds, and two threads are faster than one from about 60,000
#: unit-steps on (forward and backward, ``benchmarks/cpu_small_problems.py``).
_MIN_THREAD_WORK = 1 << 15
#: How much more work a thread needs where the region's body is Python (a thread pool, or no compiled body):
#: such a region costs about 0.1 ms, and two threads there were no faster than one below ~260,000 unit-steps.
_PYTHON_REGION_FACTOR = 4


# Rational approximation of tanh on [0, 9.5] (see the module docstring): tanh(t) ~ t * P(t^2) / Q(t^2).
_P0 = 9.9999999993035593e-01
_P1 = 1.4081561727843259e-01
_P2 = 4.4024429364468475e-03
_P3 = 4.1669202865660933e-05
_P4 = 1.0772404926744526e-07
_P5 = 3.4612724132084012e-11
_Q1 = 4.7414894986905576e-01
_Q2 = 2.9118760867499035e-02
_Q3 = 4.9631579059614996e-04
_Q4 = 2.5478097872233203e-06
_Q5 = 2.8237988757305462e-09
_CLAMP = 9.5


def _jit(**options):
    """``numba.njit`` with a cache when numba finds a writable location, without one otherwise."""

    def wrap(fn):
        try:
            return numba.njit(cache=True, **options)(fn)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(cache=False, **options)(fn)

    return wrap


_FAST = {"nogil": True, "error_model": "numpy", "fastmath": {"contract"}}


@_jit(**_FAST, inline="always")
def _tanh_rational(a):
    """tanh of a float64 to float32 accuracy (relative error 7e-11), branch-free and vectorisable."""
    t = min(max(a, -_CLAMP), _CLAMP)
    u = t * t
    p = ((((_P5 * u + _P4) * u + _P3) * u + _P2) * u + _P1) * u + _P0
    q = ((((_Q5 * u + _Q4) * u + _Q3) * u + _Q2) * u + _Q1) * u + 1.0
    return t * p / q


#: The same coefficients in float32, for :func:`_tanh_lanes32`.
_P32 = tuple(np.float32(v) for v in (_P0, _P1, _P2, _P3, _P4, _P5))
_Q32 = tuple(np.float32(v) for v in (1.0, _Q1, _Q2, _Q3, _Q4, _Q5))
_CLAMP32 = np.float32(_CLAMP)


@_jit(**_FAST, inline="always")
def _tanh_lanes32(a):
    """tanh of a float64 ``a`` evaluated in float32 (argument rounded to float32, the rational form of
    :func:`_tanh_rational` with float32 coefficients): within 6 ulp of the float32 tanh (mean 0.7, relative
    error below 4e-7), and the loop around it vectorises with twice the lanes for these operations."""
    t = min(max(np.float32(a), -_CLAMP32), _CLAMP32)
    u = t * t
    p = ((((_P32[5] * u + _P32[4]) * u + _P32[3]) * u + _P32[2]) * u + _P32[1]) * u + _P32[0]
    q = ((((_Q32[5] * u + _Q32[4]) * u + _Q32[3]) * u + _Q32[2]) * u + _Q32[1]) * u + _Q32[0]
    return np.float64(t * p / q)


def _tanh_for_storage(float32_tanh, doc: str):
    """A tanh of a float64 for the kernels, called as ``tanh(a, storage)``: ``float32_tanh(a)`` where the
    storage array is float32, libm's ``tanh`` (full accuracy) where it is float64."""

    def tanh(a, storage):  # pragma: no cover - only called from compiled code
        return math.tanh(a)

    @overload(tanh, inline="always")
    def _tanh_overload(a, storage):
        if storage.dtype == numba.types.float32:
            return lambda a, storage: float32_tanh(a)
        return lambda a, storage: math.tanh(a)

    tanh.__doc__ = doc
    return tanh


_tanh = _tanh_for_storage(
    _tanh_rational,
    """tanh in the forward recurrence (float32: :func:`_tanh_rational`, whose errors enter the trajectory).""",
)
_tanh_backward = _tanh_for_storage(
    _tanh_lanes32,
    """tanh in the backward recursion (float32: :func:`_tanh_lanes32`). There it gives the factor
    ``1 - tanh^2`` of the gradients and the step that rebuilds ``z``, whose errors do not build up along the
    trajectory the way the forward's do: the float32 gradient errors stay those of the float64 rational
    (docs/backends.md, "Accuracy of the CPU kernels"), and the backward kernel is 3-10% faster.""",
)


@intrinsic
def _wide_vectors(typingctx):
    """Ask LLVM to vectorise the calling kernel with 512-bit registers where the CPU has them (AVX-512).

    LLVM's cost model prefers 256-bit vectors on AVX-512 CPUs (a clock-speed precaution of older Xeons);
    the function attributes below lift that for the kernels only. Where the CPU has no 512-bit registers the
    attributes change nothing. The kernels run ~10% faster with it on an AVX-512 Xeon (docs/performance.md).
    """

    def codegen(context, builder, sig, args):
        attributes = builder.function.attributes
        # llvmlite's attribute set admits only keyword attributes; LLVM's string attributes go in as text.
        # Should a later llvmlite store attributes otherwise, the kernels keep LLVM's default width.
        if isinstance(attributes, set):
            for attr in ('"prefer-vector-width"="512"', '"min-legal-vector-width"="512"'):
                set.add(attributes, attr)
        return context.get_dummy_value()

    return numba.types.none(), codegen


def _at(a, i):  # pragma: no cover - only called from compiled code
    """``a[i]``, or 0.0 when ``a`` is None (an absent bias or upstream gradient)."""
    return a[i]


@overload(_at, inline="always")
def _at_overload(a, i):
    if isinstance(a, numba.types.NoneType):
        return lambda a, i: 0.0
    return lambda a, i: a[i]


def _row(a, n, b0, L):  # pragma: no cover - only called from compiled code
    """Row ``n`` of the (N, U) array ``a``, units [b0, b0 + L); None for None (then ``_at`` gives 0.0)."""
    return a[n, b0 : b0 + L]


@overload(_row, inline="always")
def _row_overload(a, n, b0, L):
    if isinstance(a, numba.types.NoneType):
        return lambda a, n, b0, L: None
    return lambda a, n, b0, L: a[n, b0 : b0 + L]


@_jit(**_FAST)
def _step_sizes(c, dt):
    """``s = dt * sigmoid(c)`` (M,) in float64, once per hidden unit (not per unit of the batch)."""
    s = np.empty(c.shape[0], np.float64)
    for m in range(c.shape[0]):
        s[m] = dt / (1.0 + math.exp(-np.float64(c[m])))
    return s


@_jit(**_FAST)
def _segments(b0, L, M):
    """The units [b0, b0 + L) cut where the batch row changes: rows ``(k, b, m0, length)`` of an int64 array,
    units ``b0 + k .. b0 + k + length`` being the hidden units ``m0 ..`` of batch row ``b``."""
    out = np.empty((L // M + 2, 4), np.int64)
    count = 0
    k = 0
    while k < L:
        b = (b0 + k) // M
        m0 = b0 + k - b * M
        seg = min(M - m0, L - k)
        out[count, 0], out[count, 1], out[count, 2], out[count, 3] = k, b, m0, seg
        count += 1
        k += seg
    return out[:count]


@_jit(**_FAST)
def _project(u, vt, n, segs, L, out):
    """``out[k] = sum_i u[n, b, i] * vt[i, m]`` (float64, bias excluded) for the units of ``segs`` (see
    :func:`_segments`): the layer's input ``x_n = V u_n`` of those units, computed from its narrow input
    ``u`` (N, B, d) and the transposed projection ``vt`` (d, M) instead of read from memory. Returns
    ``out[:L]``."""
    d = vt.shape[0]
    for r in range(segs.shape[0]):
        k, b, m0, seg = segs[r, 0], segs[r, 1], segs[r, 2], segs[r, 3]
        o = out[k : k + seg]
        ub = np.float64(u[n, b, 0])
        v = vt[0, m0 : m0 + seg]
        for j in range(seg):
            o[j] = ub * v[j]
        for i in range(1, d):
            ub = np.float64(u[n, b, i])
            v = vt[i, m0 : m0 + seg]
            for j in range(seg):
                o[j] += ub * v[j]
    return out[:L]


@_jit(**_FAST)
def _accumulate_projection_grad(u, n, segs, g, acc):
    """``acc[i, k] += g[k] * u[n, b, i]`` for the units of ``segs`` (see :func:`_segments`): the running
    per-unit sums of dL/dV from the gradient ``g`` of ``x_n`` (the projection's weight gradient, reduced over
    the batch later)."""
    d = acc.shape[0]
    for r in range(segs.shape[0]):
        k, b, seg = segs[r, 0], segs[r, 1], segs[r, 3]
        gs = g[k : k + seg]
        for i in range(d):
            ub = np.float64(u[n, b, i])
            a = acc[i, k : k + seg]
            for j in range(seg):
                a[j] += gs[j] * ub


@_jit(**_FAST)
def _project_pair(u, vt, n1, n2, segs, out1, out2):
    """:func:`_project` of steps n1 and n2 in one pass over ``vt`` (the backward kernel's two steps)."""
    d = vt.shape[0]
    for r in range(segs.shape[0]):
        k, b, m0, seg = segs[r, 0], segs[r, 1], segs[r, 2], segs[r, 3]
        o1 = out1[k : k + seg]
        o2 = out2[k : k + seg]
        u1 = np.float64(u[n1, b, 0])
        u2 = np.float64(u[n2, b, 0])
        v = vt[0, m0 : m0 + seg]
        for j in range(seg):
            o1[j] = u1 * v[j]
            o2[j] = u2 * v[j]
        for i in range(1, d):
            u1 = np.float64(u[n1, b, i])
            u2 = np.float64(u[n2, b, i])
            v = vt[i, m0 : m0 + seg]
            for j in range(seg):
                o1[j] += u1 * v[j]
                o2[j] += u2 * v[j]


@_jit(**_FAST)
def _accumulate_projection_grad_pair(u, n1, n2, segs, g1, g2, acc):
    """:func:`_accumulate_projection_grad` of steps n1 and n2 in one pass over ``acc``."""
    d = acc.shape[0]
    for r in range(segs.shape[0]):
        k, b, seg = segs[r, 0], segs[r, 1], segs[r, 3]
        h1 = g1[k : k + seg]
        h2 = g2[k : k + seg]
        for i in range(d):
            u1 = np.float64(u[n1, b, i])
            u2 = np.float64(u[n2, b, i])
            a = acc[i, k : k + seg]
            for j in range(seg):
                a[j] += h1[j] * u1 + h2[j] * u2


@_jit(**_FAST)
def _broadcast_rows(u, n1, n2, segs, out1, out2):
    """``out1[k] = u[n1, b]``, ``out2[k] = u[n2, b]`` (float64) for the units of ``segs``: a one-feature input
    (N, B) spread over the hidden units of each batch row."""
    for r in range(segs.shape[0]):
        k, b, seg = segs[r, 0], segs[r, 1], segs[r, 3]
        u1 = np.float64(u[n1, b])
        u2 = np.float64(u[n2, b])
        o1 = out1[k : k + seg]
        o2 = out2[k : k + seg]
        for j in range(seg):
            o1[j] = u1
            o2[j] = u2


def _input_rows(x, u, vt, n, b0, L, buf1, buf2, segs):  # pragma: no cover - only called from compiled code
    """Rows n and n - 1 of the layer input for units [b0, b0 + L) (see :func:`_input_row`)."""
    return x[n, b0 : b0 + L], x[n - 1, b0 : b0 + L]


@overload(_input_rows, inline="always")
def _input_rows_overload(x, u, vt, n, b0, L, buf1, buf2, segs):
    if isinstance(x, numba.types.NoneType) and u.ndim == 2:

        def spread(x, u, vt, n, b0, L, buf1, buf2, segs):
            _broadcast_rows(u, n, n - 1, segs, buf1, buf2)
            return (buf1[:L],), (buf2[:L],)

        return spread
    if isinstance(x, numba.types.NoneType):

        def project(x, u, vt, n, b0, L, buf1, buf2, segs):
            _project_pair(u, vt, n, n - 1, segs, buf1, buf2)
            return buf1[:L], buf2[:L]

        return project
    return lambda x, u, vt, n, b0, L, buf1, buf2, segs: (x[n, b0 : b0 + L], x[n - 1, b0 : b0 + L])


def _projection_grads(u, n, segs, g1, g2, acc):  # pragma: no cover - only called from compiled code
    """:func:`_accumulate_projection_grad_pair` of steps n and n - 1 when the input is projected in the
    kernel (``u`` given), else nothing."""


@overload(_projection_grads, inline="always")
def _projection_grads_overload(u, n, segs, g1, g2, acc):
    if isinstance(u, numba.types.NoneType) or u.ndim == 2:  # 2-D: summed in the unit loop (_put)
        return lambda u, n, segs, g1, g2, acc: None
    return lambda u, n, segs, g1, g2, acc: _accumulate_projection_grad_pair(u, n, n - 1, segs, g1, g2, acc)


def _input_row(x, u, vt, n, b0, L, buf, segs):  # pragma: no cover - only called from compiled code
    """Row n of the layer input for units [b0, b0 + L): ``x[n, b0:b0+L]``, or, when ``x`` is None, the
    projection of ``u`` computed into ``buf`` (see :func:`_project`)."""
    return x[n, b0 : b0 + L]


@overload(_input_row, inline="always")
def _input_row_overload(x, u, vt, n, b0, L, buf, segs):
    if isinstance(x, numba.types.NoneType) and u.ndim == 2:

        def spread(x, u, vt, n, b0, L, buf, segs):
            _broadcast_rows(u, n, n, segs, buf, buf)
            return (buf[:L],)

        return spread
    if isinstance(x, numba.types.NoneType):
        return lambda x, u, vt, n, b0, L, buf, segs: _project(u, vt, n, segs, L, buf)
    return lambda x, u, vt, n, b0, L, buf, segs: x[n, b0 : b0 + L]


def _out_row(a, n, b0, L, buf):  # pragma: no cover - only called from compiled code
    """Row n of the output ``a`` for units [b0, b0 + L), or ``buf[:L]`` when ``a`` is None (not stored)."""
    return a[n, b0 : b0 + L]


@overload(_out_row, inline="always")
def _out_row_overload(a, n, b0, L, buf):
    if isinstance(a, numba.types.NoneType):
        return lambda a, n, b0, L, buf: buf[:L]
    return lambda a, n, b0, L, buf: a[n, b0 : b0 + L]


def _projection_grad(u, n, segs, g, acc):  # pragma: no cover - only called from compiled code
    """:func:`_accumulate_projection_grad` when the input is projected in the kernel (``u`` given), else
    nothing."""


@overload(_projection_grad, inline="always")
def _projection_grad_overload(u, n, segs, g, acc):
    if isinstance(u, numba.types.NoneType) or u.ndim == 2:  # 2-D: summed in the unit loop (_put)
        return lambda u, n, segs, g, acc: None
    return lambda u, n, segs, g, acc: _accumulate_projection_grad(u, n, segs, g, acc)


@_jit(**_FAST)
def _forward_range(x, w, c, dt, alpha, y0, z0, bias, y, yN, zN, u, vt, u0, u1):
    """Forward recurrence for units [u0, u1). x, y: (N, U); w, c: (M,); bias: (M,) or None;
    y0, z0, yN, zN: (U,). With ``x`` None the input is projected in the kernel from u (N, B, d) and the
    transposed projection vt (d, M) (float64), see :func:`_project`; otherwise u and vt are None."""
    _wide_vectors()
    N = y.shape[0]
    M = w.shape[0]
    s_m = _step_sizes(c, dt)
    size = min(_BLOCK, u1 - u0)
    yb = np.empty(size, np.float64)
    zb = np.empty(size, np.float64)
    wb = np.empty(size, np.float64)
    sb = np.empty(size, np.float64)
    bb = np.empty(size, np.float64)
    xbuf = np.empty(size, np.float64)
    for b0 in range(u0, u1, _BLOCK):
        L = min(_BLOCK, u1 - b0)
        segs = _segments(b0, L, M)
        for k in range(L):
            j = (b0 + k) % M
            yb[k] = y0[b0 + k]
            zb[k] = z0[b0 + k]
            wb[k] = w[j]
            sb[k] = s_m[j]
            bb[k] = _at(bias, j)
        for n in range(N):
            xr = _input_row(x, u, vt, n, b0, L, xbuf, segs)
            yr = y[n, b0 : b0 + L]
            for k in range(L):
                yk = yb[k]
                sk = sb[k]
                zk = zb[k] - sk * (_tanh(wb[k] * yk + (xr[k] + bb[k]), y) + alpha * yk)
                yk = yk + sk * zk
                zb[k] = zk
                yb[k] = yk
                yr[k] = yk
        for k in range(L):
            yN[b0 + k] = yb[k]
            zN[b0 + k] = zb[k]


# Rows of the backward kernel's per-block state. One 2-D array rather than nine 1-D ones: LLVM then sees
# that the rows cannot overlap (one base, constant distance), while nine separate arrays need more runtime
# alias checks than it allows, and the loop is no longer vectorised (4x slower).
# With a one-feature input projected in the kernel, rows _V (the unit's weight V[m, 0]) and _GV (its running
# sum of dL/dV) are used too.
_GY, _GZ, _Z, _W, _S, _BIAS, _GW, _DS, _GB, _V, _GV = range(11)


def _x_at(xr, k, st):  # pragma: no cover - only called from compiled code
    """Unit k's input in the backward kernel: ``xr[k]``, or for a one-feature input (``xr`` a 1-tuple holding
    the input spread over the units) that times the unit's weight ``st[_V, k]``."""
    return xr[k]


@overload(_x_at, inline="always")
def _x_at_overload(xr, k, st):
    if isinstance(xr, numba.types.BaseTuple):
        return lambda xr, k, st: xr[0][k] * st[_V, k]
    return lambda xr, k, st: xr[k]


def _put(out, k, g, xr, st):  # pragma: no cover - only called from compiled code
    """Store unit k's gradient ``g`` of its input: ``out[k] = g``, or for a one-feature input (``xr`` a
    1-tuple) add ``g`` times the input to the unit's running sum of dL/dV, ``st[_GV, k]``."""
    out[k] = g


@overload(_put, inline="always")
def _put_overload(out, k, g, xr, st):
    if isinstance(xr, numba.types.BaseTuple):

        def accumulate(out, k, g, xr, st):
            st[_GV, k] += g * xr[0][k]

        return accumulate

    def store(out, k, g, xr, st):
        out[k] = g

    return store


def _weight_at(vt, j):  # pragma: no cover - only called from compiled code
    """``vt[0, j]``, the weight of hidden unit j on a one-feature input, or 0.0 without one."""
    return vt[0, j]


@overload(_weight_at, inline="always")
def _weight_at_overload(vt, j):
    if isinstance(vt, numba.types.NoneType):
        return lambda vt, j: 0.0
    return lambda vt, j: vt[0, j]


@_jit(**_FAST, inline="always")
def _backward_step(yp, xk, gyk, gy, gz, z, w, s, b, alpha, ds, gw, gb, storage):
    """Step n of the Appendix-B backward for one unit: from y_{n-1} = ``yp``, x_n = ``xk``, the upstream
    gradient ``gyk`` of y_n and the unit's state after step n+1 (adjoints ``gy``, ``gz``, rebuilt z_n = ``z``,
    running sums ``ds``, ``gw``, ``gb`` of dL/ds, dL/dw, dL/dbias) to
    ``(dL/dx_n, gy, gz, z_{n-1}, ds, gw, gb)``; ``storage`` picks the tanh (see :func:`_tanh`)."""
    g_y = gy + gyk
    th = _tanh_backward(w * yp + (xk + b), storage)
    force = th + alpha * yp
    g = gz + s * g_y
    gs = g * s
    ds = (ds + g_y * z) - g * force  # two fused multiply-adds
    gxk = gs * (th * th - 1.0)
    return gxk, (g_y + gxk * w) - gs * alpha, g, z + s * force, ds, gw + gxk * yp, gb + gxk


def _width(u):  # pragma: no cover - only called from compiled code
    """Rows of the backward kernel's sums of dL/dV kept outside its state: ``u.shape[2]`` for an input
    projected through buffers, 0 for none or a one-feature input (summed in the state, row _GV)."""
    return u.shape[2]


@overload(_width, inline="always")
def _width_overload(u):
    if isinstance(u, numba.types.NoneType) or u.ndim == 2:
        return lambda u: 0
    return lambda u: u.shape[2]


def _store_projection_grad(u, gv_u, acc, st, b0, L):  # pragma: no cover - only called from compiled code
    """Write a block's per-unit sums of dL/dV (from ``st[_GV]`` for a one-feature input, else from ``acc``)
    to ``gv_u[b0 : b0 + L]``."""


@overload(_store_projection_grad, inline="always")
def _store_projection_grad_overload(u, gv_u, acc, st, b0, L):
    if isinstance(u, numba.types.NoneType):
        return lambda u, gv_u, acc, st, b0, L: None
    if u.ndim == 2:

        def from_state(u, gv_u, acc, st, b0, L):
            for k in range(L):
                gv_u[b0 + k, 0] = st[_GV, k]

        return from_state

    def from_acc(u, gv_u, acc, st, b0, L):
        for i in range(acc.shape[0]):
            for k in range(L):
                gv_u[b0 + k, i] = acc[i, k]

    return from_acc


@_jit(**_FAST)
def _backward_range(
    grad_y, grad_yN, grad_zN, y, x, w, c, dt, alpha, y0, zN, bias, gx, gy0, gz0, gw_u, ds_u, gb_u, u, vt, gv_u,
    u0, u1,
):  # fmt: skip
    """Appendix-B backward for units [u0, u1), z rebuilt by inversion from the stored y.

    grad_y: (N, U) or None (not read: zeros); y, x, gx: (N, U); w, c: (M,); bias: (M,) or None;
    grad_yN, grad_zN, y0, zN, gy0, gz0: (U,); gw_u, ds_u, gb_u: (U,) float64 per-unit sums over time of
    dL/dw, dL/ds and dL/dbias (reduced over the batch later). Two steps per pass over a block: its state is
    read and written once for both (1.3x faster than a pass per step, measured; more steps per pass need
    more arrays in the loop than LLVM vectorises). With ``x`` None the input is projected in the kernel
    from u (N, B, d) and vt (d, M) (see :func:`_forward_range`), gv_u (U, d) receives the per-unit sums of
    dL/dV, and ``gx`` may be None (then grad_x is not written).
    """
    _wide_vectors()
    N = y.shape[0]
    M = w.shape[0]
    s_m = _step_sizes(c, dt)
    size = min(_BLOCK, u1 - u0)
    st = np.empty((11, size + _PAD), np.float64)
    xb1 = np.empty(size, np.float64)
    xb2 = np.empty(size, np.float64)
    gb1 = np.empty(size, np.float64)
    gb2 = np.empty(size, np.float64)
    acc = np.empty((_width(u), size + _PAD), np.float64)
    for b0 in range(u0, u1, _BLOCK):
        L = min(_BLOCK, u1 - b0)
        segs = _segments(b0, L, M)
        acc[:, :L] = 0.0
        for k in range(L):
            j = (b0 + k) % M
            st[_GY, k] = grad_yN[b0 + k]
            st[_GZ, k] = grad_zN[b0 + k]
            st[_Z, k] = zN[b0 + k]
            st[_W, k] = w[j]
            st[_S, k] = s_m[j]
            st[_BIAS, k] = _at(bias, j)
            st[_GW, k] = 0
            st[_DS, k] = 0
            st[_GB, k] = 0
            st[_V, k] = _weight_at(vt, j)
            st[_GV, k] = 0
        n = N - 1
        while n >= 1:  # steps n and n - 1
            x1, x2 = _input_rows(x, u, vt, n, b0, L, xb1, xb2, segs)
            q1 = _row(grad_y, n, b0, L)
            q2 = _row(grad_y, n - 1, b0, L)
            o1 = _out_row(gx, n, b0, L, gb1)
            o2 = _out_row(gx, n - 1, b0, L, gb2)
            p1 = y[n - 1, b0 : b0 + L]
            p2 = y[n - 2, b0 : b0 + L] if n > 1 else y0[b0 : b0 + L]
            for k in range(L):
                sk, wk, bk = st[_S, k], st[_W, k], st[_BIAS, k]
                gxk, gy, gz, z, ds, gw, gb = _backward_step(
                    p1[k], _x_at(x1, k, st), _at(q1, k), st[_GY, k], st[_GZ, k], st[_Z, k], wk, sk, bk, alpha,
                    st[_DS, k], st[_GW, k], st[_GB, k], gy0,
                )  # fmt: skip
                _put(o1, k, gxk, x1, st)
                gxk, gy, gz, z, ds, gw, gb = _backward_step(
                    p2[k], _x_at(x2, k, st), _at(q2, k), gy, gz, z, wk, sk, bk, alpha, ds, gw, gb, gy0
                )
                _put(o2, k, gxk, x2, st)
                st[_GY, k], st[_GZ, k], st[_Z, k], st[_DS, k], st[_GW, k], st[_GB, k] = gy, gz, z, ds, gw, gb
            _projection_grads(u, n, segs, o1, o2, acc)
            n -= 2
        if n == 0:  # N odd: the first step alone
            xr = _input_row(x, u, vt, 0, b0, L, xb1, segs)
            gyr = _row(grad_y, 0, b0, L)
            gxr = _out_row(gx, 0, b0, L, gb1)
            ypr = y0[b0 : b0 + L]
            for k in range(L):
                gxk, gy, gz, z, ds, gw, gb = _backward_step(
                    ypr[k], _x_at(xr, k, st), _at(gyr, k), st[_GY, k], st[_GZ, k], st[_Z, k], st[_W, k],
                    st[_S, k], st[_BIAS, k], alpha, st[_DS, k], st[_GW, k], st[_GB, k], gy0,
                )  # fmt: skip
                _put(gxr, k, gxk, xr, st)
                st[_GY, k], st[_GZ, k], st[_Z, k], st[_DS, k], st[_GW, k], st[_GB, k] = gy, gz, z, ds, gw, gb
            _projection_grad(u, 0, segs, gxr, acc)
        for k in range(L):
            gy0[b0 + k] = st[_GY, k]
            gz0[b0 + k] = st[_GZ, k]
            gw_u[b0 + k] = st[_GW, k]
            ds_u[b0 + k] = st[_DS, k]
            gb_u[b0 + k] = st[_GB, k]
        _store_projection_grad(u, gv_u, acc, st, b0, L)


# ----------------------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------------------

#: Set to "0" to run the kernels' ranges on a thread pool of this module instead of torch's OpenMP threads.
OPENMP_TEAM_ENV = "UNICORNN_CPU_OPENMP"
#: The process that imported this module: torch's OpenMP runtime is used there only, never in a forked child
#: (GNU OpenMP's threads do not survive a fork).
_IMPORT_PID = os.getpid()
_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    global _POOL, _POOL_SIZE, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers or _POOL_PID != os.getpid():
            # A pool inherited through fork has no live threads: start a new one (never reuse it).
            old = _POOL if _POOL_PID == os.getpid() else None
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unicornn-cpu")
            _POOL_SIZE, _POOL_PID = workers, os.getpid()
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def _loaded_openmp_libraries() -> list[str]:
    """Paths of the OpenMP runtimes mapped into this process (Linux: from ``/proc/self/maps``), then the
    usual names, for :func:`_openmp_parallel` to look up without loading anything new."""
    paths = []
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                path = line.split(maxsplit=5)[-1].strip()
                name = os.path.basename(path)
                if name.startswith(("libgomp", "libiomp5", "libomp")) and path not in paths:
                    paths.append(path)
    except OSError:
        pass
    own = os.path.dirname(torch.__file__) + os.sep  # torch's own copy first, should another be loaded too
    paths.sort(key=lambda path: not path.startswith(own))
    return paths + ["libgomp.so.1", "libiomp5.so", "libomp.so", "libomp.dylib"]


@functools.cache
def _openmp_parallel():
    """``GOMP_parallel`` of the OpenMP runtime torch runs its intra-op threads on, or None.

    Only a runtime already loaded into the process is taken (``RTLD_NOLOAD``): GNU libgomp, or Intel's and
    LLVM's runtimes, which export the same entry point. None when torch's parallel backend is not OpenMP,
    on Windows, or when the environment variable ``UNICORNN_CPU_OPENMP`` is ``"0"``.
    """
    if os.name != "posix" or os.environ.get(OPENMP_TEAM_ENV, "1") == "0":
        return None
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    for name in _loaded_openmp_libraries():
        try:
            fn = ctypes.CDLL(name, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_GLOBAL).GOMP_parallel
        except (OSError, AttributeError):
            continue
        fn.argtypes = [_OPENMP_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fn.restype = None
        return fn
    return None


#: The C type of a parallel region's body: ``void body(void *)``.
_OPENMP_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _ranges(U: int, N: int, pieces: int = 1, python_body: bool = False) -> list[tuple[int, int]]:
    """Split units [0, U) into contiguous ranges aligned to ``_ALIGN`` units: ``pieces`` per thread (fewer
    where a piece would hold less than ``_MIN_PIECE`` units), on as many threads as get ``_MIN_THREAD_WORK``
    unit-steps each, ``_PYTHON_REGION_FACTOR`` times that for a region with a Python body (at most
    ``torch.get_num_threads()``, at least one)."""
    threads = max(1, torch.get_num_threads())
    work = _MIN_THREAD_WORK * (_PYTHON_REGION_FACTOR if python_body else 1)
    if work:
        threads = min(threads, max(1, U * N // work))
    threads = min(threads, max(1, U // _ALIGN))
    count = threads * max(1, min(pieces, U // (threads * _MIN_PIECE)))
    per = -(-U // count)
    per = -(-per // _ALIGN) * _ALIGN
    return [(a, min(a + per, U)) for a in range(0, U, per)]


# Parallel regions without Python. Where the team is torch's OpenMP one, every thread of a region runs a numba
# ``cfunc`` compiled for the types of the kernel's arguments: it reads the kernel's address and its arguments
# (array addresses and shapes, numbers) from a control block of int64 that ``_run`` fills, takes ranges with an
# atomic counter and calls the kernel on each, so no thread of the team enters the interpreter. A Python body
# costs ~60 us per call on two threads (the callback's thread state, the GIL passed between the threads); this
# one ~2 us. Control block: [next range, number of ranges R, kernel address, R (start, end) pairs, then the
# arguments in order: an array as its address and shape (C-contiguous), a float as its bits, an int as itself,
# None as nothing].


class _Spec:
    """The types of a kernel's arguments as text (one item per argument, see :func:`_spec_types`): what a
    region body is compiled for. It pickles the same in every process, so numba's cache keys bodies by it."""

    def __init__(self, text: str) -> None:
        self.text = text


class _SpecType(numba.types.Dummy):
    def __init__(self, text: str) -> None:
        self.text = text
        super().__init__(name=f"unicornn.region({text})")


@typeof_impl.register(_Spec)
def _typeof_spec(val, c):
    return _SpecType(val.text)


register_model(_SpecType)(models.OpaqueModel)


@lower_constant(_SpecType)
def _lower_spec(context, builder, ty, pyval):
    return context.get_dummy_value()


#: dtype characters of the spec (numpy's) -> numba dtypes
_SPEC_DTYPES = {"f": numba.types.float32, "d": numba.types.float64}


def _spec_types(text: str) -> list:
    """The numba types of a spec's arguments: ``n`` None, ``s`` a float, ``i`` an int, ``<dtype char><ndim>``
    a C-contiguous writable array (the types numba gives such Python arguments)."""
    out = []
    for item in text.split(","):
        if item == "n":
            out.append(numba.types.none)
        elif item == "s":
            out.append(numba.types.float64)
        elif item == "i":
            out.append(numba.types.int64)
        else:
            out.append(numba.types.Array(_SPEC_DTYPES[item[0]], int(item[1:]), "C"))
    return out


def _arg_spec(args) -> str | None:
    """The spec of ``args``, or None where an argument is none of :func:`_spec_types` (the call then takes the
    Python body)."""
    items = []
    for a in args:
        if a is None:
            items.append("n")
        elif isinstance(a, float):
            items.append("s")
        elif isinstance(a, int):
            items.append("i")
        elif (
            isinstance(a, np.ndarray)
            and a.dtype.char in _SPEC_DTYPES
            and a.flags.c_contiguous
            and a.flags.writeable
        ):
            items.append(f"{a.dtype.char}{a.ndim}")
        else:
            return None
    return ",".join(items)


def _words(builder, ctl):
    return builder.bitcast(ctl, ir.IntType(64).as_pointer())


@intrinsic
def _ctl_load(typingctx, ctl, i):
    """``ctl[i]`` of the control block at ``ctl`` (a voidptr)."""

    def codegen(context, builder, sig, args):
        return builder.load(builder.gep(_words(builder, args[0]), [args[1]]))

    return numba.types.int64(numba.types.voidptr, numba.types.intp), codegen


@intrinsic
def _ctl_next(typingctx, ctl):
    """The next range's index: ``ctl[0]``, incremented atomically."""

    def codegen(context, builder, sig, args):
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", _words(builder, args[0]), one, "monotonic")

    return numba.types.int64(numba.types.voidptr), codegen


@intrinsic
def _ctl_args(typingctx, ctl, start, spec):
    """The kernel's arguments, a tuple of the spec's types, read from ``ctl[start:]`` (arrays without a
    meminfo: they borrow the memory of the caller's arrays, alive until the region ends)."""
    arg_types = _spec_types(spec.text)
    tuple_type = numba.types.Tuple(arg_types)

    def codegen(context, builder, sig, args):
        words = _words(builder, args[0])
        pos = [args[1]]

        def word():
            value = builder.load(builder.gep(words, [pos[0]]))
            pos[0] = builder.add(pos[0], context.get_constant(numba.types.intp, 1))
            return value

        values = []
        for ty in arg_types:
            if isinstance(ty, numba.types.NoneType):
                values.append(context.get_dummy_value())
            elif isinstance(ty, numba.types.Float):
                values.append(builder.bitcast(word(), ir.DoubleType()))
            elif isinstance(ty, numba.types.Integer):
                values.append(word())
            else:
                data = builder.inttoptr(word(), context.get_data_type(ty.dtype).as_pointer())
                shape = [word() for _ in range(ty.ndim)]
                itemsize = context.get_constant(numba.types.intp, context.get_abi_sizeof(data.type.pointee))
                strides = [itemsize]
                for extent in reversed(shape[1:]):
                    strides.insert(0, builder.mul(strides[0], extent))
                array = make_array(ty)(context, builder)
                populate_array(array, data=data, shape=cgutils.pack_array(builder, shape),
                               strides=cgutils.pack_array(builder, strides), itemsize=itemsize, meminfo=None)  # fmt: skip
                values.append(array._getvalue())
        return context.make_tuple(builder, tuple_type, values)

    return tuple_type(numba.types.voidptr, numba.types.intp, spec), codegen


@intrinsic
def _call_kernel(typingctx, address, args, u0, u1):
    """Call the compiled kernel at ``address`` (numba's calling convention, returning None) on ``args`` and the
    range [u0, u1). By address rather than by name: the body then does not contain the kernel, and compiles in
    a fraction of a second instead of compiling the kernel again."""
    arg_types = [*args.types, numba.types.int64, numba.types.int64]

    def codegen(context, builder, sig, llargs):
        conv = context.call_conv
        fn = builder.inttoptr(llargs[0], conv.get_function_type(numba.types.none, arg_types).as_pointer())
        result = cgutils.alloca_once(builder, conv.get_return_type(numba.types.none).pointee)
        builder.store(cgutils.get_null_value(result.type.pointee), result)
        excinfo = cgutils.alloca_once(builder, ir.PointerType(excinfo_t))
        values = [builder.extract_value(llargs[1], i) for i in range(len(args.types))] + list(llargs[2:])
        builder.call(fn, [result, excinfo, *conv._get_arg_packer(arg_types).as_arguments(builder, values)])
        return context.get_dummy_value()

    return numba.types.none(numba.types.int64, args, numba.types.int64, numba.types.int64), codegen


@functools.cache
def _region_body(text: str):
    """The compiled body of a parallel region for the spec ``text`` (a function pointer of type
    ``_OPENMP_BODY``), or None where numba cannot compile it (then the Python body runs)."""
    spec = _Spec(text)

    def body(ctl):
        count = _ctl_load(ctl, 1)
        kernel = _ctl_load(ctl, 2)
        args = _ctl_args(ctl, 3 + 2 * count, spec)
        while True:
            i = _ctl_next(ctl)
            if i >= count:
                break
            _call_kernel(kernel, args, _ctl_load(ctl, 3 + 2 * i), _ctl_load(ctl, 4 + 2 * i))

    signature = numba.types.void(numba.types.voidptr)
    try:
        try:
            compiled = numba.cfunc(signature, cache=True)(body)
        except RuntimeError:  # no cache locator (see _jit)
            compiled = numba.cfunc(signature, cache=False)(body)
    except Exception:  # noqa: BLE001 - a numba without what the body needs: the Python body does the same work
        return None
    return _OPENMP_BODY(compiled.address)


@functools.cache
def _kernel_address(kernel, text: str) -> int:
    """The address of ``kernel`` compiled for the spec ``text`` and a range (u0, u1): the overload a Python
    call with those arguments runs (compiled, or loaded from the cache, on first use)."""
    signature = (*_spec_types(text), numba.types.int64, numba.types.int64)
    if signature not in kernel.overloads:
        kernel.compile(signature)
    compiled = kernel.overloads[signature]
    return compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)


#: The numba kernels :func:`_run` runs in region bodies without Python.
_REGION_KERNELS: set = set()


def _control_block(kernel, text: str, args, ranges) -> np.ndarray:
    """The control block of a region of ``kernel`` on ``args`` (spec ``text``) over ``ranges``."""
    R = len(ranges)
    size = sum(0 if a is None else a.ndim + 1 if isinstance(a, np.ndarray) else 1 for a in args)
    ctl = np.zeros(3 + 2 * R + size, np.int64)
    ctl[1] = R
    ctl[2] = _kernel_address(kernel, text)
    ctl[3 : 3 + 2 * R] = np.asarray(ranges, np.int64).reshape(-1)
    _ctl_fill(ctl, 3 + 2 * R, args)
    return ctl


def _ctl_put(ctl, pos, a):  # pragma: no cover - only called from compiled code
    """Write ``a`` into the control block at ``pos``; returns the position after it."""


@overload(_ctl_put, inline="always")
def _ctl_put_overload(ctl, pos, a):
    if isinstance(a, numba.types.NoneType):
        return lambda ctl, pos, a: pos
    if isinstance(a, numba.types.Float):

        def put_float(ctl, pos, a):
            ctl[pos] = _float_bits(np.float64(a))
            return pos + 1

        return put_float
    if isinstance(a, numba.types.Integer):

        def put_int(ctl, pos, a):
            ctl[pos] = a
            return pos + 1

        return put_int

    def put_array(ctl, pos, a):
        ctl[pos] = a.ctypes.data
        for i in range(a.ndim):
            ctl[pos + 1 + i] = a.shape[i]
        return pos + 1 + a.ndim

    return put_array


@intrinsic
def _float_bits(typingctx, x):
    """The bits of a float64 as an int64."""

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return numba.types.int64(numba.types.float64), codegen


@_jit()
def _ctl_fill(ctl, pos, args):
    """Write the kernel's arguments ``args`` (a tuple) into the control block from ``pos`` on."""
    for a in literal_unroll(args):
        pos = _ctl_put(ctl, pos, a)
    return pos


#: Specs whose compiled region could not be set up (numba internals changed): their calls take Python bodies.
_FAILED_SPECS: set = set()


def _compiled_region(kernel, args, U: int, N: int):
    """``(body, control block)`` of a compiled parallel region of ``kernel`` on ``args``, or None where the call
    cannot have one (a kernel of its own, an argument outside the specs, or numba internals this relies on
    changed): then a Python body runs, which does the same work."""
    if kernel not in _REGION_KERNELS or excinfo_t is None:
        return None
    text = _arg_spec(args)
    if text is None or text in _FAILED_SPECS:
        return None
    body = _region_body(text)
    if body is None:
        return None
    try:
        return body, _control_block(kernel, text, args, _ranges(U, N, _PIECES))
    except Exception:  # noqa: BLE001 - see the docstring
        _FAILED_SPECS.add(text)
        return None


def _run(kernel, args, U: int, N: int) -> None:
    """Run ``kernel(*args, u0, u1)`` over all units on ``torch.get_num_threads()`` threads (one for small
    problems), which take the ranges of :func:`_ranges` in turn, ``_PIECES`` per thread at most.

    The threads are torch's own OpenMP threads where torch runs on OpenMP (one parallel region through
    ``GOMP_parallel``): after each parallel matmul those threads keep polling for their next region for a
    while (GNU OpenMP: 300,000 polls, ~3 ms here), so threads of our own would share a core with them and
    start late. The region's body is compiled for the numba kernels of this module (:func:`_region_body`),
    Python for any other ``kernel`` or where it cannot be compiled. Elsewhere, and in a forked child, the
    calling thread and a pool of this module run them.
    """
    if U == 0:
        return
    threads = len(_ranges(U, N))
    if threads == 1:
        kernel(*args, 0, U)
        return
    parallel = _openmp_parallel() if os.getpid() == _IMPORT_PID else None
    region = _compiled_region(kernel, args, U, N) if parallel is not None else None
    if region is not None:
        body, ctl = region
        parallel(body, ctl.ctypes.data, threads, 0)
        return
    threads = len(_ranges(U, N, python_body=True))
    if threads == 1:
        kernel(*args, 0, U)
        return
    todo = iter(_ranges(U, N, _PIECES, python_body=True))  # shared: next() is atomic under the GIL

    def take():
        for a, b in todo:
            kernel(*args, a, b)

    if parallel is None:
        pool = _pool(threads - 1)
        futures = [pool.submit(take) for _ in range(threads - 1)]
        take()
        for f in futures:
            f.result()
        return
    errors: list[BaseException] = []

    def body(_):
        # Runs on each thread of the team, holding the GIL only between kernel calls (they are nogil).
        try:
            take()
        except BaseException as err:  # ctypes would only print it: re-raised below
            errors.append(err)

    parallel(_OPENMP_BODY(body), None, threads, 0)
    if errors:
        raise errors[0]


# ----------------------------------------------------------------------------------------------------------
# Freed memory kept for reuse (glibc)
# ----------------------------------------------------------------------------------------------------------

#: Set to "0" to leave glibc's malloc as it is (see :func:`keep_freed_blocks`).
KEEP_FREED_BLOCKS_ENV = "UNICORNN_KEEP_FREED_BLOCKS"
#: The largest block size :func:`keep_freed_blocks` keeps for reuse (bytes; twice this fits a C int).
_KEEP_MAX = 1 << 29
#: The highest ``mmap`` threshold glibc's dynamic rule reaches by itself (``DEFAULT_MMAP_THRESHOLD_MAX``:
#: 32 MiB on 64-bit systems). :func:`keep_freed_blocks` never sets a lower one: a fixed threshold turns the
#: dynamic rule off, and one below glibc's own would send every larger block to a fresh ``mmap``.
_GLIBC_DYNAMIC_MAX = 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
#: The most free memory at the top of the heap it lets glibc keep (bytes; fits a C int).
_TRIM_MAX = 1 << 30
# mallopt parameters of glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_kept_bytes = 0
#: The trim threshold :func:`keep_freed_blocks` has set (bytes; 0: none).
_kept_trim = 0
_kept_lock = threading.Lock()


@functools.cache
def _mallopt():
    """glibc's ``mallopt``, or None elsewhere (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only
        return libc.mallopt
    except (AttributeError, OSError):
        return None


def _allocator_is_ours() -> bool:
    """False when the user opted out, or set glibc's malloc thresholds or tunables themselves (their choice wins)."""
    env = os.environ
    if env.get(KEEP_FREED_BLOCKS_ENV, "1") == "0":
        return False
    own = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
    return not any(k in env for k in own) and "glibc.malloc" not in env.get("GLIBC_TUNABLES", "")


def keep_freed_blocks(nbytes: int) -> int:
    """Let glibc keep freed blocks of up to ``2 * nbytes`` (at least 32 MiB, at most 512 MiB) for reuse;
    returns the size kept.

    A training step allocates and frees a few tensors of (N, B, M) per layer. glibc's malloc serves every
    block above a threshold (dynamic, at most 32 MiB by default) with a fresh ``mmap`` and returns it on
    ``free``, and also returns the top of its heap once more than twice that is free; every step then
    touches that memory for the first time again: one page fault per 4 KiB (psMNIST shape: 259,000 faults,
    a third of the step). The CPU kernels call this with the size of their (N, B, M) tensors, which raises
    the ``mmap`` threshold above it and the trim threshold to 8 times that (at most 1 GiB), so these blocks
    stay in the process and are reused. It only ever raises the thresholds: the ``mmap`` threshold is set to
    no less than the 32 MiB glibc's dynamic rule reaches by itself, and the trim threshold to no less than
    twice that, as glibc's rule does (setting either turns that rule off; a first call on small tensors once
    fixed the threshold at twice their size, e.g. 32 KiB; every larger block of the process then went to a
    fresh ``mmap``, and in some runs a one-step training step page-faulted on every call and took up to 1.6x
    as long). Each threshold rises on its own: the trim threshold follows the largest tensors seen, also when
    the ``mmap`` threshold already covers them (steps of 4 MB tensors and then of 16 MB ones once left it at
    64 MiB, and most steps of the larger shape gave ~100 MB back at their end and faulted it in again in the
    next). The price is memory held by the process after a step (measured in ``docs/performance.md``).
    Nothing happens outside glibc, when the
    environment variable ``UNICORNN_KEEP_FREED_BLOCKS`` is ``"0"``, or when the user set glibc's malloc
    thresholds themselves (``MALLOC_*_THRESHOLD_``, ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or
    ``glibc.malloc`` tunables in ``GLIBC_TUNABLES``).
    """
    global _kept_bytes, _kept_trim
    want = min(max(2 * int(nbytes), _GLIBC_DYNAMIC_MAX), _KEEP_MAX)
    trim = min(max(16 * int(nbytes), 2 * want), _TRIM_MAX)
    if (want <= _kept_bytes and trim <= _kept_trim) or not _allocator_is_ours():
        return _kept_bytes
    with _kept_lock:
        mallopt = _mallopt()
        if mallopt is None:
            return _kept_bytes
        # Each threshold only ever rises, on its own: tensors of 4 MB first and of 16 MB later need the same
        # mmap threshold (32 MiB) but a higher trim threshold.
        if want > _kept_bytes and mallopt(_M_MMAP_THRESHOLD, want) == 1:
            _kept_bytes = want
        if _kept_bytes and trim > _kept_trim and mallopt(_M_TRIM_THRESHOLD, trim) == 1:
            _kept_trim = trim
        return _kept_bytes


# ----------------------------------------------------------------------------------------------------------
# Kernel pair
# ----------------------------------------------------------------------------------------------------------


def _np(t: torch.Tensor, shape=None) -> np.ndarray:
    a = t.detach().contiguous().numpy()
    return a if shape is None else a.reshape(shape)


def _compute_dtype(y0: torch.Tensor) -> torch.dtype:
    cd = y0.dtype
    if cd not in (torch.float32, torch.float64):
        raise TypeError(f"the CPU backend computes in float32 or float64, got states of dtype {cd}")
    return cd


def scan_forward(x, weight_hh, c, dt, alpha, y0, z0, bias=None):
    """Fused forward pass: x (N, B, M); weight_hh, c, bias (M,) (bias may be None); y0, z0 (B, M)
    -> y (N, B, M), y_N, z_N (B, M).

    ``y`` has x's dtype; the states have the compute dtype (``y0.dtype``: float32 or float64).
    """
    return _forward(x, None, None, weight_hh, c, dt, alpha, y0, z0, bias)


def scan_forward_projected(u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias=None):
    """:func:`scan_forward` of ``x = u weight_ih^T`` without writing ``x``: each step's input is computed in
    the kernel from u (N, B, d) and weight_ih (M, d) (float64 products). Returns y in u's dtype, y_N, z_N."""
    return _forward(None, u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias)


def _forward(x, u, weight_ih, weight_hh, c, dt, alpha, y0, z0, bias):
    cd = _compute_dtype(y0)
    inp = x if u is None else u
    N, B = inp.shape[:2]
    M = weight_hh.shape[0]
    U = B * M
    keep_freed_blocks(N * U * inp.element_size())
    y = torch.empty((N, B, M), dtype=cd)
    yN = torch.empty((B, M), dtype=cd)
    zN = torch.empty((B, M), dtype=cd)
    args = (
        None if x is None else _np(x.to(cd), (N, U)),
        _np(weight_hh.to(cd)),
        _np(c.to(cd)),
        float(dt),
        float(alpha),
        _np(y0, U),
        _np(z0.to(cd), U),
        None if bias is None else _np(bias.to(cd)),
        y.numpy().reshape(N, U),
        yN.numpy().reshape(U),
        zN.numpy().reshape(U),
        *_projection_args(u, weight_ih, cd),
    )
    _run(_forward_range, args, U, N)
    return y.to(inp.dtype), yN, zN


def max_projected_width(M: int) -> int:
    """The widest layer input (features) that :func:`scan_forward_projected` computes itself for layers of M
    units: ``max(3, M // 40)``. Each input feature costs a multiply-add per unit and step in both kernels (in
    short loops over the hidden units of each batch row), against a matmul that writes ``x``, the kernels'
    pass over it, ``grad_x`` written and read by another matmul. One layer forward + backward at N=1000,
    B=32, 2 threads (``benchmarks/cpu_projected_input.py``, three runs), in the kernels / with the matmul:
    0.68-0.96 for d <= 3 at M = 32-256; at d = 4 1.05-1.09 (M=32), 0.97-1.04 (M=64), 0.88-0.95 (M=128),
    0.78-0.82 (M=256); at d = 6 0.83-0.97 (M=256); at d = 8 0.97-1.08 (M=256) and more for narrower layers."""
    return max(3, M // 40)


def _projection_args(u, weight_ih, cd, spread=False):
    """``(u, vt)`` of the kernels: u (N, B, d) in the compute dtype and the transposed projection (d, M) in
    float64, or ``(None, None)`` without a projection in the kernel. With ``spread`` a one-feature u is passed
    as (N, B): the backward kernel then multiplies it in its unit loop and sums dL/dV in its state (no
    buffers for x and grad_x)."""
    if u is None:
        return None, None
    vt = np.ascontiguousarray(_np(weight_ih.to(torch.float64)).T)
    if spread and u.shape[2] == 1:
        return _np(u[:, :, 0].to(cd)), vt
    return _np(u.to(cd)), vt


def scan_backward(grad_y, grad_yN, grad_zN, y, x, weight_hh, c, dt, alpha, y0, zN, bias=None):
    """Fused backward pass (Appendix B, z rebuilt by inversion from the stored ``y``).

    Shapes as in :func:`~unicornn.ops.reference.scan_backward_loop`; ``grad_y`` None is not read (zeros).
    Returns grad_x (N, B, M) in x's dtype and grad_weight_hh, grad_s (M,) (``grad_s``: gradient w.r.t.
    ``s = dt * sigmoid(c)``, summed over the batch), grad_y0, grad_z0 (B, M) and grad_bias (M,) (``grad_x``
    summed over steps and batch, in float64 before rounding) in the compute dtype.
    """
    gx, _, *rest = _backward(grad_y, grad_yN, grad_zN, y, x, None, None, weight_hh, c, dt, alpha, y0, zN, bias,
                             True)  # fmt: skip
    return (gx, *rest)


def scan_backward_projected(grad_y, grad_yN, grad_zN, y, u, weight_ih, weight_hh, c, dt, alpha, y0, zN,
                            bias=None, grad_x=False):  # fmt: skip
    """Backward of :func:`scan_forward_projected`: ``x`` is computed again in the kernel and, unless
    ``grad_x``, its gradient is not written but multiplied into the projection's weight gradient as it goes.

    Returns grad_x (N, B, M) in u's dtype, or None unless ``grad_x``; grad_weight_ih (M, d) (summed in
    float64); then as :func:`scan_backward`: grad_weight_hh, grad_s, grad_y0, grad_z0, grad_bias.
    """
    return _backward(grad_y, grad_yN, grad_zN, y, None, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias,
                     grad_x)  # fmt: skip


def _backward(grad_y, grad_yN, grad_zN, y, x, u, weight_ih, weight_hh, c, dt, alpha, y0, zN, bias, grad_x):
    cd = _compute_dtype(y0)
    inp = x if u is None else u
    N, B = inp.shape[:2]
    M = weight_hh.shape[0]
    U = B * M
    d = 0 if u is None else u.shape[2]
    gx = torch.empty((N, B, M), dtype=cd) if grad_x else None
    gy0 = torch.empty((B, M), dtype=cd)
    gz0 = torch.empty((B, M), dtype=cd)
    sums = np.empty((3, B, M), np.float64)  # per unit: dL/dw, dL/ds, dL/dbias
    gv_u = np.empty((B, M, d), np.float64)
    args = (
        None if grad_y is None else _np(grad_y.to(cd), (N, U)),
        _np(grad_yN.to(cd), U),
        _np(grad_zN.to(cd), U),
        _np(y.to(cd), (N, U)),
        None if x is None else _np(x.to(cd), (N, U)),
        _np(weight_hh.to(cd)),
        _np(c.to(cd)),
        float(dt),
        float(alpha),
        _np(y0, U),
        _np(zN.to(cd), U),
        None if bias is None else _np(bias.to(cd)),
        None if gx is None else gx.numpy().reshape(N, U),
        gy0.numpy().reshape(U),
        gz0.numpy().reshape(U),
        sums[0].reshape(U),
        sums[1].reshape(U),
        sums[2].reshape(U),
        *_projection_args(u, weight_ih, cd, spread=not grad_x),
        gv_u.reshape(U, d),
    )
    _run(_backward_range, args, U, N)
    # Sums over the batch: numpy, single-threaded, in float64 -- a fixed order, whatever the thread count.
    grad_w, grad_s, grad_b = (torch.from_numpy(part.sum(axis=0)).to(cd) for part in sums)
    grad_v = torch.from_numpy(gv_u.sum(axis=0)).to(cd) if d else None
    return None if gx is None else gx.to(inp.dtype), grad_v, grad_w, grad_s, gy0, gz0, grad_b


def tanh32(a: np.ndarray) -> np.ndarray:
    """The forward kernel's float32 tanh (:func:`_tanh_rational`) applied elementwise to a float32 array (for
    tests and inspection)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return _tanh32_array(a.reshape(-1)).reshape(a.shape)


def tanh32_backward(a: np.ndarray) -> np.ndarray:
    """The backward kernel's float32 tanh (:func:`_tanh_lanes32`) applied elementwise to a float32 array, its
    results as float64 (for tests and inspection)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    return _tanh_lanes32_array(a.reshape(-1)).reshape(a.shape)


@_jit(**_FAST)
def _tanh32_array(a):
    out = np.empty_like(a)
    for i in range(a.shape[0]):
        out[i] = _tanh_rational(np.float64(a[i]))
    return out


@_jit(**_FAST)
def _tanh_lanes32_array(a):
    out = np.empty(a.shape[0], np.float64)
    for i in range(a.shape[0]):
        out[i] = _tanh_lanes32(np.float64(a[i]))
    return out


_REGION_KERNELS.update((_forward_range, _backward_range))

register_kernels(
    "cpu",
    scan_forward,
    scan_backward,
    devices=("cpu",),
    projected=(scan_forward_projected, scan_backward_projected),
    max_projected_width=max_projected_width,
)
