"""What only the fused CPU backend has: numba's float32 tanh, threads, the JIT cache and installation.

Its numerics against the reference (float64 and the float32 accuracy contract), its autograd contract and
``torch.compile`` are tested with the other fused backends in ``test_fused_backends.py``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numba
import numpy as np
import pytest
import torch
from helpers import make_inputs, rel_err, run_scan, torch_threads

pytest.importorskip("numba")

from unicornn.ops import cpu as cpu_ops  # noqa: E402
from unicornn.ops import unicornn_scan  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


def test_results_do_not_depend_on_thread_count(monkeypatch):
    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    inp = make_inputs(19, 5, 61, seed=3)  # 305 units: ranges of 16-aligned sizes, a ragged last one
    results = []
    for threads in (1, 3):
        with torch_threads(threads):
            assert len(cpu_ops._ranges(5 * 61, 19)) == threads
            results.append(run_scan(inp, "cpu", 0.4, 3.0, dtype=torch.float32))
    (o1, g1), (o3, g3) = results
    for a, b in zip(o1 + g1, o3 + g3, strict=True):
        assert torch.equal(a, b)


def test_small_problems_run_on_as_many_threads_as_get_enough_work():
    """Each thread gets at least ``_MIN_THREAD_WORK`` unit-steps: fewer threads for less work, one at least."""
    work = cpu_ops._MIN_THREAD_WORK
    with torch_threads(16):
        for U, N, threads in [(4096, 10, 1), (4096, 2 * work // 4096, 2), (4096, 3 * work // 4096 + 1, 3),
                              (700, work // 700, 1), (32768, 4 * work // 32768, 4), (64, 10**6, 4)]:  # fmt: skip
            assert len(cpu_ops._ranges(U, N)) == threads, (U, N)
    with torch_threads(2):
        assert len(cpu_ops._ranges(1 << 20, 1000)) == 2


_SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 9.5, 40.0], np.float32)


def _tanh_errors(tanh, seed):
    """``tanh`` (float32 array -> array) on 2.2 million float32 points over its range: its values, the exact
    tanh (float64) and the error in float32 ulps of the exact value."""
    a = np.concatenate(
        [
            np.linspace(-12.0, 12.0, 2_000_001),
            np.geomspace(1e-38, 1.0, 100_000),
            -np.geomspace(1e-38, 1.0, 1000),
            np.random.default_rng(seed).standard_normal(100_000) * 3,
        ]
    ).astype(np.float32)
    got = tanh(a).astype(np.float64)
    exact = np.tanh(a.astype(np.float64))
    return got, exact, np.abs(got - exact) / np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)


def _check_special_values(special):
    """tanh of ``_SPECIAL``: NaN stays NaN, +-inf and large arguments give +-1, signed zeros keep their sign."""
    assert np.isnan(special[0])
    assert special[1] == special[5] == special[6] == 1.0 and special[2] == -1.0
    assert special[3] == 0.0 and not np.signbit(special[3]) and np.signbit(special[4])


def test_tanh_rational_accuracy():
    _, _, ulp = _tanh_errors(cpu_ops.tanh32, seed=0)
    assert ulp.max() <= 0.51
    _check_special_values(cpu_ops.tanh32(_SPECIAL))


def test_backward_tanh_in_float32_lanes_accuracy():
    """The float32 backward kernel's tanh, evaluated in float32: within 6 ulp of the float32 tanh, relative
    error below 4e-7, and the special values of the forward's."""
    got, exact, ulp = _tanh_errors(cpu_ops.tanh32_backward, seed=1)
    assert ulp.max() <= 6.0 and ulp.mean() <= 0.8
    assert (np.abs(got - exact) <= 4e-7 * np.abs(exact)).all()
    _check_special_values(cpu_ops.tanh32_backward(_SPECIAL))


