"""Train DeepCOD's encoder, quantizer and decoder for a plugin:

    python -m testbed.offloaders.deepcod.train --plugin fashion_cnn [--ratio 0.1] [--epochs 3] [--seed 0]

The plugin's model stays frozen. The loss is the paper's: reconstruction MSE, plus
logit matching against the frozen model on the original input ("lossless
inference", here a KL divergence of the softmaxes), plus the encoder's orthogonality
term; Adam with betas (0, 0.9). The output term is the task's (`testbed.models.predictions`:
`matches_outputs`, `output_loss`): a detector's boxes give none, so a detection plugin
(mtcnn_faces) trains on reconstruction and orthogonality only. `--crop HxW` trains on
seeded random crops (the networks are convolutional; the decoder's attention is global
over the crop), `--attention-pool N` makes that attention work on a grid pooled by N
(`model.SelfAttention`): both for large inputs, such as 480x640 frames. The final score
is the task's comparison (`testbed.models.predictions.compare`): for a detector, frames whose
boxes all agree with the unmodified model's on the original, and pooled precision/recall.
The artefact is written beside the plugin's code (`deepcod-r<ratio>.pt`), where the
`deepcod` offloader loads it; the run is deterministic from the seed on one machine
(fixed threads, deterministic kernels).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from torch import nn

from testbed.errors import TestbedError
from testbed.models import plugins, predictions, training
from testbed.offloaders.deepcod.artefacts import artefact_path
from testbed.offloaders.deepcod.model import PADDING, PATCH, Critic, DeepCOD, gradient_penalty

RECONSTRUCTION_WEIGHT = 10.0
LOGIT_WEIGHT = 1.0
ORTHOGONALITY_WEIGHT = 0.01
GRADIENT_PENALTY_WEIGHT = 10.0  # WGAN-GP's lambda


def split_model(plugin, model, split: int):
    """(device head, edge tail, shape DeepCOD encodes); split 0 is the input itself. H and
    W need not be multiples of 4: the networks pad them (`model.pad_to_patches`)."""
    if split and split not in plugin.split_points:
        raise TestbedError(
            f"--split {split}: plugin {plugin.name!r} splits at {list(plugin.split_points)} "
            "(or 0 for the input)"
        )
    head, tail, shape = training.split_at(plugin, model, split)
    if len(shape) != 3:
        raise TestbedError(
            f"DeepCOD needs a CxHxW tensor at split {split} of {plugin.name!r}; it is "
            f"{'x'.join(map(str, shape))}"
        )
    return head, tail, shape


def input_scale(plugin, split: int = 0) -> float:
    """The top of the input's range as the model takes it (`to_tensor` of the spec's high
    value): 1 for most plugins, 255 for pixel values; 1 after a split (unbounded)."""
    if split:
        return 1.0
    spec = plugin.input_spec
    high = plugin.to_tensor(np.full((1, *spec.shape), spec.high, dtype=spec.dtype))
    top = float(high.max())
    return 1.0 if abs(top - 1.0) < 1e-6 else top


def random_crop(x: torch.Tensor, crop, generator: torch.Generator) -> torch.Tensor:
    """A seeded (h, w) crop of each sample, at offsets on the encoder's 4-pixel grid."""
    h, w = crop
    rows, cols = (x.shape[-2] - h) // PATCH + 1, (x.shape[-1] - w) // PATCH + 1
    top = torch.randint(rows, (len(x),), generator=generator) * PATCH
    left = torch.randint(cols, (len(x),), generator=generator) * PATCH
    return torch.stack([s[..., t : t + h, c : c + w] for s, t, c in zip(x, top, left, strict=True)])


