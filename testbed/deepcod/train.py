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

import torch
from torch import nn
from tqdm import tqdm

from testbed import plugins
from testbed.deepcod.model import DeepCOD
from testbed.errors import TestbedError
from testbed.training import save_reproducibly, seed_everything

RECONSTRUCTION_WEIGHT = 10.0
LOGIT_WEIGHT = 1.0
ORTHOGONALITY_WEIGHT = 0.01


def artefact_path(plugin, ratio: float) -> Path:
    """Beside the plugin's code (its package folder), named by the ratio."""
    key = f"deepcod-r{ratio:g}"
    if key in plugin.artefacts:
        return Path(plugin.artefacts[key])
    module = sys.modules[type(plugin).__module__]
    return Path(module.__file__).resolve().parent / f"{key}.pt"


def train(plugin, ratio, centres, epochs, seed, lr, batch_size, threads, limit=None, width=64):
    seed_everything(seed, threads)
    model = plugin.load_model()
    for p in model.parameters():
        p.requires_grad_(False)
    data = plugin.train_data()
    inputs = data.inputs[:limit] if limit else data.inputs
    deepcod = DeepCOD(plugin.input_spec.shape[0], ratio, centres, width)
    optimiser = torch.optim.Adam(deepcod.parameters(), lr=lr, betas=(0.0, 0.9))
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        deepcod.train()
        order = torch.randperm(len(inputs), generator=generator).numpy()
        bar = tqdm(range(0, len(order), batch_size), desc=f"epoch {epoch + 1}/{epochs}")
        for start in bar:
            x = plugin.to_tensor(inputs[order[start : start + batch_size]])
            with torch.no_grad():
                teacher = torch.log_softmax(model(x), dim=1)
            recon = deepcod(x)
            student = torch.log_softmax(model(recon), dim=1)
            mse = nn.functional.mse_loss(recon, x)
            kl = nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
            orth = deepcod.encoder.orthogonality_loss()
            loss = RECONSTRUCTION_WEIGHT * mse + LOGIT_WEIGHT * kl + ORTHOGONALITY_WEIGHT * orth
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            bar.set_postfix(mse=f"{mse.item():.4f}", kl=f"{kl.item():.3f}")
    deepcod.eval()
    return deepcod


@torch.inference_mode()
def agreement(plugin, deepcod, count: int = 2000) -> tuple[float, float]:
    """(accuracy or agreement through DeepCOD, the same for the unsplit model)."""
    model, data = plugin.load_model(), plugin.test_data()
    x = plugin.to_tensor(data.inputs[:count])
    direct = model(x).argmax(1)
    through = model(deepcod(x)).argmax(1)
    if plugin.metric == "accuracy":
        labels = torch.from_numpy(data.labels[:count])
        return float((through == labels).float().mean()), float((direct == labels).float().mean())
    return float((through == direct).float().mean()), 1.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument("--centres", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-4, help="the paper's 1e-4 by default")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, help="train on the first N samples only")
    parser.add_argument("--width", type=int, default=64, help="decoder channels")
    parser.add_argument("--out", type=Path, help="default: beside the plugin's code")
    args = parser.parse_args(argv)
    try:
        plugin = plugins.get(args.plugin)
        started = time.monotonic()
        deepcod = train(plugin, args.ratio, args.centres, args.epochs, args.seed, args.lr,
                        args.batch_size, args.threads, args.limit, args.width)  # fmt: skip
        score, unsplit = agreement(plugin, deepcod)
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    out = args.out or artefact_path(plugin, args.ratio)
    config = {"plugin": plugin.name, "ratio": args.ratio, "centres": args.centres,
              "epochs": args.epochs, "seed": args.seed, "lr": args.lr,
              "batch_size": args.batch_size, "threads": args.threads, "limit": args.limit or 0,
              "in_channels": plugin.input_spec.shape[0], "width": args.width}  # fmt: skip
    save_reproducibly({"config": config, "state_dict": deepcod.state_dict()}, out)
    print(f"{plugin.metric} through DeepCOD {100 * score:.2f}% (unsplit model {100 * unsplit:.2f}%) "
          f"on {min(2000, len(plugin.test_data()))} test samples; {time.monotonic() - started:.0f} s; "
          f"wrote {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