def test_kernels_reject_unsupported_compute_dtype():
    x = torch.zeros(3, 1, 2, dtype=torch.float16)
    s = torch.zeros(1, 2, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or float64"):
        cpu_ops.scan_forward(x, torch.zeros(2), torch.zeros(2), 0.1, 0.0, s, s)


# --------------------------------------------------------------------------------------------------
# Installation: missing numba, read-only install, JIT cache
# --------------------------------------------------------------------------------------------------


def _python(code, env_extra=None, pythonpath=SRC, env_drop=()):
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = str(pythonpath)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # a fresh Python process
def test_missing_numba_raises_import_error_and_auto_falls_back():
    proc = _python(
        """
        import sys
        sys.modules["numba"] = None  # makes `import numba` raise ImportError
        import torch
        try:
            import unicornn.ops.cpu
        except ImportError as err:
            print("ImportError:", err)
        else:
            raise SystemExit("imported without numba")
        from unicornn.ops import backend_available, resolve_backend
        assert not backend_available("cpu")
        assert resolve_backend("auto", torch.device("cpu"), torch.float32) == "reference"
        print("fallback ok")
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ImportError: the fused CPU backend needs numba" in proc.stdout and "fallback ok" in proc.stdout


# Run as root, permission bits do not stop writes, so there the probe numba uses to find a writable cache
# directory (a temporary file created in it) is made to fail for the package tree instead.
_READ_ONLY_PRELUDE = """
import os, sys, tempfile
PKG = {pkg!r}
if os.geteuid() == 0:
    _tf = tempfile.TemporaryFile
    def _guarded(*args, dir=None, **kwargs):
        if dir is not None and os.path.abspath(dir).startswith(PKG):
            raise PermissionError(13, "Permission denied", dir)
        return _tf(*args, dir=dir, **kwargs)
    tempfile.TemporaryFile = _guarded
"""

_SMALL_RUN = """
import torch
from unicornn.ops import cpu, unicornn_scan
x = torch.randn(6, 2, 3, requires_grad=True)
w = torch.rand(3, requires_grad=True)
c = torch.zeros(3, requires_grad=True)
y, _, _ = unicornn_scan(x, w, c, 0.5, 1.0, backend="cpu")
y.sum().backward()
assert torch.isfinite(x.grad).all()
# two threads: parallel regions with compiled bodies, where torch runs on OpenMP
torch.set_num_threads(2)
cpu._MIN_THREAD_WORK = 0
x = torch.randn(6, 2, 64, requires_grad=True)
y, _, _ = unicornn_scan(x, torch.rand(64), torch.zeros(64), 0.5, 1.0, backend="cpu")
y.sum().backward()
assert torch.isfinite(x.grad).all()
print("run ok")
"""


def _read_only_copy(tmp_path):
    site = tmp_path / "site"
    shutil.copytree(SRC / "unicornn", site / "unicornn", ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(site):
        for f in files:
            os.chmod(os.path.join(root, f), 0o444)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o555)
    os.chmod(site, 0o555)
    return site


def _make_writable(path):
    for root, dirs, _ in os.walk(path):
        os.chmod(root, 0o755)
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)


@pytest.mark.slow  # a fresh Python process
def test_read_only_install_caches_in_user_directory(tmp_path):
    site = _read_only_copy(tmp_path)
    xdg = tmp_path / "xdg-cache"
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(xdg), "NUMBA_DEBUG_CACHE": "1"}
    code = _READ_ONLY_PRELUDE.format(pkg=str(site)) + _SMALL_RUN
    try:
        first = _python(code, env, pythonpath=site, env_drop=("NUMBA_CACHE_DIR",))
        assert first.returncode == 0, first.stderr
        assert "run ok" in first.stdout
        assert not list(site.rglob("*.nbi")) and not list(site.rglob("*.nbc"))
        user_cache = xdg / "numba"
        assert list(user_cache.rglob("*.nbi")) and list(user_cache.rglob("*.nbc"))
        assert "index saved" in first.stdout
        second = _python(code, env, pythonpath=site, env_drop=("NUMBA_CACHE_DIR",))
        assert second.returncode == 0, second.stderr
        assert "data loaded" in second.stdout and "index saved" not in second.stdout
    finally:
        _make_writable(site)


@pytest.mark.slow  # a fresh Python process
def test_no_writable_cache_location_still_works(tmp_path):
    env = {"HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    code = (
        """
import tempfile
def _refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")
tempfile.TemporaryFile = _refuse
"""
        + _SMALL_RUN
    )
    site = tmp_path / "site"
    shutil.copytree(SRC / "unicornn", site / "unicornn", ignore=shutil.ignore_patterns("__pycache__"))
    proc = _python(code, env, pythonpath=site, env_drop=("NUMBA_CACHE_DIR",))
    assert proc.returncode == 0, proc.stderr
    assert "run ok" in proc.stdout
    assert not list(site.rglob("*.nbi")) and not list((tmp_path / "xdg").rglob("*.nbi"))


def _scan_in_child(queue):
    cpu_ops._MIN_THREAD_WORK = 0
    torch.set_num_threads(2)
    x = torch.randn(9, 4, 16)
    w = torch.rand(16)
    c = torch.zeros(16)
    y, _, _ = unicornn_scan(x, w, c, 0.3, 1.0, backend="cpu")
    ref, _, _ = unicornn_scan(x, w, c, 0.3, 1.0, backend="reference")
    queue.put(bool(torch.allclose(y, ref, rtol=1e-5, atol=1e-6)))


@pytest.mark.parametrize("parent_threads", ["openmp", "pool"])
def test_threads_work_in_a_forked_process(monkeypatch, parent_threads):
    """A child forked after the parent ran the kernels on several threads (torch's OpenMP team or this
    module's pool, whose threads the child does not inherit) runs them on a pool of its own."""
    import multiprocessing

    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    if parent_threads == "pool":
        monkeypatch.setattr(cpu_ops, "_openmp_parallel", lambda: None)
    with torch_threads(2):
        unicornn_scan(torch.randn(5, 4, 16), torch.rand(16), torch.zeros(16), 0.3, 1.0, backend="cpu")
    if parent_threads == "pool":
        assert cpu_ops._POOL is not None and cpu_ops._POOL_PID == os.getpid()
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scan_in_child, args=(queue,))
    proc.start()
    proc.join(timeout=120)
    if proc.is_alive():
        proc.terminate()
        pytest.fail("the fused CPU backend hung in a forked child")
    assert proc.exitcode == 0 and queue.get(timeout=5) is True


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="checks x86 vector instructions")
@pytest.mark.parametrize("kernel", ["_forward_range", "_backward_range"])
@pytest.mark.parametrize("variant", ["grad_y_and_bias", "neither", "projected", "one_feature"])
def test_kernels_are_vectorised(kernel, variant):
    """The unit loop compiles to packed (ymm/zmm) float64 divisions, the tanh's: a loop LLVM declines to
    vectorise (e.g. one needing too many runtime alias checks) runs about 4x slower. Compiled afresh (numba
    does not show the machine code of cached kernels). ``projected``: the input computed in the kernel, its
    gradient not written (grad_x None); ``one_feature``: the backward's one-feature input (N, B), multiplied
    in the unit loop."""
    if kernel == "_forward_range" and variant == "one_feature":
        pytest.skip("the forward kernel takes the projected input as (N, B, d) only")
    fn = numba.njit(**cpu_ops._FAST)(getattr(cpu_ops, kernel).py_func)
    N, B, M, d = 3, 2, 40, 2
    U = B * M
    a2, a1, p = np.ones((N, U), np.float32), np.ones(U, np.float32), np.ones(M, np.float32)
    bias = p if variant == "grad_y_and_bias" else None
    x, projection = a2, (None, None)
    if variant == "projected":
        x, projection = None, (np.ones((N, B, d), np.float32), np.ones((d, M)))
    elif variant == "one_feature":
        x, projection = None, (np.ones((N, B), np.float32), np.ones((1, M)))
    if kernel == "_forward_range":
        args = (x, p, p, 0.1, 0.0, a1, a1, bias, a2.copy(), a1.copy(), a1.copy(), *projection, 0, U)
    else:
        gy = a2 if variant == "grad_y_and_bias" else None
        gx = None if x is None else a2.copy()
        sums = [np.empty(U) for _ in range(3)]
        gv = np.empty((U, 0 if x is not None else projection[1].shape[0]))
        args = (
            gy,
            a1,
            a1,
            a2,
            x,
            p,
            p,
            0.1,
            0.0,
            a1,
            a1,
            bias,
            gx,
            a1.copy(),
            a1.copy(),
            *sums,
            *projection,
            gv,
            0,
            U,
        )
    fn(*args)
    (asm,) = fn.inspect_asm().values()
    assert re.search(r"vdivpd\s+[^\n]*%[yz]mm", asm), "the unit loop of the kernel is not vectorised"


def test_every_range_runs_once(monkeypatch):
    """``_run`` hands each range to exactly one thread, ``_PIECES`` ranges per thread."""
    import threading

    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    seen = []

    def kernel(tag, u0, u1):
        seen.append((tag, u0, u1, threading.get_ident()))

    U = 16 * cpu_ops._BLOCK + 48  # ragged: the last range is shorter
    with torch_threads(2):
        cpu_ops._run(kernel, ("t",), U, 5)
        expected = cpu_ops._ranges(U, 5, cpu_ops._PIECES)
    assert len(expected) == 2 * cpu_ops._PIECES
    done = sorted((a, b) for _, a, b, _ in seen)
    assert done == expected and done[0][0] == 0 and done[-1][1] == U
    assert all(b1 == a2 for (_, b1), (a2, _) in zip(done, done[1:], strict=False))


@pytest.mark.parametrize("team", ["openmp", "pool"])
def test_kernel_errors_surface_from_the_parallel_region(monkeypatch, team):
    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    if team == "pool":
        monkeypatch.setattr(cpu_ops, "_openmp_parallel", lambda: None)

    def kernel(u0, u1):
        if u0 > 0:
            raise ValueError("range failed")

    with torch_threads(2), pytest.raises(ValueError, match="range failed"):
        cpu_ops._run(kernel, (), 8 * cpu_ops._BLOCK, 3)


@pytest.mark.skipif(
    "parallel backend: OpenMP" not in torch.__config__.parallel_info() or os.name != "posix",
    reason="torch does not run on OpenMP here",
)
def test_ranges_run_on_torchs_openmp_threads(monkeypatch):
    """Where torch runs on OpenMP, the kernels' ranges run on its threads (one parallel region), not on a
    pool of this module; the opt-out ``UNICORNN_CPU_OPENMP=0`` gives the pool."""
    import threading

    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    assert cpu_ops._openmp_parallel() is not None
    seen = []
    barrier = threading.Barrier(2, timeout=30)

    def kernel(u0, u1):
        if u0 < u1:
            barrier.wait()  # both threads of the team are in the region at once
            seen.append(threading.current_thread().name)

    with torch_threads(2):
        cpu_ops._run(kernel, (), 2 * cpu_ops._MIN_PIECE, 3)
    assert len(seen) == 2 and not any(name.startswith("unicornn-cpu") for name in seen)
    cpu_ops._openmp_parallel.cache_clear()
    monkeypatch.setenv(cpu_ops.OPENMP_TEAM_ENV, "0")
    try:
        assert cpu_ops._openmp_parallel() is None
    finally:
        cpu_ops._openmp_parallel.cache_clear()


def test_calls_from_several_python_threads_at_once(monkeypatch):
    """Python threads calling the kernels at the same time (each call its own parallel region) get the
    results of one call at a time."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    monkeypatch.setattr(cpu_ops, "_MIN_PIECE", 256)
    seed = int(np.random.default_rng().integers(2**31))
    problems = [make_inputs(17, 3, 600 + 16 * k, seed=seed + k) for k in range(4)]
    with torch_threads(2):
        alone = [run_scan(inp, "cpu", 0.19, 30.65, dtype=torch.float32) for inp in problems]
        with ThreadPoolExecutor(4) as pool:
            together = list(
                pool.map(lambda inp: run_scan(inp, "cpu", 0.19, 30.65, dtype=torch.float32), problems)
            )
    for (out_a, grads_a), (out_t, grads_t) in zip(alone, together, strict=True):
        for a, t in zip(out_a + grads_a, out_t + grads_t, strict=True):
            assert (a is None and t is None) or torch.equal(a, t), f"seed {seed}"


@pytest.mark.parametrize("threads", [2, 3])
def test_float64_through_several_ranges_per_thread_matches_reference(monkeypatch, threads):
    """The threaded path with several ranges per thread, ragged ones included, on a fresh random problem of
    odd shape: float64 results as the reference loop's (``docs/accuracy.md``: 1e-12 outputs, 1e-10
    gradients)."""
    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    monkeypatch.setattr(cpu_ops, "_MIN_PIECE", 256)
    seed = int(np.random.default_rng().integers(2**31))
    N, B, M = 29, 9, 181  # 1,629 units: 3 (3 threads: 2) ranges per thread, not aligned with M or a block
    inp = make_inputs(N, B, M, seed=seed, c_scale=2.0)
    with torch_threads(threads):
        assert len(cpu_ops._ranges(B * M, N, cpu_ops._PIECES)) > threads
    _float64_matches_reference(inp, threads, bias=True, seed=seed)


def _float64_matches_reference(inp, threads, bias, seed):
    """The CPU backend on ``threads`` threads against the reference loop, float64 (``docs/accuracy.md``: 1e-12
    outputs, 1e-10 gradients)."""
    with torch_threads(threads):
        out, grads = run_scan(inp, "cpu", 0.19, 30.65, bias=bias)
    out_ref, grads_ref = run_scan(inp, "reference", 0.19, 30.65, bias=bias)
    for a, r in zip(out, out_ref, strict=True):
        assert rel_err(a, r) < 1e-12, f"seed {seed}"
    for a, r in zip(grads, grads_ref, strict=True):
        assert rel_err(a, r) < 1e-10, f"seed {seed}"


@pytest.mark.parametrize("threads", [1, 2])
def test_float64_ranges_of_several_blocks_match_reference(monkeypatch, threads):
    """Ranges longer than one block of ``_BLOCK`` units, the last block ragged: float64 results as the
    reference loop's, with and without a bias."""
    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    seed = int(np.random.default_rng().integers(2**31))
    N, B, M = 7, 3, 4 * cpu_ops._BLOCK + 37  # ranges of 1.5 to 12 blocks, the last ragged, not aligned with M
    inp = make_inputs(N, B, M, seed=seed, c_scale=2.0)
    for bias in (False, True):
        _float64_matches_reference(inp, threads, bias, seed)


