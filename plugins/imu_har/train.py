"""Train the imu_har weights: `python -m plugins.imu_har.train [--epochs N] [--seed S]`.

Reproducible bit for bit from its seed on one machine (same CPU instruction set, same torch
build): every random draw (initial weights, shuffling, dropout, augmentation) comes from
generators seeded by --seed, torch uses deterministic kernels only, the number of threads is
fixed rather than taken from the machine, and the weights are serialised through memory so
that the file's bytes do not depend on its name.
"""

from __future__ import annotations

import sys

import torch

from plugins.imu_har import make_plugin
from testbed.models.training import classifier_command, parse_arguments


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Scale each window's accelerometer and gyroscope by a random gain in [0.8, 1.2]:
    people move with different vigour, and only 7 training subjects show it."""
    gain = 0.8 + 0.4 * torch.rand(x.shape[0], 2, 1, generator=generator)
    return x * gain.repeat_interleave(3, dim=1)


def adamw(parameters, lr: float) -> torch.optim.Optimizer:
    """AdamW (weight decay) under the one-cycle schedule; the test split is scored once,
    after the last epoch (no model selection on it)."""
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-2)


def main(argv: list[str] | None = None) -> int:
    plugin = make_plugin()
    args = parse_arguments(argv, plugin, __doc__, epochs=30, batch_size=64, threads=1)
    return classifier_command(plugin, args, adamw, augment, "windows of held-out subjects")


if __name__ == "__main__":
    sys.exit(main())
