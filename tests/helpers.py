"""Shared test utilities: random problems, the error measure, the backends to compare."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from unicornn import backend_available, unicornn_scan

F64 = torch.float64
#: Names of the recurrence's differentiable inputs, in the order of ``unicornn_scan``.
INPUTS = ("x", "w", "c", "y0", "z0")


def fused_backends() -> list[str]:
    """Fused backends that can run in this environment (Triton only on CUDA or under its interpreter)."""
    names = []
    if backend_available("cpu"):
        names.append("cpu")
    if (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1") and backend_available(
        "triton"
    ):
        names.append("triton")
    return names


def device_for(backend: str) -> str:
    """Where a backend's tests run: Triton on CUDA when there is a GPU (else its interpreter on CPU)."""
    return "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"


def make_inputs(N, B, M, seed, dtype=F64, device="cpu", states=True, c_scale=0.1):
    """A fresh random problem, drawn in float64 and then converted to ``dtype`` on ``device``.

    Returns a dict: ``x`` ~ N(0,1) (N, B, M); ``w`` ~ U(0,1), ``c`` ~ U(-c_scale, c_scale) (M,); ``y0``,
    ``z0`` ~ N(0,1) (B, M), or None without ``states``; upstream gradients ``gy`` (N, B, M), ``gyN``, ``gzN``
    (B, M) ~ N(0,1); a projection bias ``b`` ~ N(0,1) (M,) (drawn last: the other draws do not depend on it).
    """
    g = torch.Generator().manual_seed(seed)
    out = {
        "x": torch.randn(N, B, M, generator=g, dtype=F64),
        "w": torch.rand(M, generator=g, dtype=F64),
        "c": (torch.rand(M, generator=g, dtype=F64) * 2 - 1) * c_scale,
        "y0": torch.randn(B, M, generator=g, dtype=F64),
        "z0": torch.randn(B, M, generator=g, dtype=F64),
        "gy": torch.randn(N, B, M, generator=g, dtype=F64),
        "gyN": torch.randn(B, M, generator=g, dtype=F64),
        "gzN": torch.randn(B, M, generator=g, dtype=F64),
        "b": torch.randn(M, generator=g, dtype=F64),
    }
    if not states:
        out["y0"] = out["z0"] = None
    return {k: None if v is None else v.to(dtype=dtype, device=device) for k, v in out.items()}


def rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """||a - ref|| / ||ref|| computed in float64 (a zero reference counts as norm 1e-300)."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).norm() / ref.norm().clamp_min(1e-300))


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` PyTorch threads (the reference loop is fastest on one)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def run_scan(inp, backend, dt, alpha, dtype=F64, final_grads=True, bias=False, sequence_grad=True):
    """Forward and backward through ``unicornn_scan`` on the problem ``inp`` (see :func:`make_inputs`).

    The inputs become leaves of ``dtype`` (the parameters and states float32 for half-precision ``x``). The
    loss is ``<y, gy>`` (without ``sequence_grad``: y does not enter it, so its gradient is None) plus, with
    ``final_grads``, ``<y_N, gyN> + <z_N, gzN>``, summed in float64. With ``bias``, ``inp["b"]`` is passed as
    ``bias``. Returns ``(y, y_N, z_N)`` and the gradients of (x, w, c, y0, z0) (None for absent states),
    followed by the gradient of the bias with ``bias``.
    """
    param_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    leaves = {
        k: None
        if inp.get(k) is None
        else inp[k].to(dtype if k == "x" else param_dtype).detach().requires_grad_()
        for k in INPUTS + ("b",)
    }
    b = leaves["b"] if bias else None
    with torch_threads(1 if backend == "reference" else torch.get_num_threads()):
        y, yN, zN = unicornn_scan(*(leaves[k] for k in ("x", "w", "c")), dt, alpha, leaves["y0"], leaves["z0"],
                                  backend=backend, bias=b)  # fmt: skip
        loss = (y.double() * inp["gy"].double()).sum() if sequence_grad else 0.0
        if final_grads:
            loss = (
                loss + (yN.double() * inp["gyN"].double()).sum() + (zN.double() * inp["gzN"].double()).sum()
            )
        loss.backward()
    grads = tuple(None if leaves[k] is None else leaves[k].grad for k in INPUTS + (("b",) if bias else ()))
    return (y.detach(), yN.detach(), zN.detach()), grads


#: ``--set`` items of a tiny adding-problem run (seconds on a CPU): 4 batches of 8 per epoch, 3 epochs.
TINY_TRAIN_SETS = (
    "T=10",
    "n_train=32",
    "n_valid=16",
    "n_test=16",
    "hidden_size=6",
    "num_layers=2",
    "epochs=3",
    "batch_size=8",
    "eval_batch_size=16",
    "dropout=0.1",
    "lr=0.01",
    "backend=reference",
)


def tiny_train_argv(out, *extra: str, sets=TINY_TRAIN_SETS) -> list[str]:
    """``unicornn train adding`` arguments of a tiny run into ``out`` (no TensorBoard), then ``extra``."""
    argv = ["train", "adding", "--out", str(out), "--no-tensorboard"]
    for s in sets:
        argv += ["--set", s]
    return argv + list(extra)


def run_files(run_dir) -> dict:
    """A run directory's files and their bytes (the lock file, whose content names its last holder, left out)."""
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}


