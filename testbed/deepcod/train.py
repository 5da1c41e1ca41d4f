"""Train DeepCOD's encoder, quantizer and decoder for a plugin:

    python -m testbed.deepcod.train --plugin fashion_cnn [--ratio 0.1] [--epochs 3] [--seed 0]

The plugin's model stays frozen. The loss is the paper's: reconstruction MSE, plus
logit matching against the frozen model on the original input ("lossless
inference", here a KL divergence of the softmaxes), plus the encoder's orthogonality
term; Adam with betas (0, 0.9). The artefact is written beside the plugin's code
(`deepcod-r<ratio>.pt`), where the `deepcod` offloader loads it; the run is
deterministic from the seed on one machine (fixed threads, deterministic kernels).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from testbed import plugins
from testbed.deepcod.model import PADDING, PATCH, Critic, DeepCOD, gradient_penalty
from testbed.errors import TestbedError
from testbed.training import save_reproducibly, score_through, seed_everything

RECONSTRUCTION_WEIGHT = 10.0
LOGIT_WEIGHT = 1.0
ORTHOGONALITY_WEIGHT = 0.01
GRADIENT_PENALTY_WEIGHT = 10.0  # WGAN-GP's lambda


def artefact_key(ratio: float, split: int = 0) -> str:
    """`deepcod-r0.1` on the input, `deepcod-s2-r0.1` after split point 2."""
    return f"deepcod-s{split}-r{ratio:g}" if split else f"deepcod-r{ratio:g}"


def artefact_path(plugin, ratio: float, split: int = 0) -> Path:
    """Beside the plugin's code (its package folder), named by the ratio and split."""
    key = artefact_key(ratio, split)
    if key in plugin.artefacts:
        return Path(plugin.artefacts[key])
    module = sys.modules[type(plugin).__module__]
    return Path(module.__file__).resolve().parent / f"{key}.pt"


def split_model(plugin, model, split: int):
    """(device head, edge tail, shape DeepCOD encodes); split 0 is the input itself. H and
    W need not be multiples of 4: the networks pad them (`model.pad_to_patches`)."""
    if split and split not in plugin.split_points:
        raise TestbedError(
            f"--split {split}: plugin {plugin.name!r} splits at {list(plugin.split_points)} "
            "(or 0 for the input)"
        )
    head, tail = model[:split], model[split:]
    with torch.inference_mode():
        x = plugin.to_tensor(np.zeros((1, *plugin.input_spec.shape), plugin.input_spec.dtype))
        shape = tuple(head(x).shape[1:])
    if len(shape) != 3:
        raise TestbedError(
            f"DeepCOD needs a CxHxW tensor at split {split} of {plugin.name!r}; it is "
            f"{'x'.join(map(str, shape))}"
        )
    return head, tail, shape


def train(plugin, ratio, centres, epochs, seed, lr, batch_size, threads, limit=None, width=64,
          split=0, adversarial=0.0, checkpoint=None):  # fmt: skip
    """Train on the plugin's train set; `checkpoint(deepcod, epochs_done)` after each
    epoch (the state after e epochs is what `--epochs e` gives: no schedule)."""
    seed_everything(seed, threads)
    model = plugin.load_model()
    for p in model.parameters():
        p.requires_grad_(False)
    head, tail, shape = split_model(plugin, model, split)
    data = plugin.train_data()
    inputs = data.inputs[:limit] if limit else data.inputs
    deepcod = DeepCOD(shape[0], ratio, centres, width, bounded=split == 0)
    optimiser = torch.optim.Adam(deepcod.parameters(), lr=lr, betas=(0.0, 0.9))
    critic = Critic(shape[0]) if adversarial > 0 else None
    if critic is not None:
        critic_optimiser = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.0, 0.9))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        deepcod.train()
        order = torch.randperm(len(inputs), generator=generator).numpy()
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}")
        for start in bar:
            with torch.no_grad():
                x = head(plugin.to_tensor(inputs[order[start : start + batch_size]]))
                teacher = torch.log_softmax(tail(x), dim=1)
            recon = deepcod(x)
            if critic is not None:  # one critic step per generator step
                critic_loss = critic(recon.detach()).mean() - critic(x).mean()
                critic_loss = critic_loss + GRADIENT_PENALTY_WEIGHT * gradient_penalty(
                    critic, x, recon.detach()
                )
                critic_optimiser.zero_grad()
                critic_loss.backward()
                critic_optimiser.step()
            student = torch.log_softmax(tail(recon), dim=1)
            mse = nn.functional.mse_loss(recon, x)
            kl = nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
            orth = deepcod.encoder.orthogonality_loss()
            loss = RECONSTRUCTION_WEIGHT * mse + LOGIT_WEIGHT * kl + ORTHOGONALITY_WEIGHT * orth
            if critic is not None:
                loss = loss - adversarial * critic(recon).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.3f}")
        deepcod.eval()
        if checkpoint is not None:
            checkpoint(deepcod, epoch + 1)
    deepcod.eval()
    return deepcod


