"""What every training command of the project shares: seeding for byte-reproducible
weights on one machine, the device to train on, augmented batches, scoring on the test
set, checkpoints to resume from, and saving a state dict.

Reproducibility on CPU needs every random draw seeded, deterministic kernels, and a
fixed thread count (a different split of a reduction changes the rounding); saving
goes through memory because `torch.save` to a file stores the file's name inside the
archive, and the rename makes an interrupted run leave no half-written file.
"""

from __future__ import annotations

import io
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm


def seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)


def resolve_device(name: str) -> torch.device:
    """`auto`: CUDA where torch sees a GPU, else the CPU; `cuda` without one is a missing
    environment (exit 3) named before any work."""
    from testbed.errors import EnvironmentMissing

    if name not in ("auto", "cpu", "cuda"):
        raise EnvironmentMissing(f"--device {name!r}: allowed auto, cpu, cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentMissing(
            "--device cuda: torch sees no CUDA GPU (this torch is "
            f"{torch.__version__}); use --device cpu or auto"
        )
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def random_resized_crops(
    images,
    size: tuple[int, int],
    generator: torch.Generator,
    scale=(0.25, 1.0),
    ratio=(3 / 4, 4 / 3),
) -> np.ndarray:
    """Inception-style augmentation of (C, H, W) uint8 images of any size: per image a
    seeded box of `scale` of its area and aspect in `ratio`, resized to `size` (bilinear,
    antialiased), flipped left-right half the time; uint8 (N, C, *size) again, because
    the device sends pixels. Every draw comes from `generator`: the same seed, the same
    crops."""
    out = []
    for image in images:
        _c, h, w = image.shape
        draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        area = h * w * (scale[0] + (scale[1] - scale[0]) * draws[0])
        log_lo, log_hi = np.log(ratio[0]), np.log(ratio[1])
        aspect = float(np.exp(log_lo + (log_hi - log_lo) * draws[1]))
        bw = round(min(w, max(1.0, np.sqrt(area * aspect))))
        bh = round(min(h, max(1.0, np.sqrt(area / aspect))))
        top, left = int(draws[2] * (h - bh + 1)), int(draws[3] * (w - bw + 1))
        box = torch.from_numpy(np.ascontiguousarray(image[:, top : top + bh, left : left + bw]))
        resized = nn.functional.interpolate(
            box[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        if torch.rand(1, generator=generator).item() < 0.5:
            resized = resized.flip(-1)
        out.append(resized.round().clamp(0, 255).to(torch.uint8).numpy())
    return np.stack(out)


def training_batches(
    plugin,
    data,
    batch_size: int,
    generator: torch.Generator,
    augment: bool,
    limit: int | None = None,
):
    """One epoch's batches of raw inputs in a seeded order: the train set as it is, or
    (`augment`) random resized crops and flips of the plugin's whole train images
    (`Plugin.train_images`, else of the train inputs themselves)."""
    whole = plugin.train_images() if augment else None
    pool = whole[0] if whole is not None else data.inputs
    pool = pool[:limit] if limit else pool
    order = torch.randperm(len(pool), generator=generator).numpy()
    for start in range(0, len(order), batch_size):
        chosen = order[start : start + batch_size]
        if not augment:
            yield pool[chosen]
        else:
            size = tuple(plugin.input_spec.shape[-2:])
            yield random_resized_crops([pool[i] for i in chosen], size, generator)


def batches_per_epoch(plugin, data, batch_size: int, augment: bool, limit=None) -> int:
    whole = plugin.train_images() if augment else None
    n = len(whole[0]) if whole is not None else len(data.inputs)
    n = min(n, limit) if limit else n
    return -(-n // batch_size)


class Checkpoints:
    """The whole training state after each epoch (networks, optimisers, the random
    generators), beside the artefact as `<name>.resume.pt`, so that `--resume` goes on
    where an interrupted run stopped and ends with the same weights as a run that was
    never interrupted; kept after the last epoch too, so that a finished run can go on
    to more epochs (no schedule: e epochs then more are the same as all at once).
    `*.resume.pt` is git-ignored."""

    def __init__(self, artefact: Path, resume: bool = False) -> None:
        self.path = Path(artefact).with_name(Path(artefact).stem + ".resume.pt")
        self.resume = resume

    def save(self, epochs_done: int, modules: dict, generator: torch.Generator) -> None:
        state = {name: m.state_dict() for name, m in modules.items()}
        state["epochs_done"] = epochs_done
        state["generator"] = generator.get_state()
        state["torch_rng"] = torch.get_rng_state()
        save_reproducibly(state, self.path)

    def load(self, modules: dict, generator: torch.Generator) -> int:
        """Restore into `modules` and `generator`; the epochs already done (0: none)."""
        from testbed.errors import TestbedError

        if not self.resume or not self.path.is_file():
            return 0
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
            for name, module in modules.items():
                module.load_state_dict(state[name])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
        except Exception as exc:  # a checkpoint of another configuration or a damaged file
            raise TestbedError(
                f"--resume: {self.path} does not fit this run ({type(exc).__name__}: "
                f"{str(exc)[:200]}); delete it to start again"
            ) from None
        return int(state["epochs_done"])


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
def score_through(
    plugin,
    codec: nn.Module,
    split: int,
    count: int | None = None,
    batch_size: int = 64,
    data=None,
    model=None,
    device: torch.device | None = None,
) -> tuple[float, float, int, float]:
    """(accuracy, or agreement for plugins without labels, with `codec` between
    stages[:split] and stages[split:]; the same for the unsplit model; samples; agreement
    of the two) on the first `count` samples of `data` (the test set by default), in
    batches, on `device` (where `codec` and `model` are)."""
    model = plugin.load_model() if model is None else model
    data = plugin.test_data() if data is None else data
    head, tail = model[:split], model[split:]
    count = min(count or len(data), len(data))
    direct_parts, through_parts = [], []
    for start in range(0, count, batch_size):
        x = plugin.to_tensor(data.inputs[start : min(count, start + batch_size)])
        x = head(x.to(device) if device is not None else x)
        direct_parts.append(tail(x).argmax(1).cpu())
        through_parts.append(tail(codec(x)).argmax(1).cpu())
    direct, through = torch.cat(direct_parts), torch.cat(through_parts)
    agreement = float((through == direct).float().mean())
    if plugin.metric == "accuracy":
        labels = torch.from_numpy(data.labels[:count])
        score = float((through == labels).float().mean())
        return score, float((direct == labels).float().mean()), count, agreement
    return agreement, 1.0, count, agreement


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


def parse_arguments(argv, plugin, doc: str, *, epochs: int, batch_size: int, threads: int):
    """The options every plugin's training command (`python -m plugins.<name>.train`)
    takes, with its own defaults; --out defaults to the plugin's weights."""
    import argparse

    prog = f"python -m plugins.{plugin.name}.train"
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--seed", type=int, default=0)
    out = Path(plugin.artefacts["weights"])
    parser.add_argument("--out", type=Path, default=out, help="default: %(default)s")
    parser.add_argument(
        "--threads",
        type=int,
        default=threads,
        help="fixed for reproducibility (default: %(default)s)",
    )
    parser.add_argument("--batch-size", type=int, default=batch_size)
    parser.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.threads < 1 or args.batch_size < 1:
        parser.error("--epochs, --threads and --batch-size must be positive")
    return args


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def train_classifier(
    plugin, args, optimizer, augment: Augment, loss_fn: nn.Module | None = None
) -> nn.Module:
    """A classifier plugin's stages trained as its command's options (`parse_arguments`)
    say: `loss_fn` (default cross-entropy) on shuffled mini-batches of the train split,
    each through `augment(x, generator)`, by `optimizer(parameters, lr)` under a one-cycle
    schedule peaking at --lr. Every random draw comes from --seed."""
    seed_everything(args.seed, args.threads)
    train_data = plugin.train_data()
    model = nn.Sequential(*plugin.build_stages())
    labels = torch.from_numpy(train_data.labels)
    generator = torch.Generator().manual_seed(args.seed)
    epochs, batch_size = args.epochs, args.batch_size
    steps_per_epoch = (len(train_data) + batch_size - 1) // batch_size
    step_by = optimizer(model.parameters(), args.lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        step_by, max_lr=args.lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    loss_fn = loss_fn or nn.CrossEntropyLoss()

    bar = tqdm(total=epochs * steps_per_epoch, desc="training", unit="batch")
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(train_data), generator=generator).numpy()
        total, seen = 0.0, 0
        for step in range(steps_per_epoch):
            idx = order[step * batch_size : (step + 1) * batch_size]
            x = augment(plugin.to_tensor(train_data.inputs[idx]), generator)
            loss = loss_fn(model(x), labels[idx])
            step_by.zero_grad(set_to_none=True)
            loss.backward()
            step_by.step()
            schedule.step()
            total += float(loss) * len(idx)
            seen += len(idx)
            bar.update()
        bar.set_postfix(epoch=epoch, loss=f"{total / seen:.4f}")
    bar.close()
    return model


def classifier_command(plugin, args, optimizer, augment: Augment, scored: str) -> int:
    """A classifier plugin's training command once its options are parsed: train
    (`train_classifier`), score the model once on the test split (no model selection on
    it; `scored`: what its samples are), and save the weights to --out."""
    started = time.monotonic()
    model = train_classifier(plugin, args, optimizer, augment)
    test_data = plugin.test_data()
    correct, total = count_correct(plugin, model, test_data), len(test_data)
    size = save_state_dict(model, args.out)
    elapsed = time.monotonic() - started
    print(f"test accuracy: {correct / total:.4f} ({correct}/{total} {scored})")
    print(f"saved {args.out} ({size} bytes) after {elapsed:.0f} s")
    return 0


def fit(
    plugin,
    data,
    step,
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    modules: dict,
    augment: bool = False,
    limit: int | None = None,
    steps: int | None = None,
    resume_from: Path | None = None,
    resume: bool = False,
    after_epoch=None,
    test_figures=None,
) -> None:
    """The epoch loop every learned codec's training shares. `step(raw_batch)` trains on
    one batch and returns the figures to show; `modules` (networks and optimisers) are
    what a checkpoint holds. Per epoch: a progress bar, then `after_epoch(epochs_done)`
    (the artefact), the resumable state, and `test_figures()` (a short text, e.g. the
    accuracy on a few test samples) on the next epoch's bar. `steps` stops early (smoke
    tests). `resume_from`: the artefact beside which `Checkpoints` keeps the state, read
    back with `resume`; restoring the generator continues the batches and crops exactly."""
    checkpoints = Checkpoints(resume_from, resume) if resume_from is not None else None
    done_epochs = checkpoints.load(modules, generator) if checkpoints is not None else 0
    if done_epochs and checkpoints is not None:
        print(f"resuming after epoch {done_epochs} from {checkpoints.path}", file=sys.stderr)
    done = 0
    shown: dict[str, Any] = {}
    total = batches_per_epoch(plugin, data, batch_size, augment, limit)
    for epoch in range(done_epochs, epochs):
        for m in modules.values():
            if isinstance(m, nn.Module):
                m.train()
        bar = tqdm(
            training_batches(plugin, data, batch_size, generator, augment, limit),
            total=total,
            desc=f"epoch {epoch + 1}/{epochs}",
        )
        for batch in bar:
            if steps is not None and done >= steps:
                break
            figures = step(batch)
            done += 1
            bar.set_postfix({**figures, **shown})
        bar.close()
        for m in modules.values():
            if isinstance(m, nn.Module):
                m.eval()
        if after_epoch is not None:
            after_epoch(epoch + 1)
        if checkpoints is not None:
            checkpoints.save(epoch + 1, modules, generator)
        if test_figures is not None and epoch + 1 < epochs:
            shown = {"test": test_figures()}
            print(f"after epoch {epoch + 1}: {shown['test']}", file=sys.stderr)


def frozen_model(plugin, device: str, seed: int, threads: int) -> tuple[Any, torch.device]:
    """Where a learned codec's training starts: every random draw seeded, the device
    resolved, and the plugin's trained model on it, frozen (the codec learns around it)."""
    seed_everything(seed, threads)
    where = resolve_device(device)
    model = plugin.load_model().to(where)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, where


def split_at(plugin, model, split: int) -> tuple[Any, Any, tuple[int, ...]]:
    """(device head, edge tail, the shape of one sample's features at `split`)."""
    head, tail = model[:split], model[split:]
    with torch.inference_mode():
        x = plugin.to_tensor(np.zeros((1, *plugin.input_spec.shape), plugin.input_spec.dtype))
        shape = tuple(head(x.to(next(model.parameters()).device)).shape[1:])
    return head, tail, shape


def fit_options(args) -> dict[str, Any]:
    """`fit`'s keywords that a learned codec's command options (`add_codec_options`) set."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "limit": args.limit,
        "steps": getattr(args, "steps", None),
        "resume": args.resume,
    }


def run_config(args) -> dict[str, Any]:
    """What an artefact's config records of every training run, in its order (the bytes
    of an artefact depend on it)."""
    return {
        "epochs": args.epochs,
        "seed": args.seed,
        "lr": args.lr,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "limit": args.limit or 0,
    }


def add_codec_options(parser) -> None:
    """The options both learned codecs' training commands take (DeepCOD, BottleNet)."""
    parser.add_argument("--plugin", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="fixed for reproducibility")
    parser.add_argument("--limit", type=int, help="train on the first N samples only")
    parser.add_argument("--out", type=Path, help="default: beside the plugin's code")
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("auto", "cpu", "cuda"),
        help="where to train, the teacher's logits too (default cpu)",
    )
    parser.add_argument(
        "--augment",
        action="store_true",
        help="random resized crops and flips of the whole train images",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last epoch's <artefact>.resume.pt"
    )
    parser.add_argument(
        "--progress-eval",
        type=int,
        default=0,
        metavar="N",
        help="after each epoch, show the score on N test samples",
    )
    parser.add_argument(
        "--test-data",
        type=Path,
        metavar="DIR",
        help="score on this folder of images instead of the test set",
    )


def scorer(plugin, codec, split: int, count: int, batch_size: int, model, device):
    """`fit`'s `test_figures`: the score through `codec` on `count` test samples (None
    for 0: no figures)."""
    if not count:
        return None
    return lambda: describe_score(
        score_through(plugin, codec, split, count, batch_size, model=model, device=device)
    )


def describe_score(score) -> str:
    """`61.3% (model 79.4%), agrees 70.1%, n 64` from `score_through`'s tuple."""
    through, unsplit, count, agrees = score
    return (
        f"{100 * through:.1f}% (model {100 * unsplit:.1f}%), agrees {100 * agrees:.1f}%, n {count}"
    )