_FAULTS_SCRIPT = """
import resource, sys, torch
from unicornn.ops import cpu
torch.set_num_threads(1)
N, B, M = 1000, 16, 1024  # (N, B, M) float32: 64 MiB, above glibc's largest default mmap threshold
x, w, c, h0 = torch.randn(N, B, M), torch.rand(M), torch.randn(M), torch.zeros(B, M)
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y, _, _ = cpu.scan_forward(x, w, c, 0.1, 1.0, h0, h0)
    del y
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(cpu._kept_bytes, min(faults[1:]), *faults)
"""


@pytest.mark.skipif(cpu_ops._mallopt() is None, reason="glibc's malloc only (mallopt)")
def test_freed_blocks_are_kept_so_later_steps_do_not_fault_again():
    """The kernels' (N, B, M) outputs come from memory malloc kept after the previous call: a 64 MiB output
    costs 16,384 first-touch faults per call by default and next to none once the blocks are kept."""

    def run(env_value, **allocator):
        env = dict(os.environ, **{cpu_ops.KEEP_FREED_BLOCKS_ENV: env_value})
        env = {k: v for k, v in env.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))} | allocator
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT], env=env, capture_output=True, text=True,
                             timeout=300, check=True)  # fmt: skip
        kept, faults, *per_call = map(int, out.stdout.split())
        return kept, faults, per_call

    kept, faults, per_call = run("1")
    assert kept == 2 * 1000 * 16 * 1024 * 4
    assert faults < 1000, per_call
    kept_off, faults_off, per_call = run("0")
    assert kept_off == 0
    assert faults_off > 10_000, per_call  # one per 4 KiB page of the 64 MiB output, every call
    # the user's own glibc setting wins: nothing is changed
    assert run("1", MALLOC_MMAP_THRESHOLD_="65536")[0] == 0
    assert run("1", GLIBC_TUNABLES="glibc.malloc.trim_threshold=0")[0] == 0