#: The folder of real-data samples (MNIST, CIFAR-10, IMDB, BIDMC) the real-data tests read: the environment
#: variable UNICORNN_TEST_DATA, else ``shared/data`` beside the repository. Tests skip when a sample is absent.
TEST_DATA = Path(
    os.environ.get("UNICORNN_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data"
)


def missing_sample(what: str, path) -> str:
    """The skip reason of a real-data test whose sample ``path`` is absent."""
    return f"{what} not found at {path}; point UNICORNN_TEST_DATA at the sample data folder (now {TEST_DATA})"


def assert_missing_data_message(msg: str, files, directory) -> None:
    """``msg`` lists absent data files as promised: a header, one short line per file naming it, its URL and
    checksum (``files``: (name, url, checksum) each), and one line naming ``directory``, ``--data-dir`` and
    ``UNICORNN_DATA``."""
    lines = msg.replace(str(directory), "DIR").splitlines()  # lengths without the (test's long) folder name
    assert len(lines) == len(files) + 2, msg
    for line, (name, url, checksum) in zip(lines[1:-1], files, strict=True):
        assert line.split() == [name, url, *checksum.split()][: len(line.split())], line
        assert name in line and url in line and checksum in line, line
    assert "DIR" in lines[-1] and "--data-dir" in lines[-1] and "UNICORNN_DATA" in lines[-1], msg
    assert all(len(line) <= 160 for line in lines), msg


#: Exit codes the command line documents (cli/__init__.py): done, a bench point failed, usage/data/run-directory
#: /file-system error, non-finite loss, a bound exceeded; 130/143 (signals) are not produced in-process.
DOCUMENTED_EXIT_CODES = (0, 1, 2, 3, 4)


def assert_cli_contract(
    code, err: str, root: Path | None = None, codes=DOCUMENTED_EXIT_CODES, given=None
) -> None:
    """What every ``unicornn`` invocation promises: a documented exit code; on failure exactly one error line
    (``unicornn...: error: ...``), the last on stderr (progress lines of a run may precede it); never a
    traceback. Under ``root``: no temporary file left behind, every ``*.json`` and ``*.jsonl`` parses except the
    files ``given`` ({path: bytes}) still holding the (damaged) bytes the test gave the command."""
    import json

    assert code in codes, f"exit code {code!r}; stderr:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("unicornn") and ": error: " in line]
    if code not in (0, 4):
        assert len(errors) == 1 and err.strip().splitlines()[-1].strip() == errors[0].strip(), err[-3000:]
    if root is not None:
        for p in Path(root).rglob("*"):
            assert ".tmp" not in p.name, f"temporary file left behind: {p}"
            if given and p in given and p.is_file() and p.read_bytes() == given[p]:
                continue
            if p.is_file() and p.suffix == ".json":
                json.loads(p.read_text(encoding="utf-8"))
            elif p.is_file() and p.suffix == ".jsonl":
                for line in p.read_text(encoding="utf-8").splitlines():
                    json.loads(line)