def train(plugin, args, crop=None, checkpoint=None, resume_from=None):
    """Train on the plugin's train set as the command's options (`args`) say;
    `checkpoint(deepcod, epochs_done)` after each epoch (the state after e epochs is what
    `--epochs e` gives: no schedule). `crop` (h, w): train on random crops; `resume_from`:
    the artefact path beside which the resumable state is kept each epoch (`training.fit`)."""
    split, adversarial, lr = args.split, args.adversarial, args.lr
    model, device = training.frozen_model(plugin, args.device, args.seed, args.threads)
    head, tail, shape = split_model(plugin, model, split)
    task = predictions.task_of(plugin)
    if crop is not None and (crop[0] > shape[1] or crop[1] > shape[2]):
        raise TestbedError(f"--crop {crop[0]}x{crop[1]} is larger than {shape[1]}x{shape[2]}")
    data = plugin.train_data()
    scale = input_scale(plugin, split)
    deepcod = DeepCOD(
        shape[0],
        args.ratio,
        args.centres,
        args.width,
        bounded=split == 0,
        scale=scale,
        attention_pool=args.attention_pool,
    ).to(device)
    optimiser = torch.optim.Adam(deepcod.parameters(), lr=lr, betas=(0.0, 0.9))
    modules = {"deepcod": deepcod, "optimiser": optimiser}
    critic = Critic(shape[0]).to(device) if adversarial > 0 else None
    if critic is not None:
        critic_optimiser = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.0, 0.9))
        modules.update(critic=critic, critic_optimiser=critic_optimiser)
    generator = torch.Generator().manual_seed(args.seed)

    def step(batch) -> dict:
        with torch.no_grad():
            x = head(plugin.to_tensor(batch).to(device))
            if crop is not None:
                x = random_crop(x, crop, generator)
            teacher = tail(x) if task.matches_outputs else None
        recon = deepcod(x)
        if critic is not None:  # one critic step per generator step
            critic_loss = critic(recon.detach()).mean() - critic(x).mean()
            critic_loss = critic_loss + GRADIENT_PENALTY_WEIGHT * gradient_penalty(
                critic, x, recon.detach()
            )
            critic_optimiser.zero_grad()
            critic_loss.backward()
            critic_optimiser.step()
        if scale != 1:  # the reconstruction error in [0, 1] units, as for other plugins
            mse = nn.functional.mse_loss(recon / scale, x / scale)
        else:
            mse = nn.functional.mse_loss(recon, x)
        kl = task.output_loss(tail(recon), teacher) if teacher is not None else torch.zeros(())
        orth = deepcod.encoder.orthogonality_loss()
        loss = RECONSTRUCTION_WEIGHT * mse + LOGIT_WEIGHT * kl + ORTHOGONALITY_WEIGHT * orth
        if critic is not None:
            loss = loss - adversarial * critic(recon).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        return {"mse": f"{mse.item():.4f}", "kl": f"{kl.item():.3f}"}

    evaluated = args.progress_eval * task.matches_outputs  # none for a detector: no score
    training.fit(
        plugin,
        data,
        step,
        generator=generator,
        modules=modules,
        resume_from=resume_from,
        after_epoch=(lambda e: checkpoint(deepcod, e)) if checkpoint is not None else None,
        test_figures=training.scorer(plugin, deepcod, split, evaluated, 16, model, device),
        **training.fit_options(args),
    )
    deepcod.eval()
    return deepcod.cpu()


def agreement(plugin, deepcod, split=0, count=2000) -> tuple[float, float]:
    """(accuracy or agreement through DeepCOD, the same for the unsplit model), in
    batches of 16: the decoder's attention is quadratic in positions."""
    return training.score_through(plugin, deepcod, split, count, batch_size=16)[:2]


