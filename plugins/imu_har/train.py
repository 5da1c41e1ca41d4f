"""Train the imu_har weights: `python -m plugins.imu_har.train [--epochs N] [--seed S]`.

Reproducible bit for bit from its seed on one machine (same CPU instruction set, same torch
build): every random draw (initial weights, shuffling, dropout, augmentation) comes from
generators seeded here, torch uses deterministic kernels only, the number of threads is
fixed rather than taken from the machine, and the weights are serialised through memory so
that the file's bytes do not depend on its name.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn
from tqdm import tqdm

from plugins.imu_har import WEIGHTS, make_plugin
from testbed.models.training import count_correct, parse_arguments, save_state_dict, seed_everything


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale each window's accelerometer and gyroscope by a random gain in [0.8, 1.2]:
    people move with different vigour, and only 7 training subjects show it."""
    gain = 0.8 + 0.4 * torch.rand(x.shape[0], 2, 1, generator=generator)
    return x * gain.repeat_interleave(3, dim=1)


def train(
    epochs: int, seed: int, threads: int, batch_size: int, lr: float
) -> tuple[nn.Module, int, int]:
    """Adam under a one-cycle schedule, with weight decay; the test split is evaluated once,
    after the last epoch (no model selection on it)."""
    seed_everything(seed, threads)
    plugin = make_plugin()
    train_data, test_data = plugin.train_data(), plugin.test_data()
    model = nn.Sequential(*plugin.build_stages())
    labels = torch.from_numpy(train_data.labels)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = (len(train_data) + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()

    bar = tqdm(total=epochs * steps_per_epoch, desc="training", unit="batch")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_data), generator=generator).numpy()
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = augment(plugin.to_tensor(train_data.inputs[idx]), generator)
            loss = loss_fn(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += float(loss) * len(idx)
            seen += len(idx)
            bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{total / seen:.4f}")
    bar.close()

    return model, count_correct(plugin, model, test_data), len(test_data)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(
        argv,
        prog="python -m plugins.imu_har.train",
        doc=__doc__,
        out=WEIGHTS,
        epochs=30,
        batch_size=64,
        threads=1,
    )

    started = time.monotonic()
    model, correct, total = train(args.epochs, args.seed, args.threads, args.batch_size, args.lr)
    size = save_state_dict(model, args.out)
    elapsed = time.monotonic() - started
    print(f"test accuracy: {correct / total:.4f} ({correct}/{total} windows of held-out subjects)")
    print(f"saved {args.out} ({size} bytes) after {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