def agreement(plugin, deepcod, split=0, count=2000) -> tuple[float, float]:
    """(accuracy or agreement through DeepCOD, the same for the unsplit model), in
    batches of 16: the decoder's attention is quadratic in positions."""
    return score_through(plugin, deepcod, split, count, batch_size=16)[:2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--split", type=int, default=0,
                        help="encode the features after this split point (0: the input)")  # fmt: skip
    parser.add_argument("--centres", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4, help="the paper's 1e-4 by default")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="train on the first N samples only")
    parser.add_argument("--width", type=int, default=64, help="decoder channels")
    parser.add_argument("--adversarial", type=float, default=0.0, metavar="WEIGHT",
                        help="weight of the WGAN-GP generator loss (default 0: off)")  # fmt: skip
    parser.add_argument("--out", type=Path, help="default: beside the plugin's code")
    args = parser.parse_args(argv)
    if not 0 < args.ratio <= 1 or args.centres < 2 or args.centres > 256 or args.epochs < 1:
        parser.error("--ratio must be in (0, 1], --centres in 2..256, --epochs positive")
    try:
        plugin = plugins.get(args.plugin)
        out = args.out or artefact_path(plugin, args.ratio, args.split)
        config = {"plugin": plugin.name, "ratio": args.ratio, "centres": args.centres,
                  "epochs": args.epochs, "seed": args.seed, "lr": args.lr,
                  "batch_size": args.batch_size, "threads": args.threads,
                  "limit": args.limit or 0}  # fmt: skip
        # split, adversarial, padding only where used: older artefacts stay byte-identical
        extra = {"split": args.split, "adversarial": args.adversarial}
        extra = extra if args.split or args.adversarial else {}
        shape = split_model(plugin, plugin.load_model(), args.split)[2]
        if shape[1] % PATCH or shape[2] % PATCH:
            extra["padding"] = PADDING

        def checkpoint(deepcod, epochs_done):
            full = {**config, "epochs": epochs_done,
                    "in_channels": deepcod.encoder.conv.in_channels, "width": args.width,
                    **extra}  # fmt: skip
            save_reproducibly({"config": full, "state_dict": deepcod.state_dict()}, out)

        started = time.monotonic()
        deepcod = train(plugin, args.ratio, args.centres, args.epochs, args.seed, args.lr,
                        args.batch_size, args.threads, args.limit, args.width, args.split,
                        args.adversarial, checkpoint)  # fmt: skip
        score, unsplit = agreement(plugin, deepcod, args.split)
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    print(f"{plugin.metric} through DeepCOD {100 * score:.2f}% (unsplit model {100 * unsplit:.2f}%) "
          f"on {min(2000, len(plugin.test_data()))} test samples; {time.monotonic() - started:.0f} s; "
          f"wrote {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