def compare_through(plugin, deepcod, count=None, batch_size=2) -> dict:
    """For any task (`testbed.models.predictions`): the model's predictions on the first `count`
    test inputs through DeepCOD (split 0) compared with its predictions on the originals:
    samples, agreeing, and for detection tp, fp, fn, precision, recall."""
    model, data = plugin.load_model(), plugin.test_data()
    count = min(count or len(data), len(data))
    found = {"samples": count, "agreeing": 0, "tp": 0, "fp": 0, "fn": 0, "differ": []}
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            x = plugin.to_tensor(data.inputs[start : min(count, start + batch_size)])
            reference = predictions.predict(plugin, model(x))
            through = predictions.predict(plugin, model(deepcod(x)))
            for k, (pred, ref) in enumerate(zip(through, reference, strict=True)):
                c = predictions.compare(plugin, pred, ref)
                found["agreeing"] += c.agrees
                if not c.agrees:
                    found["differ"].append(start + k)
                for key in ("tp", "fp", "fn"):
                    found[key] += getattr(c, key) or 0
    tp, fp, fn = found["tp"], found["fp"], found["fn"]
    found["precision"] = tp / (tp + fp) if tp + fp else 1.0
    found["recall"] = tp / (tp + fn) if tp + fn else 1.0
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ratio", type=float, default=0.1)
    parser.add_argument(
        "--split",
        type=int,
        default=0,
        help="encode the features after this split point (0: the input)",
    )
    parser.add_argument("--centres", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4, help="the paper's 1e-4 by default")
    parser.add_argument("--width", type=int, default=64, help="decoder channels")
    parser.add_argument(
        "--adversarial",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="weight of the WGAN-GP generator loss (default 0: off)",
    )
    parser.add_argument(
        "--crop", metavar="HxW", help="train on seeded random crops of this size (large inputs)"
    )
    parser.add_argument(
        "--attention-pool",
        type=int,
        default=1,
        metavar="N",
        help="the decoder's attention on a grid pooled by N (default 1: off)",
    )
    parser.add_argument("--steps", type=int, help="stop after N optimiser steps (smoke tests)")
    parser.add_argument(
        "--eval-count",
        type=int,
        default=2000,
        help="test samples in the final score (default %(default)s)",
    )
    training.add_codec_options(parser)
    args = parser.parse_args(argv)
    if not 0 < args.ratio <= 1 or args.centres < 2 or args.centres > 256 or args.epochs < 1:
        parser.error("--ratio must be in (0, 1], --centres in 2..256, --epochs positive")
    if args.attention_pool < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--attention-pool and --steps must be positive")
    crop = None
    if args.crop:
        try:
            crop = tuple(int(n) for n in args.crop.lower().split("x"))
        except ValueError:
            crop = ()
        if len(crop) != 2 or min(crop) < PATCH or crop[0] % PATCH or crop[1] % PATCH:
            parser.error(f"--crop HxW with H and W multiples of {PATCH}, got {args.crop!r}")
    try:
        plugin = plugins.get(args.plugin)
        out = args.out or artefact_path(plugin, args.ratio, args.split)
        config = {
            "plugin": plugin.name,
            "ratio": args.ratio,
            "centres": args.centres,
            **training.run_config(args),
        }
        # split, adversarial, padding only where used: older artefacts stay byte-identical
        extra = {"split": args.split, "adversarial": args.adversarial}
        extra = extra if args.split or args.adversarial else {}
        shape = split_model(plugin, plugin.load_model(), args.split)[2]
        if shape[1] % PATCH or shape[2] % PATCH:
            extra["padding"] = PADDING
        # likewise only where used
        scale = input_scale(plugin, args.split)
        if scale != 1:
            extra["scale"] = scale
        if crop is not None:
            extra["crop"] = list(crop)
        if args.attention_pool != 1:
            extra["attention_pool"] = args.attention_pool
        if args.steps is not None:
            extra["steps"] = args.steps
        if args.augment:
            extra["augment"] = True
        device = training.resolve_device(args.device)
        if device.type != "cpu":
            extra["device"] = device.type
        test_data = plugins.test_data(plugin, args.test_data) if args.test_data else None

        def checkpoint(deepcod, epochs_done):
            full = {
                **config,
                "epochs": epochs_done,
                "in_channels": deepcod.encoder.conv.in_channels,
                "width": args.width,
                **extra,
            }
            training.save_reproducibly({"config": full, "state_dict": deepcod.state_dict()}, out)

        started = time.monotonic()
        deepcod = train(plugin, args, crop, checkpoint, resume_from=out)
        trained = time.monotonic() - started
        if predictions.task_name(plugin) != "classification":
            found = compare_through(plugin, deepcod, args.eval_count)
        else:
            scored = training.score_through(
                plugin, deepcod, args.split, args.eval_count, 16, test_data
            )
    except TestbedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_status
    if predictions.task_name(plugin) != "classification":
        print(
            f"{plugin.metric} through DeepCOD: {found['agreeing']}/{found['samples']} test "
            f"samples agree with the unmodified model on the originals; TP {found['tp']} "
            f"FP {found['fp']} FN {found['fn']}, precision {found['precision']:.3f}, recall "
            f"{found['recall']:.3f}; differ: {found['differ']}; trained in {trained:.0f} s, "
            f"{time.monotonic() - started:.0f} s in all; wrote {out}"
        )
        return 0
    score, unsplit, count, agrees = scored
    print(
        f"{plugin.metric} through DeepCOD {100 * score:.2f}% (unsplit model {100 * unsplit:.2f}%), "
        f"agreement {100 * agrees:.2f}%, on {count} test samples; trained in {trained:.0f} s, "
        f"{time.monotonic() - started:.0f} s in all; wrote {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
