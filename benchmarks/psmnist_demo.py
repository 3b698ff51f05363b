"""psMNIST in minutes: the paper's 256-unit, 3-layer model on the 10,000 official MNIST *test* images.

A demonstration on a reduced data set, not a claim about the paper's Table 1: the 10,000 test images (the
only MNIST images small enough to ship with a sample data folder) are split 8,000 / 2,000 into a training and a
held-out set with a fixed seed, permuted with the package's psMNIST permutation, and trained for at most
``--minutes`` of wall time. The learning curve, the settings, the epochs per second and the wall time go to
``benchmarks/results/psmnist_demo_<device>.json`` and ``.png``.

    python benchmarks/psmnist_demo.py --mnist-dir DIR              # DIR holds t10k-images/labels-idx*-ubyte.gz
    python benchmarks/psmnist_demo.py --mnist-dir DIR --device cpu --hidden-size 16 --minutes 0.3   # smoke test

Model and optimiser: Table 6 row "psMNIST (#units = 256)" (dt 0.19, alpha 30.65, dropout 0.1, Adam 2.51e-3)
with Table 1's 3 layers; the batch size (default 120) is larger than the paper's 32 so that a GPU is kept busy;
the learning rate is divided by 10 after ``--lr-drop`` of the time budget.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

from unicornn.task_models import SequenceModel
from unicornn.tasks.mnist import MnistSequences, load_permutation, read_mnist_images, read_mnist_labels

RESULTS = Path(__file__).resolve().parent / "results"


def load_test_images(mnist_dir: Path) -> MnistSequences:
    """The 10,000 official test images as permuted pixel sequences."""
    images = read_mnist_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    labels = read_mnist_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    return MnistSequences(images, labels, load_permutation())


def split_8k_2k(
    ds: MnistSequences, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train (8000, 784, 1), y_train, x_held (2000, 784, 1), y_held), a fixed-seed split."""
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = ds.labels
    n_train = len(ds) * 4 // 5
    return xs[order[:n_train]], ys[order[:n_train]], xs[order[n_train:]], ys[order[n_train:]]


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int, amp: torch.dtype | None) -> float:
    """Percent correct of ``model`` on (x (n, N, 1), y (n,)), already on the model's device."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        with torch.autocast(x.device.type, dtype=amp, enabled=amp is not None):
            out = model(x[i : i + batch])
        correct += int((out.argmax(-1) == y[i : i + batch]).sum())
    model.train()
    return 100.0 * correct / len(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mnist-dir", type=Path, required=True, help="folder with the two t10k-*-ubyte.gz files")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--minutes", type=float, default=9.0, help="wall-time budget of the training loop")
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=120)
    p.add_argument("--lr", type=float, default=2.51e-3)
    p.add_argument("--lr-drop", type=float, default=0.8, help="fraction of the budget after which lr /= 10")
    p.add_argument("--amp", choices=["off", "bf16"], default="off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    args = p.parse_args(argv)
    for name in ("minutes", "lr"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 < args.lr_drop <= 1:
        p.error("--lr-drop must be in (0, 1]")

    device = torch.device(args.device)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    torch.manual_seed(args.seed)
    x_tr, y_tr, x_ho, y_ho = (t.to(device) for t in split_8k_2k(load_test_images(args.mnist_dir), args.seed))
    model = SequenceModel(
        1, 10, hidden_size=args.hidden_size, num_layers=args.num_layers, dt=0.19, alpha=30.65, dropout=0.1,
        readout="last",
    ).to(device)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    budget = args.minutes * 60.0
    curve, dropped, epoch = [], False, 0
    gen = torch.Generator(device="cpu").manual_seed(args.seed)
    start = time.perf_counter()
    while time.perf_counter() - start < budget:
        epoch += 1
        order = torch.randperm(len(x_tr), generator=gen).to(device)
        losses = []
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = torch.nn.functional.cross_entropy(model(x_tr[idx]).float(), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            if time.perf_counter() - start >= budget:
                break
        if not dropped and time.perf_counter() - start >= args.lr_drop * budget:
            for group in opt.param_groups:
                group["lr"] /= 10
            dropped = True
        held = accuracy(model, x_ho, y_ho, 1000, amp)
        elapsed = time.perf_counter() - start
        curve.append({"epoch": epoch, "seconds": elapsed, "train_loss": float(torch.stack(losses).mean()),
                      "heldout_accuracy": held})  # fmt: skip
        print(f"epoch {epoch:3d}  {elapsed:7.1f} s  loss {curve[-1]['train_loss']:.4f}  held-out {held:.2f}%")
        sys.stdout.flush()
    wall = time.perf_counter() - start
    out = args.out or RESULTS / f"psmnist_demo_{device.type}.json"
    result = {
        "what": "psMNIST demonstration on the 10,000 official MNIST test images (8,000 train / 2,000 held out, "
        "fixed seed, the package's permutation); not the paper's Table 1 protocol",
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        | {"dt": 0.19, "alpha": 30.65, "dropout": 0.1},
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "torch": torch.__version__,
        "wall_seconds": wall,
        "epochs": epoch,
        "epochs_per_second": epoch / wall,
        "best_heldout_accuracy": max(c["heldout_accuracy"] for c in curve),
        "final_heldout_accuracy": curve[-1]["heldout_accuracy"],
        "curve": curve,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, out)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([c["seconds"] / 60 for c in curve], [c["heldout_accuracy"] for c in curve], marker="o")
        ax.set_xlabel("wall time (min)")
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(f"psMNIST, {args.num_layers}x{args.hidden_size} UnICORNN, 8k MNIST test images")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib not installed: no plot written", file=sys.stderr)
    print(
        f"best held-out {result['best_heldout_accuracy']:.2f}% in {wall:.0f} s ({epoch} epochs); wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
