"""What every training command of the project shares: seeding for byte-reproducible
weights on one machine, counting correct predictions, and saving a state dict.

Reproducibility on CPU needs every random draw seeded, deterministic kernels, and a
fixed thread count (a different split of a reduction changes the rounding); saving
goes through memory because `torch.save` to a file stores the file's name inside the
archive, and the rename makes an interrupted run leave no half-written file.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


@torch.inference_mode()
def count_correct(plugin, model: nn.Module, data, batch_size: int = 1000) -> int:
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        x = plugin.to_tensor(data.inputs[start : start + batch_size])
        y = torch.from_numpy(data.labels[start : start + batch_size])
        correct += int((model(x).argmax(dim=1) == y).sum())
    return correct


@torch.inference_mode()
def score_through(plugin, codec: nn.Module, split: int, count: int | None = None,
                  batch_size: int = 64) -> tuple[float, float, int]:  # fmt: skip
    """(accuracy, or agreement for plugins without labels, with `codec` between
    stages[:split] and stages[split:]; the same for the unsplit model; samples) on the
    first `count` test samples (all by default), in batches."""
    model, data = plugin.load_model(), plugin.test_data()
    head, tail = model[:split], model[split:]
    count = min(count or len(data), len(data))
    direct, through = [], []
    for start in range(0, count, batch_size):
        x = head(plugin.to_tensor(data.inputs[start : min(count, start + batch_size)]))
        direct.append(tail(x).argmax(1))
        through.append(tail(codec(x)).argmax(1))
    direct, through = torch.cat(direct), torch.cat(through)
    if plugin.metric == "accuracy":
        labels = torch.from_numpy(data.labels[:count])
        score = float((through == labels).float().mean())
        return score, float((direct == labels).float().mean()), count
    return float((through == direct).float().mean()), 1.0, count


def save_reproducibly(state: dict, out: Path) -> int:
    """Write `state` (torch.save-able) to `out` atomically; return its size in bytes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, out)
    return len(buffer.getvalue())


def save_state_dict(model: nn.Module, out: Path) -> int:
    return save_reproducibly(model.state_dict(), out)


def parse_arguments(
    argv, *, prog: str, doc: str, out: Path, epochs: int, batch_size: int, threads: int
):
    """The options every plugin's training command takes, with its own defaults."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=out, help="default: %(default)s")
    parser.add_argument(
        "--threads", type=int, default=threads,
        help="fixed for reproducibility (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.batch_size < 1:
        parser.error("--epochs, --threads and --batch-size must be positive")
    return args
