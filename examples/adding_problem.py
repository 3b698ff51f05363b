"""Train a small UnICORNN on the adding problem (T=1000 by default) and print the falling loss.

    python examples/adding_problem.py [--steps 300] [--length 1000]

Each input has two channels: random values in [0, 1) and a marker that is 1 at one step in each half of the
sequence. The target is the sum of the two marked values; predicting the mean (1.0) scores MSE ~ 0.167.
"""

import argparse
import time

import torch
from torch import nn

from unicornn import UnICORNN


def adding_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (length, batch, 2) and targets (batch, 1)."""
    values = torch.rand(length, batch, generator=generator)
    half = length // 2
    first = torch.randint(0, half, (batch,), generator=generator)
    second = torch.randint(half, length, (batch,), generator=generator)
    marker = torch.zeros(length, batch)
    marker[first, torch.arange(batch)] = 1.0
    marker[second, torch.arange(batch)] = 1.0
    target = (values * marker).sum(0, keepdim=True).T
    return torch.stack([values, marker], dim=-1), target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--length", type=int, default=1000, help="sequence length T (default 1000)")
    parser.add_argument("--batch", type=int, default=32, help="batch size (default 32)")
    args = parser.parse_args()

    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    rnn = UnICORNN(2, 64, num_layers=2, dt=[0.1, 0.1], alpha=2.0)
    head = nn.Linear(64, 1)
    opt = torch.optim.Adam([*rnn.parameters(), *head.parameters()], lr=3e-3)
    start = time.time()
    for step in range(1, args.steps + 1):
        x, target = adding_batch(args.batch, args.length, gen)
        output, (y_n, _) = rnn(x)
        loss = nn.functional.mse_loss(head(y_n[-1]), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == 1:
            print(f"step {step:4d}  mse {loss.item():.4f}  ({time.time() - start:.0f}s)", flush=True)
    x, target = adding_batch(1000, args.length, torch.Generator().manual_seed(12345))
    with torch.no_grad():
        test_mse = nn.functional.mse_loss(head(rnn(x)[1][0][-1]), target).item()
    print(f"test mse {test_mse:.4f} (predicting the mean scores ~0.167)")


if __name__ == "__main__":
    main()
