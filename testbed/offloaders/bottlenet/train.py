"""Train a BottleNet bottleneck at a split point of a plugin's model:

    python -m testbed.offloaders.bottlenet.train --plugin fashion_cnn --split 2 [--channels 4] [--bits 4]
        [--stride 2] [--epochs 3] [--seed 0] [--threads 2] [--limit N] [--out PATH]

The plugin's model stays frozen; the device's stages[:split] run on the fly for every
batch (nothing is precomputed: a large plugin's features would not fit in memory). The
loss is the feature reconstruction error (relative to the features' mean square, so
that one weight suits every plugin and split) plus the KL divergence between the
softmax of the logits through the bottleneck and the unsplit model's, as DeepCOD's
training; the k-bit rounding is in the forward pass (straight-through). The artefact,
`bottlenet-s<split>-c<channels>-b<bits>[-x<stride>].pt` beside the plugin's code, holds
the config and the state dict; the run is deterministic from the seed with fixed
threads (the same `--threads` gives the same bytes; another count does not).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

from testbed.errors import TestbedError
from testbed.models import plugins, training
from testbed.offloaders.bottlenet.artefacts import artefact_path
from testbed.offloaders.bottlenet.model import BottleNet, check_feature_shape, resolve_split

RECONSTRUCTION_WEIGHT = 1.0
LOGIT_WEIGHT = 1.0


def split_model(plugin, model, split: int):
    """(device head, edge tail, feature shape at the split)."""
    head, tail, shape = training.split_at(plugin, model, split)
    check_feature_shape(plugin, split, shape)
    return head, tail, shape


def train(plugin, split: int, args, checkpoint=None, resume_from=None):
    """Train on the plugin's train set as the command's options (`args`) say;
    `checkpoint(net, epochs_done)` after each epoch; the resumable state beside
    `resume_from` (`training.fit`)."""
    model, device = training.frozen_model(plugin, args.device, args.seed, args.threads)
    head, tail, shape = split_model(plugin, model, split)
    data = plugin.train_data()
    net = BottleNet(shape, args.channels, args.bits, args.width, args.stride).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=args.lr)
    generator = torch.Generator().manual_seed(args.seed)

    def step(batch) -> dict:
        with torch.no_grad():
            x = head(plugin.to_tensor(batch).to(device))
            teacher = torch.log_softmax(tail(x), dim=1)
            power = x.pow(2).mean().clamp_min(1e-12)
        recon = net(x)
        student = torch.log_softmax(tail(recon), dim=1)
        mse = nn.functional.mse_loss(recon, x) / power
        kl = nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")
        loss = RECONSTRUCTION_WEIGHT * mse + LOGIT_WEIGHT * kl
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return {"rel_mse": f"{mse.item():.4f}", "kl": f"{kl.item():.3f}"}

    training.fit(
        plugin,
        data,
        step,
        generator=generator,
        modules={"bottlenet": net, "optimiser": optimiser},
        resume_from=resume_from,
        after_epoch=(lambda e: checkpoint(net, e)) if checkpoint is not None else None,
        test_figures=training.scorer(plugin, net, split, args.progress_eval, 64, model, device),
        **training.fit_options(args),
    )
    net.eval()
    return net.cpu()


def evaluate(plugin, net, split, count=None, batch_size=500, data=None):
    """(accuracy or agreement through the bottleneck, the same for the unsplit model,
    samples, agreement of the two) on the first `count` test samples (all by default)."""
    return training.score_through(plugin, net, split, count, batch_size, data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--split", type=int, default=-1, help="split point (default -1: the plugin's last)"
    )
    parser.add_argument("--channels", type=int, default=4, help="code channels")
    parser.add_argument("--bits", type=int, default=4, help="bits per code, 1..8")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--width", type=int, default=0, help="decoder channels (default 0: the features' channels)"
    )
    parser.add_argument(
        "--stride",
        type=int,
        default=2,
        help="the encoder's stride: 2 (default) halves the codes' height and width, 1 keeps them",
    )
    parser.add_argument(
        "--eval",
        type=int,
        default=0,
        metavar="N",
        help="evaluate on the first N test samples (default 0: all)",
    )
    training.add_codec_options(parser)
    args = parser.parse_args(argv)
    if not 1 <= args.bits <= 8 or min(args.channels, args.stride, args.epochs, args.threads) < 1:
        parser.error("--bits must be in 1..8; --channels, --stride, --epochs, --threads positive")
    try:
        plugin = plugins.get(args.plugin)
        split = resolve_split(plugin, args.split)
        out = args.out or artefact_path(plugin, split, args.channels, args.bits, args.stride)
        config = {
            "plugin": plugin.name,
            "split": split,
            "channels": args.channels,
            "bits": args.bits,
            **training.run_config(args),
        }
        if args.augment:  # only where used: older artefacts stay byte-identical
            config["augment"] = True
        test_data = plugins.test_data(plugin, args.test_data) if args.test_data else None

        def checkpoint(net, epochs_done):
            full = {
                **config,
                "epochs": epochs_done,
                "feature_shape": list(net.feature_shape),
                "width": net.decoder[0].out_channels,
                "stride": net.stride,
            }
            training.save_reproducibly({"config": full, "state_dict": net.state_dict()}, out)

        started = time.monotonic()
        net = train(plugin, split, args, checkpoint, resume_from=out)
        trained = time.monotonic() - started
        score, unsplit, count, agrees = evaluate(
            plugin, net, split, args.eval or None, data=test_data
        )
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    codes = "x".join(map(str, net.code_shape))
    print(
        f"{plugin.metric} through BottleNet {100 * score:.2f}% (unsplit model "
        f"{100 * unsplit:.2f}%), agreement {100 * agrees:.2f}%, on {count} test samples; codes {codes} at {args.bits} bits "
        f"({int(np.prod(net.code_shape)) * args.bits / 8:g} bytes before entropy coding); "
        f"trained in {trained:.0f} s; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
