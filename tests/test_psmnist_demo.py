"""The GPU psMNIST demonstration script, smoke-tested on CPU with a tiny model and a seconds-long budget."""

import importlib.util
import json
import pathlib

import pytest
from helpers import TEST_DATA, missing_sample

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST = TEST_DATA / "mnist"


def _load_script():
    spec = importlib.util.spec_from_file_location("psmnist_demo", REPO / "benchmarks" / "psmnist_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(
    not (MNIST / "t10k-images-idx3-ubyte.gz").exists(),
    reason=missing_sample("real MNIST test files", MNIST),
)
def test_demo_writes_curve_and_settings(tmp_path):
    demo = _load_script()
    out = tmp_path / "demo.json"
    argv = ["--mnist-dir", str(MNIST), "--device", "cpu", "--hidden-size", "4", "--num-layers", "1",
            "--minutes", "0.02", "--batch-size", "200", "--out", str(out)]  # fmt: skip
    assert demo.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["epochs"] >= 1 and len(result["curve"]) == result["epochs"]
    assert 0.0 <= result["best_heldout_accuracy"] <= 100.0
    assert result["settings"]["hidden_size"] == 4 and result["wall_seconds"] > 0
    assert out.with_suffix(".png").exists()


def test_split_is_8k_2k_and_fixed():
    demo = _load_script()
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        pytest.skip(f"real MNIST test files not found in {MNIST}")
    ds = demo.load_test_images(MNIST)
    a = demo.split_8k_2k(ds, seed=0)
    b = demo.split_8k_2k(ds, seed=0)
    assert a[0].shape == (8000, 784, 1) and a[2].shape == (2000, 784, 1)
    assert all((u == v).all() for u, v in zip(a, b))