_SMALL_CALLS_SCRIPT = """
import resource, torch, torch.nn.functional as F
from unicornn import UnICORNN
from unicornn.ops import cpu
torch.set_num_threads(2)
torch.manual_seed(0)
model, head = UnICORNN(1, 128, 2, backend="cpu"), torch.nn.Linear(128, 10)
u, target = torch.randn(1, 32, 1), torch.randint(0, 10, (32,))  # one time step: (N, B, M) tensors of 16 KiB
faults = []
for _ in range(300):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out, _ = model(u)
    F.cross_entropy(head(out[-1]), target).backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(cpu._kept_bytes, sum(faults[50:]))
"""


@pytest.mark.skipif(cpu_ops._mallopt() is None, reason="glibc's malloc only (mallopt)")
def test_small_tensors_never_lower_glibcs_thresholds():
    """A first call on small tensors (16 KiB) keeps glibc's thresholds at least where its own dynamic rule
    takes them (32 MiB): fixing them at twice the tensor size once sent every larger block to a fresh mmap,
    and short steps page-faulted again on every call (~200 faults per one-step training step, 1.4x its
    time). Checked in a fresh process: the threshold kept, and no faults in 250 steady steps."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env[cpu_ops.KEEP_FREED_BLOCKS_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", _SMALL_CALLS_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    kept, faults = map(int, out.stdout.split())
    assert kept >= cpu_ops._GLIBC_DYNAMIC_MAX == 4 * 1024 * 1024 * ctypes.sizeof(ctypes.c_long)
    assert faults < 250, f"{faults} page faults in 250 steps of one time step"


_GROWING_SHAPES_SCRIPT = """
import resource, torch, torch.nn.functional as F
from unicornn import UnICORNN
from unicornn.ops import cpu
torch.set_num_threads(2)
torch.manual_seed(0)
model, head = UnICORNN(1, 128, 2, backend="cpu"), torch.nn.Linear(128, 10)
faults = []
for step in range(12):  # a batch of 8 and one of 32 in turn: (N, B, M) tensors of 4 MB and 16 MB
    B = 8 if step % 2 == 0 else 32
    u, target = torch.randn(1000, B, 1), torch.randint(0, 10, (B,))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    out, _ = model(u)
    F.cross_entropy(head(out[-1]), target).backward()
    if B == 32:
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(cpu._kept_trim, sum(faults[2:]), *faults)
"""


@pytest.mark.skipif(cpu_ops._mallopt() is None, reason="glibc's malloc only (mallopt)")
def test_larger_tensors_after_smaller_ones_raise_the_trim_threshold():
    """Steps of 4 MB tensors and then of 16 MB ones, in turn (two batch sizes): the trim threshold follows the
    larger tensors (16 times their size) although the mmap threshold (32 MiB) already covered both, so the
    larger steps stop giving their memory back and faulting it in again (before: 19,000-25,000 faults, 80-100 MB,
    in most such steps; now a few, and now and then 2,000-5,000 where the heap's layout needs it to grow).
    Checked in a fresh process, over the last four steps of the larger shape."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    env[cpu_ops.KEEP_FREED_BLOCKS_ENV] = "1"
    out = subprocess.run([sys.executable, "-c", _GROWING_SHAPES_SCRIPT], env=env, capture_output=True, text=True,
                         timeout=300, check=True)  # fmt: skip
    trim, faults, *per_step = map(int, out.stdout.split())
    assert trim == 16 * 1000 * 32 * 128 * 4
    assert faults < 10_000, per_step


_OPENMP = pytest.mark.skipif(
    "parallel backend: OpenMP" not in torch.__config__.parallel_info() or os.name != "posix",
    reason="torch does not run on OpenMP here",
)


def _all_kernel_variants(seed, dtype, N=23, B=5, M=67):
    """Outputs and gradients of every kernel variant on a fresh problem: the scan on ``x`` with and without
    bias and upstream gradient of the sequence, and the projected scan on 1 and 2 input features, with and
    without a gradient of the input."""
    from unicornn.ops import unicornn_scan_projected

    g = torch.Generator().manual_seed(seed)

    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()

    w, c, b, y0, z0 = leaf(M), leaf(M), leaf(M), leaf(B, M), leaf(B, M)
    results = []
    for bias in (None, b):
        for sequence in (True, False):
            x = leaf(N, B, M)
            y, yN, zN = unicornn_scan(x, w, c, 0.3, 2.0, y0, z0, backend="cpu", bias=bias)
            loss = (yN * 1.5 + zN).sum() + ((y * y).sum() if sequence else 0)
            results += [y, yN, zN, *torch.autograd.grad(loss, [x, w, c, y0, z0])]
    for d in (1, 2):
        for grad_u in (True, False):
            u, V = leaf(N, B, d).requires_grad_(grad_u), leaf(M, d)
            y, yN, zN = unicornn_scan_projected(u, V, w, c, 0.3, 2.0, y0, z0, backend="cpu", bias=b)
            inputs = [u, V, w, c, b] if grad_u else [V, w, c, b]
            results += [y, *torch.autograd.grad((y * y).sum() + yN.sum(), inputs)]
    return [r.detach() for r in results]


@_OPENMP
@pytest.mark.parametrize("threads", [2, 3])
def test_compiled_region_bodies_give_the_python_bodys_results(monkeypatch, threads):
    """The threads of a parallel region run a compiled body (no Python) for the kernels of this module: on a
    fresh random problem of odd shape, every kernel variant, float32 and float64, several ranges per thread,
    the results are bitwise those of the Python body."""
    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    monkeypatch.setattr(cpu_ops, "_MIN_PIECE", 256)
    seed = int(np.random.default_rng().integers(2**31))
    compiled = []
    real = cpu_ops._region_body

    def counting(text):
        compiled.append(text)
        return real(text)

    for dtype in (torch.float32, torch.float64):
        with torch_threads(threads):
            monkeypatch.setattr(cpu_ops, "_region_body", counting)
            fast = _all_kernel_variants(seed, dtype)
            assert compiled and all(real(text) is not None for text in compiled)
            monkeypatch.setattr(cpu_ops, "_REGION_KERNELS", set())
            slow = _all_kernel_variants(seed, dtype)
            monkeypatch.undo()
            monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
            monkeypatch.setattr(cpu_ops, "_MIN_PIECE", 256)
        for a, b in zip(fast, slow, strict=True):
            assert torch.equal(a, b), f"seed {seed}, {dtype}"


def test_argument_specs_of_region_bodies():
    """What a compiled body takes: C-contiguous writable float32/float64 arrays, floats, ints and None; any
    other argument sends the call to the Python body."""
    a = np.zeros((3, 4), np.float32)
    assert cpu_ops._arg_spec((a, a[0], None, 0.5, 7, np.zeros(2))) == "f2,f1,n,s,i,d1"
    types = cpu_ops._spec_types("f2,f1,n,s,i,d1")
    assert [str(t) for t in types] == ["array(float32, 2d, C)", "array(float32, 1d, C)", "none", "float64",
                                       "int64", "array(float64, 1d, C)"]  # fmt: skip
    readonly = a.copy()
    readonly.flags.writeable = False
    for odd in (a[:, ::2], a.T, readonly, np.zeros(3, np.int32), "text"):
        assert cpu_ops._arg_spec((a, odd)) is None


@pytest.mark.slow  # fresh Python processes
@_OPENMP
def test_compiled_region_bodies_are_cached(tmp_path):
    """A second process loads the region bodies from numba's cache instead of compiling them again."""
    code = """
    import torch
    from unicornn.ops import cpu, unicornn_scan
    torch.set_num_threads(2)
    cpu._MIN_THREAD_WORK = 0
    x = torch.randn(9, 4, 64, requires_grad=True)
    y, _, _ = unicornn_scan(x, torch.rand(64), torch.zeros(64), 0.3, 1.0, backend="cpu")
    y.sum().backward()
    print("bodies", cpu._region_body.cache_info().currsize)
    """
    env = {"NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    first = _python(code, env)
    assert first.returncode == 0, first.stderr
    assert "bodies 2" in first.stdout
    assert any("_region_body" in line and "data saved" in line for line in first.stdout.splitlines())
    second = _python(code, env)
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert any("_region_body" in line and "data loaded" in line for line in lines)
    saved = [line for line in lines if "index saved" in line or "data saved" in line]
    assert not saved, saved


@_OPENMP
def test_regions_fall_back_to_python_bodies(monkeypatch):
    """Where a compiled region cannot be set up (numba internals moved), the call runs a Python body with the
    same results, and that spec is not tried again."""
    monkeypatch.setattr(cpu_ops, "_MIN_THREAD_WORK", 0)
    monkeypatch.setattr(cpu_ops, "_FAILED_SPECS", set())
    inp = make_inputs(11, 3, 70, seed=int(np.random.default_rng().integers(2**31)))
    with torch_threads(2):
        expected = run_scan(inp, "cpu", 0.3, 2.0, dtype=torch.float32)

        def broken(kernel, text):
            raise AttributeError("moved")

        monkeypatch.setattr(cpu_ops, "_kernel_address", broken)
        got = run_scan(inp, "cpu", 0.3, 2.0, dtype=torch.float32)
    assert len(cpu_ops._FAILED_SPECS) == 2  # the forward's and the backward's
    for a, b in zip(expected[0] + expected[1], got[0] + got[1], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
